#pragma once

// Small string helpers over std::string_view. Debian's Abseil is built with its own
// absl::string_view (not an alias of std::string_view), so absl::StrCat/StrSplit do not accept
// std::string_view; these cover what the code needs without conversions at every call.

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace meridian {

inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

inline std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

// Whole-string decimal parse; false on any stray character or overflow.
template <class Int>
bool ParseInt(std::string_view s, Int* out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// The well-formed UTF-8 sequence starting at s[i] (RFC 3629: no overlong forms, no surrogates,
// nothing above U+10FFFF; PostgreSQL refuses the same): its length, with its code point in *cp;
// 0 when none starts there (a continuation byte, C0/C1, F5..FF, a truncated or malformed one).
inline size_t Utf8Sequence(std::string_view s, size_t i, uint32_t* cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n = 0;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if (c >= 0xC2 && c <= 0xDF) {
    *cp = c & 0x1Fu;
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    *cp = c & 0x0Fu;
    n = 3;
  } else if (c >= 0xF0 && c <= 0xF4) {
    *cp = c & 0x07u;
    n = 4;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto x = static_cast<unsigned char>(s[i + k]);
    if ((x & 0xC0u) != 0x80u) return 0;
    *cp = (*cp << 6) | (x & 0x3Fu);
  }
  if ((n == 3 && *cp < 0x800) || (n == 4 && (*cp < 0x10000 || *cp > 0x10FFFF)) ||
      (*cp >= 0xD800 && *cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

// Text from another process (a reply body, an error message) made fit to store and to serve as
// JSON: at most `max_bytes` bytes of valid UTF-8. Each byte that does not start a well-formed
// sequence (Utf8Sequence) becomes '?', and the cut never splits a character. nlohmann's dump()
// throws on invalid UTF-8, so a stored reply with one stray byte would otherwise fail every later
// answer that carries it.
inline std::string Utf8Prefix(std::string_view s, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n = Utf8Sequence(s, i, &cp);
    if (out.size() + std::max<size_t>(n, 1) > max_bytes) break;
    if (n == 0) {
      out.push_back('?');
      ++i;
    } else {
      out.append(s.data() + i, n);
      i += n;
    }
  }
  return out;
}

}  // namespace meridian
