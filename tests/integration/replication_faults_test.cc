// Faults in the replication data path, on real processes (two regions: PostgreSQL, Redis,
// meridian-region and meridian-replicator each, a link proxy between them):
// - a truncation of the outbox whose TruncateOutbox call timed out (its DELETE held up by a lock)
//   still counts when a peer reconnects from further back: the peer gets a state transfer, never
//   a stream that skips the rows the DELETE removed once the lock went;
// - a state transfer whose page holds more records than a batch may carry (an order with a
//   status is two records) is split below the peer's limit, so the transfer ends;
// - a peer's record that the apply could not store (a type or a value the schema refuses) is
//   refused as INVALID_ARGUMENT before any database is written, and the replicator counts it as
//   a rejected frame;
// - a receiver killed right after a burst comes back from its resume point, which the sender's
//   truncation never passes: it is sent nothing again, not the sender's full state.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <pqxx/pqxx>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "crdt/cart.h"
#include "crdt/codec.h"
#include "region/internal.grpc.pb.h"
#include "replication/frames.h"
#include "replication/replication.grpc.pb.h"
#include "services/auth.h"
#include "services/domain.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/forged_peer.h"

namespace meridian {
namespace {

using Json = nlohmann::json;
using test_support::Cluster;
using test_support::ForgedPeer;
namespace cpb = ::meridian::region::v1;
namespace rpb = ::meridian::replication::v1;

// us-east (replica 1) dials eu-west (replica 2); a forged peer speaks as us-east to eu-west.
constexpr size_t kUs = 0, kEu = 1;

// Polls every 100 ms.
bool Eventually(const std::function<bool()>& done, double seconds) {
  return test_support::Eventually(done, seconds, 100);
}

std::string UserOnShard(const std::string& base, int32_t shard);

class ReplicationFaults : public ::testing::Test {
 protected:
  void StartCluster(const std::string& shipping_yaml) {
    test_support::ClusterOptions o;
    o.name = "faults";
    o.regions = {{"us-east", "us", 1}, {"eu-west", "eu", 2}};
    o.shipping_yaml = shipping_yaml;
    auto c = Cluster::Start(o);
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = *std::move(c);
  }

  int64_t Count(size_t region, const std::string& db, const std::string& sql) {
    pqxx::connection conn(c_->Dsn(region, db));
    pqxx::work tx(conn);
    return tx.exec1(sql)[0].as<int64_t>();
  }

  void Exec(size_t region, const std::string& db, const std::string& sql) {
    pqxx::connection conn(c_->Dsn(region, db));
    pqxx::work tx(conn);
    tx.exec(sql);
    tx.commit();
  }

  double Metric(size_t region, const std::string& name) {
    auto v = c_->Metric(region, name);
    return v.ok() ? *v : -1;
  }

  // StartCluster, then waits until eu-west hears us-east.
  void StartConnected(const std::string& shipping_yaml) {
    ASSERT_NO_FATAL_FAILURE(StartCluster(shipping_yaml));
    ASSERT_TRUE(Eventually([&] { return Metric(kEu, kUsConnected) == 1; }, 20))
        << "eu-west never heard us-east";
  }

  // eu-west's full-state transfers to us-east because us-east's resume point lay in the
  // truncated part of the outbox.
  double TruncatedStateTransfersToUs() {
    return Metric(kEu,
                  "meridian_replication_state_transfers_total{peer=\"us-east\",reason="
                  "\"resume_point_truncated\"}");
  }

  static constexpr const char* kUsConnected = "meridian_replication_connected{peer=\"us-east\"}";

  // Writes `n` catalog records (sku-<first> on) into `region`'s global outbox, in one
  // transaction, as its region server would; each has a description of `description_bytes`
  // random characters, which do not compress.
  void InsertProducts(size_t region, int first, int n, size_t description_bytes) {
    const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    pqxx::connection conn(c_->Dsn(region, "global"));
    pqxx::work tx(conn);
    const uint32_t origin = c_->spec(region).replica_id;
    for (int i = first; i < first + n; ++i) {
      std::string description(description_bytes, 'x');
      for (char& ch : description) ch = alphabet[rng_() % alphabet.size()];
      const std::string sku = "sku-" + std::to_string(i);
      const Json write{{"sku", sku},
                       {"name", "Item " + std::to_string(i)},
                       {"description", description},
                       {"category", ""},
                       {"price_cents", 100},
                       {"currency", "USD"},
                       {"hlc", uint64_t{1000} + static_cast<uint64_t>(i)},
                       {"origin", origin}};
      tx.exec0("INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" +
               std::to_string(origin) + ", 'product', " + tx.quote(sku) + ", convert_to(" +
               tx.quote(write.dump()) + ", 'UTF8'), 'any')");
    }
    tx.commit();
  }

  // Writes `n` cart changes (sku-1 +1, a user each, named from `base`) into `region`'s outbox of
  // shard `shard`, in one transaction, as its region server would.
  void InsertCartChanges(size_t region, int32_t shard, const std::string& base, int n) {
    pqxx::connection conn(c_->Dsn(region, "shard" + std::to_string(shard)));
    pqxx::work tx(conn);
    const uint32_t origin = c_->spec(region).replica_id;
    for (int i = 0; i < n; ++i) {
      crdt::Cart cart(origin);
      const std::string user = UserOnShard(base + "-" + std::to_string(i), shard);
      const std::string delta = crdt::Encode(cart.Add("sku-1", 1));
      tx.exec0("INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" +
               std::to_string(origin) + ", 'cart', " + tx.quote(user) + ", " +
               tx.quote_raw(reinterpret_cast<const unsigned char*>(delta.data()), delta.size()) +
               ", 'any')");
    }
    tx.commit();
  }

