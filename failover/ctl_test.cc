// meridianctl's commands on canned API responses: tables, JSON, exit codes, the residency audit's
// verdicts, handback and declare-lost (incl. a replicator without the declare-lost route), and
// reading deploy/meridian's data folder.

#include "failover/ctl.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "failover/fake_http_test_util.h"

namespace meridian::failover {
namespace {

using Json = nlohmann::json;
const std::vector<std::string> kThree = {"us-east", "eu-west", "ap-south"};

ClusterEndpoints Cluster() {
  ClusterEndpoints c;
  for (const auto& r : kThree) {
    c.regions.push_back(ClusterRegion{r, "http://" + r + ".region", "http://" + r + ".repl",
                                      "http://" + r + ".repl/metrics", "http://" + r + ".ctl"});
  }
  c.geo = {"http://geo"};
  c.dns = "127.0.0.1:5300";
  c.token = "tok";
  return c;
}

std::string Status(const std::string& region, const std::map<std::string, bool>& alive,
                   const std::map<std::string, uint64_t>& held) {
  Json peers = Json::array();
  for (const auto& [p, a] : alive) peers.push_back(Json{{"name", p}, {"alive", a}});
  Json leases = Json::array();
  for (const auto& g : kThree) {
    auto h = held.find(g);
    leases.push_back(Json{{"group_region", g},
                          {"epoch", h != held.end() ? h->second : 1},
                          {"owner", h != held.end() ? region : g},
                          {"held_here", h != held.end()},
                          {"usable", h != held.end()},
                          {"syncing", false}});
  }
  return Json{{"region", region}, {"peers", peers}, {"leases", leases}}.dump();
}

std::string Metrics(const std::string& region) {
  std::string out;
  for (const auto& p : kThree) {
    if (p == region) continue;
    absl::StrAppend(&out, "meridian_replication_lag_ms{peer=\"", p, "\",quantile=\"0.99\"} 5\n",
                    "meridian_replication_lag_seq{peer=\"", p, "\"} 0\n",
                    "meridian_replication_connected{peer=\"", p, "\"} 1\n");
  }
  return out;
}

std::string ControllerRegions(const std::map<std::string, std::string>& states) {
  Json regions = Json::array();
  for (const auto& [name, st] : states) regions.push_back(Json{{"name", name}, {"state", st}});
  return Json{{"regions", regions}}.dump();
}

std::string GeoRegions(const std::string& down = "") {
  Json regions = Json::array();
  for (const auto& r : kThree) {
    regions.push_back(Json{{"name", r},
                           {"probe", Json{{"state", r == down ? "down" : "up"}}},
                           {"override", r == down ? Json{{"state", "down"}} : Json()},
                           {"effective", r == down ? "down" : "up"}});
  }
  return Json{{"regions", regions}, {"last_resort_active", false}}.dump();
}

// The first line of `text` that starts with `prefix`.
std::string Line(const std::string& text, const std::string& prefix) {
  size_t at = text.rfind("\n" + prefix);
  if (text.rfind(prefix, 0) == 0) return text.substr(0, text.find('\n'));
  if ((at = text.find("\n" + prefix)) == std::string::npos) return "";
  return text.substr(at + 1, text.find('\n', at + 1) - at - 1);
}

class CtlTest : public ::testing::Test {
 protected:
  void Healthy() {
    for (const auto& r : kThree) {
      http_.SetJson("http://" + r + ".region/readyz", 200, "{}");
      std::map<std::string, bool> alive;
      for (const auto& p : kThree)
        if (p != r) alive[p] = true;
      http_.SetJson("http://" + r + ".repl/v1/status", 200, Status(r, alive, {{r, 1}}));
      http_.SetJson("http://" + r + ".repl/metrics", 200, Metrics(r));
      http_.SetJson("http://" + r + ".ctl/v1/regions", 200,
                    ControllerRegions({{"us-east", "up"}, {"eu-west", "up"}, {"ap-south", "up"}}));
    }
    http_.SetJson("http://geo/v1/regions", 200, GeoRegions());
  }
  // eu-west killed: taken over by us-east at epoch 2, lost for the surviving controllers.
  void EuLost() {
    Healthy();
    http_.Refuse("http://eu-west.region/readyz");
    http_.Refuse("http://eu-west.repl/v1/status");
    http_.Refuse("http://eu-west.repl/metrics");
    http_.Refuse("http://eu-west.ctl/v1/regions");
    http_.SetJson("http://us-east.repl/v1/status", 200,
                  Status("us-east", {{"eu-west", false}, {"ap-south", true}},
                         {{"us-east", 1}, {"eu-west", 2}}));
    http_.SetJson("http://ap-south.repl/v1/status", 200,
                  Status("ap-south", {{"eu-west", false}, {"us-east", true}}, {{"ap-south", 1}}));
    for (const char* c : {"http://us-east.ctl/v1/regions", "http://ap-south.ctl/v1/regions"}) {
      http_.SetJson(
          c, 200, ControllerRegions({{"us-east", "up"}, {"eu-west", "lost"}, {"ap-south", "up"}}));
    }
    http_.SetJson("http://geo/v1/regions", 200, GeoRegions("eu-west"));
  }
  CtlResult Run(bool json, const std::function<CtlResult(Ctl&)>& f) {
    Ctl ctl(Cluster(), &http_, json);
    return f(ctl);
  }
  FakeHttp http_;
};

TEST(RenderTableTest, Aligns) {
  EXPECT_EQ(RenderTable({"A", "BBB", "C"}, {{"long-cell", "x", "y"}, {"z", "", "w"}}),
            "A          BBB  C\n"
            "long-cell  x    y\n"
            "z               w\n");
}

TEST_F(CtlTest, StatusHealthy) {
  Healthy();
  CtlResult r = Run(false, [](Ctl& c) { return c.Status(""); });
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.err, "");
  EXPECT_NE(r.out.find("REGION    READY  GEO  FAILOVER"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("us-east   yes    up   up (3 controllers)  ap-south p99 5ms backlog 0; "
                       "eu-west p99 5ms backlog 0  home e1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("geo: http://geo ok; dns: 127.0.0.1:5300"), std::string::npos);
  r = Run(true, [](Ctl& c) { return c.Status(""); });
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["regions"].size(), 3u);
  EXPECT_EQ(j["regions"][1]["name"], "eu-west");
  EXPECT_EQ(j["regions"][1]["ready"], true);
  EXPECT_EQ(j["regions"][1]["geo"]["effective"], "up");
  EXPECT_EQ(j["regions"][1]["failover"]["state"], "up");
  EXPECT_EQ(j["regions"][1]["replication"]["peers"][0]["lag_p99_ms"], 5.0);
  EXPECT_EQ(j["regions"][1]["lease"]["home"], true);
  EXPECT_EQ(j["leases"].size(), 3u);
  EXPECT_EQ(j["errors"].size(), 0u);
}

TEST_F(CtlTest, StatusWithARegionLost) {
  EuLost();
  CtlResult r = Run(false, [](Ctl& c) { return c.Status(""); });
  const std::string eu = Line(r.out, "eu-west ");
  for (const char* cell :
       {"no (connection refused)", "down (override down)", "lost (2 controllers)",
        "replicator unreachable", "held by us-east e2"}) {
    EXPECT_NE(eu.find(cell), std::string::npos) << cell << "\n" << r.out;
  }
  EXPECT_NE(Line(r.out, "us-east ").find("eu-west DOWN p99 5ms"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("warning: eu-west replicator: connection refused"), std::string::npos);
  EXPECT_EQ(r.exit_code, 1);  // a problem found, as the other commands say theirs
  r = Run(true, [](Ctl& c) { return c.Status(""); });
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["regions"][1]["ready"], false);
  EXPECT_EQ(j["regions"][1]["ready_error"], "connection refused");
  EXPECT_EQ(j["regions"][1]["geo"]["override"], "down");
  EXPECT_EQ(j["regions"][1]["failover"]["views"]["us-east"], "lost");
  EXPECT_EQ(j["leases"][1]["holder"], "us-east");
  EXPECT_EQ(j["leases"][1]["epoch"], 2);
  EXPECT_GE(j["errors"].size(), 2u);
}

TEST_F(CtlTest, LeasesFlagTwoHolders) {
  Healthy();
  CtlResult r = Run(false, [](Ctl& c) { return c.Leases(); });
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("eu-west   eu-west   1      yes   us-east:e1/eu-west eu-west:e1/eu-west* "
                       "ap-south:e1/eu-west"),
            std::string::npos)
      << r.out;
  // Never two owners: if replicators ever report it, the command says so and fails.
  http_.SetJson(
      "http://us-east.repl/v1/status", 200,
      Status("us-east", {{"eu-west", true}, {"ap-south", true}}, {{"us-east", 1}, {"eu-west", 1}}));
  r = Run(false, [](Ctl& c) { return c.Leases(); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("PROBLEM: held usable by 2 replicators at once"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("epoch 1 has different owners: eu-west,us-east"), std::string::npos);
  r = Run(true, [](Ctl& c) { return c.Leases(); });
  EXPECT_EQ(Json::parse(r.out)["groups"][1]["problems"].size(), 2u);
}

// A replicator that did not answer: nothing was checked there, so not "ok" (exit 1, as status
// says it); the others' view is still shown.
TEST_F(CtlTest, LeasesWithAReplicatorUnansweredIsAProblem) {
  EuLost();
  CtlResult r = Run(false, [](Ctl& c) { return c.Leases(); });
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.err.find("eu-west replicator"), std::string::npos) << r.err;
  r = Run(true, [](Ctl& c) { return c.Leases(); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(Json::parse(r.out)["unreachable"].size(), 1u);
}

// A field of the wrong type in meridian-geo's answer is no crash (nlohmann's value() throws).
TEST_F(CtlTest, StatusWithAGeoFieldOfTheWrongType) {
  Healthy();
  http_.SetJson("http://geo/v1/regions", 200, R"({"regions":[],"last_resort_active":"no"})");
  CtlResult r = Run(true, [](Ctl& c) { return c.Status(""); });
  EXPECT_TRUE(Json::parse(r.out, nullptr, false).is_object()) << r.out;
}

TEST_F(CtlTest, RightsShowFrozenUnits) {
  EuLost();
  const std::string rights =
      R"({"sku":"sku-1","as_seen_by":"%s","available":230,"regions":[
      {"region":"us-east","rights":100},{"region":"eu-west","rights":70},{"region":"ap-south","rights":60}],
      "waiting_here":0})";
  for (const char* r : {"us-east", "ap-south"}) {
    std::string body = rights;
    body.replace(body.find("%s"), 2, r);
    http_.SetJson(absl::StrCat("http://", r, ".region/v1/admin/rights/sku-1"), 200, body);
  }
  CtlResult r = Run(false, [](Ctl& c) { return c.Rights("sku-1"); });
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("us-east     us-east 100, eu-west 70 (FROZEN), ap-south 60  230"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("eu-west     unreachable (connection refused)"), std::string::npos);
  EXPECT_NE(
      r.out.find(
          "frozen (lost regions; reclaim with meridianctl declare-lost): eu-west 70 = 70 units"),
      std::string::npos);
  r = Run(true, [](Ctl& c) { return c.Rights("sku-1"); });
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["frozen_units"], 70);
  EXPECT_EQ(j["failover_states"]["eu-west"], "lost");
  // After declare-lost the controllers say "reclaimed": shown, not counted as frozen.
  for (const char* c : {"http://us-east.ctl/v1/regions", "http://ap-south.ctl/v1/regions"}) {
    http_.SetJson(c, 200,
                  R"({"regions":[{"name":"us-east","state":"up","rights":"usable"},
                      {"name":"eu-west","state":"lost","rights":"reclaimed"},
                      {"name":"ap-south","state":"up","rights":"usable"}]})");
  }
  r = Run(false, [](Ctl& c) { return c.Rights("sku-1"); });
  EXPECT_NE(r.out.find("eu-west 70 (RECLAIMED: written off if it returns)"), std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("frozen (lost regions"), std::string::npos) << r.out;
  EXPECT_EQ(Json::parse(Run(true, [](Ctl& c) { return c.Rights("sku-1"); }).out)["frozen_units"],
            0);
  r = Run(false, [](Ctl& c) { return c.Rights("bad sku"); });
  EXPECT_EQ(r.exit_code, 2);
  // Status --sku includes the summary.
  r = Run(false, [](Ctl& c) { return c.Status("sku-1"); });
  EXPECT_NE(r.out.find("rights of sku-1"), std::string::npos);
  EXPECT_EQ(Run(false, [](Ctl& c) { return c.Status("bad sku"); }).exit_code, 2);
}

