#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meridian::test_support {

// Creates a fresh directory named "meridian-<prefix>-XXXXXX" for one server instance, under the
// first of: $MERIDIAN_TEST_TMPDIR; /dev/shm if it is a tmpfs with at least 1 GiB free (copies
// there are several times faster than on disk); /tmp when running as root (the directory must be
// reachable by `owner`, and $TMPDIR may not be); $TMPDIR; /tmp. Bases longer than 48 bytes are
// skipped because a Unix socket path inside the directory must fit in 107 bytes. If running as
// root and `owner` is non-empty, the directory is chown'ed to that user. Characters of `prefix`
// other than [A-Za-z0-9_-] become '_'.
//
// The directory records its creating process; the first call in a process removes directories
// under the same base whose creator no longer exists (left by a test that was killed).
// Thread-safe.
[[nodiscard]] absl::StatusOr<std::string> MakeTempDir(std::string_view prefix,
                                                      std::string_view owner);

// Makes `pid` the owner of `dir` (a directory from MakeTempDir): sweeps then remove it once that
// process is gone rather than once its creator is. For a directory that outlives the process
// that made it, such as the PostgreSQL template a ctest fixture makes for the whole run (its
// owner is ctest).
[[nodiscard]] absl::Status HandTempDirTo(const std::string& dir, pid_t pid);

// Removes `dir` recursively, unless MERIDIAN_KEEP_TEST_DIRS is set to a non-empty value other
// than "0", in which case it prints the kept path to stderr. Errors are ignored (best effort).
void RemoveTempDir(const std::string& dir);

// Removes directories under the current base whose creating process no longer exists. Runs once
// per process on the first MakeTempDir; exposed for tests. Best effort.
void SweepStaleTempDirs();

}  // namespace meridian::test_support