  // As if `region`'s outbox of `db` had been truncated through a seq no peer has: a peer
  // reconnecting gets the database's full state.
  void TruncatedPastEveryPeer(size_t region, const std::string& db) {
    Exec(region, db, "UPDATE outbox_truncated SET through_seq = nextval('outbox_seq_seq')");
  }

  // The stream name of `region`'s database `db` ("global", "shard0", "shard1"): the region's
  // name of the database ("global", "shard-0", "shard-1"), a dash and its stream id.
  std::string Stream(size_t region, const std::string& db) {
    pqxx::connection conn(c_->Dsn(region, db));
    pqxx::work tx(conn);
    const std::string name = db == "global" ? db : "shard-" + db.substr(5);
    return name + "-" + tx.exec1("SELECT id FROM outbox_stream")[0].as<std::string>();
  }

  // Heartbeats to `peer` every 200 ms (so that eu-west keeps the stream) until no batch came
  // for a second since this call began, or since the last batch (`last_batch()`; nullopt while
  // none came): eu-west's window is full, or it has nothing more to send. False when the stream
  // broke, or after 20 s.
  using BatchTime = std::optional<std::chrono::steady_clock::time_point>;
  static bool BeatUntilQuiet(ForgedPeer& peer, const std::function<BatchTime()>& last_batch) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      rpb::Frame f;
      f.mutable_heartbeat();
      if (!peer.Write(f)) return false;
      const BatchTime last = last_batch();
      if (last &&
          std::chrono::steady_clock::now() - std::max(*last, start) > std::chrono::seconds(1)) {
        return true;
      }
    }
    return false;
  }

  std::unique_ptr<Cluster> c_;
  std::mt19937 rng_{7};
};

// A user id that the regions keep in shard `shard` (of two), derived from `base`.
std::string UserOnShard(const std::string& base, int32_t shard) {
  for (int i = 0;; ++i) {
    // A user id as the region makes them (ApplyDeltas refuses an order event's other ids).
    std::string id = services::UserIdForEmail(base + "-" + std::to_string(i) + "@example.com");
    if (services::ShardForUser(id, 2) == shard) return id;
  }
}

// ---------------------------------------------------------------------------------------------
// Defect 1: a truncation whose call timed out.