// Every region answering 404 (no stock record) answered: the SKU is stocked nowhere, not "no
// region answered" (review of the command lines, finding 11).
TEST_F(CtlTest, RightsOfASkuNoRegionStocks) {
  Healthy();
  for (const auto& reg : kThree) {
    http_.SetJson(absl::StrCat("http://", reg, ".region/v1/admin/rights/nosuch"), 404,
                  R"({"title":"Not Found","status":404})");
  }
  CtlResult r = Run(false, [](Ctl& c) { return c.Rights("nosuch"); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err, "meridianctl: no region stocks nosuch\n");
  http_.Refuse("http://eu-west.region/v1/admin/rights/nosuch");
  r = Run(false, [](Ctl& c) { return c.Rights("nosuch"); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no region answered with rights for nosuch (2 of 3 have no stock of it"),
            std::string::npos)
      << r.err;
}

// --into is checked before the quorum query: without a quorum, --into mars used to get the
// quorum refusal and its "Use --force" advice, and only then "not a region".
TEST_F(CtlTest, DeclareLostChecksIntoFirst) {
  Healthy();
  Ctl ctl(Cluster(), &http_, false);
  http_.ClearCalls();
  CtlResult r = ctl.DeclareLost("eu-west", "mars", true, false);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.err, "meridianctl: --into mars: not a region of this cluster\n");
  EXPECT_TRUE(http_.AllCalls().empty()) << "nothing asked before the flags are checked";
}

// The audit line of a decision that cannot be written is a warning and exit 1, not lost silently.
TEST_F(CtlTest, DeclareLostSaysWhenTheAuditLineCannotBeWritten) {
  EuLost();
  http_.SetJson(
      "POST http://us-east.repl/v1/regions/eu-west/declare-lost", 200,
      R"({"region":"eu-west","declaration_id":"dl9","declared_by":"us-east","reclaimed":[]})");
  ClusterEndpoints c = Cluster();
  c.audit_file = ::testing::TempDir() + "/no-such-folder/operator-audit.log";
  Ctl ctl(c, &http_, false);
  CtlResult r = ctl.DeclareLost("eu-west", "", true, false);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("warning: the decision could not be written to " + c.audit_file),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("eu-west declared lost"), std::string::npos) << r.out;
}

std::string Residency(const std::string& region, const std::string& jur, Json tables,
                      Json violations = Json::array()) {
  return Json{{"region", region},
              {"jurisdiction", jur},
              {"tables", tables},
              {"violations", violations},
              {"violation_count", violations.size()},
              {"unverified", Json::array()},
              {"unverified_count", 0},
              {"checked_at", 1700000000}}
      .dump();
}

TEST_F(CtlTest, ResidencyAuditPasses) {
  http_.SetJson("http://us-east.region/v1/admin/residency", 200,
                Residency("us-east", "us",
                          Json{{"users", {{"any", 10}, {"us", 3}}},
                               {"carts", {{"any", 4}}},
                               {"orders", Json::object()}}));
  http_.SetJson("http://eu-west.region/v1/admin/residency", 200,
                Residency("eu-west", "eu", Json{{"users", {{"any", 10}, {"eu", 5}}}}));
  http_.SetJson("http://ap-south.region/v1/admin/residency", 200,
                Residency("ap-south", "ap", Json{{"users", {{"any", 10}}}}));
  CtlResult r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("us-east (jurisdiction us): carts {any=4} orders {} users {any=10 us=3}; "
                       "violations listed: 0"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("PASS: no pinned record sits outside its allowed regions (3 regions, 42 "
                       "records counted)"),
            std::string::npos)
      << r.out;
  r = Run(true, [](Ctl& c) { return c.ResidencyAudit(); });
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["result"], "pass");
  EXPECT_EQ(j["regions"][1]["tables"]["users"]["eu"], 5);
}

