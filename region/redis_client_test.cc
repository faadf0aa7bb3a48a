#include "region/redis_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

namespace meridian::region {
namespace {

TEST(StaleKeysTest, ListsMarkedKeysAndPastCapacityReadsEveryKeyAroundRedisForTheTtl) {
  StaleKeys stale(2, std::chrono::seconds(1));
  stale.Mark("cart:a", "1");
  stale.Mark("cart:b", "1");
  stale.Mark("cart:a", "2");  // marked again: still one entry
  EXPECT_EQ(stale.size(), 2u);
  EXPECT_TRUE(stale.IsStale("cart:a"));
  EXPECT_FALSE(stale.IsStale("cart:c"));

  stale.Mark("cart:c", "1");  // no room to list it: every key is stale for the ttl
  EXPECT_EQ(stale.size(), 2u);
  EXPECT_TRUE(stale.IsStale("cart:c"));
  EXPECT_TRUE(stale.IsStale("cart:never-written"));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_FALSE(stale.IsStale("cart:c"));
  EXPECT_TRUE(stale.IsStale("cart:b"));  // listed keys stay until retired in Redis
}

TEST(StaleKeysTest, KeysStayListedWhileTheirRetireFails) {
  StaleKeys stale(10, std::chrono::seconds(3600));
  stale.Mark("cart:a", "3");
  auto retired = stale.Repair(
      [](const std::vector<StaleKeys::Entry>&) { return absl::UnavailableError("redis down"); });
  EXPECT_TRUE(retired.empty());
  EXPECT_EQ(stale.size(), 1u);
  EXPECT_TRUE(stale.IsStale("cart:a"));
}

// A key is retired at the highest version it was marked or listed with, and a mark made while a
// retire was in flight keeps it listed.
TEST(StaleKeysTest, RetiresAtTheHighestVersionAndKeepsKeysMarkedMeanwhile) {
  StaleKeys stale(10, std::chrono::seconds(3600));
  stale.Mark("cart:a", "7");
  stale.Mark("cart:a", "5");  // an older write's failure: 7 stays
  stale.Adopt({{"cart:a", "12"}, {"product:p", "00000000000000000009"}});
  std::map<std::string, std::string> sent;
  auto retired = stale.Repair([&](const std::vector<StaleKeys::Entry>& copies) {
    for (const auto& c : copies) sent[c.key] = c.version;
    stale.Mark("product:p", "00000000000000000010");  // marked while the retire is in flight
    return absl::OkStatus();
  });
  EXPECT_EQ(retired.size(), 2u);
  EXPECT_EQ(sent["cart:a"], "12");
  EXPECT_EQ(sent["product:p"], "00000000000000000009");
  EXPECT_FALSE(stale.IsStale("cart:a"));
  EXPECT_TRUE(stale.IsStale("product:p"));
  stale.Repair([&](const std::vector<StaleKeys::Entry>& copies) {
    EXPECT_EQ(copies.size(), 1u);
    EXPECT_EQ(copies[0].version, "00000000000000000010");
    return absl::OkStatus();
  });
  EXPECT_EQ(stale.size(), 0u);
  EXPECT_FALSE(stale.IsStale("product:p"));
}

// Marks are unsaved until Saved; adopted keys are saved already; a key marked again after it was
// handed out to be saved is unsaved again.
TEST(StaleKeysTest, MarksAreUnsavedUntilSavedAndAdoptedKeysAreSaved) {
  StaleKeys stale(10, std::chrono::seconds(3600));
  stale.Mark("cart:a", "1");
  stale.Adopt({{"cart:b", "4"}});
  std::vector<StaleKeys::Entry> unsaved = stale.Unsaved(10);
  ASSERT_EQ(unsaved.size(), 1u);
  EXPECT_EQ(unsaved[0].key, "cart:a");
  stale.Mark("cart:a", "2");  // after Unsaved, before Saved
  stale.Saved(unsaved);
  unsaved = stale.Unsaved(10);
  ASSERT_EQ(unsaved.size(), 1u);
  EXPECT_EQ(unsaved[0].version, "2");
  stale.Saved(unsaved);
  EXPECT_TRUE(stale.Unsaved(10).empty());
  EXPECT_EQ(stale.size(), 2u);
}

TEST(StaleKeysTest, VersionsCompareAsNumbers) {
  EXPECT_TRUE(VersionBelow("9", "10"));
  EXPECT_FALSE(VersionBelow("10", "9"));
  EXPECT_TRUE(VersionBelow("00000000000000000009", "10"));
  EXPECT_FALSE(VersionBelow("010", "10"));
  EXPECT_FALSE(VersionBelow("10", "010"));
  EXPECT_TRUE(VersionBelow("0", "1"));
  EXPECT_FALSE(VersionBelow("000", "0"));
}

}  // namespace
}  // namespace meridian::region
