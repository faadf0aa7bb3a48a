// The controller with a fake clock and scripted HTTP: a region goes down, a peer controller's
// observation completes the quorum, geo is told, the takeover is observed, rights reported
// frozen; the region returns, catches up, geo is restored and the lease is asked back. Also the
// HTTP API's validation and the audit trail.

#include "failover/controller.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "failover/decision.h"
#include "failover/fake_http_test_util.h"
#include "failover/wire.h"

namespace meridian::failover {
namespace {

using Json = nlohmann::json;
using region::http::HttpRequest;
using region::http::HttpResponse;

const std::vector<std::string> kThree = {"us-east", "eu-west", "ap-south"};
const char* kToken = "operator-token-for-tests";
// Each controller's own token (controller_token); the others hold only its digest.
std::string ControllerToken(const std::string& region) { return "controller-token-of-" + region; }
std::string AsController(const std::string& region) { return "Bearer " + ControllerToken(region); }

class FakeClock final : public Clock {
 public:
  int64_t NowMs() const override { return now_.load(); }
  void Advance(int64_t ms) { now_ += ms; }

 private:
  std::atomic<int64_t> now_{1000000};
};

std::string StatusJson(const std::string& region, const std::map<std::string, bool>& alive,
                       const std::vector<std::pair<std::string, uint64_t>>& held) {
  Json peers = Json::array();
  for (const auto& [p, a] : alive) peers.push_back(Json{{"name", p}, {"alive", a}});
  Json leases = Json::array();
  for (const auto& g : kThree) {
    Json l{{"group_region", g},  {"epoch", 1},      {"owner", g},
           {"held_here", false}, {"usable", false}, {"syncing", false}};
    for (const auto& [hg, epoch] : held) {
      if (hg == g) {
        l["epoch"] = epoch;
        l["owner"] = region;
        l["held_here"] = true;
        l["usable"] = true;
      }
    }
    leases.push_back(l);
  }
  return Json{{"region", region}, {"peers", peers}, {"leases", leases}}.dump();
}

std::string MetricsText(const std::string& region) {
  std::string out;
  for (const auto& p : kThree) {
    if (p == region) continue;
    absl::StrAppend(&out, "meridian_replication_lag_ms{peer=\"", p, "\",quantile=\"0.99\"} 5\n",
                    "meridian_replication_queue_lag_ms_sum{peer=\"", p, "\"} 100\n",
                    "meridian_replication_queue_lag_ms_count{peer=\"", p, "\"} 10\n",
                    "meridian_replication_lag_seq{peer=\"", p, "\"} 0\n",
                    "meridian_replication_connected{peer=\"", p, "\"} 1\n");
  }
  return out;
}

class ControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/failover-controller-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    http_.SetJson("POST http://geo/v1/regions/eu-west/health", 200, R"({"name":"eu-west"})");
    for (const auto& r : kThree) {
      SetRegion(r, true);
      http_.SetJson("http://" + r + ".repl/metrics", 200, MetricsText(r));
    }
    SetHeld("us-east", {{"us-east", 1}});
    SetHeld("eu-west", {{"eu-west", 1}});
    SetHeld("ap-south", {{"ap-south", 1}});
    ASSERT_NO_FATAL_FAILURE(MakeController());
    ap_ = PeerDecider("ap-south", 99);
  }
  // Another region's controller's decider, as the tests' controllers are configured.
  static std::unique_ptr<Decider> PeerDecider(const std::string& self, uint64_t incarnation) {
    DeciderConfig peer;
    peer.regions = kThree;
    peer.self = self;
    peer.recover_after_checks = 3;
    auto d = std::make_unique<Decider>(peer);
    d->set_incarnation(incarnation);
    return d;
  }
  // (Re)makes the controller under test: `geo` its geo list, `extra` more config lines, on the
  // fake clock unless `steady_clock`.
  void MakeController(const std::string& geo = "[http://geo]", const std::string& extra = "",
                      bool steady_clock = false) {
    c_.reset();
    std::string yaml = absl::StrCat(
        "region: us-east\nlisten: 127.0.0.1:0\noperator_token: ", kToken,
        "\ncontroller_token: ", ControllerToken("us-east"), "\ngeo: ", geo, "\naudit_file: ", dir_,
        "/audit.log\nrecover_after_checks: 3\n", extra, "regions:\n");
    for (const auto& r : kThree) {
      absl::StrAppend(&yaml, "  - {name: ", r, ", url: http://", r, ".region, replicator: http://",
                      r, ".repl, metrics: http://", r, ".repl/metrics, controller: http://", r,
                      ".ctl, controller_token_sha256: ", TokenSha256Hex(ControllerToken(r)), "}\n");
    }
    auto config = ParseConfig(yaml, "test.yaml", "");
    ASSERT_TRUE(config.ok()) << config.status();
    auto c =
        Controller::Create(*std::move(config), {steady_clock ? nullptr : &clock_, &http_, 0x1234});
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = *std::move(c);
  }

  void TearDown() override {
    c_.reset();
    std::remove((dir_ + "/audit.log").c_str());
    std::remove(dir_.c_str());
  }

  // Whether a region answers its probes; its peers see it alive or not accordingly.
  void SetRegion(const std::string& r, bool up) {
    up_[r] = up;
    if (up) {
      http_.SetJson("http://" + r + ".region/readyz", 200, R"({"ready":true})");
      http_.SetJson("http://" + r + ".repl/metrics", 200, MetricsText(r));
    } else {
      http_.Refuse("http://" + r + ".region/readyz");
      http_.Refuse("http://" + r + ".repl/v1/status");
      http_.Refuse("http://" + r + ".repl/metrics");
    }
    for (const auto& [name, h] : held_) SetHeld(name, h);
  }
  void SetHeld(const std::string& r, std::vector<std::pair<std::string, uint64_t>> held) {
    held_[r] = held;
    if (!up_[r]) return;
    std::map<std::string, bool> alive;
    for (const auto& p : kThree)
      if (p != r) alive[p] = up_[p];
    http_.SetJson("http://" + r + ".repl/v1/status", 200, StatusJson(r, alive, held));
  }

  HttpResponse Call(const std::string& method, const std::string& path,
                    const std::string& body = "",
                    const std::string& auth = std::string("Bearer ") + kToken) {
    HttpRequest req;
    req.method = method;
    req.target = path;
    req.path = path;
    req.body = body;
    if (!auth.empty()) req.headers.push_back({"authorization", auth});
    return c_->Handle(req);
  }

  // ap-south's controller checks once (with `down` unhealthy) and sends its observation.
  HttpResponse PeerRound(const std::string& down = "", bool caught_up = true) {
    std::map<std::string, RegionReport> checks;
    for (const auto& r : kThree) {
      checks[r] = r == down ? RegionReport{false, false, 0, 0, "readyz: connection refused"}
                            : RegionReport{true, caught_up, 0, 0, ""};
    }
    ap_->RecordOwnChecks(clock_.NowMs(), checks);
    return Call("POST", "/v1/observations", ObservationToJson(ap_->own()),
                AsController("ap-south"));
  }

