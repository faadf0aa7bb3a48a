#pragma once

// A gtest fixture with a fresh folder per test (test_support::MakeTempDir, named after the test
// suite), removed afterwards. A fixture that needs more in SetUp overrides it and calls
// TempDirTest::SetUp() first.

#include <gtest/gtest.h>

#include <string>

#include "tests/support/temp_dir.h"

namespace meridian::test_support {

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir =
        MakeTempDir(::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name(), "");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
  }
  void TearDown() override {
    if (!dir_.empty()) RemoveTempDir(dir_);
  }
  std::string dir_;
};

}  // namespace meridian::test_support
