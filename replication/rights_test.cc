#include "replication/rights.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <vector>

namespace meridian::replication {
namespace {

class ManualClock final : public Clock {
 public:
  int64_t NowMs() const override { return now; }
  int64_t now = 1000;
};

struct Harness {
  explicit Harness(RightsConfig cfg = {}) {
    rm = std::make_unique<RightsManager>(
        1, std::vector<RegionId>{2, 3}, cfg, &clock,
        [this](RegionId to, const RightsMessage& m) { sent.emplace_back(to, m); },
        [this](const std::string& sku) -> std::optional<SkuRights> {
          auto it = views.find(sku);
          if (it == views.end()) return std::nullopt;
          return it->second;
        });
  }
  // Executes grants as the host would: our rights go down, `given` goes up.
  void Execute(const std::vector<RightsManager::Grant>& grants) {
    for (const auto& g : grants) {
      views[g.sku].rights -= static_cast<int64_t>(g.units);
      views[g.sku].given[g.to] += g.units;
    }
  }
  RightsGossip::Entry Entry(std::string sku, int64_t rights, double demand, uint64_t waiting = 0,
                            uint64_t received_from_us = 0) {
    RightsGossip::Entry e;
    e.sku = std::move(sku);
    e.rights = rights;
    e.demand_per_s = demand;
    e.waiting = waiting;
    if (received_from_us) e.received[1] = received_from_us;
    return e;
  }
  uint64_t Total(const std::vector<RightsManager::Grant>& grants, RegionId to) {
    uint64_t n = 0;
    for (const auto& g : grants)
      if (g.to == to) n += g.units;
    return n;
  }

  ManualClock clock;
  std::map<std::string, SkuRights> views;
  std::vector<std::pair<RegionId, RightsMessage>> sent;
  std::unique_ptr<RightsManager> rm;
};

TEST(RightsConfig, ValidatesFields) {
  EXPECT_TRUE(RightsConfig{}.Validate().ok());
  RightsConfig c;
  c.gossip_interval_ms = 1;
  EXPECT_NE(c.Validate().message().find("gossip_interval_ms"), std::string::npos);
  c = RightsConfig{};
  c.info_ttl_ms = 150;
  EXPECT_NE(c.Validate().message().find("info_ttl_ms"), std::string::npos);
  c = RightsConfig{};
  c.tte_ratio = 0.5;
  EXPECT_NE(c.Validate().message().find("tte_ratio"), std::string::npos);
}

TEST(Rights, UrgentRequestIsAnsweredFromSpareRights) {
  Harness h;
  h.views["kettle"].rights = 20;
  h.rm->OnMessage(2, RightsRequest{"kettle", 5});
  auto grants = h.rm->Tick();
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0], (RightsManager::Grant{"kettle", 2, 5, true}));
}

// Waiting checkouts are answered even from our reserve; above it, the peer also gets its own
// expected demand over lead_ms, so its next checkouts need no second round trip.
TEST(Rights, UrgentRequestsTakeTheReserveAndTopUpFromSpare) {
  Harness h;
  h.views["kettle"].rights = 4;
  for (int i = 0; i < 40; ++i) h.rm->RecordDemand("kettle", 1);  // ~14/s: reserve 5
  h.rm->OnMessage(2, RightsRequest{"kettle", 3});
  auto grants = h.rm->Tick();
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0], (RightsManager::Grant{"kettle", 2, 3, true})) << "all three, no top-up";

  Harness g;
  g.views["kettle"].rights = 100;
  g.rm->OnMessage(2, RightsGossip{{g.Entry("kettle", 0, 40)}});  // 40/s: 12 units per 300 ms
  g.rm->OnMessage(2, RightsRequest{"kettle", 2});
  grants = g.rm->Tick();
  EXPECT_EQ(g.Total(grants, 2), 14u) << "2 waiting + 12 expected; the rest at the next tick";

  Harness k;
  k.views["kettle"].rights = 30;
  for (int i = 0; i < 40; ++i) k.rm->RecordDemand("kettle", 1);
  k.rm->OnMessage(2, RightsGossip{{k.Entry("kettle", 0, 40)}});
  k.rm->OnMessage(2, RightsRequest{"kettle", 2});
  grants = k.rm->Tick();
  ASSERT_FALSE(grants.empty());
  EXPECT_TRUE(grants[0].urgent);
  EXPECT_EQ(grants[0].units, 2u + 12u) << "2 waiting + 12 expected over 300 ms";
}

