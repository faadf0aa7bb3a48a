#include "replication/config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "replication/witness.h"
#include "tests/support/temp_dir_test.h"

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
  EXPECT_EQ(c->truncate_timeout_ms, 10000);
  EXPECT_EQ(c->state_dir, "");  // the recent keys in memory only
}

TEST(ReplicatorConfig, ABatchThatCrossesTheSlowestLinkInHalfThePeerTimeoutIsTaken) {
  std::string yaml = kGood;
  const std::string from = "shipping: {batch_max_records: 100}";
  auto with = [&](const std::string& shipping) {
    std::string s = yaml;
    s.replace(s.find(from), from.size(), "shipping: " + shipping);
    return ParseReplicatorConfig(s, "r.yaml");
  };
  // The defaults: 256 KiB take 210 ms at 10 Mbit/s, well within 1.5 s.
  auto defaults = with("{}");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->min_link_mbit, 10);
  // 1 MiB take 839 ms at 10 Mbit/s: 1,678 ms is the least peer_timeout_ms it fits.
  EXPECT_TRUE(with("{batch_max_bytes: 1048576, peer_timeout_ms: 1678}").ok());
  EXPECT_FALSE(with("{batch_max_bytes: 1048576, peer_timeout_ms: 1677}").ok());
  // A faster floor takes the largest batch within the default timeout.
  auto fast = with("{batch_max_bytes: 8388608, min_link_mbit: 100}");
  ASSERT_TRUE(fast.ok()) << fast.status();
  EXPECT_EQ(fast->min_link_mbit, 100);
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
  expect_error(replace("batch_max_records: 100", "truncate_timeout_ms: 50"),
               "shipping.truncate_timeout_ms");
  expect_error(replace("batch_max_records: 100", "min_link_mbit: 0"), "shipping.min_link_mbit");
  // 8 MiB take 6,711 ms on the default 10 Mbit/s floor: more than half of the default 3 s
  // peer_timeout_ms, so the peer's watchdog would cut the stream in the middle of a full batch.
  expect_error(replace("batch_max_records: 100", "batch_max_bytes: 8388608"),
               "shipping.batch_max_bytes: 8388608 bytes take 6711 ms to cross a 10 Mbit/s link");
  expect_error(replace("batch_max_records: 100", "batch_max_bytes: 1048576, peer_timeout_ms: 1600"),
               "half of peer_timeout_ms (1600)");
  expect_error(replace("tls: {ca: ca.pem, cert: us-east.pem, key: us-east.key}", ""), "tls");
  expect_error("region: [", "not valid YAML");
  // Names become TLS target names and addresses are dialed: refused here, not at a handshake or
  // a connect to port 0 later.
  expect_error(replace("region: us-east", "region: \"us east/x\""), "region: 1..32");
  expect_error(replace("name: eu-west", "name: \"eu west!\""), "peers[0].name");
  expect_error(replace("127.0.0.1:7001", "127.0.0.1:0"), "region_grpc: port must be 1..65535");
  expect_error(replace("127.0.0.1:7102", "127.0.0.1:0"), "peers[0].address: port must be 1..65535");
  expect_error(replace("127.0.0.1:7102", "\" :7102\""), "peers[0].address");
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
  EXPECT_FALSE(co->account_questions_named);  // blind
  auto upgrading = ParseReplicatorConfig(
      std::string(kGood) + "coordination: {account_questions: blind-or-named}\n", "r.yaml");
  ASSERT_TRUE(upgrading.ok()) << upgrading.status();
  EXPECT_TRUE(upgrading->account_questions_named);
  auto empty = ParseReplicatorConfig(std::string(kGood) + "coordination: {}\n", "r.yaml");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_TRUE(empty->coordination);
  // `coordination:` with nothing after it is a YAML null, not `{}`: refused, not read as off.
  for (const char* extra : {"coordination:\n", "coordination: ~\n"}) {
    auto bare = ParseReplicatorConfig(std::string(kGood) + extra, "r.yaml");
    ASSERT_FALSE(bare.ok()) << extra;
    EXPECT_NE(std::string(bare.status().message())
                  .find("coordination: is empty: write 'coordination: {}'"),
              std::string::npos)
        << bare.status().message();
  }
  auto bare_witness = ParseReplicatorConfig(
      std::string(kGood) + "coordination:\n  control: 127.0.0.1:7301\n  witness:\n", "r.yaml");
  ASSERT_FALSE(bare_witness.ok());
  EXPECT_NE(std::string(bare_witness.status().message()).find("coordination.witness: is empty"),
            std::string::npos)
      << bare_witness.status().message();
}

