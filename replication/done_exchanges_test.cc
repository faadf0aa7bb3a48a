#include "replication/done_exchanges.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/temp_dir_test.h"

namespace meridian::replication {
namespace {

namespace fs = std::filesystem;

class DoneExchangesTest : public test_support::TempDirTest {
 protected:
  std::string Path() const { return dir_ + "/done-exchanges"; }
  std::string Text() const {
    std::ifstream in(Path());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

// An exchange is done for the lost region's life it ran in, with that peer: a later life (the
// region rebuilt again, even after a life never heard from here) needs its own.
TEST_F(DoneExchangesTest, AnExchangeIsDoneForOneLifeWithOnePeer) {
  DoneExchanges d;
  std::string warning;
  ASSERT_TRUE(d.Load("", &warning).ok());
  EXPECT_FALSE(d.Done(3, 2, "global-a1,shard-1-a2"));
  ASSERT_TRUE(d.Record(3, 2, "global-a1,shard-1-a2").ok());
  EXPECT_TRUE(d.Done(3, 2, "global-a1,shard-1-a2"));
  EXPECT_FALSE(d.Done(3, 2, "global-c1,shard-1-c2"));  // a later life
  EXPECT_FALSE(d.Done(3, 2, "global-a1"));             // another life (a shard rebuilt)
  EXPECT_FALSE(d.Done(3, 1, "global-a1,shard-1-a2"));  // another peer
  EXPECT_FALSE(d.Done(2, 2, "global-a1,shard-1-a2"));  // another lost region
  // What is not a life is refused and kept nowhere.
  EXPECT_FALSE(d.Record(3, 2, "").ok());
  EXPECT_FALSE(d.Record(3, 2, "global a1").ok());
  EXPECT_FALSE(d.Record(0, 2, "global-a1").ok());
  EXPECT_FALSE(d.Done(3, 2, ""));
}

TEST_F(DoneExchangesTest, EntriesOutliveTheProcess) {
  {
    DoneExchanges d;
    std::string warning;
    ASSERT_TRUE(d.Load(Path(), &warning).ok());  // no file yet
    EXPECT_EQ(warning, "");
    ASSERT_TRUE(d.Record(3, 2, "global-b,shard-1-b").ok());
    ASSERT_TRUE(d.Record(3, 1, "global-b,shard-1-b").ok());
  }
  EXPECT_EQ(Text(), "meridian-done-exchanges 2\n3 1 global-b,shard-1-b\n3 2 global-b,shard-1-b\n");
  EXPECT_EQ(fs::status(Path()).permissions(), fs::perms(0600));
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().rfind("done-exchanges.", 0), std::string::npos)
        << "a temporary file is left: " << e.path();
  }
  DoneExchanges again;
  std::string warning;
  ASSERT_TRUE(again.Load(Path(), &warning).ok());
  EXPECT_EQ(warning, "");
  EXPECT_TRUE(again.Done(3, 2, "global-b,shard-1-b"));
  EXPECT_TRUE(again.Done(3, 1, "global-b,shard-1-b"));
  EXPECT_FALSE(again.Done(3, 1, "global-b"));
}

// A damaged file is not trusted in part: every exchange runs again (the safe side), said once.
TEST_F(DoneExchangesTest, ADamagedFileIsNotUsed) {
  for (const std::string& text :
       {std::string("something else\n3 2 global\n"),
        std::string("meridian-done-exchanges 1\n3 2 global\n"),
        std::string("meridian-done-exchanges 2\n3 2\n"),
        std::string("meridian-done-exchanges 2\n3 2 global\n0 2 global\n"),
        std::string("meridian-done-exchanges 2\n3 2 Global\n"),
        std::string("meridian-done-exchanges 2\n3 2 global,,shard-1\n"),
        std::string("meridian-done-exchanges 2\n3 x global\n")}) {
    std::ofstream(Path()) << text;
    DoneExchanges d;
    std::string warning;
    ASSERT_TRUE(d.Load(Path(), &warning).ok());
    EXPECT_NE(warning, "") << text;
    EXPECT_NE(warning.find(Path()), std::string::npos) << warning;
    EXPECT_FALSE(d.Done(3, 2, "global")) << text;
    // A record then writes a good file again.
    ASSERT_TRUE(d.Record(3, 2, "shard-2").ok());
    EXPECT_EQ(Text(), "meridian-done-exchanges 2\n3 2 shard-2\n");
  }
}

TEST_F(DoneExchangesTest, AFileThatCannotBeWrittenKeepsTheEntriesInMemory) {
  fs::create_directories(Path());  // a folder where the file goes
  DoneExchanges d;
  std::string warning;
  EXPECT_FALSE(d.Load(Path(), &warning).ok());  // cannot be read
  EXPECT_FALSE(d.Record(3, 2, "global").ok());
  EXPECT_TRUE(d.Done(3, 2, "global"));
  EXPECT_TRUE(d.Record(3, 2, "global").ok());  // nothing new: nothing to write
}

}  // namespace
}  // namespace meridian::replication
