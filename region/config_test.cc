#include "region/config.h"

#include <gtest/gtest.h>

namespace meridian::region {
namespace {

constexpr const char* kGood = R"(
region: {name: us-east, jurisdiction: us, replica_id: 1}
listen: {http: "127.0.0.1:8080", grpc: "127.0.0.1:9090"}
postgres:
  global: "host=127.0.0.1 port=5432 dbname=g"
  shards: ["host=127.0.0.1 port=5433 dbname=s0", "host=127.0.0.1 port=5434 dbname=s1"]
redis: {address: "127.0.0.1:6379"}
security: {token_secret: "0123456789abcdef0123456789abcdef", operator_token: "operator-token-1234"}
peers:
  - {name: eu-west, jurisdiction: eu, url: "http://127.0.0.1:8081"}
)";

TEST(Config, ParsesAGoodFileWithDefaults) {
  auto c = ParseConfig(kGood);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "us-east");
  EXPECT_EQ(c->shard_dsns.size(), 2u);
  EXPECT_EQ(c->http.port, 8080);
  EXPECT_EQ(c->durability, Durability::kAsync);
  EXPECT_EQ(c->max_body_bytes, 1u << 20);
  EXPECT_EQ(c->http_threads, 8);
  EXPECT_EQ(c->account_lookups, 4);  // half the HTTP threads
  EXPECT_EQ(c->login_attempts_per_account, 10);
  EXPECT_EQ(c->login_attempt_refill_s, 60);
  EXPECT_EQ(c->sweep_interval_s, 5);
  EXPECT_TRUE(c->hold_new_databases);
  EXPECT_EQ(c->pool_size, 8);
  EXPECT_EQ(c->pool_open_at_start, 8);  // every connection, as pool_size says
  EXPECT_EQ(c->identity_check_ms, 1000);
  ASSERT_EQ(c->peers.size(), 1u);
  EXPECT_EQ(c->peers[0].jurisdiction, "eu");
}

void ExpectError(std::string yaml, const std::string& field) {
  auto c = ParseConfig(yaml, "test.yaml");
  ASSERT_FALSE(c.ok()) << "accepted: " << yaml;
  EXPECT_NE(std::string(c.status().message()).find(field), std::string::npos)
      << c.status().message();
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

// The internal gRPC API moves orders, stock rights and holds: a listener beyond loopback needs
// the replicator's token.
TEST(Config, AnInternalApiBeyondLoopbackNeedsTheInternalToken) {
  const std::string exposed =
      Replace(kGood, "grpc: \"127.0.0.1:9090\"", "grpc: \"10.77.0.1:9090\"");
  ExpectError(exposed,
              "security.internal_token: required when listen.grpc is not a loopback "
              "address (10.77.0.1)");
  ExpectError(Replace(kGood, "grpc: \"127.0.0.1:9090\"", "grpc: \"0.0.0.0:0\""),
              "security.internal_token");
  const std::string with_token = Replace(exposed, "operator_token: \"operator-token-1234\"",
                                         "operator_token: \"operator-token-1234\", "
                                         "internal_token: \"internal-token-0123456789\"");
  auto c = ParseConfig(with_token);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->internal_token, "internal-token-0123456789");
  auto loopback = ParseConfig(kGood);
  ASSERT_TRUE(loopback.ok()) << loopback.status();
  EXPECT_EQ(loopback->internal_token, "") << "optional on loopback";
  ExpectError(Replace(with_token, "internal-token-0123456789", "short"),
              "security.internal_token: the token must be at least 16 bytes");
  ExpectError(Replace(with_token, "internal-token-0123456789", "internal token 0123456789"),
              "security.internal_token: the token must be printable ASCII without spaces");
}

