#pragma once

// Parsing JSON text that comes from outside the process (a request body, a peer's record, another
// controller's observation).

#include <string_view>

namespace meridian::common {

// `Json::parse(text)` of nlohmann's library, without exceptions (a discarded value on an error),
// but of the whole text: its lexer takes a NUL byte for the end of the input, so
// "{...}<NUL>anything" parsed as the object alone and the rest was silently dropped. JSON text
// never holds a raw NUL (inside strings it is escaped), so such text is refused.
template <typename Json>
Json ParseJsonText(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) return Json(Json::value_t::discarded);
  return Json::parse(text, nullptr, /*allow_exceptions=*/false);
}

}  // namespace meridian::common
