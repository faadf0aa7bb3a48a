// Probe parsing (replicator status, Prometheus text) and the health / catch-up rules.

#include "failover/probe.h"

#include <gtest/gtest.h>

#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace meridian::failover {
namespace {

const std::vector<std::string> kThree = {"us-east", "eu-west", "ap-south"};

std::string Status(const std::string& region, bool peer1_alive = true, bool peer2_alive = true) {
  std::vector<std::string> others;
  for (const auto& r : kThree)
    if (r != region) others.push_back(r);
  return absl::StrCat(
      R"({"region":")", region, R"(","replica_id":1,"jurisdiction":"us","peers":[)", R"({"name":")",
      others[0], R"(","replica_id":2,"jurisdiction":"eu","alive":)", peer1_alive ? "true" : "false",
      "},", R"({"name":")", others[1], R"(","replica_id":3,"jurisdiction":"ap","alive":)",
      peer2_alive ? "true" : "false", "}],", R"("leases":[{"group":1,"group_region":")", region,
      R"(","epoch":3,"owner":")", region,
      R"(","held_here":true,"usable":true,"syncing":false,"valid_for_ms":5400,"claimed_epoch":3}]})");
}

// prometheus-cpp's text for the replication series of `region`, with the given per-peer figures:
// `sum` and `count` of the queue lag; the lag from commit to apply holds `skew_ms` more per record
// (this host's clock minus the peer's).
std::string Metrics(const std::string& region, double sum, double count, double backlog,
                    double p99 = 12.5, double skew_ms = 0) {
  std::string out =
      "# HELP meridian_replication_lag_ms Milliseconds from the origin's commit to the apply\n"
      "# TYPE meridian_replication_lag_ms summary\n";
  for (const auto& p : kThree) {
    if (p == region) continue;
    absl::StrAppend(&out, "meridian_replication_lag_ms{peer=\"", p, "\",quantile=\"0.5\"} 3\n",
                    "meridian_replication_lag_ms{peer=\"", p, "\",quantile=\"0.99\"} ",
                    std::isnan(p99) ? "Nan" : absl::StrCat(p99), "\n",
                    "meridian_replication_lag_ms_sum{peer=\"", p, "\"} ", sum + skew_ms * count,
                    "\n", "meridian_replication_lag_ms_count{peer=\"", p, "\"} ", count, "\n",
                    "meridian_replication_queue_lag_ms_sum{peer=\"", p, "\"} ", sum, "\n",
                    "meridian_replication_queue_lag_ms_count{peer=\"", p, "\"} ", count, "\n",
                    "meridian_replication_lag_seq{peer=\"", p, "\"} ", backlog, "\n",
                    "meridian_replication_connected{peer=\"", p, "\"} 1\n",
                    "meridian_replication_bytes_total{direction=\"sent\",peer=\"", p, "\"} 1234\n");
  }
  out += "process_cpu_seconds_total 4.5\n";
  return out;
}

HttpResult Ok(std::string body) { return HttpResult{200, std::move(body), ""}; }
HttpResult Refused() { return HttpResult{0, "", "connection refused"}; }

TEST(ProbeTest, PromLine) {
  PromSample s;
  ASSERT_TRUE(ParsePromLine(R"(a_b{peer="x",quantile="0.99"} 1.5)", &s));
  EXPECT_EQ(s.name, "a_b");
  EXPECT_EQ(s.labels.at("peer"), "x");
  EXPECT_EQ(s.labels.at("quantile"), "0.99");
  EXPECT_EQ(s.value, 1.5);
  ASSERT_TRUE(ParsePromLine("up 1 1700000000000", &s));
  EXPECT_EQ(s.name, "up");
  EXPECT_TRUE(s.labels.empty());
  ASSERT_TRUE(ParsePromLine(R"(m{l="a \"q\" \\ b"} NaN)", &s));
  EXPECT_EQ(s.labels.at("l"), "a \"q\" \\ b");
  EXPECT_TRUE(std::isnan(s.value));
  ASSERT_TRUE(ParsePromLine(R"(m{l="x",} +Inf)", &s));
  EXPECT_TRUE(std::isinf(s.value));
  for (const char* bad : {"# HELP x y", "", "   ", "{a=\"b\"} 1", "m{a=b} 1", "m{a=\"b} 1", "m 1x",
                          "m", "m{a=\"b\"}1"}) {
    EXPECT_FALSE(ParsePromLine(bad, &s)) << bad;
  }
}

