#include "replication/recent_keys.h"

#include <gtest/gtest.h>

namespace meridian::replication {
namespace {

using Keys = std::vector<std::pair<uint32_t, std::string>>;

Keys Between(const RecentKeys& r, int64_t after, int64_t through, bool* ok) {
  Keys out;
  *ok = r.KeysBetween("s", after, through, &out);
  return out;
}

TEST(RecentKeysTest, ListsTheKeysOfTheRecordsPastAMark) {
  RecentKeys r;
  r.Applied("s", 1, 5, {{2, 1, "ann"}, {4, 3, "o1"}});
  r.Applied("s", 6, 9, {{6, 1, "bo"}, {9, 1, "ann"}});
  bool ok = false;
  EXPECT_EQ(Between(r, 0, 9, &ok), (Keys{{1, "ann"}, {3, "o1"}, {1, "bo"}, {1, "ann"}}));
  EXPECT_TRUE(ok);
  EXPECT_EQ(Between(r, 4, 9, &ok), (Keys{{1, "bo"}, {1, "ann"}}));
  EXPECT_TRUE(ok);
  EXPECT_EQ(Between(r, 6, 8, &ok), Keys{});  // 7 and 8 were not for this region
  EXPECT_TRUE(ok);
  EXPECT_TRUE(Between(r, 9, 9, &ok).empty());
  EXPECT_TRUE(ok);
  EXPECT_TRUE(Between(r, 20, 3, &ok).empty());  // nothing asked
  EXPECT_TRUE(ok);
  EXPECT_TRUE(r.KeysBetween("other stream", 4, 4, nullptr));
}

TEST(RecentKeysTest, RefusesWhatItDoesNotCover) {
  RecentKeys r;
  Keys out{{9, "kept"}};
  EXPECT_FALSE(r.KeysBetween("s", 0, 1, &out));  // never heard of
  r.Applied("s", 11, 20, {{12, 1, "a"}});
  EXPECT_FALSE(r.KeysBetween("s", 5, 20, &out));   // before the first call of this process
  EXPECT_FALSE(r.KeysBetween("s", 10, 21, &out));  // past the last applied
  EXPECT_EQ(out, (Keys{{9, "kept"}}));             // unchanged when refused
  EXPECT_TRUE(r.KeysBetween("s", 10, 20, &out));
  EXPECT_EQ(out, (Keys{{9, "kept"}, {1, "a"}}));
}

TEST(RecentKeysTest, ResendsAreListedOnceAndAHoleStartsOver) {
  RecentKeys r;
  r.Applied("s", 1, 3, {{1, 1, "a"}, {3, 1, "b"}});
  r.Applied("s", 1, 4, {{1, 1, "a"}, {3, 1, "b"}, {4, 1, "c"}});  // a resend after a reconnect
  bool ok = false;
  EXPECT_EQ(Between(r, 0, 4, &ok), (Keys{{1, "a"}, {1, "b"}, {1, "c"}}));
  EXPECT_TRUE(ok);
  r.Applied("s", 10, 12, {{11, 1, "d"}});  // 5..9 never applied here
  Between(r, 4, 12, &ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(Between(r, 9, 12, &ok), (Keys{{1, "d"}}));
  EXPECT_TRUE(ok);
}

TEST(RecentKeysTest, TheOldestGoFirstAndRaiseTheFloor) {
  RecentKeys r(3);
  for (int64_t seq = 1; seq <= 5; ++seq) r.Applied("s", seq, seq, {{seq, 1, std::to_string(seq)}});
  bool ok = false;
  Between(r, 1, 5, &ok);
  EXPECT_FALSE(ok);  // 2 is gone
  EXPECT_EQ(Between(r, 2, 5, &ok), (Keys{{1, "3"}, {1, "4"}, {1, "5"}}));
  EXPECT_TRUE(ok);
}

TEST(RecentKeysTest, AStateTransferForgetsUntilItsEnd) {
  RecentKeys r;
  r.Applied("s", 1, 3, {{2, 1, "a"}});
  r.StateApplied("s", 0);
  bool ok = true;
  Between(r, 0, 3, &ok);
  EXPECT_FALSE(ok);
  r.StateApplied("s", 50);
  Between(r, 40, 50, &ok);
  EXPECT_FALSE(ok);  // the documents carry no seqs
  r.Applied("s", 51, 52, {{52, 1, "z"}});
  EXPECT_EQ(Between(r, 50, 52, &ok), (Keys{{1, "z"}}));
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace meridian::replication