TEST(ReplicatorConfig, CoordinationErrorsNameTheField) {
  auto expect_error = [](const std::string& extra, const std::string& field) {
    auto c = ParseReplicatorConfig(std::string(kGood) + extra, "r.yaml");
    ASSERT_FALSE(c.ok()) << extra;
    EXPECT_NE(std::string(c.status().message()).find(field), std::string::npos)
        << c.status().message();
  };
  expect_error("coordination: {leases: {ttl_ms: 50}}\n", "coordination.leases.ttl_ms");
  expect_error("coordination: {leases: {ttl_ms: 2142}}\n",
               "coordination.leases.ttl_ms: must be at least 2143");
  expect_error(
      "coordination: {leases: {ttl_ms: 2900, renew_interval_ms: 1400, alive_timeout_ms: 2800}}\n",
      "coordination.leases.ttl_ms: must be at least 2960");
  expect_error("coordination: {leases: {renew_interval_ms: 5000}}\n", "renew_interval_ms");
  expect_error("coordination: {leases: {ttl_ms: 3000, retry_interval_ms: 3500}}\n",
               "leases.retry_interval_ms: must be 10..ttl_ms");
  expect_error("coordination: {rights: {tte_ratio: 0.5}}\n", "coordination.rights.tte_ratio");
  expect_error("coordination: {admin: 127.0.0.1:7400}\n", "coordination.operator_token_file");
  expect_error("coordination: {operator_token_file: /nonexistent/token}\n",
               "coordination.operator_token_file");
  expect_error("coordination: {witness: {name: eu-west, replica_id: 2, address: 1.2.3.4:5}}\n",
               "coordination.witness");
  expect_error("coordination: {lease: {}}\n", "coordination.lease");
  expect_error("coordination: {witness: {name: us-east, replica_id: 9, address: 1.2.3.4:5}}\n",
               "coordination.witness.name");
  expect_error("coordination: {witness: {name: w, replica_id: 9, address: 1.2.3.4:0}}\n",
               "coordination.witness.address: port must be 1..65535");
  expect_error("coordination: {account_questions: named}\n",
               "coordination.account_questions: blind or blind-or-named");
}

}  // namespace
}  // namespace meridian::replication

namespace meridian::replication {
namespace {

// Parses without letting an exception escape: a malformed file is an error, never a crash.
absl::StatusOr<ReplicatorConfig> ParseNoThrow(const std::string& yaml) {
  absl::StatusOr<ReplicatorConfig> c = absl::UnknownError("not parsed");
  EXPECT_NO_THROW(c = ParseReplicatorConfig(yaml, "r.yaml")) << yaml;
  return c;
}

void ExpectErrorNaming(const absl::StatusOr<ReplicatorConfig>& c, const std::string& text) {
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find(text), std::string::npos)
      << c.status().message();
}

TEST(ReplicatorConfig, ASectionGivenAsAValueOrAListIsAnErrorNotACrash) {
  const std::string tls = "tls: {ca: ca.pem, cert: us-east.pem, key: us-east.key}";
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = kGood;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  for (const char* bad : {"5", "ca.pem", "[ca.pem, a.pem]"}) {
    ExpectErrorNaming(ParseNoThrow(with(tls, std::string("tls: ") + bad)),
                      "tls: must be a mapping");
    ExpectErrorNaming(
        ParseNoThrow(with("shipping: {batch_max_records: 100}", std::string("shipping: ") + bad)),
        "shipping: must be a mapping");
    ExpectErrorNaming(ParseNoThrow(std::string(kGood) + "coordination: " + bad + "\n"),
                      "coordination: must be a mapping");
    for (const char* sub : {"leases", "rights", "witness"}) {
      ExpectErrorNaming(
          ParseNoThrow(std::string(kGood) + "coordination: {" + sub + ": " + bad + "}\n"),
          std::string("coordination.") + sub + ": must be a mapping");
    }
  }
  ExpectErrorNaming(ParseNoThrow(with("  - {name: eu-west", "  - 5\n  - {name: eu-west")),
                    "peers[0]: must be a mapping");
}

TEST(ReplicatorConfig, AKeyThatIsNotAStringIsAnErrorNotACrash) {
  ExpectErrorNaming(ParseNoThrow(std::string(kGood) + "[a, b]: 1\n"),
                    "field names must be strings");
  ExpectErrorNaming(ParseNoThrow(std::string(kGood) + "coordination: {{x: 1}: 2}\n"),
                    "coordination: field names must be strings");
}

class ReplicatorConfigFiles : public test_support::TempDirTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(TempDirTest::SetUp());
    std::filesystem::create_directories(dir_ + "/etc");
  }
};