TEST(Rights, OwnWaitersComeFirst) {
  Harness h;
  h.views["kettle"].rights = 3;
  h.rm->SetWaiting("kettle", 4);
  h.rm->OnMessage(2, RightsRequest{"kettle", 5});
  EXPECT_TRUE(h.rm->Tick().empty());
}

TEST(Rights, RightsMoveTowardWhoRunsOutFirst) {
  Harness h;
  h.views["kettle"].rights = 100;
  for (int i = 0; i < 10; ++i) h.rm->RecordDemand("kettle", 1);
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 45)}});
  h.rm->OnMessage(3, RightsGossip{{h.Entry("kettle", 0, 0)}});
  auto grants = h.rm->Tick();
  // Our rate is ~10 units decayed over a 2 s half-life: ~3.5/s; region 2 sells 45/s and has
  // none: equal times to exhaustion leave us ~7 of 100 (and at least our 300 ms reserve).
  const uint64_t to2 = h.Total(grants, 2);
  EXPECT_GE(to2, 88u);
  EXPECT_LE(to2, 95u);
  EXPECT_EQ(h.Total(grants, 3), 0u) << "region 3 has no demand";
  h.Execute(grants);

  // The grant is in flight: region 2's next gossip has not seen it, so nothing more is sent.
  h.clock.now += 200;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 45)}});
  EXPECT_TRUE(h.rm->Tick().empty());
  // Once it arrived, region 2 reports it; still nothing (times to exhaustion are equal).
  h.clock.now += 200;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", static_cast<int64_t>(to2), 45, 0, to2)}});
  EXPECT_TRUE(h.rm->Tick().empty());
}

TEST(Rights, NoMovesWhenEveryoneHasTimeLeft) {
  Harness h;
  h.views["kettle"].rights = 1000;
  for (int i = 0; i < 10; ++i) h.rm->RecordDemand("kettle", 1);
  // Region 2 sells 1/s and holds 300: 300 s to go, beyond the 10 s horizon.
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 300, 1)}});
  EXPECT_TRUE(h.rm->Tick().empty());
}

TEST(Rights, ARegionWithoutDemandGivesAllItHas) {
  Harness h;
  h.views["kettle"].rights = 7;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 5)}});
  EXPECT_EQ(h.Total(h.rm->Tick(), 2), 7u);
}

TEST(Rights, NoDemandNoMoves) {
  Harness h;
  h.views["kettle"].rights = 100;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 0)}});
  EXPECT_TRUE(h.rm->Tick().empty());
}

TEST(Rights, GrantsAreRateLimited) {
  RightsConfig cfg;
  cfg.grant_cooldown_ms = 500;
  Harness h(cfg);
  h.views["kettle"].rights = 100;
  h.rm->OnMessage(2, RightsRequest{"kettle", 1});
  h.Execute(h.rm->Tick());
  h.clock.now += 10;
  h.rm->OnMessage(2, RightsRequest{"kettle", 50});
  EXPECT_TRUE(h.rm->Tick().empty());
  h.clock.now += 500;
  h.rm->OnMessage(2, RightsRequest{"kettle", 50});
  EXPECT_EQ(h.Total(h.rm->Tick(), 2), 50u);
}

TEST(Rights, StaleInformationIsIgnored) {
  Harness h;
  h.views["kettle"].rights = 100;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 50, 10)}});
  h.clock.now += 10000;
  EXPECT_TRUE(h.rm->Tick().empty());
}

// A region that died gossiped its demand (and its waiting checkouts) until its last moment, and
// that gossip is still fresh: an away peer gets nothing, the others get what they would have,
// and once it is back its information counts again.
TEST(Rights, APeerThatIsAwayGetsNothing) {
  Harness h;
  h.views["kettle"].rights = 30;
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 50, 10)}});
  h.rm->OnMessage(2, RightsRequest{"kettle", 10});
  h.rm->SetAway({2});
  EXPECT_TRUE(h.rm->Tick().empty());
  h.rm->OnMessage(3, RightsGossip{{h.Entry("kettle", 0, 5)}});
  EXPECT_EQ(h.Total(h.rm->Tick(), 3), 30u);
  h.rm->SetAway({});
  h.clock.now += 100;
  h.views["kettle"].rights = 30;
  EXPECT_GE(h.Total(h.rm->Tick(), 2), 10u);
}

