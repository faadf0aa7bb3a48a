#pragma once

// Small string helpers over std::string_view. Debian's Abseil is built with its own
// absl::string_view (not an alias of std::string_view), so absl::StrCat/StrSplit do not accept
// std::string_view; these cover what the code needs without conversions at every call.

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

}  // namespace meridian