TEST_F(ReplicatorConfigFiles, RelativePathsAreRelativeToTheConfigFile) {
  std::ofstream(dir_ + "/etc/operator_token") << "operator-token-0123456789\r\n";
  std::ofstream(dir_ + "/etc/r.yaml")
      << kGood << "coordination: {admin: 127.0.0.1:7400, operator_token_file: operator_token}\n"
      << "state_dir: state\n";
  auto c = LoadReplicatorConfig(dir_ + "/etc/r.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->operator_token, "operator-token-0123456789");  // the "\r\n" is not the token's
  EXPECT_EQ(c->state_dir, dir_ + "/etc/state");
  EXPECT_EQ(c->tls_ca, dir_ + "/etc/ca.pem");
  EXPECT_EQ(c->tls_cert, dir_ + "/etc/us-east.pem");
  EXPECT_EQ(c->tls_key, dir_ + "/etc/us-east.key");

  auto absolute_kept = ParseReplicatorConfig(
      std::string(kGood).replace(std::string(kGood).find("ca: ca.pem"), 10, "ca: /pki/ca.pem"),
      "r.yaml", dir_ + "/etc");
  ASSERT_TRUE(absolute_kept.ok()) << absolute_kept.status();
  EXPECT_EQ(absolute_kept->tls_ca, "/pki/ca.pem");
}

// The region's internal token: sent to region_grpc, asked of the region's calls to a control
// port; a control port beyond loopback needs it.
TEST_F(ReplicatorConfigFiles, TheRegionTokenIsReadAndAControlPortBeyondLoopbackNeedsIt) {
  std::ofstream(dir_ + "/etc/region_token") << "internal-token-0123456789\n";
  std::ofstream(dir_ + "/etc/r.yaml") << kGood << "region_token_file: region_token\n"
                                      << "coordination: {control: 10.77.0.1:7400}\n";
  auto c = LoadReplicatorConfig(dir_ + "/etc/r.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->region_token, "internal-token-0123456789");
  std::ofstream(dir_ + "/etc/r.yaml", std::ios::trunc)
      << kGood << "coordination: {control: 10.77.0.1:7400}\n";
  ExpectErrorNaming(LoadReplicatorConfig(dir_ + "/etc/r.yaml"),
                    "region_token_file: required when coordination.control is not a loopback "
                    "address (10.77.0.1)");
  std::ofstream(dir_ + "/etc/r.yaml", std::ios::trunc)
      << kGood << "coordination: {control: 127.0.0.1:7400}\n";
  auto loopback = LoadReplicatorConfig(dir_ + "/etc/r.yaml");
  ASSERT_TRUE(loopback.ok()) << loopback.status();
  EXPECT_EQ(loopback->region_token, "");
  std::ofstream(dir_ + "/etc/region_token", std::ios::trunc) << "short\n";
  std::ofstream(dir_ + "/etc/r.yaml", std::ios::trunc)
      << kGood << "region_token_file: region_token\n";
  ExpectErrorNaming(LoadReplicatorConfig(dir_ + "/etc/r.yaml"), "region_token_file");
  std::ofstream(dir_ + "/etc/r.yaml", std::ios::trunc)
      << kGood << "region_token_file: missing_file\n";
  ExpectErrorNaming(LoadReplicatorConfig(dir_ + "/etc/r.yaml"), "region_token_file");
}

TEST_F(ReplicatorConfigFiles, AShortTokenAfterTrimmingIsRefused) {
  std::ofstream(dir_ + "/etc/operator_token") << "short\r\n";
  std::ofstream(dir_ + "/etc/r.yaml")
      << kGood << "coordination: {admin: 127.0.0.1:7400, operator_token_file: operator_token}\n";
  auto c = LoadReplicatorConfig(dir_ + "/etc/r.yaml");
  ExpectErrorNaming(c, "coordination.operator_token_file");
}

// --- meridian-witness's config ---

constexpr const char* kWitness = R"(
name: witness
replica_id: 250
listen: 127.0.0.1:7500
tls: {ca: ca.pem, cert: witness.pem, key: witness.key}
store: witness-leases.json
regions: [{name: us-east, replica_id: 1}, {name: eu-west, replica_id: 2}]
leases: {ttl_ms: 6000}
)";

absl::StatusOr<WitnessConfig> ParseWitnessNoThrow(const std::string& yaml) {
  absl::StatusOr<WitnessConfig> c = absl::UnknownError("not parsed");
  EXPECT_NO_THROW(c = ParseWitnessConfig(yaml, "w.yaml")) << yaml;
  return c;
}

std::string Witness(const std::string& from, const std::string& to) {
  std::string s = kWitness;
  s.replace(s.find(from), from.size(), to);
  return s;
}

void ExpectWitnessError(const std::string& yaml, const std::string& text) {
  auto c = ParseWitnessNoThrow(yaml);
  ASSERT_FALSE(c.ok()) << yaml;
  EXPECT_NE(std::string(c.status().message()).find(text), std::string::npos)
      << c.status().message();
}

TEST(WitnessConfig, EmptyFieldsAndARegionNamedTwiceAreRefused) {
  ExpectWitnessError(Witness("store: witness-leases.json", "store: \"\""),
                     "store: must not be empty");
  ExpectWitnessError(Witness("{name: eu-west, replica_id: 2}", "{name: us-east, replica_id: 2}"),
                     "regions[1].name: 'us-east' is named twice");
  ExpectWitnessError(Witness("{name: us-east, replica_id: 1}", "{name: witness, replica_id: 1}"),
                     "regions[0].name: 'witness' is named twice");
  ExpectWitnessError(Witness("replica_id: 250", "replica_id: 250\nreplica_id: 251"),
                     "replica_id: given twice");
  // Names are matched against certificates' common names: the replicator's rule.
  ExpectWitnessError(Witness("name: witness", "name: \"bad name\""), "name: 1..32 of");
  ExpectWitnessError(Witness("{name: us-east, replica_id: 1}", "{name: \"a\\nb\", replica_id: 1}"),
                     "regions[0].name: 1..32 of");
}

class WitnessStore : public test_support::TempDirTest {};

// A first start writes the empty store at once; what is saved is read back.
TEST_F(WitnessStore, AFirstStartWritesTheStoreAndSavedRecordsComeBack) {
  const std::string path = dir_ + "/leases.json";
  FileLeaseStore first(path);
  ASSERT_TRUE(first.Open().ok());
  EXPECT_TRUE(std::filesystem::is_regular_file(path));
  ASSERT_TRUE(first.Save(3, AcceptorRecord{7, 2}).ok());
  FileLeaseStore again(path);
  ASSERT_TRUE(again.Open().ok());
  EXPECT_EQ(again.Load(), (std::map<RegionId, AcceptorRecord>{{3, AcceptorRecord{7, 2}}}));
}

// A store that cannot be read or written is an error at the start. It used to be taken for a first
// start (no records: epochs it had granted could be granted again), and one that could never be
// written failed only at the first grant.
TEST_F(WitnessStore, AStoreThatCannotBeReadOrWrittenFailsTheStart) {
  std::ofstream(dir_ + "/file") << "x";
  FileLeaseStore under_a_file(dir_ + "/file/leases.json");
  EXPECT_FALSE(under_a_file.Open().ok());
  std::filesystem::create_directories(dir_ + "/folder");
  FileLeaseStore folder(dir_ + "/folder");
  const absl::Status st = folder.Open();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("is a folder"), absl::string_view::npos) << st;
  std::ofstream(dir_ + "/corrupt.json") << R"({"records":[{"group":1}]})";
  FileLeaseStore corrupt(dir_ + "/corrupt.json");
  EXPECT_TRUE(absl::IsInvalidArgument(corrupt.Open()));
}

