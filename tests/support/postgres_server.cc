#include "tests/support/postgres_server.h"

#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/pg_shmem.h"
#include "tests/support/ports.h"
#include "tests/support/temp_dir.h"

namespace meridian::test_support {
namespace {

namespace fs = std::filesystem;

// Limits on every wait and retry, so a broken machine fails a test instead of hanging it.
constexpr absl::Duration kInitdbTimeout = absl::Seconds(120);
constexpr absl::Duration kCopyTimeout = absl::Seconds(60);
constexpr absl::Duration kReadyTimeout = absl::Seconds(30);
constexpr absl::Duration kStopGrace = absl::Seconds(10);
constexpr absl::Duration kOrphanTimeout = absl::Seconds(10);
constexpr absl::Duration kRestartRetryWindow = absl::Seconds(10);
constexpr int kPortAttemptsMax = 5;
constexpr size_t kLogTailBytes = 3000;

std::string ErrorLines(const std::string& log) {
  return log.size() > kLogTailBytes ? log.substr(log.size() - kLogTailBytes) : log;
}

absl::StatusOr<std::string> FindBinDir() {
  if (const char* env = getenv("MERIDIAN_PG_BINDIR"); env != nullptr && env[0] != '\0') {
    if (!fs::exists(fs::path(env) / "postgres")) {
      return absl::NotFoundError(absl::StrCat("MERIDIAN_PG_BINDIR=", env, " has no postgres"));
    }
    return std::string(env);
  }
  if (fs::exists("/usr/lib/postgresql/15/bin/postgres")) return "/usr/lib/postgresql/15/bin";
  int newest = -1;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    int version = 0;
    if (absl::SimpleAtoi(entry.path().filename().string(), &version) && version > newest &&
        fs::exists(entry.path() / "bin" / "postgres")) {
      newest = version;
    }
  }
  if (newest < 0) {
    return absl::NotFoundError(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (install postgresql, or set "
        "MERIDIAN_PG_BINDIR)");
  }
  return absl::StrCat("/usr/lib/postgresql/", newest, "/bin");
}

// The user the server runs as: `postgres` when we are root (initdb and postgres refuse root),
// else ourselves.
std::string ServerUser() { return geteuid() == 0 ? "postgres" : ""; }

// initdb into a fresh directory from MakeTempDir; the cluster is its "data" subdirectory.
absl::StatusOr<std::string> InitdbTemplate(const std::string& bin_dir, const std::string& user) {
  absl::StatusOr<std::string> root = MakeTempDir("pg-template", user);
  if (!root.ok()) return root.status();
  Process::Options initdb;
  initdb.argv = {bin_dir + "/initdb",
                 "-D",
                 *root + "/data",
                 "-U",
                 "postgres",
                 "-A",
                 "trust",
                 "-E",
                 "UTF8",
                 "--no-locale",
                 "--no-sync"};
  initdb.log_path = *root + "/initdb.log";
  initdb.user = user;
  initdb.working_dir = *root;
  if (absl::Status s = Process::Run(std::move(initdb), kInitdbTimeout); !s.ok()) {
    RemoveTempDir(*root);
    return absl::Status(s.code(), absl::StrCat("initdb of the template cluster: ", s.message()));
  }
  return *root;
}

// The template of a ctest run, named by the file that $MERIDIAN_TEST_PG_TEMPLATE_FILE points to
// (see MakeSharedTemplate); nullopt when the variable is unset or empty.
std::optional<absl::StatusOr<std::string>> SharedTemplateDataDir() {
  const char* file = getenv("MERIDIAN_TEST_PG_TEMPLATE_FILE");
  if (file == nullptr || file[0] == '\0') return std::nullopt;
  const std::string what =
      absl::StrCat("MERIDIAN_TEST_PG_TEMPLATE_FILE=", file,
                   ": the shared template (made by `meridian-test-pg-template make`) ");
  std::ifstream in(file);
  std::string root;
  if (!std::getline(in, root) || root.empty() || root[0] != '/') {
    return absl::FailedPreconditionError(absl::StrCat(what, "is not named in that file"));
  }
  const std::string data = root + "/data";
  if (!fs::is_regular_file(fs::path(data) / "PG_VERSION")) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, "is not a PostgreSQL cluster: no ", data, "/PG_VERSION"));
  }
  return data;
}

}  // namespace

