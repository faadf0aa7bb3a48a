#include "region/coordination.h"

#include <gtest/gtest.h>

#include <thread>

#include "region/leases.h"

namespace meridian::region {
namespace {

using namespace std::chrono_literals;

TEST(LeaseTable, SingleRegionOwnsItsOrdersForever) {
  LeaseTable t(1, /*managed=*/false);
  EXPECT_TRUE(t.ForGroup(1).mine);
  EXPECT_EQ(t.ForGroup(1).epoch, 1u);
  EXPECT_FALSE(t.ForGroup(2).mine);
}

TEST(LeaseTable, ManagedRegionActsOnlyWithinTheGrant) {
  LeaseTable t(1, /*managed=*/true, /*margin_ms=*/10);
  EXPECT_FALSE(t.ForGroup(1).mine) << "nothing pushed yet";
  t.Update({{1, 3, 1, true, 60}, {2, 5, 3, false, 0}});
  auto d = t.ForGroup(1);
  EXPECT_TRUE(d.mine);
  EXPECT_EQ(d.epoch, 3u);
  auto o = t.ForGroup(2);
  EXPECT_FALSE(o.mine);
  EXPECT_EQ(o.owner, 3u) << "forward to the owner";
  std::this_thread::sleep_for(60ms);
  EXPECT_FALSE(t.ForGroup(1).mine) << "expired (valid_for minus the margin)";
  // Epochs never go back.
  t.Update({{2, 4, 2, false, 0}});
  EXPECT_EQ(t.Fence(2), 5u);
  EXPECT_EQ(t.ForGroup(2).owner, 3u);
}

TEST(RightsSignals, DemandAndWaitingReachThePoll) {
  RightsSignals s;
  s.RecordDemand("kettle", 2);
  s.RecordDemand("kettle", 1);
  uint64_t t = s.StartWaiting("kettle", 3);
  auto p = s.TakeSignals(0ms);
  EXPECT_EQ(p.demand.at("kettle"), 3u);
  EXPECT_EQ(p.waiting.at("kettle"), 3u);
  s.DoneWaiting(t);
  p = s.TakeSignals(0ms);
  EXPECT_TRUE(p.demand.empty());
  EXPECT_EQ(p.waiting.at("kettle"), 0u) << "an SKU that stopped waiting is reported once as 0";
  p = s.TakeSignals(0ms);
  EXPECT_TRUE(p.waiting.empty());
}

TEST(RightsSignals, PollWakesOnDemand) {
  RightsSignals s;
  auto start = std::chrono::steady_clock::now();
  std::thread t([&] {
    std::this_thread::sleep_for(20ms);
    s.RecordDemand("kettle", 1);
  });
  auto p = s.TakeSignals(5000ms);
  t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2000ms);
  EXPECT_EQ(p.demand.at("kettle"), 1u);
}

TEST(RightsSignals, WaitingCheckoutWakesOnStockChangeOrDeadline) {
  RightsSignals s;
  const uint64_t v = s.StockVersion();
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(s.WaitForStockChange(v, start + 30ms), v);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    s.StockChanged();
  });
  EXPECT_GT(s.WaitForStockChange(v, std::chrono::steady_clock::now() + 5000ms), v);
  t.join();
}

TEST(PeerAcks, WaitsForAnAllowedPeer) {
  PeerAcks a;
  using Peers = std::vector<uint32_t>;
  auto deadline = std::chrono::steady_clock::now() + 50ms;
  EXPECT_EQ(a.WaitFor(
                {{"shard-0-x", 5}}, [](uint32_t) { return true; }, 1, deadline),
            Peers{});
  a.Update("shard-0-x", 3, 9);  // not allowed (e.g. another jurisdiction)
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    a.Update("shard-0-x", 2, 5);
  });
  EXPECT_EQ(a.WaitFor(
                {{"shard-0-x", 5}}, [](uint32_t p) { return p == 2; }, 1,
                std::chrono::steady_clock::now() + 5000ms),
            Peers{2});
  t.join();
  a.Update("shard-0-x", 2, 4);  // never goes back
  EXPECT_EQ(a.Snapshot().at("shard-0-x").at(2), 5);
  EXPECT_EQ(a.WaitFor(
                {}, [](uint32_t) { return true; }, 1, deadline),
            Peers{});
}

// A checkout's order event and its stock take travel on two streams (the shard's and the global
// database's): the peer that answers for it must have both.
TEST(PeerAcks, OnePeerMustHaveAcknowledgedEveryMark) {
  PeerAcks a;
  using Peers = std::vector<uint32_t>;
  const std::vector<PeerAcks::Mark> both = {{"shard-0-x", 7}, {"global-y", 3}};
  auto all = [](uint32_t) { return true; };
  a.Update("shard-0-x", 2, 7);  // peer 2 has the order event, not the take
  a.Update("global-y", 3, 3);   // peer 3 has the take, not the order event
  EXPECT_EQ(a.WaitFor(both, all, 1, std::chrono::steady_clock::now() + 50ms), Peers{});
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    a.Update("global-y", 2, 4);
  });
  EXPECT_EQ(a.WaitFor(both, all, 1, std::chrono::steady_clock::now() + 5000ms), Peers{2});
  t.join();
  EXPECT_EQ(
      a.WaitFor(
          both, [](uint32_t p) { return p == 3; }, 1, std::chrono::steady_clock::now() + 50ms),
      Peers{});
}

// With five regions a write survives the region's loss only once two peers hold it: one peer
// is not in every takeover quorum.
TEST(PeerAcks, WaitsForAsManyPeersAsNeeded) {
  PeerAcks a;
  using Peers = std::vector<uint32_t>;
  auto all = [](uint32_t) { return true; };
  a.Update("shard-0-x", 4, 8);
  EXPECT_EQ(a.WaitFor({{"shard-0-x", 8}}, all, 2, std::chrono::steady_clock::now() + 50ms),
            Peers{});
  a.Update("shard-0-x", 2, 7);  // behind
  EXPECT_EQ(a.WaitFor({{"shard-0-x", 8}}, all, 2, std::chrono::steady_clock::now() + 50ms),
            Peers{});
  std::thread t([&] {
    std::this_thread::sleep_for(10ms);
    a.Update("shard-0-x", 2, 8);
  });
  EXPECT_EQ(a.WaitFor({{"shard-0-x", 8}}, all, 2, std::chrono::steady_clock::now() + 5000ms),
            (Peers{2, 4}));
  t.join();
  EXPECT_EQ(a.WaitFor(
                {{"shard-0-x", 8}}, [](uint32_t p) { return p != 4; }, 2,
                std::chrono::steady_clock::now() + 50ms),
            Peers{});
}

}  // namespace
}  // namespace meridian::region
