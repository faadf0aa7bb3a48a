// The drill's arithmetic and report (drill_analysis.h, report.h) and how it reads a cluster's data
// folder (drill_cluster.h). The drill against a real three-region cluster is
// tests/e2e/drill_test.sh.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "failover/drill_analysis.h"
#include "failover/drill_cluster.h"
#include "failover/report.h"

namespace meridian::failover::drill {
namespace {

std::string Second(int64_t start, int64_t arrivals, int64_t errors, double p99) {
  return nlohmann::json{{"second", 0},
                        {"start_unix_ms", start},
                        {"arrivals", arrivals},
                        {"errors", errors},
                        {"error_rate", arrivals ? double(errors) / double(arrivals) : 0.0},
                        {"errors_by_class", {{"connect", errors}}},
                        {"latency_ms", {{"p50", 1.0}, {"p99", p99}}},
                        {"regions", {{"us-east", {{"arrivals", arrivals}, {"errors", errors}}}}}}
             .dump() +
         "\n";
}

TEST(ParseTimelineTest, ReadsLinesAndSkipsAPartialLast) {
  std::string text = Second(2000, 100, 0, 5) + Second(1000, 100, 30, 80) + "{\"second\":";
  auto t = ParseTimeline(text);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 2u);
  EXPECT_EQ((*t)[0].start_unix_ms, 1000);  // sorted
  EXPECT_EQ((*t)[0].errors, 30);
  EXPECT_DOUBLE_EQ((*t)[0].p99_ms, 80);
  EXPECT_EQ((*t)[0].errors_by_class.at("connect"), 30);
  EXPECT_EQ((*t)[0].regions.at("us-east").second, 30);
  EXPECT_FALSE(ParseTimeline("not json\n").ok());
  EXPECT_FALSE(ParseTimeline("{\"arrivals\": 3}\n").ok());
  EXPECT_TRUE(ParseTimeline("").value().empty());
}

TEST(ParseAcksTest, RequiresTheFieldsItUses) {
  auto a = ParseAcks(
      R"({"order_id":"o1","acked_unix_ms":5,"region":"eu-west","durability":"sync-peer","items":[{"sku":"s-1","quantity":2}]})"
      "\n");
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 1u);
  EXPECT_EQ((*a)[0].items[0].second, 2);
  EXPECT_FALSE(ParseAcks(R"({"order_id":"o1","region":"x"})"
                         "\n")
                   .ok());
}

TEST(MergeOrdersTest, NewestEpochAndVersionWin) {
  std::vector<OrderRow> rows = {{"o1", "pending_payment", 1, 1, {{"a", 1}}},
                                {"o1", "cancelled", 2, 1, {}},
                                {"o1", "paid", 1, 2, {{"a", 1}}},
                                {"o2", "paid", 1, 2, {{"b", 3}}}};
  auto m = MergeOrders(rows);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m["o1"].status, "cancelled");
  EXPECT_EQ(m["o1"].items.size(), 1u);  // items kept from another copy
  EXPECT_EQ(m["o2"].status, "paid");
}

TEST(ComputeStockTest, CountsOnlyOrdersHoldingStockAndFlagsOversell) {
  std::map<std::string, OrderRow> orders = {
      {"o1", {"o1", "paid", 1, 2, {{"s-1", 2}, {"load-1", 9}}}},
      {"o2", {"o2", "pending_payment", 1, 1, {{"s-1", 1}}}},
      {"o3", {"o3", "payment_declined", 1, 2, {{"s-1", 5}}}},
      {"o4", {"o4", "cancelled", 2, 3, {{"s-2", 5}}}},
      {"o5", {"o5", "paid", 1, 2, {{"s-2", 4}}}}};
  auto stock = ComputeStock(orders, {{"s-1", 3}, {"s-2", 3}});
  ASSERT_EQ(stock.size(), 2u);
  EXPECT_EQ(stock[0].sku, "s-1");
  EXPECT_EQ(stock[0].sold, 3);
  EXPECT_EQ(stock[0].orders, 2);
  EXPECT_EQ(stock[0].oversold, 0);
  EXPECT_EQ(stock[1].sold, 4);
  EXPECT_EQ(stock[1].oversold, 1);
}