// Holds eu-west's global outbox in SHARE mode (as OutboxBarrier does) while eu-west's replicator
// truncates it: the DELETE waits behind the lock past the call's deadline (shortened to 1 s).
// Meanwhile us-east reconnects from before every row (a peer restored from an old backup; here a
// forged one that acknowledges nothing, so eu-west's window stops its shipping part way). Then the
// lock goes. A DELETE that committed after the call gave up would leave the rest of the rows
// unshipped: the stream would jump over them as over a gap. The peer must get every row or a state
// transfer.
TEST_F(ReplicationFaults, ATruncationThatTimedOutStillCountsForAPeerResumingFromBefore) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, truncate_timeout_ms: 1000, batch_max_records: 2, max_inflight_bytes: 65536}"));
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());

  // 60 catalog writes of ~4 KB that do not compress: far more than the 64 KiB window.
  constexpr int kRows = 60;
  InsertProducts(kEu, 0, kRows, 3900);
  std::set<int64_t> rows;
  const std::string stream = Stream(kEu, "global");
  {
    pqxx::connection conn(c_->Dsn(kEu, "global"));
    pqxx::work tx(conn);
    for (const auto& r : tx.exec("SELECT seq FROM outbox")) rows.insert(r[0].as<int64_t>());
  }
  ASSERT_EQ(rows.size(), static_cast<size_t>(kRows));

  pqxx::connection lock_conn(c_->Dsn(kEu, "global"));
  pqxx::work lock(lock_conn);
  lock.exec0("LOCK TABLE outbox IN SHARE MODE");
  auto deletes = [&](const std::string& where) {
    return Count(kEu, "global",
                 "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query "
                 "LIKE 'DELETE FROM outbox%' AND " +
                     where);
  };
  // us-east comes back, applies the rows and acks them: eu-west decides to truncate, and its
  // DELETE waits for the lock.
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(Eventually([&] { return deletes("wait_event_type = 'Lock'") > 0; }, 30))
      << "eu-west never tried to truncate its outbox";
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());

  // us-east reconnects from before every row (a peer restored from an old backup: a peer with
  // no resume point at all gets the state whatever was truncated), and acknowledges nothing.
  // (What the reader fills in is declared before the peer: the peer's destructor ends the
  // reader.)
  std::mutex mu;
  bool state = false;      // a state transfer of eu-west's global database came
  std::set<int64_t> got;   // the rows that came as deltas
  int64_t delta_last = 0;  // the highest seq the deltas covered
  auto last_batch = std::chrono::steady_clock::now();
  ForgedPeer peer(*c_, kUs, kEu, "", std::chrono::seconds(120));
  ASSERT_TRUE(peer.Hello({{stream, 0}}));
  peer.NextAsync([&](const rpb::Frame& f) {
    if (!f.has_batch() || f.batch().origin_database() != stream) return false;
    auto list = replication::DecodeBatch(f.batch(), 2);
    std::lock_guard<std::mutex> l(mu);
    last_batch = std::chrono::steady_clock::now();
    if (f.batch().state()) {
      state = true;
    } else {
      delta_last = std::max(delta_last, f.batch().last_seq());
      if (list.ok())
        for (const rpb::Record& r : list->records()) got.insert(r.seq());
    }
    return false;  // reads on until the stream ends
  });
  // Waits for `done`, with a heartbeat every 200 ms so that eu-west keeps the stream, and once
  // `acking`, an ack of the deltas that came (which opens eu-west's window).
  bool acking = false;
  int64_t acked = 0;
  auto beat_until = [&](const std::function<bool()>& done, double seconds) {
    const auto until = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(static_cast<int>(seconds * 1000));
    while (std::chrono::steady_clock::now() < until) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      rpb::Frame f;
      f.mutable_heartbeat();
      if (acking) {
        std::lock_guard<std::mutex> l(mu);
        if (delta_last > acked) {
          f.mutable_ack()->set_origin_database(stream);
          f.mutable_ack()->set_seq(acked = delta_last);
        }
      }
      if (!peer.Write(f)) break;
    }
    return done();
  };
  // eu-west checked our resume point: it sends its state (whose barrier waits for the lock), or
  // it ships deltas until its window is full (no batch for a second).
  EXPECT_TRUE(beat_until(
      [&] {
        {
          std::lock_guard<std::mutex> l(mu);
          if (state || (delta_last > 0 &&
                        std::chrono::steady_clock::now() - last_batch > std::chrono::seconds(1))) {
            return true;
          }
        }
        return Count(kEu, "global",
                     "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                     "query LIKE 'LOCK TABLE outbox%' AND wait_event_type = 'Lock'") > 0;
      },
      20));
  lock.commit();  // the DELETEs still waiting go ahead, or were cancelled with their calls
  EXPECT_TRUE(beat_until([&] { return deletes("true") == 0; }, 15));
  acking = true;
  // One more row, so that the stream must carry everything before it.
  InsertProducts(kEu, kRows, 1, 3900);
  const int64_t last = *rows.rbegin() + 1;
  EXPECT_TRUE(beat_until(
      [&] {
        std::lock_guard<std::mutex> l(mu);
        return delta_last >= last;
      },
      20))
      << "eu-west never shipped the row after the truncated ones";
  std::lock_guard<std::mutex> l(mu);
  std::vector<int64_t> missing;
  for (int64_t seq : rows)
    if (!got.count(seq)) missing.push_back(seq);
  EXPECT_TRUE(state || missing.empty())
      << "no state transfer, and the stream skipped " << missing.size() << " of " << rows.size()
      << " rows (seqs " << (missing.empty() ? 0 : missing.front()) << ".."
      << (missing.empty() ? 0 : missing.back()) << ")";
}

// ---------------------------------------------------------------------------------------------
// Defect 2: a state transfer's page of orders.

// A state page of N orders with a status is 2N records. With batch_max_records above 5,000 and
// room in batch_max_bytes, one page used to go out as one batch of more than kMaxBatchRecords:
// the peer refused it, the stream ended, and every redial sent the same batch again.
TEST_F(ReplicationFaults, AStateTransferOfOrdersStaysWithinTheBatchLimit) {
  constexpr int kOrders = 5001;
  // A long peer timeout: building a page this size takes seconds in the sanitizer build (with
  // other tests running). Heartbeats now go out meanwhile (AStatePageSlowToReadKeepsTheStreamUp);
  // the timeout stays long so that this test is about the batch limit alone.
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      "{heartbeat_ms: 200, peer_timeout_ms: 10000, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, batch_max_records: 5001, batch_max_bytes: 8388608, min_link_mbit: 1000}"));
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  // Paid orders in us-east's shard0 that its outbox no longer holds (truncated: the sequence
  // moved on, the outbox is empty), so eu-west can only get them from us-east's full state.
  const std::string user = UserOnShard("buyer", 0);
  Exec(kUs, "shard0",
       "INSERT INTO orders (order_id, user_id, status, total_cents, currency, reservation_id, "
       "owner_region, residency, lease_group, epoch, version) SELECT 'o-' || g, '" +
           user +
           "', 'paid', 100, 'USD', 'o-' || g, 'us-east', 'any', 1, 1, 2 FROM "
           "generate_series(1, " +
           std::to_string(kOrders) + ") g");
  TruncatedPastEveryPeer(kUs, "shard0");
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  auto orders = [&] {
    return Count(kEu, "shard0", "SELECT count(*) FROM orders WHERE status = 'paid'") +
           Count(kEu, "shard1", "SELECT count(*) FROM orders WHERE status = 'paid'");
  };
  EXPECT_TRUE(Eventually([&] { return orders() == kOrders; }, 60))
      << orders() << " of " << kOrders << " orders reached eu-west";
  EXPECT_EQ(Metric(kEu, "meridian_replication_rejected_frames_total{peer=\"us-east\"}"), 0);
}

