#include "region/internal_service.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <type_traits>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/grpc_auth.h"
#include "common/strings.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "region/control_service.h"
#include "region/internal.grpc.pb.h"
#include "region/peer_records.h"
#include "services/auth.h"
#include "services/domain.h"
#include "services/orders.h"

namespace meridian::region {
namespace {

namespace pb = ::meridian::region::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      code = grpc::StatusCode::INVALID_ARGUMENT;
      break;
    case absl::StatusCode::kNotFound:
      code = grpc::StatusCode::NOT_FOUND;
      break;
    case absl::StatusCode::kUnavailable:
      code = grpc::StatusCode::UNAVAILABLE;
      break;
    case absl::StatusCode::kFailedPrecondition:
      code = grpc::StatusCode::FAILED_PRECONDITION;
      break;
    default:
      break;
  }
  return grpc::Status(code, std::string(s.message()));
}

// The encoding of `doc`, a stored document joined with a peer's deltas, if it decodes again as
// the next read of it will (`decode`). Each delta was checked alone (peer_records.h), but two
// forged ones, each valid, can join into a state that is not (one dot on two cart fields; one
// writer's event seq on a spend and on a transfer): stored, it would fail every later read of the
// document and every apply that touches it. Refused instead, with nothing of the call written.
template <class Doc, class Decode>
std::string EncodeReadable(const Doc& doc, Decode decode, const char* kind,
                           const std::string& key) {
  std::string state = crdt::Encode(doc);
  if (absl::Status st = decode(state).status(); !st.ok()) {
    throw AbortTx{absl::InvalidArgumentError(
        absl::StrCat(kind, " ", key, ": the peer's deltas join into a state that does not decode (",
                     st.message(), "); nothing applied"))};
  }
  return state;
}

// A peer's record that rewrites a write this region holds (a cart change's dot on another line or
// with another amount; a stock entry out of step with its seq) would join into states that differ
// by the order of joins, for good. Refused, with nothing of the call written.
void RefuseOutOfStep(const absl::Status& st, const char* kind, const std::string& key) {
  if (st.ok()) return;
  throw AbortTx{absl::InvalidArgumentError(
      absl::StrCat(kind, " ", key, ": a peer's record rewrites a write held here (", st.message(),
                   "); nothing applied"))};
}

void SetNow(google::protobuf::Timestamp* t, int64_t unix_ms) {
  t->set_seconds(unix_ms / 1000);
  t->set_nanos(static_cast<int32_t>((unix_ms % 1000) * 1000000));
}

pb::OutboxKind KindOf(const std::string& kind) {
  if (kind == "cart") return pb::OUTBOX_KIND_CART;
  if (kind == "inventory") return pb::OUTBOX_KIND_INVENTORY;
  if (kind == "order") return pb::OUTBOX_KIND_ORDER;
  if (kind == "product") return pb::OUTBOX_KIND_PRODUCT;
  if (kind == "user") return pb::OUTBOX_KIND_USER;
  return pb::OUTBOX_KIND_UNSPECIFIED;
}

// One peer record, checked and decoded before anything is applied, and the database it goes to.
struct Prepared : PeerRecord {
  PgPool* target = nullptr;
};

