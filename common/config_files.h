#pragma once

// What every daemon's config loader needs for the files a config names: relative paths resolve
// from the config file's folder (never from wherever the process was started), and an operator's
// bearer token can come from a file. Header-only, part of meridian_common.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"

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

// The largest config file any daemon reads, and the largest file a config names (a token, a
// certificate or key).
inline constexpr size_t kConfigFileBytesMax = 4 << 20;

// Reads a file that a flag or config names (`what`: "config file", "token file"...): only a
// regular file of at most `max_bytes`. A FIFO would block the process before it can say
// anything, and /dev/zero never ends; both are refused without a read. NotFound ("cannot read
// '<path>': <reason>") when it cannot be opened or read, InvalidArgument when it is something
// else than a regular file or too large; the message names the file.
[[nodiscard]] inline absl::StatusOr<std::string> ReadRegularFile(
    const std::string& path, const char* what, size_t max_bytes = kConfigFileBytesMax) {
  const auto named = [&] { return absl::StrCat(what, " '", path, "'"); };
  // O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("cannot read '", path, "': ", std::strerror(errno)));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return absl::NotFoundError(absl::StrCat("cannot read '", path, "': ", std::strerror(errno)));
  }
  if (S_ISDIR(st.st_mode)) return absl::InvalidArgumentError(named() + " is a folder");
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        named() + " is not a regular file (a pipe, socket or device cannot be read as one)");
  }
  const auto too_large = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat(named(), " is larger than ", max_bytes, " bytes"));
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_large();
  std::string out;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      return absl::NotFoundError(absl::StrCat("cannot read '", path, "': ", std::strerror(errno)));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) return too_large();  // it grew while being read
  }
  return out;
}

// Reads a PEM file (a CA, certificate or key) that the config field `field` names: a regular
// file holding at least one "-----BEGIN " block. Errors name the field and the file, so that a
// wrong path reads as that and not as a failed listen or handshake later.
[[nodiscard]] inline absl::StatusOr<std::string> ReadPemFile(const char* field,
                                                             const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": no file named"));
  auto text = ReadRegularFile(path, "PEM file", 1 << 20);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat(field, ": ", text.status().message()));
  }
  if (text->find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": '", path, "' holds no PEM block (-----BEGIN ...)"));
  }
  return text;
}

// A region's (or a witness's) name as every daemon's config takes it: 1..32 of [A-Za-z0-9-]. It
// becomes a TLS target name, a metric label and part of file names, so nothing else goes.
inline bool ValidRegionName(std::string_view s) {
  if (s.empty() || s.size() > 32) return false;
  for (char ch : s) {
    if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
          ch == '-')) {
      return false;
    }
  }
  return true;
}

// A jurisdiction, as customers' residencies name it (services::ValidateResidency): 2..16
// lowercase letters. Residency is compared exactly, so "EU" would never match a customer's "eu".
inline bool ValidJurisdiction(std::string_view s) {
  if (s.size() < 2 || s.size() > 16) return false;
  for (char ch : s) {
    if (ch < 'a' || ch > 'z') return false;
  }
  return true;
}

// An http(s)://host[:port][/path] URL as a config or flag may name one: a host after the scheme,
// a port (when given) of 1..65535, no spaces or control characters. Anything else would only fail
// at the first request, as an unreachable region.
inline bool ValidHttpUrl(std::string_view url) {
  const size_t at = url.rfind("http://", 0) == 0 ? 7 : url.rfind("https://", 0) == 0 ? 8 : 0;
  if (at == 0) return false;
  for (char ch : url) {
    if (static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f) return false;
  }
  const size_t end = url.find_first_of("/?#", at);
  const std::string_view authority =
      url.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at);
  // The host: an [IPv6] literal (closed, hex digits, ':' and '.') or a name or IPv4 address
  // (letters, digits, '-', '.', '_'); then nothing, or ':' and a port 1..65535.
  std::string_view host = authority, rest;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos || close == 1) return false;
    for (char ch : authority.substr(1, close - 1)) {
      if (!std::isxdigit(static_cast<unsigned char>(ch)) && ch != ':' && ch != '.') return false;
    }
    host = authority.substr(0, close + 1);
    rest = authority.substr(close + 1);
  } else {
    const size_t colon = authority.find(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      rest = authority.substr(colon);
    }
    if (host.empty()) return false;
    for (char ch : host) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '.' && ch != '_') {
        return false;
      }
    }
  }
  if (rest.empty()) return true;
  uint16_t port = 0;
  return rest.front() == ':' && ParseInt(rest.substr(1), &port) && port >= 1;
}

// The token of an Authorization header value of the Bearer scheme ("Bearer <token>"; the scheme
// is case-insensitive, RFC 9110 11.1), or nullopt for another scheme or none.
inline std::optional<std::string_view> BearerToken(std::string_view header) {
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() <= kScheme.size()) return std::nullopt;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return std::nullopt;
  }
  return header.substr(kScheme.size());
}

// Compares a presented bearer token with the configured one in time that does not depend on
// where they differ (the length of the configured token is not a secret worth hiding).
inline bool TokenEquals(std::string_view presented, std::string_view configured) {
  if (presented.size() != configured.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < presented.size(); ++i) {
    diff |= static_cast<unsigned char>(presented[i]) ^ static_cast<unsigned char>(configured[i]);
  }
  return diff == 0;
}

// Whether `host` (as a config's listen address gives it) is reachable from this machine only.
inline bool IsLoopbackHost(std::string_view host) {
  return host == "localhost" || host == "::1" || host == "[::1]" || host.starts_with("127.");
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
  auto text = ReadRegularFile(path, "token file", 64 << 10);
  if (!text.ok()) return text.status();
  std::string token = *std::move(text);
  while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back()))) {
    token.pop_back();
  }
  if (absl::Status st = CheckOperatorToken(token); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': ", st.message()));
  }
  return token;
}

}  // namespace meridian::common
