// meridian-failover's config: a full valid file, defaults, and every error naming its field.

#include "failover/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace meridian::failover {
namespace {

const char* kValid = R"(
region: eu-west
listen: 127.0.0.1:0
operator_token: a-token-of-sixteen-bytes
controller_token: eu-west-controller-token
geo: [http://127.0.0.1:8053/, http://127.0.0.1:8054]
audit_file: audit.log
regions:
  - {name: us-east, url: http://10.77.0.1:4000, replicator: http://10.77.0.1:4005, metrics: http://10.77.0.1:4004/metrics, controller: http://127.0.0.1:4100,
     controller_token_sha256: 0be2424907177f1e391061f621fe30172b97a47de3729b729e51e43ea72372f6}
  - {name: eu-west, url: http://10.77.0.2:4000, replicator: http://10.77.0.2:4005, metrics: http://10.77.0.2:4004/metrics}
  - {name: ap-south, url: http://10.77.0.3:4000/, replicator: http://10.77.0.3:4005, metrics: http://10.77.0.3:4004/metrics, controller: http://127.0.0.1:4102,
     controller_token_sha256: 77775addfe43840e9ab5f1f86ed1c7fcc0b5fa98c11c05330a65283ceb9bf487}
)";

absl::StatusOr<FailoverConfig> Parse(const std::string& yaml) {
  return ParseConfig(yaml, "failover.yaml", "/etc/meridian");
}

// Replaces the first occurrence of `from` in kValid.
std::string With(const std::string& from, const std::string& to) {
  std::string s = kValid;
  const size_t at = s.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return s.replace(at, from.size(), to);
}

void ExpectError(const std::string& yaml, const std::string& field_and_message) {
  auto c = Parse(yaml);
  ASSERT_FALSE(c.ok()) << yaml;
  EXPECT_TRUE(absl::IsInvalidArgument(c.status()));
  EXPECT_NE(c.status().message().find("failover.yaml: " + field_and_message), std::string::npos)
      << c.status();
}

TEST(FailoverConfigTest, ValidWithDefaults) {
  auto c = Parse(kValid);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->region, "eu-west");
  EXPECT_EQ(c->listen.host, "127.0.0.1");
  EXPECT_EQ(c->listen.port, 0);
  ASSERT_EQ(c->regions.size(), 3u);
  EXPECT_EQ(c->regions[2].url, "http://10.77.0.3:4000");  // trailing slash trimmed
  EXPECT_EQ(c->geo, (std::vector<std::string>{"http://127.0.0.1:8053", "http://127.0.0.1:8054"}));
  EXPECT_EQ(c->audit_file, "/etc/meridian/audit.log");
  EXPECT_EQ(c->probe_interval_ms, 500);
  EXPECT_EQ(c->probe_timeout_ms, 400);
  EXPECT_EQ(c->lost_after_checks, 3u);
  EXPECT_EQ(c->recover_after_checks, 10u);
  EXPECT_EQ(c->observation_ttl_ms, 1500);
  EXPECT_EQ(c->catch_up.max_apply_lag_ms, 1000);
  EXPECT_EQ(c->catch_up.max_backlog_records, 1000);
  EXPECT_EQ(c->decider_config().regions.size(), 3u);
  EXPECT_TRUE(c->decider_config().Validate().ok());
  EXPECT_NE(c->Find("ap-south"), nullptr);
  EXPECT_EQ(c->Find("mars"), nullptr);
  EXPECT_EQ(c->controller_token, "eu-west-controller-token");
  ASSERT_NE(c->PeerControllerOfToken("ap-south-controller-token"), nullptr);
  EXPECT_EQ(c->PeerControllerOfToken("ap-south-controller-token")->name, "ap-south");
  EXPECT_EQ(c->PeerControllerOfToken("us-east-controller-token")->name, "us-east");
  EXPECT_EQ(c->PeerControllerOfToken("eu-west-controller-token"), nullptr) << "our own";
  EXPECT_EQ(c->PeerControllerOfToken("a-token-of-sixteen-bytes"), nullptr) << "the operator's";
  EXPECT_EQ(TokenSha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // A short interval scales the derived defaults.
  c = Parse(std::string(kValid) + "probe_interval_ms: 100\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->probe_timeout_ms, 80);
  EXPECT_EQ(c->observation_ttl_ms, 300);
}

TEST(FailoverConfigTest, ErrorsNameTheField) {
  ExpectError("[1, 2]", "(top level): must be a mapping");
  ExpectError("region: us-east\n---\nregion: eu-west\n", "holds 2 YAML documents");
  ExpectError("a: [", "not valid YAML");
  for (const char* listen : {"\"[::1]:4100\"", "\"::1:4100\""}) {  // as meridian-geo takes it
    auto c = Parse(With("listen: 127.0.0.1:0", std::string("listen: ") + listen));
    ASSERT_TRUE(c.ok()) << listen << ": " << c.status();
    EXPECT_EQ(c->listen.host, "::1");
    EXPECT_EQ(c->listen.port, 4100);
  }
  ExpectError(With("listen: 127.0.0.1:0", "listen: localhost:8080"),
              "listen: the host must be an IP address, got 'localhost'");
  ExpectError(std::string(kValid) + "colour: red\n", "colour: unknown field");
  ExpectError(With("region: eu-west", "region: mars"), "region: 'mars' is not one of");
  ExpectError(With("region: eu-west\n", ""), "region: missing");
  ExpectError(With("listen: 127.0.0.1:0", "listen: 127.0.0.1:99999"), "listen: port must be");
  ExpectError(With("name: us-east,", "name: US_East,"), "regions[0].name: must be 1..63");
  ExpectError(With("name: ap-south,", "name: us-east,"),
              "regions[2].name: 'us-east' appears twice");
  ExpectError(With("url: http://10.77.0.1:4000", "url: ftp://x"),
              "regions[0].url: must be an http");
  ExpectError(With("url: http://10.77.0.1:4000", "url: http://10.77.0.1:99999"),
              "regions[0].url: must be an http");
  ExpectError(With("url: http://10.77.0.1:4000", "url: http://10.77.0.1:0"),
              "regions[0].url: must be an http:// or https:// URL with a host (and, if given, a "
              "port 1..65535), got 'http://10.77.0.1:0'");
  ExpectError(With("controller: http://127.0.0.1:4100,", "controller: \"http://x:y:z\","),
              "regions[0].controller: must be an http");
  ExpectError(With(", replicator: http://10.77.0.2:4005", ""), "regions[1].replicator: missing");
  ExpectError(With("metrics: http://10.77.0.3:4004/metrics", "metrics: \"http://a b\""),
              "regions[2].metrics: must be an http");
  ExpectError(With(", controller: http://127.0.0.1:4100", ""),
              "regions[0].controller: missing (every other region's controller");
  ExpectError(With("controller_token_sha256: "
                   "0be2424907177f1e391061f621fe30172b97a47de3729b729e51e43ea72372f6",
                   "x: 1"),
              "regions[0].x: unknown field");
  ExpectError(With(",\n     controller_token_sha256: "
                   "0be2424907177f1e391061f621fe30172b97a47de3729b729e51e43ea72372f6",
                   ""),
              "regions[0].controller_token_sha256: missing (every other region's controller token "
              "digest");
  ExpectError(With("77775addfe43840e9ab5f1f86ed1c7fcc0b5fa98c11c05330a65283ceb9bf487",
                   "77775ADDFE43840E9AB5F1F86ED1C7FCC0B5FA98C11C05330A65283CEB9BF487"),
              "regions[2].controller_token_sha256: must be 64 lowercase hex digits");
  ExpectError(With("metrics: http://10.77.0.2:4004/metrics}",
                   "metrics: http://10.77.0.2:4004/metrics, controller_token_sha256: "
                   "1111111111111111111111111111111111111111111111111111111111111111}"),
              "controller_token: its SHA-256 is not regions[].controller_token_sha256 of "
              "'eu-west'");
  // One token per controller: a digest given twice would make one controller's observations
  // look like the other's; our own token must not be a peer's.
  ExpectError(With("77775addfe43840e9ab5f1f86ed1c7fcc0b5fa98c11c05330a65283ceb9bf487",
                   "0be2424907177f1e391061f621fe30172b97a47de3729b729e51e43ea72372f6"),
              "regions[2].controller_token_sha256: the same as 'us-east''s: every controller "
              "needs a token of its own");
  ExpectError(With("controller_token: eu-west-controller-token",
                   "controller_token: us-east-controller-token"),
              "controller_token: its SHA-256 is regions[].controller_token_sha256 of 'us-east'");
  ExpectError(With("controller_token: eu-west-controller-token\n", ""),
              "controller_token: exactly one of controller_token and controller_token_file is "
              "required");
  ExpectError(With("controller_token: eu-west-controller-token", "controller_token: short"),
              "controller_token: the token must be at least 16");
  ExpectError(With("controller_token: eu-west-controller-token",
                   "controller_token: a-token-of-sixteen-bytes"),
              "controller_token: must differ from the operator token");
  ExpectError("region: a\noperator_token: a-token-of-sixteen-bytes\nregions: []\n",
              "regions: must be a non-empty list");
  ExpectError("region: a\noperator_token: a-token-of-sixteen-bytes\n", "regions: missing");
  ExpectError(With("geo: [http://127.0.0.1:8053/, http://127.0.0.1:8054]", "geo: [127.0.0.1:8053]"),
              "geo[0]: must be an http");
  ExpectError(With("geo: [http://127.0.0.1:8053/, http://127.0.0.1:8054]", "geo: http://x"),
              "geo: must be a list");
  ExpectError(With("geo: [http://127.0.0.1:8053/, http://127.0.0.1:8054]", "geo: []"),
              "geo: an empty list");
  ExpectError(std::string(kValid) + "probe_interval_ms: 10\n",
              "probe_interval_ms: must be between 50");
  ExpectError(std::string(kValid) + "probe_timeout_ms: 500\n",
              "probe_timeout_ms: must be below probe_interval_ms (500), got 500");
  ExpectError(std::string(kValid) + "lost_after_checks: 0\n",
              "lost_after_checks: must be between 1");
  ExpectError(std::string(kValid) + "recover_after_checks: x\n",
              "recover_after_checks: must be an integer");
  ExpectError(std::string(kValid) + "observation_ttl_ms: 500\n",
              "observation_ttl_ms: must be above probe_interval_ms");
  ExpectError(std::string(kValid) + "catch_up: {max_lag: 3}\n", "catch_up.max_lag: unknown field");
  ExpectError(std::string(kValid) + "catch_up: {max_apply_lag_ms: -1}\n",
              "catch_up.max_apply_lag_ms: must be between");
  ExpectError(std::string(kValid) + "handback_timeout_ms: 5\n",
              "handback_timeout_ms: must be between");
  ExpectError(With("operator_token: a-token-of-sixteen-bytes", "operator_token: short"),
              "operator_token: the token must be at least 16");
  ExpectError(std::string(kValid) + "operator_token_file: /x\n",
              "operator_token: exactly one of operator_token and operator_token_file");
  ExpectError(
      With("operator_token: a-token-of-sixteen-bytes", "operator_token_file: /nonexistent/t"),
      "operator_token_file: cannot read '/nonexistent/t'");
}

TEST(FailoverConfigTest, TokenFileAndLoad) {
  char dir_template[] = "/tmp/failover-config-test-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  { std::ofstream(dir + "/token") << "a-token-from-a-file-0123\n\n"; }
  const std::string path = dir + "/failover.yaml";
  {
    std::ofstream out(path);
    { std::ofstream(dir + "/ctl") << "eu-west-controller-token\n"; }
    std::string yaml =
        With("operator_token: a-token-of-sixteen-bytes", "operator_token_file: token");
    const std::string inline_ctl = "controller_token: eu-west-controller-token";
    out << yaml.replace(yaml.find(inline_ctl), inline_ctl.size(), "controller_token_file: ctl");
  }
  auto c = LoadConfigFile(path);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->operator_token, "a-token-from-a-file-0123");
  EXPECT_EQ(c->controller_token, "eu-west-controller-token");
  EXPECT_EQ(c->audit_file, dir + "/audit.log");
  EXPECT_TRUE(absl::IsNotFound(LoadConfigFile(dir + "/missing.yaml").status()));
  std::remove((dir + "/token").c_str());
  std::remove((dir + "/ctl").c_str());
  std::remove(path.c_str());
  std::remove(dir.c_str());
}

// A section given as a value or a list where a mapping belongs, a list given as a mapping, or a
// field name that is not a string: an error naming it, never an uncaught exception.
TEST(FailoverConfigTest, ASectionOfTheWrongShapeIsAnErrorNotACrash) {
  auto expect = [](const std::string& yaml, const std::string& text) {
    absl::StatusOr<FailoverConfig> c = absl::UnknownError("not parsed");
    ASSERT_NO_THROW(c = Parse(yaml)) << yaml;
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_NE(c.status().message().find("failover.yaml: " + text), std::string::npos) << c.status();
  };
  for (const char* bad : {"5", "text", "[1, 2]"}) {
    expect(std::string(kValid) + "catch_up: " + bad + "\n", "catch_up: must be a mapping");
  }
  expect(With("listen: 127.0.0.1:0", "listen: {host: 127.0.0.1}"), "listen: must be a string");
  expect(With("region: eu-west", "region: [eu-west]"), "region: must be a string");
  expect(With("geo: [http://127.0.0.1:8053/, http://127.0.0.1:8054]", "geo: {a: 1}"),
         "geo: must be a list");
  expect(With("  - {name: us-east", "  - 5\n  - {name: us-east"), "regions[0]: must be a mapping");
  expect(std::string(kValid) + "[a, b]: 1\n", "(top level): field names must be strings");
  expect(std::string(kValid) + "catch_up: {[max_apply_lag_ms]: 1}\n",
         "catch_up: field names must be strings");
}

}  // namespace
}  // namespace meridian::failover
