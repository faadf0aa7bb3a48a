#include "common/cli.h"

#include <gtest/gtest.h>

#include "common/daemon.h"

#include <cstdint>
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

// CLI11 alone reads integers with strtoll's base 0: 010 was 8, 0x10 was 16.
TEST(ParseFlags, IntegerFlagsAreDecimal) {
  struct Flags {
    int count = 1;
    uint64_t big = 0;
    std::vector<int> ids;
    int sub_n = 0;
  };
  auto parse = [](std::vector<std::string> args, Flags* f, std::string* err = nullptr) {
    CLI::App app{"test"};
    app.add_option("--count", f->count)->check(CLI::Range(1, 10));
    app.add_option("--big", f->big);
    app.add_option("--ids", f->ids);
    app.add_subcommand("sub")->add_option("--n", f->sub_n);
    std::vector<const char*> argv{"test"};
    for (const auto& a : args) argv.push_back(a.c_str());
    testing::internal::CaptureStderr();
    auto rc = ParseFlags(app, static_cast<int>(argv.size()), argv.data());
    std::string text = testing::internal::GetCapturedStderr();
    if (err != nullptr) *err = text;
    // The check is not shown in --help: the type stays as CLI11 names it.
    EXPECT_EQ(app.get_option("--count")->get_type_name(), "INT:INT in [1 - 10]");
    return rc;
  };
  Flags f;
  EXPECT_EQ(parse({"--count", "010", "--big", "0018446744073709551615", "--ids", "07", "08", "0",
                   "sub", "--n", "-09"},
                  &f),
            std::nullopt);
  EXPECT_EQ(f.count, 10);  // range-checked as 10, not as 8
  EXPECT_EQ(f.big, 18446744073709551615u);
  EXPECT_EQ(f.ids, (std::vector<int>{7, 8, 0}));
  EXPECT_EQ(f.sub_n, -9);
  EXPECT_EQ(parse({"--count", "+7", "--big", "000"}, &f), std::nullopt);
  EXPECT_EQ(f.count, 7);
  EXPECT_EQ(f.big, 0u);
  for (const char* bad : {"0x5", "1e1", " 5", "5 ", "", "+", "-", "1_0", "1.0", "05a"}) {
    std::string err;
    EXPECT_EQ(parse({"--count", bad}, &f, &err), kUsageExitCode) << bad;
    EXPECT_NE(err.find(std::string("'") + bad + "' is not a decimal integer"), std::string::npos)
        << bad << ": " << err;
  }
  std::string err;
  EXPECT_EQ(parse({"sub", "--n", "0x10"}, &f, &err), kUsageExitCode);
  EXPECT_NE(err.find("'0x10' is not a decimal integer"), std::string::npos) << err;
  EXPECT_EQ(parse({"--count", "0011"}, &f), kUsageExitCode);  // 11: outside 1..10
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