TEST_F(CtlTest, ResidencyAuditFails) {
  // us-east lists an EU user it holds; eu-west's counts show a US cart (even with no listing);
  // ap-south does not answer.
  http_.SetJson(
      "http://us-east.region/v1/admin/residency", 200,
      Residency(
          "us-east", "us", Json{{"users", {{"any", 1}, {"eu", 1}}}},
          Json::array({Json{
              {"table", "users"}, {"key", "u-1"}, {"residency", "eu"}, {"database", "shard0"}}})));
  http_.SetJson("http://eu-west.region/v1/admin/residency", 200,
                Residency("eu-west", "eu", Json{{"carts", {{"us", 2}}}}));
  CtlResult r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("VIOLATION us-east: users u-1 has residency eu but sits in us-east (us, "
                       "database shard0)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("VIOLATION eu-west: carts: 2 record(s) with residency 'us' in a eu region"),
            std::string::npos);
  EXPECT_NE(r.out.find("VIOLATION ap-south: unreachable or malformed answer (connection refused)"),
            std::string::npos);
  EXPECT_NE(r.out.find("FAIL: 3 of 3 regions"), std::string::npos);
  r = Run(true, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(Json::parse(r.out)["result"], "fail");
  EXPECT_EQ(r.exit_code, 1);
}

// A record tagged "any" where its owner has no profile is checked against the profiles the
// other regions hold: a cart copied to ap-south under a wrong "any" tag, whose owner is pinned to
// eu at eu-west (or to ap, ap-south's own jurisdiction), is a violation; one whose owner's
// profile is "any" passes; one whose owner no region holds, or whose owner id is not a user id,
// or while a region did not answer, cannot be proven.
TEST_F(CtlTest, ResidencyAuditChecksUnverifiedRecordsAgainstTheOtherRegionsProfiles) {
  auto id = [](char c) { return "u" + std::string(24, c); };
  const std::string open = id('a'), eu = id('b'), ap = id('c'), gone = id('d');
  auto with_unverified = [](const std::string& region, const std::string& jur, Json unverified,
                            int64_t count) {
    Json j = Json::parse(Residency(region, jur, Json{{"carts", {{"any", count}}}}));
    j["unverified"] = unverified;
    j["unverified_count"] = count;
    return j.dump();
  };
  auto cart = [](const std::string& user) {
    return Json{{"table", "carts"}, {"key", user}, {"user_id", user}, {"database", "shard0"}};
  };
  auto profiles = [](Json p) { return Json{{"profiles", p}}.dump(); };
  http_.SetJson("http://us-east.region/v1/admin/residency", 200,
                Residency("us-east", "us", Json{{"users", {{"any", 1}}}}));
  http_.SetJson("http://eu-west.region/v1/admin/residency", 200,
                Residency("eu-west", "eu", Json{{"users", {{"eu", 1}}}}));
  http_.SetJson("http://ap-south.region/v1/admin/residency", 200,
                with_unverified("ap-south", "ap", Json::array({cart(open)}), 1));
  http_.SetJson("POST http://us-east.region/v1/admin/residency/profiles", 200,
                profiles(Json{{open, "any"}}));
  http_.SetJson("POST http://eu-west.region/v1/admin/residency/profiles", 200,
                profiles(Json::object()));
  http_.SetJson("POST http://ap-south.region/v1/admin/residency/profiles", 200,
                profiles(Json::object()));
  CtlResult r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 0) << r.out;
  auto asked = http_.Calls("POST", "http://eu-west.region/v1/admin/residency/profiles");
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(Json::parse(asked[0].body), (Json{{"user_ids", {open}}}));
  EXPECT_EQ(asked[0].bearer, "tok");

  // The pinned customers' carts at ap-south, an owner no region holds, an id that is not a
  // user id (not sent: a region refuses a request with one whole), and one more not listed.
  http_.ClearCalls();
  http_.SetJson(
      "http://ap-south.region/v1/admin/residency", 200,
      with_unverified("ap-south", "ap",
                      Json::array({cart(open), cart(eu), cart(ap), cart(gone), cart("u-bad")}), 6));
  http_.SetJson("POST http://eu-west.region/v1/admin/residency/profiles", 200,
                profiles(Json{{eu, "eu"}}));
  http_.SetJson("POST http://us-east.region/v1/admin/residency/profiles", 200,
                profiles(Json{{open, "any"}, {ap, "ap"}}));
  r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 1) << r.out;
  asked = http_.Calls("POST", "http://eu-west.region/v1/admin/residency/profiles");
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(Json::parse(asked[0].body), (Json{{"user_ids", {open, eu, ap, gone}}}));
  for (const std::string& line :
       {"VIOLATION ap-south: carts " + eu +
            " is tagged 'any' in ap-south (ap), but its owner is pinned to eu (profile at "
            "eu-west)",
        "VIOLATION ap-south: carts " + ap +
            " is tagged 'any' in ap-south (ap), but its owner is pinned to ap (profile at "
            "us-east)",
        "VIOLATION ap-south: carts " + gone +
            " is tagged 'any' in ap-south, and no region holds its owner's profile",
        std::string("VIOLATION ap-south: carts u-bad is tagged 'any' in ap-south, and its owner "
                    "id 'u-bad' is not a user id"),
        std::string("VIOLATION ap-south: 1 more record(s) tagged 'any'")}) {
    EXPECT_NE(r.out.find(line), std::string::npos) << line << "\n" << r.out;
  }
  EXPECT_EQ(r.out.find(open + " is tagged"), std::string::npos) << r.out;
  r = Run(true, [](Ctl& c) { return c.ResidencyAudit(); });
  Json j = Json::parse(r.out);
  EXPECT_EQ(j["result"], "fail");
  std::vector<std::string> results;
  for (const auto& u : j["regions"][2]["unverified"]) results.push_back(u["result"]);
  EXPECT_EQ(results,
            (std::vector<std::string>{"ok", "violation", "violation", "unproven", "unproven"}));

  // A region that does not answer the profiles question may hold the pin: nothing is proven.
  http_.SetJson("http://ap-south.region/v1/admin/residency", 200,
                with_unverified("ap-south", "ap", Json::array({cart(open)}), 1));
  http_.Set("POST http://eu-west.region/v1/admin/residency/profiles",
            HttpResult{0, "", "connection refused"});
  r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("carts " + open +
                       " is tagged 'any' in ap-south, and eu-west did not answer for its owner's "
                       "profile: its residency cannot be proven"),
            std::string::npos)
      << r.out;

  // A region without the unverified check passes nothing unchecked.
  Json old = Json::parse(Residency("ap-south", "ap", Json{{"carts", {{"any", 1}}}}));
  old.erase("unverified");
  old.erase("unverified_count");
  http_.SetJson("http://ap-south.region/v1/admin/residency", 200, old.dump());
  r = Run(false, [](Ctl& c) { return c.ResidencyAudit(); });
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("VIOLATION ap-south: no unverified_count in the answer"), std::string::npos)
      << r.out;
}