TEST(ProbeTest, ReplicationMetrics) {
  auto m = ParseReplicationMetrics(Metrics("us-east", 500, 100, 7));
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->peers.size(), 2u);
  const PeerReplication& eu = m->peers.at("eu-west");
  EXPECT_EQ(*eu.lag_p99_ms, 12.5);
  EXPECT_EQ(eu.queue_lag_sum_ms, 500);
  EXPECT_EQ(eu.queue_lag_count, 100);
  EXPECT_EQ(*eu.backlog_records, 7);
  EXPECT_TRUE(*eu.connected);
  // No observation in the window: the quantile is NaN, reported as unknown.
  m = ParseReplicationMetrics(Metrics("us-east", 0, 0, 0, std::nan("")));
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->peers.at("eu-west").lag_p99_ms.has_value());
  // A broken line of our series is an error; other series are not our business.
  EXPECT_FALSE(ParseReplicationMetrics("meridian_replication_lag_seq{peer=\"x\" 3\n").ok());
  EXPECT_TRUE(ParseReplicationMetrics("other_series{{{ garbage\n").ok());
}

TEST(ProbeTest, ReplicatorStatus) {
  auto s = ParseReplicatorStatus(Status("eu-west", true, false));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->region, "eu-west");
  EXPECT_TRUE(s->peers_alive.at("us-east"));
  EXPECT_FALSE(s->peers_alive.at("ap-south"));
  ASSERT_EQ(s->leases.size(), 1u);
  EXPECT_EQ(s->leases[0].group_region, "eu-west");
  EXPECT_EQ(s->leases[0].epoch, 3u);
  EXPECT_TRUE(s->leases[0].held_here);
  EXPECT_TRUE(s->leases[0].usable);
  EXPECT_FALSE(ParseReplicatorStatus("not json").ok());
  EXPECT_FALSE(ParseReplicatorStatus(R"({"region":"x"})").ok());
  EXPECT_FALSE(ParseReplicatorStatus(R"({"region":"x","peers":[{"name":"y"}]})").ok());
  EXPECT_FALSE(ParseReplicatorStatus(R"({"region":"x","peers":[],"leases":{}})").ok());
  // A flag of another type reads as false: it must not throw on the probe thread.
  absl::StatusOr<ReplicatorStatus> odd = absl::UnknownError("not parsed");
  ASSERT_NO_THROW(odd = ParseReplicatorStatus(
                      R"({"region":"x","peers":[],"leases":[{"group_region":"x","held_here":1,)"
                      R"("usable":"yes","syncing":null}]})"));
  ASSERT_TRUE(odd.ok()) << odd.status();
  EXPECT_FALSE(odd->leases[0].held_here);
  EXPECT_FALSE(odd->leases[0].usable);
}

// A round in which every region is fine; `previous` from an earlier identical round.
std::map<std::string, RegionProbe> HealthyRound(double sum = 500, double count = 100,
                                                double backlog = 0) {
  std::map<std::string, RegionProbe> p;
  for (const auto& r : kThree) {
    p[r] = RegionProbe{Ok(R"({"ready":true})"), Ok(Status(r)), Ok(Metrics(r, sum, count, backlog))};
  }
  return p;
}

std::map<std::string, ReplicationMetrics> Previous(double sum, double count) {
  std::map<std::string, ReplicationMetrics> prev;
  for (const auto& r : kThree) prev[r] = *ParseReplicationMetrics(Metrics(r, sum, count, 0));
  return prev;
}

TEST(ProbeTest, HealthyAndCaughtUp) {
  // 100 more records applied with 1000 ms more lag in total: a mean of 10 ms.
  auto checks = ComputeChecks(kThree, HealthyRound(1500, 200), Previous(500, 100), {});
  for (const auto& r : kThree) {
    const RegionCheck& c = checks.at(r);
    EXPECT_TRUE(c.healthy) << r << c.reason;
    EXPECT_TRUE(c.caught_up) << r << c.reason;
    EXPECT_EQ(c.reason, "");
    EXPECT_DOUBLE_EQ(c.queue_lag_ms.begin()->second, 10);
    EXPECT_EQ(c.backlog_records.size(), 2u);
  }
}

// A replicator from before the queue lag (a rolling upgrade) exports only the lag from commit to
// apply: the rule reads that then, rather than finding no lag at all.
TEST(ProbeTest, AReplicatorWithoutTheQueueLagIsJudgedByItsApplyLag) {
  auto without_queue = [](std::string text) {
    std::string out;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StrContains(line, "queue_lag")) absl::StrAppend(&out, line, "\n");
    }
    return out;
  };
  std::map<std::string, RegionProbe> round;
  std::map<std::string, ReplicationMetrics> previous;
  for (const auto& r : kThree) {
    // 10 records of 2,000 ms each over the interval.
    round[r] = RegionProbe{Ok(R"({"ready":true})"), Ok(Status(r)),
                           Ok(without_queue(Metrics(r, 20500, 110, 0)))};
    previous[r] = *ParseReplicationMetrics(without_queue(Metrics(r, 500, 100, 0)));
  }
  auto checks = ComputeChecks(kThree, round, previous, CatchUpPolicy{1000, 50});
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("apply lag from"), std::string::npos)
      << checks["eu-west"].reason;
  EXPECT_DOUBLE_EQ(checks["eu-west"].queue_lag_ms.at("us-east"), 2000);
}

