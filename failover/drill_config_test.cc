// PrepareDrillOptions: what `meridianctl drill region-loss` refuses before it touches the cluster.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "failover/drill.h"
#include "tests/support/temp_dir_test.h"

namespace meridian::failover {
namespace {

namespace fs = std::filesystem;

class PrepareDrillOptionsTest : public test_support::TempDirTest {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(TempDirTest::SetUp());
    std::ofstream(dir_ + "/a-file") << "x\n";
    ::unsetenv("MERIDIAN_DRILL_RATE");
    ::unsetenv("MERIDIAN_DRILL_MERIDIAN");
  }
  void TearDown() override {
    ::unsetenv("MERIDIAN_DRILL_RATE");
    ::unsetenv("MERIDIAN_DRILL_MERIDIAN");
    TempDirTest::TearDown();
  }
  DrillOptions Options(const std::string& output_dir) {
    DrillOptions o;
    o.region = "eu-west";
    o.output_dir = output_dir;
    return o;
  }
};

TEST_F(PrepareDrillOptionsTest, ChecksTheOutputFolderAndLeavesNothingBehind) {
  DrillOptions o = Options(dir_ + "/drills/nested");
  ASSERT_TRUE(PrepareDrillOptions(&o).ok());
  EXPECT_FALSE(fs::exists(dir_ + "/drills"));  // made when the report is written
}

TEST_F(PrepareDrillOptionsTest, AnOutputFolderThatCannotBeWrittenIsRefused) {
  DrillOptions o = Options(dir_ + "/a-file/drills");
  absl::Status st = PrepareDrillOptions(&o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("--output-dir"), std::string::npos) << st;
}

TEST_F(PrepareDrillOptionsTest, RateFromTheEnvironmentMustBeFinite) {
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "0", "10001", "80x"}) {
    ::setenv("MERIDIAN_DRILL_RATE", bad, 1);
    DrillOptions o = Options(dir_ + "/drills");
    absl::Status st = PrepareDrillOptions(&o);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_NE(std::string(st.message()).find("MERIDIAN_DRILL_RATE"), std::string::npos) << st;
  }
  ::setenv("MERIDIAN_DRILL_RATE", "80", 1);
  DrillOptions o = Options(dir_ + "/drills");
  ASSERT_TRUE(PrepareDrillOptions(&o).ok());
  EXPECT_EQ(o.rate_per_s, 80);
}

// The script brings the region back after the kill: a bad path must be refused before the kill.
TEST_F(PrepareDrillOptionsTest, MeridianScriptFromTheEnvironmentMustBeAReadableFile) {
  fs::create_directories(dir_ + "/a-folder");
  for (const std::string& bad : {dir_ + "/nonexistent", dir_ + "/a-folder"}) {
    ::setenv("MERIDIAN_DRILL_MERIDIAN", bad.c_str(), 1);
    DrillOptions o = Options(dir_ + "/drills");
    absl::Status st = PrepareDrillOptions(&o);
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_NE(std::string(st.message()).find("MERIDIAN_DRILL_MERIDIAN='" + bad + "'"),
              std::string::npos)
        << st;
    EXPECT_TRUE(o.meridian_script.empty()) << bad;
  }
  ::setenv("MERIDIAN_DRILL_MERIDIAN", (dir_ + "/a-file").c_str(), 1);
  DrillOptions o = Options(dir_ + "/drills");
  ASSERT_TRUE(PrepareDrillOptions(&o).ok());
  EXPECT_EQ(o.meridian_script, dir_ + "/a-file");
}

TEST_F(PrepareDrillOptionsTest, ModeAndDurationNameTheFlag) {
  DrillOptions o = Options(dir_ + "/drills");
  o.mode = "unplug";
  EXPECT_NE(std::string(PrepareDrillOptions(&o).message()).find("--mode"), std::string::npos);
  o = Options(dir_ + "/drills");
  o.duration_s = 0;
  EXPECT_NE(std::string(PrepareDrillOptions(&o).message()).find("--duration"), std::string::npos);
}

// The drill names the cluster's folder as deploy/meridian does (cd DIR && pwd), or the script
// does not know its own processes: a symlink stays, "." and ".." fold, no trailing slash.
TEST_F(PrepareDrillOptionsTest, TheDataFolderIsSpelledAsDeployMeridianSpellsIt) {
  const fs::path real = fs::path(dir_) / "real";
  fs::create_directories(real);
  fs::create_directory_symlink(real, fs::path(dir_) / "link");
  const std::string link = (fs::path(dir_) / "link").string();
  EXPECT_EQ(DataDirAsDeploySpellsIt(link + "/"), link);
  EXPECT_EQ(DataDirAsDeploySpellsIt(link + "/./x/.."), link);
  EXPECT_EQ(DataDirAsDeploySpellsIt("/"), "/");
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  EXPECT_EQ(DataDirAsDeploySpellsIt("link"), link);
  fs::current_path(cwd);
}

}  // namespace
}  // namespace meridian::failover
