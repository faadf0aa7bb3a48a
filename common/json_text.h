#pragma once

// Parsing JSON text that comes from outside the process (a request body, a peer's record, another
// controller's observation).

#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::common {

// `Json::parse(text)` of nlohmann's library, without exceptions (a discarded value on an error),
// but of the whole text: its lexer takes a NUL byte for the end of the input, so
// "{...}<NUL>anything" parsed as the object alone and the rest was silently dropped. JSON text
// never holds a raw NUL (inside strings it is escaped), so such text is refused. So is an object
// that names a key twice: nlohmann keeps the last copy, and which one the sender meant is not
// ours to guess (the HTTP layer refuses a repeated single-value header for the same reason).
template <typename Json>
Json ParseJsonText(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) return Json(Json::value_t::discarded);
  std::vector<std::set<std::string>> keys;  // per open object, the keys seen so far
  bool repeated = false;
  Json parsed = Json::parse(
      text,
      [&](int, typename Json::parse_event_t event, Json& value) {
        using E = typename Json::parse_event_t;
        if (event == E::object_start) {
          keys.emplace_back();
        } else if (event == E::object_end) {
          if (!keys.empty()) keys.pop_back();
        } else if (event == E::key && !keys.empty()) {
          repeated = repeated || !keys.back().insert(value.template get<std::string>()).second;
        }
        return true;
      },
      /*allow_exceptions=*/false);
  if (repeated) return Json(Json::value_t::discarded);
  return parsed;
}

}  // namespace meridian::common