std::optional<std::string> PostgresServer::SharedRunDirectory() {
  std::optional<absl::StatusOr<std::string>> data = SharedTemplateDataDir();
  if (!data.has_value() || !data->ok()) return std::nullopt;
  return fs::path(**data).parent_path().string();
}

namespace {

// The cluster every instance copies: the ctest run's shared template if there is one, else one
// initdb'd once per process and removed at exit by the process that made it (not by a forked
// child, e.g. a gtest death test, that happens to exit normally).
class TemplateCache {
 public:
  ~TemplateCache() {
    if (!root_.empty() && getpid() == owner_pid_) RemoveTempDir(root_);
  }

  absl::StatusOr<std::string> DataDir(const std::string& bin_dir, const std::string& user) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto shared = SharedTemplateDataDir()) return *shared;
    if (!root_.empty()) return root_ + "/data";
    absl::StatusOr<std::string> root = InitdbTemplate(bin_dir, user);
    if (!root.ok()) return root.status();
    root_ = *root;
    owner_pid_ = getpid();
    return root_ + "/data";
  }

 private:
  std::mutex mutex_;
  std::string root_;
  pid_t owner_pid_ = 0;
};

TemplateCache& Templates() {
  static TemplateCache cache;
  return cache;
}

}  // namespace

absl::StatusOr<std::string> PostgresServer::MakeSharedTemplate(pid_t owner) {
  absl::StatusOr<std::string> bin_dir = FindBinDir();
  if (!bin_dir.ok()) return bin_dir.status();
  absl::StatusOr<std::string> root = InitdbTemplate(*bin_dir, ServerUser());
  if (!root.ok()) return root.status();
  if (absl::Status s = HandTempDirTo(*root, owner); !s.ok()) {
    RemoveTempDir(*root);
    return s;
  }
  return root;
}

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start() { return Start(Options{}); }

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Start(Options options) {
  std::vector<Options> one;
  one.push_back(std::move(options));
  auto started = StartAll(std::move(one));
  if (!started.ok()) return started.status();
  return std::move(started->front());
}

absl::StatusOr<std::unique_ptr<PostgresServer>> PostgresServer::Prepare(Options options) {
  absl::StatusOr<std::string> bin_dir = FindBinDir();
  if (!bin_dir.ok()) return bin_dir.status();
  const std::string user = ServerUser();
  absl::StatusOr<std::string> template_data = Templates().DataDir(*bin_dir, user);
  if (!template_data.ok()) return template_data.status();

  absl::StatusOr<std::string> directory = MakeTempDir(options.name, user);
  if (!directory.ok()) return directory.status();
  // From here the destructor removes the directory on every error path.
  std::unique_ptr<PostgresServer> server(
      new PostgresServer(std::move(options), *bin_dir, user, *directory));

  // `cp -a` as the invoking user keeps the template's owner and the 0700 mode postgres insists on.
  Process::Options copy;
  copy.argv = {"cp", "-a", *template_data, server->data_directory()};
  if (absl::Status s = Process::Run(std::move(copy), kCopyTimeout); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("PostgresServer '", server->name(),
                                               "': copying the template: ", s.message()));
  }
  return server;
}