TEST_F(CtlTest, Handback) {
  EuLost();
  // Back, but us-east still holds the group.
  http_.SetJson("http://eu-west.repl/v1/status", 200,
                Status("eu-west", {{"us-east", true}, {"ap-south", true}}, {}));
  http_.SetJson("POST http://us-east.repl/v1/leases/eu-west/handback", 200,
                R"({"group_region":"eu-west","released":true})");
  CtlResult r = Run(false, [](Ctl& c) { return c.Handback("eu-west", "", 0); });
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("us-east released eu-west's lease group (was epoch 2)"), std::string::npos);
  auto calls = http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].bearer, "tok");
  // Already home.
  Healthy();
  r = Run(true, [](Ctl& c) { return c.Handback("eu-west", "", 0); });
  EXPECT_EQ(Json::parse(r.out)["result"], "already_home");
  // Nobody holds it.
  http_.SetJson("http://eu-west.repl/v1/status", 200,
                Status("eu-west", {{"us-east", true}, {"ap-south", true}}, {}));
  r = Run(false, [](Ctl& c) { return c.Handback("eu-west", "", 0); });
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no replicator holds eu-west's lease group"), std::string::npos);
  EXPECT_EQ(Run(false, [](Ctl& c) { return c.Handback("mars", "", 0); }).exit_code, 2);
  // --from the region itself is a usage error, not "already home" said without looking (us-east
  // holds eu-west's group here).
  EuLost();
  r = Run(false, [](Ctl& c) { return c.Handback("eu-west", "eu-west", 0); });
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("--from eu-west: the region that holds eu-west's lease now"),
            std::string::npos)
      << r.err;
}