// Wakes PollOutbox long polls: bumped whenever a database NOTIFYs meridian_outbox (the outbox
// trigger does, once per insert statement, on commit).
class OutboxSignal {
 public:
  uint64_t generation() {
    std::lock_guard<std::mutex> l(mu_);
    return generation_;
  }
  void Bump() {
    {
      std::lock_guard<std::mutex> l(mu_);
      ++generation_;
    }
    cv_.notify_all();
  }
  // Waits until the generation moves past `seen`; false when the deadline came first.
  bool WaitPast(uint64_t seen, std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_until(l, deadline, [&] { return generation_ != seen; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t generation_ = 0;
};

class OutboxListener final : public pqxx::notification_receiver {
 public:
  OutboxListener(pqxx::connection_base& c, OutboxSignal& signal)
      : pqxx::notification_receiver(c, "meridian_outbox"), signal_(signal) {}
  void operator()(const std::string&, int) override { signal_.Bump(); }

 private:
  OutboxSignal& signal_;
};

class Service final : public pb::RegionInternal::Service {
 public:
  explicit Service(RegionApp::Impl& app) : app_(app) {}

  // Every call must carry the internal token (common/grpc_auth.h) when one is configured.
  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    return common::CheckBearerToken(*ctx, app_.config.internal_token, "security.internal_token");
  }

  grpc::Status GetStatus(grpc::ServerContext* ctx, const pb::GetStatusRequest*,
                         pb::GetStatusResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    out->set_region(app_.config.name);
    out->set_jurisdiction(app_.config.jurisdiction);
    out->set_replica_id(app_.config.replica_id);
    out->set_durability(app_.config.durability == Durability::kSyncPeer ? pb::DURABILITY_SYNC_PEER
                                                                        : pb::DURABILITY_ASYNC);
    out->set_redis_reachable(app_.redis->Ping().ok());
    auto describe = [&](PgPool& pool) {
      pb::DatabaseStatus* d = out->add_databases();
      d->set_name(pool.name());
      d->set_pool_size(pool.size());
      d->set_pool_in_use(pool.in_use());
      absl::Status st = pool.Run([&](pqxx::work& tx) {
        pqxx::row r = tx.exec1(
            "SELECT count(*), coalesce(max(seq), 0), coalesce(min(seq), 0), (SELECT CASE WHEN "
            "is_called THEN last_value ELSE 0 END FROM outbox_seq_seq), (SELECT id FROM "
            "outbox_stream LIMIT 1), (SELECT through_seq FROM outbox_truncated) FROM outbox");
        d->set_outbox_rows(r[0].as<int64_t>());
        d->set_outbox_max_seq(r[1].as<int64_t>());
        d->set_outbox_min_seq(r[2].as<int64_t>());
        d->set_outbox_last_seq(r[3].as<int64_t>());
        d->set_stream(StreamNameOf(pool, r[4].as<std::string>()));
        d->set_outbox_truncated_through(r[5].as<int64_t>());
      });
      d->set_reachable(st.ok());
    };
    for (PgPool* pool : app_.AllDatabases()) describe(*pool);
    out->set_held_since_start(app_.held_since_start.load());
    {
      std::lock_guard<std::mutex> l(app_.hold_mu);
      for (const std::string& peer : app_.stock_awaits) out->add_stock_awaits(peer);
    }
    SetNow(out->mutable_now(), UnixNowMs());
    return grpc::Status::OK;
  }

  grpc::Status GetInventoryRights(grpc::ServerContext* ctx,
                                  const pb::GetInventoryRightsRequest* req,
                                  pb::GetInventoryRightsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (auto st = services::ValidateSku(req->sku()); !st.ok()) return ToGrpc(st);
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      pqxx::result r = tx.exec("SELECT state FROM inventory WHERE sku = " + tx.quote(req->sku()));
      if (r.empty()) throw AbortTx{absl::NotFoundError("no stock record for " + req->sku())};
      pqxx::binarystring bytes(r[0][0]);
      auto inv = crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()));
      if (!inv.ok()) throw AbortTx{inv.status()};
      out->set_sku(req->sku());
      out->set_available(inv->Available(req->sku()));
      if (const crdt::BoundedCounter* c = inv->Find(req->sku())) {
        for (crdt::ReplicaId id : c->Replicas()) {
          pb::ReplicaRights* rr = out->add_rights();
          rr->set_replica_id(id);
          rr->set_units(c->Rights(id));
        }
      }
    });
    return ToGrpc(st);
  }

  grpc::Status ApplyDeltas(grpc::ServerContext* ctx, const pb::ApplyDeltasRequest* req,
                           pb::ApplyDeltasResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    auto bad = [&](const std::string& why) {
      app_.replication_rejected->Increment();
      spdlog::warn("event=replication_frame_rejected origin={} db={} reason=\"{}\"", req->origin(),
                   req->origin_database(), why);
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why);
    };
    if (absl::Status st = CheckApplyCall(*req, app_.config.replica_id); !st.ok()) {
      return bad(std::string(st.message()));
    }
    if (req->receiver_streams_size() > 0) {
      if (grpc::Status st = SameStreams(req->receiver_streams()); !st.ok()) return st;
    }
    // Pass 1: check and decode everything; a bad record rejects the call with nothing applied.
    auto checked = CheckPeerRecords(*req, app_.config.replica_id, app_.config.jurisdiction);
    if (!checked.ok()) return bad(std::string(checked.status().message()));
    std::vector<Prepared> prepared;
    prepared.reserve(checked->records.size());
    for (PeerRecord& r : checked->records) {
      Prepared& p = prepared.emplace_back();
      static_cast<PeerRecord&>(p) = std::move(r);
      p.target = p.global ? app_.global.get() : &app_.ShardFor(p.shard_key);
    }
    const int64_t last_seq = checked->last_seq;
    if (last_seq == 0 && prepared.empty() && !req->state_end()) return grpc::Status::OK;
    if (absl::Status st = JoinStockTakes(prepared); !st.ok()) return ToGrpc(st);
    // Pass 2: one transaction per target database that has records. Each checks and advances
    // that database's high-water mark for this stream, so a record is applied exactly once
    // however often it is resent. The stream's resume point (GetStreamMarks) lives in the
    // global database: it moves only after every target committed, at most every 200 ms
    // (between moves a reconnect resends a little, and the marks skip it).
    std::vector<PgPool*> targets;
    for (auto& s : app_.shards) targets.push_back(s.get());
    targets.push_back(app_.global.get());
    int applied = 0, duplicates = 0;
    bool global_marked = false;
    bool stock_changed = false;                              // wake checkouts waiting for rights
    std::vector<std::pair<std::string, uint64_t>> products;  // sku, HLC of the peer's write
    std::vector<std::pair<std::string, int64_t>> carts_written;  // user id, version
    // On every return, an error after a database committed too: what committed is stale in
    // Redis, and the peer's resend would find those records duplicates and retire nothing.
    absl::Cleanup retire = [&] {
      if (stock_changed) app_.rights_signals.StockChanged();
      app_.RetireHotCopies(carts_written, products);
    };
    for (PgPool* target : targets) {
      std::vector<Prepared*> mine;
      for (Prepared& p : prepared)
        if (p.target == target) mine.push_back(&p);
      if (mine.empty()) continue;
      int n_applied = 0, n_dup = 0;
      std::vector<std::pair<std::string, int64_t>> written;
      const bool carts_only =
          std::all_of(mine.begin(), mine.end(), [](const Prepared* p) { return p->cart; });
      absl::Status st;
      if (carts_only) {
        // The common case in two round trips: BEGIN rides with the locks and reads, COMMIT
        // with the writes (a failure anywhere rolls the transaction back before the
        // connection goes back to the pool).
        st = target->RunAutocommit([&](pqxx::nontransaction& tx) {
          n_applied = n_dup = 0;
          written.clear();
          try {
            ApplyToTarget(tx, *req, mine, req->state() ? 0 : last_seq, &n_applied, &n_dup,
                          &written);
          } catch (...) {
            try {
              tx.exec0("ROLLBACK");
            } catch (...) {
            }
            throw;
          }
        });
      } else {
        st = target->Run([&](pqxx::work& tx) {
          n_applied = n_dup = 0;
          written.clear();
          ApplyToTarget(tx, *req, mine, req->state() ? 0 : last_seq, &n_applied, &n_dup, &written);
        });
      }
      // Retired even when the transaction failed: its COMMIT may have gone through with the
      // connection lost before the answer, and the peer's resend then finds duplicates.
      carts_written.insert(carts_written.end(), written.begin(), written.end());
      // What committed stays committed; the peer resends the rest and the marks skip it.
      if (!st.ok()) return ToGrpc(st);
      global_marked = global_marked || target == app_.global.get();
      applied += n_applied;
      duplicates += n_dup;
      for (Prepared* p : mine) {
        if (p->record->kind() == pb::OUTBOX_KIND_PRODUCT) {
          products.emplace_back(p->record->key(), p->json["hlc"].get<uint64_t>());
        }
        if (p->record->kind() == pb::OUTBOX_KIND_INVENTORY) stock_changed = true;
        if (p->record->kind() == pb::OUTBOX_KIND_USER) app_.ForgetAccount(p->record->key());
      }
    }
    if (req->state()) {
      // The end of a state transfer moves the stream's marks in every database at once (and
      // creates them at 0 for an outbox that never took a record: the peer knows we have its
      // documents).
      if (req->state_end()) {
        for (PgPool* target : targets) {
          absl::Status st = target->Run([&](pqxx::work& tx) {
            tx.exec0(MarkSql(tx, req->origin(), req->origin_database(), last_seq));
          });
          if (!st.ok()) return ToGrpc(st);
        }
        spdlog::info("event=state_transfer_applied origin={} db={} through_seq={}", req->origin(),
                     req->origin_database(), last_seq);
        out->set_marked_through_seq(last_seq);
      }
    } else if (global_marked) {
      out->set_marked_through_seq(last_seq);  // the global database's transaction moved it
    } else if (req->mark_now() || StreamMarkDue(req->origin(), req->origin_database())) {
      absl::Status st = app_.global->Run([&](pqxx::work& tx) {
        tx.exec0(MarkSql(tx, req->origin(), req->origin_database(), last_seq));
      });
      if (!st.ok()) return ToGrpc(st);
      out->set_marked_through_seq(last_seq);
    }
    out->set_applied_through_seq(last_seq);
    out->set_applied(applied);
    out->set_duplicates(duplicates);
    return grpc::Status::OK;
  }

  grpc::Status SetLocalWriteHold(grpc::ServerContext* ctx, const pb::SetLocalWriteHoldRequest* req,
                                 pb::SetLocalWriteHoldResponse*) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->peers_size() > 64 || req->stock_awaits_size() > 64) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "peers, stock_awaits: at most 64");
    }
    std::string peers = absl::StrJoin(req->peers(), ", ");
    std::string stock = absl::StrJoin(req->stock_awaits(), ", ");
    if (peers.size() > 1024 || stock.size() > 1024) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "peers, stock_awaits: at most 1024 characters");
    }
    std::lock_guard<std::mutex> l(app_.hold_mu);
    const bool new_databases =
        app_.held_since_start.load() && (req->hold() || !req->release_new_databases());
    std::vector<std::string> stock_awaits(req->stock_awaits().begin(), req->stock_awaits().end());
    // What outlives a restart is written first: if it cannot be, nothing changes (the
    // replicator sends its hold again within a second).
    if (new_databases != app_.held_since_start.load() || stock_awaits != app_.stock_awaits) {
      absl::Status st = app_.SaveWriteHold(new_databases, stock_awaits);
      if (!st.ok()) return ToGrpc(st);
    }
    app_.held_since_start = new_databases;
    const bool hold = req->hold() || new_databases;
    // A hold goes on before another comes off, so that a write checking them in between (the
    // full hold first, then the stock hold) never finds both off.
    bool was = hold ? app_.local_writes_held.exchange(true) : app_.local_writes_held.load();
    const bool stock_was = app_.stock_held.exchange(!stock_awaits.empty());
    if (!hold) was = app_.local_writes_held.exchange(false);
    if (was != hold || (req->hold() && peers != app_.hold_peers)) {
      if (req->hold()) {
        spdlog::warn("event=local_writes_held awaiting=\"{}\"", peers);
      } else if (hold) {
        spdlog::info("event=local_writes_held reason=new_databases (peers' state is in)");
      } else {
        spdlog::info("event=local_writes_released");
      }
    }
    app_.hold_peers = req->hold() ? std::move(peers) : std::string();
    if (stock_was != !stock_awaits.empty() || stock_awaits != app_.stock_awaits) {
      if (stock_awaits.empty()) {
        spdlog::info("event=stock_writes_released");
      } else {
        spdlog::warn("event=stock_writes_held awaiting=\"{}\"", stock);
      }
    }
    app_.stock_awaits = std::move(stock_awaits);
    return grpc::Status::OK;
  }

  grpc::Status OutboxBarrier(grpc::ServerContext* ctx, const pb::OutboxBarrierRequest* req,
                             pb::OutboxBarrierResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    PgPool* pool = PoolNamed(req->database());
    if (!pool) return UnknownDatabase(req->database());
    // SHARE mode waits for every transaction that inserted into the outbox and holds new ones
    // back until we have read the sequence: every seq up to it has committed or aborted.
    // While the lock request is queued every new outbox writer of the database waits behind it,
    // so it waits 250 ms at a time (lock_timeout): a writer holding its transaction open (a long
    // one, or one idle in it) would otherwise stall every cart write until it ended, and the
    // wait would outlive the caller. Between tries the writers go on; the call gives up at its
    // deadline (30 s without one).
    const auto now = std::chrono::system_clock::now();
    const auto deadline = std::min(ctx->deadline(), now + std::chrono::seconds(30));
    for (int attempt = 1;; ++attempt) {
      bool lock_timed_out = false;
      absl::Status st = pool->Run([&](pqxx::work& tx) {
        tx.exec0("SET LOCAL lock_timeout = 250");
        try {
          tx.exec0("LOCK TABLE outbox IN SHARE MODE");
        } catch (const pqxx::sql_error& e) {
          lock_timed_out = e.sqlstate() == "55P03";  // lock_not_available
          throw;
        }
        out->set_seq(tx.exec1("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM "
                              "outbox_seq_seq")[0]
                         .as<int64_t>());
      });
      if (!lock_timed_out) return ToGrpc(st);
      if (ctx->IsCancelled() ||
          std::chrono::system_clock::now() + std::chrono::milliseconds(300) >= deadline) {
        return grpc::Status(
            grpc::StatusCode::DEADLINE_EXCEEDED,
            absl::StrCat("the barrier of ", req->database(), "'s outbox: its writers held it for ",
                         attempt,
                         " tries of 250 ms (a transaction holding its outbox rows open?)"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  grpc::Status ReadState(grpc::ServerContext* ctx, const pb::ReadStateRequest* req,
                         pb::ReadStateResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    PgPool* pool = PoolNamed(req->database());
    if (!pool) return UnknownDatabase(req->database());
    const bool global = pool == app_.global.get();
    int limit = req->limit() == 0 ? 500 : req->limit();
    if (limit < 1 || limit > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit: 1..10000");
    }
    std::string base_sql;
    switch (req->kind()) {
      case pb::OUTBOX_KIND_CART:
        base_sql = "SELECT user_id, state, residency FROM carts";
        break;
      case pb::OUTBOX_KIND_USER:
        base_sql = "SELECT user_id, email, name, password_hash, residency, hlc, origin FROM users";
        break;
      case pb::OUTBOX_KIND_ORDER:
        base_sql =
            "SELECT order_id, user_id, status, total_cents, currency, owner_region, epoch, "
            "residency, (SELECT coalesce(json_agg(json_build_object('sku', sku, 'quantity', "
            "quantity, 'price_cents', price_cents)), '[]') FROM order_items i WHERE i.order_id "
            "= o.order_id)::text, lease_group, version, " +
            std::string(kCreatedMsSql) + ", stock_takes FROM orders o WHERE facts";
        break;
      case pb::OUTBOX_KIND_PRODUCT:
        base_sql =
            "SELECT sku, name, description, coalesce(category_id, ''), price_cents, currency, "
            "hlc, origin FROM products WHERE hlc > 0";
        break;
      case pb::OUTBOX_KIND_INVENTORY:
        base_sql = "SELECT sku, state FROM inventory";
        break;
      default:
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "kind: a document kind");
    }
    const bool global_kind =
        req->kind() == pb::OUTBOX_KIND_PRODUCT || req->kind() == pb::OUTBOX_KIND_INVENTORY;
    if (global != global_kind) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "kind: not a document of database " + req->database());
    }
    if (req->keys_size() > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "keys: at most 10000");
    }
    absl::Status st = pool->Run([&](pqxx::work& tx) {
      // Built afresh on each attempt (Run retries this body after a deadlock).
      out->clear_records();
      out->clear_last_key();
      std::string sql = base_sql;
      const std::string key =
          req->kind() == pb::OUTBOX_KIND_CART || req->kind() == pb::OUTBOX_KIND_USER ? "user_id"
          : req->kind() == pb::OUTBOX_KIND_ORDER                                     ? "order_id"
                                                                                     : "sku";
      sql +=
          std::string(req->kind() == pb::OUTBOX_KIND_PRODUCT || req->kind() == pb::OUTBOX_KIND_ORDER
                          ? " AND "
                          : " WHERE ") +
          key + " > " + tx.quote(req->after_key());
      if (req->keys_size() > 0) {
        std::string keys;
        for (const std::string& k : req->keys()) keys += (keys.empty() ? "" : ", ") + tx.quote(k);
        sql += " AND " + key + " = ANY(ARRAY[" + keys + "]::text[])";
      }
      sql += " ORDER BY " + key + " LIMIT " + tx.quote(limit);
      pqxx::result rows = tx.exec(sql);
      size_t bytes = 0;  // the reply's records so far
      auto add = [&](pb::OutboxKind kind, const std::string& k, std::string payload,
                     const std::string& residency) {
        bytes += k.size() + payload.size();
        pb::OutboxRecord* rec = out->add_records();
        rec->set_origin(app_.config.replica_id);
        rec->set_kind(kind);
        rec->set_key(k);
        rec->set_payload(std::move(payload));
        rec->set_residency(residency);
        SetNow(rec->mutable_created_at(), UnixNowMs());
      };
      bool capped = false;
      for (const auto& r : rows) {
        // Past the reply's byte limit, the page ends before this row (the first always goes, so
        // that every page moves); the next page starts after the last key sent.
        if (bytes >= kReplyBytesMax) {
          capped = true;
          break;
        }
        const std::string k = r[0].as<std::string>();
        out->set_last_key(k);
        switch (req->kind()) {
          case pb::OUTBOX_KIND_CART: {
            pqxx::binarystring b(r[1]);
            add(pb::OUTBOX_KIND_CART, k, b.str(), r[2].as<std::string>());
            break;
          }
          case pb::OUTBOX_KIND_USER:
            add(pb::OUTBOX_KIND_USER, k,
                Json{{"user_id", k},
                     {"email", r[1].as<std::string>()},
                     {"name", r[2].as<std::string>()},
                     {"password_hash", r[3].as<std::string>()},
                     {"hlc", static_cast<uint64_t>(r[5].as<int64_t>())},
                     {"origin", r[6].as<int>()}}
                    .dump(),
                r[4].as<std::string>());
            break;
          case pb::OUTBOX_KIND_ORDER: {
            const uint32_t group = app_.GroupOf(r[9].as<int64_t>(), r[5].as<std::string>());
            Json created{{"event", "created"},
                         {"order_id", k},
                         {"user_id", r[1].as<std::string>()},
                         {"group", group},
                         {"epoch", r[6].as<int64_t>()},
                         {"version", 1},
                         {"owner_region", r[5].as<std::string>()},
                         {"total_cents", r[3].as<int64_t>()},
                         {"currency", r[4].as<std::string>()},
                         {"items", Json::parse(r[8].as<std::string>(), nullptr, false)},
                         {"created_at_ms", r[11].as<int64_t>()}};
            // Its stock takes go with it (the receiver joins them before the order), so that a
            // declarer that learns a lost region's order only from a survivor does not count its
            // sold units as rights.
            if (!r[12].is_null()) {
              Json takes = Json::parse(r[12].as<std::string>(), nullptr, false);
              if (takes.is_object() && !takes.empty()) created["stock_takes"] = std::move(takes);
            }
            add(pb::OUTBOX_KIND_ORDER, k, created.dump(), r[7].as<std::string>());
            const std::string status = r[2].as<std::string>();
            if (status != "pending_payment") {
              add(pb::OUTBOX_KIND_ORDER, k,
                  Json{{"event", status},
                       {"order_id", k},
                       {"user_id", r[1].as<std::string>()},
                       {"group", group},
                       {"epoch", r[6].as<int64_t>()},
                       {"version", r[10].as<int64_t>()}}
                      .dump(),
                  r[7].as<std::string>());
            }
            break;
          }
          case pb::OUTBOX_KIND_PRODUCT:
            add(pb::OUTBOX_KIND_PRODUCT, k,
                Json{{"sku", k},
                     {"name", r[1].as<std::string>()},
                     {"description", r[2].as<std::string>()},
                     {"category", r[3].as<std::string>()},
                     {"price_cents", r[4].as<int64_t>()},
                     {"currency", r[5].as<std::string>()},
                     {"hlc", static_cast<uint64_t>(r[6].as<int64_t>())},
                     {"origin", r[7].as<int>()}}
                    .dump(),
                "any");
            break;
          default: {
            pqxx::binarystring b(r[1]);
            add(pb::OUTBOX_KIND_INVENTORY, k, b.str(), "any");
            break;
          }
        }
      }
      out->set_done(!capped && static_cast<int>(rows.size()) < limit);
    });
    return ToGrpc(st);
  }

  grpc::Status GetStreamMarks(grpc::ServerContext* ctx, const pb::GetStreamMarksRequest* req,
                              pb::GetStreamMarksResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    // The resume points live in the global database; each database also holds the mark of
    // what was applied to it (ApplyDeltas), and the highest of those is the highest applied.
    const std::vector<PgPool*> dbs =
        req->highest() ? app_.AllDatabases() : std::vector<PgPool*>{app_.global.get()};
    std::map<std::pair<uint32_t, std::string>, int64_t> marks;
    for (PgPool* db : dbs) {
      absl::Status st = db->Run([&](pqxx::work& tx) {
        for (const auto& r : tx.exec("SELECT origin, origin_db, seq FROM replication_applied")) {
          int64_t& m = marks[{r[0].as<uint32_t>(), r[1].as<std::string>()}];
          m = std::max(m, r[2].as<int64_t>());
        }
      });
      if (!st.ok()) return ToGrpc(st);
    }
    for (const auto& [stream, seq] : marks) {
      pb::StreamMark* m = out->add_marks();
      m->set_origin(stream.first);
      m->set_origin_database(stream.second);
      m->set_seq(seq);
    }
    return grpc::Status::OK;
  }

  // Deletes in chunks of kTruncateRowsMax rows, each its own transaction, and never commits
  // once the caller gave up: a DELETE that outlived the call (waiting for a connection, for a
  // lock such as OutboxBarrier's, or on a large range) would remove rows after the replicator
  // concluded they were still there. Each chunk runs under a statement_timeout that ends before
  // the caller's deadline, and rolls back when the call was cancelled meanwhile (the deadline
  // passed or the caller went away). What committed before stays: the next call goes on from
  // there, so a backlog too large for one deadline still goes, chunk by chunk.
  grpc::Status TruncateOutbox(grpc::ServerContext* ctx, const pb::TruncateOutboxRequest* req,
                              pb::TruncateOutboxResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    PgPool* pool = PoolNamed(req->database());
    if (!pool) return UnknownDatabase(req->database());
    if (req->through_seq() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "through_seq: >= 0");
    }
    const auto deadline = ctx->deadline();
    const bool bounded = deadline < std::chrono::system_clock::now() + std::chrono::hours(24);
    int64_t deleted = 0;
    auto gave_up = [&] {
      return grpc::Status(
          grpc::StatusCode::DEADLINE_EXCEEDED,
          absl::StrCat("truncating ", req->database(), " through ", req->through_seq(),
                       ": the call ended first (", deleted, " rows deleted, the rest not)"));
    };
    while (true) {
      int64_t chunk = 0;
      bool late = false;
      absl::Status st = pool->Run([&](pqxx::work& tx) {
        chunk = 0;
        // After the wait for a connection: what is left of the caller's time, less a margin for
        // the commit and the answer.
        if (bounded) {
          const int64_t left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                      deadline - std::chrono::system_clock::now())
                                      .count();
          const int64_t timeout_ms = left_ms - std::min<int64_t>(500, left_ms / 5);
          if (ctx->IsCancelled() || timeout_ms < 1) {
            late = true;
            return;
          }
          tx.exec0("SET LOCAL statement_timeout = " + tx.quote(timeout_ms));
        }
        if (!req->stream().empty()) {
          // The seq is the stream's: a database rebuilt since the caller read its status has
          // new seqs, and deleting through this one would remove rows no peer has.
          pqxx::result id = tx.exec("SELECT id FROM outbox_stream LIMIT 1");
          const std::string here =
              id.empty() ? "" : StreamNameOf(*pool, id[0][0].as<std::string>());
          if (here != req->stream()) {
            throw AbortTx{absl::FailedPreconditionError(
                absl::StrCat("truncating ", req->database(), ": its stream is ", here, ", not ",
                             req->stream(), " (the database was rebuilt)"))};
          }
        }
        pqxx::result r;
        try {
          // Recorded with the DELETE (it commits or rolls back with it): a peer resuming below
          // this needs the state, and a gap above it is a seq that never committed.
          tx.exec0("UPDATE outbox_truncated SET through_seq = GREATEST(through_seq, " +
                   tx.quote(req->through_seq()) + ")");
          r = tx.exec("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= " +
                      tx.quote(req->through_seq()) + " ORDER BY seq LIMIT " +
                      tx.quote(kTruncateRowsMax) + ")");
        } catch (const pqxx::sql_error& e) {
          if (e.sqlstate() == "57014") late = true;  // query_canceled: our statement_timeout
          throw;
        }
        if (ctx->IsCancelled()) {
          late = true;
          throw AbortTx{absl::DeadlineExceededError("the call ended")};  // rolls back
        }
        chunk = static_cast<int64_t>(r.affected_rows());
      });
      if (late || (!st.ok() && (ctx->IsCancelled() ||
                                (bounded && std::chrono::system_clock::now() >= deadline)))) {
        return gave_up();
      }
      if (!st.ok()) return ToGrpc(st);
      deleted += chunk;
      if (chunk < kTruncateRowsMax) break;
    }
    out->set_deleted(deleted);
    return grpc::Status::OK;
  }

  grpc::Status PollOutbox(grpc::ServerContext* ctx, const pb::PollOutboxRequest* req,
                          pb::PollOutboxResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    int limit = req->limit() == 0 ? 1000 : req->limit();
    if (limit < 1 || limit > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit: 1..10000");
    }
    if (req->wait_ms() < 0 || req->wait_ms() > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "wait_ms: 0..10000");
    }
    if (req->cursors_size() == 0 || req->cursors_size() > 64) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cursors: 1..64");
    }
    std::vector<PgPool*> pools;
    for (const auto& c : req->cursors()) {
      PgPool* pool = PoolNamed(c.database());
      if (!pool) return UnknownDatabase(c.database());
      if (c.after_seq() < 0 || c.gap_horizon() < 0) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_seq and gap_horizon: >= 0");
      }
      pools.push_back(pool);
    }
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(req->wait_ms());
    std::vector<pb::OutboxCursor> cursors(req->cursors().begin(), req->cursors().end());
    while (true) {
      uint64_t generation = outbox_signal_.generation();
      out->clear_chunks();
      bool any = false, gap = false;
      absl::Status failed;  // the last database that could not be read, if every one failed
      size_t read = 0;
      size_t budget = kReplyBytesMax;
      for (size_t i = 0; i < cursors.size(); ++i) {
        pb::OutboxChunk* chunk = out->add_chunks();
        // One database that cannot be read (down, or its outbox unreadable) holds up none of
        // the others: its chunk says why, and its cursor stays where it was.
        if (absl::Status st = ReadChunk(*pools[i], cursors[i], limit, &budget, chunk); !st.ok()) {
          chunk->Clear();
          chunk->set_database(cursors[i].database());
          chunk->set_next_after_seq(cursors[i].after_seq());
          chunk->set_gap_horizon(cursors[i].gap_horizon());
          chunk->set_gap_horizon_seq(cursors[i].gap_horizon_seq());
          chunk->set_error(std::string(st.message()));
          failed = st;
          continue;
        }
        ++read;
        any = any || chunk->records_size() > 0;
        gap = gap || chunk->gap_horizon() != 0;
        cursors[i].set_gap_horizon(chunk->gap_horizon());
        cursors[i].set_gap_horizon_seq(chunk->gap_horizon_seq());
      }
      if (read == 0) return ToGrpc(failed);
      auto now = std::chrono::steady_clock::now();
      if (any || ctx->IsCancelled() || now >= deadline) break;
      if (gap) {
        // Blocked at a gap: its transaction ends within moments (or has aborted); look again
        // soon rather than wait for the next commit.
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        continue;
      }
      // Nothing new: the outbox is read again only once a commit's NOTIFY (the outbox_notify
      // trigger, or a listener's reconnect) moves the signal. The wait goes in slices, so that a
      // cancelled call or a server shutdown is noticed soon; a call that reaches its deadline
      // unwoken answers what it read, as the caller's next call reads first anyway. (Each slice
      // used to read every database again: twice a call at the tests' heartbeat, three times at
      // the default's, on an idle region.)
      bool woken = false;
      while (!woken && !ctx->IsCancelled() && now < deadline) {
        woken = outbox_signal_.WaitPast(generation,
                                        std::min(deadline, now + std::chrono::milliseconds(250)));
        now = std::chrono::steady_clock::now();
      }
      if (!woken) break;
    }
    return grpc::Status::OK;
  }

  OutboxSignal& outbox_signal() { return outbox_signal_; }

  grpc::Status ReadOutbox(grpc::ServerContext* ctx, const pb::ReadOutboxRequest* req,
                          pb::ReadOutboxResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    PgPool* pool = PoolNamed(req->database());
    if (!pool) return UnknownDatabase(req->database());
    int limit = req->limit() == 0 ? 1000 : req->limit();
    if (limit < 1 || limit > 10000) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "limit: 1..10000");
    }
    if (req->after_seq() < 0) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "after_seq: >= 0");
    }
    absl::Status st = pool->Run([&](pqxx::work& tx) {
      for (const auto& r :
           tx.exec("SELECT seq, origin, kind, key, payload, residency, "
                   "(extract(epoch from created_at) * 1000)::bigint FROM outbox WHERE seq > " +
                   tx.quote(req->after_seq()) + " ORDER BY seq LIMIT " + tx.quote(limit))) {
        pb::OutboxRecord* rec = out->add_records();
        rec->set_seq(r[0].as<int64_t>());
        rec->set_origin(r[1].as<uint32_t>());
        rec->set_kind(KindOf(r[2].as<std::string>()));
        rec->set_key(r[3].as<std::string>());
        pqxx::binarystring payload(r[4]);
        rec->set_payload(payload.str());
        rec->set_residency(r[5].as<std::string>());
        SetNow(rec->mutable_created_at(), r[6].as<int64_t>());
      }
    });
    return ToGrpc(st);
  }

 private:
  // FAILED_PRECONDITION unless `streams` are this region's databases' stream names now (the
  // calling session's view of them is from before a rebuild otherwise).
  grpc::Status SameStreams(const google::protobuf::RepeatedPtrField<std::string>& streams) {
    std::set<std::string> now;
    for (PgPool* pool : app_.AllDatabases()) {
      auto name = app_.StreamName(*pool);
      if (!name.ok()) return ToGrpc(name.status());
      now.insert(*name);
    }
    if (std::set<std::string>(streams.begin(), streams.end()) == now) return grpc::Status::OK;
    spdlog::info("event=apply_refused_local_streams_changed now=\"{}\"", absl::StrJoin(now, ","));
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("this region's databases are now ", absl::StrJoin(now, ", "),
                                     ", not those the session started with (rebuilt since?): "
                                     "nothing applied; start a new session"));
  }

  PgPool* PoolNamed(const std::string& name) {
    if (name == app_.global->name()) return app_.global.get();
    for (auto& s : app_.shards)
      if (s->name() == name) return s.get();
    return nullptr;
  }

  static grpc::Status UnknownDatabase(const std::string& name) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "database: 'global' or 'shard-N', got '" + name + "'");
  }

  // One cursor's rows in commit order. The rows and the snapshot facts come from one statement,
  // so they share a snapshot: a missing seq below a visible one belongs to a transaction that
  // was running then (or aborted). It is skipped only once every transaction that could hold it
  // has surely ended as of a later snapshot.
  //
  // Which transactions could hold it: when a gap is first seen we read the sequence's last value
  // (gap_horizon_seq), then the outbox's writers: every transaction holding the outbox's
  // RowExclusiveLock. A seq is taken by an INSERT INTO outbox, which holds that lock (from
  // before it took the seq) until its transaction ends, and its transaction already holds an
  // xid (meridian_outbox_next_seq), so every transaction holding a seq <= gap_horizon_seq that
  // has not ended is among them. The gaps up to gap_horizon_seq are settled once a snapshot
  // shows every one of those writers completed (pg_visible_in_snapshot). Transactions that never
  // write the outbox (the apply of a peer's deltas, other databases of the cluster) do not hold
  // it up. The writer list stays here, keyed by (database, gap_horizon); the cursor carries the
  // key. gap_horizon is an xid taken after the sequence was read, so the older rule also holds:
  // once the snapshot's xmin passes it every possible holder has ended (the fallback when the
  // list is gone, say after a restart of this server).
  // The records of one PollOutbox or ReadState reply, in bytes: the rows are capped in number
  // (`limit`, per database), but 10,000 large catalog rows in each of three databases, or
  // 10,000 large carts or orders, would pass the replicator's 64 MiB message limit, and every
  // read after would fail the same way. A PollOutbox chunk stops before the record that would
  // pass it, a ReadState page after the row that reaches it (a reply's first record always
  // goes, so that every cursor moves).
  static constexpr size_t kReplyBytesMax = 8 << 20;

  absl::Status ReadChunk(PgPool& pool, const pb::OutboxCursor& cursor, int limit, size_t* budget,
                         pb::OutboxChunk* chunk) {
    chunk->set_database(cursor.database());
    chunk->set_next_after_seq(cursor.after_seq());
    std::optional<std::vector<int64_t>> writers;
    if (cursor.gap_horizon() != 0) writers = GapWriters(cursor.database(), cursor.gap_horizon());
    const size_t budget_at_start = *budget;
    return pool.ReadAutocommit([&](pqxx::nontransaction& tx) {
      chunk->clear_records();
      *budget = budget_at_start;
      std::string writers_ended = "false";
      if (writers) {
        std::string list;
        for (int64_t w : *writers) absl::StrAppend(&list, list.empty() ? "" : ",", w);
        writers_ended =
            "(SELECT coalesce(bool_and(pg_visible_in_snapshot(w::text::xid8, snap.s)), true) "
            "FROM unnest('{" +
            list + "}'::bigint[]) AS w)";
      }
      pqxx::result rows = tx.exec(
          "SELECT pg_snapshot_xmin(snap.s)::text::bigint, " + writers_ended +
          ", o.seq, o.origin, o.kind, o.key, o.payload, o.residency, o.ms FROM (SELECT "
          "pg_current_snapshot() AS s) snap LEFT JOIN LATERAL (SELECT seq, origin, kind, key, "
          "payload, residency, (extract(epoch from created_at) * 1000)::bigint AS ms FROM outbox "
          "WHERE seq > " +
          tx.quote(cursor.after_seq()) + " ORDER BY seq LIMIT " + tx.quote(limit) + ") o ON true");
      int64_t next = cursor.after_seq();
      int64_t horizon = 0, horizon_seq = 0;
      for (const auto& r : rows) {
        if (r[2].is_null()) break;
        const int64_t xmin = r[0].as<int64_t>();
        const bool writers_done = r[1].as<bool>();
        const int64_t seq = r[2].as<int64_t>();
        if (seq != next + 1) {
          // A gap: the seqs in it were taken by transactions that may still be running (or
          // have aborted). (The snapshot's own xmax would not do for the xid rule: a running
          // transaction younger than every completed one is at or above it.)
          const bool covered = cursor.gap_horizon() != 0 && seq - 1 <= cursor.gap_horizon_seq();
          const bool ended = covered && (writers_done || xmin >= cursor.gap_horizon());
          if (!ended && covered) {
            // Not yet: wait on the same writers. A new horizon would list the writers that
            // began since, and under writers that keep overlapping, a seq that never commits
            // (an aborted write) would never be passed.
            horizon = cursor.gap_horizon();
            horizon_seq = cursor.gap_horizon_seq();
            break;
          }
          if (!ended) {
            // Every seq taken so far (read first), then the writers that may hold one, and
            // an xid above every xid so far.
            horizon_seq = tx.exec1("SELECT last_value FROM outbox_seq_seq")[0].as<int64_t>();
            pqxx::row w = tx.exec1(
                "SELECT c, (SELECT coalesce(array_agg(DISTINCT c + ((x.transactionid::text::"
                "bigint - (c & 4294967295) + 6442450944) % 4294967296) - 2147483648), '{}') FROM "
                "pg_locks o JOIN pg_locks x ON x.virtualtransaction = o.virtualtransaction AND "
                "x.locktype = 'transactionid' WHERE o.locktype = 'relation' AND o.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) AND o.relation "
                "= 'outbox'::regclass AND o.mode = 'RowExclusiveLock')::text FROM (SELECT "
                "pg_current_xact_id()::text::bigint AS c) cur");
            horizon = w[0].as<int64_t>();
            RememberGapWriters(cursor.database(), horizon,
                               ParseBigintArray(w[1].as<std::string>()));
            break;
          }
        }
        pqxx::binarystring payload(r[6]);
        const size_t bytes = payload.size() + r[5].size() + 64;
        if (chunk->records_size() > 0 && bytes > *budget) break;
        *budget -= std::min(bytes, *budget);
        pb::OutboxRecord* rec = chunk->add_records();
        rec->set_seq(seq);
        rec->set_origin(r[3].as<uint32_t>());
        rec->set_kind(KindOf(r[4].as<std::string>()));
        rec->set_key(r[5].as<std::string>());
        rec->set_payload(payload.str());
        rec->set_residency(r[7].as<std::string>());
        SetNow(rec->mutable_created_at(), r[8].as<int64_t>());
        next = seq;
      }
      if (horizon == 0 && cursor.gap_horizon() != 0 && cursor.gap_horizon_seq() > next) {
        horizon = cursor.gap_horizon();  // still settles gaps further on
        horizon_seq = cursor.gap_horizon_seq();
      }
      chunk->set_next_after_seq(next);
      chunk->set_gap_horizon(horizon);
      chunk->set_gap_horizon_seq(horizon_seq);
    });
  }

  // "{1,2,3}" (a bigint[] as text) as numbers.
  static std::vector<int64_t> ParseBigintArray(const std::string& text) {
    std::vector<int64_t> out;
    int64_t v = 0;
    bool in = false, neg = false;
    for (char ch : text) {
      if (ch == '-') {
        neg = true;
      } else if (ch >= '0' && ch <= '9') {
        v = v * 10 + (ch - '0');
        in = true;
      } else {
        if (in) out.push_back(neg ? -v : v);
        v = 0;
        in = neg = false;
      }
    }
    return out;
  }

  void RememberGapWriters(const std::string& db, int64_t horizon, std::vector<int64_t> writers) {
    std::lock_guard<std::mutex> l(gap_mu_);
    gap_writers_[{db, horizon}] = std::move(writers);
    gap_order_.emplace_back(db, horizon);
    while (gap_order_.size() > 4096) {  // cursors only ever carry recent horizons
      gap_writers_.erase(gap_order_.front());
      gap_order_.pop_front();
    }
  }

  std::optional<std::vector<int64_t>> GapWriters(const std::string& db, int64_t horizon) {
    std::lock_guard<std::mutex> l(gap_mu_);
    auto it = gap_writers_.find({db, horizon});
    if (it == gap_writers_.end()) return std::nullopt;
    return it->second;
  }

  static std::string MarkSql(pqxx::transaction_base& tx, uint32_t origin, const std::string& db,
                             int64_t seq) {
    return "INSERT INTO replication_applied (origin, origin_db, seq) VALUES (" + tx.quote(origin) +
           ", " + tx.quote(db) + ", " + tx.quote(seq) +
           ") ON CONFLICT (origin, origin_db) DO UPDATE SET seq = GREATEST("
           "replication_applied.seq, EXCLUDED.seq);";
  }

  // True when the stream's resume point in the global database is due to move (every 200 ms).
  bool StreamMarkDue(uint32_t origin, const std::string& db) {
    std::lock_guard<std::mutex> l(marks_mu_);
    auto now = std::chrono::steady_clock::now();
    auto& last = mark_written_[{origin, db}];
    if (now - last < std::chrono::milliseconds(200)) return false;
    last = now;
    return true;
  }

  // Applies one target database's share of a call in `tx`, in three round trips: lock the
  // stream and the documents (advisory locks, documents in key order) and read the mark and
  // every cart; join in memory; write the carts and the mark. Deltas for one cart are joined in
  // seq order into one write (a join is associative, so this equals applying them in turn).
  //
  // In a pqxx::nontransaction (carts only) it opens and commits the transaction itself: BEGIN
  // goes with the first round trip and COMMIT with the last.
  template <typename Tx>
  void ApplyToTarget(Tx& tx, const pb::ApplyDeltasRequest& req, const std::vector<Prepared*>& mine,
                     int64_t last_seq, int* n_applied, int* n_dup,
                     std::vector<std::pair<std::string, int64_t>>* carts_written) {
    constexpr bool kOwnTransaction = std::is_same_v<Tx, pqxx::nontransaction>;
    std::map<std::string, std::vector<Prepared*>> carts, stock;
    for (Prepared* p : mine) {
      if (p->cart) carts[p->record->key()];
    }
    // The stream's lock, then the carts' in key order: the same locks as DocumentLockSql
    // ("kind:key"), taken in one statement rather than one statement per document.
    std::string keys,
        locks =
            tx.quote(absl::StrCat("stream:", req.origin(), "/", AbslView(req.origin_database())));
    for (const auto& [key, unused] : carts) {
      locks += ", " + tx.quote("cart:" + key);
      keys += (keys.empty() ? "" : ", ") + tx.quote(key);
    }
    std::string sql = std::string(kOwnTransaction ? "BEGIN;" : "") +
                      "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(ARRAY[" +
                      locks + "]::text[]) AS k;";
    sql += "SELECT 0, NULL, NULL, seq FROM replication_applied WHERE origin = " +
           tx.quote(req.origin()) + " AND origin_db = " + tx.quote(req.origin_database());
    if (!keys.empty()) {
      sql += " UNION ALL SELECT 1, user_id, state, version FROM carts WHERE user_id IN (" + keys +
             ") UNION ALL SELECT 2, user_id, convert_to(residency, 'UTF8'), 0 FROM users WHERE "
             "user_id IN (" +
             keys + ")";
    }
    int64_t high = req.state() ? -1 : 0;  // a state transfer joins everything
    std::map<std::string, std::pair<crdt::Cart, int64_t>> current;
    std::map<std::string, std::string> profile_residency;  // of the carts' owners stored here
    const pqxx::result rows = tx.exec(sql);
    for (const auto& r : rows) {
      if (r[0].as<int>() == 0) {
        if (!req.state()) high = r[3].as<int64_t>();
        continue;
      }
      if (r[0].as<int>() == 2) {
        pqxx::binarystring b(r[2]);
        profile_residency[r[1].as<std::string>()] = b.str();
        continue;
      }
      pqxx::binarystring b(r[2]);
      auto c = crdt::DecodeCart(std::string_view(b.get(), b.size()), app_.config.replica_id);
      if (!c.ok()) throw AbortTx{absl::DataLossError(std::string(c.status().message()))};
      current.emplace(r[1].as<std::string>(), std::make_pair(*std::move(c), r[3].as<int64_t>()));
    }
    std::vector<Prepared*> todo;
    for (Prepared* p : mine) {
      if (p->record->seq() <= high) {
        ++*n_dup;
        continue;
      }
      ++*n_applied;
      if (p->cart) {
        // A cart tagged unlike its owner's stored profile belongs to another account with the
        // same id: the same e-mail registered elsewhere while this region's customer is pinned
        // here (the id comes from the e-mail; the other region could not see the pinned
        // profile). Merging it would put that account's items into this customer's cart.
        auto owner = profile_residency.find(p->record->key());
        if (owner != profile_residency.end() && owner->second != p->record->residency()) {
          spdlog::warn(
              "event=cart_residency_conflict user_id={} stored={} incoming={} origin={} seq={} "
              "(not merged: another account under the same id)",
              p->record->key(), owner->second, p->record->residency(), req.origin(),
              p->record->seq());
          continue;
        }
        carts[p->record->key()].push_back(p);
      } else if (p->inventory) {
        stock[p->record->key()].push_back(p);
      } else {
        todo.push_back(p);
      }
    }
    std::string writes, values;
    for (const auto& [key, deltas] : carts) {
      if (deltas.empty()) continue;  // all duplicates
      auto it = current.find(key);
      crdt::Cart cart =
          it == current.end() ? crdt::Cart(app_.config.replica_id) : std::move(it->second.first);
      int64_t version = it == current.end() ? 0 : it->second.second;
      // The narrowest tag of what is merged (`any`, or this region's jurisdiction), not the
      // last delta's: the row ships under it (kCartUpsertConflictSql narrows an existing row).
      std::string residency = "any";
      for (const Prepared* p : deltas) {
        RefuseOutOfStep(cart.CheckSameWrites(*p->cart), "cart", key);
        cart.Merge(*p->cart);
        if (p->record->residency() != "any") residency = p->record->residency();
      }
      const std::string state = EncodeReadable(
          cart,
          [&](std::string_view bytes) { return crdt::DecodeCart(bytes, app_.config.replica_id); },
          "cart", key);
      values += (values.empty() ? "(" : ", (") + tx.quote(key) + ", " +
                tx.quote_raw(reinterpret_cast<const unsigned char*>(state.data()), state.size()) +
                ", " + tx.quote(residency) + ", " + tx.quote(version + 1) + ")";
      carts_written->emplace_back(key, version + 1);
    }
    if (!values.empty()) {
      writes += "INSERT INTO carts (user_id, state, residency, version) VALUES " + values +
                kCartUpsertConflictSql + ";";
    }
    // The rarer kinds one by one: stock documents in key order, then the rest in seq order.
    if constexpr (!kOwnTransaction) {
      for (auto& [key, deltas] : stock)
        for (Prepared* p : deltas) Apply(tx, *p);
      for (Prepared* p : todo) Apply(tx, *p);
    }
    if (!req.state() && last_seq > high) {
      writes += MarkSql(tx, req.origin(), req.origin_database(), last_seq);
    }
    if (kOwnTransaction) writes += "COMMIT;";
    if (!writes.empty()) tx.exec(writes);
  }

  // The stock takes that the call's order records carry (PeerRecord::stock_takes), joined into
  // the global database before the orders are applied (RegionApp::Impl::JoinStockTakes).
  absl::Status JoinStockTakes(const std::vector<Prepared>& prepared) {
    std::vector<const crdt::Inventory*> takes;
    for (const Prepared& p : prepared) {
      for (const crdt::Inventory& take : p.stock_takes) takes.push_back(&take);
    }
    return app_.JoinStockTakes(takes);
  }

  // Joins one peer record into `tx`'s database. Peer deltas are not written to our outbox: in a
  // full mesh every region hears every origin directly (never send a peer back what came from it).
  void Apply(pqxx::work& tx, Prepared& p) {
    const pb::OutboxRecord& rec = *p.record;
    switch (rec.kind()) {
      case pb::OUTBOX_KIND_INVENTORY:
        app_.JoinStock(tx, rec.key(), {&*p.inventory});
        break;
      case pb::OUTBOX_KIND_PRODUCT: {
        const Json& j = p.json;
        std::string category = j.value("category", std::string());
        if (!category.empty() &&
            tx.exec("SELECT 1 FROM categories WHERE id = " + tx.quote(category)).empty()) {
          tx.exec0("INSERT INTO categories (id, name) VALUES (" + tx.quote(category) + ", " +
                   tx.quote(category) + ") ON CONFLICT DO NOTHING");
        }
        // Last writer by (HLC, origin) wins, whatever order the writes arrive in.
        tx.exec0(
            "INSERT INTO products (sku, name, description, category_id, price_cents, currency, "
            "hlc, origin) VALUES (" +
            tx.quote(j["sku"].get<std::string>()) + ", " + tx.quote(j["name"].get<std::string>()) +
            ", " + tx.quote(j.value("description", std::string())) + ", " +
            (category.empty() ? std::string("NULL") : tx.quote(category)) + ", " +
            tx.quote(j["price_cents"].get<int64_t>()) + ", " +
            tx.quote(j["currency"].get<std::string>()) + ", " +
            tx.quote(static_cast<int64_t>(j["hlc"].get<uint64_t>())) + ", " +
            tx.quote(j.value("origin", 0)) +
            ") ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, description = "
            "EXCLUDED.description, category_id = EXCLUDED.category_id, price_cents = "
            "EXCLUDED.price_cents, currency = EXCLUDED.currency, hlc = EXCLUDED.hlc, origin = "
            "EXCLUDED.origin, updated_at = now() WHERE (products.hlc, products.origin) < "
            "(EXCLUDED.hlc, EXCLUDED.origin)");
        break;
      }
      case pb::OUTBOX_KIND_ORDER:
        ApplyOrderEvent(tx, rec, p.json);
        break;
      case pb::OUTBOX_KIND_USER: {
        const Json& j = p.json;
        // A profile is written once, by its registration. A second one under the same id is a
        // second registration of the same e-mail in a region that could not see the first (a
        // partition, or a pinned profile that never leaves its jurisdiction). It must neither
        // unpin the customer's data nor replace their password: a stored profile never changes
        // its residency, and among registrations of one residency the first, by (HLC, origin),
        // keeps the account in every region. (The later registrant's token then opens nothing
        // here: it names another account, RegionApp::Impl::Customer.) The cached account is
        // dropped once this commits (ApplyDeltas): dropped before, a request meanwhile would
        // cache the old one again for kAccountCacheTtl.
        const auto hlc = static_cast<int64_t>(j["hlc"].get<uint64_t>());
        const int64_t origin = j.value("origin", 0);
        pqxx::result kept = tx.exec(
            "INSERT INTO users (user_id, email, name, password_hash, residency, hlc, origin) "
            "VALUES (" +
            tx.quote(rec.key()) + ", " + tx.quote(j["email"].get<std::string>()) + ", " +
            tx.quote(j["name"].get<std::string>()) + ", " +
            tx.quote(j["password_hash"].get<std::string>()) + ", " + tx.quote(rec.residency()) +
            ", " + tx.quote(hlc) + ", " + tx.quote(origin) +
            ") ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name, "
            "password_hash = EXCLUDED.password_hash, hlc = EXCLUDED.hlc, origin = EXCLUDED.origin "
            "WHERE (users.hlc, users.origin) > (EXCLUDED.hlc, EXCLUDED.origin) AND "
            "users.residency = EXCLUDED.residency RETURNING 1");
        if (kept.empty()) {
          pqxx::result stored = tx.exec(
              "SELECT residency, hlc, origin FROM users WHERE user_id = " + tx.quote(rec.key()) +
              " AND (residency <> " + tx.quote(rec.residency()) + " OR (hlc, origin) <> (" +
              tx.quote(hlc) + ", " + tx.quote(origin) + "))");
          if (!stored.empty()) {
            spdlog::warn(
                "event=profile_registration_conflict user_id={} stored_residency={} "
                "stored_account={} incoming_residency={} incoming_account={} origin={} (the "
                "stored profile is kept)",
                rec.key(), stored[0][0].as<std::string>(),
                services::AccountStamp(stored[0][1].as<int64_t>(), stored[0][2].as<int64_t>()),
                rec.residency(), services::AccountStamp(hlc, origin), rec.origin());
          }
        }
        break;
      }
      default:
        break;
    }
  }

  // An order event from a peer (services/orders.h rules, in SQL): the status is a register ordered
  // by (epoch, version), so events and state transfers may arrive in any order and every copy
  // converges; an event below the order's epoch was superseded by a newer owner and is refused
  // (counted). A status event ahead of its order's creation leaves a row without the creation
  // facts, which the creating event fills in later.
  void ApplyOrderEvent(pqxx::work& tx, const pb::OutboxRecord& rec, const Json& j) {
    const std::string event = j["event"];
    const int64_t epoch = j["epoch"];
    const bool created = event == "created";
    // Events from before leases carried no version: creation is 1, any change comes after it.
    const int64_t version = j.contains("version") && j["version"].is_number_integer()
                                ? j["version"].get<int64_t>()
                                : (created ? 1 : 2);
    const int64_t group_field =
        j.contains("group") && j["group"].is_number_integer() ? j["group"].get<int64_t>() : 0;
    const uint32_t group =
        app_.GroupOf(group_field, j.value("owner_region", app_.RegionName(rec.origin())));
    static const std::set<std::string> kStatuses = {"paid", "payment_declined", "cancelled",
                                                    "refunded", "expired"};
    if (!created && !kStatuses.count(event)) return;
    const std::string status = created ? "pending_payment" : event;
    const std::string user_id = j["user_id"].get<std::string>();
    // The creating region's time (events from before it was carried: when it arrives here).
    const std::string created_at = created && j.contains("created_at_ms")
                                       ? TimestampFromMsSql(j["created_at_ms"].get<int64_t>())
                                       : std::string("now()");
    // The checkout's Idempotency-Key, so that the customer's retry here finds the order -- unless
    // this region holds another order of theirs under it (a twin made here before this one
    // arrived), which keeps it.
    const std::string idempotency_key =
        created && j.contains("idempotency_key")
            ? "(SELECT CASE WHEN EXISTS (SELECT 1 FROM orders WHERE user_id = " +
                  tx.quote(user_id) +
                  " AND idempotency_key = " + tx.quote(j["idempotency_key"].get<std::string>()) +
                  ") THEN NULL ELSE " + tx.quote(j["idempotency_key"].get<std::string>()) + " END)"
            : std::string("NULL");
    // The checkout's stock takes (checked, and joined into the global database before this
    // apply: JoinStockTakes), kept with the order so that it passes them on as state.
    const std::string stock_takes = created && j.contains("stock_takes")
                                        ? tx.quote(j["stock_takes"].dump())
                                        : std::string("NULL");
    // The order's lock first, as ApplyOrderStates and the checkout take it: a missing row locks
    // nothing, and two applies of one new order would both insert it.
    pqxx::result row = tx.exec(DocumentLockSql(tx, "order", rec.key()) +
                               "SELECT epoch, version, facts, stock_takes IS NULL FROM orders "
                               "WHERE order_id = " +
                               tx.quote(rec.key()) + " FOR UPDATE");
    if (row.empty()) {
      tx.exec0(
          "INSERT INTO orders (order_id, user_id, status, total_cents, currency, reservation_id, "
          "owner_region, epoch, version, lease_group, payment_ref, residency, facts, created_at, "
          "idempotency_key, stock_takes) VALUES (" +
          tx.quote(rec.key()) + ", " + tx.quote(user_id) + ", " + tx.quote(status) + ", " +
          tx.quote(j.value("total_cents", int64_t{0})) + ", " +
          tx.quote(j.value("currency", std::string("USD"))) + ", " + tx.quote(rec.key()) + ", " +
          tx.quote(app_.RegionName(group)) + ", " + tx.quote(epoch) + ", " + tx.quote(version) +
          ", " + tx.quote(group) + ", " +
          (j.contains("payment_ref") && j["payment_ref"].is_string()
               ? tx.quote(j["payment_ref"].get<std::string>())
               : std::string("NULL")) +
          ", " + tx.quote(rec.residency()) + ", " + (created ? "true" : "false") + ", " +
          created_at + ", " + idempotency_key + ", " + stock_takes + ")");
      if (created) InsertItems(tx, rec.key(), j);
      SettleIfDecided(tx, status, rec.key());
      return;
    }
    const int64_t row_epoch = row[0][0].as<int64_t>();
    const int64_t row_version = row[0][1].as<int64_t>();
    if (created && !row[0][2].as<bool>()) {
      // The creation facts arrive after a later status: fill them in, keep the status.
      tx.exec0("UPDATE orders SET total_cents = " + tx.quote(j.value("total_cents", int64_t{0})) +
               ", currency = " + tx.quote(j.value("currency", std::string("USD"))) +
               ", facts = true, created_at = " + created_at + ", idempotency_key = " +
               idempotency_key + " WHERE order_id = " + tx.quote(rec.key()));
      InsertItems(tx, rec.key(), j);
    }
    if (stock_takes != "NULL" && row[0][3].as<bool>()) {
      // Known before without them (as state from a region of an earlier version).
      tx.exec0("UPDATE orders SET stock_takes = " + stock_takes +
               " WHERE order_id = " + tx.quote(rec.key()));
    }
    if (std::make_pair(epoch, version) > std::make_pair(row_epoch, row_version)) {
      tx.exec0("UPDATE orders SET status = " + tx.quote(status) + ", epoch = " + tx.quote(epoch) +
               ", version = " + tx.quote(version) + ", lease_group = " + tx.quote(group) +
               (j.contains("payment_ref") && j["payment_ref"].is_string()
                    ? ", payment_ref = " + tx.quote(j["payment_ref"].get<std::string>())
                    : std::string()) +
               ", updated_at = now() WHERE order_id = " + tx.quote(rec.key()));
      SettleIfDecided(tx, status, rec.key());
    } else if (epoch < row_epoch && !created) {
      app_.stale_peer_events->Increment();
      spdlog::info(
          "event=stale_epoch_event_rejected order={} origin={} event={} epoch={} order_epoch={}",
          rec.key(), rec.origin(), event, epoch, row_epoch);
    }
  }

  // An order decided elsewhere (a successor cancelled it, or was paid for it, while this region
  // was away; or its home region refunded it after taking it back from this one) whose
  // reservation or captures are here: they are settled here, by the next sweep.
  void SettleIfDecided(pqxx::work& tx, const std::string& status, const std::string& order_id) {
    auto s = services::ParseOrderStatus(status);
    if (s.ok() && services::OrderDecided(*s)) app_.SettleAtNextSweep(tx, order_id);
  }

  static void InsertItems(pqxx::work& tx, const std::string& order_id, const Json& j) {
    if (!j.contains("items") || !j["items"].is_array()) return;
    for (const auto& it : j["items"]) {
      if (!it.is_object()) continue;
      tx.exec0("INSERT INTO order_items (order_id, sku, quantity, price_cents) VALUES (" +
               tx.quote(order_id) + ", " + tx.quote(it.value("sku", std::string("?"))) + ", " +
               tx.quote(std::max<int64_t>(1, it.value("quantity", int64_t{1}))) + ", " +
               tx.quote(std::max<int64_t>(0, it.value("price_cents", int64_t{0}))) +
               ") ON CONFLICT DO NOTHING");
    }
  }

  static constexpr int64_t kTruncateRowsMax = 50000;  // per TruncateOutbox transaction

  RegionApp::Impl& app_;
  OutboxSignal outbox_signal_;
  std::mutex marks_mu_;
  std::mutex gap_mu_;
  std::map<std::pair<std::string, int64_t>, std::vector<int64_t>> gap_writers_;
  std::deque<std::pair<std::string, int64_t>> gap_order_;
  std::map<std::pair<uint32_t, std::string>, std::chrono::steady_clock::time_point> mark_written_;
};

}  // namespace

