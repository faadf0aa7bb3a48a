#include "common/cli.h"

#include <gtest/gtest.h>

#include "common/daemon.h"

#include <string>
#include <vector>

namespace meridian::common {
namespace {

// Parses `args` (without the program name) into an app with an int flag in 1..10, a double flag in
// 0..1 with the finite check, and a required --name.
std::optional<int> Parse(std::vector<std::string> args, double* ratio = nullptr) {
  CLI::App app{"test"};
  int count = 1;
  double r = 0.5;
  std::string name;
  app.add_option("--count", count)->check(CLI::Range(1, 10));
  app.add_option("--ratio", r)->check(FiniteRange(0.0, 1.0));
  app.add_option("--name", name)->required();
  std::vector<const char*> argv{"test"};
  for (const auto& a : args) argv.push_back(a.c_str());
  auto rc = ParseFlags(app, static_cast<int>(argv.size()), argv.data());
  if (ratio != nullptr) *ratio = r;
  return rc;
}

TEST(ParseFlags, GoodFlagsGoOn) {
  double ratio = 0;
  EXPECT_EQ(Parse({"--name", "x", "--count", "3", "--ratio", "0.25"}, &ratio), std::nullopt);
  EXPECT_EQ(ratio, 0.25);
}

TEST(ParseFlags, UsageErrorsExitWithTwo) {
  EXPECT_EQ(Parse({"--name", "x", "--no-such-flag"}), kUsageExitCode);  // CLI11: 109
  EXPECT_EQ(Parse({"--name", "x", "--count", "11"}), kUsageExitCode);   // CLI11: 105
  EXPECT_EQ(Parse({"--name", "x", "--count", "three"}), kUsageExitCode);
  EXPECT_EQ(Parse({}), kUsageExitCode);  // --name is required; CLI11: 106
  EXPECT_EQ(Parse({"--name"}), kUsageExitCode);
}

TEST(ParseFlags, AnUnknownFlagIsNamedBeforeAMissingRequiredOne) {
  testing::internal::CaptureStderr();
  EXPECT_EQ(Parse({"--nmae", "x"}), kUsageExitCode);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--nmae"), std::string::npos) << err;
  EXPECT_EQ(err.find("required"), std::string::npos) << err;

  testing::internal::CaptureStderr();
  EXPECT_EQ(Parse({"--count", "3"}), kUsageExitCode);  // nothing unknown: the missing flag
  err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("--name is required"), std::string::npos) << err;
}

TEST(ParseFlags, HelpExitsWithZero) { EXPECT_EQ(Parse({"--help"}), 0); }

// `--check-config=false` would start the daemon for a reader who meant only to check.
TEST(DaemonOptions, CheckConfigTakesNoValue) {
  for (const char* arg : {"--check-config=false", "--check-config=0", "--check-config=off"}) {
    CLI::App app{"test"};
    DaemonOptions opt;
    AddDaemonOptions(app, &opt, "config");
    const char* argv[] = {"test", arg};
    EXPECT_EQ(ParseFlags(app, 2, argv), kUsageExitCode) << arg;
  }
  CLI::App app{"test"};
  DaemonOptions opt;
  AddDaemonOptions(app, &opt, "config");
  const char* argv[] = {"test", "--check-config"};
  EXPECT_EQ(ParseFlags(app, 2, argv), std::nullopt);
  EXPECT_TRUE(opt.check_only);
}

TEST(FiniteRange, RefusesNanInfinitiesAndValuesOutsideTheRange) {
  for (const char* bad :
       {"nan", "NaN", "-nan", "inf", "-inf", "infinity", "1e999", "x", "", "1.5", "-0.1"}) {
    EXPECT_EQ(Parse({"--name", "x", "--ratio", bad}), kUsageExitCode) << bad;
  }
  const FiniteRange check(0.0, 1.0);
  std::string v = "nan";
  EXPECT_NE(check(v).find("not a finite number"), std::string::npos);
  v = "2";
  EXPECT_EQ(check(v), "'2' is outside 0..1");
  for (const char* good : {"0", "0.5", "1", "1e-300"}) {
    v = good;
    EXPECT_EQ(check(v), "") << good;
  }
}

}  // namespace
}  // namespace meridian::common
