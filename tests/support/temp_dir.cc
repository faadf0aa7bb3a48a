#include "tests/support/temp_dir.h"

#include <errno.h>
#include <linux/magic.h>
#include <pwd.h>
#include <string.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "tests/support/pg_shmem.h"

namespace meridian::test_support {
namespace {

namespace fs = std::filesystem;

// Longest base directory we accept: "<base>/meridian-<prefix>-XXXXXX/.s.PGSQL.65535" must stay
// under the 108-byte sun_path.
constexpr size_t kBaseLengthMax = 48;
// /dev/shm is used only with at least this much room: a PostgreSQL instance takes about 40 MB.
constexpr uint64_t kShmFreeBytesMin = uint64_t{1} << 30;
constexpr const char* kOwnerFile = ".meridian-owner";

bool UsableBase(const char* dir) {
  return dir != nullptr && dir[0] == '/' && strlen(dir) <= kBaseLengthMax &&
         access(dir, W_OK | X_OK) == 0;
}

// Where instance directories go. /dev/shm first: copying a 39 MB PostgreSQL template there took
// 45-70 ms against 270-300 ms on this machine's ext4 /tmp under load, and it is world-traversable,
// so the `postgres` user can reach it when we are root.
std::string BaseDir() {
  if (const char* env = getenv("MERIDIAN_TEST_TMPDIR"); UsableBase(env)) return env;
  struct statfs fs_info {};
  if (UsableBase("/dev/shm") && statfs("/dev/shm", &fs_info) == 0 &&
      fs_info.f_type == TMPFS_MAGIC &&
      static_cast<uint64_t>(fs_info.f_bavail) * static_cast<uint64_t>(fs_info.f_bsize) >=
          kShmFreeBytesMin) {
    return "/dev/shm";
  }
  // As root, $TMPDIR may be private to root; /tmp is reachable by every user.
  if (geteuid() == 0) return "/tmp";
  if (const char* env = getenv("TMPDIR"); UsableBase(env)) return env;
  return "/tmp";
}

// "<pid> <start time in clock ticks>" of a process, which names it uniquely even if the pid is
// reused later; empty if the process does not exist.
std::string ProcessIdentity(const std::string& pid) {
  std::ifstream in("/proc/" + pid + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // Field 2 (comm) may contain spaces and parentheses; fields resume after the last ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return "";
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  // After ')': field 3 (state) ... field 22 (starttime) is the 20th.
  for (int i = 0; i < 20 && (fields >> field); ++i) {
  }
  return pid + " " + field;
}

// Our PID namespace ("pid:[4026531836]"): a pid means nothing outside it, so directories made
// in another namespace sharing this filesystem are never judged dead.
std::string PidNamespace() {
  std::error_code ec;
  fs::path ns = fs::read_symlink("/proc/self/ns/pid", ec);
  return ec ? "?" : ns.string();
}

// Removes instance directories left behind by test processes that died before their destructors
// ran (SIGKILL, a crash, a timeout). Their servers are gone (PR_SET_PDEATHSIG), but on /dev/shm
// the files would hold RAM until reboot, and a PostgreSQL instance's SysV segment would stay.
// Directories without an owner file (kept on purpose, or not ours) are left alone. Best effort:
// errors are ignored.
void SweepStale(const std::string& base) {
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(base, ec)) {
    if (!absl::StartsWith(entry.path().filename().string(), "meridian-")) continue;
    std::ifstream owner(entry.path() / kOwnerFile);
    std::string pid;
    std::string start;
    std::string pid_namespace;
    if (!(owner >> pid >> start >> pid_namespace) || pid_namespace != PidNamespace()) continue;
    if (ProcessIdentity(pid) == pid + " " + start) continue;
    // A PostgreSQL instance whose postmaster was SIGKILLed with the test also left a SysV segment.
    if (auto shmem = ReadPostmasterShmem((entry.path() / "data").string())) {
      RemoveShmemIfUnattached(*shmem);
    }
    fs::remove_all(entry.path(), ec);
  }
}

}  // namespace

absl::StatusOr<std::string> MakeTempDir(std::string_view prefix, std::string_view owner) {
  const std::string base = BaseDir();
  static std::once_flag swept;
  std::call_once(swept, [] { SweepStaleTempDirs(); });

  std::string clean(prefix.substr(0, 24));
  for (char& c : clean) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_';
    if (!ok) c = '_';
  }
  std::string pattern = absl::StrCat(base, "/meridian-", clean, "-XXXXXX");
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", strerror(errno)));
  }
  std::string dir(buffer.data());
  if (absl::Status s = HandTempDirTo(dir, getpid()); !s.ok()) {
    RemoveTempDir(dir);
    return s;
  }
  if (geteuid() == 0 && !owner.empty()) {
    struct passwd pw {};
    struct passwd* found = nullptr;
    char pw_buffer[4096];
    std::string owner_name(owner);
    getpwnam_r(owner_name.c_str(), &pw, pw_buffer, sizeof(pw_buffer), &found);
    if (found == nullptr) {
      RemoveTempDir(dir);
      return absl::NotFoundError(absl::StrCat("MakeTempDir: unknown user '", owner_name, "'"));
    }
    if (chown(dir.c_str(), pw.pw_uid, pw.pw_gid) != 0) {
      int error = errno;
      RemoveTempDir(dir);
      return absl::InternalError(absl::StrCat("chown ", dir, ": ", strerror(error)));
    }
  }
  return dir;
}

absl::Status HandTempDirTo(const std::string& dir, pid_t pid) {
  const std::string identity = ProcessIdentity(std::to_string(pid));
  if (identity.empty()) {
    return absl::NotFoundError(absl::StrCat("HandTempDirTo ", dir, ": no process ", pid));
  }
  // A concurrent sweep never reads half an owner.
  absl::Status written = common::ReplaceTextFile(dir + "/" + kOwnerFile,
                                                 absl::StrCat(identity, " ", PidNamespace(), "\n"));
  if (!written.ok()) return absl::InternalError(absl::StrCat("HandTempDirTo: ", written.message()));
  return absl::OkStatus();
}

void SweepStaleTempDirs() { SweepStale(BaseDir()); }

void RemoveTempDir(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ignored;
  const char* keep = getenv("MERIDIAN_KEEP_TEST_DIRS");
  if (keep != nullptr && keep[0] != '\0' && std::string_view(keep) != "0") {
    // Without the owner file, no later sweep removes it.
    fs::remove(fs::path(dir) / kOwnerFile, ignored);
    std::fprintf(stderr, "MERIDIAN_KEEP_TEST_DIRS: kept %s\n", dir.c_str());
    return;
  }
  fs::remove_all(dir, ignored);
}

}  // namespace meridian::test_support
