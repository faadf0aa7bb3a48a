#include "region/control_service.h"

#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string_view>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_auth.h"
#include "crdt/codec.h"
#include "region/control.grpc.pb.h"
#include "region/documents.h"
#include "region/peer_records.h"
#include "services/auth.h"
#include "services/domain.h"
#include "services/orders.h"

namespace meridian::region {

namespace pb = ::meridian::region::v1;

class OrderForwarder {
 public:
  explicit OrderForwarder(std::shared_ptr<grpc::Channel> channel)
      : stub_(pb::OrderForwarder::NewStub(channel)) {}
  grpc::Status Forward(const pb::MutateOrderRequest& req, pb::MutateOrderResponse* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return stub_->ForwardOrder(&ctx, req, out);
  }
  grpc::Status Locate(const pb::LocateAccountRequest& req, pb::LocateAccountResponse* out) {
    grpc::ClientContext ctx;
    // The replicator asks its peers in up to two rounds of up to 1.5 s each (the account's
    // holders, then the password's check): its answer must not come after this deadline.
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(4));
    return stub_->LocateAccount(&ctx, req, out);
  }

 private:
  std::unique_ptr<pb::OrderForwarder::Stub> stub_;
};

void ConnectForwarder(RegionApp::Impl& app) {
  const auto& r = app.config.replication;
  if (!r.enabled || r.replicator.host.empty() || r.replicator.port == 0) return;
  // The replicator's control port asks for security.internal_token too.
  app.forwarder = std::make_shared<OrderForwarder>(common::ChannelWithBearerToken(
      absl::StrCat(r.replicator.host, ":", r.replicator.port), app.config.internal_token));
}

HttpResponse ForwardFailedProblem(grpc::StatusCode code, const std::string& order_id,
                                  const std::string& owner_name) {
  // gRPC's text (internal addresses, TLS details) goes to the log, not to the customer.
  // A deadline or a broken call after the request left may have let the owner make the change
  // (its region runs a change to the end, and may wait for a peer's acknowledgement): in doubt.
  const bool in_doubt = code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                        code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::UNKNOWN ||
                        code == grpc::StatusCode::INTERNAL;
  HttpResponse r = HttpResponse::Problem(
      503, "Service Unavailable",
      in_doubt ? absl::StrCat("order ", order_id, " is owned by region ", owner_name,
                              ", which did not answer in time: the change may or may not have "
                              "been made; read the order (GET /v1/orders/",
                              order_id, ") before retrying (a retry never charges twice)")
               : absl::StrCat("order ", order_id, " is owned by region ", owner_name,
                              ", which could not be reached to make this change; retry shortly"));
  r.headers.emplace_back("Retry-After", "2");
  return r;
}

HttpResponse RegionApp::Impl::ForwardToOwner(uint32_t owner, const std::string& user_id,
                                             const std::string& order_id,
                                             const std::string& residency, bool pay,
                                             const std::string& card_number) {
  const std::string owner_name = RegionName(owner);
  // The request carries the customer's id and card number: it goes only to a region allowed to
  // hold their data (a failover can hand a pinned customer's orders to a region outside their
  // jurisdiction; it holds none of them, and the home region takes the lease back).
  if (!PeerMayHold(owner, residency)) {
    forwards->Add({{"result", "residency"}}).Increment();
    spdlog::info("event=order_forward_refused order={} owner={} residency={}", order_id, owner_name,
                 residency);
    HttpResponse r = HttpResponse::Problem(
        503, "Service Unavailable",
        absl::StrCat("order ", order_id, " is owned for now by region ", owner_name,
                     ", which may not hold this customer's data (residency ", residency,
                     "); retry once its home region owns it again"));
    r.headers.emplace_back("Retry-After", "5");
    return r;
  }
  if (!forwarder) {
    forwards->Add({{"result", "unavailable"}}).Increment();
    return NotOwnerProblem(order_id, LeaseTable::Decision{false, 0, owner});
  }
  pb::MutateOrderRequest req;
  req.set_order_id(order_id);
  req.set_user_id(user_id);
  req.set_action(pay ? pb::ORDER_ACTION_PAY : pb::ORDER_ACTION_CANCEL);
  req.set_card_number(card_number);
  req.set_from_region(config.replica_id);
  req.set_owner(owner);
  pb::MutateOrderResponse out;
  grpc::Status s = forwarder->Forward(req, &out);
  if (!s.ok() || out.http_status() < 200 || out.http_status() > 599) {
    forwards->Add({{"result", "failed"}}).Increment();
    spdlog::warn("event=order_forward_failed order={} owner={} code={} error=\"{}\"", order_id,
                 owner_name, static_cast<int>(s.error_code()), s.error_message());
    return ForwardFailedProblem(s.ok() ? grpc::StatusCode::INTERNAL : s.error_code(), order_id,
                                owner_name);
  }
  forwards->Add({{"result", "ok"}}).Increment();
  HttpResponse r;
  r.status = out.http_status();
  r.body = out.body();
  r.content_type = r.status >= 400 ? "application/problem+json" : "application/json";
  r.headers.emplace_back("X-Meridian-Owner-Region", owner_name);
  return r;
}

RegionApp::Impl::AccountElsewhere RegionApp::Impl::LocateAccount(const std::string& user_id,
                                                                 const std::string& password) {
  AccountElsewhere where;
  if (!forwarder) return where;
  // Each lookup holds this HTTP thread until the peers answer: a flood of misses (unknown
  // e-mails, while a peer cannot answer) must not hold every thread, or the region stops serving
  // everyone else. Past the limit the caller answers 503 at once.
  if (account_lookups_in_flight.fetch_add(1) >= config.account_lookups) {
    account_lookups_in_flight.fetch_sub(1);
    account_lookups->Add({{"result", "busy"}}).Increment();
    spdlog::debug("event=account_lookup result=busy limit={}", config.account_lookups);
    where.busy = true;
    where.complete = false;
    return where;
  }
  absl::Cleanup release = [this] { account_lookups_in_flight.fetch_sub(1); };
  pb::LocateAccountRequest req;
  req.set_user_id(user_id);
  req.set_password(password);
  pb::LocateAccountResponse out;
  grpc::Status s = forwarder->Locate(req, &out);
  if (!s.ok()) {
    account_lookups->Add({{"result", "failed"}}).Increment();
    spdlog::warn("event=account_lookup_failed code={} error=\"{}\"",
                 static_cast<int>(s.error_code()), s.error_message());
    where.complete = false;
    where.unanswered = "this region's replicator";
    return where;
  }
  where.found = out.found();
  where.region = out.region();
  where.residency = out.residency();
  where.password_ok = out.password_ok();
  where.attempts_exhausted = out.attempts_exhausted();
  for (uint32_t peer : out.unanswered()) {
    absl::StrAppend(&where.unanswered, where.unanswered.empty() ? "" : ", ", RegionName(peer));
  }
  where.complete = out.unanswered().empty();
  const char* result = where.found ? "elsewhere" : where.complete ? "none" : "incomplete";
  account_lookups->Add({{"result", result}}).Increment();
  // No user id in the log: the account may be pinned to another jurisdiction.
  spdlog::info("event=account_lookup result={} region={} residency={} unanswered=\"{}\"", result,
               where.found ? RegionName(where.region) : "-", where.found ? where.residency : "-",
               where.unanswered);
  return where;
}

HttpResponse RegionApp::Impl::AccountLookupsBusy() const {
  HttpResponse r = HttpResponse::Problem(
      503, "Service Unavailable",
      absl::StrCat("no account with this e-mail is held in region ", config.name, ", and ",
                   config.account_lookups,
                   " lookups at the other regions are already waiting for an answer; retry in a "
                   "second"));
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

namespace {

grpc::Status Invalid(const std::string& why) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, why);
}

