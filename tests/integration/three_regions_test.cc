// Three regions as real processes (PostgreSQL, Redis, meridian-region, meridian-replicator each,
// and a delaying link proxy per pair), replicating over mutually authenticated gRPC streams.
// Concurrent edits converge; kill -9 and a partition lose nothing; pinned data stays home; a
// forged, malformed or oversized frame ends the stream with nothing applied.
//
// MERIDIAN_PARTITION_SECONDS sets the partition's length (default 5 s in CI; the full
// drill is 60: `MERIDIAN_PARTITION_SECONDS=60 ctest -R ThreeRegions`).

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "crdt/codec.h"
#include "region/internal.grpc.pb.h"
#include "replication/frames.h"
#include "replication/replication.grpc.pb.h"
#include "services/auth.h"
#include "services/domain.h"
#include "tests/integration/http_client.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"
#include "tests/support/forged_peer.h"
#include "tests/support/process.h"

namespace meridian {
namespace {

using Json = nlohmann::json;
using test_support::CartBatch;
using test_support::Cluster;
using test_support::ForgedPeer;
using testing::Request;
using testing::Response;
namespace rpb = ::meridian::replication::v1;
using Lines = std::map<std::string, int64_t>;

// "{sku-1: 1, sku-2: 3}", for failure messages.
std::string Show(const Lines& lines) {
  std::string out;
  for (const auto& [sku, qty] : lines)
    out += (out.empty() ? "" : ", ") + sku + ": " + std::to_string(qty);
  return "{" + out + "}";
}

constexpr size_t kUs = 0, kEu = 1, kAp = 2;
constexpr const char* kDatabases[] = {"global", "shard0", "shard1"};

// Polls `done` until it holds or `seconds` pass.
// Polls every 100 ms.
bool Eventually(const std::function<bool()>& done, double seconds) {
  return test_support::Eventually(done, seconds, 100);
}

// Writes `batches` empty batches of the stream "flood-0" (seqs 1 on) as eu-west, one a seq;
// counts what was written into `written` and stops when the stream is gone.
std::thread FloodWithEmptyBatches(ForgedPeer& eu, int64_t batches, std::atomic<int64_t>* written) {
  return std::thread([&eu, batches, written] {
    for (int64_t seq = 1; seq <= batches; ++seq) {
      rpb::Frame f;
      *f.mutable_batch() = replication::EncodeBatch(2, "flood-0", seq, seq, rpb::RecordList(), 1,
                                                    replication::BatchKind::kDeltas);
      if (!eu.Write(f)) return;
      ++*written;
    }
  });
}

// eu-west's stream into ap-south held up by the apply backpressure: ap-south's stream marks are
// locked in `mode` (an apply of empty batches only moves the stream's mark in ap-south's global
// database, so it waits for the lock), and `eu` floods `batches` empty batches until the apply
// queue is at its cap. Commit `lock` to let the applies run; join `flood` once the stream ends
// or the batches are written. No ASSERT while the flood runs: the lock holds its writes up.
constexpr int64_t kApplyQueueCap = (16 << 20) / 256;  // 16 MiB of queue, 256 B a batch
struct HeldApplies {
  HeldApplies(const std::string& dsn, const char* mode) : conn(dsn), lock(conn) {
    lock.exec0(std::string("LOCK TABLE replication_applied IN ") + mode + " MODE");
  }
  pqxx::connection conn;
  pqxx::work lock;
  std::atomic<int64_t> written{0};
  std::thread flood;
};

class ThreeRegions : public ::testing::Test {
 protected:
  void SetUp() override {
    test_support::ClusterOptions o;
    o.name = "three";
    o.delay_ms = {{"us-east/eu-west", 8}, {"us-east/ap-south", 20}, {"eu-west/ap-south", 12}};
    o.shipping_yaml =
        "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000, "
        "truncate_interval_ms: 300}";
    auto c = Cluster::Start(o);
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = *std::move(c);
  }

  std::string Operator() { return "Bearer " + c_->options().operator_token; }

  // A customer's token: registered in `region` (the profile replicates where residency allows).
  std::string Customer(size_t region, const std::string& email, const std::string& residency) {
    Response r = Request(
        c_->http_port(region), "POST", "/v1/users",
        Json{{"email", email}, {"password", "long-password"}, {"residency", residency}}.dump());
    EXPECT_EQ(r.status, 201) << r.body;
    Response s = Request(c_->http_port(region), "POST", "/v1/sessions",
                         Json{{"email", email}, {"password", "long-password"}}.dump());
    EXPECT_EQ(s.status, 200) << s.body;
    return Json::parse(s.body, nullptr, false).value("token", "");
  }

  void Product(size_t region, const std::string& sku, int price) {
    Response r = Request(c_->http_port(region), "PUT", "/v1/admin/products/" + sku,
                         Json{{"name", "Item " + sku}, {"price_cents", price}}.dump(),
                         {{"Authorization", Operator()}});
    ASSERT_TRUE(r.status == 200 || r.status == 201) << r.body;
  }

  // Waits until every region serves the product.
  void ProductsEverywhere(const std::vector<std::string>& skus) {
    for (const auto& sku : skus) {
      for (size_t i = 0; i < c_->size(); ++i) {
        ASSERT_TRUE(Eventually(
            [&] { return Request(c_->http_port(i), "GET", "/v1/products/" + sku).status == 200; },
            20))
            << sku << " never reached " << c_->spec(i).name;
      }
    }
  }

  int Add(size_t region, const std::string& token, const std::string& sku, int qty) {
    return Request(c_->http_port(region), "POST", "/v1/cart/items",
                   Json{{"sku", sku}, {"quantity", qty}}.dump(),
                   {{"Authorization", "Bearer " + token}})
        .status;
  }

  // A cart add at a region whose databases were rebuilt: it answers 503 (writing nothing) until
  // every connected peer that knows its past has sent its state, so it is retried until then.
  int AddAfterRebuild(size_t region, const std::string& token, const std::string& sku, int qty) {
    int status = 0;
    (void)Eventually([&] { return (status = Add(region, token, sku, qty)) != 503; }, 20);
    return status;
  }

  // The cart as the region's PostgreSQL holds it (both shards are searched).
  // On failure *error (when given) says why.
  std::optional<Lines> DbCart(size_t region, const std::string& user_id,
                              std::string* error = nullptr) {
    for (const char* db : {"shard0", "shard1"}) {
      try {
        pqxx::connection conn(c_->Dsn(region, db));
        pqxx::work tx(conn);
        pqxx::result r = tx.exec("SELECT state FROM carts WHERE user_id = " + tx.quote(user_id));
        if (r.empty()) continue;
        pqxx::binarystring b(r[0][0]);
        auto cart = crdt::DecodeCart(std::string_view(b.get(), b.size()), 99);
        if (!cart.ok()) {
          if (error) *error = "cart of " + user_id + " in " + db + ": " + cart.status().ToString();
          return std::nullopt;
        }
        Lines lines;
        for (const auto& [sku, q] : cart->Lines()) lines[sku] = q;
        return lines;
      } catch (const std::exception& e) {
        if (error) *error = std::string(db) + ": " + e.what();
        return std::nullopt;
      }
    }
    return Lines{};
  }

  int64_t Count(size_t region, const std::string& db, const std::string& sql) {
    pqxx::connection conn(c_->Dsn(region, db));
    pqxx::work tx(conn);
    return tx.exec1(sql)[0].as<int64_t>();
  }

  // A sample of a region's replicator metrics; -1 when the page lacks it.
  double Metric(size_t region, const std::string& name_and_labels) {
    return c_->Metric(region, name_and_labels).value_or(-1);
  }

  // Batches in `region`'s apply queue of the stream with `peer`; -1 when unknown.
  int64_t ApplyQueueBatches(size_t region, const std::string& peer) {
    return static_cast<int64_t>(
        Metric(region, "meridian_replication_apply_queue_batches{peer=\"" + peer + "\"}"));
  }

  // Holds ap-south's applies of `eu`'s batches (HeldApplies: the stream marks locked in
  // `lock_mode`), floods `batches` empty batches, and waits (EXPECT) for the queue's cap.
  std::unique_ptr<HeldApplies> HoldAppliesAndFillTheQueue(ForgedPeer& eu, const char* lock_mode,
                                                          int64_t batches = 100'000) {
    auto held = std::make_unique<HeldApplies>(c_->Dsn(kAp, "global"), lock_mode);
    held->flood = FloodWithEmptyBatches(eu, batches, &held->written);
    EXPECT_TRUE(Eventually([&] { return ApplyQueueBatches(kAp, "eu-west") >= kApplyQueueCap; }, 20))
        << ApplyQueueBatches(kAp, "eu-west");
    return held;
  }

  // Rows in the region's outboxes (every database), truncated once every peer acked them.
  int64_t OutboxRows(size_t region) {
    return Count(region, "global", "SELECT count(*) FROM outbox") +
           Count(region, "shard0", "SELECT count(*) FROM outbox") +
           Count(region, "shard1", "SELECT count(*) FROM outbox");
  }

  // True when every region's database holds the same cart for each user (and it is `want`
  // when given).
  bool Converged(const std::vector<std::string>& users, const std::map<std::string, Lines>& want,
                 std::string* why) {
    for (const auto& u : users) {
      auto first = DbCart(0, u, why);
      if (!first) return false;
      for (size_t i = 1; i < c_->size(); ++i) {
        auto other = DbCart(i, u, why);
        if (!other) return false;
        if (*other != *first) {
          *why = u + " differs between " + c_->spec(0).name + " and " + c_->spec(i).name;
          return false;
        }
      }
      if (want.count(u) && want.at(u) != *first) {
        *why = u + " converged to something else than expected";
        return false;
      }
    }
    return true;
  }