// The catch-up rule reads no lag that compares two hosts' clocks. Each record's lag from commit to
// apply here holds 5 s of skew in either direction, and its queue lag is 10 ms. The region is
// caught up, and judged by the 10 ms. Before, the rule read the commit-to-apply lag: a host whose
// clock ran ahead was never caught up, and one behind had the rule switched off.
TEST(ProbeTest, ACaughtUpRegionWithASkewedClockIsCaughtUp) {
  for (double skew : {5000.0, -5000.0}) {
    std::map<std::string, RegionProbe> round;
    std::map<std::string, ReplicationMetrics> previous;
    for (const auto& r : kThree) {
      round[r] = RegionProbe{Ok(R"({"ready":true})"), Ok(Status(r)),
                             Ok(Metrics(r, 1500, 200, 0, 12.5, skew))};
      previous[r] = *ParseReplicationMetrics(Metrics(r, 500, 100, 0, 12.5, skew));
    }
    auto checks = ComputeChecks(kThree, round, previous, CatchUpPolicy{1000, 50});
    EXPECT_TRUE(checks["eu-west"].caught_up) << skew << ": " << checks["eu-west"].reason;
    EXPECT_DOUBLE_EQ(checks["eu-west"].queue_lag_ms.at("us-east"), 10) << skew;
    // A real backlog is still seen whatever the skew: 10 records with 2,000 ms each.
    for (const auto& r : kThree) round[r].metrics = Ok(Metrics(r, 20500, 110, 0, 12.5, skew));
    checks = ComputeChecks(kThree, round, previous, CatchUpPolicy{1000, 50});
    EXPECT_FALSE(checks["eu-west"].caught_up) << skew;
    EXPECT_DOUBLE_EQ(checks["eu-west"].queue_lag_ms.at("us-east"), 2000) << skew;
  }
}

TEST(ProbeTest, UnhealthyReasons) {
  auto probes = HealthyRound();
  probes["eu-west"].readyz = Refused();
  probes["ap-south"].status = HttpResult{401, "{}", ""};
  probes["us-east"].status = Ok(Status("us-east", false, false));
  auto checks = ComputeChecks(kThree, probes, Previous(500, 100), {});
  EXPECT_FALSE(checks["eu-west"].healthy);
  EXPECT_EQ(checks["eu-west"].reason, "readyz: connection refused");
  EXPECT_FALSE(checks["ap-south"].healthy);
  EXPECT_EQ(checks["ap-south"].reason, "replicator: HTTP 401");
  // Cut off from every peer (a partition), though it answers probes: not healthy.
  EXPECT_FALSE(checks["us-east"].healthy);
  EXPECT_NE(checks["us-east"].reason.find("0 of 2 peers alive"), std::string::npos);
  EXPECT_FALSE(checks["us-east"].caught_up);
  // One peer down still leaves a majority: healthy, but not caught up.
  probes = HealthyRound();
  probes["us-east"].status = Ok(Status("us-east", true, false));
  checks = ComputeChecks(kThree, probes, Previous(500, 100), {});
  EXPECT_TRUE(checks["us-east"].healthy);
  EXPECT_FALSE(checks["us-east"].caught_up);
  EXPECT_NE(checks["us-east"].reason.find("not alive"), std::string::npos);
  // Malformed replicator answer.
  probes = HealthyRound();
  probes["us-east"].status = Ok("[]");
  checks = ComputeChecks(kThree, probes, Previous(500, 100), {});
  EXPECT_FALSE(checks["us-east"].healthy);
  EXPECT_NE(checks["us-east"].reason.find("replicator: "), std::string::npos);
  // Unprobed region.
  probes.erase("ap-south");
  checks = ComputeChecks(kThree, probes, Previous(500, 100), {});
  EXPECT_EQ(checks["ap-south"].reason, "not probed");
}

