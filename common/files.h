#pragma once

// Checks that an output file or folder can be written, made before the work whose result goes
// there (a drill that removes a region for minutes, a load run, a simulation over many seeds), so
// that a bad output path is a usage error up front rather than a lost result at the end.
// Header-only, part of meridian_common.

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace meridian::common {

namespace files_internal {

// Where opening `path` for writing creates the file: `path` itself, or the path a (dangling)
// symlink finally points at, following up to 16 links; nullopt past that. A link that cannot be
// read ends the walk where it is (the open will then report it). Shared by CheckWritableFile and
// MakeParentFolders so that the folders made are the ones checked.
[[nodiscard]] inline std::optional<std::filesystem::path> WhereCreated(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target(path);
  for (int hops = 0; fs::is_symlink(fs::symlink_status(target, ec)); ++hops) {
    if (hops == 16) return std::nullopt;
    const fs::path next = fs::read_symlink(target, ec);
    if (ec) break;
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  return target;
}

// The folder a file at `target` goes in ("." for a bare name).
inline std::filesystem::path FolderOf(const std::filesystem::path& target) {
  return target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
}

}  // namespace files_internal

// Whether a file can be written at `path` (an output flag such as --out), checked before the work
// whose result goes there. Changes nothing on disk, so a command refused or failed after the check
// leaves no trace: an existing file (or the file a symlink points to) is opened for appending,
// which leaves its contents alone; for a new one (or a dangling symlink, judged by its target) the
// nearest existing ancestor of its folder must be a folder that can be written and searched, and no
// part of the path may be a file. The writer makes the missing folders with MakeParentFolders right
// before it creates the file. InvalidArgument naming `flag` and the reason otherwise.
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
  const std::optional<fs::path> target = files_internal::WhereCreated(path);
  if (!target) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': too many levels of symbolic links"));
  }
  const fs::path parent = files_internal::FolderOf(*target);
  // Up from the folder to the nearest part that exists: the missing folders are made in it later.
  fs::path existing = parent;
  for (;;) {
    const fs::file_status st = fs::status(existing, ec);  // through symlinks
    if (st.type() != fs::file_type::not_found) {
      if (st.type() == fs::file_type::none) {  // an error other than "not there"
        return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': cannot check ",
                                                       existing.string(), ": ", ec.message()));
      }
      break;
    }
    if (fs::is_symlink(fs::symlink_status(existing, ec))) {
      return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': ", existing.string(),
                                                     " is a symbolic link to nothing"));
    }
    fs::path up = existing.parent_path();
    if (up.empty()) up = ".";
    if (up == existing) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, " '", path, "': no part of ", parent.string(), " exists"));
    }
    existing = up;
  }
  if (!fs::is_directory(existing, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': ", existing.string(), " is not a folder"));
  }
  if (::access(existing.c_str(), W_OK | X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': ",
                     existing == parent ? "cannot be written in "
                                        : absl::StrCat("cannot create ", parent.string(), " in "),
                     existing.string(), " (", std::strerror(errno), ")"));
  }
  return absl::OkStatus();
}

// CheckWritableFile for a file whose folder must exist already, as its writer makes none (a
// daemon's audit log, the witness's lease store): a missing folder is named as such.
[[nodiscard]] inline absl::Status CheckWritableFileInExistingFolder(const std::string& flag,
                                                                    const std::string& path) {
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!folder.empty() && !std::filesystem::is_directory(folder, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, " '", path, "': the folder '", folder.string(), "' does not exist"));
  }
  return CheckWritableFile(flag, path);
}

// Makes the missing folders a new file at `path` goes in (for a dangling symlink, those of the file
// it points at, as CheckWritableFile judged them). What a writer calls right before it creates a
// file checked with CheckWritableFile. OK if they exist already; Unavailable with the reason if
// they cannot be made.
[[nodiscard]] inline absl::Status MakeParentFolders(const std::string& path) {
  namespace fs = std::filesystem;
  const std::optional<fs::path> target = files_internal::WhereCreated(path);
  if (!target) {
    return absl::UnavailableError(absl::StrCat("'", path, "': too many levels of symbolic links"));
  }
  const fs::path parent = files_internal::FolderOf(*target);
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("'", path, "': cannot create ", parent.string(), ": ", ec.message()));
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

// The same check, leaving nothing behind: the folders it had to make are removed again. For a
// command that may still refuse to run after the check (a drill waiting for its cluster): it
// makes its output folder only once it writes into it.
[[nodiscard]] inline absl::Status CheckDirCanBeMade(const std::string& flag,
                                                    const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();  // a trailing slash
  fs::path first_missing;                      // the outermost folder the check makes
  while (!ec && !p.empty() && p != p.root_path()) {
    const bool there =
        fs::exists(fs::symlink_status(p, ec)) || ec != std::errc::no_such_file_or_directory;
    if (there) break;
    ec.clear();
    first_missing = p;
    p = p.parent_path();
  }
  absl::Status st = CheckWritableDir(flag, dir);
  if (!first_missing.empty()) fs::remove_all(first_missing, ec);
  return st;
}

// Writes `text` to `path` (its missing folders made, see MakeParentFolders) and says whether all
// of it reached the file: a benchmark's results, so that "wrote PATH" is never printed over a file
// that was not written.
[[nodiscard]] inline absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  if (absl::Status st = MakeParentFolders(path); !st.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot write ", st.message()));
  }
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    return absl::UnavailableError(
        absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// Replaces the contents of the file at `path` whole: a reader (a script polling a port or stats
// file) sees the old contents or the new, never a part. The text goes to a temporary file of a
// unique name (mkstemp) beside the file that `path` finally names, then is renamed over it: a
// `path` that is a symlink stays one, pointing at the new contents (a rename over the link itself
// replaced it with a plain file), and two writers never share a temporary file. The new file gets
// `mode`. Its missing folders are made (as MakeParentFolders makes them). Unavailable with the
// reason otherwise, the old contents and no temporary file left. No fsync: for files whose loss in
// a crash costs nothing but a redo.
[[nodiscard]] inline absl::Status ReplaceTextFile(const std::string& path, const std::string& text,
                                                  mode_t mode = 0644) {
  const std::optional<std::filesystem::path> target = files_internal::WhereCreated(path);
  if (!target) {
    return absl::UnavailableError(absl::StrCat("'", path, "': too many levels of symbolic links"));
  }
  // The folders MakeParentFolders would make, from the target already found (it would walk the
  // links again, on every write of a stats file).
  const std::filesystem::path parent = files_internal::FolderOf(*target);
  std::error_code made;
  std::filesystem::create_directories(parent, made);
  if (made) {
    return absl::UnavailableError(absl::StrCat("cannot write '", path, "': cannot create ",
                                               parent.string(), ": ", made.message()));
  }
  std::string tmp = target->string() + ".XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot write '", path, "': ", std::strerror(errno)));
  }
  bool ok = ::fchmod(fd, mode) == 0;
  for (size_t at = 0; ok && at < text.size();) {
    const ssize_t n = ::write(fd, text.data() + at, text.size() - at);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) at += static_cast<size_t>(n);
  }
  int error = ok ? 0 : errno;
  if (::close(fd) != 0 && ok) {
    ok = false;
    error = errno;
  }
  if (ok && ::rename(tmp.c_str(), target->c_str()) != 0) {
    ok = false;
    error = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return absl::UnavailableError(
        absl::StrCat("cannot write '", path, "': ", std::strerror(error)));
  }
  return absl::OkStatus();
}

}  // namespace meridian::common