  // Both other controllers (deploy/meridian's layout: controllers outside the regions, so
  // eu-west's runs while its region is down) check once, with the regions in `down` unhealthy,
  // and send their observations.
  void PeersRound(const std::set<std::string>& down) {
    if (!eu_) eu_ = PeerDecider("eu-west", 77);
    std::map<std::string, RegionReport> checks;
    for (const auto& r : kThree) {
      checks[r] = down.contains(r) ? RegionReport{false, false, 0, 0, "readyz: connection refused"}
                                   : RegionReport{true, true, 0, 0, ""};
    }
    for (auto* peer : {ap_.get(), eu_.get()}) {
      peer->RecordOwnChecks(clock_.NowMs(), checks);
      ASSERT_EQ(Call("POST", "/v1/observations", ObservationToJson(peer->own()),
                     AsController(peer->own().from))
                    .status,
                200);
    }
  }

  void Round() {
    clock_.Advance(500);
    c_->RunRound();
    c_->RunPendingActions();
  }

  // geo holds a "down" override of eu-west that a controller left behind, and takes posts.
  void StaleDownOverrideOfOurs() {
    http_.SetJson("http://geo/v1/regions/eu-west", 200,
                  R"j({"name":"eu-west","effective":"down","override":{"state":"down",
                     "reason":"meridian-failover us-east: region lost (2/3 controllers)"}})j");
    http_.SetJson("POST http://geo/v1/regions/eu-west/health", 200, "{}");
  }
  // Three rounds of ours and ap-south's with every region healthy and caught up, and after 5 s
  // one more of each: a quorum of RECOVERED votes.
  void RecoveredStreak() {
    for (int i = 0; i < 3; ++i) {
      Round();
      ASSERT_EQ(PeerRound().status, 200);
    }
    clock_.Advance(5000);
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }

  // eu-west goes down; three rounds of ours and ap-south's declare it lost (actions run).
  void EuWestLost() {
    SetRegion("eu-west", false);
    for (int i = 0; i < 3; ++i) {
      Round();
      ASSERT_EQ(PeerRound("eu-west").status, 200);
    }
    ASSERT_EQ(Region("eu-west")["state"], "lost");
    c_->RunPendingActions();
  }

  std::string Audit() {
    std::ifstream in(dir_ + "/audit.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  Json Region(const std::string& name) {
    HttpResponse r = Call("GET", "/v1/regions");
    EXPECT_EQ(r.status, 200);
    const Json all = Json::parse(r.body);
    for (const Json& e : all["regions"])
      if (e["name"] == name) return e;
    ADD_FAILURE() << "no region " << name << " in " << r.body;
    return Json();
  }

  FakeClock clock_;
  FakeHttp http_;
  std::string dir_;
  std::unique_ptr<Controller> c_;
  std::unique_ptr<Decider> ap_;
  std::unique_ptr<Decider> eu_;  // eu-west's controller, made by PeersRound
  std::map<std::string, bool> up_;
  std::map<std::string, std::vector<std::pair<std::string, uint64_t>>> held_;
};