  // sku-1 in every region, and a new customer (residency any) registered at `region` with one
  // sku-1 in their cart there, converged everywhere: their token and id (the test failed when a
  // step did not succeed).
  struct Shopper {
    std::string token, id;
  };
  Shopper OneItemEverywhere(size_t region, const std::string& email) {
    Product(region, "sku-1", 500);
    ProductsEverywhere({"sku-1"});
    std::string token = Customer(region, email, "any");
    std::string id = services::UserIdForEmail(email);
    EXPECT_EQ(Add(region, token, "sku-1", 1), 200);
    std::string why;
    EXPECT_TRUE(Eventually(
        [&] {
          return Converged({id}, {{id, {{"sku-1", 1}}}}, &why);
        },
        30))
        << why;
    return {token, id};
  }

  // After a rebuild of `region`: its databases hold the profile of OneItemEverywhere's customer
  // (and no other) and their cart of one sku-1.
  bool TheOneItemCustomerIsBack(size_t region, const std::string& id) {
    auto cart = DbCart(region, id);
    return Count(region, "shard0", "SELECT count(*) FROM users") +
                   Count(region, "shard1", "SELECT count(*) FROM users") ==
               1 &&
           cart && *cart == Lines{{"sku-1", 1}};
  }

  // The outbox stream ids of the region's databases, in kDatabases' order.
  std::vector<std::string> Streams(size_t region) {
    std::vector<std::string> out;
    for (const char* db : kDatabases) {
      pqxx::connection conn(c_->Dsn(region, db));
      pqxx::work tx(conn);
      out.push_back(tx.exec1("SELECT id FROM outbox_stream")[0].as<std::string>());
    }
    return out;
  }

  void ExpectANewLifeAfterARestore(const std::string& email, const std::set<std::string>& restored,
                                   const std::function<void()>& backup,
                                   const std::function<void()>& restore);
  // The same for a logical restore of `dbs`: copies (CREATE DATABASE ... TEMPLATE) renamed over
  // the live ones, other databases with other OIDs.
  void ExpectANewLifeAfterACopyIsPutBack(const std::string& email,
                                         const std::vector<std::string>& dbs);

  // Drops `region`'s three databases and creates them empty (its region server stopped first).
  void RebuildDatabases(size_t region) {
    pqxx::connection admin(c_->Dsn(region, "postgres"));
    pqxx::nontransaction tx(admin);
    for (const char* db : kDatabases) {
      tx.exec(std::string("DROP DATABASE ") + db + " WITH (FORCE)");
      tx.exec(std::string("CREATE DATABASE ") + db);
    }
  }

  // ap-south's databases rebuilt (its region server restarted on them, its replicator running)
  // while eu-west's replicator is down: the stream name of ap-south's old shard0 database, which
  // a forged eu-west's hello can say it applied records of.
  std::string RebuildApSouthWithEuWestDown() {
    std::string old_stream;
    {
      pqxx::connection conn(c_->Dsn(kAp, "shard0"));
      pqxx::work tx(conn);
      old_stream = "shard-0-" + tx.exec1("SELECT id FROM outbox_stream")[0].as<std::string>();
    }
    EXPECT_TRUE(c_->KillReplicator(kEu).ok());
    EXPECT_TRUE(c_->KillRegionServer(kAp).ok());
    RebuildDatabases(kAp);
    EXPECT_TRUE(c_->StartRegionServer(kAp).ok());
    return old_stream;
  }

  // A forged peer's heartbeat, and the end of its (empty) state transfer of database `stream`
  // (as eu-west, replica 2); false once the stream is gone.
  static bool Beat(ForgedPeer& peer) {
    rpb::Frame f;
    f.mutable_heartbeat();
    return peer.Write(f);
  }
  static bool StateEnd(ForgedPeer& peer, const std::string& stream) {
    rpb::Frame f;
    *f.mutable_batch() = replication::EncodeBatch(2, stream, 0, 0, rpb::RecordList(), 1,
                                                  replication::BatchKind::kState);
    return peer.Write(f);
  }

  // A sample of the region server's /metrics (say `meridian_stock_writes_held`); -1 when absent.
  double RegionGauge(size_t region, const std::string& name) {
    return Cluster::Sample(Request(c_->http_port(region), "GET", "/metrics").body, name)
        .value_or(-1);
  }