// --check-config refuses what Open would, and writes nothing: no store before a first start.
TEST_F(WitnessStore, CheckFindsWhatOpenWouldRefuseAndWritesNothing) {
  const std::string path = dir_ + "/leases.json";
  EXPECT_TRUE(FileLeaseStore(path).Check().ok());
  EXPECT_FALSE(std::filesystem::exists(path));
  const absl::Status no_folder = FileLeaseStore(dir_ + "/nowhere/leases.json").Check();
  EXPECT_NE(no_folder.message().find("the folder '" + dir_ + "/nowhere' does not exist"),
            absl::string_view::npos)
      << no_folder;
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/nowhere"));
  std::filesystem::create_directories(dir_ + "/folder");
  EXPECT_NE(FileLeaseStore(dir_ + "/folder").Check().message().find("is a folder"),
            absl::string_view::npos);
  std::ofstream(dir_ + "/garbage.json") << "not json";
  EXPECT_FALSE(FileLeaseStore(dir_ + "/garbage.json").Check().ok());
  std::ofstream(dir_ + "/corrupt.json") << R"({"records":[{"group":1}]})";
  EXPECT_TRUE(absl::IsInvalidArgument(FileLeaseStore(dir_ + "/corrupt.json").Check()));
  FileLeaseStore saved(path);
  ASSERT_TRUE(saved.Open().ok());
  ASSERT_TRUE(saved.Save(3, AcceptorRecord{7, 2}).ok());
  EXPECT_TRUE(FileLeaseStore(path).Check().ok());
}

