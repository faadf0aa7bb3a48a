#include "deploy/netem/nfq_policy.h"

#include <gtest/gtest.h>

#include <vector>

namespace meridian::netem {
namespace {

using std::chrono::milliseconds;

uint32_t Ip(uint8_t a, uint8_t b, uint8_t c, uint8_t d) {
  return uint32_t{a} << 24 | uint32_t{b} << 16 | uint32_t{c} << 8 | d;
}

TEST(Ipv4NetTest, ParsesHostsAndPrefixes) {
  auto host = ParseIpv4Net("10.77.0.2");
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->addr, Ip(10, 77, 0, 2));
  EXPECT_EQ(host->mask, 0xffffffffu);
  EXPECT_EQ(host->ToString(), "10.77.0.2/32");
  auto net = ParseIpv4Net("10.77.0.0/24");
  ASSERT_TRUE(net.ok()) << net.status();
  EXPECT_TRUE(net->Contains(Ip(10, 77, 0, 200)));
  EXPECT_FALSE(net->Contains(Ip(10, 77, 1, 1)));
  auto all = ParseIpv4Net("0.0.0.0/0");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Contains(Ip(192, 168, 1, 1)));
}

TEST(Ipv4NetTest, RejectsBadInput) {
  for (const char* bad : {"", "10.77.0", "10.77.0.1/33", "10.77.0.1/", "10.77.0.1/x",
                          "10.77.0.1/24", "fe80::1", "300.1.1.1", "10.0.0.0/-1"}) {
    EXPECT_FALSE(ParseIpv4Net(bad).ok()) << bad;
  }
}

TEST(RuleTest, ParsesEveryField) {
  auto r = ParseRule("queue=3 src=10.1.0.0/16, dst=10.77.0.2 delay=37.5 loss=0.5");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->queue, 3);
  ASSERT_TRUE(r->src.has_value());
  EXPECT_EQ(r->src->ToString(), "10.1.0.0/16");
  ASSERT_TRUE(r->dst.has_value());
  EXPECT_EQ(r->dst->addr, Ip(10, 77, 0, 2));
  EXPECT_DOUBLE_EQ(r->delay_ms, 37.5);
  EXPECT_DOUBLE_EQ(r->loss_pct, 0.5);
  EXPECT_EQ(r->ToString(), "queue=3 src=10.1.0.0/16 dst=10.77.0.2/32 delay=37.5 loss=0.5");
  // The printed form parses back to itself.
  auto again = ParseRule(r->ToString());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->ToString(), r->ToString());
}

TEST(RuleTest, RejectsBadRulesWithTheReason) {
  struct Case {
    const char* text;
    const char* reason;
  };
  for (const Case& c : std::vector<Case>{
           {"", "empty rule"},
           {"dst=10.0.0.1", "needs delay= or loss="},
           {"delay=10 delay=20", "given twice"},
           {"delay=-1", "between 0 and"},
           {"delay=60001", "between 0 and"},
           {"delay=1e400", "not a number"},
           {"delay=ten", "not a number"},
           {"loss=101", "between 0 and"},
           {"loss=nan", "not a number"},
           {"queue=65536 delay=1", "0..65535"},
           {"queue=-1 delay=1", "0..65535"},
           {"dst=10.0.0.300 delay=1", "not an IPv4 address"},
           {"jitter=5", "unknown key"},
           {"delay", "expected key=value"},
       }) {
    auto r = ParseRule(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_NE(r.status().message().find(c.reason), std::string::npos)
        << c.text << " -> " << r.status().message();
  }
}

TEST(RuleTest, FileSkipsCommentsAndNamesTheBadLine) {
  auto rules =
      ParseRules("# us-east\n\ndst=10.77.0.2 delay=38  # eu-west\n  dst=10.77.0.3 delay=100\n");
  ASSERT_TRUE(rules.ok()) << rules.status();
  ASSERT_EQ(rules->size(), 2u);
  EXPECT_DOUBLE_EQ((*rules)[1].delay_ms, 100);
  auto bad = ParseRules("dst=10.77.0.2 delay=38\n\ndst=10.77.0.3 delay=fast\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 3"), std::string::npos) << bad.status();
  EXPECT_FALSE(LoadRulesFile("/nonexistent/rules").ok());
}

