#include "common/files.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/temp_dir_test.h"

namespace meridian::common {
namespace {

namespace fs = std::filesystem;

class TempDir : public test_support::TempDirTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(TempDirTest::SetUp());
    std::ofstream(dir_ + "/a-file") << "keep\n";
  }
};

using CheckWritable = TempDir;

// The check changes nothing: a command refused or failed after it (another flag bad, a target
// that does not answer) left the folders of its --out behind (an earlier version made them in the
// check). The writer makes them with MakeParentFolders right before it writes.
TEST_F(CheckWritable, FileInNewFoldersIsCheckedWithoutMakingThem) {
  const std::string out = dir_ + "/x/y/results.json";
  EXPECT_TRUE(CheckWritableFile("--out", out).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/x"));
  ASSERT_TRUE(MakeParentFolders(out).ok());
  EXPECT_TRUE(fs::is_directory(dir_ + "/x/y"));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(MakeParentFolders(out).ok());  // already there
  EXPECT_TRUE(MakeParentFolders("bare-name.json").ok());
}

// Below the nearest folder that exists, a part of the path that is a file is named; a folder that
// cannot be written in is refused; nothing is made either way.
TEST_F(CheckWritable, NewFileUnderAFileIsRefused) {
  absl::Status st = CheckWritableFile("--out", dir_ + "/a-file/x/y/results.json");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find(dir_ + "/a-file is not a folder"), std::string::npos)
      << st;
  EXPECT_FALSE(MakeParentFolders(dir_ + "/a-file/x/results.json").ok());
}

// Skipped as root (CI runs as root), who may write anywhere; the part above runs everywhere.
TEST_F(CheckWritable, NewFileUnderAReadOnlyFolderIsRefused) {
  fs::create_directories(dir_ + "/ro");
  fs::permissions(dir_ + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
  if (::access((dir_ + "/ro").c_str(), W_OK) == 0) GTEST_SKIP() << "running as root";
  absl::Status st = CheckWritableFile("--out", dir_ + "/ro/new/results.json");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("cannot create " + dir_ + "/ro/new in " + dir_ + "/ro"),
            std::string::npos)
      << st;
  EXPECT_FALSE(CheckWritableFile("--out", dir_ + "/ro/results.json").ok());
  EXPECT_FALSE(fs::exists(dir_ + "/ro/new"));
  fs::permissions(dir_ + "/ro", fs::perms::owner_all);
}

TEST_F(CheckWritable, ExistingFileKeepsItsContents) {
  EXPECT_TRUE(CheckWritableFile("--out", dir_ + "/a-file").ok());
  std::ifstream in(dir_ + "/a-file");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "keep");
}

// A symlink to a file not yet written is checked where its target would go, and nothing is made
// or removed (an earlier version created the target, then removed the link instead); the writer's
// MakeParentFolders makes the target's folder, not the link's.
TEST_F(CheckWritable, DanglingSymlinkIsJudgedByItsTargetAndKept) {
  const std::string link = dir_ + "/latest.json";
  fs::create_symlink("runs/r1.json", link);
  EXPECT_TRUE(CheckWritableFile("--out", link).ok());
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_FALSE(fs::exists(dir_ + "/runs"));
  ASSERT_TRUE(MakeParentFolders(link).ok());
  EXPECT_TRUE(fs::is_directory(dir_ + "/runs"));
  EXPECT_FALSE(fs::exists(dir_ + "/runs/r1.json"));
  EXPECT_TRUE(fs::is_symlink(link));

  fs::create_symlink("a-file/r.json", dir_ + "/bad.json");  // its folder would be a file
  EXPECT_FALSE(CheckWritableFile("--out", dir_ + "/bad.json").ok());
  EXPECT_TRUE(fs::is_symlink(dir_ + "/bad.json"));
}

TEST_F(CheckWritable, SymlinkLoopsAndFolderPathsAreRefused) {
  fs::create_symlink("loop-b", dir_ + "/loop-a");
  fs::create_symlink("loop-a", dir_ + "/loop-b");
  EXPECT_FALSE(CheckWritableFile("--out", dir_ + "/loop-a").ok());
  EXPECT_FALSE(MakeParentFolders(dir_ + "/loop-a").ok());
  absl::Status st = CheckWritableFile("--out", dir_ + "/out/");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("names a folder"), std::string::npos) << st;
  EXPECT_FALSE(fs::exists(dir_ + "/out"));
}

TEST_F(CheckWritable, UnwritableFileNamesTheFlag) {
  absl::Status st = CheckWritableFile("--out", dir_ + "/a-file/results.json");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("--out"), std::string::npos) << st;
  st = CheckWritableFile("--results", dir_);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("--results"), std::string::npos) << st;
  EXPECT_FALSE(CheckWritableFile("--out", "").ok());
}

