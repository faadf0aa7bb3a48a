#include "tests/support/process.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/close_range.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace meridian::test_support {
namespace {

// What a child reports through the error pipe when something fails between fork and exec.
struct ChildFailure {
  int stage;
  int error;
};

constexpr const char* kStageNames[] = {"dup2",  "setgroups", "setgid",        "setuid",
                                       "prctl", "chdir",     "parent exited", "execve"};

absl::Status ErrnoStatus(const std::string& what, int error) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(error)));
}

// Resolves argv[0] the way execvp would, but before fork: the child may only call
// async-signal-safe functions, and a PATH search allocates.
absl::StatusOr<std::string> ResolveProgram(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return absl::NotFoundError(absl::StrCat("program not found in PATH: ", program));
}

// The inherited environment with `overrides` ("KEY=VALUE") replacing or extending it.
std::vector<std::string> MergeEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> merged;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    std::string_view key = entry.substr(0, entry.find('='));
    bool overridden = std::any_of(overrides.begin(), overrides.end(), [&](const std::string& o) {
      return std::string_view(o).substr(0, o.find('=')) == key;
    });
    if (!overridden) merged.emplace_back(entry);
  }
  merged.insert(merged.end(), overrides.begin(), overrides.end());
  return merged;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Runs in the child between fork and exec: async-signal-safe calls only, no allocation.
[[noreturn]] void ChildAfterFork(int log_fd, int null_fd, int error_fd, bool switch_user, uid_t uid,
                                 gid_t gid, const char* working_dir, pid_t parent_pid,
                                 const char* program, char* const* argv, char* const* envp) {
  auto fail = [error_fd](int stage) {
    ChildFailure failure{stage, errno};
    ssize_t ignored = write(error_fd, &failure, sizeof(failure));
    (void)ignored;
    _exit(127);
  };
  // Own process group: a terminal's Ctrl-C or a signal to the test's group reaches the test, which
  // then stops its servers deliberately (or dies, and PDEATHSIG takes them down).
  setpgid(0, 0);
  if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(log_fd, STDOUT_FILENO) < 0 ||
      dup2(log_fd, STDERR_FILENO) < 0) {
    fail(0);
  }
  if (switch_user) {
    if (setgroups(1, &gid) != 0) fail(1);
    if (setgid(gid) != 0) fail(2);
    if (setuid(uid) != 0) fail(3);
  }
  // After the credential change: the kernel clears the parent-death signal when credentials
  // change, so setting it earlier would be lost.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail(4);
  // The parent may have died before prctl took effect; then nobody would ever signal us.
  if (getppid() != parent_pid) {
    errno = 0;
    fail(6);
  }
  if (working_dir != nullptr && chdir(working_dir) != 0) fail(5);
  // Signals the test ignores (often SIGPIPE) stay ignored across exec; servers expect defaults.
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &default_action, nullptr);
  }
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, nullptr);
  // Descriptors the test opened without O_CLOEXEC (listening sockets, files) must not leak into a
  // server that may outlive them. Best effort: older kernels lack close_range.
  syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);
  execve(program, argv, envp);
  fail(7);
  _exit(127);  // Unreachable; fail() exits.
}

}  // namespace