  std::unique_ptr<Cluster> c_;
};

TEST_F(ThreeRegions, ConcurrentCartEditsAndCatalogWritesConverge) {
  for (const char* sku : {"sku-1", "sku-2"}) Product(kUs, sku, 500);
  ProductsEverywhere({"sku-1", "sku-2"});
  std::vector<std::string> tokens, users;
  for (int u = 0; u < 4; ++u) {
    std::string email = "shopper" + std::to_string(u) + "@example.com";
    tokens.push_back(Customer(kUs, email, "any"));
    users.push_back(services::UserIdForEmail(email));
  }
  // The same customers add to the same line in all three regions at once.
  constexpr int kRounds = 15;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (size_t region = 0; region < 3; ++region) {
    threads.emplace_back([&, region] {
      for (int k = 0; k < kRounds; ++k)
        for (const auto& t : tokens)
          if (Add(region, t, "sku-1", 1) != 200) ++failures;
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(failures, 0);
  std::map<std::string, Lines> want;
  for (const auto& u : users) want[u] = Lines{{"sku-1", 3 * kRounds}};  // no add lost
  std::string why;
  ASSERT_TRUE(Eventually([&] { return Converged(users, want, &why); }, 30)) << why;
  // Each applied record is measured twice: from its commit at the peer (two hosts' clocks), and
  // by its queue lag (waits at the peer and here, no network transit), which the failover
  // controllers' catch-up rule reads. On one host's clock the queue lag is never the larger,
  // but for the milliseconds each figure rounds down.
  for (const char* peer : {"us-east", "ap-south"}) {
    const std::string l = std::string("{peer=\"") + peer + "\"}";
    const double n = Metric(kEu, "meridian_replication_lag_ms_count" + l);
    EXPECT_GE(n, 4 * kRounds) << peer;  // this peer's adds, at least
    EXPECT_EQ(Metric(kEu, "meridian_replication_queue_lag_ms_count" + l), n) << peer;
    const double queue = Metric(kEu, "meridian_replication_queue_lag_ms_sum" + l);
    EXPECT_GE(queue, 0) << peer;
    EXPECT_LE(queue, Metric(kEu, "meridian_replication_lag_ms_sum" + l) + 2 * n) << peer;
  }

  // A remove in eu (after seeing every add) while ap adds another line: the removed line stays
  // removed everywhere, the concurrent add survives.
  std::thread remove([&] {
    EXPECT_EQ(Request(c_->http_port(kEu), "DELETE", "/v1/cart/items/sku-1", "",
                      {{"Authorization", "Bearer " + tokens[0]}})
                  .status,
              200);
  });
  EXPECT_EQ(Add(kAp, tokens[0], "sku-2", 2), 200);
  remove.join();
  want[users[0]] = Lines{{"sku-2", 2}};
  ASSERT_TRUE(Eventually([&] { return Converged(users, want, &why); }, 30)) << why;

  // The replicators restart and resend from their marks: nothing comes back.
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(c_->KillReplicator(i).ok());
  for (size_t i = 0; i < 3; ++i) ASSERT_TRUE(c_->StartReplicator(i).ok());
  EXPECT_EQ(Add(kUs, tokens[1], "sku-2", 1), 200);
  want[users[1]]["sku-2"] = 1;
  ASSERT_TRUE(Eventually([&] { return Converged(users, want, &why); }, 30)) << why;

  // Catalog: two regions write the same product at once; every region ends on one price.
  std::thread us([&] { Product(kUs, "sku-9", 100); });
  Product(kEu, "sku-9", 200);
  us.join();
  ProductsEverywhere({"sku-9"});
  auto price = [&](size_t i) {
    return Count(i, "global", "SELECT price_cents FROM products WHERE sku = 'sku-9'");
  };
  ASSERT_TRUE(Eventually([&] { return price(0) == price(1) && price(1) == price(2); }, 30));
  EXPECT_TRUE(price(0) == 100 || price(0) == 200);
}

TEST_F(ThreeRegions, KillNineAndAPartitionLoseNothing) {
  Product(kUs, "sku-1", 500);
  ProductsEverywhere({"sku-1"});
  std::vector<std::string> tokens, users;
  for (int u = 0; u < 6; ++u) {
    std::string email = "buyer" + std::to_string(u) + "@example.com";
    tokens.push_back(Customer(kEu, email, "any"));
    users.push_back(services::UserIdForEmail(email));
  }
  // Traffic everywhere, all the time; a user's acknowledged adds must all survive.
  std::atomic<bool> stop{false};
  std::vector<std::atomic<int>> acked(users.size()), attempted(users.size());
  std::vector<std::thread> traffic;
  for (size_t region = 0; region < 3; ++region) {
    traffic.emplace_back([&, region] {
      std::mt19937 rng(static_cast<unsigned>(region));
      while (!stop) {
        size_t u = rng() % users.size();
        ++attempted[u];
        if (Add(region, tokens[u], "sku-1", 1) == 200) ++acked[u];
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  auto pause = [](int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); };
  pause(800);
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());  // mid-stream
  pause(700);
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  pause(500);
  ASSERT_TRUE(c_->KillRegionServer(kEu).ok());
  pause(500);
  ASSERT_TRUE(c_->StartRegionServer(kEu).ok());
  pause(500);
  const char* env = std::getenv("MERIDIAN_PARTITION_SECONDS");
  const int partition_s = env ? std::max(1, std::atoi(env)) : 5;
  ASSERT_TRUE(c_->Partition(kAp).ok());
  pause(partition_s * 1000);
  ASSERT_TRUE(c_->Heal(kAp).ok());
  pause(1000);
  stop = true;
  for (auto& t : traffic) t.join();

  std::string why;
  ASSERT_TRUE(Eventually([&] { return Converged(users, {}, &why); }, 60)) << why;
  for (size_t u = 0; u < users.size(); ++u) {
    auto cart = DbCart(kUs, users[u]);
    ASSERT_TRUE(cart);
    int64_t have = cart->count("sku-1") ? cart->at("sku-1") : 0;
    // Every acknowledged add is there; at most the unanswered ones (cut off by the kill) more.
    EXPECT_GE(have, acked[u].load()) << users[u];
    EXPECT_LE(have, attempted[u].load()) << users[u];
  }
  // The outbox is truncated once every peer acked (housekeeping runs every few seconds).
  auto metrics = c_->Metrics(kUs);
  ASSERT_TRUE(metrics.ok());
  EXPECT_NE(metrics->find("meridian_replication_reconnects_total"), std::string::npos);
}

// A region rebuilt from nothing (its databases dropped) while the others have already truncated
// their outboxes catches up from the peers' full documents (anti-entropy), then from their
// outboxes; its own restarted sequences are a new stream to the peers, not an old one resumed.
TEST_F(ThreeRegions, ARebuiltRegionCatchesUpFromThePeersFullState) {
  Product(kUs, "sku-1", 500);
  Product(kEu, "sku-2", 700);
  ProductsEverywhere({"sku-1", "sku-2"});
  std::vector<std::string> tokens, users;
  for (int u = 0; u < 5; ++u) {
    std::string email = "early" + std::to_string(u) + "@example.com";
    tokens.push_back(Customer(u % 2 ? kEu : kUs, email, "any"));
    users.push_back(services::UserIdForEmail(email));
    ASSERT_EQ(Add(kUs, tokens.back(), "sku-1", u + 1), 200);
    ASSERT_EQ(Add(kEu, tokens.back(), "sku-2", 1), 200);
  }
  std::string eve = Customer(kEu, "eve@example.eu", "eu");
  const std::string eve_id = services::UserIdForEmail("eve@example.eu");
  ASSERT_EQ(Add(kEu, eve, "sku-1", 1), 200);
  std::string why;
  ASSERT_TRUE(Eventually([&] { return Converged(users, {}, &why); }, 30)) << why;
  // Every peer acked: the outboxes of us-east and eu-west are truncated.
  ASSERT_TRUE(Eventually([&] { return OutboxRows(kUs) == 0 && OutboxRows(kEu) == 0; }, 30));

  // ap-south loses everything and comes back empty.
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  RebuildDatabases(kAp);
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  // Writes go on at us-east while ap-south catches up from its full state: a state transfer's
  // cursor lands on a barrier taken after the session read the outbox's last seq, and must not
  // count as a resume point past the outbox's end.
  std::atomic<bool> writing{true};
  std::atomic<int> written{0};
  std::thread writer([&] {
    for (int i = 0; writing; ++i) {
      if (Add(kUs, tokens[i % tokens.size()], "sku-1", 1) == 200) ++written;
    }
  });
  const absl::Status started = c_->StartReplicator(kAp);
  if (started.ok()) std::this_thread::sleep_for(std::chrono::seconds(2));
  writing = false;
  writer.join();
  ASSERT_TRUE(started.ok()) << started;
  EXPECT_GT(written, 0);
  ASSERT_TRUE(Eventually([&] { return Converged(users, {}, &why); }, 30)) << why;
  for (size_t peer : {kUs, kEu}) {
    std::ifstream log(c_->replicator_log(peer));
    std::string line;
    while (std::getline(log, line)) {
      EXPECT_EQ(line.find("peer_resume_past_outbox_end"), std::string::npos)
          << c_->spec(peer).name << ": " << line;
    }
  }
  EXPECT_EQ(Count(kAp, "global", "SELECT count(*) FROM products WHERE sku IN ('sku-1', 'sku-2')"),
            2);
  EXPECT_EQ(Count(kAp, "shard0", "SELECT count(*) FROM users") +
                Count(kAp, "shard1", "SELECT count(*) FROM users"),
            5)
      << "the five profiles without residency, not eve's";
  for (const char* db : {"shard0", "shard1"}) {
    EXPECT_EQ(Count(kAp, db, "SELECT count(*) FROM carts WHERE user_id = '" + eve_id + "'"), 0);
  }
  // Its own new writes reach the others (its sequences started over: a new stream to them).
  ASSERT_EQ(AddAfterRebuild(kAp, tokens[0], "sku-2", 5), 200);
  ASSERT_TRUE(Eventually(
      [&] {
        auto cart = DbCart(kUs, users[0]);
        return cart && cart->count("sku-2") && cart->at("sku-2") == 6;
      },
      30));
  ASSERT_TRUE(Eventually([&] { return Converged(users, {}, &why); }, 30)) << why;
}

// ap-south's databases are rebuilt while its replicator keeps running (only the region server
// restarts): its streams get new names and their seqs start over. The sessions must start over
// too, so that the peers see ap-south's new resume points (and send their full state), and ap-
// south ships under the new names. Before, the sessions went on as if nothing had happened: no
// state came back, and ap-south's new writes went out under the old names, below the peers'
// marks for them, and were skipped until some reconnect.
TEST_F(ThreeRegions, ADatabaseRebuiltUnderARunningReplicatorShipsUnderItsNewName) {
  const Shopper shopper = OneItemEverywhere(kUs, "ann@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string ann = shopper.token, ann_id = shopper.id;
  ASSERT_TRUE(Eventually([&] { return OutboxRows(kUs) == 0; }, 30));

  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  RebuildDatabases(kAp);
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  // ann's profile and cart come back from the peers; then her new write at ap-south reaches
  // them.
  ASSERT_TRUE(Eventually([&] { return TheOneItemCustomerIsBack(kAp, ann_id); }, 30))
      << "ap-south never got ann's profile and cart back";
  ASSERT_EQ(AddAfterRebuild(kAp, ann, "sku-1", 2), 200);
  std::string why;
  EXPECT_TRUE(Eventually(
      [&] {
        return Converged({ann_id}, {{ann_id, {{"sku-1", 3}}}}, &why);
      },
      20))
      << why;
}

// A region rebuilt from nothing gets back the documents it had originated itself, which only its
// peers' databases hold (its outbox went with it, and theirs never had them). A peer that applied
// records of streams the region's hello no longer names knows it was rebuilt, and sends the full
// state of every database the region has no resume point for. The end of a transfer gives it one,
// even for a database whose outbox never took a record, so a reconnect does not send the state
// again.
TEST_F(ThreeRegions, ARebuiltRegionGetsItsOwnCustomersBackFromItsPeersOnce) {
  const Shopper shopper = OneItemEverywhere(kAp, "bea@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string bea = shopper.token, bea_id = shopper.id;
  const std::string rebuilt =
      "meridian_replication_state_transfers_total{peer=\"ap-south\",reason=\"peer_rebuilt\"}";
  auto transfers = [&](size_t region) { return c_->Metric(region, rebuilt).value_or(-1); };
  const double us_before = transfers(kUs), eu_before = transfers(kEu);

  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  RebuildDatabases(kAp);
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  ASSERT_TRUE(Eventually([&] { return TheOneItemCustomerIsBack(kAp, bea_id); }, 30))
      << "ap-south never got its own customer's profile and cart back";
  // Every database of both peers came (three each, with no resume point at ap-south).
  EXPECT_TRUE(Eventually(
      [&] { return transfers(kUs) - us_before >= 3 && transfers(kEu) - eu_before >= 3; }, 15))
      << "us-east sent " << transfers(kUs) - us_before << ", eu-west "
      << transfers(kEu) - eu_before;
  ASSERT_EQ(AddAfterRebuild(kAp, bea, "sku-1", 2), 200);
  std::string why;
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({bea_id}, {{bea_id, {{"sku-1", 3}}}}, &why);
      },
      20))
      << why;

  // Now ap-south has a resume point for every database of its peers: a new session resumes.
  const double us_after = transfers(kUs), eu_after = transfers(kEu);
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  ASSERT_EQ(Add(kAp, bea, "sku-1", 1), 200);
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({bea_id}, {{bea_id, {{"sku-1", 4}}}}, &why);
      },
      30))
      << why;
  EXPECT_EQ(transfers(kUs), us_after);
  EXPECT_EQ(transfers(kEu), eu_after);
}

// ap-south is put back to a backup taken after its customer's first change (`backup` takes it,
// `restore` puts back the databases `restored`, both with ap-south's region server stopped),
// after one more change of its own that its peers applied, and one at each peer that it applied.
// Each database remembers what it is (PostgreSQL's system identifier and timeline, its OID, its
// identity table's OID); a restore changes one of them, and the start gives each restored
// database a new outbox stream, and every database drops its resume points, as after a rebuild.
// Before, the restored databases went on under their old streams: its own change made after the
// backup never came back (the peers send a region its own records only in a full state, which they
// sent only to a region with no resume points), and ap-south's next change took that change's cart
// dot again, which the peers refused ("rewrites a write held here"): its stream stopped.
void ThreeRegions::ExpectANewLifeAfterARestore(const std::string& email,
                                               const std::set<std::string>& restored,
                                               const std::function<void()>& backup,
                                               const std::function<void()>& restore) {
  const Shopper shopper = OneItemEverywhere(kAp, email);
  ASSERT_FALSE(HasFailure());
  const std::vector<std::string> before = Streams(kAp);
  backup();
  ASSERT_FALSE(HasFailure());
  // After the backup: a change of ap-south's own, and one at each peer that ap-south applies.
  ASSERT_EQ(Add(kAp, shopper.token, "sku-1", 2), 200);
  ASSERT_EQ(Add(kUs, shopper.token, "sku-1", 5), 200);
  ASSERT_EQ(Add(kEu, shopper.token, "sku-1", 6), 200);
  std::string why;
  auto everywhere = [&](int64_t units) {
    return Eventually(
        [&] {
          return Converged({shopper.id}, {{shopper.id, {{"sku-1", units}}}}, &why);
        },
        30);
  };
  ASSERT_TRUE(everywhere(14)) << why;

  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  restore();
  ASSERT_FALSE(HasFailure());
  ASSERT_EQ(*DbCart(kAp, shopper.id), (Lines{{"sku-1", 1}})) << "the backup's cart";
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  const std::vector<std::string> after = Streams(kAp);
  for (size_t i = 0; i < after.size(); ++i) {
    if (restored.contains(kDatabases[i])) {
      EXPECT_NE(after[i], before[i]) << kDatabases[i] << " kept its stream";
    } else {
      EXPECT_EQ(after[i], before[i]) << kDatabases[i] << " was not restored";
    }
  }
  // The three changes made after the backup come back from the peers' state.
  EXPECT_TRUE(Eventually(
      [&] {
        auto cart = DbCart(kAp, shopper.id);
        return cart && *cart == Lines{{"sku-1", 14}};
      },
      30))
      << "ap-south never got back the changes made after the backup";
  // Its next change (once its peers' state is in) reaches both peers.
  ASSERT_EQ(AddAfterRebuild(kAp, shopper.token, "sku-1", 4), 200);
  EXPECT_TRUE(everywhere(18)) << why;
  // A later start of the same databases is not a restore.
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  EXPECT_EQ(Streams(kAp), after);
}

void ThreeRegions::ExpectANewLifeAfterACopyIsPutBack(const std::string& email,
                                                     const std::vector<std::string>& dbs) {
  auto admin = [&](const std::string& sql) {
    pqxx::connection conn(c_->Dsn(kAp, "postgres"));
    pqxx::nontransaction tx(conn);
    tx.exec(sql);
  };
  ExpectANewLifeAfterARestore(
      email, {dbs.begin(), dbs.end()},
      [&] {
        ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
        for (const std::string& db : dbs) {
          admin(absl::StrCat("CREATE DATABASE ", db, "_backup TEMPLATE ", db));
        }
        ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
      },
      [&] {
        for (const std::string& db : dbs) {
          admin(absl::StrCat("DROP DATABASE ", db, " WITH (FORCE)"));
          admin(absl::StrCat("ALTER DATABASE ", db, "_backup RENAME TO ", db));
        }
      });
}

TEST_F(ThreeRegions, ARegionRestoredFromACopyOfItsDatabasesGetsANewLifeAndLosesNoChange) {
  ExpectANewLifeAfterACopyIsPutBack("flo@example.com",
                                    {kDatabases[0], kDatabases[1], kDatabases[2]});
}

// Only the customer's shard is put back: the hello's resume points come from the global
// database, which kept its marks of the peers' shard streams past what the restored shard holds.
// The start drops every database's marks when any database is new, so the peers send their
// full state. Before (a rebuilt shard alone too), the peers resumed from the global database's
// marks, sent no state of those streams, and the shard never got back the changes since the
// backup.
TEST_F(ThreeRegions, ARegionWithOneShardRestoredGetsItsChangesBack) {
  const std::string email = "hal@example.com";
  const std::string shard =
      absl::StrCat("shard", services::ShardForUser(services::UserIdForEmail(email), 2));
  ExpectANewLifeAfterACopyIsPutBack(email, {shard});
}

// A physical restore to a point in time: ap-south's PostgreSQL put back to a base backup taken
// while it ran, replaying its WAL onto a new timeline (the databases keep their OIDs).
TEST_F(ThreeRegions, ARegionRestoredToAPointInTimeGetsANewLifeAndLosesNoChange) {
  std::string backup;
  ExpectANewLifeAfterARestore(
      "gus@example.com", {kDatabases[0], kDatabases[1], kDatabases[2]},
      [&] {
        absl::StatusOr<std::string> taken = c_->postgres(kAp).BaseBackup();
        ASSERT_TRUE(taken.ok()) << taken.status();
        backup = *taken;
      },
      [&] {
        absl::Status restored = c_->postgres(kAp).RestoreBaseBackup(backup);
        ASSERT_TRUE(restored.ok()) << restored;
      });
}

// ap-south's PostgreSQL is restored to a point in time under its running region server: the
// server's connections break, and the ones it opens again find another timeline. It refuses them
// (503) and stops with exit status 3; its next start gives the databases their new lives.
// Before, it reconnected and took the customer's next change at a cart dot the peers held.
TEST_F(ThreeRegions, ARegionServerRunningThroughARestoreTakesNoChangeUntilItRestarts) {
  const Shopper shopper = OneItemEverywhere(kAp, "ida@example.com");
  ASSERT_FALSE(HasFailure());
  absl::StatusOr<std::string> backup = c_->postgres(kAp).BaseBackup();
  ASSERT_TRUE(backup.ok()) << backup.status();
  ASSERT_EQ(Add(kAp, shopper.token, "sku-1", 2), 200);
  std::string why;
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({shopper.id}, {{shopper.id, {{"sku-1", 3}}}}, &why);
      },
      30))
      << why;
  absl::Status restored = c_->postgres(kAp).RestoreBaseBackup(*backup);
  ASSERT_TRUE(restored.ok()) << restored;
  EXPECT_EQ(Add(kAp, shopper.token, "sku-1", 4), 503);
  absl::StatusOr<int> exited = c_->AwaitRegionServerExit(kAp, absl::Seconds(10));
  ASSERT_TRUE(exited.ok()) << exited.status();
  EXPECT_TRUE(WIFEXITED(*exited) && WEXITSTATUS(*exited) == 3) << *exited;
  EXPECT_EQ(*DbCart(kAp, shopper.id), (Lines{{"sku-1", 1}})) << "the backup's cart, untouched";
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  ASSERT_EQ(AddAfterRebuild(kAp, shopper.token, "sku-1", 4), 200);
  EXPECT_TRUE(Eventually(
      [&] {
        return Converged({shopper.id}, {{shopper.id, {{"sku-1", 7}}}}, &why);
      },
      30))
      << why;
}