void RegionApp::Impl::JoinStock(pqxx::work& tx, const std::string& sku,
                                const std::vector<const crdt::Inventory*>& deltas) {
  // With the document, whether this region owes rights in the SKU (read after the lock, which a
  // write-off holds while it records a debt): one round trip either way.
  pqxx::result r =
      tx.exec(DocumentLockSql(tx, "inventory", sku) +
              "SELECT state, (SELECT count(*) FROM rights_debt WHERE paid < owed AND sku = " +
              tx.quote(sku) + ") FROM inventory WHERE sku = " + tx.quote(sku) + " FOR UPDATE");
  crdt::Inventory inv(config.replica_id);
  if (!r.empty()) {
    pqxx::binarystring b(r[0][0]);
    auto i = crdt::DecodeInventory(std::string_view(b.get(), b.size()), config.replica_id);
    if (!i.ok()) throw AbortTx{absl::DataLossError(std::string(i.status().message()))};
    inv = *std::move(i);
  }
  for (const crdt::Inventory* d : deltas) {
    RefuseOutOfStep(inv.CheckSameWrites(*d), "stock of", sku);
    inv.Merge(*d);
  }
  // A grant to this region that landed after its write-off came short pays that debt first. A
  // write-off short in a SKU this region had no row of leaves its debt without one: the first
  // row's join asks PayRightsDebt itself (it reads the debts only when there are rights to pay).
  crdt::Inventory paid(config.replica_id);
  if (r.empty() || r[0][1].as<int64_t>() > 0) PayRightsDebt(tx, sku, inv, paid);
  const std::string state = EncodeReadable(
      inv, [&](std::string_view bytes) { return crdt::DecodeInventory(bytes, config.replica_id); },
      "stock of", sku);
  // The stock row needs its product: replicated catalog writes may arrive later, so a
  // placeholder product is made and overwritten by the real (later-HLC) write.
  tx.exec0("INSERT INTO products (sku, name, price_cents, currency, hlc, origin) VALUES (" +
           tx.quote(sku) + ", " + tx.quote(sku) +
           ", 0, 'USD', 0, 0) ON CONFLICT (sku) DO NOTHING;"
           "INSERT INTO inventory (sku, state) VALUES (" +
           tx.quote(sku) + ", " +
           tx.quote_raw(reinterpret_cast<const unsigned char*>(state.data()), state.size()) +
           ") ON CONFLICT (sku) DO UPDATE SET state = EXCLUDED.state, updated_at = now();" +
           (paid.Empty() ? std::string() : InventoryOutboxSql(tx, sku, paid, config.replica_id)));
}