// A state page that takes longer to read than the peer's timeout (here: us-east's orders table
// locked for 4 s, against a 1.5 s timeout) used to send nothing meanwhile: eu-west ended the
// stream as silent, and every redial started the transfer over into the same wait. Heartbeats
// now go out while the page is read, the stream stays up, and the orders arrive once the lock
// goes.
TEST_F(ReplicationFaults, AStatePageSlowToReadKeepsTheStreamUp) {
  constexpr int kOrders = 20;
  ASSERT_NO_FATAL_FAILURE(StartCluster(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300}"));
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  const std::string user = UserOnShard("slow-buyer", 0);
  Exec(kUs, "shard0",
       "INSERT INTO orders (order_id, user_id, status, total_cents, currency, reservation_id, "
       "owner_region, residency, lease_group, epoch, version) SELECT 'o-slow-' || g, '" +
           user +
           "', 'paid', 100, 'USD', 'o-slow-' || g, 'us-east', 'any', 1, 1, 2 FROM "
           "generate_series(1, " +
           std::to_string(kOrders) + ") g");
  TruncatedPastEveryPeer(kUs, "shard0");
  pqxx::connection holder(c_->Dsn(kUs, "shard0"));
  pqxx::work lock(holder);
  lock.exec0("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE");
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  // The page is being read (its query waits for the lock) before the 4 s start.
  ASSERT_TRUE(Eventually(
      [&] {
        return Count(kUs, "shard0",
                     "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                     "query LIKE '%FROM orders o WHERE%'") > 0;
      },
      20));
  std::this_thread::sleep_for(std::chrono::seconds(4));
  lock.abort();
  auto orders = [&] {
    return Count(kEu, "shard0", "SELECT count(*) FROM orders WHERE order_id LIKE 'o-slow-%'") +
           Count(kEu, "shard1", "SELECT count(*) FROM orders WHERE order_id LIKE 'o-slow-%'");
  };
  EXPECT_TRUE(Eventually([&] { return orders() == kOrders; }, 30)) << orders();
  std::ifstream log(c_->replicator_log(kEu));
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("event=replication_peer_silent peer=us-east"), std::string::npos)
      << "eu-west took us-east for silent while it read the page";
}

// ---------------------------------------------------------------------------------------------
// Defect 3: records the apply cannot store.

// A cart delta for `user` (sku-1 x2) from replica 1, at `seq`.
cpb::OutboxRecord CartRecord(const std::string& user, int64_t seq) {
  crdt::Cart cart(1);
  cpb::OutboxRecord r;
  r.set_seq(seq);
  r.set_origin(1);
  r.set_kind(cpb::OUTBOX_KIND_CART);
  r.set_key(user);
  r.set_payload(crdt::Encode(cart.Add("sku-1", 2)));
  r.set_residency("any");
  return r;
}

cpb::OutboxRecord JsonRecord(cpb::OutboxKind kind, const std::string& key, const Json& payload,
                             int64_t seq) {
  cpb::OutboxRecord r;
  r.set_seq(seq);
  r.set_origin(1);
  r.set_kind(kind);
  r.set_key(key);
  r.set_payload(payload.dump());
  r.set_residency("any");
  return r;
}

// An order's creation as us-east writes it, for a customer kept in shard1.
Json CreatedOrder(const std::string& order_id, const std::string& user) {
  return Json{
      {"event", "created"},
      {"order_id", order_id},
      {"user_id", user},
      {"group", 1},
      {"epoch", 1},
      {"version", 1},
      {"owner_region", "us-east"},
      {"total_cents", 1200},
      {"currency", "USD"},
      {"items", Json::array({Json{{"sku", "sku-1"}, {"quantity", 2}, {"price_cents", 600}}})}};
}

Json Product(const std::string& sku) {
  return Json{{"sku", sku},         {"name", "Lamp"},      {"description", "A lamp"},
              {"category", "home"}, {"price_cents", 1500}, {"currency", "USD"},
              {"hlc", 77},          {"origin", 1}};
}

// A batch of two records from us-east: a valid cart for a customer in shard0 (applied first),
// then a record for shard1 or the global database that the apply could not store. The call is
// refused as INVALID_ARGUMENT, and shard0 holds neither the cart nor the stream's mark.
TEST_F(ReplicationFaults, ARecordTheApplyCannotStoreIsRefusedBeforeAnythingIsWritten) {
  ASSERT_NO_FATAL_FAILURE(StartCluster(test_support::ClusterOptions().shipping_yaml));
  auto region = cpb::RegionInternal::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(c_->grpc_port(kEu)), grpc::InsecureChannelCredentials()));
  const std::string shopper = UserOnShard("shopper", 1);
  std::string email;  // a profile kept in shard1
  for (int i = 0; email.empty(); ++i) {
    const std::string e = "p" + std::to_string(i) + "@example.com";
    if (services::ShardForUser(services::UserIdForEmail(e), 2) == 1) email = e;
  }
  const Json profile{{"user_id", services::UserIdForEmail(email)},
                     {"email", email},
                     {"name", "P"},
                     {"password_hash", "h"},
                     {"hlc", 5},
                     {"origin", 1}};
  struct Case {
    std::string name;
    cpb::OutboxKind kind;
    std::string key;
    Json payload;
  };
  auto order = [&](const std::function<void(Json&)>& edit) {
    Json j = CreatedOrder("o-bad", shopper);
    edit(j);
    return j;
  };
  auto product = [&](const std::function<void(Json&)>& edit) {
    Json j = Product("sku-bad");
    edit(j);
    return j;
  };
  const std::vector<Case> cases = {
      {"total_cents as a string", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["total_cents"] = "12"; })},
      {"a negative total", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["total_cents"] = -5; })},
      {"currency as a number", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["currency"] = 5; })},
      {"owner_region as a number", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["owner_region"] = 7; })},
      {"a group beyond the lease groups", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["group"] = int64_t{3000000000}; })},
      {"an item's quantity as a string", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["items"][0]["quantity"] = "2"; })},
      {"an item's quantity beyond an integer", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["items"][0]["quantity"] = int64_t{3000000000}; })},
      {"an item's sku as a number", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["items"][0]["sku"] = 9; })},
      {"an item's price as a string", cpb::OUTBOX_KIND_ORDER, "o-bad",
       order([](Json& j) { j["items"][0]["price_cents"] = "600"; })},
      {"a product name of 201 characters", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["name"] = std::string(201, 'n'); })},
      {"a description of 4001 characters", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["description"] = std::string(4001, 'd'); })},
      {"a lowercase currency", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["currency"] = "usd"; })},
      {"a category that is not an id", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["category"] = "Bad Category"; })},
      {"a negative price", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["price_cents"] = -1; })},
      {"a product's origin as a string", cpb::OUTBOX_KIND_PRODUCT, "sku-bad",
       product([](Json& j) { j["origin"] = "x"; })},
      {"a profile's origin as a string", cpb::OUTBOX_KIND_USER,
       profile["user_id"].get<std::string>(),
       [&] {
         Json j = profile;
         j["origin"] = "x";
         return j;
       }()},
  };
  auto apply = [&](const std::string& db, const std::string& cart_user, const Case& c) {
    cpb::ApplyDeltasRequest req;
    req.set_origin(1);
    req.set_origin_database(db);
    *req.add_records() = CartRecord(cart_user, 1);
    *req.add_records() = JsonRecord(c.kind, c.key, c.payload, 2);
    cpb::ApplyDeltasResponse resp;
    grpc::ClientContext ctx;
    return region->ApplyDeltas(&ctx, req, &resp);
  };
  auto untouched = [&](const std::string& db, const std::string& cart_user) {
    return Count(kEu, "shard0", "SELECT count(*) FROM carts WHERE user_id = '" + cart_user + "'") ==
               0 &&
           Count(kEu, "shard0",
                 "SELECT count(*) FROM replication_applied WHERE origin = 1 AND origin_db = '" +
                     db + "'") == 0;
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].name);
    const std::string db = "case-" + std::to_string(i);
    const std::string cart_user = UserOnShard("cart" + std::to_string(i), 0);
    const grpc::Status st = apply(db, cart_user, cases[i]);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_TRUE(untouched(db, cart_user)) << "shard0 committed its share of a refused call";
  }
  // The same records well formed apply (the checks refuse no genuine write).
  const std::vector<Case> good = {
      {"order", cpb::OUTBOX_KIND_ORDER, "o-good", CreatedOrder("o-good", shopper)},
      {"product", cpb::OUTBOX_KIND_PRODUCT, "sku-good", Product("sku-good")},
      {"profile", cpb::OUTBOX_KIND_USER, profile["user_id"].get<std::string>(), profile},
  };
  for (const Case& g : good) {
    SCOPED_TRACE(g.name);
    const std::string db = "good-" + g.name;
    const std::string cart_user = UserOnShard("good-" + g.name, 0);
    const grpc::Status st = apply(db, cart_user, g);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_FALSE(untouched(db, cart_user));
  }

  // Through the replicator: a peer's frame with such a record ends the stream as a rejected
  // frame (INVALID_ARGUMENT, counted), not as a failing region that the peer retries.
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ForgedPeer peer(*c_, kUs, kEu);
  ASSERT_TRUE(peer.Hello());
  const std::string cart_user = UserOnShard("forged", 0);
  rpb::RecordList list;
  for (const cpb::OutboxRecord& o :
       {CartRecord(cart_user, 1),
        JsonRecord(cpb::OUTBOX_KIND_ORDER, "o-bad", cases[0].payload, 2)}) {
    rpb::Record* r = list.add_records();
    r->set_seq(o.seq());
    r->set_kind(static_cast<rpb::RecordKind>(o.kind()));
    r->set_key(o.key());
    r->set_payload(o.payload());
    r->set_residency(o.residency());
    r->set_committed_unix_ms(1);
  }
  rpb::Frame f;
  *f.mutable_batch() =
      replication::EncodeBatch(1, "forged-0", 1, 2, list, 1, replication::BatchKind::kDeltas);
  const grpc::Status st = peer.SendAndFinish(f);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("total_cents"), std::string::npos) << st.error_message();
  EXPECT_EQ(Metric(kEu, "meridian_replication_rejected_frames_total{peer=\"us-east\"}"), 1);
  EXPECT_TRUE(untouched("forged-0", cart_user));
}

