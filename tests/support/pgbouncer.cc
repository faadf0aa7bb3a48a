#include "tests/support/pgbouncer.h"

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/ports.h"
#include "tests/support/temp_dir.h"

namespace meridian::test_support {
namespace {

constexpr absl::Duration kBouncerReadyTimeout = absl::Seconds(10);
constexpr int kBouncerPortAttempts = 5;
constexpr size_t kBouncerLogTail = 3000;

std::string BouncerLogTail(const std::string& log) {
  return log.size() > kBouncerLogTail ? log.substr(log.size() - kBouncerLogTail) : log;
}

// pgbouncer and PostgreSQL refuse to run as root.
std::string PoolerUser() { return geteuid() == 0 ? "postgres" : ""; }

}  // namespace

absl::StatusOr<std::unique_ptr<PgBouncer>> PgBouncer::Start(Options options) {
  if (options.server_port == 0) return absl::InvalidArgumentError("PgBouncer: no server_port");
  const char* env = getenv("MERIDIAN_PGBOUNCER");
  std::string binary = env != nullptr && env[0] != '\0' ? env : "/usr/sbin/pgbouncer";
  if (access(binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "PgBouncer: ", binary, " cannot be run (deploy/install-deps.sh installs pgbouncer)"));
  }
  absl::StatusOr<std::string> directory = MakeTempDir(options.name, PoolerUser());
  if (!directory.ok()) return directory.status();
  // From here the destructor removes the directory on every error path.
  std::unique_ptr<PgBouncer> pooler(
      new PgBouncer(std::move(options), std::move(binary), *directory));
  {
    // Trust auth still looks the user up in auth_file.
    std::ofstream users(pooler->directory_ + "/users.txt");
    users << "\"postgres\" \"\"\n";
    if (!users) return absl::InternalError("PgBouncer: cannot write users.txt");
  }
  if (absl::Status st =
          StartOnAFreePort("PgBouncer", kBouncerPortAttempts, &pooler->port_,
                           [&](std::string* error) { return pooler->StartOnce(error); });
      !st.ok()) {
    return st;
  }
  return pooler;
}

PortStart PgBouncer::StartOnce(std::string* error) {
  const std::string ini = directory_ + "/pgbouncer.ini";
  {
    std::ofstream out(ini, std::ios::trunc);
    out << "[databases]\n* = host=127.0.0.1 port=" << options_.server_port << "\n"
        << "[pgbouncer]\n"
        << "listen_addr = 127.0.0.1\nlisten_port = " << port_ << "\n"
        << "unix_socket_dir =\n"
        << "auth_type = trust\nauth_file = " << directory_ << "/users.txt\n"
        << "pool_mode = transaction\n"
        << "max_client_conn = 500\ndefault_pool_size = 40\n"
        // A server that went away is dialled again at once, not after the default 15 s.
        << "server_login_retry = 0\n";
    if (!out) {
      *error = absl::StrCat("PgBouncer: cannot write ", ini);
      return PortStart::kFailed;
    }
  }
  const std::string log = log_path();
  const uint64_t log_offset = FileSize(log);
  Process::Options p;
  p.argv = {binary_, ini};
  p.log_path = log;
  p.user = PoolerUser();
  p.working_dir = directory_;
  const std::string what = absl::StrCat("PgBouncer '", options_.name, "' on port ", port_);
  absl::StatusOr<std::unique_ptr<Process>> process = Process::Spawn(std::move(p));
  if (!process.ok()) {
    *error = absl::StrCat(what, ": ", process.status().message());
    return PortStart::kFailed;
  }
  // It logs where it listens once it has bound the port; another process on the port makes it
  // exit instead.
  const std::string listening = absl::StrCat("listening on 127.0.0.1:", port_);
  const absl::Time deadline = absl::Now() + kBouncerReadyTimeout;
  while (true) {
    const std::string output = FileFrom(log, log_offset);
    if (!(*process)->Running()) {
      *error = absl::StrCat(what, ": ", DescribeWaitStatus(*(*process)->Wait(absl::ZeroDuration())),
                            " during startup; log (", log, "):\n", BouncerLogTail(output));
      return absl::StrContains(output, "Address already in use") ? PortStart::kPortInUse
                                                                 : PortStart::kFailed;
    }
    if (absl::StrContains(output, listening)) break;
    if (absl::Now() >= deadline) {
      (void)(*process)->Terminate(SIGKILL, absl::ZeroDuration());
      *error =
          absl::StrCat(what, ": not listening after ", absl::FormatDuration(kBouncerReadyTimeout),
                       "; log (", log, "):\n", BouncerLogTail(output));
      return PortStart::kFailed;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  process_ = *std::move(process);
  return PortStart::kReady;
}

PgBouncer::~PgBouncer() {
  if (process_ != nullptr) (void)process_->Terminate(SIGKILL, absl::ZeroDuration());
  RemoveTempDir(directory_);
}

std::string PgBouncer::ConnectionString(std::string_view dbname) const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " user=postgres dbname=", std::string(dbname));
}

}  // namespace meridian::test_support