TEST_F(ControllerTest, LossAndRecoveryEndToEnd) {
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_EQ(Region("eu-west")["check"]["healthy"], true);

  // eu-west dies. Our own three bad checks are not enough.
  SetRegion("eu-west", false);
  for (int i = 0; i < 3; ++i) Round();
  EXPECT_EQ(Region("eu-west")["check"]["fail_streak"], 3);
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_TRUE(http_.Calls("POST", "http://geo").empty());
  // ap-south's second bad check: still not; its third completes the quorum at once.
  ASSERT_EQ(PeerRound("eu-west").status, 200);
  ASSERT_EQ(PeerRound("eu-west").status, 200);
  EXPECT_EQ(Region("eu-west")["state"], "up");
  ASSERT_EQ(PeerRound("eu-west").status, 200);
  Json eu = Region("eu-west");
  EXPECT_EQ(eu["state"], "lost");
  EXPECT_EQ(eu["rights"], "frozen");
  EXPECT_EQ(eu["votes"]["lost"], Json::array({"us-east", "ap-south"}));
  EXPECT_EQ(eu["detected_after_ms"], 1000);  // our first failed check was 1000 ms before
  c_->RunPendingActions();
  std::vector<HttpCall> geo = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(geo.size(), 1u);
  EXPECT_EQ(geo[0].bearer, kToken);
  EXPECT_EQ(Json::parse(geo[0].body)["state"], "down");
  std::string audit = Audit();
  EXPECT_NE(audit.find("event=failover_decision controller=us-east region=eu-west decision=lost "
                       "from=up to=lost votes=2 needed=2 of=3 voters=us-east,ap-south "
                       "first_failed_check_ms_ago=1000 reason=\"unhealthy for >= 3 checks"),
            std::string::npos)
      << audit;
  EXPECT_NE(audit.find("decision=rights_frozen"), std::string::npos);
  EXPECT_NE(audit.find("event=failover_action controller=us-east region=eu-west "
                       "action=geo_health result=ok state=down geo=http://geo status=200"),
            std::string::npos)
      << audit;

  // Takeover runs in the replicators by itself: us-east now holds eu-west's group.
  SetHeld("us-east", {{"us-east", 1}, {"eu-west", 2}});
  Round();
  eu = Region("eu-west");
  EXPECT_EQ(eu["takeover"]["owner"], "us-east");
  EXPECT_EQ(eu["takeover"]["epoch"], 2);
  EXPECT_EQ(eu["lease"]["holder"], "us-east");
  EXPECT_NE(Audit().find("decision=lease_taken_over owner=us-east epoch=2"), std::string::npos);

  // Frozen rights as a live region sees them.
  http_.SetJson("http://us-east.region/v1/admin/rights/sku-1", 200,
                R"({"sku":"sku-1","as_seen_by":"us-east","available":230,"regions":[
                   {"replica_id":1,"region":"us-east","rights":100},
                   {"replica_id":2,"region":"eu-west","rights":70},
                   {"replica_id":3,"region":"ap-south","rights":60}],"waiting_here":0})");
  HttpResponse rights = Call("GET", "/v1/admin/rights/sku-1");
  // The router fills params only through Handle's routing: the route has {sku}.
  ASSERT_EQ(rights.status, 200) << rights.body;
  Json rj = Json::parse(rights.body);
  EXPECT_EQ(rj["frozen_units"], 70);
  EXPECT_EQ(rj["frozen_regions"], Json::array({"eu-west"}));
  EXPECT_EQ(Call("GET", "/v1/admin/rights/sku-1", "", "").status, 401);
  EXPECT_EQ(Call("GET", "/v1/admin/rights/bad%20sku").status, 400);
  // A region whose answer has a field of the wrong type is passed over for the next one (it
  // answered 500 before: nlohmann's value() threw); with none left, 503.
  for (const char* bad :
       {R"({"regions":[{"region":5,"rights":1}]})", R"({"as_seen_by":7,"regions":[]})",
        R"({"regions":[{"region":"us-east","rights":1e300}]})",
        R"({"regions":[{"region":"us-east","rights":18446744073709551615}]})"}) {
    http_.SetJson("http://us-east.region/v1/admin/rights/sku-1", 200, bad);
    http_.SetJson("http://ap-south.region/v1/admin/rights/sku-1", 200, bad);
    HttpResponse r = Call("GET", "/v1/admin/rights/sku-1");
    EXPECT_EQ(r.status, 503) << bad << " " << r.body;
  }
  http_.SetJson("http://us-east.region/v1/admin/rights/sku-1", 200,
                R"({"sku":"sku-1","as_seen_by":"us-east","available":230,"regions":[
                   {"replica_id":1,"region":"us-east","rights":100},
                   {"replica_id":2,"region":"eu-west","rights":70},
                   {"replica_id":3,"region":"ap-south","rights":60}],"waiting_here":0})");

  // An operator declares it lost (meridianctl forwards the replicator's answer): the reclaimed
  // units stop counting as frozen.
  const std::string declared =
      R"({"region":"eu-west","declaration_id":"dl1","declared_by":"us-east",
          "reclaimed":[{"sku":"sku-1","units":50},{"sku":"sku-2","units":9}],"reclaimed_units":59})";
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost", declared, "").status, 401);
  EXPECT_EQ(Call("POST", "/v1/regions/mars/declared-lost", declared).status, 404);
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost", "[]").status, 400);
  EXPECT_EQ(Call("POST", "/v1/regions/us-east/declared-lost", declared).status, 400)
      << "the body names another region";
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost",
                 R"({"region":5,"declaration_id":"d","reclaimed":[]})")
                .status,
            400)
      << "a region that is not a string";
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost",
                 R"({"region":"eu-west","declaration_id":"d","reclaimed":[)"
                 R"({"sku":"a","units":1099511627776},{"sku":"a","units":1}]})")
                .status,
            400)
      << "more than 2^40 units of one SKU";
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost",
                 R"({"region":"eu-west","declaration_id":"x y","reclaimed":[]})")
                .status,
            400);
  EXPECT_EQ(Call("POST", "/v1/regions/eu-west/declared-lost",
                 R"({"region":"eu-west","declaration_id":"d","declared_by":")" +
                     std::string(65, 'x') + R"(","reclaimed":[]})")
                .status,
            400)
      << "a declared_by longer than a name";
  EXPECT_EQ(
      Call("POST", "/v1/regions/eu-west/declared-lost",
           R"({"region":"eu-west","declaration_id":"d","reclaimed":[{"sku":"a","units":-1}]})")
          .status,
      400);
  HttpResponse rec = Call("POST", "/v1/regions/eu-west/declared-lost", declared);
  ASSERT_EQ(rec.status, 200) << rec.body;
  EXPECT_EQ(Json::parse(rec.body)["recorded"], true);
  EXPECT_EQ(
      Json::parse(Call("POST", "/v1/regions/eu-west/declared-lost", declared).body)["already"],
      true);
  rj = Json::parse(Call("GET", "/v1/admin/rights/sku-1").body);
  EXPECT_EQ(rj["frozen_units"], 20);  // 70 - 50 reclaimed
  EXPECT_EQ(rj["regions"][1]["reclaimed_units"], 50);
  EXPECT_EQ(Region("eu-west")["rights"], "reclaimed");
  EXPECT_EQ(Region("eu-west")["declarations"][0]["reclaimed_units"], 59);
  EXPECT_NE(Audit().find("decision=rights_reclaimed declaration=dl1 declared_by=us-east units=59 "
                         "skus=2"),
            std::string::npos);
  // A live region cannot be "declared lost" here.
  EXPECT_EQ(Call("POST", "/v1/regions/ap-south/declared-lost",
                 R"({"region":"ap-south","declaration_id":"dl2","reclaimed":[]})")
                .status,
            409);

  // Geo lost the override (restarted): reconciled within geo_reconcile_interval_ms.
  http_.SetJson("http://geo/v1/regions/eu-west", 200,
                R"({"name":"eu-west","override":{"state":"auto"},"effective":"down"})");
  http_.ClearCalls();
  clock_.Advance(5000);
  ASSERT_EQ(PeerRound("eu-west").status, 200);  // the quorum still sees eu-west lost
  Round();
  geo = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(geo.size(), 1u);
  EXPECT_EQ(Json::parse(geo[0].body)["state"], "down");

  // eu-west returns. First healthy checks: recovering, but not caught up in the first round.
  SetRegion("eu-west", true);
  http_.ClearCalls();
  Round();
  ASSERT_EQ(PeerRound("", false).status, 200);
  EXPECT_EQ(Region("eu-west")["state"], "recovering");
  EXPECT_EQ(Region("eu-west")["rights"], "reclaimed") << "until it is up again";
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_EQ(Region("eu-west")["state"], "recovering") << "both ok streaks are 2 of 3";
  Round();
  ASSERT_EQ(PeerRound().status, 200);
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_EQ(Region("eu-west")["handback"], "pending");
  c_->RunPendingActions();
  geo = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(geo.size(), 1u);
  EXPECT_EQ(Json::parse(geo[0].body)["state"], "auto");
  // The next round asks the holder (us-east's replicator) to hand the lease back.
  http_.SetJson("POST http://us-east.repl/v1/leases/eu-west/handback", 200,
                R"({"group_region":"eu-west","released":true})");
  Round();
  std::vector<HttpCall> hb = http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback");
  ASSERT_EQ(hb.size(), 1u);
  EXPECT_EQ(hb[0].bearer, kToken);
  // Not retried within a second.
  clock_.Advance(-400);
  Round();
  EXPECT_EQ(http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback").size(), 1u);
  // eu-west holds it again.
  SetHeld("us-east", {{"us-east", 1}});
  SetHeld("eu-west", {{"eu-west", 3}});
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "done");
  audit = Audit();
  EXPECT_NE(audit.find("decision=recovering"), std::string::npos);
  EXPECT_NE(audit.find("decision=recovered"), std::string::npos);
  EXPECT_NE(audit.find("decision=rights_usable declarations=1"), std::string::npos);
  EXPECT_EQ(Region("eu-west")["rights"], "usable");
  EXPECT_EQ(Region("eu-west")["declarations"].size(), 0u);
  EXPECT_NE(audit.find("action=lease_handback result=ok holder=us-east status=200"),
            std::string::npos);
  EXPECT_NE(audit.find("decision=lease_home epoch=3"), std::string::npos);

  const std::string metrics = Call("GET", "/metrics").body;
  EXPECT_NE(
      metrics.find("meridian_failover_decisions_total{decision=\"lost\",region=\"eu-west\"} 1"),
      std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find(
                "meridian_failover_decisions_total{decision=\"recovered\",region=\"eu-west\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("meridian_failover_region_state{region=\"eu-west\"} 0"),
            std::string::npos);
  EXPECT_NE(metrics.find("meridian_failover_detection_ms{region=\"eu-west\"} 1000"),
            std::string::npos);
  EXPECT_NE(
      metrics.find("meridian_failover_actions_total{action=\"lease_handback\",result=\"ok\"} 1"),
      std::string::npos);

  Json decisions = Json::parse(Call("GET", "/v1/decisions").body);
  EXPECT_GE(decisions["entries"].size(), 8u);
}