TEST(ComputeRpoTest, CountsTheLostRegionsAcksMissingAtSurvivors) {
  std::vector<Ack> acks = {
      {"o1", 1000, "eu-west", "sync-peer", "c", {}},  // present
      {"o2", 1900, "eu-west", "sync-peer", "c", {}},  // missing
      {"o3", 1950, "eu-west", "async", "c", {}},      // missing, inside the lag window
      {"o4", 1500, "us-east", "sync-peer", "c", {}},  // another region's
      {"o5", 5000, "eu-west", "async", "c", {}},      // after the check
  };
  auto f = ComputeRpo(acks, "eu-west", {"o1"}, /*kill=*/2000, /*checked=*/4000, /*lag=*/120);
  EXPECT_EQ(f.acked_by_lost, 3);
  EXPECT_EQ(f.acked_sync_peer, 2);
  EXPECT_EQ(f.acked_async, 1);
  EXPECT_EQ(f.missing_sync_peer, 1);
  EXPECT_EQ(f.missing_async, 1);
  EXPECT_EQ(f.async_window_orders, 2);  // o2 (1900) and o3 (1950) from 1880 on
  EXPECT_EQ(f.missing_before_window, 0);
  EXPECT_EQ(f.missing_examples, (std::vector<std::string>{"o2", "o3"}));
  // A partitioned region answers after the kill: those count in the window; a missing order
  // acknowledged long before the kill is counted apart.
  acks.push_back({"o6", 3000, "eu-west", "async", "c", {}});
  f = ComputeRpo(acks, "eu-west", {"o2"}, 2000, 4000, 120);
  EXPECT_EQ(f.async_window_orders, 3);
  EXPECT_EQ(f.missing_before_window, 1);  // o1 (1000)
  EXPECT_EQ(f.missing_async, 2);          // o3, o6
}

std::vector<TimelineSecond> Seconds(std::vector<std::pair<int64_t, int64_t>> arrivals_errors) {
  std::vector<TimelineSecond> out;
  int64_t start = 0;
  for (auto [a, e] : arrivals_errors) {
    TimelineSecond s;
    s.start_unix_ms = start;
    s.arrivals = a;
    s.errors = e;
    s.error_rate = a ? double(e) / double(a) : 0;
    s.p99_ms = 10.0 + double(e);
    out.push_back(s);
    start += 1000;
  }
  return out;
}

TEST(AnalyzeErrorsTest, FindsWhenTheRateStaysUnderTheThreshold) {
  // Kill at 3.5 s (second 3), return at 10 s. Errors in seconds 3..6, a single blip at 8 (over),
  // then clean; after the return one bad second (11) then clean.
  auto s = Seconds({{100, 0},
                    {100, 1},
                    {100, 0},
                    {100, 30},
                    {100, 33},
                    {100, 20},
                    {100, 2},
                    {100, 0},
                    {100, 1},
                    {100, 0},
                    {100, 0},
                    {100, 5},
                    {100, 0},
                    {100, 0}});
  auto f = AnalyzeErrors(s, 3500, 10000, 0.01);
  EXPECT_NEAR(f.baseline_error_rate, 1.0 / 300, 1e-9);
  EXPECT_DOUBLE_EQ(f.peak_error_rate, 0.33);
  ASSERT_TRUE(f.outage_ok_unix_ms.has_value());
  EXPECT_EQ(*f.outage_ok_unix_ms, 9000);  // second 8 had 1% (not under 1%)
  EXPECT_EQ(f.errors_in_outage, 30 + 33 + 20 + 2 + 1);
  EXPECT_EQ(f.arrivals_in_outage, 700);
  ASSERT_TRUE(f.failback_ok_unix_ms.has_value());
  EXPECT_EQ(*f.failback_ok_unix_ms, 12000);
  EXPECT_DOUBLE_EQ(f.failback_peak_error_rate, 0.05);
  EXPECT_EQ(f.seconds_over_threshold, 6);  // 3, 4, 5, 6, 8, 11
}

TEST(AnalyzeErrorsTest, NeverUnderWhenTheLastSecondIsBad) {
  auto s = Seconds({{100, 0}, {100, 50}, {100, 50}});
  auto f = AnalyzeErrors(s, 1000, 5000, 0.01);
  EXPECT_FALSE(f.outage_ok_unix_ms.has_value());
}