TEST(Ipv4HeaderTest, ReadsAddressesOfIpv4Only) {
  uint8_t v4[20] = {0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 77, 0, 1, 10, 77, 0, 3};
  auto a = ParseIpv4Header(v4, sizeof v4);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->src, Ip(10, 77, 0, 1));
  EXPECT_EQ(a->dst, Ip(10, 77, 0, 3));
  EXPECT_FALSE(ParseIpv4Header(v4, 19).has_value());
  EXPECT_FALSE(ParseIpv4Header(nullptr, 0).has_value());
  uint8_t v6[40] = {0x60};
  EXPECT_FALSE(ParseIpv4Header(v6, sizeof v6).has_value());
}

Rule WithDelay(double delay_ms, double loss_pct = 0) {
  Rule r;
  r.delay_ms = delay_ms;
  r.loss_pct = loss_pct;
  return r;
}

std::vector<Rule> Rules(std::initializer_list<const char*> texts) {
  std::vector<Rule> out;
  for (const char* t : texts) out.push_back(*ParseRule(t));
  return out;
}

TEST(PolicyTest, FirstMatchingRuleWins) {
  Policy p(Rules({"queue=1 delay=5", "dst=10.77.0.2 delay=38", "dst=10.77.0.0/24 delay=60",
                  "src=10.77.0.9 delay=7"}),
           WithDelay(1), 1);
  const PacketAddrs to2{Ip(10, 77, 0, 1), Ip(10, 77, 0, 2)};
  const PacketAddrs to3{Ip(10, 77, 0, 1), Ip(10, 77, 0, 3)};
  const PacketAddrs from9{Ip(10, 77, 0, 9), Ip(10, 1, 0, 1)};
  const PacketAddrs other{Ip(192, 168, 0, 1), Ip(192, 168, 0, 2)};
  EXPECT_EQ(p.Match(1, to2), 0);  // the queue rule comes first
  EXPECT_EQ(p.Match(0, to2), 1);
  EXPECT_EQ(p.Match(0, to3), 2);
  EXPECT_EQ(p.Match(0, from9), 3);
  EXPECT_EQ(p.Match(0, other), -1);
  // Not IPv4: only rules without addresses apply.
  EXPECT_EQ(p.Match(1, std::nullopt), 0);
  EXPECT_EQ(p.Match(0, std::nullopt), -1);
}

TEST(PolicyTest, HoldsForExactlyTheRuleDelay) {
  Policy p(Rules({"dst=10.77.0.2 delay=38", "dst=10.77.0.3 delay=0.25"}), Rule{}, 1);
  const auto now = Clock::now();
  auto d = p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 2)}, now);
  EXPECT_EQ(d.kind, Decision::Kind::kHold);
  EXPECT_EQ(d.release - now, milliseconds(38));
  d = p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 3)}, now);
  EXPECT_EQ(d.kind, Decision::Kind::kHold);
  EXPECT_EQ(d.release - now, std::chrono::microseconds(250));
  // The default has no delay and no loss: accepted at once.
  d = p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 4)}, now);
  EXPECT_EQ(d.kind, Decision::Kind::kAccept);
  EXPECT_EQ(d.rule, -1);
  EXPECT_EQ(p.counters()[0].packets, 1u);
  EXPECT_EQ(p.fallback_counters().packets, 1u);
}