TEST_F(CtlTest, DeclareLost) {
  const std::string audit = ::testing::TempDir() + "/ctl-audit.log";
  std::remove(audit.c_str());
  auto run = [&](const std::string& region, bool yes, bool force, const std::string& into = "") {
    ClusterEndpoints c = Cluster();
    c.audit_file = audit;
    Ctl ctl(c, &http_, false);
    return ctl.DeclareLost(region, into, yes, force);
  };
  Healthy();
  CtlResult r = run("eu-west", false, false);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("Re-run with --yes"), std::string::npos);
  r = run("eu-west", true, false);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no failover controller considers eu-west lost (up at "), std::string::npos)
      << r.err;
  EXPECT_TRUE(http_.Calls("POST", "http://").empty()) << "nothing was asked of any replicator";
  // Lost: the holder of its group (us-east) reclaims. A replicator without the route: 404.
  EuLost();
  http_.SetJson("POST http://us-east.repl/v1/regions/eu-west/declare-lost", 404,
                R"({"title":"Not Found","status":404})");
  // An --into that cannot take the rights is named as such (it used to say "use --into REGION").
  r = run("eu-west", true, false, "eu-west");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--into eu-west: the region declared lost cannot take its own rights"),
            std::string::npos)
      << r.err;
  r = run("eu-west", true, false, "nowhere");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--into nowhere: not a region of this cluster"), std::string::npos) << r.err;
  r = run("eu-west", true, false);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("does not offer POST /v1/regions/{region}/declare-lost (HTTP 404)"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("event=operator_decision decision=declare_lost region=eu-west into=us-east"),
            std::string::npos);
  const std::string answer =
      R"({"region":"eu-west","declaration_id":"dl9","declared_by":"us-east","reclaimed":[]})";
  http_.SetJson("POST http://us-east.repl/v1/regions/eu-west/declare-lost", 200, answer);
  http_.SetJson("POST http://us-east.ctl/v1/regions/eu-west/declared-lost", 200, "{}");
  http_.SetJson("POST http://ap-south.ctl/v1/regions/eu-west/declared-lost", 200, "{}");
  r = run("eu-west", true, false);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // Every controller is told (eu-west's is down: a warning, not a failure).
  for (const char* c : {"us-east", "ap-south", "eu-west"}) {
    auto told =
        http_.Calls("POST", absl::StrCat("http://", c, ".ctl/v1/regions/eu-west/declared-lost"));
    ASSERT_EQ(told.size(), 1u) << c;
    EXPECT_EQ(told[0].body, answer);
    EXPECT_EQ(told[0].bearer, "tok");
  }
  EXPECT_NE(r.out.find("(recorded by 2 controllers)"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("warning: controller eu-west did not record it"), std::string::npos);
  EXPECT_NE(r.out.find("eu-west declared lost; its inventory rights were reclaimed into us-east"),
            std::string::npos);
  // Recorded, but no peer recorded the declaration in time: nothing restocked, said, a failure.
  http_.SetJson("POST http://us-east.repl/v1/regions/eu-west/declare-lost", 503,
                R"({"region":"eu-west","declaration_id":"dl10","declared_by":"us-east",)"
                R"("reclaimed":[],"reclaimed_units":0,"pending_units":3,"recorded_by":[],)"
                R"("recorded_by_majority":false,"status":503})");
  r = run("eu-west", true, false);
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find("only us-east recorded the declaration, not a majority of regions: 3 "
                       "units stay pending and none of them was restocked"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(http_.Calls("POST", "http://us-east.ctl/v1/regions/eu-west/declared-lost").size(), 1u)
      << "the controllers are told only of a declaration that restocked";
  std::ifstream in(audit);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("decision=declare_lost region=eu-west into=us-east"), std::string::npos);
  EXPECT_NE(text.find("result=error status=404"), std::string::npos);
  EXPECT_NE(text.find("result=ok status=200"), std::string::npos);
  EXPECT_NE(text.find("result=error status=503"), std::string::npos);
  EXPECT_NE(text.find("controllers_lost=us-east,ap-south"), std::string::npos) << text;
  // 409: the region still holds its own lease.
  http_.SetJson("POST http://us-east.repl/v1/regions/eu-west/declare-lost", 409,
                R"({"title":"Conflict","detail":"eu-west still holds its lease"})");
  r = run("eu-west", true, false);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("us-east refused"), std::string::npos);
  std::remove(audit.c_str());
}