uint64_t RegionApp::Impl::PayRightsDebt(pqxx::work& tx, const std::string& sku,
                                        crdt::Inventory& inv, crdt::Inventory& delta) {
  const int64_t have = inv.Rights(sku, config.replica_id);
  if (have <= 0 || StockWritesHeld()) return 0;
  uint64_t paid = 0, left = 0;
  std::string writes;
  for (const auto& row :
       tx.exec("SELECT declaration_id, owed - paid FROM rights_debt WHERE paid < owed AND sku = " +
               tx.quote(sku) + " ORDER BY owed_since, declaration_id FOR UPDATE")) {
    const auto owed = row[1].as<uint64_t>();
    const uint64_t n = std::min(owed, static_cast<uint64_t>(have) - paid);
    left += owed - n;
    if (n == 0) continue;
    paid += n;
    writes += "UPDATE rights_debt SET paid = paid + " + tx.quote(static_cast<int64_t>(n)) +
              " WHERE declaration_id = " + tx.quote(row[0].as<std::string>()) +
              " AND sku = " + tx.quote(sku) + ";";
  }
  if (paid == 0) return 0;
  auto take = inv.Take(sku, paid);
  if (!take.ok()) throw AbortTx{take.status()};
  delta.Merge(*take);
  tx.exec0(writes);
  spdlog::warn(
      "event=rights_debt_paid sku={} units={} still_owed={} (rights this region received after "
      "a write-off that came short: its declarer restocked them)",
      sku, paid, left);
  return paid;
}