TEST(PolicyTest, LossRateMatchesTheSettingAndIsSeeded) {
  auto run = [](double pct, uint64_t seed) {
    Policy p({}, WithDelay(10, pct), seed);
    std::vector<bool> lost;
    for (int i = 0; i < 100000; ++i) {
      lost.push_back(p.Decide(0, std::nullopt, Clock::now()).kind == Decision::Kind::kDrop);
    }
    EXPECT_EQ(p.fallback_counters().lost,
              static_cast<uint64_t>(std::count(lost.begin(), lost.end(), true)));
    return lost;
  };
  for (double pct : {0.0, 1.0, 25.0, 100.0}) {
    auto lost = run(pct, 42);
    const double rate = 100.0 * std::count(lost.begin(), lost.end(), true) / lost.size();
    EXPECT_NEAR(rate, pct, 0.5) << "setting " << pct;
  }
  EXPECT_EQ(run(25, 7), run(25, 7));  // same seed, same drops
  EXPECT_NE(run(25, 7), run(25, 8));
}

TEST(PolicyTest, ReplaceRulesResetsCounters) {
  Policy p(Rules({"dst=10.77.0.2 delay=38"}), Rule{}, 1);
  (void)p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 2)}, Clock::now());
  p.ReplaceRules(Rules({"dst=10.77.0.2 delay=20", "dst=10.77.0.3 loss=100"}));
  ASSERT_EQ(p.counters().size(), 2u);
  EXPECT_EQ(p.counters()[0].packets, 0u);
  const auto now = Clock::now();
  auto d = p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 2)}, now);
  EXPECT_EQ(d.release - now, milliseconds(20));
  EXPECT_EQ(p.Decide(0, PacketAddrs{0, Ip(10, 77, 0, 3)}, now).kind, Decision::Kind::kDrop);
}

TEST(HoldQueueTest, ReleasesInReleaseOrderAcrossDelays) {
  HoldQueue<int> q(100);
  const auto t0 = Clock::now();
  // Packets to a far region (100 ms) and a near one (38 ms), interleaved in arrival order.
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(q.Push(t0 + milliseconds(i) + milliseconds(100), 100 + i));
    ASSERT_TRUE(q.Push(t0 + milliseconds(i) + milliseconds(38), i));
  }
  EXPECT_EQ(q.NextRelease(), t0 + milliseconds(38));
  std::vector<int> out;
  auto collect = [&](int v, Clock::time_point) { out.push_back(v); };
  EXPECT_EQ(q.PopDue(t0 + milliseconds(37), collect), 0u);
  EXPECT_EQ(q.PopDue(t0 + milliseconds(42), collect), 5u);
  EXPECT_EQ(out, (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(q.PopAll(collect), 15u);
  EXPECT_EQ(out.size(), 20u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(out[i], static_cast<int>(i));
  for (size_t i = 10; i < 20; ++i) EXPECT_EQ(out[i], static_cast<int>(90 + i));
  EXPECT_EQ(q.size(), 0u);
  EXPECT_FALSE(q.NextRelease().has_value());
}

TEST(HoldQueueTest, TiesKeepArrivalOrder) {
  HoldQueue<int> q(1000);
  const auto t = Clock::now();
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(q.Push(t, i));
  std::vector<int> out;
  q.PopDue(t, [&](int v, Clock::time_point release) {
    EXPECT_EQ(release, t);
    out.push_back(v);
  });
  ASSERT_EQ(out.size(), 500u);
  for (int i = 0; i < 500; ++i) EXPECT_EQ(out[i], i);
}

TEST(HoldQueueTest, RefusesBeyondCapacity) {
  HoldQueue<int> q(3);
  const auto t = Clock::now();
  EXPECT_TRUE(q.Push(t, 1));
  EXPECT_TRUE(q.Push(t, 2));
  EXPECT_TRUE(q.Push(t, 3));
  EXPECT_FALSE(q.Push(t, 4));
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.high_water(), 3u);
  q.PopDue(t, [](int, Clock::time_point) {});
  EXPECT_TRUE(q.Push(t, 5));
  EXPECT_EQ(q.high_water(), 3u);
  q.ResetHighWater();
  EXPECT_EQ(q.high_water(), 1u);
}

}  // namespace
}  // namespace meridian::netem