// declare-lost without --force needs a majority of the controllers to say "lost": "recovering"
// (healthy again at a quorum), an empty state or a missing entry do not count, and neither does a
// single controller alone. It says how many agree. Before, any state but "up" counted, so a
// region back and recovering could have its rights reclaimed without --force (review of the
// failover controller, finding 6).
TEST_F(CtlTest, DeclareLostCountsOnlyControllersThatSayLost) {
  auto run = [&](bool force) {
    Ctl ctl(Cluster(), &http_, false);
    return ctl.DeclareLost("eu-west", "", true, force);
  };
  auto states = [&](const std::string& us, const std::string& ap) {
    for (const auto& [ctl, st] : {std::pair{"us-east", us}, std::pair{"ap-south", ap}}) {
      std::map<std::string, std::string> m{{"us-east", "up"}, {"ap-south", "up"}};
      if (st != "-") m["eu-west"] = st;  // "-": no entry for eu-west at all
      http_.SetJson(absl::StrCat("http://", ctl, ".ctl/v1/regions"), 200, ControllerRegions(m));
    }
  };
  EuLost();
  http_.SetJson("POST http://us-east.repl/v1/regions/eu-west/declare-lost", 200,
                R"({"region":"eu-west","declaration_id":"dl1","declared_by":"us-east",)"
                R"("reclaimed":[]})");
  states("recovering", "recovering");
  CtlResult r = run(false);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no failover controller considers eu-west lost (recovering at "
                       "us-east,ap-south; no answer from eu-west); 2 of 3 must"),
            std::string::npos)
      << r.err;
  states("lost", "");
  r = run(false);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("only 1 of 3 failover controllers consider eu-west lost (us-east) (no "
                       "state at ap-south; no answer from eu-west); 2 of 3 must"),
            std::string::npos)
      << r.err;
  states("lost", "-");
  EXPECT_EQ(run(false).exit_code, 1);
  EXPECT_TRUE(http_.Calls("POST", "http://").empty()) << "nothing was asked of any replicator";
  // --force overrides, and the audit line says so.
  r = run(true);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("1 of 3 failover controllers consider eu-west lost (us-east), fewer than 2 "
                       "(--force); no state at ap-south; no answer from eu-west"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("controllers_lost=us-east controllers_agree=1/3 forced=1"),
            std::string::npos)
      << r.err;
  // A majority: proceeds without --force, and says who agrees.
  http_.ClearCalls();
  states("lost", "lost");
  r = run(false);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("2 of 3 failover controllers consider eu-west lost (us-east,ap-south); no "
                       "answer from eu-west\n"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("controllers_agree=2/3 forced=0"), std::string::npos) << r.err;
  EXPECT_EQ(http_.Calls("POST", "http://us-east.repl/v1/regions/eu-west/declare-lost").size(), 1u);
}

