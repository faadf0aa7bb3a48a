// meridian-test-pg-template: one PostgreSQL template cluster for a whole ctest run, so initdb runs
// once per run instead of once per test process (each gtest TEST is its own process). ctest runs
// `make` as a fixture set-up before the tests that start PostgreSQL and `remove` after them
// (tests/support/CMakeLists.txt); the tests find the template through
// $MERIDIAN_TEST_PG_TEMPLATE_FILE.
//
//   meridian-test-pg-template make STATE_FILE    initdb into a new directory, write its path
//   meridian-test-pg-template remove STATE_FILE  remove that directory and STATE_FILE
//
// The directory belongs to our parent (ctest) for the stale-directory sweep of temp_dir.h: if
// ctest is killed before `remove`, the next test process that makes a directory removes it.

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/files.h"
#include "tests/support/postgres_server.h"
#include "tests/support/temp_dir.h"

namespace {

namespace fs = std::filesystem;
using meridian::test_support::PostgresServer;

// The template directory `state_file` names, if it is one `make` made (never an arbitrary path
// from a stray file); an empty string if there is no such file.
absl::StatusOr<std::string> NamedTemplate(const std::string& state_file) {
  std::ifstream in(state_file);
  if (!in) return std::string();
  std::string root;
  std::getline(in, root);
  if (!absl::StrContains(fs::path(root).filename().string(), "meridian-pg-template-") ||
      !fs::is_regular_file(fs::path(root) / "data" / "PG_VERSION")) {
    return absl::FailedPreconditionError(
        absl::StrCat(state_file, " does not name a template made by `make` (", root, ")"));
  }
  return root;
}

int Remove(const std::string& state_file) {
  absl::StatusOr<std::string> root = NamedTemplate(state_file);
  if (!root.ok()) {
    std::fprintf(stderr, "meridian-test-pg-template: %s; left as it is\n",
                 std::string(root.status().message()).c_str());
    return 1;
  }
  if (root->empty()) {
    std::printf("no %s: nothing to remove\n", state_file.c_str());
    return 0;
  }
  meridian::test_support::RemoveTempDir(*root);
  std::error_code ec;
  fs::remove(state_file, ec);
  std::printf("removed %s\n", root->c_str());
  return 0;
}

int Make(const std::string& state_file) {
  // Left by a run that was killed before its `remove` (its directory may already be swept).
  if (absl::StatusOr<std::string> stale = NamedTemplate(state_file);
      stale.ok() && !stale->empty()) {
    std::printf("removing the template of an earlier run: %s\n", stale->c_str());
    meridian::test_support::RemoveTempDir(*stale);
  }
  absl::StatusOr<std::string> root = PostgresServer::MakeSharedTemplate(getppid());
  if (!root.ok()) {
    std::fprintf(stderr, "meridian-test-pg-template: %s\n", root.status().ToString().c_str());
    return 1;
  }
  // A test never reads half a path.
  if (absl::Status s = meridian::common::ReplaceTextFile(state_file, *root + "\n"); !s.ok()) {
    std::fprintf(stderr, "meridian-test-pg-template: %s\n", std::string(s.message()).c_str());
    meridian::test_support::RemoveTempDir(*root);
    return 1;
  }
  std::printf("template cluster %s/data (named in %s)\n", root->c_str(), state_file.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"meridian-test-pg-template: one PostgreSQL template cluster per ctest run"};
  app.require_subcommand(1);
  std::string state_file;
  CLI::App* make = app.add_subcommand("make", "initdb into a new directory; write its path");
  make->add_option("STATE_FILE", state_file, "file that names the directory")->required();
  CLI::App* remove = app.add_subcommand("remove", "remove the directory STATE_FILE names");
  remove->add_option("STATE_FILE", state_file, "file written by make")->required();
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
  return make->parsed() ? Make(state_file) : Remove(state_file);
}