TEST(Config, NamesTheBadField) {
  ExpectError("region: [", "not valid YAML");
  ExpectError(Replace(kGood, "replica_id: 1", "replica_id: 0"), "region.replica_id");
  ExpectError(Replace(kGood, "replica_id: 1", "replica_id: x"), "region.replica_id");
  ExpectError(Replace(kGood, "\"127.0.0.1:8080\"", "\"127.0.0.1:99999\""), "listen.http");
  ExpectError(Replace(kGood, "\"host=127.0.0.1 port=5434 dbname=s1\"", "\"\""),
              "postgres.shards[1]");
  ExpectError(Replace(kGood, "0123456789abcdef0123456789abcdef", "short"), "security.token_secret");
  ExpectError(Replace(kGood, "\"host=127.0.0.1 port=5432 dbname=g\"", "\"\""),
              "postgres.global: must not be empty");
  // libpq's own reading: refused by --check-config, not at the start (CLI probe).
  ExpectError(Replace(kGood, "\"host=127.0.0.1 port=5432 dbname=g\"", "\"abc\""),
              "postgres.global: not a PostgreSQL connection string: missing \"=\" after \"abc\"");
  ExpectError(Replace(kGood, "\"operator-token-1234\"", "\"                \""),
              "security.operator_token: the token must be printable ASCII without spaces");
  ExpectError(std::string(kGood) + "limits: {http_threads: 4, http_threads: -5}\n",
              "limits.http_threads: given twice");
  ExpectError(std::string(kGood) + "durability: eventually\n", "durability");
  ExpectError(std::string(kGood) + "limits: {http_threads: 4, account_lookups: 5}\n",
              "limits.account_lookups: at most limits.http_threads (4)");
  ExpectError(std::string(kGood) + "limits: {account_lookups: 0}\n", "limits.account_lookups");
  ExpectError(std::string(kGood) + "limits: {max_connections_per_client: -1}\n",
              "limits.max_connections_per_client");
  ExpectError(Replace(kGood, "\"127.0.0.1:8080\"", "\"localhost:8080\""),
              "listen.http: the host must be an IP address, got 'localhost'");
  ExpectError(std::string(kGood) + "limits: {login_attempts_per_account: -1}\n",
              "limits.login_attempts_per_account");
  ExpectError(std::string(kGood) + "limits: {login_attempt_refill_s: 0}\n",
              "limits.login_attempt_refill_s");
  ExpectError(std::string(kGood) + "limits: {sweep_interval_s: -1}\n", "limits.sweep_interval_s");
  ExpectError(std::string(kGood) + "limits: {sweep_interval_s: 3601}\n", "limits.sweep_interval_s");
  ExpectError(std::string(kGood) + "hold_new_databases: maybe\n",
              "hold_new_databases: must be true or false");
  ExpectError(std::string(kGood) + "limits: {max_body_byte: 10}\n", "limits.max_body_byte");
  const std::string shards = "\"host=127.0.0.1 port=5434 dbname=s1\"]\n";
  ExpectError(Replace(kGood, shards, shards + "  pool_size: 4\n  open_at_start: 5\n"),
              "postgres.open_at_start: at most postgres.pool_size (4)");
  ExpectError(Replace(kGood, shards, shards + "  open_at_start: 0\n"), "postgres.open_at_start");
  auto lazy = ParseConfig(Replace(kGood, shards, shards + "  pool_size: 4\n  open_at_start: 1\n"));
  ASSERT_TRUE(lazy.ok()) << lazy.status();
  EXPECT_EQ(lazy->pool_size, 4);
  EXPECT_EQ(lazy->pool_open_at_start, 1);
  ExpectError(Replace(kGood, shards, shards + "  identity_check_ms: 50\n"),
              "postgres.identity_check_ms: 0 (off) or 100..60000 ms, got 50");
  ExpectError(Replace(kGood, shards, shards + "  identity_check_ms: 60001\n"),
              "postgres.identity_check_ms");
  auto unchecked = ParseConfig(Replace(kGood, shards, shards + "  identity_check_ms: 0\n"));
  ASSERT_TRUE(unchecked.ok()) << unchecked.status();
  EXPECT_EQ(unchecked->identity_check_ms, 0);
  ExpectError(Replace(kGood, "\"http://127.0.0.1:8081\"", "\"ftp://x\""), "peers[0].url");
  ExpectError(std::string(kGood) + "durability: sync-peer\n", "durability");
  ExpectError(std::string(kGood) + "replication: {rights_wait_ms: -1}\n",
              "replication.rights_wait_ms");
  ExpectError(std::string(kGood) + "replication: {replicatr: \"x:1\"}\n", "replication.replicatr");
  ExpectError(Replace(kGood, "url: \"http://127.0.0.1:8081\"",
                      "replica_id: 1, url: \"http://127.0.0.1:8081\""),
              "peers[0].replica_id");
}