// A region whose databases were rebuilt takes no cart change of its own until every connected
// peer that knows its past has sent its state: a change before that would take a CRDT dot it had
// used before the rebuild (its replica id, counting from 1 again), which the peers take for one
// they have seen. A forged eu-west (eu-west's certificate) that says it applied records of
// ap-south's old databases holds ap-south's writes until it has ended a state transfer of each
// of its databases.
TEST_F(ThreeRegions, ARebuiltRegionTakesNoCartChangeUntilItsPeersStateIsIn) {
  const Shopper shopper = OneItemEverywhere(kAp, "cy@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string cy = shopper.token, cy_id = shopper.id;
  const std::string old_stream = RebuildApSouthWithEuWestDown();
  ASSERT_FALSE(HasFailure());
  // us-east (real) sends its state: cy's profile and cart come back.
  ASSERT_TRUE(Eventually(
      [&] {
        auto cart = DbCart(kAp, cy_id);
        return cart && *cart == Lines{{"sku-1", 1}};
      },
      30))
      << "ap-south never got cy's cart back from us-east";

  const std::vector<std::string> eu_streams = {"global-e0", "shard-0-e0", "shard-1-e0"};
  {
    ForgedPeer eu(*c_, kEu, kAp, "", std::chrono::seconds(120));
    ASSERT_TRUE(eu.Hello({{old_stream, 5}}, eu_streams));
    auto beat = [&] { return Beat(eu); };
    // Waits for the hold with a change that changes nothing (the quantity it has): until the
    // hold is on, it answers 200 and writes nothing.
    auto same_quantity = [&] {
      return Request(c_->http_port(kAp), "PUT", "/v1/cart/items/sku-1",
                     Json{{"quantity", 1}}.dump(), {{"Authorization", "Bearer " + cy}})
          .status;
    };
    int status = 0;
    EXPECT_TRUE(Eventually([&] { return beat() && (status = same_quantity()) == 503; }, 10))
        << "a cart change at the rebuilt ap-south answered " << status
        << " while eu-west's state was awaited";
    EXPECT_EQ(Add(kAp, cy, "sku-1", 1), 503);
    // Two of eu-west's three databases: still held.
    auto state_end = [&](const std::string& stream) { return StateEnd(eu, stream); };
    ASSERT_TRUE(state_end(eu_streams[0]) && state_end(eu_streams[1]));
    for (int i = 0; i < 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      ASSERT_TRUE(beat());
      EXPECT_EQ(Add(kAp, cy, "sku-1", 1), 503) << "released before eu-west's last database";
    }
    EXPECT_EQ(*DbCart(kAp, cy_id), (Lines{{"sku-1", 1}})) << "a refused change was written";
    ASSERT_TRUE(state_end(eu_streams[2]));
    EXPECT_TRUE(
        Eventually([&] { return beat() && (status = Add(kAp, cy, "sku-1", 1)) == 200; }, 10))
        << "still " << status << " after eu-west's state came";
  }
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  std::string why;
  EXPECT_TRUE(Eventually(
      [&] {
        return Converged({cy_id}, {{cy_id, {{"sku-1", 2}}}}, &why);
      },
      30))
      << why;
}

// A peer counts as heard by a rebuilt region only once its state is in, and only the peer's
// latest session decides. Two faults, each fixed before it had a test on real processes:
// - A session that ended with the peer's state half sent counted the peer as heard: the region's
//   stock hold for it ended, and a restock went through on a stale escrow view (fixed in
//   2cef7c3; before, the restock at the end of part 2 answered 200).
// - An old session winding down after the peer's next hello cleared the hold the newer session
//   had set (fixed in 283b748; before, the add in part 1 answered 200 with eu-west's state not
//   in). Here the old session's end waits for an apply that the test holds up by taking the
//   stream's advisory lock in ap-south's databases, so it ends after the new hello.
// eu-west is a forged peer (eu-west's certificate) whose hellos say it applied records of
// ap-south's old databases.
TEST_F(ThreeRegions, ARebuiltRegionStaysHeldForAPeerWhoseSessionEndedBeforeItsStateWasIn) {
  const Shopper shopper = OneItemEverywhere(kAp, "fay@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string fay = shopper.token, fay_id = shopper.id;
  const std::string old_stream = RebuildApSouthWithEuWestDown();
  ASSERT_FALSE(HasFailure());
  auto restock = [&] {
    return Request(c_->http_port(kAp), "POST", "/v1/admin/inventory/sku-1/restock",
                   Json{{"units", 5}}.dump(), {{"Authorization", Operator()}});
  };
  auto add = [&] { return Add(kAp, fay, "sku-1", 1); };
  // Released without eu-west after two peer timeouts (us-east sent its state): cart changes go
  // through, stock changes wait for eu-west.
  ASSERT_EQ(AddAfterRebuild(kAp, fay, "sku-1", 1), 200);
  Response r = restock();
  ASSERT_EQ(r.status, 503) << r.body;
  ASSERT_NE(r.body.find("eu-west"), std::string::npos) << r.body;

  const std::vector<std::string> eu_streams = {"global-e0", "shard-0-e0", "shard-1-e0"};
  // Part 1: session A holds ap-south for eu-west's state; its batch's apply waits for the
  // stream's lock.
  std::vector<std::unique_ptr<pqxx::connection>> lockers;
  for (const char* db : {"shard0", "shard1"}) {
    lockers.push_back(std::make_unique<pqxx::connection>(c_->Dsn(kAp, db)));
    pqxx::nontransaction tx(*lockers.back());
    tx.exec("SELECT pg_advisory_lock(hashtextextended('stream:2/shard-0-e0', 0))");
  }
  auto a = std::make_unique<ForgedPeer>(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(a->Hello({{old_stream, 5}}, eu_streams));
  int status = 0;
  ASSERT_TRUE(Eventually([&] { return Beat(*a) && (status = add()) == 503; }, 10))
      << "an add answered " << status << " while eu-west's state was awaited";
  ASSERT_TRUE(a->Write(
      test_support::CartBatch(2, fay_id, "any", 1, replication::BatchKind::kDeltas, "shard-0-e0")));
  auto waiting_applies = [&] {
    return Count(kAp, "shard0",
                 "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'") +
           Count(kAp, "shard1",
                 "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'");
  };
  ASSERT_TRUE(Eventually([&] { return Beat(*a) && waiting_applies() > 0; }, 10))
      << "session A's apply never waited for the stream's lock";
  // Session B (eu-west redials) replaces A: A's end waits for its apply.
  auto b = std::make_unique<ForgedPeer>(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(b->Hello({{old_stream, 5}}, eu_streams));
  for (int i = 0; i < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ASSERT_TRUE(Beat(*b));
  }
  lockers.clear();  // A's apply goes through and A ends, after B's hello
  ASSERT_TRUE(Eventually([&] { return Beat(*b) && waiting_applies() == 0; }, 10));
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    ASSERT_TRUE(Beat(*b));
    EXPECT_EQ(add(), 503) << "released by session A's end while session B awaits the state";
  }
  EXPECT_EQ(RegionGauge(kAp, "meridian_local_writes_held"), 1);
  a.reset();

  // Part 2: B sends one of eu-west's three databases and ends. The cart changes are released
  // (eu-west stays away), the stock changes are not: eu-west has not been heard.
  ASSERT_TRUE(StateEnd(*b, eu_streams[0]));
  ASSERT_TRUE(Beat(*b));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  b.reset();
  EXPECT_TRUE(Eventually([&] { return (status = add()) == 200; }, 10))
      << "cart changes still answer " << status << " after session B ended";
  r = restock();
  EXPECT_EQ(r.status, 503) << "a restock went through with eu-west's state not in: " << r.body;
  EXPECT_NE(r.body.find("eu-west"), std::string::npos) << r.body;
  EXPECT_EQ(RegionGauge(kAp, "meridian_stock_writes_held"), 1);

  // Part 3: a session that brings the rest of the state in releases the stock changes (ap-south
  // holds resume points for the other two databases: global-e0's state ended in session B, and
  // shard-0-e0 carried A's deltas).
  ForgedPeer c(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(c.Hello({{old_stream, 5}}, eu_streams));
  ASSERT_TRUE(StateEnd(c, eu_streams[2]));
  EXPECT_TRUE(Eventually([&] { return Beat(c) && (status = restock().status) == 200; }, 10))
      << "a restock still answers " << status << " after eu-west's whole state came";
  EXPECT_EQ(RegionGauge(kAp, "meridian_stock_writes_held"), 0);
  EXPECT_EQ(RegionGauge(kAp, "meridian_local_writes_held"), 0);
}

// A region server that starts with new databases cannot tell a new region from a rebuilt one:
// until its replicator has heard from the peers (which may know its past) it takes no cart or
// stock change. Before, changes in that window (here, with the replicator down, as long as it
// likes) were answered 200 and took CRDT dots of the region's replica again from 1, which the
// peers held from before the rebuild: the carts converged to 8 units where 9 had been added.
TEST_F(ThreeRegions, ARebuiltRegionTakesNoChangeBeforeItsReplicatorHasHeardFromThePeers) {
  const Shopper shopper = OneItemEverywhere(kAp, "dee@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string dee = shopper.token, dee_id = shopper.id;
  auto held = [&] { return RegionGauge(kAp, "meridian_local_writes_held"); };
  EXPECT_EQ(held(), 0);

  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  RebuildDatabases(kAp);
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  // No replicator yet, so nobody has heard from the peers: held, however long it takes.
  for (int i = 0; i < 3; ++i) {
    Response r = Request(c_->http_port(kAp), "POST", "/v1/cart/items",
                         Json{{"sku", "sku-1"}, {"quantity", 2}}.dump(),
                         {{"Authorization", "Bearer " + dee}});
    EXPECT_EQ(r.status, 503) << r.body;
    EXPECT_NE(r.body.find("databases are new"), std::string::npos) << r.body;
    EXPECT_EQ(r.Header("retry-after"), "1");
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  EXPECT_EQ(held(), 1);
  // A release that does not say the peers were heard (a replicator that ends a peer's state
  // transfer before it has read the region's status) leaves the hold of the new databases on.
  // Before, it ended it, and under load a second peer's hello came only after a write got in.
  {
    auto internal = region::v1::RegionInternal::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(c_->grpc_port(kAp)), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    region::v1::SetLocalWriteHoldRequest release;
    release.set_hold(false);
    region::v1::SetLocalWriteHoldResponse out;
    ASSERT_TRUE(internal->SetLocalWriteHold(&ctx, release, &out).ok());
    Response r = Request(c_->http_port(kAp), "POST", "/v1/cart/items",
                         Json{{"sku", "sku-1"}, {"quantity", 2}}.dump(),
                         {{"Authorization", "Bearer " + dee}});
    EXPECT_EQ(r.status, 503) << r.body;
    EXPECT_EQ(held(), 1);
  }
  // A region server that restarts before the release is still held: its databases are no
  // longer new to it, but they were never released (table write_hold). Before, it came back
  // released and took the add.
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  {
    Response r = Request(c_->http_port(kAp), "POST", "/v1/cart/items",
                         Json{{"sku", "sku-1"}, {"quantity", 2}}.dump(),
                         {{"Authorization", "Bearer " + dee}});
    EXPECT_EQ(r.status, 503) << r.body;
    EXPECT_NE(r.body.find("databases are new"), std::string::npos) << r.body;
    EXPECT_EQ(held(), 1);
  }
  EXPECT_EQ(Count(kAp, "shard0", "SELECT count(*) FROM carts") +
                Count(kAp, "shard1", "SELECT count(*) FROM carts"),
            0)
      << "a refused change was written";

  // The replicator comes: the peers say they know ap-south's past, send their state, and the
  // add goes through once it is in.
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  ASSERT_EQ(AddAfterRebuild(kAp, dee, "sku-1", 2), 200);
  EXPECT_EQ(held(), 0);
  std::string why;
  EXPECT_TRUE(Eventually(
      [&] {
        return Converged({dee_id}, {{dee_id, {{"sku-1", 3}}}}, &why);
      },
      30))
      << why;
}

// A rebuilt region that a peer knowing its last changes cannot reach still takes changes after
// two peer timeouts (a peer that is down must not hold it for ever). Its cart changes then take
// dots of a new actor (its replica id and its new shard database's stream id), never one its
// earlier life used. Before, they counted from its replica id's dot 1 again: eu-west, which held
// ap-south's last change, dropped ap-south's new add as a dot it had seen, ap-south dropped
// eu-west's copy of that last change for the same reason, and the two carts never converged.
// And that last change, which only eu-west held, reaches us-east too: before, nobody sent it.
TEST_F(ThreeRegions, ARebuiltRegionReleasedWithoutAPeerNeverReusesACartDotThatPeerHeld) {
  const Shopper shopper = OneItemEverywhere(kAp, "eve@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string eve = shopper.token, eve_id = shopper.id;
  for (const char* sku : {"sku-2", "sku-3"}) Product(kUs, sku, 500);
  ProductsEverywhere({"sku-2", "sku-3"});
  ASSERT_FALSE(HasFailure());
  // ap-south's last change before its loss reaches eu-west only.
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_EQ(Add(kAp, eve, "sku-2", 1), 200);
  ASSERT_TRUE(Eventually(
      [&] {
        auto cart = DbCart(kEu, eve_id);
        return cart && *cart == Lines{{"sku-1", 1}, {"sku-2", 1}};
      },
      30))
      << "eu-west never got ap-south's last change";
  // ap-south is lost and rebuilt while eu-west cannot be heard; us-east gives back what it knows.
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  RebuildDatabases(kAp);
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  ASSERT_EQ(AddAfterRebuild(kAp, eve, "sku-3", 1), 200);
  ASSERT_EQ(*DbCart(kAp, eve_id), (Lines{{"sku-1", 1}, {"sku-3", 1}}));
  // Stock counts per replica id, not per actor: eu-west may hold ap-south's last sales and
  // restocks, which ap-south would count again. Stock changes wait for eu-west.
  auto restock = [&] {
    return Request(c_->http_port(kAp), "POST", "/v1/admin/inventory/sku-2/restock",
                   Json{{"units", 5}}.dump(), {{"Authorization", Operator()}});
  };
  Response held = restock();
  EXPECT_EQ(held.status, 503) << held.body;
  EXPECT_NE(held.body.find("eu-west"), std::string::npos) << held.body;
  EXPECT_EQ(RegionGauge(kAp, "meridian_stock_writes_held"), 1);
  EXPECT_EQ(Add(kAp, eve, "sku-3", 1), 200) << "a cart change while only stock is held";
  // A replicator that restarts takes the stock hold up from the region (nothing else would
  // release it): still held after its first status read, released once eu-west is heard.
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(restock().status, 503);
  // The hold outlives both processes (table write_hold): the region server held from its start,
  // before its replicator is back, and after. Before, it started released and its replicator
  // read an empty list from it: the restock answered 200.
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
  ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  held = restock();
  EXPECT_EQ(held.status, 503) << held.body;
  EXPECT_NE(held.body.find("eu-west"), std::string::npos) << held.body;
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  EXPECT_EQ(restock().status, 503);

  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  int status = 0;
  EXPECT_TRUE(Eventually([&] { return (status = restock().status) == 200; }, 30))
      << "a restock at ap-south still answers " << status << " after eu-west was heard";
  // ap-south's new add reaches eu-west, eu-west's copy of the last change of ap-south's earlier
  // life reaches ap-south (eu-west's state) and us-east (the survivors' exchange that eu-west and
  // us-east start on seeing ap-south's streams gone: no one else holds that change).
  const Lines all = {{"sku-1", 1}, {"sku-2", 1}, {"sku-3", 2}};
  std::string why;
  EXPECT_TRUE(Eventually([&] { return Converged({eve_id}, {{eve_id, all}}, &why); }, 30)) << why;
  for (size_t region : {kUs, kEu, kAp}) {
    auto cart = DbCart(region, eve_id);
    EXPECT_TRUE(cart && *cart == all)
        << c_->spec(region).name << " " << (cart ? Show(*cart) : "no cart");
  }

  // That exchange, once done, is recorded in us-east's state_dir: a restarted us-east (kill -9)
  // sees ap-south's streams gone again but does not ask eu-west again. Before, it sent eu-west
  // its marks after every restart (and eu-west parked them, on every session).
  const std::string ap = absl::StrCat(" lost_replica=", c_->spec(kAp).replica_id);
  auto us_log = [&](size_t from) {
    return test_support::forged_peer_detail::ReadFileOrEmpty(c_->replicator_log(kUs)).substr(from);
  };
  ASSERT_TRUE(Eventually(
      [&] {
        return us_log(0).find("event=survivor_exchange_done peer=eu-west" + ap +
                              " taken_over_again=false recorded=true") != std::string::npos;
      },
      30));
  const size_t before_restart = us_log(0).size();
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  EXPECT_TRUE(Eventually(
      [&] {
        return us_log(before_restart)
                   .find("event=survivor_exchange_already_done peer=eu-west" + ap) !=
               std::string::npos;
      },
      30))
      << us_log(before_restart);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // a session's exchange step, had it asked
  EXPECT_EQ(us_log(before_restart).find("event=survivor_marks_sent peer=eu-west" + ap),
            std::string::npos)
      << us_log(before_restart);
}

// ap-south rebuilt twice, the life in between never heard at us-east (cut from ap-south, its
// replicator running all along): that life's last change, which only eu-west holds, reaches
// us-east through the survivors' exchange of the third life. An exchange is started, and recorded
// done, per life of the rebuilt region, not per stream seen gone: us-east sees the same streams
// gone (the first life's) in the second and third lives' hellos, and so never asked again.
TEST_F(ThreeRegions, ALifeOfARebuiltRegionNeverHeardHereStillReachesItThroughASurvivor) {
  const Shopper shopper = OneItemEverywhere(kAp, "ivy@example.com");
  ASSERT_FALSE(HasFailure());
  Product(kUs, "sku-2", 500);
  ProductsEverywhere({"sku-2"});
  ASSERT_FALSE(HasFailure());
  const std::string ap = absl::StrCat(" lost_replica=", c_->spec(kAp).replica_id);
  auto rebuild_ap = [&] {
    ASSERT_TRUE(c_->KillReplicator(kAp).ok());
    ASSERT_TRUE(c_->KillRegionServer(kAp).ok());
    RebuildDatabases(kAp);
    ASSERT_TRUE(c_->StartRegionServer(kAp).ok());
  };
  // The second life, every region up: us-east's exchange with eu-west about it is done.
  ASSERT_NO_FATAL_FAILURE(rebuild_ap());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  ASSERT_TRUE(Eventually(
      [&] {
        return test_support::forged_peer_detail::ReadFileOrEmpty(c_->replicator_log(kUs))
                   .find("event=survivor_exchange_done peer=eu-west" + ap +
                         " taken_over_again=false recorded=true") != std::string::npos;
      },
      30));
  // Its last change reaches eu-west only.
  ASSERT_TRUE(c_->PartitionPair(kUs, kAp).ok());
  ASSERT_EQ(AddAfterRebuild(kAp, shopper.token, "sku-2", 1), 200);
  const Lines both = {{"sku-1", 1}, {"sku-2", 1}};
  ASSERT_TRUE(Eventually(
      [&] {
        auto cart = DbCart(kEu, shopper.id);
        return cart && *cart == both;
      },
      30));
  // The third life, the link back.
  ASSERT_NO_FATAL_FAILURE(rebuild_ap());
  ASSERT_TRUE(c_->HealPair(kUs, kAp).ok());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  std::optional<Lines> cart;
  EXPECT_TRUE(Eventually(
      [&] {
        cart = DbCart(kUs, shopper.id);
        return cart && *cart == both;
      },
      30))
      << "us-east never got the second life's change: " << (cart ? Show(*cart) : "no cart");
}

// Peers whose hellos claim every stream of ap-south applied through kMaxSeq (peers with valid
// certificates, lying or confused) let ap-south truncate what its outbox holds, no more: once the
// genuine peers are back, later records are still truncated after they acked them. As the first
// session after a restart, the claim does not move ap-south's shared outbox reader either.
TEST_F(ThreeRegions, AHelloClaimingTheLastSeqStopsNeitherTruncationNorTheSharedReader) {
  const Shopper shopper = OneItemEverywhere(kAp, "ada@example.com");
  ASSERT_FALSE(HasFailure());
  const std::string ada = shopper.token, ada_id = shopper.id;
  std::string why;
  const auto claim = test_support::ClaimEveryStream(*c_, kAp);
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  {
    ForgedPeer us(*c_, kUs, kAp), eu(*c_, kEu, kAp);
    ASSERT_TRUE(us.Hello(claim));
    ASSERT_TRUE(eu.Hello(claim));
    // Both claims stand (heartbeats keep the streams up) until ap-south truncated through them.
    ASSERT_TRUE(Eventually(
        [&] {
          rpb::Frame beat;
          beat.mutable_heartbeat();
          return us.Write(beat) && eu.Write(beat) && OutboxRows(kAp) == 0;
        },
        15));
  }
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  ASSERT_EQ(Add(kAp, ada, "sku-1", 2), 200);
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({ada_id}, {{ada_id, {{"sku-1", 3}}}}, &why);
      },
      30))
      << why;
  EXPECT_TRUE(Eventually([&] { return OutboxRows(kAp) == 0; }, 30))
      << OutboxRows(kAp) << " rows stay in ap-south's outbox after every peer acked them";

  // The same claim as the first session after ap-south's replicator starts must not start its
  // shared outbox reader past the outbox's end: the real peers that come next would each read the
  // outbox for themselves until a restart.
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  ASSERT_TRUE(c_->KillReplicator(kAp).ok());
  ASSERT_TRUE(c_->StartReplicator(kAp).ok());
  {
    ForgedPeer us(*c_, kUs, kAp, "", std::chrono::seconds(120));
    ASSERT_TRUE(us.Hello(claim));
    // `us` beats while eu-west's replicator starts (seconds under the sanitizers): ap-south ends
    // a stream it hears nothing from for 1.5 s, and `us` must stay its first session. (The
    // replicator starts on this thread: its parent-death signal follows the thread that made it.)
    std::atomic<bool> started{false};
    std::thread beater([&] {
      while (!started.load()) {
        EXPECT_TRUE(Beat(us));
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
      }
    });
    const absl::Status eu_started = c_->StartReplicator(kEu);
    started = true;
    beater.join();
    ASSERT_TRUE(eu_started.ok()) << eu_started;
    ASSERT_TRUE(Beat(us));
    ASSERT_EQ(Add(kAp, ada, "sku-1", 1), 200);
    ASSERT_TRUE(Eventually(
        [&] {
          rpb::Frame beat;
          beat.mutable_heartbeat();
          auto eu = DbCart(kEu, ada_id, &why);
          return us.Write(beat) && eu && *eu == Lines{{"sku-1", 4}};
        },
        30))
        << why;
  }
  ASSERT_TRUE(c_->StartReplicator(kUs).ok());
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({ada_id}, {{ada_id, {{"sku-1", 4}}}}, &why);
      },
      30))
      << why;
  // Both real peers now ship from the shared reader: their own reads of the outbox stop.
  auto own_reads = [&](const char* peer) {
    auto v = c_->Metric(
        kAp, std::string("meridian_replication_own_outbox_reads_total{peer=\"") + peer + "\"}");
    return v.ok() ? *v : -1;
  };
  double eu_reads = -1, us_reads = -1;
  bool stopped = false;
  for (int i = 0; i < 10 && !stopped; ++i) {
    const double eu = own_reads("eu-west"), us = own_reads("us-east");
    std::this_thread::sleep_for(std::chrono::seconds(2));
    eu_reads = own_reads("eu-west");
    us_reads = own_reads("us-east");
    stopped = eu >= 0 && us >= 0 && eu_reads == eu && us_reads == us;
  }
  EXPECT_TRUE(stopped) << "ap-south keeps reading its outbox for each peer: eu-west " << eu_reads
                       << ", us-east " << us_reads << " reads so far";
}

// A peer sending empty batches (ranges of seqs with nothing for this region) faster than they
// apply meets the apply backpressure as one sending records does: while ap-south's applies are
// held up, its reader stops taking the peer's batches at 16 MiB of queue (256 B per batch, so
// 65,536 of them), and takes the rest once the applies run again. Nothing is lost.
TEST_F(ThreeRegions, EmptyBatchesMeetTheApplyBackpressure) {
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  ForgedPeer eu(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(eu.Hello());
  constexpr int64_t kBatches = 100'000;
  std::unique_ptr<HeldApplies> held = HoldAppliesAndFillTheQueue(eu, "ACCESS EXCLUSIVE", kBatches);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(ApplyQueueBatches(kAp, "eu-west"), kApplyQueueCap)
      << held->written << " batches written";
  held->lock.commit();
  held->flood.join();
  EXPECT_EQ(held->written, kBatches);
  // Every batch is applied: ap-south acks the last seq, and its queue is empty.
  rpb::Frame ack = eu.NextBeating(
      [&](const rpb::Frame& f) {
        return f.has_ack() && f.ack().origin_database() == "flood-0" && f.ack().seq() == kBatches;
      },
      std::chrono::seconds(30));
  EXPECT_TRUE(ack.has_ack());
  EXPECT_TRUE(Eventually([&] { return ApplyQueueBatches(kAp, "eu-west") == 0; }, 10))
      << ApplyQueueBatches(kAp, "eu-west");
}

// The same backpressure, and the stream breaks while the reader is held back: ap-south's writer
// finds it gone, the held-up apply ends with its ack unwritten, and its applier stops with the
// queue still full. The session must end (before 2026-12-05 its reader waited for the queue to
// drain for good: here its thread and 16 MiB of queue stayed behind, and a dialer in that state
// never redials, so that its pair of regions stopped replicating).
TEST_F(ThreeRegions, AStreamThatBreaksWhileTheApplyQueueIsFullEndsItsSession) {
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  auto eu = std::make_unique<ForgedPeer>(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(eu->Hello());
  std::unique_ptr<HeldApplies> held = HoldAppliesAndFillTheQueue(*eu, "ACCESS EXCLUSIVE");
  (void)eu->Cut();
  held->flood.join();
  eu.reset();
  // ap-south's next heartbeat (every 200 ms) finds the stream gone; then the apply goes on.
  std::this_thread::sleep_for(std::chrono::seconds(1));
  held->lock.commit();
  const std::string connected = "meridian_replication_connected{peer=\"eu-west\"}";
  EXPECT_TRUE(Eventually([&] { return Metric(kAp, connected) == 0; }, 10))
      << "ap-south's session with the broken stream never ended";
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  EXPECT_TRUE(Eventually([&] { return Metric(kAp, connected) == 1; }, 20))
      << "eu-west could not come back";
}

// The peer redials while its old session is held up by the apply backpressure: the new session
// comes up, and the old one ends after it (its heartbeat finds its cancelled stream gone, its
// held-up apply then finishes). Before 2026-12-06 the old session set
// meridian_replication_connected to 0 as it ended, with the new stream up and running.
TEST_F(ThreeRegions, AReplacedSessionEndingAfterTheRedialLeavesThePeerConnected) {
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  auto old_stream = std::make_unique<ForgedPeer>(*c_, kEu, kAp, "", std::chrono::seconds(120));
  ASSERT_TRUE(old_stream->Hello());
  const std::string connected = "meridian_replication_connected{peer=\"eu-west\"}";
  const std::string reconnects = "meridian_replication_reconnects_total{peer=\"eu-west\"}";
  ASSERT_TRUE(Eventually([&] { return Metric(kAp, connected) == 1; }, 10));
  const double ended_before = Metric(kAp, reconnects);
  // The applies wait to write the stream's mark; reads of the marks (the redial's hello) do not.
  std::unique_ptr<HeldApplies> held = HoldAppliesAndFillTheQueue(*old_stream, "EXCLUSIVE");
  ForgedPeer redial(*c_, kEu, kAp, "", std::chrono::seconds(60));
  const bool up = redial.Hello();
  held->flood.join();  // the redial cancelled the old stream: its writes fail
  EXPECT_TRUE(up);
  // The old reader leaves its loop meanwhile. The redial beats all along: ap-south ends a
  // stream it hears nothing from for peer_timeout_ms (1.5 s), and that end would count as the
  // replaced session's.
  for (int i = 0; i < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    EXPECT_TRUE(Beat(redial));
  }
  held->lock.commit();
  ASSERT_TRUE(
      Eventually([&] { return Beat(redial) && Metric(kAp, reconnects) >= ended_before + 1; }, 20))
      << "the replaced session never ended";
  EXPECT_EQ(Metric(kAp, connected), 1) << "the redialled stream is up";
  rpb::Frame beat;
  beat.mutable_heartbeat();
  EXPECT_TRUE(redial.Write(beat));
  old_stream.reset();
}

TEST_F(ThreeRegions, PinnedDataNeverLeavesItsJurisdictionAndForgedFramesAreRejected) {
  Product(kEu, "sku-1", 500);
  ProductsEverywhere({"sku-1"});
  std::string eve = Customer(kEu, "eve@example.eu", "eu");
  std::string eve_id = services::UserIdForEmail("eve@example.eu");
  ASSERT_EQ(Add(kEu, eve, "sku-1", 2), 200);
  // Outside eu her requests are redirected and nothing of hers is written there.
  EXPECT_EQ(Add(kUs, eve, "sku-1", 1), 307);
  // A customer without residency, written after her: once it is everywhere, eve's records have
  // gone past the other regions' filters.
  std::string ann = Customer(kEu, "ann@example.com", "any");
  std::string ann_id = services::UserIdForEmail("ann@example.com");
  ASSERT_EQ(Add(kEu, ann, "sku-1", 1), 200);
  std::string why;
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({ann_id}, {{ann_id, {{"sku-1", 1}}}}, &why);
      },
      30))
      << why;
  const std::string by_id = "'" + eve_id + "'";
  for (size_t region : {kUs, kAp}) {
    for (const char* db : {"shard0", "shard1"}) {
      EXPECT_EQ(Count(region, db, "SELECT count(*) FROM users WHERE user_id = " + by_id), 0);
      EXPECT_EQ(Count(region, db, "SELECT count(*) FROM carts WHERE user_id = " + by_id), 0);
      EXPECT_EQ(Count(region, db, "SELECT count(*) FROM users WHERE user_id = '" + ann_id + "'") +
                    Count(region, db == std::string("shard0") ? "shard1" : "shard0",
                          "SELECT count(*) FROM users WHERE user_id = '" + ann_id + "'"),
                1)
          << "ann's profile replicates";
    }
  }
  EXPECT_EQ(Count(kEu, "shard0", "SELECT count(*) FROM users WHERE user_id = " + by_id) +
                Count(kEu, "shard1", "SELECT count(*) FROM users WHERE user_id = " + by_id),
            1);

  // A peer (eu-west's certificate) forges a frame that would put eve's cart in ap-south. The
  // genuine eu-west replicator is stopped first: it would displace the forged stream.
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  ForgedPeer forged(*c_, kEu, kAp);
  ASSERT_TRUE(forged.Hello());
  grpc::Status st = forged.SendAndFinish(CartBatch(2, eve_id, "eu", 1));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("residency"), std::string::npos) << st.error_message();
  for (const char* db : {"shard0", "shard1"}) {
    EXPECT_EQ(Count(kAp, db, "SELECT count(*) FROM carts WHERE user_id = " + by_id), 0);
  }
  auto metrics = c_->Metrics(kAp);
  ASSERT_TRUE(metrics.ok());
  EXPECT_NE(metrics->find("meridian_replication_rejected_frames_total{peer=\"eu-west\"} 1"),
            std::string::npos)
      << *metrics;

  // Nor does eu-west take from us-east a record pinned to eu: us-east could never hold one (its
  // customers pinned elsewhere are sent home), so it is forged, though eu-west may hold it.
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  ASSERT_TRUE(c_->KillReplicator(kUs).ok());  // the lower id dials: us-east's stream is forged
  ForgedPeer us(*c_, kUs, kEu);
  ASSERT_TRUE(us.Hello());
  st = us.SendAndFinish(CartBatch(1, eve_id, "eu", 1));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("which us-east (us) could not hold"), std::string::npos)
      << st.error_message();
}

