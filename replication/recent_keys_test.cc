#include "replication/recent_keys.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "tests/support/temp_dir.h"

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
  r.StateApplied("s", 0, false);
  bool ok = true;
  Between(r, 0, 3, &ok);
  EXPECT_FALSE(ok);
  r.StateApplied("s", 50, true);
  Between(r, 40, 50, &ok);
  EXPECT_FALSE(ok);  // the documents carry no seqs
  r.Applied("s", 51, 52, {{52, 1, "z"}});
  EXPECT_EQ(Between(r, 50, 52, &ok), (Keys{{1, "z"}}));
  EXPECT_TRUE(ok);
}

class PersistedRecentKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = test_support::MakeTempDir("recent-keys", "");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    path_ = dir_ + "/recent-keys-2.log";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A RecentKeys loaded from the file; *warning gets what Persist warned.
  std::unique_ptr<RecentKeys> Open(size_t per_stream = 50000, std::string* warning = nullptr) {
    auto r = std::make_unique<RecentKeys>(per_stream);
    std::string w;
    absl::Status st = r->Persist(path_, &w);
    EXPECT_TRUE(st.ok()) << st;
    if (warning) *warning = w;
    return r;
  }
  // Applies seqs [first, last] of stream "s", one call and one record, "key-<seq>", each.
  static void ApplyEach(RecentKeys& r, int64_t first, int64_t last) {
    for (int64_t seq = first; seq <= last; ++seq) {
      r.Applied("s", seq, seq, {{seq, 1, "key-" + std::to_string(seq)}});
    }
  }
  // What ApplyEach lists for seqs [first, last].
  static Keys KeysOf(int64_t first, int64_t last) {
    Keys out;
    for (int64_t seq = first; seq <= last; ++seq) out.emplace_back(1, "key-" + std::to_string(seq));
    return out;
  }
  std::string Contents() const {
    std::ifstream in(path_, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  void SetContents(const std::string& data) const {
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << data;
  }

  std::string dir_, path_;
};

// A transfer from a peer whose outbox never took a record ends at 0: the listing is complete from
// there (the peer's first records are listed from seq 1), also when loaded from the file.
TEST_F(PersistedRecentKeysTest, AStateTransferEndingAtZeroListsFromTheStart) {
  {
    auto r = Open();
    r->StateApplied("s", 0, false);
    r->StateApplied("s", 0, true);
    ApplyEach(*r, 1, 2);
    bool ok = false;
    EXPECT_EQ(Between(*r, 0, 2, &ok), KeysOf(1, 2));
    EXPECT_TRUE(ok);
  }
  auto again = Open();
  bool ok = false;
  EXPECT_EQ(Between(*again, 0, 2, &ok), KeysOf(1, 2));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, ARestartedProcessKnowsWhatTheOneBeforeApplied) {
  {
    auto r = Open();
    r->Applied("s", 1, 5, {{2, 1, "ann"}, {4, 3, "o1"}});
    r->Applied("t", 1, 2, {{1, 1, "x"}});
    r->StateApplied("t", 0, false);  // a state transfer of t under way
    r->Applied("s", 6, 9, {{6, 1, "bo"}, {9, 1, "ann"}});
  }
  auto r = Open();
  bool ok = false;
  EXPECT_EQ(Between(*r, 0, 9, &ok), (Keys{{1, "ann"}, {3, "o1"}, {1, "bo"}, {1, "ann"}}));
  EXPECT_TRUE(ok);
  Keys out;
  EXPECT_FALSE(r->KeysBetween("t", 0, 2, &out));   // forgotten by the transfer
  EXPECT_FALSE(r->KeysBetween("s", 0, 10, &out));  // past what was applied
  // It goes on where the file ends, and the next process sees that too.
  r->Applied("s", 10, 10, {{10, 1, "cy"}});
  r.reset();
  r = Open();
  EXPECT_EQ(Between(*r, 8, 10, &ok), (Keys{{1, "ann"}, {1, "cy"}}));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, TheFileIsRewrittenOnceItHoldsTwiceTheListing) {
  size_t biggest = 0;
  {
    auto r = Open(100);
    for (int64_t seq = 1; seq <= 30000; ++seq) {
      ApplyEach(*r, seq, seq);
      biggest = std::max<size_t>(biggest, std::filesystem::file_size(path_));
      if (seq % 1000 == 0) r->WaitForRewrite();
    }
  }
  // Entries of up to 59 bytes here, each with one record: without rewrites the file would reach
  // 30,000 of them (1.8 MB). A rewrite starts once records plus entries pass 2 x 100 + 10,000
  // (5,101 entries), and up to 999 more come before the loop waits for it.
  EXPECT_LT(biggest, 6100u * 59 + 4000);
  auto r = Open(100);
  bool ok = false;
  Between(*r, 29899, 30000, &ok);
  EXPECT_FALSE(ok);  // 29,900 went with the oldest, as in the process before
  EXPECT_EQ(Between(*r, 29900, 30000, &ok), KeysOf(29901, 30000));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, EntriesLoggedDuringARewriteAreKept) {
  {
    auto r = Open(100);
    // The 5,101st call starts a rewrite (records plus entries past 2 x 100 + 10,000); the next 50
    // come while it replays those 5,101 entries.
    ApplyEach(*r, 1, 5151);
    r->WaitForRewrite();
  }
  EXPECT_LT(std::filesystem::file_size(path_), 100u * 59);  // rewritten: 100 keys, 51 entries
  auto r = Open(100);
  bool ok = false;
  EXPECT_EQ(Between(*r, 5051, 5151, &ok), KeysOf(5052, 5151));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, ALongListingIsRewrittenInSeveralEntries) {
  {
    auto r = Open(25000);
    // 30,001 calls of one record each: records plus entries pass 2 x 25,000 + 10,000.
    ApplyEach(*r, 1, 30001);
    r->WaitForRewrite();
  }
  std::string warning;
  auto r = Open(25000, &warning);
  EXPECT_EQ(warning, "");
  bool ok = false;
  Between(*r, 5000, 30001, &ok);
  EXPECT_FALSE(ok);
  EXPECT_EQ(Between(*r, 5001, 30001, &ok), KeysOf(5002, 30001));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, EntriesWithoutRecordsCountTowardsARewriteToo) {
  {
    auto r = Open(100);
    r->Applied("s", 1, 1, {{1, 1, "a"}});
    // Ranges whose records residency kept from this region: entries without records.
    for (int64_t seq = 2; seq <= 20001; ++seq) r->Applied("s", seq, seq, {});
    r->WaitForRewrite();
  }
  EXPECT_LT(std::filesystem::file_size(path_), 10300u * 40);  // 40 B an entry, 20,000 of them
  auto r = Open(100);
  bool ok = false;
  EXPECT_EQ(Between(*r, 0, 20001, &ok), (Keys{{1, "a"}}));
  EXPECT_TRUE(ok);
}

TEST_F(PersistedRecentKeysTest, ADamagedEntryEndsWhatIsLoadedAndTheFileIsCutThere) {
  {
    auto r = Open();
    r->Applied("s", 1, 1, {{1, 1, "a"}});
    r->Applied("s", 2, 2, {{2, 1, "b"}});
    r->Applied("s", 3, 3, {{3, 1, "c"}});
  }
  const std::string whole = Contents();
  // A torn last entry (a crash in the middle of a write): the first two load.
  SetContents(whole.substr(0, whole.size() - 3));
  std::string warning;
  auto r = Open(50000, &warning);
  EXPECT_NE(warning.find("damaged entry"), std::string::npos) << warning;
  bool ok = false;
  EXPECT_EQ(Between(*r, 0, 2, &ok), (Keys{{1, "a"}, {1, "b"}}));
  EXPECT_TRUE(ok);
  Between(*r, 0, 3, &ok);
  EXPECT_FALSE(ok);
  r->Applied("s", 3, 3, {{3, 1, "c2"}});  // appended after the cut, so it loads next time
  r.reset();
  r = Open(50000, &warning);
  EXPECT_EQ(warning, "");
  EXPECT_EQ(Between(*r, 2, 3, &ok), (Keys{{1, "c2"}}));
  EXPECT_TRUE(ok);
  r.reset();

  // A flipped byte in the middle entry's key fails its checksum: only the first loads.
  std::string flipped = Contents();
  size_t at = flipped.find('b');
  ASSERT_NE(at, std::string::npos);
  flipped[at] = 'B';
  SetContents(flipped);
  r = Open(50000, &warning);
  EXPECT_NE(warning.find("damaged entry"), std::string::npos) << warning;
  EXPECT_EQ(Between(*r, 0, 1, &ok), (Keys{{1, "a"}}));
  EXPECT_TRUE(ok);
  Between(*r, 0, 2, &ok);
  EXPECT_FALSE(ok);
}

TEST_F(PersistedRecentKeysTest, AFileOfAnotherFormatIsSetAside) {
  SetContents("not a listing\n");
  std::string warning;
  auto r = Open(50000, &warning);
  EXPECT_NE(warning.find("set aside"), std::string::npos) << warning;
  std::ifstream aside(path_ + ".bad");
  std::string line;
  std::getline(aside, line);
  EXPECT_EQ(line, "not a listing");
  Keys out;
  EXPECT_FALSE(r->KeysBetween("s", 0, 1, &out));
  r->Applied("s", 1, 1, {{1, 1, "a"}});
  r.reset();
  r = Open(50000, &warning);
  EXPECT_EQ(warning, "");
  EXPECT_TRUE(r->KeysBetween("s", 0, 1, &out));
}

TEST_F(PersistedRecentKeysTest, AFileThatCannotBeWrittenIsAnError) {
  RecentKeys r;
  std::string warning;
  absl::Status st = r.Persist(dir_ + "/no-such-dir/recent-keys-2.log", &warning);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no-such-dir"), std::string::npos) << st;
  r.Applied("s", 1, 1, {{1, 1, "a"}});  // the listing works in memory all the same
  Keys out;
  EXPECT_TRUE(r.KeysBetween("s", 0, 1, &out));
}

}  // namespace
}  // namespace meridian::replication
