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
  expect_error(replace("tls: {ca: ca.pem, cert: us-east.pem, key: us-east.key}", ""), "tls");
  expect_error("region: [", "not valid YAML");
}

}  // namespace
}  // namespace meridian::replication