grpc::Status FromStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  auto code = grpc::StatusCode::UNAVAILABLE;
  if (absl::IsInvalidArgument(s)) code = grpc::StatusCode::INVALID_ARGUMENT;
  if (absl::IsNotFound(s)) code = grpc::StatusCode::NOT_FOUND;
  if (absl::IsFailedPrecondition(s)) code = grpc::StatusCode::FAILED_PRECONDITION;
  if (absl::IsDataLoss(s)) code = grpc::StatusCode::DATA_LOSS;
  if (absl::IsResourceExhausted(s)) code = grpc::StatusCode::RESOURCE_EXHAUSTED;
  return grpc::Status(code, std::string(s.message()));
}

bool ValidReplica(uint32_t r) { return r >= 1 && r <= 255; }

// An order's stock takes as orders.stock_takes holds them, and as its created event carries
// them: a JSON object of SKU to the base64 of the take. "" when the state has none.
std::string StockTakesColumn(const pb::OrderState& s) {
  if (s.stock_takes().empty()) return "";
  Json takes = Json::object();
  for (const auto& [sku, bytes] : s.stock_takes()) takes[sku] = absl::Base64Escape(bytes);
  return takes.dump();
}

// orders.stock_takes (this region's own column, written from checked takes) into `s`.
void StockTakesFromColumn(const std::string& column, pb::OrderState* s) {
  const Json takes = Json::parse(column, nullptr, false);
  if (!takes.is_object()) return;
  for (auto it = takes.begin(); it != takes.end(); ++it) {
    std::string bytes;
    if (it.value().is_string() && absl::Base64Unescape(it.value().get<std::string>(), &bytes)) {
      (*s->mutable_stock_takes())[it.key()] = std::move(bytes);
    }
  }
}

// Marks our declaration `id` restocked, with what it restocked per SKU (`restocked`; 0 for a SKU
// not in it): our write-off announcement says so, and the region it named writes off no more.
std::string MarkRestockedSql(pqxx::work& tx, const std::string& id,
                             const std::map<std::string, uint64_t>& restocked) {
  std::string sql =
      "UPDATE lost_declarations SET restocked = true, restocked_units = 0 WHERE id = " +
      tx.quote(id) + ";";
  std::string values;
  for (const auto& [sku, units] : restocked) {
    if (units == 0) continue;
    values += (values.empty() ? "(" : ", (") + tx.quote(sku) + ", " +
              tx.quote(static_cast<int64_t>(units)) + "::bigint)";
  }
  if (values.empty()) return sql;
  return sql + "UPDATE lost_declarations l SET restocked_units = v.units FROM (VALUES " + values +
         ") AS v (sku, units) WHERE l.id = " + tx.quote(id) + " AND l.sku = v.sku;";
}

// The declarations against one region a region holds at most (its own and those recorded from
// peers). A takeover sync's last page carries every one of them to the region taking its group
// back, and a replicator refuses a page of more than 10,000 (Coordinator::CheckFrame): beyond
// that, the region could never take its group back. A lost region is reclaimed from by a
// declaration or two per survivor; only a broken or hostile peer makes thousands.
constexpr int64_t kMaxDeclarationsAgainstARegion = 5000;
// Of those, the most one declarer's take, so that one broken or hostile peer cannot fill the
// table and leave no room for another region's real declaration (adversarial review,
// 2026-12-04).
constexpr int64_t kMaxDeclarationsOfOneDeclarer = kMaxDeclarationsAgainstARegion / 2;

// In the transaction that would add declaration `id` by `declared_by` against `region`:
// ResourceExhausted when that would pass kMaxDeclarationsAgainstARegion, or
// kMaxDeclarationsOfOneDeclarer of `declared_by`'s (a declaration held already adds nothing).
void RefuseDeclarationPastTheLimit(pqxx::work& tx, uint32_t region, const std::string& name,
                                   uint32_t declared_by, const std::string& declarer,
                                   const std::string& id) {
  // One declaration against a region at a time, so that two cannot both take the last place.
  const pqxx::result res =
      tx.exec(DocumentLockSql(tx, "lost_declarations", std::to_string(region)) +
              "SELECT count(DISTINCT id), bool_or(id = " + tx.quote(id) +
              "), count(DISTINCT id) FILTER (WHERE declared_by = " + tx.quote(declared_by) +
              ") FROM lost_declarations WHERE region = " + tx.quote(region));
  const pqxx::row r = res.at(0);
  if (!r[1].is_null() && r[1].as<bool>()) return;
  if (r[0].as<int64_t>() >= kMaxDeclarationsAgainstARegion) {
    throw AbortTx{absl::ResourceExhaustedError(absl::StrCat(
        name, " has ", kMaxDeclarationsAgainstARegion,
        " declarations against it here already, the most a region holds; no more are recorded"))};
  }
  if (r[2].as<int64_t>() >= kMaxDeclarationsOfOneDeclarer) {
    throw AbortTx{absl::ResourceExhaustedError(absl::StrCat(
        declarer, " has made ", kMaxDeclarationsOfOneDeclarer, " declarations against ", name,
        " here already, the most one region makes; no more of its are recorded"))};
  }
}

// One SKU's part of a declaration against a region, as far as it still counts in that region's
// rights here.
struct DeclaredPart {
  int64_t units = 0;
  std::optional<int64_t> received;  // NULL on rows made before the figure (migration 16)
  bool announced = false;
  bool own_unrestocked = false;  // ours, not restocked yet (pending, or awaiting the region)
};

// The declarations against `region` that may still count in its rights here, per SKU: every
// declarer's but void ones (the region refused them and kept its rights), and but `except_id`.
std::map<std::string, std::vector<DeclaredPart>> DeclaredParts(pqxx::work& tx, uint32_t region,
                                                               uint32_t self,
                                                               const std::string& except_id = "") {
  std::map<std::string, std::vector<DeclaredPart>> out;
  for (const auto& r : tx.exec(
           "SELECT sku, units, received, announced, declared_by = " + tx.quote(self) +
           " AND NOT restocked FROM lost_declarations WHERE region = " + tx.quote(region) +
           " AND NOT voided" + (except_id.empty() ? "" : " AND id <> " + tx.quote(except_id)))) {
    DeclaredPart p;
    p.units = r[1].as<int64_t>();
    if (!r[2].is_null()) p.received = r[2].as<int64_t>();
    p.announced = r[3].as<bool>();
    p.own_unrestocked = r[4].as<bool>();
    out[r[0].as<std::string>()].push_back(p);
  }
  return out;
}

// The units of `p` still counted in `region`'s rights in `sku` here: reclaimed by the
// declaration, not yet seen written off. The declaration reclaimed all the region had received
// and not spent, so the region has consumed its units (sold them before it died, which reached us
// late, or written them off on its return) once its consumption seen here reaches what it had
// received. Counting on until then errs on the safe side: the units stay out of sale until the
// write-off arrives. Before, a declaration stopped counting once announced to the returning
// region; if its write-off never arrived (the region was cut off again) a second declaration
// reclaimed the same units again, and they were sold twice (review of the stock paths,
// 2026-12-04).
int64_t StillCounted(const DeclaredPart& p, const crdt::Inventory& inv, const std::string& sku,
                     uint32_t region) {
  if (!p.received) return p.announced ? 0 : p.units;  // the rule of older rows
  return std::clamp<int64_t>(*p.received - inv.Consumed(sku, region), 0, p.units);
}