absl::Status RegionApp::Impl::JoinStockTakes(const std::vector<const crdt::Inventory*>& takes) {
  std::map<std::string, std::vector<const crdt::Inventory*>> by_sku;  // the locks in SKU order
  for (const crdt::Inventory* take : takes) by_sku[take->items().front().first].push_back(take);
  if (by_sku.empty()) return absl::OkStatus();
  return global->Run([&](pqxx::work& tx) {
    for (const auto& [sku, of_sku] : by_sku) JoinStock(tx, sku, of_sku);
  });
}

struct InternalServer::Impl {
  std::unique_ptr<Service> service;
  std::unique_ptr<grpc::Service> control;  // RegionControl (region/control_service.h)
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::vector<std::thread> listeners;

  // One LISTEN connection per database; reconnects after a failure (and wakes the polls then,
  // since a notification may have been missed meanwhile).
  void Listen(PgPool& pool) {
    while (!stopping) {
      auto conn = pool.Connect();
      if (conn.ok()) {
        try {
          OutboxListener listener(**conn, service->outbox_signal());
          service->outbox_signal().Bump();
          while (!stopping) (*conn)->await_notification(0, 200000);
        } catch (const std::exception& e) {
          spdlog::warn("event=outbox_listen_failed db={} error=\"{}\"", pool.name(), e.what());
        }
      }
      for (int i = 0; i < 10 && !stopping; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
};

InternalServer::InternalServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
InternalServer::~InternalServer() { Stop(); }

absl::StatusOr<std::unique_ptr<InternalServer>> InternalServer::Start(RegionApp::Impl& app,
                                                                      const std::string& host,
                                                                      uint16_t port) {
  auto impl = std::make_unique<Impl>();
  impl->service = std::make_unique<Service>(app);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(host, ":", port), grpc::InsecureServerCredentials(),
                           &impl->port);
  builder.RegisterService(impl->service.get());
  impl->control = MakeRegionControlService(app);
  builder.RegisterService(impl->control.get());
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("grpc: cannot listen on ", host, ":", port));
  }
  spdlog::info("event=grpc_started address={}:{}", host, impl->port);
  Impl* raw = impl.get();
  raw->listeners.emplace_back([raw, &app] { raw->Listen(*app.global); });
  for (auto& shard : app.shards) {
    PgPool* pool = shard.get();
    raw->listeners.emplace_back([raw, pool] { raw->Listen(*pool); });
  }
  return std::unique_ptr<InternalServer>(new InternalServer(std::move(impl)));
}

uint16_t InternalServer::port() const { return static_cast<uint16_t>(impl_->port); }

void InternalServer::Stop() {
  if (!impl_) return;
  impl_->stopping = true;
  for (auto& t : impl_->listeners) t.join();
  impl_->listeners.clear();
  if (impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    impl_->server.reset();
  }
}

}  // namespace meridian::region