absl::StatusOr<std::unique_ptr<Process>> Process::Spawn(Options options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("Process::Spawn: empty argv");
  absl::StatusOr<std::string> program = ResolveProgram(options.argv[0]);
  if (!program.ok()) return program.status();

  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
  if (!options.user.empty()) {
    struct passwd pw {};
    struct passwd* found = nullptr;
    char buffer[4096];
    int rc = getpwnam_r(options.user.c_str(), &pw, buffer, sizeof(buffer), &found);
    if (found == nullptr) {
      return absl::NotFoundError(absl::StrCat("Process::Spawn: unknown user '", options.user, "'",
                                              rc != 0 ? absl::StrCat(": ", strerror(rc)) : ""));
    }
    if (geteuid() == 0) {
      switch_user = pw.pw_uid != 0;
      uid = pw.pw_uid;
      gid = pw.pw_gid;
    } else if (pw.pw_uid != geteuid()) {
      return absl::PermissionDeniedError(absl::StrCat("Process::Spawn: cannot run as '",
                                                      options.user, "' without root (euid ",
                                                      geteuid(), ")"));
    }
  }

  const std::string& log_path = options.log_path.empty() ? "/dev/null" : options.log_path;
  int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoStatus(absl::StrCat("open ", log_path), errno);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    int error = errno;
    close(log_fd);
    return ErrnoStatus("open /dev/null", error);
  }
  int error_pipe[2];
  if (pipe2(error_pipe, O_CLOEXEC) != 0) {
    int error = errno;
    close(log_fd);
    close(null_fd);
    return ErrnoStatus("pipe2", error);
  }

  std::vector<char*> argv = CStrings(options.argv);
  std::vector<std::string> env_strings = MergeEnvironment(options.env);
  std::vector<char*> envp = CStrings(env_strings);
  const char* working_dir = options.working_dir.empty() ? nullptr : options.working_dir.c_str();
  pid_t parent_pid = getpid();

  pid_t pid = fork();
  if (pid == 0) {
    ChildAfterFork(log_fd, null_fd, error_pipe[1], switch_user, uid, gid, working_dir, parent_pid,
                   program->c_str(), argv.data(), envp.data());
  }
  int fork_error = errno;
  close(error_pipe[1]);
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    close(error_pipe[0]);
    return ErrnoStatus("fork", fork_error);
  }

  // EOF without data means exec succeeded (the CLOEXEC pipe closed); data means the child failed.
  ChildFailure failure{};
  ssize_t n;
  do {
    n = read(error_pipe[0], &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  close(error_pipe[0]);
  auto process = std::unique_ptr<Process>(new Process(pid, options.log_path));
  if (n == static_cast<ssize_t>(sizeof(failure))) {
    (void)process->Wait(absl::Seconds(5));
    const char* stage = failure.stage >= 0 && failure.stage < 8 ? kStageNames[failure.stage] : "?";
    return absl::InternalError(absl::StrCat("Process::Spawn ", *program, ": ", stage,
                                            " failed in child: ", strerror(failure.error)));
  }
  return process;
}

absl::Status Process::Run(Options options, absl::Duration timeout) {
  std::string what = absl::StrJoin(options.argv, " ");
  std::string log_path = options.log_path;
  absl::StatusOr<std::unique_ptr<Process>> process = Spawn(std::move(options));
  if (!process.ok()) return process.status();
  absl::StatusOr<int> status = (*process)->Wait(timeout);
  if (!status.ok()) {
    (void)(*process)->Terminate(SIGKILL, absl::ZeroDuration());
    return absl::DeadlineExceededError(absl::StrCat("`", what, "` did not finish within ",
                                                    absl::FormatDuration(timeout), "; log tail:\n",
                                                    FileTail(log_path)));
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat("`", what, "` ", DescribeWaitStatus(*status),
                                            "; log tail:\n", FileTail(log_path)));
  }
  return absl::OkStatus();
}

Process::~Process() {
  if (!reaped_) (void)Terminate(SIGKILL, absl::ZeroDuration());
}

absl::Status Process::Signal(int signal) {
  if (reaped_) {
    return absl::FailedPreconditionError(
        absl::StrCat("process ", pid_, " already exited (", DescribeWaitStatus(wait_status_), ")"));
  }
  // Not yet reaped, so the pid cannot have been reused: at worst it is a zombie.
  if (kill(pid_, signal) != 0) return ErrnoStatus(absl::StrCat("kill ", pid_), errno);
  return absl::OkStatus();
}

absl::StatusOr<int> Process::Wait(absl::Duration timeout) {
  if (reaped_) return wait_status_;
  const absl::Time deadline = absl::Now() + timeout;
  // Polling keeps this independent of SIGCHLD handling elsewhere in the test; the backoff caps the
  // extra latency at 10 ms.
  absl::Duration pause = absl::Milliseconds(1);
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      wait_status_ = status;
      return status;
    }
    if (r < 0 && errno != EINTR) return ErrnoStatus(absl::StrCat("waitpid ", pid_), errno);
    const absl::Time now = absl::Now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running after ", absl::FormatDuration(timeout)));
    }
    absl::SleepFor(std::min(pause, deadline - now));
    pause = std::min(pause * 2, absl::Milliseconds(10));
  }
}

bool Process::Running() { return !Wait(absl::ZeroDuration()).ok(); }

absl::StatusOr<int> Process::Terminate(int signal, absl::Duration grace) {
  if (reaped_) return wait_status_;
  if (absl::Status s = Signal(signal); !s.ok()) return s;
  if (absl::StatusOr<int> status = Wait(grace); status.ok()) return status;
  if (absl::Status s = Signal(SIGKILL); !s.ok()) return s;
  // SIGKILL cannot be ignored; a process in uninterruptible sleep may still take a moment.
  return Wait(absl::Seconds(30));
}

std::string FileTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return "";
  const std::streamoff size = in.tellg();
  const std::streamoff start = std::max<std::streamoff>(0, size - std::streamoff(max_bytes));
  in.seekg(start);
  std::string tail(static_cast<size_t>(size - start), '\0');
  in.read(tail.data(), size - start);
  tail.resize(static_cast<size_t>(in.gcount()));
  return tail;
}

std::string FileFrom(const std::string& path, uint64_t offset) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(static_cast<std::streamoff>(offset));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

uint64_t FileSize(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

std::string DescribeWaitStatus(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const char* name = sigabbrev_np(WTERMSIG(wait_status));
    return absl::StrCat("killed by signal ", WTERMSIG(wait_status), " (SIG", name ? name : "?",
                        ")");
  }
  return absl::StrCat("wait status ", wait_status);
}

}  // namespace meridian::test_support