// Right after a takeover the replicator answers 503 while the survivors' exchange about the lost
// region is not done (nothing declared): declare-lost asks again, saying so, until it is done or
// the retry window is over. A 503 of another kind (a majority not reached) is not asked again.
TEST_F(CtlTest, DeclareLostAsksAgainWhileTheSurvivorsExchangeIsNotDone) {
  const std::string url = "POST http://us-east.repl/v1/regions/eu-west/declare-lost";
  const std::string not_done =
      R"({"type":"about:blank","title":"Service Unavailable","status":503,)"
      R"("awaiting_exchange":["ap-south"],"detail":"the )"
      R"(survivors' exchange about eu-west with ap-south is not done: ... Nothing was )"
      R"(declared; run declare-lost again shortly"})";
  const std::string declared =
      R"({"region":"eu-west","declaration_id":"dl7","declared_by":"us-east","reclaimed":[]})";
  auto run = [&](std::chrono::milliseconds window) {
    Ctl ctl(Cluster(), &http_, false);
    ctl.SetDeclareLostRetry(window, std::chrono::milliseconds(10));
    return ctl.DeclareLost("eu-west", "", true, false);
  };
  EuLost();
  int asked = 0;
  http_.On(url, [&](const HttpCall&) {
    return ++asked <= 2 ? HttpResult{503, not_done, ""} : HttpResult{200, declared, ""};
  });
  CtlResult r = run(std::chrono::seconds(10));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(asked, 3);
  EXPECT_NE(r.err.find("us-east: the survivors' exchange about eu-west is not done yet (try 2; "
                       "nothing declared); asking again"),
            std::string::npos)
      << r.err;
  EXPECT_NE(r.out.find("eu-west declared lost"), std::string::npos) << r.out;

  // Never done within the window: the replicator's answer, exit 1.
  asked = 0;
  http_.On(url, [&](const HttpCall&) {
    ++asked;
    return HttpResult{503, not_done, ""};
  });
  r = run(std::chrono::milliseconds(50));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_GE(asked, 2);
  EXPECT_NE(r.err.find("is not done: ... Nothing was declared"), std::string::npos) << r.err;

  // Recorded but short of a majority: said once, not asked again.
  asked = 0;
  http_.On(url, [&](const HttpCall&) {
    ++asked;
    return HttpResult{503,
                      R"({"region":"eu-west","declaration_id":"dl8","pending_units":3,)"
                      R"("recorded_by":[],"detail":"not recorded by a majority"})",
                      ""};
  });
  r = run(std::chrono::seconds(10));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(asked, 1);
}