// ---------------------------------------------------------------------------------------------
// Defect 4 (review of 2026-12-05): a resume point behind the truncation.

// The receiver's resume point (the mark its next hello gives) moves at most every 200 ms while
// batches apply, and acks used to let the sender truncate through everything applied. A burst
// whose last batches came within 200 ms of a mark left the resume point behind the truncation:
// a receiver killed then came back from below it and got the sender's full state instead of
// nothing. Now acks say where the receiver would resume, an idle stream's resume point moves to
// what it applied, and the outbox is truncated only through that.
TEST_F(ReplicationFaults, AReceiverKilledAfterABurstResumesWithoutAStateTransfer) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, batch_max_records: 2}"));
  const std::string stream = Stream(kEu, "shard0");
  // Cart changes land in a shard, so that the stream's resume point (in the global database)
  // moves only with the 200 ms mark, not in the apply's own transaction as a catalog write's
  // does. Eight writes of five changes, 20 ms apart, in batches of two: us-east applies them in
  // several calls within 200 ms, and the last ones move no mark.
  constexpr int kWrites = 8, kPerWrite = 5;
  for (int w = 0; w < kWrites; ++w) {
    InsertCartChanges(kEu, 0, "burst-" + std::to_string(w), kPerWrite);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int64_t last = Count(kEu, "shard0", "SELECT max(seq) FROM outbox");
  // Everything applied at us-east and eu-west's outbox truncated through it.
  ASSERT_TRUE(Eventually(
      [&] {
        return Count(kUs, "shard0", "SELECT count(*) FROM carts") == kWrites * kPerWrite &&
               Count(kEu, "shard0", "SELECT count(*) FROM outbox") == 0;
      },
      30))
      << "us-east did not apply the cart changes, or eu-west did not truncate its outbox";
  EXPECT_EQ(Count(kUs, "global",
                  "SELECT coalesce(max(seq), 0) FROM replication_applied WHERE origin = 2 AND "
                  "origin_db = '" +
                      stream + "'"),
            last)
      << "eu-west truncated its outbox past us-east's resume point";
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());  // -9: no session end moves the resume point
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(Eventually([&] { return Metric(kEu, kUsConnected) == 1; }, 20));
  EXPECT_EQ(TruncatedStateTransfersToUs(), 0)
      << "us-east came back from below eu-west's truncation";
}

