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

// Text from another process (a reply body, an error message) made fit to store and to serve as
// JSON: at most `max_bytes` bytes of valid UTF-8. Each byte that does not start a well-formed
// UTF-8 sequence (overlong forms, surrogates and code points past U+10FFFF included) becomes
// '?', and the cut never splits a character. nlohmann's dump() throws on invalid UTF-8, so a
// stored reply with one stray byte would otherwise fail every later answer that carries it.
inline std::string Utf8Prefix(std::string_view s, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t n = b < 0x80             ? 1
               : (b & 0xe0) == 0xc0 ? 2
               : (b & 0xf0) == 0xe0 ? 3
               : (b & 0xf8) == 0xf0 ? 4
                                    : 0;
    bool ok = n > 0 && i + n <= s.size();
    uint32_t cp = n == 1 ? b : n == 2 ? b & 0x1f : n == 3 ? b & 0x0f : b & 0x07;
    for (size_t k = 1; ok && k < n; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      ok = (c & 0xc0) == 0x80;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (ok && n > 1) {
      static constexpr uint32_t kLeast[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kLeast[n] && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff);
    }
    if (!ok) n = 1;
    if (out.size() + n > max_bytes) break;
    if (ok) {
      out.append(s.data() + i, n);
    } else {
      out.push_back('?');
    }
    i += n;
  }
  return out;
}

}  // namespace meridian