// A results file is written whole, its folder made; one that cannot be written is an error, not
// a "wrote" over nothing (the benchmarks printed that, CLI probe).
TEST_F(CheckWritable, WriteTextFileSaysWhetherTheFileWasWritten) {
  const std::string out = dir_ + "/results/deep/r.json";
  ASSERT_TRUE(WriteTextFile(out, "{}\n").ok());
  std::ifstream in(out);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "{}\n");
  std::ofstream(dir_ + "/a-file") << "x";
  EXPECT_FALSE(WriteTextFile(dir_ + "/a-file/r.json", "{}\n").ok());
  EXPECT_FALSE(WriteTextFile(dir_, "{}\n").ok());  // a folder
}

// A port or stats file named through a symlink (a drill's folder linking to the run's): the
// proxy's rename over the path replaced the link with a plain file, and the link's target kept
// the old port.
TEST_F(CheckWritable, ReplaceTextFileWritesThroughASymlinkAndLeavesItOne) {
  fs::create_directories(dir_ + "/run");
  fs::create_symlink("run/port", dir_ + "/port");
  ASSERT_TRUE(ReplaceTextFile(dir_ + "/port", "4100\n").ok());
  ASSERT_TRUE(ReplaceTextFile(dir_ + "/port", "4101\n").ok());
  EXPECT_TRUE(fs::is_symlink(dir_ + "/port"));
  std::ifstream in(dir_ + "/run/port");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "4101\n");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ + "/run"), fs::directory_iterator()), 1)
      << "a temporary file is left beside the port file";
  EXPECT_EQ(fs::status(dir_ + "/run/port").permissions(), fs::perms(0644));
  ASSERT_TRUE(ReplaceTextFile(dir_ + "/run/secret", "x\n", 0600).ok());
  EXPECT_EQ(fs::status(dir_ + "/run/secret").permissions(), fs::perms(0600));

  ASSERT_TRUE(ReplaceTextFile(dir_ + "/new/deep/stats.json", "{}\n").ok());  // folders made
  EXPECT_TRUE(fs::is_regular_file(dir_ + "/new/deep/stats.json"));

  // A file that cannot be replaced (its target is a folder) keeps what it had, no .tmp left.
  fs::create_directories(dir_ + "/taken");
  absl::Status st = ReplaceTextFile(dir_ + "/taken", "x\n");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("taken"), std::string::npos) << st;
  EXPECT_TRUE(fs::is_directory(dir_ + "/taken"));
  for (const auto& e : fs::directory_iterator(dir_)) {
    EXPECT_EQ(e.path().filename().string().rfind("taken.", 0), std::string::npos) << e.path();
  }
  fs::create_symlink("loop-b", dir_ + "/loop-a");
  fs::create_symlink("loop-a", dir_ + "/loop-b");
  EXPECT_FALSE(ReplaceTextFile(dir_ + "/loop-a", "x\n").ok());
}

TEST_F(CheckWritable, FolderIsCreatedAndLeftEmpty) {
  const std::string out = dir_ + "/drills/x";
  EXPECT_TRUE(CheckWritableDir("--output-dir", out).ok());
  ASSERT_TRUE(fs::is_directory(out));
  EXPECT_TRUE(fs::is_empty(out));
}

TEST_F(CheckWritable, AFolderThatCanBeMadeIsNotLeftBehind) {
  EXPECT_TRUE(CheckDirCanBeMade("--output-dir", dir_ + "/drills/x/").ok());
  EXPECT_FALSE(fs::exists(dir_ + "/drills"));
  fs::create_directories(dir_ + "/kept");
  EXPECT_TRUE(CheckDirCanBeMade("--output-dir", dir_ + "/kept").ok());
  EXPECT_TRUE(fs::is_directory(dir_ + "/kept"));
  EXPECT_TRUE(CheckDirCanBeMade("--output-dir", dir_ + "/kept/new").ok());
  EXPECT_TRUE(fs::is_empty(dir_ + "/kept"));
  absl::Status st = CheckDirCanBeMade("--output-dir", dir_ + "/a-file/drills");
  EXPECT_NE(std::string(st.message()).find("--output-dir"), std::string::npos) << st;
  EXPECT_TRUE(fs::is_regular_file(dir_ + "/a-file"));
}

TEST_F(CheckWritable, UnwritableFolderNamesTheFlag) {
  absl::Status st = CheckWritableDir("--output-dir", dir_ + "/a-file/drills");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("--output-dir"), std::string::npos) << st;
  st = CheckWritableDir("--output-dir", dir_ + "/a-file");
  EXPECT_FALSE(st.ok());
  EXPECT_FALSE(CheckWritableDir("--output-dir", "").ok());
}

}  // namespace
}  // namespace meridian::common