TEST(ClusterFromDataDirTest, ReadsDeployMeridiansLayout) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / "ctl-data-test";
  fs::remove_all(dir);
  fs::create_directories(dir / "geo");
  auto write = [](const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
  };
  EXPECT_TRUE(absl::IsNotFound(LoadClusterFromDataDir(dir.string()).status()));
  write(dir / "operator_token", "secret-token-0123456789\n");
  write(dir / "cluster.env", "CLUSTER_REGIONS=3\nLINKS_MODE=netns\nNETNS_SUBNET=10.77.0\n");
  for (int i = 0; i < 3; ++i) {
    const std::string r = kThree[i];
    write(dir / r / "url", absl::StrCat("http://10.77.0.", i + 1, ":4000\n"));
    write(dir / r / "ports.env",
          absl::StrCat("# ports\nHTTP_PORT=4000\nMETRICS_PORT=410", i, "\nADMIN_PORT=420", i,
                       "\nFAILOVER_PORT=430", i, "\n"));
  }
  write(dir / "geo" / "ports.env", "GEO_PORT=5100\nDNS_PORT=5300\n");
  auto c = LoadClusterFromDataDir(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->token, "secret-token-0123456789");
  ASSERT_EQ(c->regions.size(), 3u);
  EXPECT_EQ(c->regions[1].name, "eu-west");
  EXPECT_EQ(c->regions[1].url, "http://10.77.0.2:4000");
  EXPECT_EQ(c->regions[1].replicator, "http://10.77.0.2:4201");
  EXPECT_EQ(c->regions[1].metrics, "http://10.77.0.2:4101/metrics");
  EXPECT_EQ(c->regions[1].controller, "http://127.0.0.1:4301");
  EXPECT_EQ(c->geo, (std::vector<std::string>{"http://127.0.0.1:5100"}));
  EXPECT_EQ(c->dns, "127.0.0.1:5300");
  EXPECT_EQ(c->audit_file, (dir / "operator-audit.log").string());
  write(dir / "cluster.env", "CLUSTER_REGIONS=7\n");
  EXPECT_NE(LoadClusterFromDataDir(dir.string()).status().message().find("CLUSTER_REGIONS"),
            std::string::npos);
  // A damaged file is an error, not a one-region folder (its url "cannot read" before).
  write(dir / "cluster.env", std::string("\x7f\x45\x4c\x46\x02\x01\n", 7));
  const absl::Status damaged = LoadClusterFromDataDir(dir.string()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(damaged)) << damaged;
  EXPECT_NE(damaged.message().find("cluster.env:1: not KEY=VALUE"), std::string::npos) << damaged;
  write(dir / "cluster.env", "CLUSTER_REGIONS=1\n");
  write(dir / "url", "http://127.0.0.1:4000\n");
  c = LoadClusterFromDataDir(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->regions.size(), 1u);
  EXPECT_EQ(c->regions[0].name, "local");
  EXPECT_EQ(c->regions[0].replicator, "");
  auto env = ReadEnvFile((dir / "geo" / "ports.env").string());
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->size(), 2u);
  // A damaged url or port is named with its file, not met later as an unreachable region.
  write(dir / "cluster.env", "CLUSTER_REGIONS=3\n");
  write(dir / "eu-west" / "url", "garbage\n");
  absl::Status st = LoadClusterFromDataDir(dir.string()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(st)) << st;
  EXPECT_NE(st.message().find("eu-west/url: 'garbage' is not an http://HOST:PORT URL"),
            std::string::npos)
      << st;
  write(dir / "eu-west" / "url", "http://10.77.0.2:4000\n");
  for (const char* bad : {"abc", "0", "65536", "080", "-1", "123456"}) {
    write(dir / "eu-west" / "ports.env", absl::StrCat("ADMIN_PORT=", bad, "\n"));
    st = LoadClusterFromDataDir(dir.string()).status();
    EXPECT_NE(st.message().find(
                  absl::StrCat("eu-west/ports.env: ADMIN_PORT='", bad, "' is not a port 1..65535")),
              std::string::npos)
        << bad << ": " << st;
  }
  write(dir / "eu-west" / "ports.env", "ADMIN_PORT=65535\n");
  write(dir / "geo" / "ports.env", "GEO_PORT=x\n");
  st = LoadClusterFromDataDir(dir.string()).status();
  EXPECT_NE(st.message().find("geo/ports.env: GEO_PORT='x'"), std::string::npos) << st;
  write(dir / "geo" / "ports.env", "GEO_PORT=5100\n");
  EXPECT_TRUE(LoadClusterFromDataDir(dir.string()).ok());
  write(dir / "bad.env", "no equals sign\n");
  EXPECT_NE(ReadEnvFile((dir / "bad.env").string()).status().message().find("bad.env:1"),
            std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace meridian::failover
