#include "region/config.h"

#include <gtest/gtest.h>

namespace meridian::region {
namespace {

constexpr const char* kGood = R"(
region: {name: us-east, jurisdiction: us, replica_id: 1}
listen: {http: "127.0.0.1:8080"}
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

TEST(Config, NamesTheBadField) {
  ExpectError("region: [", "not valid YAML");
  ExpectError(Replace(kGood, "replica_id: 1", "replica_id: 0"), "region.replica_id");
  ExpectError(Replace(kGood, "replica_id: 1", "replica_id: x"), "region.replica_id");
  ExpectError(Replace(kGood, "\"127.0.0.1:8080\"", "\"127.0.0.1:99999\""), "listen.http");
  ExpectError(Replace(kGood, "\"host=127.0.0.1 port=5434 dbname=s1\"", "\"\""),
              "postgres.shards[1]");
  ExpectError(Replace(kGood, "0123456789abcdef0123456789abcdef", "short"), "security.token_secret");
  ExpectError(std::string(kGood) + "durability: eventually\n", "durability");
  ExpectError(std::string(kGood) + "limits: {max_body_byte: 10}\n", "limits.max_body_byte");
  ExpectError(Replace(kGood, "\"http://127.0.0.1:8081\"", "\"ftp://x\""), "peers[0].url");
}

}  // namespace
}  // namespace meridian::region