Observed GoodRun() {
  Observed o;
  o.mode = "kill";
  o.durability = "sync-peer";
  o.lease_ttl_ms = 6000;
  o.detection_ms = 2100;
  o.dns_switch_ms = 2300;
  o.takeover_ms = 7900;
  o.errors_ok_ms = 9000;
  o.full_recovery_ms = 14000;
  o.region_back = true;
  o.carts_converged = true;
  o.carts_compared = 20;
  o.rpo.acked_sync_peer = 40;
  o.rpo.acked_by_lost = 40;
  o.rpo_checked = true;
  o.stock = {{"s-1", 90, 90, 50, 0}};
  o.acked_total = 120;
  o.acked_missing_after_recovery = 0;
  return o;
}

TEST(JudgeTargetsTest, PassesAGoodRunAndFailsEachLimit) {
  auto all_pass = [](const std::vector<Target>& t) {
    return std::all_of(t.begin(), t.end(), [](const Target& x) { return x.pass; });
  };
  EXPECT_TRUE(all_pass(JudgeTargets(GoodRun())));
  auto failing = [&](Observed o) {
    std::vector<std::string> names;
    for (const Target& t : JudgeTargets(o))
      if (!t.pass) names.push_back(t.name);
    return names;
  };
  Observed o = GoodRun();
  o.detection_ms = 3001;
  EXPECT_EQ(failing(o), std::vector<std::string>{"detection"});
  o = GoodRun();
  o.dns_switch_ms.reset();
  EXPECT_EQ(failing(o), std::vector<std::string>{"dns switch"});
  o = GoodRun();
  o.takeover_ms = 9001;  // TTL 6 s + 3 s
  EXPECT_EQ(failing(o), std::vector<std::string>{"lease takeover"});
  o = GoodRun();
  o.errors_ok_ms = 15001;
  EXPECT_EQ(failing(o), std::vector<std::string>{"customer errors"});
  o = GoodRun();
  o.rpo.missing_sync_peer = 1;
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (sync-peer)"});
  o = GoodRun();
  o.stock[0].oversold = 1;
  EXPECT_EQ(failing(o), std::vector<std::string>{"oversell"});
  o = GoodRun();
  o.stock.clear();  // nothing accounted is not a pass
  EXPECT_EQ(failing(o), std::vector<std::string>{"oversell"});
  o = GoodRun();
  o.stock[0].sold = 0;  // nothing sold is not a pass either
  EXPECT_EQ(failing(o), std::vector<std::string>{"oversell"});
  // A check that did not run, or had nothing to check, is not a pass.
  o = GoodRun();
  o.rpo_checked = false;
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (sync-peer)"});
  o = GoodRun();
  o.rpo.acked_by_lost = 0;
  o.rpo.acked_sync_peer = 0;
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (sync-peer)"});
  o = GoodRun();
  o.acked_missing_after_recovery = 2;
  EXPECT_EQ(failing(o), std::vector<std::string>{"acknowledged orders"});
  o = GoodRun();
  o.acked_missing_after_recovery = -1;  // could not be checked
  EXPECT_EQ(failing(o), std::vector<std::string>{"acknowledged orders"});
  o = GoodRun();
  o.acked_total = 0;
  EXPECT_EQ(failing(o), std::vector<std::string>{"acknowledged orders"});
  o = GoodRun();
  o.carts_converged = false;
  EXPECT_EQ(failing(o), std::vector<std::string>{"carts converged"});
  o = GoodRun();
  o.full_recovery_ms.reset();
  EXPECT_EQ(failing(o), std::vector<std::string>{"region back"});
  // Async mode: the loss is allowed up to the orders in the lag window.
  o = GoodRun();
  o.durability = "async";
  o.rpo.missing_async = 3;
  o.rpo.async_window_orders = 3;
  EXPECT_TRUE(failing(o).empty());
  o.rpo_checked = false;
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (async)"});
  o.rpo_checked = true;
  o.rpo.missing_async = 4;
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (async)"});
  o.rpo.missing_async = 2;
  o.rpo.missing_before_window = 1;  // within the count, but older than the window
  EXPECT_EQ(failing(o), std::vector<std::string>{"RPO (async)"});
  // Invariants are flagged as such.
  int invariants = 0;
  for (const Target& t : JudgeTargets(GoodRun())) invariants += t.invariant;
  EXPECT_EQ(invariants, 5);  // RPO sync-peer, oversell, acknowledged orders, region back, carts
}