absl::StatusOr<std::vector<std::unique_ptr<PostgresServer>>> PostgresServer::StartAll(
    std::vector<Options> options) {
  // The template copies side by side too (each `cp` is waited for by the thread that ran it).
  std::vector<absl::StatusOr<std::unique_ptr<PostgresServer>>> prepared(options.size());
  {
    std::vector<std::thread> copiers;
    for (size_t i = 0; i < options.size(); ++i) {
      copiers.emplace_back([&, i] { prepared[i] = Prepare(std::move(options[i])); });
    }
    for (std::thread& t : copiers) t.join();
  }
  std::vector<std::unique_ptr<PostgresServer>> servers;
  for (auto& server : prepared) {
    if (!server.ok()) return server.status();
    servers.push_back(*std::move(server));
  }
  std::vector<Attempt> attempts(servers.size());
  // Every postmaster is spawned before any is waited for: most of a start is the postmaster
  // setting itself up, which the servers then do side by side.
  for (size_t i = 0; i < servers.size(); ++i) {
    servers[i]->port_ = FreeTcpPort();
    if (servers[i]->port_ == 0) return absl::UnavailableError("FreeTcpPort: no free loopback port");
    attempts[i] = servers[i]->Spawn();
  }
  for (size_t i = 0; i < servers.size(); ++i) {
    PostgresServer& server = *servers[i];
    std::string last_error;
    Outcome outcome = server.AwaitReady(std::move(attempts[i]), &last_error);
    // Lost the race for the port: pick another, a bounded number of times.
    for (int attempt = 2; outcome == Outcome::kPortInUse && attempt <= kPortAttemptsMax;
         ++attempt) {
      server.port_ = FreeTcpPort();
      if (server.port_ == 0) return absl::UnavailableError("FreeTcpPort: no free loopback port");
      outcome = server.AwaitReady(server.Spawn(), &last_error);
    }
    switch (outcome) {
      case Outcome::kReady:
        break;
      case Outcome::kPortInUse:
        return absl::UnavailableError(
            absl::StrCat("PostgresServer '", server.name(), "': ", kPortAttemptsMax,
                         " ports in a row were taken; last: ", last_error));
      case Outcome::kShmemInUse:
      case Outcome::kFailed:
        return absl::InternalError(last_error);
    }
  }
  return servers;
}

PostgresServer::Outcome PostgresServer::StartOnce(std::string* error) {
  return AwaitReady(Spawn(), error);
}

PostgresServer::Attempt PostgresServer::Spawn() {
  Attempt attempt;
  const std::string log = log_path();
  attempt.log_offset = FileSize(log);
  Process::Options postgres;
  postgres.argv = {bin_dir_ + "/postgres",
                   "-D",
                   data_directory(),
                   "-p",
                   absl::StrCat(port_),
                   "-k",
                   directory_,
                   "-c",
                   "listen_addresses=127.0.0.1",
                   "-c",
                   absl::StrCat("fsync=", options_.fsync ? "on" : "off"),
                   "-c",
                   absl::StrCat("max_connections=", options_.max_connections),
                   "-c",
                   absl::StrCat("shared_buffers=", options_.shared_buffers)};
  // Dynamic shared memory as files in the data directory rather than POSIX segments in /dev/shm:
  // a SIGKILLed postmaster never unlinks its segments, and they would hold RAM until reboot once
  // the directory that names them is gone. Listed before extra_settings so callers can override.
  postgres.argv.push_back("-c");
  postgres.argv.push_back("dynamic_shared_memory_type=mmap");
  for (const auto& [key, value] : options_.extra_settings) {
    postgres.argv.push_back("-c");
    postgres.argv.push_back(absl::StrCat(key, "=", value));
  }
  postgres.log_path = log;
  postgres.user = user_;
  postgres.working_dir = directory_;
  attempt.process = Process::Spawn(std::move(postgres));
  return attempt;
}