// Values that parse but could never work are refused at start, naming the field, rather than
// failing later (a hold nothing releases, leases that never come, a redirect to nowhere).
TEST(Config, RefusesWhatCouldNeverWork) {
  const std::string no_grpc = Replace(kGood, ", grpc: \"127.0.0.1:9090\"", "");
  ExpectError(no_grpc, "hold_new_databases: with peers and no listen.grpc");
  EXPECT_TRUE(ParseConfig(no_grpc + "hold_new_databases: false\n").ok());
  ExpectError(no_grpc + "hold_new_databases: false\nreplication: {}\n",
              "replication: needs listen.grpc");
  // `replication:` with nothing after it is a YAML null: refused rather than read as a single
  // region, since `replication: {}` turns the replicator on.
  ExpectError(std::string(kGood) + "replication:\n",
              "replication: is empty: write 'replication: {}'");
  auto on = ParseConfig(std::string(kGood) + "replication: {}\n");
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->replication.enabled);
  ExpectError(Replace(kGood, "jurisdiction: eu", "jurisdiction: EU"), "peers[0].jurisdiction");
  ExpectError(Replace(kGood, "name: eu-west", "name: us-east"), "peers[0].name");
  ExpectError(Replace(kGood, "name: eu-west", "name: \"eu west!\""), "peers[0].name");
  ExpectError(std::string(kGood) + "  - {name: eu-west, jurisdiction: eu, url: \"http://b\"}\n",
              "peers[1].name");
  ExpectError(Replace(kGood, "url: \"http://127.0.0.1:8081\"",
                      "replica_id: 2, url: \"http://127.0.0.1:8081\"") +
                  "  - {name: ap-south, jurisdiction: ap, url: \"http://c\", replica_id: 2}\n",
              "peers[1].replica_id");
  for (const char* url : {"http://", "https:///x", "http://a b", "http://a:99999"}) {
    ExpectError(Replace(kGood, "\"http://127.0.0.1:8081\"", std::string("\"") + url + "\""),
                "peers[0].url");
  }
  ExpectError(Replace(kGood, "\"127.0.0.1:6379\"", "\"127.0.0.1:0\""),
              "redis.address: port must be 1..65535");
  ExpectError(Replace(kGood, "\"127.0.0.1:6379\"", "\"127.0.0.1: 6379\""), "redis.address");
  ExpectError(std::string(kGood) + "replication: {replicator: \"127.0.0.1:0\"}\n",
              "replication.replicator: port must be 1..65535");
}

// Without a replication section a region is alone: it owns its orders (no leases to wait for).
// Account lookups wait for the peers on an HTTP thread: by default half of them, at least one,
// may do so at once.
TEST(Config, AccountLookupsDefaultToHalfTheHttpThreads) {
  for (auto [threads, lookups] : {std::pair{16, 8}, {3, 1}, {1, 1}}) {
    auto c = ParseConfig(std::string(kGood) + "limits: {http_threads: " + std::to_string(threads) +
                         "}\n");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->account_lookups, lookups) << threads << " threads";
  }
  auto c = ParseConfig(std::string(kGood) + "limits: {http_threads: 4, account_lookups: 4}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->account_lookups, 4);
}