// Defect 5 (review of 2026-12-05): one database whose outbox cannot be read.

// The replicator reads every database's outbox in one PollOutbox call, and one database that
// could not be read failed the call: nothing of the others reached any peer until it was back.
// Now that database's chunk says why and the others ship.
TEST_F(ReplicationFaults, AnOutboxThatCannotBeReadHoldsUpNoOtherDatabase) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300}"));
  Exec(kUs, "shard1", "ALTER TABLE outbox RENAME TO outbox_away");
  InsertProducts(kUs, 0, 3, 50);
  InsertCartChanges(kUs, 0, "while-away", 2);
  EXPECT_TRUE(Eventually(
      [&] {
        return Count(kEu, "global", "SELECT count(*) FROM products WHERE sku LIKE 'sku-%'") == 3 &&
               Count(kEu, "shard0", "SELECT count(*) FROM carts") == 2;
      },
      20))
      << "us-east's global and shard-0 outboxes did not ship while shard-1's could not be read";
  std::ifstream log(c_->replicator_log(kUs));
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("event=outbox_read_failed db=shard-1"), std::string::npos);
  // Back: what shard-1 takes from now on ships too.
  Exec(kUs, "shard1", "ALTER TABLE outbox_away RENAME TO outbox");
  InsertCartChanges(kUs, 1, "after", 2);
  EXPECT_TRUE(
      Eventually([&] { return Count(kEu, "shard1", "SELECT count(*) FROM carts") == 2; }, 20))
      << "shard-1's outbox did not ship once it could be read again";
}

// Defect 6 (review of 2026-12-05): the window and a state transfer.

// State batches carry no seq, and every apply call of them is acked with seq 0, which took every
// state batch in flight out of the window, applied or not: after each ack the sender could send
// a whole window more, and a transfer of small documents grew its outgoing queue toward the size
// of the database. Acks now say how many state batches they cover; one acked batch lets about one
// more go.
TEST_F(ReplicationFaults, AStateTransferStaysWithinTheWindowAsItsBatchesAreAcked) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, batch_max_records: 40, batch_max_bytes: 4096, max_inflight_bytes: 65536}"));
  // 2,000 carts at eu-west (documents: what a state transfer sends), each with a note of 200
  // random characters, so that a batch of 4 KiB holds about 16 and the whole transfer is some
  // 125 batches, 8 windows; and one change through its outbox, shipped and truncated, so that
  // a peer resuming from 0 needs the state.
  {
    const std::string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    pqxx::connection conn(c_->Dsn(kEu, "shard0"));
    pqxx::work tx(conn);
    for (int i = 0; i < 2000; ++i) {
      std::string note(200, 'x');
      for (char& ch : note) ch = alphabet[rng_() % alphabet.size()];
      crdt::Cart cart(2);
      cart.Add("sku-1", 1);
      cart.SetNote(note, crdt::HlcTimestamp{1000});
      const std::string state = crdt::Encode(cart);
      tx.exec0("INSERT INTO carts (user_id, state, residency) VALUES ('doc-" + std::to_string(i) +
               "', " +
               tx.quote_raw(reinterpret_cast<const unsigned char*>(state.data()), state.size()) +
               ", 'any')");
    }
    tx.commit();
  }
  InsertCartChanges(kEu, 0, "shipped", 1);
  ASSERT_TRUE(
      Eventually([&] { return Count(kEu, "shard0", "SELECT count(*) FROM outbox") == 0; }, 30))
      << "eu-west never truncated its shard-0 outbox";
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  const std::string stream = Stream(kEu, "shard0");
  std::mutex mu;
  int state_batches = 0;
  auto last_batch = std::chrono::steady_clock::now();
  ForgedPeer peer(*c_, kUs, kEu, "", std::chrono::seconds(60));
  ASSERT_TRUE(peer.Hello({{stream, 0}}));
  peer.NextAsync([&](const rpb::Frame& f) {
    if (f.has_batch() && f.batch().origin_database() == stream && f.batch().state()) {
      std::lock_guard<std::mutex> l(mu);
      ++state_batches;
      last_batch = std::chrono::steady_clock::now();
    }
    return false;  // reads on until the stream ends
  });
  auto received = [&] {
    std::lock_guard<std::mutex> l(mu);
    return state_batches;
  };
  auto until_quiet = [&] {
    return BeatUntilQuiet(peer, [&]() -> BatchTime {
      std::lock_guard<std::mutex> l(mu);
      if (state_batches == 0) return std::nullopt;
      return last_batch;
    });
  };
  ASSERT_TRUE(until_quiet()) << "no state batch came, or they never stopped";
  const int window = received();
  ASSERT_GT(window, 4) << "the window held fewer batches than this test needs";
  ASSERT_LT(window, 60) << "most of the transfer came in one window";
  // The applier's ack of one state batch (as a state apply call's: seq 0).
  rpb::Frame ack;
  ack.mutable_ack()->set_origin_database(stream);
  ack.mutable_ack()->set_seq(0);
  ack.mutable_ack()->set_state_batches(1);
  ASSERT_TRUE(peer.Write(ack));
  ASSERT_TRUE(until_quiet());
  EXPECT_LE(received() - window, 2) << window << " batches filled the window; after an ack of one, "
                                    << received() - window << " more came";
  // The ack of everything received opens it again.
  ack.mutable_ack()->set_state_batches(static_cast<uint32_t>(received() - 1));
  ASSERT_TRUE(peer.Write(ack));
  ASSERT_TRUE(until_quiet());
  EXPECT_GT(received() - window, 4);
  (void)peer.Cut();
}