TEST(ProbeTest, CatchUpRules) {
  CatchUpPolicy policy{1000, 50};
  // Queue lag over the interval: 10 records with 20,000 ms of lag in total = 2000 ms each.
  auto checks = ComputeChecks(kThree, HealthyRound(20500, 110), Previous(500, 100), policy);
  EXPECT_TRUE(checks["eu-west"].healthy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("queue lag from ap-south 2000 ms > 1000 ms"),
            std::string::npos)
      << checks["eu-west"].reason;
  EXPECT_DOUBLE_EQ(checks["eu-west"].queue_lag_ms.at("us-east"), 2000);
  // Nothing applied during the interval: no lag to speak of.
  checks = ComputeChecks(kThree, HealthyRound(500, 100), Previous(500, 100), policy);
  EXPECT_TRUE(checks["eu-west"].caught_up) << checks["eu-west"].reason;
  // A restarted replicator (counters went back): its figures since the restart count.
  checks = ComputeChecks(kThree, HealthyRound(30000, 10), Previous(500, 100), policy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_DOUBLE_EQ(checks["eu-west"].queue_lag_ms.at("us-east"), 3000);
  // Peers' backlog toward the region above the limit.
  checks = ComputeChecks(kThree, HealthyRound(500, 100, 51), Previous(500, 100), policy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("not yet acked"), std::string::npos);
  checks = ComputeChecks(kThree, HealthyRound(500, 100, 50), Previous(500, 100), policy);
  EXPECT_TRUE(checks["eu-west"].caught_up);
  // No previous sample yet (first round): not caught up.
  checks = ComputeChecks(kThree, HealthyRound(), {}, policy);
  EXPECT_TRUE(checks["eu-west"].healthy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
  // A peer's metrics unreachable: its backlog is unknown, so not caught up.
  auto probes = HealthyRound();
  probes["us-east"].metrics = Refused();
  checks = ComputeChecks(kThree, probes, Previous(500, 100), policy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("backlog of us-east unknown"), std::string::npos);
  EXPECT_FALSE(checks["us-east"].caught_up);
  EXPECT_NE(checks["us-east"].reason.find("metrics: connection refused"), std::string::npos);
}

// A peer this controller has decided is lost does not hold back another region's catch-up: not
// through "every peer alive", nor through its backlog (its metrics are unreachable). Before, a
// region that returned while another region stayed lost never counted as caught up, so it never
// failed back (review of the failover controller, finding 2).
TEST(ProbeTest, ALostPeerDoesNotHoldBackCatchUp) {
  CatchUpPolicy policy{1000, 50};
  auto probes = HealthyRound();
  // ap-south is gone: its probes fail, eu-west and us-east see it dead.
  probes["ap-south"] = RegionProbe{Refused(), Refused(), Refused()};
  probes["eu-west"].status = Ok(Status("eu-west", true, false));
  probes["us-east"].status = Ok(Status("us-east", true, false));
  auto checks = ComputeChecks(kThree, probes, Previous(500, 100), policy);
  EXPECT_TRUE(checks["eu-west"].healthy);
  EXPECT_FALSE(checks["eu-west"].caught_up) << "not decided lost: it still holds catch-up back";
  EXPECT_NE(checks["eu-west"].reason.find("peer ap-south not alive"), std::string::npos);
  checks = ComputeChecks(kThree, probes, Previous(500, 100), policy, {"ap-south"});
  for (const char* r : {"eu-west", "us-east"}) {
    EXPECT_TRUE(checks[r].healthy) << r << ": " << checks[r].reason;
    EXPECT_TRUE(checks[r].caught_up) << r << ": " << checks[r].reason;
    EXPECT_EQ(checks[r].backlog_records.count("ap-south"), 0u) << r;
  }
  EXPECT_FALSE(checks["ap-south"].healthy);
  // The other peers' rules still apply: us-east's backlog toward eu-west above the limit.
  probes["us-east"].metrics = Ok(Metrics("us-east", 500, 100, 51));
  checks = ComputeChecks(kThree, probes, Previous(500, 100), policy, {"ap-south"});
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("us-east has 51 records not yet acked"),
            std::string::npos)
      << checks["eu-west"].reason;
  // A peer that is merely dead (not decided lost) still counts, however the others are.
  probes["us-east"].metrics = Ok(Metrics("us-east", 500, 100, 0));
  checks = ComputeChecks(kThree, probes, Previous(500, 100), policy, {"us-east"});
  EXPECT_FALSE(checks["eu-west"].caught_up);
  EXPECT_NE(checks["eu-west"].reason.find("peer ap-south not alive"), std::string::npos);
  // Health is unchanged by it: a majority of peers alive is still needed.
  probes["eu-west"].status = Ok(Status("eu-west", false, false));
  checks = ComputeChecks(kThree, probes, Previous(500, 100), policy, {"ap-south", "us-east"});
  EXPECT_FALSE(checks["eu-west"].healthy);
  EXPECT_FALSE(checks["eu-west"].caught_up);
}

}  // namespace
}  // namespace meridian::failover
