#pragma once

// What every daemon's config loader needs for the files a config names: relative paths resolve
// from the config file's folder (never from wherever the process was started), and an operator's
// bearer token can come from a file. Header-only, part of meridian_common.

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace meridian::common {

// The folder that holds the config file at `config_path`, against which the relative paths inside
// it resolve: "" for a bare file name (the working directory), "/" for a file in the root.
[[nodiscard]] inline std::string ConfigDir(const std::string& config_path) {
  const size_t slash = config_path.rfind('/');
  if (slash == std::string::npos) return "";
  if (slash == 0) return "/";
  return config_path.substr(0, slash);
}

// `path` as named in a config whose folder is `base_dir` (from ConfigDir): absolute paths and
// empty values unchanged, relative ones under base_dir.
[[nodiscard]] inline std::string ResolveConfigPath(std::string_view base_dir,
                                                   const std::string& path) {
  if (path.empty() || path.front() == '/' || base_dir.empty()) return path;
  std::string out(base_dir);
  if (out.back() != '/') out += '/';
  return out + path;
}

// The smallest operator bearer token any daemon accepts.
inline constexpr size_t kOperatorTokenBytesMin = 16;

// Whether `token` is a usable bearer token: at least kOperatorTokenBytesMin bytes, printable ASCII,
// no spaces (it travels in an Authorization header). InvalidArgument saying which rule failed.
[[nodiscard]] inline absl::Status CheckOperatorToken(std::string_view token) {
  if (token.size() < kOperatorTokenBytesMin) {
    return absl::InvalidArgumentError(
        absl::StrCat("the token must be at least ", kOperatorTokenBytesMin, " bytes"));
  }
  for (char ch : token) {
    if (ch <= 0x20 || ch >= 0x7f) {
      return absl::InvalidArgumentError("the token must be printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

// Reads an operator token file: its whole contents less trailing whitespace (the newline editors
// and `echo` add, "\r\n" included), checked by CheckOperatorToken. NotFound when the file cannot
// be read, InvalidArgument when its token is unusable; the message names the file.
[[nodiscard]] inline absl::StatusOr<std::string> ReadOperatorTokenFile(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a folder, not a token file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  std::string token = text.str();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("cannot read '", path, "'"));
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (absl::Status st = CheckOperatorToken(token); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': ", st.message()));
  }
  return token;
}

}  // namespace meridian::common