int64_t StillCounted(const std::vector<DeclaredPart>& parts, const crdt::Inventory& inv,
                     const std::string& sku, uint32_t region) {
  int64_t n = 0;
  for (const auto& p : parts) n += StillCounted(p, inv, sku, region);
  return n;
}

void FillRights(const crdt::Inventory& inv, const std::string& sku, crdt::ReplicaId self,
                pb::RightsView* v) {
  v->set_sku(sku);
  const crdt::BoundedCounter* bc = inv.Find(sku);
  if (bc == nullptr) return;
  v->set_exists(true);
  v->set_rights(bc->Rights(self));
  for (const auto& t : bc->transfers()) {
    if (t.from == self && t.to != self) {
      auto* g = v->add_given();
      g->set_replica(t.to);
      g->set_units(t.units);
    }
    if (t.to == self && t.from != self) {
      auto* g = v->add_received();
      g->set_replica(t.from);
      g->set_units(t.units);
    }
  }
}

class ControlService final : public pb::RegionControl::Service {
 public:
  explicit ControlService(RegionApp::Impl& app) : app_(app) {}

  // Every call must carry the internal token (common/grpc_auth.h) when one is configured.
  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    return common::CheckBearerToken(*ctx, app_.config.internal_token, "security.internal_token");
  }

  grpc::Status SetLeases(grpc::ServerContext* ctx, const pb::SetLeasesRequest* req,
                         pb::SetLeasesResponse*) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    std::vector<LeaseGrant> grants;
    for (const auto& g : req->groups()) {
      if (!ValidReplica(g.group()) || (g.owner() != 0 && !ValidReplica(g.owner())) ||
          g.epoch() > kMaxEpoch || g.valid_for_ms() < 0 || g.valid_for_ms() > 3600000) {
        return Invalid(absl::StrCat("lease for group ", g.group(), ": out of range"));
      }
      grants.push_back(LeaseGrant{g.group(), g.epoch(), g.owner(), g.usable(), g.valid_for_ms()});
    }
    app_.leases->Update(grants);
    for (const auto& g : grants) {
      if (g.epoch == 0 || g.owner == 0) continue;
      if (auto st = app_.RaiseFence(g.group, g.epoch, g.owner); !st.ok()) return FromStatus(st);
    }
    return grpc::Status::OK;
  }

  grpc::Status LoadLeaseRecords(grpc::ServerContext* ctx, const pb::LoadLeaseRecordsRequest*,
                                pb::LoadLeaseRecordsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    return FromStatus(app_.global->Run([&](pqxx::work& tx) {
      out->clear_records();
      for (const auto& r : tx.exec("SELECT grp, epoch, owner FROM lease_acceptor ORDER BY grp")) {
        auto* rec = out->add_records();
        rec->set_group(r[0].as<uint32_t>());
        rec->set_epoch(static_cast<uint64_t>(r[1].as<int64_t>()));
        rec->set_owner(r[2].as<uint32_t>());
      }
    }));
  }

  grpc::Status SaveLeaseRecord(grpc::ServerContext* ctx, const pb::SaveLeaseRecordRequest* req,
                               pb::SaveLeaseRecordResponse*) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    const auto& r = req->record();
    if (!ValidReplica(r.group()) || (r.owner() != 0 && !ValidReplica(r.owner())) ||
        r.epoch() > (uint64_t{1} << 62)) {
      return Invalid("lease record out of range");
    }
    return FromStatus(app_.global->Run([&](pqxx::work& tx) {
      // Epochs never go back, whatever order saves arrive in.
      tx.exec0("INSERT INTO lease_acceptor (grp, epoch, owner) VALUES (" + tx.quote(r.group()) +
               ", " + tx.quote(static_cast<int64_t>(r.epoch())) + ", " + tx.quote(r.owner()) +
               ") ON CONFLICT (grp) DO UPDATE SET epoch = EXCLUDED.epoch, owner = "
               "EXCLUDED.owner, updated_at = now() WHERE lease_acceptor.epoch <= EXCLUDED.epoch");
    }));
  }

  static constexpr size_t kGroupPageBytes = 2 << 20;

  grpc::Status ReadGroupOrders(grpc::ServerContext* ctx, const pb::ReadGroupOrdersRequest* req,
                               pb::ReadGroupOrdersResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (!ValidReplica(req->group()) || !ValidReplica(req->owner()) || req->epoch() == 0 ||
        req->epoch() > kMaxEpoch || req->limit() < 0 || req->limit() > 5000 ||
        req->after_key().size() > 64 || HasNul(req->after_key()) ||
        !services::ValidateResidency(req->jurisdiction()).ok()) {
      return Invalid("ReadGroupOrders: group, owner, epoch, jurisdiction or limit out of range");
    }
    // The new owner's epoch first: from now on this region refuses older writers of the group.
    // Not for a catch-up read: the asker is not taking the group over.
    if (!req->read_only()) {
      if (auto st = app_.RaiseFence(req->group(), req->epoch(), req->owner()); !st.ok()) {
        return FromStatus(st);
      }
    }
    const int limit = req->limit() == 0 ? 500 : req->limit();
    std::vector<pb::OrderState> rows;
    bool more = false;
    const std::string creator = app_.RegionName(req->group());
    for (auto& shard : app_.shards) {
      absl::Status st = shard->Run([&](pqxx::work& tx) {
        pqxx::result r = tx.exec(
            "SELECT o.order_id, o.user_id, o.status, o.total_cents, o.currency, o.residency, "
            "o.epoch, o.version, coalesce(o.payment_ref, ''), coalesce((SELECT "
            "json_agg(json_build_array(i.sku, i.quantity, i.price_cents) ORDER BY i.sku) FROM "
            "order_items i WHERE i.order_id = o.order_id)::text, '[]'), " +
            std::string(kCreatedMsSql) +
            ", o.stock_takes FROM orders o WHERE "
            "(o.lease_group = " +
            tx.quote(req->group()) + " OR (o.lease_group = 0 AND o.owner_region = " +
            tx.quote(creator) + ")) AND o.order_id > " + tx.quote(req->after_key()) +
            " AND (o.residency = 'any' OR o.residency = " + tx.quote(req->jurisdiction()) +
            ") ORDER BY o.order_id LIMIT " + tx.quote(limit));
        if (static_cast<int>(r.size()) == limit) more = true;
        for (const auto& row : r) {
          pb::OrderState s;
          s.set_order_id(row[0].as<std::string>());
          s.set_group(req->group());
          s.set_created(true);
          s.set_user_id(row[1].as<std::string>());
          s.set_status(row[2].as<std::string>());
          s.set_total_cents(row[3].as<int64_t>());
          s.set_currency(row[4].as<std::string>());
          s.set_residency(row[5].as<std::string>());
          s.set_epoch(static_cast<uint64_t>(row[6].as<int64_t>()));
          s.set_version(static_cast<uint64_t>(row[7].as<int64_t>()));
          s.set_payment_ref(row[8].as<std::string>());
          s.set_created_at_ms(row[10].as<int64_t>());
          if (!row[11].is_null()) StockTakesFromColumn(row[11].as<std::string>(), &s);
          Json items = Json::parse(row[9].as<std::string>(), nullptr, false);
          if (items.is_array()) {
            for (const auto& it : items) {
              if (!it.is_array() || it.size() != 3) continue;
              auto* line = s.add_items();
              line->set_sku(it[0].get<std::string>());
              line->set_quantity(it[1].get<int64_t>());
              line->set_price_cents(it[2].get<int64_t>());
            }
          }
          rows.push_back(std::move(s));
        }
      });
      if (!st.ok()) return FromStatus(st);
    }
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.order_id() < b.order_id(); });
    if (static_cast<int>(rows.size()) > limit) {
      rows.resize(static_cast<size_t>(limit));
      more = true;
    }
    // A page of large orders ends after the order that reaches kGroupPageBytes (a prefix of the
    // sorted rows: no id up to the last key is skipped), so that neither the reply nor the sync
    // frame that carries it passes a message limit: 500 orders of 255 lines are 9 MB.
    size_t bytes = 0;
    for (auto& r : rows) {
      if (bytes >= kGroupPageBytes) {
        more = true;
        break;
      }
      bytes += r.ByteSizeLong();
      *out->add_orders() = std::move(r);
    }
    out->set_last_key(out->orders().empty() ? req->after_key()
                                            : out->orders(out->orders_size() - 1).order_id());
    out->set_done(!more);
    return grpc::Status::OK;
  }

  grpc::Status ApplyOrderStates(grpc::ServerContext* ctx, const pb::ApplyOrderStatesRequest* req,
                                pb::ApplyOrderStatesResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->orders_size() > 5000) return Invalid("ApplyOrderStates: at most 5000 orders");
    // Validate everything first: a bad state fails the call with nothing applied.
    std::vector<crdt::Inventory> stock_takes;
    for (const auto& s : req->orders()) {
      if (const std::string why = OrderStateProblem(s, app_.config.replica_id, &stock_takes);
          !why.empty()) {
        return Invalid(absl::StrCat("order state ", absl::CHexEscape(s.order_id()), ": ", why));
      }
      if (!services::ResidencyAllows(s.residency(), app_.config.jurisdiction)) {
        app_.replication_rejected->Increment();
        return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            absl::StrCat("order ", s.order_id(), " is pinned to ", s.residency(),
                                         " and may not be stored in ", app_.config.name));
      }
    }
    // The orders' stock consumption before the orders themselves (RegionApp::Impl::JoinStockTakes):
    // a page applied halfway leaves takes without their orders, which the page's retry finds
    // joined already, never an order without its take.
    std::vector<const crdt::Inventory*> takes;
    for (const crdt::Inventory& take : stock_takes) takes.push_back(&take);
    if (absl::Status st = app_.JoinStockTakes(takes); !st.ok()) return FromStatus(st);
    int changed = 0;
    for (const auto& s : req->orders()) {
      const std::string takes_column = StockTakesColumn(s);
      // Decided while this region was away (a successor cancelled or was paid for it, say): its
      // reservation and charges here are settled by the next sweep. (The status was checked above.)
      const bool decided = services::OrderDecided(*services::ParseOrderStatus(s.status()));
      absl::Status st = app_.ShardFor(s.user_id()).Run([&](pqxx::work& tx) {
        // The order's lock first (a missing row locks nothing): of two applies of one new order
        // (two peers' pages, a page and the order's event), the second then finds the first's
        // row instead of failing on its unique key.
        pqxx::result r = tx.exec(DocumentLockSql(tx, "order", s.order_id()) +
                                 "SELECT epoch, version, stock_takes IS NULL FROM orders WHERE "
                                 "order_id = " +
                                 tx.quote(s.order_id()) + " FOR UPDATE");
        const auto epoch = static_cast<int64_t>(s.epoch());
        const auto version = static_cast<int64_t>(s.version());
        const std::string takes_sql =
            takes_column.empty() ? std::string("NULL") : tx.quote(takes_column);
        if (r.empty()) {
          tx.exec0(
              "INSERT INTO orders (order_id, user_id, status, total_cents, currency, "
              "reservation_id, owner_region, epoch, version, lease_group, payment_ref, "
              "residency, created_at, stock_takes) VALUES (" +
              tx.quote(s.order_id()) + ", " + tx.quote(s.user_id()) + ", " + tx.quote(s.status()) +
              ", " + tx.quote(s.total_cents()) + ", " +
              tx.quote(s.currency().empty() ? std::string("USD") : s.currency()) + ", " +
              tx.quote(s.order_id()) + ", " + tx.quote(app_.RegionName(s.group())) + ", " +
              tx.quote(epoch) + ", " + tx.quote(version) + ", " + tx.quote(s.group()) + ", " +
              (s.payment_ref().empty() ? std::string("NULL") : tx.quote(s.payment_ref())) + ", " +
              tx.quote(s.residency()) + ", " +
              (s.created_at_ms() > 0 ? TimestampFromMsSql(s.created_at_ms()) : "now()") + ", " +
              takes_sql + ")");
          for (const auto& line : s.items()) {
            tx.exec0("INSERT INTO order_items (order_id, sku, quantity, price_cents) VALUES (" +
                     tx.quote(s.order_id()) + ", " + tx.quote(line.sku()) + ", " +
                     tx.quote(line.quantity()) + ", " + tx.quote(line.price_cents()) +
                     ") ON CONFLICT DO NOTHING");
          }
          ++changed;
          if (decided) app_.SettleAtNextSweep(tx, s.order_id());
          return;
        }
        if (!takes_column.empty() && r[0][2].as<bool>()) {
          // Known before without them (from a region of an earlier version).
          tx.exec0("UPDATE orders SET stock_takes = " + takes_sql +
                   " WHERE order_id = " + tx.quote(s.order_id()));
        }
        // The register: the larger (epoch, version) wins.
        pqxx::result u = tx.exec(
            "UPDATE orders SET status = " + tx.quote(s.status()) + ", epoch = " + tx.quote(epoch) +
            ", version = " + tx.quote(version) + ", payment_ref = " +
            (s.payment_ref().empty() ? std::string("payment_ref") : tx.quote(s.payment_ref())) +
            ", updated_at = now() WHERE order_id = " + tx.quote(s.order_id()) +
            " AND (epoch, version) < (" + tx.quote(epoch) + ", " + tx.quote(version) +
            ") RETURNING 1");
        if (u.empty()) return;
        ++changed;
        if (decided) app_.SettleAtNextSweep(tx, s.order_id());
      });
      if (!st.ok()) return FromStatus(st);
    }
    out->set_changed(changed);
    return grpc::Status::OK;
  }

  grpc::Status WaitRightsDemand(grpc::ServerContext* ctx, const pb::WaitRightsDemandRequest* req,
                                pb::WaitRightsDemandResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->wait_ms() < 0 || req->wait_ms() > 10000) return Invalid("wait_ms: 0..10000");
    RightsSignals::Poll p =
        app_.rights_signals.TakeSignals(std::chrono::milliseconds(req->wait_ms()));
    for (const auto& [sku, units] : p.demand) {
      auto* d = out->add_demand();
      d->set_sku(sku);
      d->set_units(units);
    }
    for (const auto& [sku, units] : p.waiting) {
      auto* w = out->add_waiting();
      w->set_sku(sku);
      w->set_units(units);
    }
    return grpc::Status::OK;
  }

  grpc::Status GetRightsViews(grpc::ServerContext* ctx, const pb::GetRightsViewsRequest* req,
                              pb::GetRightsViewsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->skus_size() > 10000) return Invalid("GetRightsViews: at most 10000 SKUs");
    if (req->skus_size() == 0) return grpc::Status::OK;
    for (const auto& sku : req->skus()) {
      if (!services::ValidateSku(sku).ok()) return Invalid(absl::StrCat("bad SKU '", sku, "'"));
    }
    return FromStatus(app_.global->Run([&](pqxx::work& tx) {
      out->clear_views();
      std::string in;
      for (const auto& sku : req->skus())
        absl::StrAppend(&in, in.empty() ? "" : ", ", tx.quote(sku));
      std::map<std::string, crdt::Inventory> found;
      for (const auto& r : tx.exec("SELECT sku, state FROM inventory WHERE sku IN (" + in + ")")) {
        pqxx::binarystring bytes(r[1]);
        auto inv = crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()),
                                         app_.config.replica_id);
        if (!inv.ok()) throw AbortTx{absl::DataLossError(std::string(inv.status().message()))};
        found.emplace(r[0].as<std::string>(), *std::move(inv));
      }
      for (const auto& sku : req->skus()) {
        auto* v = out->add_views();
        auto it = found.find(sku);
        if (it == found.end()) {
          v->set_sku(sku);
        } else {
          FillRights(it->second, sku, app_.config.replica_id, v);
        }
      }
    }));
  }

  grpc::Status TransferRights(grpc::ServerContext* ctx, const pb::TransferRightsRequest* req,
                              pb::TransferRightsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (!services::ValidateSku(req->sku()).ok() || !ValidReplica(req->to()) ||
        req->to() == app_.config.replica_id || req->units() == 0 ||
        req->units() > crdt::BoundedCounter::kMaxUnits) {
      return Invalid("TransferRights: sku, destination or units out of range");
    }
    // Rights are spent (sold or given) only under this region's own lease: a region without it
    // may have been declared lost, its rights reclaimed by the others, and not yet written off.
    if (!app_.leases->ForGroup(app_.config.replica_id).mine) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "TransferRights: this region does not hold its own lease (its rights "
                          "may have been reclaimed while it was away)");
    }
    // Only to a region of this deployment that still holds its own group: units given to a
    // region whose group was taken over (it may have been declared lost meanwhile, its rights
    // reclaimed from a snapshot before this grant) would sit in rights nobody reclaims (review
    // of the stock paths, 2026-12-04).
    if (auto why = GrantDestinationRefused(req->to()); !why.empty()) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "TransferRights: " + why);
    }
    bool moved = false;
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      moved = false;
      app_.RefuseLocalWriteIfHeld();
      crdt::Inventory inv = LoadInventoryForUpdate(tx, req->sku(), app_.config.replica_id);
      auto delta = inv.Transfer(req->sku(), req->to(), req->units());
      if (!delta.ok()) return;  // sold meanwhile: nothing to give
      SaveInventory(tx, req->sku(), inv, *delta, app_.config.replica_id);
      moved = true;
    });
    if (!st.ok()) return FromStatus(st);
    out->set_moved(moved ? req->units() : 0);
    if (moved) {
      spdlog::info("event=rights_granted sku={} to={} units={}", req->sku(),
                   app_.RegionName(req->to()), req->units());
    }
    return grpc::Status::OK;
  }

  // Why rights may not go to region `to` now (empty: they may): it is no peer of this region's
  // config (where every peer's replica id is given), or its group is owned by another region.
  std::string GrantDestinationRefused(uint32_t to) const {
    const auto& peers = app_.config.peers;
    const bool ids_known = std::all_of(peers.begin(), peers.end(),
                                       [](const PeerRegion& p) { return p.replica_id != 0; });
    if (ids_known && std::none_of(peers.begin(), peers.end(),
                                  [&](const PeerRegion& p) { return p.replica_id == to; })) {
      return absl::StrCat("replica ", to, " is no peer of this region");
    }
    const LeaseTable::Decision d = app_.leases->ForGroup(to);
    if (d.owner != 0 && d.owner != to) {
      return absl::StrCat(app_.RegionName(to), "'s group is held by ", app_.RegionName(d.owner),
                          " (it went away): no rights go to it");
    }
    return "";
  }

  grpc::Status ReportPeerAcks(grpc::ServerContext* ctx, const pb::ReportPeerAcksRequest* req,
                              pb::ReportPeerAcksResponse*) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    for (const auto& a : req->acks()) {
      if (a.database().empty() || a.database().size() > 128 || !ValidReplica(a.peer()) ||
          a.seq() < 0) {
        return Invalid("ReportPeerAcks: malformed ack");
      }
    }
    for (const auto& a : req->acks()) app_.peer_acks.Update(a.database(), a.peer(), a.seq());
    return grpc::Status::OK;
  }

  grpc::Status DeclareLost(grpc::ServerContext* ctx, const pb::DeclareLostRequest* req,
                           pb::DeclareLostResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (!ValidReplica(req->region()) || req->region() == app_.config.replica_id) {
      return Invalid("DeclareLost: region must be another region's replica id");
    }
    const std::string id = RandomId("dl");
    pb::LostDeclaration* d = out->mutable_declaration();
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      d->Clear();
      out->set_already_reclaimed_units(0);
      out->set_pending_units(0);
      d->set_id(id);
      d->set_region(req->region());
      d->set_declared_by(app_.config.replica_id);
      d->set_declared_unix_ms(UnixNowMs());
      d->set_pending(true);
      // What earlier declarations reclaimed and the region has not been seen to write off (its
      // consumption seen here has not reached them, StillCounted): those units are still counted
      // in its rights here, and are ours or another survivor's already, or will be once a
      // majority has recorded ours (pending). Declaring it lost again (a retry, an operator's
      // second try, a later holder of its group after the first declarer died, a second loss
      // after a brief return) reclaims only the rest, or the same units would be restocked twice.
      // Other regions' declarations are here once recorded (RecordLostDeclaration).
      const auto declared = DeclaredParts(tx, req->region(), app_.config.replica_id);
      std::string writes;
      for (const auto& r : tx.exec("SELECT sku, state FROM inventory ORDER BY sku FOR UPDATE")) {
        const std::string sku = r[0].as<std::string>();
        pqxx::binarystring bytes(r[1]);
        auto inv = crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()),
                                         app_.config.replica_id);
        if (!inv.ok()) throw AbortTx{absl::DataLossError(std::string(inv.status().message()))};
        int64_t open = 0;
        if (auto it = declared.find(sku); it != declared.end()) {
          for (const auto& p : it->second) {
            const int64_t n = StillCounted(p, *inv, sku, req->region());
            open += n;
            if (p.own_unrestocked && !p.announced) {
              out->set_pending_units(out->pending_units() + static_cast<uint64_t>(n));
            } else {
              out->set_already_reclaimed_units(out->already_reclaimed_units() +
                                               static_cast<uint64_t>(n));
            }
          }
        }
        const int64_t frozen = inv->Rights(sku, req->region()) - open;
        if (frozen <= 0) continue;
        // Recorded, not restocked: the lost region's rights become this region's (the same units,
        // restocked here) only once a majority of regions holds the declaration
        // (RestockLostDeclaration), so that no region that outlives us can miss it.
        const int64_t received = inv->Received(sku, req->region());
        writes +=
            "INSERT INTO lost_declarations (id, region, declared_by, sku, units, received, "
            "restocked) VALUES (" +
            tx.quote(id) + ", " + tx.quote(req->region()) + ", " +
            tx.quote(app_.config.replica_id) + ", " + tx.quote(sku) + ", " + tx.quote(frozen) +
            ", " + tx.quote(received) + ", false);";
        auto* item = d->add_items();
        item->set_sku(sku);
        item->set_units(static_cast<uint64_t>(frozen));
        item->set_received(static_cast<uint64_t>(received));
      }
      if (writes.empty()) return;
      RefuseDeclarationPastTheLimit(tx, req->region(), app_.RegionName(req->region()),
                                    app_.config.replica_id, app_.RegionName(app_.config.replica_id),
                                    id);
      tx.exec(writes);
    });
    if (!st.ok()) return FromStatus(st);
    uint64_t units = 0;
    for (const auto& i : d->items()) units += i.units();
    spdlog::warn(
        "event=region_declared_lost region={} reclaimed_skus={} reclaimed_units={} id={} "
        "(pending: restocked once a majority of regions recorded it)",
        app_.RegionName(req->region()), d->items_size(), units, id);
    return grpc::Status::OK;
  }

  grpc::Status RestockLostDeclaration(grpc::ServerContext* ctx,
                                      const pb::RestockLostDeclarationRequest* req,
                                      pb::RestockLostDeclarationResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->id().empty() || req->id().size() > 64) {
      return Invalid("RestockLostDeclaration: a declaration id is required");
    }
    uint32_t region = 0;
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      out->Clear();
      region = 0;
      const auto rows = tx.exec(
          "SELECT sku, units, region FROM lost_declarations WHERE id = " + tx.quote(req->id()) +
          " AND declared_by = " + tx.quote(app_.config.replica_id) +
          " AND NOT restocked AND NOT announced ORDER BY sku FOR UPDATE");
      if (rows.empty()) {
        out->set_already(true);
        return;
      }
      region = rows[0][2].as<uint32_t>();
      // Every other declaration against the region that is still counted in its rights here
      // (recorded since ours was made: a later holder's, sent to us) came first: ours restocks
      // only what is left, so the same units are never restocked twice.
      auto others = DeclaredParts(tx, region, app_.config.replica_id, req->id());
      for (const auto& r : rows) {
        const std::string sku = r[0].as<std::string>();
        const int64_t units = r[1].as<int64_t>();
        app_.RefuseLocalWriteIfHeld();
        crdt::Inventory inv = LoadInventoryForUpdate(tx, sku, app_.config.replica_id);
        const int64_t n = std::clamp<int64_t>(
            inv.Rights(sku, region) - StillCounted(others[sku], inv, sku, region), 0, units);
        out->set_short_units(out->short_units() + static_cast<uint64_t>(units - n));
        if (n == 0) continue;
        auto delta = inv.Restock(sku, static_cast<uint64_t>(n));
        if (!delta.ok()) throw AbortTx{delta.status()};
        app_.PayRightsDebt(tx, sku, inv, *delta);
        SaveInventory(tx, sku, inv, *delta, app_.config.replica_id);
        auto* item = out->add_items();
        item->set_sku(sku);
        item->set_units(static_cast<uint64_t>(n));
      }
      std::map<std::string, uint64_t> restocked;
      for (const auto& i : out->items()) restocked[i.sku()] = i.units();
      tx.exec(MarkRestockedSql(tx, req->id(), restocked));
    });
    if (!st.ok()) return FromStatus(st);
    if (out->already()) return grpc::Status::OK;
    app_.rights_signals.StockChanged();
    uint64_t units = 0;
    for (const auto& i : out->items()) units += i.units();
    spdlog::warn("event=lost_declaration_restocked region={} id={} units={} short={}",
                 app_.RegionName(region), req->id(), units, out->short_units());
    return grpc::Status::OK;
  }

  grpc::Status ListLostDeclarations(grpc::ServerContext* ctx,
                                    const pb::ListLostDeclarationsRequest* req,
                                    pb::ListLostDeclarationsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (!ValidReplica(req->region())) return Invalid("ListLostDeclarations: region out of range");
    return FromStatus(app_.global->Run([&](pqxx::work& tx) {
      out->clear_declarations();
      if (req->mark_announced()) {
        // Our pending declarations await the region's answer from now on: it is back before a
        // majority was known to record them, so they restock only by what it says it wrote off
        // (from another region's record), or are void if it refuses them (DeclarationSettled).
        for (const auto& r :
             tx.exec("UPDATE lost_declarations SET announced = true WHERE region = " +
                     tx.quote(req->region()) +
                     " AND NOT announced RETURNING id, sku, units, declared_by = " +
                     tx.quote(app_.config.replica_id) + " AND NOT restocked")) {
          if (!r[3].as<bool>()) continue;
          spdlog::warn(
              "event=lost_declaration_awaiting_region region={} id={} sku={} units={} (the region "
              "came back before a majority was known to record it: restocked by what it wrote "
              "off, or void if it refuses it)",
              app_.RegionName(req->region()), r[0].as<std::string>(), r[1].as<std::string>(),
              r[2].as<int64_t>());
        }
      }
      std::map<std::string, pb::LostDeclaration*> by_id;
      for (const auto& r :
           tx.exec("SELECT id, declared_by, (extract(epoch from declared_at) * 1000)::bigint, sku, "
                   "units, declared_by = " +
                   tx.quote(app_.config.replica_id) +
                   " AND NOT restocked, announced, voided, received, CASE WHEN declared_by = " +
                   tx.quote(app_.config.replica_id) +
                   " AND restocked THEN restocked_units END FROM lost_declarations WHERE "
                   "region = " +
                   tx.quote(req->region()) + " ORDER BY id, sku")) {
        const std::string id = r[0].as<std::string>();
        pb::LostDeclaration*& d = by_id[id];
        if (d == nullptr) {
          d = out->add_declarations();
          d->set_id(id);
          d->set_region(req->region());
          d->set_declared_by(r[1].as<uint32_t>());
          d->set_declared_unix_ms(r[2].as<int64_t>());
          const bool unrestocked_own = r[5].as<bool>(), announced = r[6].as<bool>();
          d->set_voided(r[7].as<bool>());
          d->set_pending(unrestocked_own && !announced);
          d->set_awaiting(unrestocked_own && announced && !d->voided());
        }
        auto* item = d->add_items();
        item->set_sku(r[3].as<std::string>());
        item->set_units(static_cast<uint64_t>(r[4].as<int64_t>()));
        item->set_received(static_cast<uint64_t>(r[8].as<int64_t>(0)));
        if (!r[9].is_null()) item->set_restocked(r[9].as<uint64_t>());
      }
    }));
  }

  grpc::Status RecordLostDeclaration(grpc::ServerContext* ctx,
                                     const pb::RecordLostDeclarationRequest* req,
                                     pb::RecordLostDeclarationResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    const auto& d = req->declaration();
    if (d.id().empty() || d.id().size() > 64 || !ValidReplica(d.region()) ||
        !ValidReplica(d.declared_by()) || d.region() == app_.config.replica_id ||
        d.declared_by() == app_.config.replica_id || d.declared_by() == d.region() ||
        d.items_size() == 0 || d.items_size() > 100000) {
      return Invalid(
          "RecordLostDeclaration: another region's declaration against a third is required");
    }
    for (const auto& i : d.items()) {
      if (!services::ValidReclaimedItem(i.sku(), i.units(), i.received())) {
        return Invalid("RecordLostDeclaration: malformed item");
      }
    }
    bool already = false;
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      RefuseDeclarationPastTheLimit(tx, d.region(), app_.RegionName(d.region()), d.declared_by(),
                                    app_.RegionName(d.declared_by()), d.id());
      std::string values;
      for (const auto& i : d.items()) {
        values += (values.empty() ? "(" : ", (") + tx.quote(d.id()) + ", " + tx.quote(d.region()) +
                  ", " + tx.quote(d.declared_by()) + ", " + tx.quote(i.sku()) + ", " +
                  tx.quote(static_cast<int64_t>(i.units())) + ", " +
                  (i.received() == 0 ? std::string("NULL")
                                     : tx.quote(static_cast<int64_t>(i.received()))) +
                  ", to_timestamp(" + tx.quote(static_cast<double>(d.declared_unix_ms()) / 1000) +
                  "))";
      }
      already = tx.exec(
                      "INSERT INTO lost_declarations (id, region, declared_by, sku, units, "
                      "received, declared_at) VALUES " +
                      values + " ON CONFLICT (id, sku) DO NOTHING RETURNING 1")
                    .empty();
    });
    if (!st.ok()) return FromStatus(st);
    out->set_already(already);
    if (!already) {
      spdlog::warn("event=lost_declaration_recorded region={} declared_by={} id={} skus={}",
                   app_.RegionName(d.region()), app_.RegionName(d.declared_by()), d.id(),
                   d.items_size());
    }
    return grpc::Status::OK;
  }

  grpc::Status RetireRights(grpc::ServerContext* ctx, const pb::RetireRightsRequest* req,
                            pb::RetireRightsResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    const auto& d = req->declaration();
    if (d.id().empty() || d.id().size() > 64 || d.region() != app_.config.replica_id ||
        !ValidReplica(d.declared_by()) || d.items_size() > 100000) {
      return Invalid("RetireRights: a declaration against this region is required");
    }
    std::set<std::string_view> skus;
    for (const auto& i : d.items()) {
      if (!services::ValidReclaimedItem(i.sku(), i.units(), i.received()) ||
          (i.has_restocked() && i.restocked() > i.units()) || !skus.insert(i.sku()).second) {
        return Invalid("RetireRights: malformed or repeated item");
      }
    }
    uint64_t short_units = 0;
    std::string first_declared_by;  // set when another copy of the id came first under another name
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      out->Clear();
      short_units = 0;
      first_declared_by.clear();
      uint64_t total = 0;
      for (const auto& i : d.items()) total += i.units();
      // One decision per declaration: written off (what it took, per SKU, kept to answer its
      // declarer again) or, asked to settle one not written off before, refused for good.
      std::map<std::string, uint64_t> written;  // per SKU, what copies of the id took before
      std::map<std::string, uint64_t> owed;     // and what they came short of (rights_debt)
      std::map<std::string, uint64_t> ceiling;  // what its declarer said it restocked, once said
      const auto of = [](const std::map<std::string, uint64_t>& m, const std::string& sku) {
        auto it = m.find(sku);
        return it == m.end() ? uint64_t{0} : it->second;
      };
      const auto before = [&](const std::string& sku) { return of(written, sku) + of(owed, sku); };
      // What a copy asks of a SKU: what its declarer restocked, once a copy said it (the
      // declarer's own announcement; the first to say it holds), else what was reclaimed.
      const auto asked = [&](const pb::ReclaimedSku& i) {
        auto it = ceiling.find(i.sku());
        return it != ceiling.end() ? it->second : i.has_restocked() ? i.restocked() : i.units();
      };
      const auto says_restocked = [&](const pb::ReclaimedSku& i) {
        return i.has_restocked() && !ceiling.contains(i.sku());
      };
      if (tx.exec("INSERT INTO rights_retired (declaration_id, declared_by, units, refused) "
                  "VALUES (" +
                  tx.quote(d.id()) + ", " + tx.quote(d.declared_by()) + ", " +
                  tx.quote(static_cast<int64_t>(req->settle() ? 0 : total)) + ", " +
                  tx.quote(req->settle()) + ") ON CONFLICT (declaration_id) DO NOTHING RETURNING 1")
              .empty()) {
        const pqxx::row first =
            tx.exec1("SELECT refused, declared_by FROM rights_retired WHERE declaration_id = " +
                     tx.quote(d.id()) + " FOR UPDATE");
        const bool refused = first[0].as<bool>();
        const uint32_t by = first[1].as<uint32_t>();
        for (const auto& r : tx.exec("SELECT sku, units FROM rights_retired_items WHERE "
                                     "declaration_id = " +
                                     tx.quote(d.id()) + " ORDER BY sku")) {
          written[r[0].as<std::string>()] = r[1].as<uint64_t>();
        }
        for (const auto& r :
             tx.exec("SELECT sku, owed, restocked FROM rights_debt WHERE declaration_id = " +
                     tx.quote(d.id()))) {
          owed[r[0].as<std::string>()] = r[1].as<uint64_t>();
          ceiling[r[0].as<std::string>()] = r[2].as<uint64_t>();
        }
        // A settle, or the declarer's own write-off of what it refused itself, is answered with
        // the decision. A write-off that asks more of a SKU than the copies before took, or one
        // refused under another region's name, writes the rest off too. Honest copies of a
        // declaration are equal (its id is random, its declarer's); a different one came from a
        // peer's word, and a refusal or a smaller write-off under it must not keep this region's
        // units once the declarer restocked them: writing off more is the safe side (before, a
        // peer's settle sent first made the declarer's write-off "already", and the units were
        // sold twice: adversarial review, 2026-12-04).
        bool more = false;
        if (!req->settle() && !(refused && by == d.declared_by())) {
          for (const auto& i : d.items()) {
            more = more || asked(i) > before(i.sku()) || says_restocked(i);
          }
        }
        if (!more) {
          out->set_already(true);
          out->set_refused(refused);
          for (const auto& [sku, units] : written) {
            auto* item = out->add_items();
            item->set_sku(sku);
            item->set_units(units);
          }
          return;
        }
        first_declared_by = app_.RegionName(by);
      } else if (req->settle()) {
        out->set_refused(true);
        return;
      }
      std::string writes;
      for (const auto& i : d.items()) {
        const uint64_t wanted = asked(i) > before(i.sku()) ? asked(i) - before(i.sku()) : 0;
        uint64_t n = 0;
        std::optional<crdt::Inventory> inv;
        if (wanted > 0) {
          app_.RefuseLocalWriteIfHeld();
          inv = LoadInventoryForUpdate(tx, i.sku(), app_.config.replica_id);
          n = std::min<uint64_t>(
              wanted, std::max<int64_t>(0, inv->Rights(i.sku(), app_.config.replica_id)));
        }
        short_units += wanted - n;
        // The first copy that says what its declarer restocked sets how far any copy writes off,
        // and what this one comes short of that (a grant to this region still in flight, or units
        // it spent that the declarer had not seen) is owed: paid from this region's next rights
        // in the SKU (PayRightsDebt). Only such a copy leaves a debt (it is taken under the
        // stock's lock when there is one); another may ask more than was restocked (the
        // declarer's view had shrunk by its restock), and its shortfall is only logged.
        if (says_restocked(i)) {
          writes += "INSERT INTO rights_debt (declaration_id, sku, restocked, owed) VALUES (" +
                    tx.quote(d.id()) + ", " + tx.quote(i.sku()) + ", " +
                    tx.quote(static_cast<int64_t>(i.restocked())) + ", " +
                    tx.quote(static_cast<int64_t>(wanted - n)) + ");";
        }
        if (n == 0) continue;
        auto delta = inv->Take(i.sku(), n);
        if (!delta.ok()) throw AbortTx{delta.status()};
        SaveInventory(tx, i.sku(), *inv, *delta, app_.config.replica_id);
        writes += "INSERT INTO rights_retired_items (declaration_id, sku, units) VALUES (" +
                  tx.quote(d.id()) + ", " + tx.quote(i.sku()) + ", " +
                  tx.quote(static_cast<int64_t>(of(written, i.sku()) + n)) +
                  ") ON CONFLICT (declaration_id, sku) DO UPDATE SET units = EXCLUDED.units;";
        auto* item = out->add_items();
        item->set_sku(i.sku());
        item->set_units(n);
        out->set_units(out->units() + n);
      }
      // A later copy that took more: the decision is a write-off now, of everything taken.
      if (!first_declared_by.empty()) {
        writes += "UPDATE rights_retired SET refused = false, units = units + " +
                  tx.quote(static_cast<int64_t>(out->units())) +
                  " WHERE declaration_id = " + tx.quote(d.id()) + ";";
      }
      if (!writes.empty()) tx.exec(writes);
    });
    if (!st.ok()) return FromStatus(st);
    if (out->already()) return grpc::Status::OK;
    if (out->refused()) {
      spdlog::warn(
          "event=rights_retire_refused declaration={} declared_by={} (never written off here: "
          "this region keeps its rights and the declaration is void)",
          d.id(), app_.RegionName(d.declared_by()));
    } else {
      // Short: a grant to this region was still in flight, or it sold units the declarer did
      // not know about when it reclaimed them. Owed (rights_debt) when the copy said what its
      // declarer restocked, until this region's next rights pay it.
      spdlog::warn("event=rights_retired declaration={} declared_by={} units={} short={}{}", d.id(),
                   app_.RegionName(d.declared_by()), out->units(), short_units,
                   first_declared_by.empty()
                       ? std::string()
                       : " conflict=\"another copy of this declaration came first, from " +
                             first_declared_by + "; the difference is written off\"");
    }
    return grpc::Status::OK;
  }

  grpc::Status SettleLostDeclaration(grpc::ServerContext* ctx,
                                     const pb::SettleLostDeclarationRequest* req,
                                     pb::SettleLostDeclarationResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (req->id().empty() || req->id().size() > 64 || !ValidReplica(req->region()) ||
        req->region() == app_.config.replica_id || req->written_off_size() > 100000 ||
        (req->refused() && req->written_off_size() > 0)) {
      return Invalid("SettleLostDeclaration: an awaiting declaration and its region's answer");
    }
    std::map<std::string, uint64_t> written_off;
    for (const auto& i : req->written_off()) {
      if (!services::ValidReclaimedItem(i.sku(), i.units()) ||
          !written_off.emplace(i.sku(), i.units()).second) {
        return Invalid("SettleLostDeclaration: malformed written-off item");
      }
    }
    absl::Status st = app_.global->Run([&](pqxx::work& tx) {
      out->Clear();
      const auto rows =
          tx.exec("SELECT sku, units FROM lost_declarations WHERE id = " + tx.quote(req->id()) +
                  " AND region = " + tx.quote(req->region()) +
                  " AND declared_by = " + tx.quote(app_.config.replica_id) +
                  " AND announced AND NOT restocked AND NOT voided ORDER BY sku FOR UPDATE");
      if (rows.empty()) {
        out->set_already(true);
        return;
      }
      std::map<std::string, int64_t> declared;
      for (const auto& r : rows) declared[r[0].as<std::string>()] = r[1].as<int64_t>();
      for (const auto& [sku, units] : written_off) {
        auto it = declared.find(sku);
        if (it == declared.end() || static_cast<int64_t>(units) > it->second) {
          throw AbortTx{absl::InvalidArgumentError("SettleLostDeclaration: the region wrote off " +
                                                   std::to_string(units) + " of " + sku +
                                                   ", more than the declaration reclaimed")};
        }
      }
      if (req->refused()) {
        tx.exec0("UPDATE lost_declarations SET voided = true WHERE id = " + tx.quote(req->id()));
        return;
      }
      // Exactly what the region wrote off: its rights went down by these units, ours go up by
      // them, so the stock is counted once.
      for (const auto& [sku, units] : written_off) {
        app_.RefuseLocalWriteIfHeld();
        crdt::Inventory inv = LoadInventoryForUpdate(tx, sku, app_.config.replica_id);
        auto delta = inv.Restock(sku, units);
        if (!delta.ok()) throw AbortTx{delta.status()};
        app_.PayRightsDebt(tx, sku, inv, *delta);
        SaveInventory(tx, sku, inv, *delta, app_.config.replica_id);
        auto* item = out->add_items();
        item->set_sku(sku);
        item->set_units(units);
      }
      // Our write-off announcement, sent whenever the region's stream comes up, asks no more of
      // it than it wrote off.
      tx.exec(MarkRestockedSql(tx, req->id(), written_off));
    });
    if (!st.ok()) return FromStatus(st);
    if (out->already()) return grpc::Status::OK;
    uint64_t units = 0;
    for (const auto& i : out->items()) units += i.units();
    if (req->refused()) {
      spdlog::warn(
          "event=lost_declaration_void region={} id={} (the region came back and refused it: "
          "not restocked, its rights stay its own)",
          app_.RegionName(req->region()), req->id());
    } else {
      app_.rights_signals.StockChanged();
      spdlog::warn(
          "event=lost_declaration_restocked region={} id={} units={} (settled: what the region "
          "wrote off)",
          app_.RegionName(req->region()), req->id(), units);
    }
    return grpc::Status::OK;
  }

  grpc::Status MutateOrder(grpc::ServerContext* ctx, const pb::MutateOrderRequest* req,
                           pb::MutateOrderResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (!ValidOrderId(req->order_id()).ok() || !services::IsUserId(req->user_id())) {
      return Invalid("MutateOrder: order_id and user_id must be an order's and a customer's ids");
    }
    HttpResponse r;
    if (req->action() == pb::ORDER_ACTION_PAY) {
      if (auto st = services::ValidateCardNumber(req->card_number()); !st.ok()) {
        r = ProblemFromStatus(Unprocessable(std::string(st.message())));
      } else {
        r = app_.PayForUser(req->user_id(), req->order_id(), req->card_number(), false);
      }
    } else if (req->action() == pb::ORDER_ACTION_CANCEL) {
      r = app_.CancelForUser(req->user_id(), req->order_id(), false);
    } else {
      return Invalid("MutateOrder: action must be PAY or CANCEL");
    }
    spdlog::info("event=order_change_forwarded order={} from={} status={}", req->order_id(),
                 app_.RegionName(req->from_region()), r.status);
    out->set_http_status(r.status);
    out->set_body(r.body);
    return grpc::Status::OK;
  }

  grpc::Status FindAccount(grpc::ServerContext* ctx, const pb::FindAccountRequest* req,
                           pb::FindAccountResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    const services::BlindAccountQuery blind{
        .prefix = req->id_prefix(), .key = req->key(), .blinded = req->blinded_id()};
    // Its replicator answers a named question without a password only while
    // coordination.account_questions is blind-or-named (a rolling upgrade), and refuses it else.
    if (absl::Status st =
            services::ValidatePeerAccountQuestion(req->user_id(), req->password(), blind, true);
        !st.ok()) {
      return Invalid(absl::StrCat("FindAccount: ", st.message()));
    }
    if (req->user_id().empty()) {
      // Asked as every peer is, without the id (services/auth.h, BlindAccountQuery).
      app_.account_questions->Add({{"form", "blind"}}).Increment();
      auto residency = app_.FindBlindAccount(blind);
      if (!residency.ok()) return FromStatus(residency.status());
      out->set_found(residency->has_value());
      if (*residency) out->set_residency(**residency);
      return grpc::Status::OK;
    }
    // "legacy": named without a password, as a peer from before blind questions asks.
    app_.account_questions->Add({{"form", req->password().empty() ? "legacy" : "named"}})
        .Increment();
    auto user = app_.FindUser(req->user_id());
    if (!user.ok()) return FromStatus(user.status());
    if (*user) {
      out->set_found(true);
      out->set_residency((*user)->residency);
      if (req->password().empty()) return grpc::Status::OK;  // where it is, no login
      // A login elsewhere: its failure counts here, where the account lives (only here may its
      // id be written to Redis).
      if (!app_.TakeLoginAttempt(req->user_id())) {
        out->set_attempts_exhausted(true);
        return grpc::Status::OK;
      }
      out->set_password_ok(services::VerifyPassword(req->password(), (*user)->password_hash));
      if (out->password_ok()) app_.ReturnLoginAttempt(req->user_id());
    }
    return grpc::Status::OK;
  }

 private:
  RegionApp::Impl& app_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeRegionControlService(RegionApp::Impl& app) {
  return std::make_unique<ControlService>(app);
}

}  // namespace meridian::region
