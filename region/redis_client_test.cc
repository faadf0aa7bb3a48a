#include "region/redis_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace meridian::region {
namespace {

TEST(StaleKeysTest, ListsMarkedKeysAndPastCapacityReadsEveryKeyAroundRedisForTheTtl) {
  StaleKeys stale(2, std::chrono::seconds(1));
  stale.Mark("cart:a");
  stale.Mark("cart:b");
  stale.Mark("cart:a");  // marked again: still one entry
  EXPECT_EQ(stale.size(), 2u);
  EXPECT_TRUE(stale.IsStale("cart:a"));
  EXPECT_FALSE(stale.IsStale("cart:c"));

  stale.Mark("cart:c");  // no room to list it: every key is stale for the ttl
  EXPECT_EQ(stale.size(), 2u);
  EXPECT_TRUE(stale.IsStale("cart:c"));
  EXPECT_TRUE(stale.IsStale("cart:never-written"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_FALSE(stale.IsStale("cart:c"));
  EXPECT_TRUE(stale.IsStale("cart:b"));  // listed keys stay until deleted from Redis
}

TEST(StaleKeysTest, KeysStayListedWhileRedisCannotDeleteThem) {
  // Port 1 on loopback: nothing listens, every command fails at once.
  RedisClient redis({.host = "127.0.0.1", .port = 1, .timeout_ms = 50});
  StaleKeys stale(10, std::chrono::seconds(3600));
  stale.Mark("cart:a");
  EXPECT_EQ(stale.Repair(redis), 1u);
  EXPECT_TRUE(stale.IsStale("cart:a"));
}

TEST(HotCartWritersTest, AWriterInFlightLearnsOfANewerVersionAPeerCommitted) {
  HotCartWriters writers;
  // Committed version 2 before the peer's apply committed 3, and stores its copy after the
  // apply deleted the cart's: the copy lacks the peer's lines.
  auto slow = writers.Enter("u1");
  writers.Retire({{"u1", 3}, {"u2", 7}});
  EXPECT_TRUE(slow->Stored(2));
  EXPECT_EQ(writers.in_flight(), 0u);
  // The same writer with version 4 committed after the apply: its copy holds the peer's lines.
  auto after = writers.Enter("u1");
  writers.Retire({{"u1", 3}});
  EXPECT_FALSE(after->Stored(4));
  // No writer in flight: nothing is kept for a later writer.
  writers.Retire({{"u1", 9}});
  EXPECT_FALSE(writers.Enter("u1")->Stored(5));
  EXPECT_EQ(writers.in_flight(), 0u);
}

TEST(HotCartWritersTest, TwoWritersOfOneCartEachCompareTheirOwnVersion) {
  HotCartWriters writers;
  auto first = writers.Enter("u1");
  auto second = writers.Enter("u1");
  writers.Retire({{"u1", 3}});
  EXPECT_TRUE(first->Stored(2));  // committed before the peer
  EXPECT_EQ(writers.in_flight(), 1u);
  EXPECT_FALSE(second->Stored(4));  // committed after it
  EXPECT_EQ(writers.in_flight(), 0u);
  {
    auto failed = writers.Enter("u1");  // its transaction failed: it leaves storing nothing
  }
  EXPECT_EQ(writers.in_flight(), 0u);
}

}  // namespace
}  // namespace meridian::region