TEST(Rights, MalformedGossipIsDropped) {
  Harness h;
  h.views["kettle"].rights = 100;
  RightsGossip g;
  g.entries.push_back(h.Entry("", 0, 50, 10));
  g.entries.push_back(h.Entry(std::string(300, 'x'), 0, 50, 10));
  g.entries.push_back(h.Entry("kettle", 0, std::numeric_limits<double>::quiet_NaN(), 10));
  g.entries.push_back(h.Entry("kettle", 0, -5, 10));
  h.rm->OnMessage(2, g);
  h.rm->OnMessage(9, RightsRequest{"kettle", 10});  // not a peer
  h.rm->OnMessage(2, RightsRequest{"kettle", uint64_t{1} << 50});
  EXPECT_TRUE(h.rm->Tick().empty());
  // Counts beyond any stock (the grant arithmetic is int64): waiting, then received.
  h.rm->OnMessage(2, RightsGossip{{h.Entry("kettle", 0, 50, uint64_t{1} << 63)}});
  EXPECT_TRUE(h.rm->Tick().empty());
  h.rm->OnMessage(3, RightsGossip{{h.Entry("kettle", 0, 50, 10, uint64_t{1} << 63)}});
  EXPECT_TRUE(h.rm->Tick().empty());
}

TEST(Rights, GossipCarriesRightsDemandWaitingAndReceived) {
  Harness h;
  h.views["kettle"].rights = 7;
  h.views["kettle"].received[2] = 3;
  h.rm->RecordDemand("kettle", 2);
  h.rm->SetWaiting("kettle", 4);  // also sends an urgent request to both peers
  ASSERT_EQ(h.sent.size(), 2u);
  EXPECT_EQ(std::get<RightsRequest>(h.sent[0].second), (RightsRequest{"kettle", 4}));
  h.sent.clear();
  (void)h.rm->Tick();
  ASSERT_EQ(h.sent.size(), 2u);
  const auto& g = std::get<RightsGossip>(h.sent[0].second);
  ASSERT_EQ(g.entries.size(), 1u);
  EXPECT_EQ(g.entries[0].rights, 7);
  EXPECT_EQ(g.entries[0].waiting, 4u);
  EXPECT_EQ(g.entries[0].received.at(2), 3u);
  EXPECT_GT(g.entries[0].demand_per_s, 0);
  // Not again before the interval.
  h.sent.clear();
  h.clock.now += 10;
  (void)h.rm->Tick();
  EXPECT_TRUE(h.sent.empty());
}

// Whatever peers say, one Tick never gives away more than this region holds.
RC_GTEST_PROP(RightsProperty, NeverGivesMoreThanHeld, ()) {
  Harness h;
  const auto rights = *rc::gen::inRange<int64_t>(-5, 500);
  h.views["s"].rights = rights;
  const auto demand = *rc::gen::inRange(0, 50);
  for (int i = 0; i < demand; ++i) h.rm->RecordDemand("s", 1);
  for (RegionId p : {RegionId{2}, RegionId{3}}) {
    h.rm->OnMessage(p, RightsGossip{{h.Entry("s", *rc::gen::inRange<int64_t>(-10, 500),
                                             *rc::gen::inRange(0, 1000) / 10.0,
                                             *rc::gen::inRange<uint64_t>(0, 300))}});
    if (*rc::gen::arbitrary<bool>()) {
      h.rm->OnMessage(p, RightsRequest{"s", *rc::gen::inRange<uint64_t>(0, 1000)});
    }
  }
  uint64_t total = 0;
  for (const auto& g : h.rm->Tick()) {
    RC_ASSERT(g.units > 0u);
    RC_ASSERT(g.to != 1u);
    total += g.units;
  }
  RC_ASSERT(static_cast<int64_t>(total) <= std::max<int64_t>(rights, 0));
}

}  // namespace
}  // namespace meridian::replication