// Left open by the review of 2026-12-05: a peer behind within the feed's reach.

// A session shipped every slice the shared feed held past its peer's position in one pass, with
// no window check between the batches. The feed reads ahead while a session waits for its
// window, so a peer that fell behind (it acked nothing for a while) got the whole backlog after
// its next ack: up to the feed's 200,000 records per database, far past max_inflight_bytes. us-east
// (forged, acking by hand) follows eu-west's global outbox while 3,000 catalog records of some 300
// bytes (about 0.9 MB, 14 windows) are written.
TEST_F(ReplicationFaults, APeerBehindWithinTheFeedGetsNoMoreThanItsWindow) {
  constexpr int kRecords = 3000;
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 10000, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, batch_max_records: 40, batch_max_bytes: 4096, max_inflight_bytes: 65536}"));
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  const std::string stream = Stream(kEu, "global");
  // us-east's resume point: every seq the outbox took so far (none of it is missing there).
  const int64_t from = Count(
      kEu, "global", "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq");
  struct Batch {
    int64_t first, last;
    size_t bytes;  // its frame's, as the sender counts it in the window
  };
  std::mutex mu;
  std::vector<Batch> batches;  // the delta batches, as they came
  std::set<int64_t> got;       // the records' seqs
  auto last_batch = std::chrono::steady_clock::now();
  // Written before the peer says hello: the insert takes seconds in the sanitizer build, and
  // the peer would send no heartbeat meanwhile.
  InsertProducts(kEu, 0, kRecords, 200);
  ForgedPeer peer(*c_, kUs, kEu, "", std::chrono::seconds(120));
  ASSERT_TRUE(peer.Hello({{stream, from}}));
  peer.NextAsync([&](const rpb::Frame& f) {
    if (!f.has_batch() || f.batch().origin_database() != stream || f.batch().state()) return false;
    auto list = replication::DecodeBatch(f.batch(), 2);
    std::lock_guard<std::mutex> l(mu);
    batches.push_back({f.batch().first_seq(), f.batch().last_seq(), f.ByteSizeLong()});
    if (list.ok())
      for (const rpb::Record& r : list->records()) got.insert(r.seq());
    last_batch = std::chrono::steady_clock::now();
    return false;  // reads on until the stream ends
  });
  auto until_quiet = [&] {
    return BeatUntilQuiet(peer, [&]() -> BatchTime {
      std::lock_guard<std::mutex> l(mu);
      if (batches.empty()) return std::nullopt;
      return last_batch;
    });
  };
  size_t acked = 0;  // batches
  auto ack = [&](int64_t seq) {
    rpb::Frame f;
    f.mutable_ack()->set_origin_database(stream);
    f.mutable_ack()->set_seq(seq);
    return peer.Write(f);
  };
  // What came and is not acked: at most the window and the batch that filled it (4 KiB of
  // records, and its frame's own bytes).
  constexpr size_t kMostUnacked = 65536 + 2 * 4096;
  auto unacked = [&] {
    std::lock_guard<std::mutex> l(mu);
    size_t n = 0;
    for (size_t i = acked; i < batches.size(); ++i) n += batches[i].bytes;
    return n;
  };
  ASSERT_TRUE(until_quiet()) << "no batch came, or they never stopped";
  size_t window = 0;
  {
    std::lock_guard<std::mutex> l(mu);
    window = batches.size();
  }
  EXPECT_LE(unacked(), kMostUnacked) << window << " batches before any ack";
  ASSERT_LT(window, 60u) << "most of the records came in one window";
  // An ack of half of them (the feed read the rest of the records meanwhile): half a window
  // more, not the backlog.
  int64_t half = 0;
  {
    std::lock_guard<std::mutex> l(mu);
    acked = window / 2;
    half = batches[acked - 1].last;
  }
  ASSERT_TRUE(ack(half));
  ASSERT_TRUE(until_quiet());
  {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_GT(batches.size(), window) << "the ack opened no window";
  }
  EXPECT_LE(unacked(), kMostUnacked) << "after an ack of " << acked << " of " << window
                                     << " batches, " << unacked() << " bytes unacked";
  // Acked as they come, every record arrives, in batches that leave no seq uncovered.
  ASSERT_TRUE(Eventually(
      [&] {
        int64_t last = 0;
        {
          std::lock_guard<std::mutex> l(mu);
          if (got.size() >= static_cast<size_t>(kRecords)) return true;
          last = batches.back().last;
        }
        (void)ack(last);  // a stream that broke shows in the count
        return false;
      },
      30))
      << got.size() << " of " << kRecords << " records came";
  std::lock_guard<std::mutex> l(mu);
  EXPECT_EQ(batches.front().first, from + 1);
  for (size_t i = 1; i < batches.size(); ++i)
    EXPECT_EQ(batches[i].first, batches[i - 1].last + 1) << "batch " << i;
  EXPECT_EQ(got.size(), static_cast<size_t>(kRecords));
}

