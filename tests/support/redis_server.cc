#include "tests/support/redis_server.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <sys/time.h>

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/ports.h"
#include "tests/support/temp_dir.h"

namespace meridian::test_support {
namespace {

// Limits on every wait and retry, so a broken machine fails a test instead of hanging it.
constexpr absl::Duration kReadyTimeout = absl::Seconds(10);
constexpr absl::Duration kStopGrace = absl::Seconds(5);
constexpr absl::Duration kRestartRetryWindow = absl::Seconds(5);
constexpr int kPortAttemptsMax = 5;
constexpr size_t kLogTailBytes = 3000;

std::string ErrorLines(const std::string& log) {
  return log.size() > kLogTailBytes ? log.substr(log.size() - kLogTailBytes) : log;
}

enum class Probe { kOurs, kNotYet, kSomeoneElse };

// PING, then INFO to check the answer comes from our child: if another server won the race for
// the port, a PONG alone would fool us.
Probe ProbeServer(uint16_t port, pid_t pid) {
  timeval timeout{1, 0};
  redisContext* ctx = redisConnectWithTimeout("127.0.0.1", port, timeout);
  if (ctx == nullptr) return Probe::kNotYet;
  Probe result = Probe::kNotYet;
  if (ctx->err == 0 && redisSetTimeout(ctx, timeout) == REDIS_OK) {
    auto* pong = static_cast<redisReply*>(redisCommand(ctx, "PING"));
    if (pong != nullptr && pong->type == REDIS_REPLY_STATUS &&
        std::string_view(pong->str, pong->len) == "PONG") {
      auto* info = static_cast<redisReply*>(redisCommand(ctx, "INFO server"));
      if (info != nullptr && info->type == REDIS_REPLY_STRING) {
        result = absl::StrContains(absl::string_view(info->str, info->len),
                                   absl::StrCat("process_id:", pid, "\r\n"))
                     ? Probe::kOurs
                     : Probe::kSomeoneElse;
      }
      if (info != nullptr) freeReplyObject(info);
    }
    if (pong != nullptr) freeReplyObject(pong);
  }
  redisFree(ctx);
  return result;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start() { return Start(Options{}); }

absl::StatusOr<std::unique_ptr<RedisServer>> RedisServer::Start(Options options) {
  const char* env = getenv("MERIDIAN_REDIS_SERVER");
  std::string binary = env != nullptr && env[0] != '\0' ? env : "redis-server";
  absl::StatusOr<std::string> directory = MakeTempDir(options.name, "");
  if (!directory.ok()) return directory.status();
  // From here the destructor removes the directory on every error path.
  std::unique_ptr<RedisServer> server(
      new RedisServer(std::move(options), std::move(binary), *directory));
  if (absl::Status st = StartOnAFreePort(
          absl::StrCat("RedisServer '", server->name(), "'"), kPortAttemptsMax, &server->port_,
          [&](std::string* error) { return server->StartOnce(error); });
      !st.ok()) {
    return st;
  }
  return server;
}

RedisServer::Outcome RedisServer::StartOnce(std::string* error) {
  const std::string log = log_path();
  const uint64_t log_offset = FileSize(log);
  Process::Options redis;
  redis.argv = {binary_,  "--port", absl::StrCat(port_), "--bind",    "127.0.0.1",
                "--save", "",       "--appendonly",      "no",        "--daemonize",
                "no",     "--dir",  directory_,          "--logfile", ""};
  redis.log_path = log;
  redis.working_dir = directory_;
  const std::string what = absl::StrCat("RedisServer '", name(), "' on port ", port_);
  absl::StatusOr<std::unique_ptr<Process>> process = Process::Spawn(std::move(redis));
  if (!process.ok()) {
    *error = absl::StrCat(what, ": ", process.status().message());
    return Outcome::kFailed;
  }
  const absl::Time deadline = absl::Now() + kReadyTimeout;
  while (true) {
    if (!(*process)->Running()) {
      const std::string output = FileFrom(log, log_offset);
      *error = absl::StrCat(what, ": server ",
                            DescribeWaitStatus(*(*process)->Wait(absl::ZeroDuration())),
                            " during startup; log (", log, "):\n", ErrorLines(output));
      return absl::StrContains(output, "Address already in use") ? Outcome::kPortInUse
                                                                 : Outcome::kFailed;
    }
    Probe probe = ProbeServer(port_, (*process)->Pid());
    if (probe == Probe::kOurs) break;
    if (probe == Probe::kSomeoneElse) {
      // Ours cannot bind; it is about to exit with "Address already in use".
      (void)(*process)->Terminate(SIGKILL, absl::ZeroDuration());
      *error = absl::StrCat(what, ": another server answers on the port");
      return Outcome::kPortInUse;
    }
    if (absl::Now() >= deadline) {
      (void)(*process)->Terminate(SIGTERM, kStopGrace);
      *error = absl::StrCat(what, ": no PONG after ", absl::FormatDuration(kReadyTimeout),
                            "; log (", log, "):\n", ErrorLines(FileFrom(log, log_offset)));
      return Outcome::kFailed;
    }
    absl::SleepFor(absl::Milliseconds(2));
  }
  process_ = *std::move(process);
  return Outcome::kReady;
}

RedisServer::~RedisServer() {
  // Nothing to save and nothing to flush: SIGKILL is the quickest clean stop.
  (void)Kill9();
  RemoveTempDir(directory_);
}

bool RedisServer::running() { return process_ != nullptr && process_->Running(); }

absl::Status RedisServer::Stop() {
  if (process_ == nullptr) return absl::OkStatus();
  absl::StatusOr<int> status = process_->Terminate(SIGTERM, kStopGrace);
  process_.reset();
  if (!status.ok()) {
    return absl::Status(
        status.status().code(),
        absl::StrCat("RedisServer '", name(), "': stop: ", status.status().message()));
  }
  return absl::OkStatus();
}

absl::Status RedisServer::Kill9() {
  if (process_ == nullptr) return absl::OkStatus();
  absl::StatusOr<int> status = process_->Terminate(SIGKILL, absl::ZeroDuration());
  process_.reset();
  if (!status.ok()) {
    return absl::Status(
        status.status().code(),
        absl::StrCat("RedisServer '", name(), "': kill -9: ", status.status().message()));
  }
  return absl::OkStatus();
}

absl::Status RedisServer::Restart() {
  if (absl::Status s = Stop(); !s.ok()) return s;
  // Redis sets SO_REUSEADDR, so TIME_WAIT connections do not block the port; but if another
  // process grabbed it meanwhile we can only wait, and only so long.
  const absl::Time deadline = absl::Now() + kRestartRetryWindow;
  std::string error;
  while (true) {
    Outcome outcome = StartOnce(&error);
    if (outcome == Outcome::kReady) return absl::OkStatus();
    if (outcome == Outcome::kFailed || absl::Now() >= deadline) {
      return absl::InternalError(absl::StrCat("restart: ", error));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

}  // namespace meridian::test_support