// A controller that decided a region lost and then stops hearing its peers (say their pushes no
// longer reach it) stays "lost", but puts geo's "down" override back only while a quorum of fresh
// observations still backs it: the others may have recovered the region and lifted the override,
// and one cut-off controller must not flap it out of DNS against them.
TEST_F(ControllerTest, ACutOffControllerDoesNotPutBackADownOverride) {
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_NO_FATAL_FAILURE(EuWestLost());
  // The majority lifted the override (eu-west recovered there); ap-south's pushes stop reaching us.
  http_.SetJson("http://geo/v1/regions/eu-west", 200,
                R"({"name":"eu-west","override":{"state":"auto"},"effective":"up"})");
  http_.SetJson("POST http://geo/v1/regions/eu-west/health", 200, "{}");
  http_.ClearCalls();
  for (int i = 0; i < 30; ++i) Round();  // 15 s: three reconcile intervals
  EXPECT_EQ(Region("eu-west")["state"], "lost") << "it cannot recover alone either";
  EXPECT_TRUE(http_.Calls("POST", "http://geo/v1/regions/eu-west/health").empty());
  const std::string restored = "action=geo_health result=ok state=down geo=http://geo reconcile=1";
  EXPECT_EQ(Audit().find(restored), std::string::npos);
  // Heard again, and the quorum still sees eu-west down: the override is put back.
  ASSERT_EQ(PeerRound("eu-west").status, 200);
  Round();
  auto geo = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(geo.size(), 1u);
  EXPECT_EQ(Json::parse(geo[0].body)["state"], "down");
  EXPECT_NE(Audit().find(restored), std::string::npos);
  EXPECT_NE(geo[0].body.find("override restored"), std::string::npos) << geo[0].body;
}

