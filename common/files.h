#pragma once

// Checks that an output file or folder can be written, made before the work whose result goes
// there (a drill that removes a region for minutes, a load run, a simulation over many seeds), so
// that a bad output path is a usage error up front rather than a lost result at the end.
// Header-only, part of meridian_common.

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace meridian::common {

// Whether a file can be written at `path` (an output flag such as --out), checked before the work
// whose result goes there. An existing file (or the file a symlink points to) is opened for
// appending, which leaves its contents alone; for a new one, the missing parent folders are created
// (the writer will need them) and the folder is checked for write access, so nothing else is
// created or removed. InvalidArgument naming `flag` and the reason otherwise.
[[nodiscard]] inline absl::Status CheckWritableFile(const std::string& flag,
                                                    const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty path"));
  if (path.back() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': names a folder"));
  }
  std::error_code ec;
  const bool exists = fs::exists(path, ec);  // through symlinks
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': cannot be checked: ", ec.message()));
  }
  if (exists) {
    if (fs::is_directory(path, ec)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': is a folder"));
    }
    // Append mode leaves the contents alone (and works for /dev/stdout or a pipe).
    std::ofstream out(path, std::ios::app);
    if (!out) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", path, "': cannot be written (", std::strerror(errno), ")"));
    }
    return absl::OkStatus();
  }
  // A new file, or a dangling symlink: judged by where the file would be created.
  fs::path target(path);
  for (int hops = 0; fs::is_symlink(fs::symlink_status(target, ec)); ++hops) {
    if (hops == 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", path, "': too many levels of symbolic links"));
    }
    const fs::path next = fs::read_symlink(target, ec);
    if (ec) break;
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  const fs::path parent = target.has_parent_path() ? target.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': cannot create ", parent.string(), ": ", ec.message()));
  }
  if (::access(parent.c_str(), W_OK | X_OK) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': cannot be written in ",
                                                   parent.string(), " (", std::strerror(errno),
                                                   ")"));
  }
  return absl::OkStatus();
}

// Whether files can be written into the folder `dir` (an output folder such as --output-dir):
// creates it (and its parents) and writes, then removes, a small probe file in it.
// InvalidArgument naming `flag` and the reason otherwise.
[[nodiscard]] inline absl::Status CheckWritableDir(const std::string& flag,
                                                   const std::string& dir) {
  namespace fs = std::filesystem;
  if (dir.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty path"));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", dir, "': cannot create it: ", ec.message()));
  }
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", dir, "': not a folder"));
  }
  const std::string probe = absl::StrCat(dir, "/.write-check-", ::getpid());
  bool written = false;
  {
    std::ofstream out(probe, std::ios::trunc);
    out << "x\n";
    out.close();
    written = static_cast<bool>(out);
  }
  fs::remove(probe, ec);
  if (!written) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", dir, "': cannot write files in it"));
  }
  return absl::OkStatus();
}

// Writes `text` to `path` (its missing folders made) and says whether all of it reached the file:
// a benchmark's results, so that "wrote PATH" is never printed over a file that was not written.
[[nodiscard]] inline absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    return absl::UnavailableError(
        absl::StrCat("cannot write '", path, "': ", ec ? ec.message() : std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace meridian::common
