#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/process.h"

namespace meridian::test_support {

// A real PostgreSQL server for integration tests, on a free 127.0.0.1 port, in its own temporary
// directory, started and stopped by the test.
//
// Start() gives each instance a `cp -a` copy of a template cluster, which is much cheaper than
// initdb: the ctest run's shared template when $MERIDIAN_TEST_PG_TEMPLATE_FILE names one (see
// MakeSharedTemplate), else one initdb'd once per process (removed at exit). The server is the
// `postgres` binary itself, run as a child Process rather than daemonized by pg_ctl, so it dies
// with the test even if the test is SIGKILLed (see Process). Stop() is what `pg_ctl -m immediate
// stop` does (SIGQUIT to the postmaster); readiness is what `pg_ctl -w` waits for (the server
// accepts connections).
//
// When the test runs as root, initdb and the server run as the `postgres` user (initdb refuses
// root); otherwise as the current user. Either way the superuser is `postgres`, trust auth, UTF8,
// C locale. The directory is made by MakeTempDir (temp_dir.h): /dev/shm when it is a roomy tmpfs,
// else /tmp. Dynamic shared memory is `mmap` (files in the data directory), so a killed server
// leaves nothing in /dev/shm once its directory is gone.
//
// Binaries: $MERIDIAN_PG_BINDIR if set, else /usr/lib/postgresql/15/bin, else the newest
// /usr/lib/postgresql/<N>/bin. Set MERIDIAN_KEEP_TEST_DIRS=1 to keep the directory (and its
// postgres.log) after the test; the path is printed to stderr.
//
// Start() and StartAll() are thread-safe; one PostgresServer is driven by one thread at a time.
class PostgresServer {
 public:
  struct Options {
    // Used in the directory name and in error messages, to tell instances apart.
    std::string name = "pg";
    // fsync=off loses nothing when processes are killed (the kernel keeps the page cache), only
    // when the machine crashes; tests want it off. Benchmarks must say which they used.
    bool fsync = false;
    int max_connections = 100;
    std::string shared_buffers = "32MB";
    // More `-c key=value` server settings, e.g. {"wal_level", "logical"}.
    std::vector<std::pair<std::string, std::string>> extra_settings = {};
  };

  // Starts a server and returns once it accepts connections. If the port is taken between
  // choosing and binding it, retries with a new one (bounded). Errors quote the server log tail.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PostgresServer>> Start(Options options);
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PostgresServer>> Start();
  // Starts several servers side by side (every postmaster is spawned before any is waited for),
  // as Start does one; in the order of `options`. Call from a thread that outlives the servers.
  [[nodiscard]] static absl::StatusOr<std::vector<std::unique_ptr<PostgresServer>>> StartAll(
      std::vector<Options> options);

  // Runs initdb into a new directory for other processes' Start() to copy, hands the directory
  // to process `owner` (a sweep removes it once that process is gone; see HandTempDirTo) and
  // returns it; the cluster is its "data" subdirectory. A process uses it when
  // $MERIDIAN_TEST_PG_TEMPLATE_FILE names a file whose first line is this directory. ctest makes
  // one per run (tests/support/CMakeLists.txt), so initdb runs once per run, not once per test.
  [[nodiscard]] static absl::StatusOr<std::string> MakeSharedTemplate(pid_t owner);
  // The directory of the ctest run's shared template (MakeSharedTemplate), where other things
  // made once per run may be kept too; nullopt when this process has none.
  [[nodiscard]] static std::optional<std::string> SharedRunDirectory();

  PostgresServer(const PostgresServer&) = delete;
  PostgresServer& operator=(const PostgresServer&) = delete;
  // Stops the server (immediate), waits for any processes orphaned by Kill9, removes the directory.
  ~PostgresServer();

  // The TCP port; the same across Restart().
  [[nodiscard]] uint16_t port() const { return port_; }
  // "host=127.0.0.1 port=P user=postgres dbname=D", for libpq / pqxx::connection. D is quoted
  // ('...', with \ escapes) only if it is empty or holds whitespace, quotes, backslashes or '='.
  [[nodiscard]] std::string ConnectionString(std::string_view dbname = "postgres") const;

  // CREATE DATABASE `name` (quoted as an identifier). REQUIRES: running.
  [[nodiscard]] absl::Status CreateDatabase(std::string_view name);

  // Immediate shutdown (SIGQUIT, like `pg_ctl -m immediate stop`): no checkpoint, so the next
  // start runs crash recovery, which with committed data intact is what fault tests want anyway.
  // OK if already stopped.
  [[nodiscard]] absl::Status Stop();
  // SIGKILLs the postmaster only, as a crash would. Its backends notice and exit on their own
  // within milliseconds; Restart() and the destructor wait for that. OK if already stopped.
  [[nodiscard]] absl::Status Kill9();
  // Stops the server if it runs, then starts it again on the same port with the same data.
  // Retries for a few seconds while the port or the old shared memory is still in use.
  [[nodiscard]] absl::Status Restart();

  // A physical backup of the running server (pg_basebackup, its WAL streamed in) into a new
  // directory beside data/; returns that directory. REQUIRES: running.
  [[nodiscard]] absl::StatusOr<std::string> BaseBackup();
  // A restore to the point in time of a BaseBackup(), as an operator does one: stops the server,
  // puts the backup in place of data/ (the data since is gone), and starts it with
  // recovery.signal, so that it replays the backup's WAL and comes up on a new timeline.
  [[nodiscard]] absl::Status RestoreBaseBackup(const std::string& backup);

  [[nodiscard]] bool running();
  [[nodiscard]] const std::string& name() const { return options_.name; }
  // The instance directory: data/, postgres.log and the Unix socket live here.
  [[nodiscard]] const std::string& directory() const { return directory_; }
  [[nodiscard]] std::string data_directory() const { return directory_ + "/data"; }
  [[nodiscard]] std::string log_path() const { return directory_ + "/postgres.log"; }

 private:
  PostgresServer(Options options, std::string bin_dir, std::string user, std::string directory)
      : options_(std::move(options)),
        bin_dir_(std::move(bin_dir)),
        user_(std::move(user)),
        directory_(std::move(directory)) {}

  enum class Outcome { kReady, kPortInUse, kShmemInUse, kFailed };
  // A postmaster spawned on port_ and not yet known to be ready; its log grew from log_offset.
  struct Attempt {
    absl::StatusOr<std::unique_ptr<Process>> process = absl::UnknownError("not spawned");
    uint64_t log_offset = 0;
  };
  // A new directory holding a copy of the template cluster, not started.
  static absl::StatusOr<std::unique_ptr<PostgresServer>> Prepare(Options options);
  // One attempt to start the postmaster on port_, in two halves: Spawn, then AwaitReady, which
  // on kReady leaves the postmaster in process_. StartOnce is both.
  Attempt Spawn();
  Outcome AwaitReady(Attempt attempt, std::string* error);
  Outcome StartOnce(std::string* error);
  // Waits until no process is attached to the shared memory of a SIGKILLed postmaster.
  absl::Status WaitForOrphans(bool remove_segment);

  Options options_;
  std::string bin_dir_;
  std::string user_;  // Empty: run as the current user.
  std::string directory_;
  uint16_t port_ = 0;
  std::unique_ptr<Process> process_;
  bool killed_ = false;  // SIGKILLed and not restarted since: orphans may still run.
  int backups_ = 0;      // BaseBackup's directories so far
};

}  // namespace meridian::test_support
