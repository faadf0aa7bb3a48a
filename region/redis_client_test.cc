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

}  // namespace
}  // namespace meridian::region