TEST(Config, ABackgroundSweepOfZeroSecondsIsNone) {
  auto c = ParseConfig(std::string(kGood) + "limits: {sweep_interval_s: 0}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sweep_interval_s, 0);
  c = ParseConfig(std::string(kGood) + "limits: {sweep_interval_s: 30}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->sweep_interval_s, 30);
}

TEST(Config, ReplicationIsOffUnlessConfigured) {
  auto alone = ParseConfig(kGood);
  ASSERT_TRUE(alone.ok()) << alone.status();
  EXPECT_FALSE(alone->replication.enabled);
  const std::string replicated =
      std::string(kGood) + "replication: {replicator: \"127.0.0.1:7301\", rights_wait_ms: 150}\n" +
      "durability: sync-peer\n";
  // An ack counts only from a peer named by its replica id: without one, sync-peer could never
  // be met (every checkout would wait out its timeout).
  ExpectError(replicated, "durability: sync-peer needs a peer with a replica_id");
  auto linked = ParseConfig(Replace(replicated, "url: \"http://127.0.0.1:8081\"}",
                                    "url: \"http://127.0.0.1:8081\", replica_id: 2}"));
  ASSERT_TRUE(linked.ok()) << linked.status();
  EXPECT_TRUE(linked->replication.enabled);
  EXPECT_EQ(linked->replication.rights_wait_ms, 150);
  EXPECT_EQ(linked->replication.sync_peer_timeout_ms, 2000);
  EXPECT_EQ(linked->replication.replicator.port, 7301);
  EXPECT_EQ(linked->durability, Durability::kSyncPeer);
}

// A section given as a value or a list where a mapping belongs (`listen: 0.0.0.0:8080`), or a
// field name that is not a string, is an error naming the section: never an uncaught exception.
TEST(Config, ASectionThatIsNotAMappingIsAnErrorNotACrash) {
  auto expect = [](const std::string& yaml, const std::string& text) {
    absl::StatusOr<RegionConfig> c = absl::UnknownError("not parsed");
    ASSERT_NO_THROW(c = ParseConfig(yaml, "test.yaml")) << yaml;
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_NE(std::string(c.status().message()).find(text), std::string::npos)
        << c.status().message();
  };
  expect(Replace(kGood, "listen: {http: \"127.0.0.1:8080\", grpc: \"127.0.0.1:9090\"}",
                 "listen: 0.0.0.0:8080"),
         "listen: must be a mapping");
  for (const char* bad : {"5", "text", "[1, 2]"}) {
    expect(Replace(kGood, "region: {name: us-east, jurisdiction: us, replica_id: 1}",
                   std::string("region: ") + bad),
           "region: must be a mapping");
    expect(Replace(kGood, "redis: {address: \"127.0.0.1:6379\"}", std::string("redis: ") + bad),
           "redis: must be a mapping");
    expect(Replace(kGood,
                   "security: {token_secret: \"0123456789abcdef0123456789abcdef\", "
                   "operator_token: \"operator-token-1234\"}",
                   std::string("security: ") + bad),
           "security: must be a mapping");
    expect(std::string(kGood) + "limits: " + bad + "\n", "limits: must be a mapping");
    expect(std::string(kGood) + "replication: " + bad + "\n", "replication: must be a mapping");
  }
  std::string postgres_scalar = kGood;
  const size_t pg = postgres_scalar.find("postgres:"), redis = postgres_scalar.find("redis:");
  postgres_scalar.replace(pg, redis - pg, "postgres: \"host=127.0.0.1\"\n");
  expect(postgres_scalar, "postgres: must be a mapping");
  expect(std::string(kGood) + "[a, b]: 1\n", "field names must be strings");
  expect(std::string(kGood) + "limits: {{x: 1}: 2}\n", "limits: field names must be strings");
}

}  // namespace
}  // namespace meridian::region
