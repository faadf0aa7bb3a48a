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
// whose result goes there: creates the missing parent folders, then opens the file for appending
// (which leaves an existing file's contents alone) and removes it again if it did not exist.
// InvalidArgument naming `flag` and the reason otherwise.
[[nodiscard]] inline absl::Status CheckWritableFile(const std::string& flag,
                                                    const std::string& path) {
  namespace fs = std::filesystem;
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty path"));
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': is a folder"));
  }
  if (p.has_parent_path()) {
    fs::create_directories(p.parent_path(), ec);
    if (ec) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': cannot create ",
                                                     p.parent_path().string(), ": ", ec.message()));
    }
  }
  const bool existed = fs::exists(p, ec);
  {
    std::ofstream out(path, std::ios::app);
    if (!out) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", path, "': cannot be written (", std::strerror(errno), ")"));
    }
  }
  if (!existed) fs::remove(p, ec);
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

}  // namespace meridian::common