DrillReport SampleReport() {
  DrillReport r;
  r.id = "20261130T100000Z-eu-west-kill";
  r.region = "eu-west";
  r.mode = "kill";
  r.duration_s = 30;
  r.started_utc = "2026-11-30 10:00:00 UTC";
  r.timeline = Seconds({{100, 0}, {100, 30}, {100, 10}, {100, 0}, {100, 0}});
  for (auto& s : r.timeline) s.start_unix_ms += 1'000'000;
  r.events = {{"return", 1'003'500, "deploy/meridian up"},
              {"kill", 1'001'000, "kill -9 1 2"},
              {"detection", 1'002'100, "meridian-failover us-east <audit>"}};
  r.Sort();
  r.observed = GoodRun();
  r.targets = JudgeTargets(r.observed);
  r.stock = r.observed.stock;
  return r;
}

TEST(DrillReportTest, EventsAreRelativeToTheKill) {
  DrillReport r = SampleReport();
  EXPECT_EQ(r.events.front().name, "kill");
  EXPECT_EQ(r.After("detection"), 1100);
  EXPECT_FALSE(r.After("takeover").has_value());
  EXPECT_TRUE(r.AllPass());
  EXPECT_TRUE(r.InvariantsHold());
}

TEST(DrillReportTest, RendersMarkdownJsonAndSvg) {
  DrillReport r = SampleReport();
  std::string md = r.ToMarkdown();
  EXPECT_NE(md.find("# Region-loss drill: eu-west (kill)"), std::string::npos);
  EXPECT_NE(md.find("| detection | region declared lost <= 3 s after the kill | 2.1 s | PASS |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("![timeline](timeline.svg)"), std::string::npos);
  auto j = r.ToJson();
  EXPECT_EQ(j["all_pass"], true);
  EXPECT_EQ(j["events"][1]["after_kill_ms"], 1100);
  EXPECT_EQ(j["timeline"].size(), 5u);
  EXPECT_EQ(j["timeline"][0]["t_ms"], -1000);
  std::string svg = r.ToSvg();
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find(">detection +1.1s<"), std::string::npos);
  EXPECT_EQ(svg.find("<audit>"), std::string::npos);
  // Text from the run is escaped: no raw '<' inside text elements.
  r.region = "a<b";
  EXPECT_NE(r.ToSvg().find("a&lt;b"), std::string::npos);
  // A failed invariant is reported as such.
  r.observed.stock[0].oversold = 2;
  r.targets = JudgeTargets(r.observed);
  EXPECT_FALSE(r.InvariantsHold());
  EXPECT_NE(r.ToMarkdown().find("**an invariant FAILED**"), std::string::npos);
  EXPECT_NE(r.SummaryTable().find("FAIL (invariant)"), std::string::npos);
}

TEST(DrillReportTest, WritesTheThreeFiles) {
  auto dir =
      std::filesystem::temp_directory_path() / ("drill-report-" + std::to_string(::getpid()));
  ASSERT_TRUE(WriteReportFiles(SampleReport(), dir.string()).ok());
  for (const char* f : {"report.md", "report.json", "timeline.svg"}) {
    EXPECT_GT(std::filesystem::file_size(dir / f), 100u) << f;
  }
  auto j = nlohmann::json::parse(std::ifstream(dir / "report.json"));
  EXPECT_EQ(j["region"], "eu-west");
  std::filesystem::remove_all(dir);
}

class DataDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("drill-data-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    Write("operator_token", "0123456789abcdef0123\n");
    Write("cluster.env", "CLUSTER_REGIONS=3\nLINKS_MODE=netns\n");
    int i = 1;
    for (const char* r : {"us-east", "eu-west", "ap-south"}) {
      std::string d = std::string(r) + "/";
      Write(d + "url", "http://10.77.0." + std::to_string(i) + ":4000\n");
      Write(d + "ports.env", "ADMIN_PORT=4100\nMETRICS_PORT=4200\nFAILOVER_PORT=4300\n");
      Write(d + "region.yaml",
            "durability: sync-peer\npostgres:\n  global: \"host=h dbname=g\"\n  shards:\n"
            "    - \"host=h port=1 dbname=s0\"\n    - \"host=h port=2 dbname=s1\"\n");
      Write(d + "replicator.yaml",
            i == 3 ? "metrics: \"10.77.0.3:4201\"\ncoordination:\n  admin: \"10.77.0.3:4101\"\n"
                     "  leases: {ttl_ms: 4000}\n"
                   : "coordination:\n  leases: {ttl_ms: 4000}\n");
      if (i == 3) Write(d + "failover.yaml", "region: ap-south\nlisten: 127.0.0.1:4301\n");
      ++i;
    }
    Write("geo/ports.env", "GEO_PORT=8053\nDNS_PORT=5300\n");
    Write(
        "geo/geo.yaml",
        "zone: {name: shop.example.test.}\nregions:\n"
        "  - {name: us-east, addresses: [10.77.0.1]}\n"
        "  - {name: eu-west, addresses: [10.77.0.2]}\n"
        "  - {name: ap-south, addresses: [10.77.0.3]}\n"
        "locations:\n  - {cidr: 198.18.1.0/24, region: us-east}\n"
        "  - {cidr: 198.18.2.0/24, region: eu-west}\n"
        "  - {cidr: 2001:db8::/32, region: eu-west}\n"
        "  - {cidr: 198.18.3.0/24, region: ap-south}\n  - {cidr: 192.0.2.0/24, lat: 1, lon: 2}\n");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void Write(const std::string& rel, const std::string& text) {
    std::filesystem::create_directories((dir_ / rel).parent_path());
    std::ofstream(dir_ / rel) << text;
  }
  std::filesystem::path dir_;
};

TEST_F(DataDir, ReadsEverythingTheDrillNeeds) {
  auto c = LoadDrillCluster(dir_.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->links, "netns");
  EXPECT_EQ(c->durability, "sync-peer");
  EXPECT_EQ(c->lease_ttl_ms, 4000);
  EXPECT_EQ(c->service_name, "shop.example.test.");
  EXPECT_EQ(c->dns_host, "127.0.0.1");
  EXPECT_EQ(c->dns_port, 5300);
  EXPECT_EQ(c->geo, "http://127.0.0.1:8053");
  const DrillRegion* eu = c->Find("eu-west");
  ASSERT_NE(eu, nullptr);
  EXPECT_EQ(eu->subnets, std::vector<std::string>{"198.18.2.0/24"});  // IPv6 rows skipped
  EXPECT_EQ(eu->dns_addresses, std::vector<std::string>{"10.77.0.2"});
  EXPECT_EQ(eu->dsns.size(), 2u);
  EXPECT_EQ(eu->replicator, "http://10.77.0.2:4100");
  EXPECT_EQ(eu->controller, "http://127.0.0.1:4300");
  // The processes' own configs win over ports.env.
  const DrillRegion* ap = c->Find("ap-south");
  ASSERT_NE(ap, nullptr);
  EXPECT_EQ(ap->replicator, "http://10.77.0.3:4101");
  EXPECT_EQ(ap->metrics, "http://10.77.0.3:4201/metrics");
  EXPECT_EQ(ap->controller, "http://127.0.0.1:4301");
}

TEST_F(DataDir, RefusesAClusterItCannotDrill) {
  Write("geo/geo.yaml", "zone: {name: shop.example.test.}\nregions: []\n");
  auto c = LoadDrillCluster(dir_.string());
  EXPECT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("geo.yaml"), std::string::npos) << c.status();
  std::filesystem::remove(dir_ / "geo/ports.env");
  c = LoadDrillCluster(dir_.string());
  EXPECT_TRUE(absl::IsFailedPrecondition(c.status())) << c.status();
  Write("cluster.env", "CLUSTER_REGIONS=1\n");
  Write("url", "http://127.0.0.1:1\n");
  c = LoadDrillCluster(dir_.string());
  EXPECT_TRUE(absl::IsFailedPrecondition(c.status())) << c.status();
  Write("cluster.env", "CLUSTER_REGIONS=3\n");
  Write("eu-west/region.yaml", "postgres: [unclosed\n");
  Write("geo/ports.env", "GEO_PORT=8053\nDNS_PORT=5300\n");
  c = LoadDrillCluster(dir_.string());
  EXPECT_TRUE(absl::IsInvalidArgument(c.status())) << c.status();
}

}  // namespace
}  // namespace meridian::failover::drill