TEST_F(ThreeRegions, MalformedFramesEndTheStreamWithNothingAppliedAndThePeerReconnects) {
  Product(kEu, "sku-1", 500);
  ProductsEverywhere({"sku-1"});
  const std::string victim = services::UserIdForEmail("victim@example.com");
  auto nothing_applied = [&] {
    int64_t n = 0;
    for (const char* db : {"shard0", "shard1"}) {
      n += Count(kAp, db, "SELECT count(*) FROM carts WHERE user_id = '" + victim + "'");
    }
    return n == 0;
  };
  // The genuine eu-west replicator is stopped while the forged streams talk to ap-south (a new
  // stream from a peer displaces its old one, so it would cut them short).
  ASSERT_TRUE(c_->KillReplicator(kEu).ok());
  {  // garbage instead of a record list
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f = CartBatch(2, victim, "any", 1);
    f.mutable_batch()->set_compression(rpb::COMPRESSION_NONE);
    f.mutable_batch()->set_payload(std::string(64, '\xee'));
    f.mutable_batch()->set_uncompressed_bytes(64);
    EXPECT_EQ(p.SendAndFinish(f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // truncated compressed payload
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f = CartBatch(2, victim, "any", 1);
    std::string big(4000, 'x');
    rpb::RecordList list;
    for (int i = 0; i < 20; ++i) {
      rpb::Record* r = list.add_records();
      r->set_seq(1 + i);
      r->set_kind(rpb::RECORD_KIND_CART);
      r->set_key(victim);
      r->set_payload(big);
      r->set_residency("any");
    }
    *f.mutable_batch() =
        replication::EncodeBatch(2, "shard-0", 1, 100, list, 1, replication::BatchKind::kDeltas);
    ASSERT_EQ(f.batch().compression(), rpb::COMPRESSION_ZLIB);
    f.mutable_batch()->mutable_payload()->resize(f.batch().payload().size() / 2);
    EXPECT_EQ(p.SendAndFinish(f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // a well-formed frame whose cart delta is garbage: the region's decoder rejects it
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::RecordList list;
    rpb::Record* r = list.add_records();
    r->set_seq(1);
    r->set_kind(rpb::RECORD_KIND_CART);
    r->set_key(victim);
    r->set_payload("\x0a\xff\xff\xff\xff\x0f");
    r->set_residency("any");
    rpb::Frame f;
    *f.mutable_batch() =
        replication::EncodeBatch(2, "shard-0", 1, 1, list, 1, replication::BatchKind::kDeltas);
    grpc::Status st = p.SendAndFinish(f);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("crdt decode"), std::string::npos) << st.error_message();
  }
  {  // oversized: a 40 MiB frame
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f = CartBatch(2, victim, "any", 1);
    f.mutable_batch()->set_payload(std::string(40 << 20, 'z'));
    auto silences = [&] {
      std::ifstream log(c_->replicator_log(kAp));
      std::string line;
      int n = 0;
      while (std::getline(log, line)) {
        n += line.find("event=replication_peer_silent peer=eu-west") != std::string::npos;
      }
      return n;
    };
    const int silent_before = silences();
    grpc::Status st = p.SendAndFinish(f);
    // gRPC refuses it while reading, before the replicator's checks (replication/README.md). On
    // a loaded machine the 40 MiB can take longer to arrive than peer_timeout_ms (1.5 s here):
    // then ap-south's watchdog, which hears nothing but whole frames, ends the stream first
    // (the sender sees CANCELLED). Either way the stream ends and nothing of it is applied.
    if (st.error_code() == grpc::StatusCode::CANCELLED) {
      EXPECT_GT(silences(), silent_before) << "cancelled, but not by the silence watchdog";
    } else {
      EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    }
  }
  {  // survivor marks for a region that is not a third one here (ap-south itself)
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f;
    f.mutable_survivor_marks()->set_lost(c_->spec(kAp).replica_id);
    EXPECT_EQ(p.SendAndFinish(f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // survivor marks for us-east naming one database twice
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f;
    f.mutable_survivor_marks()->set_lost(c_->spec(kUs).replica_id);
    for (int i = 0; i < 2; ++i) {
      rpb::AckedSeq* a = f.mutable_survivor_marks()->add_applied();
      a->set_origin_database("shard0");
      a->set_seq(7);
    }
    EXPECT_EQ(p.SendAndFinish(f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {  // a survivor answer to marks ap-south never sent (no region was lost)
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f;
    f.mutable_survivor_answer()->set_lost(c_->spec(kUs).replica_id);
    grpc::Status st = p.SendAndFinish(f);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("did not ask for"), std::string::npos) << st.error_message();
  }
  {  // a survivor confirm of an answer ap-south never gave
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f;
    f.mutable_survivor_confirm()->set_lost(c_->spec(kUs).replica_id);
    grpc::Status st = p.SendAndFinish(f);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find("did not answer"), std::string::npos) << st.error_message();
  }
  {  // a batch before the hello
    ForgedPeer p(*c_, kEu, kAp);
    EXPECT_EQ(p.SendAndFinish(CartBatch(2, victim, "any", 1)).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Stream order. A gap would move ap-south's mark past records it never saw: a batch must
  // start right after the resume point ap-south gave (0 for a stream it does not know).
  auto expect_rejected = [](const grpc::Status& st, const std::string& why) {
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(why), std::string::npos) << st.error_message();
  };
  {  // a batch that skips seqs 1..999
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    expect_rejected(p.SendAndFinish(CartBatch(2, victim, "any", 1000)), "a gap");
  }
  {  // a batch at a seq beyond any outbox
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame f;
    *f.mutable_batch() =
        replication::EncodeBatch(2, "shard-0", 1, replication::kMaxSeq + 1, rpb::RecordList(), 1,
                                 replication::BatchKind::kDeltas);
    expect_rejected(p.SendAndFinish(f), "last_seq");
  }
  {  // the end of a state transfer (which moves the stream's marks) after deltas
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::Frame deltas, state_end;
    *deltas.mutable_batch() = replication::EncodeBatch(2, "forged-0", 1, 1, rpb::RecordList(), 1,
                                                       replication::BatchKind::kDeltas);
    *state_end.mutable_batch() = replication::EncodeBatch(
        2, "forged-0", 0, 1'000'000'000, rpb::RecordList(), 1, replication::BatchKind::kState);
    expect_rejected(p.SendAllAndFinish({deltas, state_end}), "state transfer");
  }
  {  // a hello whose resume point is not a seq (seq + 1 would overflow at the sender)
    ForgedPeer p(*c_, kEu, kAp);
    // ap-south may end the stream before its own hello reaches us: only how it ended counts.
    (void)p.Hello({{"shard0", std::numeric_limits<int64_t>::max()}});
    rpb::Frame f;
    f.mutable_heartbeat();
    expect_rejected(p.SendAndFinish(f), "resume point");
  }
  {  // a hello naming a stream of its own that is no database name
    ForgedPeer p(*c_, kEu, kAp);
    (void)p.Hello({}, {"shard-0'; DROP TABLE carts; --"});
    rpb::Frame f;
    f.mutable_heartbeat();
    expect_rejected(p.SendAndFinish(f), "malformed stream");
  }
  // Acks of what ap-south shipped (a change of its own first, so that it ships something).
  ASSERT_EQ(Add(kAp, Customer(kAp, "ack@example.com", "any"), "sku-1", 1), 200);
  const std::vector<std::pair<std::function<void(rpb::Ack*, int64_t)>, std::string>> bad_acks = {
      // past what ap-south shipped: it would let ap-south truncate its outbox early
      {[](rpb::Ack* a, int64_t last) { a->set_seq(last + 1'000'000); }, "past what was shipped"},
      // a resume point past what it acks: ap-south truncates through the former
      {[](rpb::Ack* a, int64_t last) {
         a->set_seq(last - 1);
         a->set_resume_seq(last);
       },
       "with a resume point of"},
  };
  for (const auto& [forge, why] : bad_acks) {
    ForgedPeer p(*c_, kEu, kAp);
    ASSERT_TRUE(p.Hello());
    rpb::DeltaBatch shipped = p.NextBatch();
    ASSERT_FALSE(shipped.origin_database().empty());
    rpb::Frame f;
    f.mutable_ack()->set_origin_database(shipped.origin_database());
    forge(f.mutable_ack(), shipped.last_seq());
    expect_rejected(p.SendAndFinish(f), why);
  }
  {  // a certificate from another CA is refused at the handshake
    std::string other = c_->dir() + "/other-ca";
    ASSERT_TRUE(test_support::Process::Run(
                    {.argv = {"bash", test_support::SourceDir() + "/deploy/make-certs.sh", other,
                              "eu-west"}},
                    absl::Seconds(60))
                    .ok());
    ForgedPeer p(*c_, kEu, kAp, other);
    EXPECT_FALSE(p.Hello());
  }
  {  // us-east's certificate claiming to be eu-west in its hello
    ForgedPeer p(*c_, kUs, kAp);
    rpb::Frame f;
    f.mutable_hello()->set_region("eu-west");
    f.mutable_hello()->set_jurisdiction("eu");
    f.mutable_hello()->set_replica_id(2);
    f.mutable_hello()->set_protocol_version(rpb::PROTOCOL_VERSION_1);
    EXPECT_EQ(p.SendAndFinish(f).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(nothing_applied());
  // The genuine eu-west replicator comes back, resumes from ap-south's marks and ships.
  ASSERT_TRUE(c_->StartReplicator(kEu).ok());
  std::string bo = Customer(kEu, "bo@example.com", "any");
  std::string bo_id = services::UserIdForEmail("bo@example.com");
  // The forged deltas of "forged-0" above left ap-south a resume point for a stream of eu-west's
  // that eu-west does not have: both take that for a rebuild of eu-west, which holds its writes
  // until ap-south's state is in (a second or so).
  ASSERT_EQ(AddAfterRebuild(kEu, bo, "sku-1", 4), 200);
  std::string why;
  ASSERT_TRUE(Eventually(
      [&] {
        return Converged({bo_id}, {{bo_id, {{"sku-1", 4}}}}, &why);
      },
      30))
      << why;
  EXPECT_TRUE(nothing_applied());
}

}  // namespace
}  // namespace meridian