PostgresServer::Outcome PostgresServer::AwaitReady(Attempt attempt, std::string* error) {
  const std::string log = log_path();
  const uint64_t log_offset = attempt.log_offset;
  const std::string what = absl::StrCat("PostgresServer '", name(), "' on port ", port_);
  absl::StatusOr<std::unique_ptr<Process>>& process = attempt.process;
  if (!process.ok()) {
    *error = absl::StrCat(what, ": ", process.status().message());
    return Outcome::kFailed;
  }

  // Ping through this instance's own Unix socket: a TCP ping could be answered by whichever
  // server won the race for the port. The postmaster creates the TCP socket before the Unix one
  // and accepts on neither until both exist, so an answer here means TCP is ready too.
  const std::string ping = absl::StrCat("host=", directory_, " port=", port_,
                                        " user=postgres dbname=postgres connect_timeout=2");
  const absl::Time deadline = absl::Now() + kReadyTimeout;
  while (true) {
    if (!(*process)->Running()) {
      const std::string output = FileFrom(log, log_offset);
      *error = absl::StrCat(what, ": server ",
                            DescribeWaitStatus(*(*process)->Wait(absl::ZeroDuration())),
                            " during startup; log (", log, "):\n", ErrorLines(output));
      if (absl::StrContains(output, "Address already in use")) return Outcome::kPortInUse;
      if (absl::StrContains(output, "pre-existing shared memory block")) {
        return Outcome::kShmemInUse;
      }
      return Outcome::kFailed;
    }
    PGPing result = PQping(ping.c_str());
    if (result == PQPING_OK) break;
    if (result == PQPING_NO_ATTEMPT) {
      *error = absl::StrCat(what, ": libpq rejected the connection string: ", ping);
      return Outcome::kFailed;
    }
    if (absl::Now() >= deadline) {
      (void)(*process)->Terminate(SIGQUIT, kStopGrace);
      *error = absl::StrCat(what, ": not accepting connections after ",
                            absl::FormatDuration(kReadyTimeout), "; log (", log, "):\n",
                            ErrorLines(FileFrom(log, log_offset)));
      return Outcome::kFailed;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  process_ = *std::move(process);
  killed_ = false;
  return Outcome::kReady;
}

PostgresServer::~PostgresServer() {
  (void)Stop();
  if (killed_) (void)WaitForOrphans(/*remove_segment=*/true);
  RemoveTempDir(directory_);
}

std::string PostgresServer::ConnectionString(std::string_view dbname) const {
  // Plain names go in as they are; others are quoted the way libpq's conninfo parser expects.
  std::string value;
  const bool plain = !dbname.empty() && dbname.find_first_of(" \t\n'\\=") == std::string_view::npos;
  if (plain) {
    value = std::string(dbname);
  } else {
    value = "'";
    for (char c : dbname) {
      if (c == '\'' || c == '\\') value += '\\';
      value += c;
    }
    value += "'";
  }
  return absl::StrCat("host=127.0.0.1 port=", port_, " user=postgres dbname=", value);
}

absl::Status PostgresServer::CreateDatabase(std::string_view name_view) {
  // Debian's Abseil is built before C++17, so absl::string_view is not std::string_view.
  const std::string name(name_view);
  const std::string what = absl::StrCat("PostgresServer '", options_.name, "': CREATE DATABASE ");
  PGconn* conn = PQconnectdb(ConnectionString().c_str());
  absl::Status status;
  if (PQstatus(conn) != CONNECTION_OK) {
    status = absl::UnavailableError(absl::StrCat(what, name, ": ", PQerrorMessage(conn)));
  } else if (char* quoted = PQescapeIdentifier(conn, name.data(), name.size()); !quoted) {
    status = absl::InvalidArgumentError(absl::StrCat(what, name, ": ", PQerrorMessage(conn)));
  } else {
    // Not in a transaction block: CREATE DATABASE refuses to run inside one. FILE_COPY copies
    // template1's files instead of writing them all to the WAL (the default since 15): about half
    // the time here (0.09 against 0.16 s).
    PGresult* result =
        PQexec(conn, absl::StrCat("CREATE DATABASE ", quoted, " STRATEGY = FILE_COPY").c_str());
    PQfreemem(quoted);
    if (PQresultStatus(result) != PGRES_COMMAND_OK) {
      status = absl::InternalError(absl::StrCat(what, name, ": ", PQerrorMessage(conn)));
    }
    PQclear(result);
  }
  PQfinish(conn);
  return status;
}

bool PostgresServer::running() { return process_ != nullptr && process_->Running(); }

absl::Status PostgresServer::Stop() {
  if (process_ == nullptr) return absl::OkStatus();
  absl::StatusOr<int> status = process_->Terminate(SIGQUIT, kStopGrace);
  std::unique_ptr<Process> stopped = std::move(process_);
  if (!status.ok()) {
    return absl::Status(
        status.status().code(),
        absl::StrCat("PostgresServer '", options_.name, "': stop: ", status.status().message()));
  }
  // A SIGKILL during the grace period means orphans are possible, as after Kill9.
  if (WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL) killed_ = true;
  return absl::OkStatus();
}

absl::Status PostgresServer::Kill9() {
  if (process_ == nullptr) return absl::OkStatus();
  absl::StatusOr<int> status = process_->Terminate(SIGKILL, absl::ZeroDuration());
  process_.reset();
  killed_ = true;
  if (!status.ok()) {
    return absl::Status(
        status.status().code(),
        absl::StrCat("PostgresServer '", options_.name, "': kill -9: ", status.status().message()));
  }
  return absl::OkStatus();
}

absl::Status PostgresServer::WaitForOrphans(bool remove_segment) {
  std::optional<PostmasterShmem> shmem = ReadPostmasterShmem(data_directory());
  if (!shmem.has_value()) return absl::OkStatus();
  // Every backend stays attached to the postmaster's SysV segment until it exits, so zero
  // attachments means no orphan can still write to the data directory.
  const absl::Time deadline = absl::Now() + kOrphanTimeout;
  while (true) {
    const int attached = ShmemAttachedCount(*shmem);
    if (attached < 0) return absl::OkStatus();  // Already gone.
    if (attached == 0) {
      // A SIGKILLed postmaster never removes its segment; a restart would, but the destructor
      // is the last chance.
      if (remove_segment) RemoveShmemIfUnattached(*shmem);
      return absl::OkStatus();
    }
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("PostgresServer '", options_.name, "': ", attached,
                       " processes of the killed server still attached after ",
                       absl::FormatDuration(kOrphanTimeout)));
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
}

absl::StatusOr<std::string> PostgresServer::BaseBackup() {
  const std::string to = absl::StrCat(directory_, "/backup-", ++backups_);
  Process::Options backup;
  // Over the instance's own Unix socket, as the replication connection initdb's trust allows.
  backup.argv = {bin_dir_ + "/pg_basebackup",
                 "-h",
                 directory_,
                 "-p",
                 absl::StrCat(port_),
                 "-U",
                 "postgres",
                 "-D",
                 to,
                 "-X",
                 "stream",
                 "--checkpoint=fast",
                 "--no-sync"};
  backup.log_path = directory_ + "/basebackup.log";
  backup.user = user_;
  backup.working_dir = directory_;
  if (absl::Status s = Process::Run(std::move(backup), kReadyTimeout); !s.ok()) {
    return absl::Status(
        s.code(), absl::StrCat("PostgresServer '", name(), "': pg_basebackup: ", s.message()));
  }
  return to;
}

absl::Status PostgresServer::RestoreBaseBackup(const std::string& backup) {
  if (absl::Status s = Stop(); !s.ok()) return s;
  std::error_code ec;
  fs::remove_all(data_directory(), ec);
  if (!ec) fs::rename(backup, data_directory(), ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("PostgresServer '", name(), "': putting ", backup,
                                            " in place: ", ec.message()));
  }
  // No WAL archive (restore_command finds nothing; PostgreSQL insists on one for a recovery
  // that is not a standby's): recovery replays what the backup holds, then ends on a new
  // timeline. The setting stays, and is never used again without recovery.signal.
  std::ofstream(data_directory() + "/recovery.signal").close();
  std::ofstream(data_directory() + "/postgresql.auto.conf", std::ios::app)
      << "restore_command = 'false'\n";
  if (absl::Status s = Restart(); !s.ok()) return s;
  // The server takes connections (read-only) once recovery is consistent, before it ends.
  const absl::Time deadline = absl::Now() + kReadyTimeout;
  std::string last;
  while (true) {
    PGconn* c = PQconnectdb(ConnectionString().c_str());
    bool recovering = true;
    if (PQstatus(c) == CONNECTION_OK) {
      PGresult* r = PQexec(c, "SELECT pg_is_in_recovery()");
      if (PQresultStatus(r) == PGRES_TUPLES_OK)
        recovering = std::string(PQgetvalue(r, 0, 0)) == "t";
      PQclear(r);
    }
    last = PQerrorMessage(c);
    PQfinish(c);
    if (!recovering) break;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("PostgresServer '", name(), "': still recovering the backup ", last));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::OkStatus();
}

absl::Status PostgresServer::Restart() {
  if (absl::Status s = Stop(); !s.ok()) return s;
  if (killed_) {
    if (absl::Status s = WaitForOrphans(/*remove_segment=*/false); !s.ok()) return s;
  }
  // The port is ours to reuse, but for a moment it may still be bound (postgres sets
  // SO_REUSEADDR, so TIME_WAIT does not block it) and the old shared memory may still be
  // attached; retry within a bounded window.
  const absl::Time deadline = absl::Now() + kRestartRetryWindow;
  std::string error;
  while (true) {
    Outcome outcome = StartOnce(&error);
    if (outcome == Outcome::kReady) return absl::OkStatus();
    if (outcome == Outcome::kFailed || absl::Now() >= deadline) {
      return absl::InternalError(absl::StrCat("restart: ", error));
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
}

}  // namespace meridian::test_support
