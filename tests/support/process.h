#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace meridian::test_support {

// A child process owned by a test: spawned with fork/exec, its stdout and stderr appended to a log
// file, and killed (SIGKILL) and reaped when the Process object is destroyed.
//
// A child never outlives the test process: it gets PR_SET_PDEATHSIG(SIGKILL) before exec, so the
// kernel kills it when the parent dies, even by SIGKILL. Caveat: Linux delivers that signal when
// the *thread* that forked exits, not only the process. Spawn from a thread that lives as long as
// the child should (the gtest main thread is fine; a short-lived std::thread is not).
//
// Grandchildren (e.g. PostgreSQL backends forked by the postmaster) are the child's business; the
// servers in this folder exit them on their own when their parent dies.
//
// Not thread-safe: one thread drives a Process at a time.
class Process {
 public:
  // Every member has a default, so designated initializers may name any subset (GCC 12 warns
  // under -Wextra about a designated initializer that skips a member without one).
  struct Options {
    // argv[0] is the program: an absolute path, or a name looked up in PATH. REQUIRES: non-empty.
    std::vector<std::string> argv = {};
    // stdout and stderr are appended here (the file is created if missing). Empty: /dev/null.
    std::string log_path = {};
    // If non-empty and the test runs as root, the child switches to this user (gid, then
    // supplementary groups = {gid}, then uid) before exec, like `runuser -u USER` but without an
    // intermediate process, so Pid() is the program itself. If not root, this must name the
    // current user or be empty.
    std::string user = {};
    // The child chdir()s here before exec. Empty: inherit (which may be unreadable for `user`).
    std::string working_dir = {};
    // Extra "KEY=VALUE" entries that override or extend the inherited environment.
    std::vector<std::string> env = {};
  };

  // Forks and execs. Fails (with errno text) if the user is unknown, the log cannot be opened, or
  // exec fails; in those cases no child is left behind.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Process>> Spawn(Options options);

  // Runs argv to completion (same Options) and returns OK iff it exits with status 0 within
  // `timeout`; otherwise an error naming the program and quoting the tail of the log.
  [[nodiscard]] static absl::Status Run(Options options, absl::Duration timeout);

  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // SIGKILLs the child if it has not been reaped yet, and reaps it.
  ~Process();

  [[nodiscard]] pid_t Pid() const { return pid_; }
  [[nodiscard]] const std::string& log_path() const { return log_path_; }

  // Sends `signal` to the child. FailedPrecondition once the child has been reaped.
  [[nodiscard]] absl::Status Signal(int signal);

  // Waits up to `timeout` for the child to exit and reaps it. Returns the wait status (use
  // WIFEXITED/WEXITSTATUS/WIFSIGNALED); DeadlineExceeded if it is still running. After the child
  // has been reaped, returns the same status again at once.
  [[nodiscard]] absl::StatusOr<int> Wait(absl::Duration timeout);

  // True until the child has exited (reaps it if it has).
  [[nodiscard]] bool Running();

  // Sends `signal`, waits up to `grace`, then SIGKILLs and waits. Returns the wait status.
  [[nodiscard]] absl::StatusOr<int> Terminate(int signal, absl::Duration grace);

 private:
  Process(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}

  pid_t pid_;
  std::string log_path_;
  bool reaped_ = false;
  int wait_status_ = 0;
};

// The last `max_bytes` of a file (for error messages); empty if it cannot be read.
[[nodiscard]] std::string FileTail(const std::string& path, size_t max_bytes = 2048);
// The file from byte `offset` on (what a log gained since `offset`); empty if unreadable.
[[nodiscard]] std::string FileFrom(const std::string& path, uint64_t offset);
// The file's size in bytes; 0 if it does not exist.
[[nodiscard]] uint64_t FileSize(const std::string& path);

// "exited with status N" / "killed by signal N (SIGNAME)" for a wait status.
[[nodiscard]] std::string DescribeWaitStatus(int wait_status);

}  // namespace meridian::test_support