// A controller still "recovering" (its own caught-up streak short of M) leaves alone the "auto" a
// peer set on its recovery after this controller's "lost": before, it put "down" back every
// reconcile interval, and the region left DNS again until its own streak reached M (review of the
// failover controller, finding 4). An "auto" from before its "lost", or of a restarted geo (no
// reason), still gets the "down" back.
TEST_F(ControllerTest, ARecoveringControllerLeavesAPeersRecoveryAlone) {
  struct Slot {  // geo's override of eu-west, as meridian-geo keeps it
    std::mutex mu;
    std::string state = "auto", reason;
    int64_t since_ms = 0;
  };
  auto slot = std::make_shared<Slot>();
  FakeClock* clock = &clock_;
  http_.On("GET http://geo/v1/regions/eu-west", [slot, clock](const HttpCall&) {
    std::lock_guard<std::mutex> l(slot->mu);
    Json o{{"state", slot->state}, {"since_ms_ago", clock->NowMs() - slot->since_ms}};
    o["reason"] = slot->reason.empty() ? Json() : Json(slot->reason);
    return HttpResult{200, Json{{"name", "eu-west"}, {"override", o}}.dump(), ""};
  });
  auto posts = std::make_shared<std::vector<std::string>>();
  http_.On("POST http://geo/v1/regions/eu-west/health", [slot, clock, posts](const HttpCall& c) {
    const Json b = Json::parse(c.body);
    std::lock_guard<std::mutex> l(slot->mu);
    if (slot->state != b["state"]) slot->since_ms = clock->NowMs();
    slot->state = b["state"];
    slot->reason = b["reason"];
    posts->push_back(slot->state);
    return HttpResult{200, "{}", ""};
  });
  auto set_override = [slot](const std::string& reason, int64_t since_ms) {
    std::lock_guard<std::mutex> l(slot->mu);
    slot->state = "auto";
    slot->reason = reason;
    slot->since_ms = since_ms;
  };
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_NO_FATAL_FAILURE(EuWestLost());
  const int64_t lost_at = clock_.NowMs();
  ASSERT_EQ(*posts, std::vector<std::string>{"down"});
  // eu-west is back; ap-south sees it caught up, we see our backlog to it (not caught up).
  SetRegion("eu-west", true);
  std::string behind = MetricsText("us-east");
  const std::string no_backlog = "meridian_replication_lag_seq{peer=\"eu-west\"} 0";
  behind.replace(behind.find(no_backlog), no_backlog.size(),
                 "meridian_replication_lag_seq{peer=\"eu-west\"} 100000");
  http_.SetJson("http://us-east.repl/metrics", 200, behind);
  for (int i = 0; i < 4; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_EQ(Region("eu-west")["state"], "recovering");
  // ap-south decided "recovered" (our streak counted in its quorum a moment ago) and sent "auto".
  set_override("meridian-failover ap-south: region recovered", clock_.NowMs());
  posts->clear();
  for (int i = 0; i < 24; ++i) {  // 12 s: two reconcile intervals
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_EQ(Region("eu-west")["state"], "recovering");
  EXPECT_TRUE(posts->empty()) << "put back: " << absl::StrJoin(*posts, ",");
  // The same "auto", but from before our "lost" (a peer's failback missed our loss): put back.
  set_override("meridian-failover ap-south: region recovered", lost_at - 1000);
  for (int i = 0; i < 12; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_EQ(*posts, std::vector<std::string>{"down"});
  // A restarted geo (auto since its start, no reason): put back.
  set_override("", clock_.NowMs());
  posts->clear();
  for (int i = 0; i < 12; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_EQ(*posts, std::vector<std::string>{"down"});
  EXPECT_NE(Audit().find("state=down geo=http://geo reconcile=1"), std::string::npos);
}

// A region that returns while another is still lost fails back: the lost one no longer holds its
// catch-up back ("every peer alive", and that peer's backlog, whose metrics cannot be read).
// Before, ap-south stayed "recovering" here ("catching up: peer eu-west not alive") until eu-west
// came back, and geo kept its "down" override (review of the failover controller, finding 2).
TEST_F(ControllerTest, ARegionFailsBackWhileAnotherStaysLost) {
  for (int i = 0; i < 2; ++i) {
    Round();
    PeersRound({});
  }
  SetRegion("eu-west", false);
  for (int i = 0; i < 3; ++i) {
    Round();
    PeersRound({"eu-west"});
  }
  ASSERT_EQ(Region("eu-west")["state"], "lost");
  // ap-south goes too; us-east's replicator is then cut off from a majority (unhealthy as well).
  SetRegion("ap-south", false);
  for (int i = 0; i < 3; ++i) {
    Round();
    PeersRound({"eu-west", "ap-south", "us-east"});
  }
  ASSERT_EQ(Region("ap-south")["state"], "lost");
  // ap-south returns; eu-west stays gone.
  SetRegion("ap-south", true);
  for (int i = 0; i < 6; ++i) {
    Round();
    PeersRound({"eu-west"});
  }
  const Json ap = Region("ap-south");
  EXPECT_EQ(ap["check"]["caught_up"], true) << ap.dump();
  EXPECT_EQ(ap["state"], "up") << ap.dump();
  EXPECT_EQ(Region("eu-west")["state"], "lost");
  EXPECT_EQ(Region("us-east")["check"]["caught_up"], true);
  EXPECT_NE(Audit().find("region=ap-south decision=recovered"), std::string::npos);
}

// Periodic work is queued at most once per region and kind: with a geo instance that hangs, each
// reconcile takes 2 s per region, so more were queued than run and the action queue grew without
// bound (review of the failover controller, finding 1). Here the actions do not run at all for
// ten reconcile intervals; then each region's reconcile runs once.
TEST_F(ControllerTest, AReconcileIsQueuedOncePerRegionWhileItWaits) {
  for (int i = 0; i < 4; ++i) {
    Round();
    PeersRound({});
  }
  ASSERT_EQ(Region("us-east")["votes"]["recovered"].size(), 2u);
  http_.ClearCalls();
  for (int i = 0; i < 10; ++i) {
    clock_.Advance(5000);
    PeersRound({});
    c_->RunRound();
  }
  c_->RunPendingActions();
  for (const auto& r : kThree)
    EXPECT_EQ(http_.Calls("GET", "http://geo/v1/regions/" + r).size(), 1u) << r;
  // The next one is due an interval after that one finished.
  http_.ClearCalls();
  clock_.Advance(4000);
  PeersRound({});
  Round();
  EXPECT_TRUE(http_.Calls("GET", "http://geo/v1/regions/").empty());
  clock_.Advance(1000);
  PeersRound({});
  Round();
  EXPECT_EQ(http_.Calls("GET", "http://geo/v1/regions/us-east").size(), 1u);
}

// A handback request is queued at most once per region, and checked again when it runs: one that
// was queued before the region was lost again does not take the lease from the survivor. Before,
// one was queued every second however many were waiting, and each ran whatever had happened
// since (review finding 1).
TEST_F(ControllerTest, AHandbackIsQueuedOnceAndCheckedAgainBeforeItRuns) {
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_NO_FATAL_FAILURE(EuWestLost());
  SetHeld("us-east", {{"us-east", 1}, {"eu-west", 2}});
  SetHeld("eu-west", {});
  SetRegion("eu-west", true);
  http_.SetJson("POST http://us-east.repl/v1/leases/eu-west/handback", 200, "{}");
  for (int i = 0; i < 5; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_EQ(Region("eu-west")["state"], "up");
  ASSERT_EQ(Region("eu-west")["handback"], "pending");
  // Ten seconds of rounds whose actions do not run (the action thread held up elsewhere).
  http_.ClearCalls();
  for (int i = 0; i < 20; ++i) {
    clock_.Advance(500);
    ASSERT_EQ(PeerRound().status, 200);
    c_->RunRound();
  }
  c_->RunPendingActions();
  EXPECT_EQ(http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback").size(), 1u);
  // One is queued; eu-west is lost again before it runs.
  http_.ClearCalls();
  clock_.Advance(1000);
  ASSERT_EQ(PeerRound().status, 200);
  c_->RunRound();
  SetRegion("eu-west", false);
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(500);
    c_->RunRound();
    ASSERT_EQ(PeerRound("eu-west").status, 200);
  }
  ASSERT_EQ(Region("eu-west")["state"], "lost");
  c_->RunPendingActions();
  EXPECT_TRUE(http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback").empty());
  EXPECT_NE(Audit().find("region=eu-west action=lease_handback result=skipped holder=us-east "
                         "reason=\"queued, and since then eu-west is lost\""),
            std::string::npos)
      << Audit();
}

// A decision's geo update does not wait behind queued reconciles (review finding 1): they run on
// a thread of their own; RunPendingActions, which stands in for both threads, runs them first.
TEST_F(ControllerTest, ADecisionsGeoUpdateGoesBeforeQueuedReconciles) {
  for (int i = 0; i < 4; ++i) {
    Round();
    PeersRound({});
  }
  http_.ClearCalls();
  clock_.Advance(5000);
  PeersRound({});
  c_->RunRound();  // a reconcile queued for every region
  SetRegion("eu-west", false);
  for (int i = 0; i < 3; ++i) {
    clock_.Advance(500);
    c_->RunRound();
    PeersRound({"eu-west"});
  }
  ASSERT_EQ(Region("eu-west")["state"], "lost");
  c_->RunPendingActions();
  const std::vector<HttpCall> calls = http_.AllCalls();
  size_t down = calls.size(), reconcile = calls.size();
  for (size_t i = 0; i < calls.size(); ++i) {
    if (calls[i].method == "POST" && calls[i].url == "http://geo/v1/regions/eu-west/health" &&
        Json::parse(calls[i].body)["state"] == "down")
      down = std::min(down, i);
    if (calls[i].method == "GET" && (calls[i].url == "http://geo/v1/regions/us-east" ||
                                     calls[i].url == "http://geo/v1/regions/ap-south"))
      reconcile = std::min(reconcile, i);
  }
  ASSERT_LT(down, calls.size()) << "no down posted";
  ASSERT_LT(reconcile, calls.size()) << "no reconcile ran";
  EXPECT_LT(down, reconcile);
}

// The threads themselves, with one of two geo instances hanging (every call waits until its
// timeout): the decision's "down" reaches the other instance at once, and Stop returns promptly.
// Before, each reconcile waited on the hung instance, the queue grew without bound, the "down"
// waited behind it, and Stop drained the whole queue first (review finding 1).
TEST_F(ControllerTest, AHungGeoInstanceDelaysNeitherALossNorStop) {
  using Steady = std::chrono::steady_clock;
  using std::chrono::milliseconds;
  for (const auto& r : kThree) {
    for (const std::string& key : {"GET http://hung-geo/v1/regions/" + r,
                                   "POST http://hung-geo/v1/regions/" + r + "/health"}) {
      http_.On(key, [](const HttpCall&) {
        std::this_thread::sleep_for(milliseconds(1500));
        return HttpResult{0, "", "timeout after 2000 ms"};
      });
    }
    http_.SetJson("http://geo/v1/regions/" + r, 200, R"({"override":{"state":"auto"}})");
    http_.SetJson("POST http://geo/v1/regions/" + r + "/health", 200, "{}");
  }
  ASSERT_NO_FATAL_FAILURE(MakeController(
      "[http://hung-geo, http://geo]",
      "probe_interval_ms: 50\nobservation_ttl_ms: 1000\ngeo_reconcile_interval_ms: 200\n", true));
  ASSERT_TRUE(c_->Start().ok());
  // Feeds both peers' observations every 20 ms until `done` or `limit`.
  auto feed = [&](const std::set<std::string>& down, Steady::duration limit,
                  const std::function<bool()>& done) {
    for (const auto end = Steady::now() + limit; Steady::now() < end;) {
      PeersRound(down);
      if (done && done()) return true;
      std::this_thread::sleep_for(milliseconds(20));
    }
    return false;
  };
  // Steady state: every region up with a recovered quorum; reconciles due every 200 ms each.
  feed({}, std::chrono::seconds(2), nullptr);
  ASSERT_EQ(Region("us-east")["votes"]["recovered"].size(), 2u);
  SetRegion("eu-west", false);
  ASSERT_TRUE(feed({"eu-west"}, std::chrono::seconds(5),
                   [&] { return Region("eu-west")["state"] == "lost"; }));
  const auto lost_at = Steady::now();
  const bool posted = feed({"eu-west"}, std::chrono::seconds(5), [&] {
    for (const HttpCall& c : http_.Calls("POST", "http://geo/v1/regions/eu-west/health"))
      if (Json::parse(c.body)["state"] == "down") return true;
    return false;
  });
  const auto down_ms = std::chrono::duration_cast<milliseconds>(Steady::now() - lost_at).count();
  EXPECT_TRUE(posted) << "no down at the healthy geo within 5 s of the decision";
  EXPECT_LT(down_ms, 1000) << "the down reached the healthy geo only after the hung one's calls";
  const auto stop_at = Steady::now();
  c_->Stop();
  const auto stop_ms = std::chrono::duration_cast<milliseconds>(Steady::now() - stop_at).count();
  EXPECT_LT(stop_ms, 4000) << "Stop waited for queued actions";
}

// An operator's "down" override (a drain for maintenance) outlasts a loss and recovery of the
// region: it is not replaced by the controllers' "down", and recovery sends no "auto" over it.
// Before, the loss replaced it (reason and all) and the recovery lifted it, routing customers to
// a region still under maintenance (review of the failover controller, finding 3).
TEST_F(ControllerTest, AnOperatorsDownOverrideOutlastsALossAndRecovery) {
  // geo's override slot for eu-west, as meridian-geo keeps it.
  struct Slot {
    std::mutex mu;
    std::string state = "auto", reason;
  };
  auto slot = std::make_shared<Slot>();
  http_.On("GET http://geo/v1/regions/eu-west", [slot](const HttpCall&) {
    std::lock_guard<std::mutex> l(slot->mu);
    Json o{{"state", slot->state}};
    o["reason"] = slot->reason.empty() ? Json() : Json(slot->reason);
    return HttpResult{200, Json{{"name", "eu-west"}, {"override", o}}.dump(), ""};
  });
  http_.On("POST http://geo/v1/regions/eu-west/health", [slot](const HttpCall& c) {
    const Json b = Json::parse(c.body);
    std::lock_guard<std::mutex> l(slot->mu);
    slot->state = b["state"];
    slot->reason = slot->state == "auto" ? "" : b["reason"].get<std::string>();
    return HttpResult{200, "{}", ""};
  });
  auto override_now = [slot] {
    std::lock_guard<std::mutex> l(slot->mu);
    return std::make_pair(slot->state, slot->reason);
  };
  auto lose_and_recover = [&] {
    SetRegion("eu-west", false);
    for (int i = 0; i < 3; ++i) {
      Round();
      ASSERT_EQ(PeerRound("eu-west").status, 200);
    }
    ASSERT_EQ(Region("eu-west")["state"], "lost");
    for (int i = 0; i < 12; ++i) Round();  // reconciles while lost
    SetRegion("eu-west", true);
    for (int i = 0; i < 5; ++i) {
      Round();
      ASSERT_EQ(PeerRound().status, 200);
    }
    ASSERT_EQ(Region("eu-west")["state"], "up");
    for (int i = 0; i < 12; ++i) {
      Round();
      ASSERT_EQ(PeerRound().status, 200);
    }
  };
  for (int i = 0; i < 2; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  {
    std::lock_guard<std::mutex> l(slot->mu);
    slot->state = "down";
    slot->reason = "maintenance";
  }
  ASSERT_NO_FATAL_FAILURE(lose_and_recover());
  EXPECT_EQ(override_now(), std::make_pair(std::string("down"), std::string("maintenance")));
  EXPECT_TRUE(http_.Calls("POST", "http://geo/v1/regions/eu-west/health").empty());
  EXPECT_NE(Audit().find("region=eu-west action=geo_health result=kept state=down "
                         "geo=http://geo override=down reason=\"an operator's override (down: "
                         "maintenance) stays until the operator lifts it\""),
            std::string::npos)
      << Audit();
  EXPECT_NE(Audit().find("action=geo_health result=kept state=auto"), std::string::npos);
  // The operator lifts it; the next loss and recovery are the controllers' own again.
  {
    std::lock_guard<std::mutex> l(slot->mu);
    slot->state = "auto";
    slot->reason.clear();
  }
  auto states = std::make_shared<std::vector<std::string>>();
  http_.On("POST http://geo/v1/regions/eu-west/health", [slot, states](const HttpCall& c) {
    const Json b = Json::parse(c.body);
    std::lock_guard<std::mutex> l(slot->mu);
    slot->state = b["state"];
    slot->reason = slot->state == "auto" ? "" : b["reason"].get<std::string>();
    states->push_back(slot->state);
    return HttpResult{200, "{}", ""};
  });
  ASSERT_NO_FATAL_FAILURE(lose_and_recover());
  EXPECT_EQ(*states, (std::vector<std::string>{"down", "auto"}));
  EXPECT_EQ(override_now().first, "auto");
}

// A controller restarted while a region's lease was away (Progress is not persisted) starts the
// same handback as after "recovered" once a quorum sees the region recovered. Before, it never
// asked, and with the replicators' automatic handback off the lease stayed with the survivor
// (review of the failover controller, finding 5).
TEST_F(ControllerTest, ARestartedControllerAsksForALeaseThatIsStillAway) {
  // Just started: eu-west is up, but us-east's replicator holds eu-west's group.
  SetHeld("us-east", {{"us-east", 1}, {"eu-west", 2}});
  SetHeld("eu-west", {});
  http_.SetJson("POST http://us-east.repl/v1/leases/eu-west/handback", 200, "{}");
  // Our own view alone is no quorum: nothing is asked.
  for (int i = 0; i < 6; ++i) Round();
  EXPECT_TRUE(http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback").empty());
  EXPECT_EQ(Region("eu-west")["handback"], nullptr);
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(PeerRound().status, 200);
    Round();
  }
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_EQ(Region("eu-west")["handback"], "pending");
  EXPECT_GE(http_.Calls("POST", "http://us-east.repl/v1/leases/eu-west/handback").size(), 1u);
  EXPECT_NE(Audit().find("region=eu-west decision=handback_started holder=us-east epoch=2"),
            std::string::npos)
      << Audit();
  EXPECT_TRUE(http_.Calls("POST", "http://us-east.repl/v1/leases/us-east/handback").empty());
  // eu-west holds it again: done, and not started again.
  SetHeld("us-east", {{"us-east", 1}});
  SetHeld("eu-west", {{"eu-west", 3}});
  ASSERT_EQ(PeerRound().status, 200);
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "done");
  EXPECT_NE(Audit().find("region=eu-west decision=lease_home epoch=3"), std::string::npos);
}

TEST_F(ControllerTest, LiftsAStaleDownOverrideOfOursOnlyWithAQuorum) {
  // A previous controller left eu-west overridden down; this one (just started) sees it healthy.
  StaleDownOverrideOfOurs();
  // Our own view alone (no peer observations) is not enough, however long.
  for (int i = 0; i < 15; ++i) Round();
  clock_.Advance(5000);
  Round();
  EXPECT_TRUE(http_.Calls("POST", "http://geo/v1/regions/eu-west/health").empty());
  // With ap-south's caught-up streak too: lifted ("auto"), and audited.
  ASSERT_NO_FATAL_FAILURE(RecoveredStreak());
  Round();
  auto posts = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(Json::parse(posts[0].body)["state"], "auto");
  EXPECT_NE(Audit().find("action=geo_health result=ok state=auto geo=http://geo reconcile=1"),
            std::string::npos);
  // An operator's override is left alone.
  http_.SetJson("http://geo/v1/regions/eu-west", 200,
                R"({"name":"eu-west","override":{"state":"down","reason":"maintenance"}})");
  http_.ClearCalls();
  for (int i = 0; i < 12; ++i) {
    clock_.Advance(500);
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  EXPECT_FALSE(http_.Calls("GET", "http://geo/v1/regions/eu-west").empty()) << "it did look";
  EXPECT_TRUE(http_.Calls("POST", "http://geo/v1/regions/eu-west/health").empty());
}

// The lift is queued with a quorum but its lane may run it seconds later (behind a hung geo). By
// then the peers' votes may be gone (this controller cut off from them while they declared the
// region lost): it is not sent. Before, only the region's state was checked again, and the late
// "auto" undid the peers' "down" for good (review of 2026-12-06).
TEST_F(ControllerTest, ALiftQueuedWithAQuorumIsNotSentOnceTheQuorumIsGone) {
  StaleDownOverrideOfOurs();
  ASSERT_NO_FATAL_FAILURE(RecoveredStreak());
  clock_.Advance(500);
  c_->RunRound();  // a quorum of RECOVERED votes: the lift is queued
  ASSERT_EQ(Region("eu-west")["votes"]["recovered"].size(), 2u);
  clock_.Advance(2000);  // ap-south's votes go stale (observation_ttl_ms 1500) before it runs
  c_->RunPendingActions();
  EXPECT_TRUE(http_.Calls("POST", "http://geo/v1/regions/eu-west/health").empty());
  // With ap-south heard from again, the next reconcile lifts it.
  clock_.Advance(5000);
  Round();
  ASSERT_EQ(PeerRound().status, 200);
  Round();
  auto posts = http_.Calls("POST", "http://geo/v1/regions/eu-west/health");
  ASSERT_EQ(posts.size(), 1u);
  EXPECT_EQ(Json::parse(posts[0].body)["state"], "auto");
}

TEST_F(ControllerTest, HandbackGivesUpAfterTheTimeout) {
  SetRegion("eu-west", false);
  for (int i = 0; i < 3; ++i) {
    Round();
    ASSERT_EQ(PeerRound("eu-west").status, 200);
  }
  ASSERT_EQ(Region("eu-west")["state"], "lost");
  SetHeld("ap-south", {{"ap-south", 1}, {"eu-west", 2}});
  SetRegion("eu-west", true);
  http_.SetJson("POST http://ap-south.repl/v1/leases/eu-west/handback", 409,
                R"({"title":"Conflict"})");
  for (int i = 0; i < 5; ++i) {
    Round();
    ASSERT_EQ(PeerRound().status, 200);
  }
  ASSERT_EQ(Region("eu-west")["state"], "up");
  Round();
  EXPECT_GE(http_.Calls("POST", "http://ap-south.repl/v1/leases/eu-west/handback").size(), 1u);
  clock_.Advance(61000);
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "gave_up");
  EXPECT_NE(Audit().find("action=lease_handback result=error holder=ap-south status=409"),
            std::string::npos);
  EXPECT_NE(Audit().find("decision=handback_gave_up"), std::string::npos);

  // Given up is not for good: with the lease still away once the timeout has passed again, the
  // handback is asked for again (before, never again in this controller's run), and again after
  // each further give-up (counted in the audit).
  const size_t asked =
      http_.Calls("POST", "http://ap-south.repl/v1/leases/eu-west/handback").size();
  clock_.Advance(30000);
  Round();
  ASSERT_EQ(PeerRound().status, 200);
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "gave_up") << "half the timeout: not yet";
  EXPECT_EQ(http_.Calls("POST", "http://ap-south.repl/v1/leases/eu-west/handback").size(), asked);
  http_.SetJson("POST http://ap-south.repl/v1/leases/eu-west/handback", 200, "{}");
  clock_.Advance(31000);
  Round();
  ASSERT_EQ(PeerRound().status, 200);
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "pending");
  EXPECT_NE(
      Audit().find("region=eu-west decision=handback_started holder=ap-south epoch=2 retry=1"),
      std::string::npos)
      << Audit();
  EXPECT_GT(http_.Calls("POST", "http://ap-south.repl/v1/leases/eu-west/handback").size(), asked);
  SetHeld("ap-south", {{"ap-south", 1}});
  SetHeld("eu-west", {{"eu-west", 3}});
  ASSERT_EQ(PeerRound().status, 200);
  Round();
  EXPECT_EQ(Region("eu-west")["handback"], "done");
}

// A reply that is not valid UTF-8 (a proxy's Latin-1 error page; a character across the 300-byte
// cut) is kept in the audit trail with '?' in place of the bad bytes, and /v1/decisions keeps
// answering: it answered 500 (nlohmann's strict dump) until 200 more entries pushed it out.
TEST_F(ControllerTest, AReplyThatIsNotUtf8DoesNotBreakTheDecisionsEndpoint) {
  http_.SetJson("POST http://geo/v1/regions/eu-west/health", 502,
                "\xff\xfe upstream " + std::string(287, 'x') + "\xc3\xa9 says no");
  ASSERT_NO_FATAL_FAILURE(EuWestLost());
  HttpResponse r = Call("GET", "/v1/decisions");
  ASSERT_EQ(r.status, 200) << r.body;
  std::string reason;
  const Json decisions = Json::parse(r.body);
  for (const Json& e : decisions["entries"])
    if (e.value("action", std::string()) == "geo_health") reason = e["reason"].get<std::string>();
  // 299 bytes: the cut at 300 drops the character it would split.
  EXPECT_EQ(reason, "?? upstream " + std::string(287, 'x'));
  EXPECT_NE(Audit().find("action=geo_health result=error"), std::string::npos);
}

TEST_F(ControllerTest, ObservationEndpointValidates) {
  ap_->RecordOwnChecks(clock_.NowMs(), {});
  const std::string body = ObservationToJson(ap_->own());
  const std::string ap = AsController("ap-south");
  EXPECT_EQ(Call("POST", "/v1/observations", body, "").status, 401);
  EXPECT_EQ(Call("POST", "/v1/observations", body, "Bearer wrong-token-0123456789").status, 403);
  HttpResponse op = Call("POST", "/v1/observations", body);
  EXPECT_EQ(op.status, 403) << "the operator token does not speak for a controller";
  EXPECT_NE(op.body.find("controller_token"), std::string::npos) << op.body;
  EXPECT_EQ(Call("POST", "/v1/observations", body, AsController("us-east")).status, 403)
      << "our own token is no peer's";
  HttpResponse bad = Call("POST", "/v1/observations", R"({"from":"ap-south"})", ap);
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body.find("incarnation"), std::string::npos);
  Observation self = ap_->own();
  self.from = "us-east";
  EXPECT_EQ(Call("POST", "/v1/observations", ObservationToJson(self), ap).status, 403);
  EXPECT_EQ(Call("POST", "/v1/observations", body, ap).status, 200);
  EXPECT_EQ(Call("POST", "/v1/observations", body, ap).status, 409) << "a replay";
  Json obs = Json::parse(Call("GET", "/v1/observations").body);
  EXPECT_EQ(obs["controller"], "us-east");
  EXPECT_EQ(obs["peers"]["ap-south"]["fresh"], true);
  EXPECT_EQ(obs["peers"]["eu-west"], nullptr);
  EXPECT_EQ(obs["own"]["incarnation"], "0000000000001234");
  const std::string metrics = Call("GET", "/metrics").body;
  EXPECT_NE(
      metrics.find(
          "meridian_failover_observations_received_total{from=\"ap-south\",result=\"stale\"} 1"),
      std::string::npos)
      << metrics;
  EXPECT_EQ(Call("GET", "/healthz").status, 200);
}

// A controller speaks only for itself. Before per-controller tokens, anyone holding the operator
// token (every operator, every controller) could push an observation "from" any controller: here
// a forged ap-south vote completes the quorum on a region only us-east cannot reach, and its
// huge seq makes the real ap-south's observations look stale until ap-south restarts.
TEST_F(ControllerTest, AnObservationIsTakenOnlyWithItsSendersOwnToken) {
  SetRegion("eu-west", false);  // us-east loses sight of eu-west; ap-south still sees it
  for (int i = 0; i < 3; ++i) Round();
  DeciderConfig as_ap;
  as_ap.regions = kThree;
  as_ap.self = "ap-south";
  Decider forger(as_ap);
  for (int i = 0; i < 3; ++i) {
    forger.RecordOwnChecks(clock_.NowMs(), {{"us-east", {true, true, 0, 0, ""}},
                                            {"eu-west", {false, false, 0, 0, "forged"}},
                                            {"ap-south", {true, true, 0, 0, ""}}});
  }
  Observation forged = forger.own();
  forged.incarnation = 99;  // the real ap-south's incarnation
  forged.seq = uint64_t{1} << 62;
  const std::string body = ObservationToJson(forged);
  for (const std::string& auth : {std::string("Bearer ") + kToken, AsController("eu-west")}) {
    HttpResponse r = Call("POST", "/v1/observations", body, auth);
    EXPECT_EQ(r.status, 403) << auth << ": " << r.body;
  }
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_EQ(Region("eu-west")["votes"]["lost"], Json::array({"us-east"}));
  // The real ap-south is heard, and says eu-west is healthy.
  ASSERT_EQ(PeerRound().status, 200);
  EXPECT_EQ(Region("eu-west")["state"], "up");
  EXPECT_TRUE(http_.Calls("POST", "http://geo").empty());
  EXPECT_NE(Call("GET", "/metrics")
                .body.find("meridian_failover_observations_received_total{from=\"eu-west\","
                           "result=\"rejected\"} 1"),
            std::string::npos);
}

TEST_F(ControllerTest, PushesItsObservationToEveryPeer) {
  http_.SetJson("POST http://eu-west.ctl/v1/observations", 200, R"({"accepted":true})");
  Round();
  c_->PushObservation();
  for (const char* peer : {"eu-west", "ap-south"}) {
    auto calls = http_.Calls("POST", absl::StrCat("http://", peer, ".ctl/v1/observations"));
    ASSERT_EQ(calls.size(), 1u) << peer;
    auto o = ObservationFromJson(calls[0].body);
    ASSERT_TRUE(o.ok()) << o.status();
    EXPECT_EQ(o->from, "us-east");
    EXPECT_EQ(o->seq, 1u);
    EXPECT_EQ(calls[0].bearer, ControllerToken("us-east")) << "its own token, not the operator's";
  }
  EXPECT_TRUE(http_.Calls("POST", "http://us-east.ctl").empty());
  EXPECT_NE(Call("GET", "/metrics")
                .body.find("meridian_failover_observation_push_failures_total{to=\"ap-south\"} 1"),
            std::string::npos);
}

// A peer that refuses this controller's observations (a region list or token that differs) does
// not count its votes, so a quorum may be out of reach: the refusal is a warning with the peer's
// reason, once when it starts or changes and once a minute while it lasts, and the recovery is
// logged. Before, it was logged at debug level only (review of the failover paths, 2026-12-07).
TEST_F(ControllerTest, APeerThatRefusesItsObservationsIsWarnedAbout) {
  std::ostringstream log;
  struct Restore {
    std::shared_ptr<spdlog::logger> logger;
    ~Restore() { spdlog::set_default_logger(logger); }
  } restore{spdlog::default_logger()};
  spdlog::set_default_logger(std::make_shared<spdlog::logger>(
      "test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log)));
  auto count = [&](const std::string& what) {
    size_t n = 0;
    const std::string text = log.str();
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
  };
  http_.SetJson("POST http://ap-south.ctl/v1/observations", 200, R"({"accepted":true})");
  http_.SetJson("POST http://eu-west.ctl/v1/observations", 401,
                R"({"title":"Unauthorized","detail":"unknown controller token"})");
  Round();
  c_->PushObservation();
  EXPECT_EQ(count("[warning] event=failover_push_failed to=eu-west"), 1u) << log.str();
  EXPECT_NE(log.str().find("HTTP 401: unknown controller token"), std::string::npos) << log.str();
  EXPECT_NE(log.str().find("does not count its votes"), std::string::npos) << log.str();
  EXPECT_EQ(count("to=ap-south"), 0u) << log.str();
  // The same refusal every push: not warned again within the minute, then once more.
  for (int i = 0; i < 10; ++i) {
    Round();
    c_->PushObservation();
  }
  EXPECT_EQ(count("event=failover_push_failed to=eu-west"), 1u) << log.str();
  clock_.Advance(60000);
  c_->PushObservation();
  EXPECT_EQ(count("event=failover_push_failed to=eu-west"), 2u) << log.str();
  // Accepted again: said once.
  http_.SetJson("POST http://eu-west.ctl/v1/observations", 200, R"({"accepted":true})");
  c_->PushObservation();
  c_->PushObservation();
  EXPECT_EQ(count("[info] event=failover_push_ok to=eu-west"), 1u) << log.str();
}

TEST(ControllerCreateTest, UnwritableAuditFileIsAnError) {
  auto config = ParseConfig(
      "region: a\noperator_token: operator-token-for-tests\naudit_file: /nonexistent/dir/a.log\n"
      "regions: [{name: a, url: http://a, replicator: http://a, metrics: http://a/m}]\n",
      "t.yaml", "");
  ASSERT_TRUE(config.ok()) << config.status();
  FakeHttp http;
  auto c = Controller::Create(*std::move(config), {nullptr, &http, 1});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("audit_file"), std::string::npos);
}

}  // namespace
}  // namespace meridian::failover
