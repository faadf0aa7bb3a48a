#include "replication/config.h"

#include <gtest/gtest.h>

namespace meridian::replication {
namespace {

constexpr const char* kGood = R"(
region: us-east
jurisdiction: us
replica_id: 1
region_grpc: 127.0.0.1:7001
listen: 127.0.0.1:0
tls: {ca: ca.pem, cert: us-east.pem, key: us-east.key}
peers:
  - {name: eu-west, jurisdiction: eu, replica_id: 2, address: 127.0.0.1:7102}
  - {name: ap-south, jurisdiction: ap, replica_id: 3, address: 127.0.0.1:7103}
shipping: {batch_max_records: 100}
)";

TEST(ReplicatorConfig, ParsesAGoodFile) {
  auto c = ParseReplicatorConfig(kGood, "r.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->region, "us-east");
  ASSERT_EQ(c->peers.size(), 2u);
  EXPECT_EQ(c->peers[1].address.port, 7103);
  EXPECT_EQ(c->batch_max_records, 100);
  EXPECT_EQ(c->heartbeat_ms, 500);
  EXPECT_EQ(c->recent_keys_per_stream, 50000);
}

TEST(ReplicatorConfig, ErrorsNameTheField) {
  auto expect_error = [](std::string yaml, std::string field) {
    auto c = ParseReplicatorConfig(yaml, "r.yaml");
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_NE(std::string(c.status().message()).find(field), std::string::npos)
        << c.status().message();
  };
  std::string good = kGood;
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  expect_error(replace("replica_id: 2", "replica_id: 1"), "peers[0].replica_id");
  expect_error(replace("name: ap-south", "name: eu-west"), "peers[1].name");
  expect_error(replace("jurisdiction: eu", "jurisdiction: EU"), "peers[0].jurisdiction");
  expect_error(replace("127.0.0.1:7001", "localhost"), "region_grpc");
  expect_error(replace("batch_max_records: 100", "batch_max_records: 0"),
               "shipping.batch_max_records");
  expect_error(replace("batch_max_records: 100", "batch_size: 5"), "shipping.batch_size");
  expect_error(replace("batch_max_records: 100", "recent_keys_per_stream: -1"),
               "shipping.recent_keys_per_stream");
  expect_error(replace("tls: {ca: ca.pem, cert: us-east.pem, key: us-east.key}", ""), "tls");
  expect_error("region: [", "not valid YAML");
}

}  // namespace
}  // namespace meridian::replication

namespace meridian::replication {
namespace {

TEST(ReplicatorConfig, CoordinationIsOffUnlessConfigured) {
  auto plain = ParseReplicatorConfig(kGood, "r.yaml");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->coordination);
  EXPECT_FALSE(plain->witness.has_value());
  auto co = ParseReplicatorConfig(
      std::string(kGood) +
          "coordination:\n  control: 127.0.0.1:7301\n  leases: {ttl_ms: 3000, renew_interval_ms: "
          "500, alive_timeout_ms: 1200, round_timeout_ms: 800}\n  rights: {lead_ms: 200}\n"
          "  witness: {name: witness, replica_id: 250, address: 127.0.0.1:7500}\n",
      "r.yaml");
  ASSERT_TRUE(co.ok()) << co.status();
  EXPECT_TRUE(co->coordination);
  EXPECT_EQ(co->leases.ttl_ms, 3000);
  EXPECT_EQ(co->rights.lead_ms, 200);
  ASSERT_TRUE(co->witness.has_value());
  EXPECT_EQ(co->witness->replica_id, 250u);
}

TEST(ReplicatorConfig, CoordinationErrorsNameTheField) {
  auto expect_error = [](const std::string& extra, const std::string& field) {
    auto c = ParseReplicatorConfig(std::string(kGood) + extra, "r.yaml");
    ASSERT_FALSE(c.ok()) << extra;
    EXPECT_NE(std::string(c.status().message()).find(field), std::string::npos)
        << c.status().message();
  };
  expect_error("coordination: {leases: {ttl_ms: 50}}\n", "coordination.leases.ttl_ms");
  expect_error("coordination: {leases: {renew_interval_ms: 5000}}\n", "renew_interval_ms");
  expect_error("coordination: {rights: {tte_ratio: 0.5}}\n", "coordination.rights.tte_ratio");
  expect_error("coordination: {admin: 127.0.0.1:7400}\n", "coordination.operator_token_file");
  expect_error("coordination: {operator_token_file: /nonexistent/token}\n",
               "coordination.operator_token_file");
  expect_error("coordination: {witness: {name: eu-west, replica_id: 2, address: 1.2.3.4:5}}\n",
               "coordination.witness");
  expect_error("coordination: {lease: {}}\n", "coordination.lease");
}

}  // namespace
}  // namespace meridian::replication
