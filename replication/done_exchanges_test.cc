#include "replication/done_exchanges.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/temp_dir_test.h"

namespace meridian::replication {
namespace {

class DoneExchangesTest : public test_support::TempDirTest {
 protected:
  std::string Path() const { return dir_ + "/done-exchanges"; }
  std::string Text() const {
    std::ifstream in(Path());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

TEST_F(DoneExchangesTest, AnExchangeCoversTheStreamsItWasAboutWithThatPeerOnly) {
  DoneExchanges d;
  std::string warning;
  ASSERT_TRUE(d.Load("", &warning).ok());
  EXPECT_FALSE(d.Covers(3, 2, {"a1"}));
  ASSERT_TRUE(d.Record(3, 2, {"a1", "a2"}).ok());
  EXPECT_TRUE(d.Covers(3, 2, {"a1"}));
  EXPECT_TRUE(d.Covers(3, 2, {"a2", "a1"}));
  EXPECT_FALSE(d.Covers(3, 2, {"a1", "a3"}));  // a later rebuild's stream
  EXPECT_FALSE(d.Covers(3, 1, {"a1"}));        // another peer
  EXPECT_FALSE(d.Covers(2, 2, {"a1"}));        // another lost region
  EXPECT_FALSE(d.Covers(3, 2, {}));            // nothing to cover: not done
}

TEST_F(DoneExchangesTest, EntriesOutliveTheProcess) {
  {
    DoneExchanges d;
    std::string warning;
    ASSERT_TRUE(d.Load(Path(), &warning).ok());  // no file yet
    EXPECT_EQ(warning, "");
    ASSERT_TRUE(d.Record(3, 2, {"shard-1", "global"}).ok());
    ASSERT_TRUE(d.Record(3, 1, {"global"}).ok());
  }
  EXPECT_EQ(Text(), "meridian-done-exchanges 1\n3 1 global\n3 2 global\n3 2 shard-1\n");
  EXPECT_FALSE(std::filesystem::exists(Path() + ".tmp"));
  DoneExchanges again;
  std::string warning;
  ASSERT_TRUE(again.Load(Path(), &warning).ok());
  EXPECT_EQ(warning, "");
  EXPECT_TRUE(again.Covers(3, 2, {"global", "shard-1"}));
  EXPECT_TRUE(again.Covers(3, 1, {"global"}));
  EXPECT_FALSE(again.Covers(3, 1, {"shard-1"}));
}

// A damaged file is not trusted in part: every exchange runs again (the safe side), said once.
TEST_F(DoneExchangesTest, ADamagedFileIsNotUsed) {
  for (const std::string& text :
       {std::string("something else\n3 2 global\n"),
        std::string("meridian-done-exchanges 1\n3 2\n"),
        std::string("meridian-done-exchanges 1\n3 2 global\n0 2 global\n"),
        std::string("meridian-done-exchanges 1\n3 2 Global\n"),
        std::string("meridian-done-exchanges 1\n3 x global\n")}) {
    std::ofstream(Path()) << text;
    DoneExchanges d;
    std::string warning;
    ASSERT_TRUE(d.Load(Path(), &warning).ok());
    EXPECT_NE(warning, "") << text;
    EXPECT_NE(warning.find(Path()), std::string::npos) << warning;
    EXPECT_FALSE(d.Covers(3, 2, {"global"})) << text;
    // A record then writes a good file again.
    ASSERT_TRUE(d.Record(3, 2, {"shard-2"}).ok());
    EXPECT_EQ(Text(), "meridian-done-exchanges 1\n3 2 shard-2\n");
  }
}

TEST_F(DoneExchangesTest, AFileThatCannotBeWrittenKeepsTheEntriesInMemory) {
  std::filesystem::create_directories(Path());  // a folder where the file goes
  DoneExchanges d;
  std::string warning;
  EXPECT_FALSE(d.Load(Path(), &warning).ok());  // cannot be read
  EXPECT_FALSE(d.Record(3, 2, {"global"}).ok());
  EXPECT_TRUE(d.Covers(3, 2, {"global"}));
  EXPECT_TRUE(d.Record(3, 2, {"global"}).ok());  // nothing new: nothing to write
}

}  // namespace
}  // namespace meridian::replication