// Left open by the review of 2026-12-05: a session's start waited for a slow truncation.

// Housekeeping held truncate_mu across its TruncateOutbox calls, and a session's first check of
// its peer's resume point (CatchUpFromState) takes the same lock: while one DELETE waited on a
// lock (up to truncate_timeout_ms, 10 s by default), no session to any peer could start shipping
// any database. Here eu-west's global outbox row is held FOR UPDATE while its replicator
// truncates it (a call of up to 20 s); us-east's replicator restarts meanwhile, and a cart change
// in shard 0 must reach it long before that call ends.
TEST_F(ReplicationFaults, ASessionStartsShippingWhileATruncationWaitsOnALock) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300, truncate_timeout_ms: 20000}"));
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  InsertProducts(kEu, 0, 1, 100);
  pqxx::connection conn(c_->Dsn(kEu, "global"));
  pqxx::work lock(conn);
  lock.exec("SELECT seq FROM outbox FOR UPDATE");
  auto waiting_deletes = [&] {
    return Count(kEu, "global",
                 "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                 "query LIKE 'DELETE FROM outbox%' AND wait_event_type = 'Lock'");
  };
  // us-east applies the row and marks it as its resume point; eu-west's DELETE of it waits.
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(Eventually([&] { return waiting_deletes() > 0; }, 20))
      << "eu-west never truncated its global outbox";
  const auto waiting_since = std::chrono::steady_clock::now();
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  InsertCartChanges(kEu, 0, "meanwhile", 1);
  EXPECT_TRUE(
      Eventually([&] { return Count(kUs, "shard0", "SELECT count(*) FROM carts") == 1; }, 8))
      << "eu-west's new session to us-east shipped nothing while its truncation waited";
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - waiting_since).count();
  EXPECT_GT(waiting_deletes(), 0) << "the DELETE ended before the change arrived (" << waited
                                  << " s): this test measured nothing";
  lock.abort();
  // us-east resumed where it had applied: the truncation in flight needed no state transfer.
  EXPECT_EQ(TruncatedStateTransfersToUs(), 0);
  EXPECT_TRUE(
      Eventually([&] { return Count(kEu, "global", "SELECT count(*) FROM outbox") == 0; }, 20))
      << "the truncation never went through once the lock was gone";
}

// Defect 7 (review of 2026-12-05): a seq that never committed, right after a resume point.

// Whether a peer's resume point lay in the truncated part of the outbox was guessed from the
// outbox's lowest row (or, empty, the sequence): a seq taken but never committed right after the
// resume point (a rolled-back write; PostgreSQL's sequence jumps after a crash) looked
// truncated, and a peer reconnecting then got the database's full state. The region now records
// how far it truncated.
TEST_F(ReplicationFaults, ASeqThatNeverCommittedAfterAResumePointNeedsNoStateTransfer) {
  ASSERT_NO_FATAL_FAILURE(StartConnected(
      "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, truncate_interval_ms: "
      "300}"));
  InsertCartChanges(kEu, 0, "before", 2);
  ASSERT_TRUE(Eventually(
      [&] {
        return Count(kUs, "shard0", "SELECT count(*) FROM carts") == 2 &&
               Count(kEu, "shard0", "SELECT count(*) FROM outbox") == 0;
      },
      30))
      << "us-east did not apply the changes, or eu-west did not truncate its outbox";
  Exec(kEu, "shard0", "SELECT nextval('outbox_seq_seq') FROM generate_series(1, 3)");
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(Eventually([&] { return Metric(kEu, kUsConnected) == 1; }, 20));
  EXPECT_EQ(TruncatedStateTransfersToUs(), 0)
      << "three seqs that never committed were taken for a truncation";
  // Shipping goes on past them.
  InsertCartChanges(kEu, 0, "after", 2);
  EXPECT_TRUE(
      Eventually([&] { return Count(kUs, "shard0", "SELECT count(*) FROM carts") == 4; }, 20));
}

}  // namespace
}  // namespace meridian
