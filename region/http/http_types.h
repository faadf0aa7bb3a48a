#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meridian::region::http {

// One parsed HTTP/1.1 request, as the server hands it to a Handler. Everything in it came from
// the network: handlers validate, never assume.
//
// Value type, not thread-safe.
struct HttpRequest {
  std::string method;  // "GET", "POST", ... (as http_parser names it)
  std::string target;  // request-target as sent: "/v1/carts/u1?x=1"
  std::string path;    // target's path, still percent-encoded: "/v1/carts/u1"
  std::string query;   // target's query without '?', still percent-encoded: "x=1"
  // In arrival order; names lowercased, values as sent (repeated names stay repeated).
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;            // de-chunked
  std::string remote_address;  // "ip:port" of the peer
  // Filled by Router::Handle from the pattern's {name} segments, percent-decoded.
  std::map<std::string, std::string> params;

  // The first header named `lowercase_name`. The view points into `headers`: valid until the
  // request is modified or destroyed.
  [[nodiscard]] std::optional<std::string_view> Header(std::string_view lowercase_name) const;
  // The first query parameter named `name` (names compared after decoding), percent-decoded with
  // '+' as space. "?flag" yields "" for "flag".
  [[nodiscard]] std::optional<std::string> QueryParam(std::string_view name) const;
};

// What a Handler returns. The server always adds Content-Length (except for 204 and 304, which
// carry no body) and a Connection header when it closes; it ignores Content-Length,
// Transfer-Encoding and Content-Type in `headers` (Content-Type comes from `content_type`, empty
// for none) and drops headers whose name is not a token or whose value holds a control other than
// HTAB (CR, LF and NUL would split the response; the others make strict clients refuse it).
// A `Connection: close` header in `headers` makes the server close after this response.
struct HttpResponse {
  int status = 200;  // REQUIRES: 200..599; anything else is answered as a 500
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  static HttpResponse Json(int status, std::string body);
  // RFC 7807 problem details: application/problem+json
  // {"type":"about:blank","title":..,"status":..,"detail":..}. `title` and `detail` may hold
  // anything (client input included): they are JSON-escaped, invalid UTF-8 replaced by U+FFFD.
  static HttpResponse Problem(int status, std::string_view title, std::string_view detail);
};

// Called once per request. HttpServer calls it concurrently from its pool threads, so it must be
// thread-safe; it may block (database calls). Throwing is answered with a 500, but handlers
// should return a Problem response for every error they expect.
using Handler = std::function<HttpResponse(HttpRequest&)>;

// Decodes %XX escapes (either case of hex digit); a '%' not followed by two hex digits stays as
// is. With `plus_as_space`, '+' becomes ' ' (the form-encoding rule used in query strings).
[[nodiscard]] std::string PercentDecode(std::string_view in, bool plus_as_space);

}  // namespace meridian::region::http