TEST(WitnessConfig, ParsesAGoodFile) {
  auto c = ParseWitnessNoThrow(kWitness);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->regions.size(), 2u);
  EXPECT_EQ(c->leases.ttl_ms, 6000);
}

// The witness resolves its relative paths like the replicator does: from its config's folder, so
// that `meridian-witness --config etc/w.yaml` works from any working directory.
TEST_F(ReplicatorConfigFiles, WitnessRelativePathsAreRelativeToTheConfigFile) {
  std::ofstream(dir_ + "/etc/w.yaml") << kWitness;
  auto c = LoadWitnessConfig(dir_ + "/etc/w.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->tls_ca, dir_ + "/etc/ca.pem");
  EXPECT_EQ(c->tls_cert, dir_ + "/etc/witness.pem");
  EXPECT_EQ(c->tls_key, dir_ + "/etc/witness.key");
  EXPECT_EQ(c->store_path, dir_ + "/etc/witness-leases.json");
}

TEST(WitnessConfig, ASectionGivenAsAValueOrAListIsAnErrorNotACrash) {
  const std::string tls = "tls: {ca: ca.pem, cert: witness.pem, key: witness.key}";
  for (const char* bad : {"5", "x.pem", "[a, b]"}) {
    ExpectWitnessError(Witness(tls, std::string("tls: ") + bad), "tls: must be a mapping");
    ExpectWitnessError(Witness("leases: {ttl_ms: 6000}", std::string("leases: ") + bad),
                       "leases: must be a mapping");
  }
  ExpectWitnessError(Witness("{name: us-east, replica_id: 1}", "5"),
                     "regions[0]: must be a mapping");
  ExpectWitnessError(Witness("{name: eu-west, replica_id: 2}", "[eu-west, 2]"),
                     "regions[1]: must be a mapping");
  ExpectWitnessError(std::string(kWitness) + "[a]: 1\n", "field names must be strings");
  ExpectWitnessError(Witness("{ttl_ms: 6000}", "{[ttl_ms]: 6000}"),
                     "leases: field names must be strings");
}

TEST(WitnessConfig, TtlBelowWhatTheDefaultRenewalNeedsNamesTtlAndItsMinimum) {
  // LeaseConfig::Validate with the default renew_interval_ms (1000) and margin_ms (100) needs
  // ttl_ms * (1 - 2 * max_drift) - 100 >= 2000: 2143 with max_drift 0.01.
  auto min_ttl = [](double drift) {
    LeaseConfig l;
    l.max_drift = drift;
    return l.MinTtlMs();
  };
  EXPECT_EQ(min_ttl(0.01), 2143);
  EXPECT_EQ(min_ttl(0), 2100);
  EXPECT_EQ(min_ttl(0.1), 2625);
  EXPECT_EQ(min_ttl(0.2), kLeaseTtlMsMax + 1);  // max_drift out of range: no ttl fits
  for (double drift : {0.0, 0.01, 0.05, 0.1}) {
    LeaseConfig l;
    l.max_drift = drift;
    l.ttl_ms = min_ttl(drift);
    EXPECT_TRUE(l.Validate().ok()) << drift;
    l.ttl_ms -= 1;
    EXPECT_FALSE(l.Validate().ok()) << drift;
  }
  auto c = ParseWitnessNoThrow(Witness("{ttl_ms: 6000}", "{ttl_ms: 2142}"));
  ASSERT_FALSE(c.ok());
  const std::string m(c.status().message());
  EXPECT_NE(m.find("leases.ttl_ms: must be at least 2143"), std::string::npos) << m;
  EXPECT_EQ(m.find("leases.renew_interval_ms"), std::string::npos) << m;  // not a witness key
  ExpectWitnessError(Witness("{ttl_ms: 6000}", "{ttl_ms: 2200, max_drift: 0.1}"),
                     "leases.ttl_ms: must be at least 2625");
  EXPECT_TRUE(ParseWitnessNoThrow(Witness("{ttl_ms: 6000}", "{ttl_ms: 2143}")).ok());
  ExpectWitnessError(Witness("{ttl_ms: 6000}", "{ttl_ms: 50}"), "leases.ttl_ms");
}

// deploy/meridian checks --lease-ttl-ms before it writes any config, with its own copy of the
// minimum for the lease timings it writes (LeaseConfig's defaults); this keeps the copy honest.
TEST(WitnessConfig, DeployScriptsTtlMinimumIsLeaseConfigs) {
  std::ifstream in(std::string(MERIDIAN_SOURCE_DIR) + "/deploy/meridian");
  ASSERT_TRUE(in) << "cannot read deploy/meridian";
  std::string line;
  int64_t scripted = -1;
  while (std::getline(in, line)) {
    if (line.rfind("LEASE_TTL_MIN_MS=", 0) == 0) {
      scripted = std::strtoll(line.c_str() + 17, nullptr, 10);  // 0 when not a number
    }
  }
  EXPECT_EQ(scripted, LeaseConfig{}.MinTtlMs());
}

TEST(WitnessFrames, OnlyRequestsReleasesAndQueriesOfARegionsGroupAreTaken) {
  const std::vector<RegionId> regions{1, 2};
  EXPECT_TRUE(CheckWitnessFrame(LeaseRequest{1, 5, 1, false}, regions).ok());
  EXPECT_TRUE(CheckWitnessFrame(LeaseRequest{2, 5, 1, true}, regions).ok());
  EXPECT_TRUE(CheckWitnessFrame(LeaseRelease{2, 5}, regions).ok());
  EXPECT_TRUE(CheckWitnessFrame(LeaseQuery{1, 5, 9}, regions).ok());
  // Before, a reply's record was taken as a claim: each one moved the witness's epochs a jump.
  absl::Status st = CheckWitnessFrame(LeaseReply{2, 5, 1, false, 1 << 20, 1}, regions);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("answers nothing"), std::string_view::npos) << st;
  EXPECT_FALSE(CheckWitnessFrame(LeaseRecordAnswer{2, 5, 9, 5, 1}, regions).ok());
  EXPECT_FALSE(CheckWitnessFrame(LeaseHandback{1, 5}, regions).ok());
  // Groups the witness does not know (it answered them OK with an empty frame).
  st = CheckWitnessFrame(LeaseRequest{3, 5, 1, false}, regions);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("group 3 is not a region"), std::string_view::npos) << st;
  EXPECT_FALSE(CheckWitnessFrame(LeaseQuery{250, 5, 9}, regions).ok());
}

}  // namespace
}  // namespace meridian::replication
