// libFuzzer target for the region's HTTP/1.1 server and router (region/http): every input is the
// byte stream one client sends on one connection, over loopback to a real HttpServer in this
// process. The client then closes its sending side and reads everything the server answers.
//
// What must hold, whatever the bytes (region/http/README.md, "Invariants"):
// - the server answers within a bound and then closes; it never hangs on a client that is done;
// - what it sends parses as a sequence of HTTP/1.1 responses (http_parser, response mode): status
//   100 interim answers or final ones of 200..599, each final one with Content-Length except 204
//   and 304, never chunked; and a clean close ends on a response boundary;
// - every problem+json body (the server's own errors, the router's 404/405, the echo route's
//   answers built from the client's bytes) is valid JSON (invalid UTF-8 replaced, never passed on);
// - a handler sees a request within the limits: a method, a path, a body no larger than the limit,
//   lowercase header names;
// - the server still serves a well-formed request afterwards.
// A violation aborts (a crash for libFuzzer). The echo route also lets the input pick the
// handler's status, an extra header (name and value, percent-decoded) and a throw, so that the
// server's filtering of what handlers return is fuzzed too.

#include <arpa/inet.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "common/strings.h"
#include "region/http/http_server.h"
#include "region/http/router.h"

namespace {

namespace http = meridian::region::http;
using meridian::AbslView;
using meridian::ParseInt;

constexpr size_t kMaxBodyBytes = 2048;
constexpr int kClientTimeoutS = 10;

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "http_request_fuzz: %s\n", what.c_str());
  std::abort();
}

// What a handler may rely on: the server parsed this much for it.
void CheckRequest(const http::HttpRequest& req) {
  if (req.method.empty()) Fail("a request without a method reached the handler");
  if (req.path.empty() && req.target.empty()) Fail("a request without a target reached a handler");
  if (req.body.size() > kMaxBodyBytes) Fail("a body over the limit reached the handler");
  for (const auto& [name, value] : req.headers) {
    for (char c : name) {
      if (c >= 'A' && c <= 'Z') Fail("a header name was not lowercased: " + name);
    }
  }
}

// The input picks the status, one header and a throw through request headers.
http::HttpResponse Echo(http::HttpRequest& req) {
  if (req.Header("x-throw") && req.method != "HEAD") throw std::runtime_error("asked to throw");
  std::string detail = req.target + " " + req.body;
  for (const auto& [k, v] : req.params) detail += " " + k + "=" + v;
  if (auto q = req.QueryParam("q")) detail += " q=" + *q;
  http::HttpResponse r = http::HttpResponse::Problem(200, req.method, detail);
  // Any number, or -1 (invalid too) when it is none: the server must answer an invalid one as 500.
  if (auto s = req.Header("x-status"); s && !ParseInt(*s, &r.status)) r.status = -1;
  // Percent-decoded, so that the handler can return CR, LF or NUL, which no request header holds.
  if (auto n = req.Header("x-header-name")) {
    r.headers.emplace_back(http::PercentDecode(*n, false),
                           http::PercentDecode(req.Header("x-header-value").value_or(""), false));
  }
  if (auto t = req.Header("x-content-type")) r.content_type = std::string(*t);
  return r;
}

// One server for the whole run. Every answer of the router says which method it answered, so that
// the client knows which responses (those to HEAD) come without their body.
class Server {
 public:
  Server() {
    // The server logs every rejected request and handler failure: at fuzzing rates that is noise.
    spdlog::set_level(spdlog::level::off);
    for (const char* method : {"GET", "POST", "HEAD", "PUT", "DELETE"}) {
      router_.Add(method, "/v1/items/{id}", Echo);
      router_.Add(method, "/v1/carts/{user_id}/items/{sku}", Echo);
    }
    router_.Add("POST", "/v1/echo", Echo);
    router_.Add("GET", "/", Echo);
    http::HttpServer::Options o;
    o.threads = 2;
    o.max_header_bytes = 1024;
    o.max_body_bytes = kMaxBodyBytes;
    o.read_timeout_ms = 2000;
    o.idle_timeout_ms = 2000;
    o.write_timeout_ms = 2000;
    o.max_connections = 64;
    server_ = std::make_unique<http::HttpServer>(o, [this](http::HttpRequest& req) {
      CheckRequest(req);
      http::HttpResponse r = router_.Handle(req);
      // The input may name its echoed header so: only the wrapper's own may remain.
      std::erase_if(r.headers, [](const auto& h) {
        return absl::EqualsIgnoreCase(AbslView(h.first), "x-req-method");
      });
      r.headers.emplace_back("x-req-method", req.method);
      return r;
    });
    if (absl::Status s = server_->Start(); !s.ok()) Fail("server start: " + s.ToString());
  }
  uint16_t port() const { return server_->port(); }

 private:
  http::Router router_;
  std::unique_ptr<http::HttpServer> server_;
};

// Sends `bytes`, closes the sending side and returns all the server sent until it closed. Sets
// *reset when the connection ended with a reset rather than a close.
std::string Exchange(uint16_t port, std::string_view bytes, bool* reset) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) Fail("socket: " + std::to_string(errno));
  timeval tv{kClientTimeoutS, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    Fail("connect: " + std::to_string(errno));
  }
  *reset = false;
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) Fail("the server stopped reading");
    if (n < 0) break;  // it closed (a limit): read what it answered
    sent += static_cast<size_t>(n);
  }
  ::shutdown(fd, SHUT_WR);
  std::string out;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      Fail("no close within " + std::to_string(kClientTimeoutS) + " s of the client's");
    }
    if (n < 0) *reset = true;
    break;
  }
  ::close(fd);
  return out;
}

// Checks the response stream (see the file comment); returns how many final responses it held.
class ResponseChecker {
 public:
  int Check(const std::string& stream, bool reset) {
    http_parser_init(&parser_, HTTP_RESPONSE);
    parser_.data = this;
    const size_t parsed = http_parser_execute(&parser_, &settings_, stream.data(), stream.size());
    if (HTTP_PARSER_ERRNO(&parser_) != HPE_OK || parsed != stream.size()) {
      Fail(std::string("the server's output does not parse: ") +
           http_errno_description(HTTP_PARSER_ERRNO(&parser_)) + " at byte " +
           std::to_string(parsed) + " of " + std::to_string(stream.size()));
    }
    // A reset may cut the last response short; a clean close must not.
    if (!reset && in_message_) Fail("the server closed in the middle of a response");
    return finals_;
  }

 private:
  static ResponseChecker& Self(http_parser* p) { return *static_cast<ResponseChecker*>(p->data); }

  static int OnMessageBegin(http_parser* p) {
    ResponseChecker& c = Self(p);
    c.in_message_ = true;
    c.field_.clear();
    c.content_length_ = c.problem_json_ = c.head_ = c.last_was_value_ = false;
    c.body_.clear();
    return 0;
  }
  static int OnHeaderField(http_parser* p, const char* at, size_t n) {
    ResponseChecker& c = Self(p);
    if (c.last_was_value_) c.field_.clear();
    c.field_.append(at, n);
    c.last_was_value_ = false;
    return 0;
  }
  static int OnHeaderValue(http_parser* p, const char* at, size_t n) {
    ResponseChecker& c = Self(p);
    const std::string lower = absl::AsciiStrToLower(AbslView(c.field_));
    const std::string_view value(at, n);
    if (lower == "content-length") c.content_length_ = true;
    if (lower == "content-type" && value == "application/problem+json") c.problem_json_ = true;
    if (lower == "x-req-method" && value == "HEAD") c.head_ = true;
    c.last_was_value_ = true;
    return 0;
  }
  static int OnHeadersComplete(http_parser* p) {
    ResponseChecker& c = Self(p);
    const unsigned status = p->status_code;
    if (p->http_major != 1 || p->http_minor != 1) Fail("a response that is not HTTP/1.1");
    if (p->flags & F_CHUNKED) Fail("a chunked response");
    if (status / 100 == 1) {
      if (status != 100) Fail("an interim response other than 100: " + std::to_string(status));
      return 0;
    }
    if (status < 200 || status > 599)
      Fail("a final status out of range: " + std::to_string(status));
    const bool bodiless = status == 204 || status == 304;
    if (!bodiless && !c.content_length_) Fail("a response without Content-Length");
    return c.head_ ? 1 : 0;  // 1: no body follows (the answer to a HEAD)
  }
  static int OnBody(http_parser* p, const char* at, size_t n) {
    Self(p).body_.append(at, n);
    return 0;
  }
  static int OnMessageComplete(http_parser* p) {
    ResponseChecker& c = Self(p);
    c.in_message_ = false;
    if (p->status_code / 100 == 1) return 0;
    ++c.finals_;
    if (c.problem_json_ && !c.head_ && !nlohmann::json::accept(c.body_)) {
      Fail("a problem+json body that is not JSON: " + c.body_);
    }
    return 0;
  }

  http_parser parser_{};
  http_parser_settings settings_ = [] {
    http_parser_settings s{};
    s.on_message_begin = OnMessageBegin;
    s.on_header_field = OnHeaderField;
    s.on_header_value = OnHeaderValue;
    s.on_headers_complete = OnHeadersComplete;
    s.on_body = OnBody;
    s.on_message_complete = OnMessageComplete;
    return s;
  }();
  bool in_message_ = false;
  bool content_length_ = false;
  bool problem_json_ = false;
  bool head_ = false;
  bool last_was_value_ = false;
  std::string field_;
  std::string body_;
  int finals_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Server server;
  static uint64_t runs = 0;
  bool reset = false;
  const std::string out =
      Exchange(server.port(), std::string_view(reinterpret_cast<const char*>(data), size), &reset);
  ResponseChecker().Check(out, reset);
  // Still serving (every 16th input, to keep the rate up).
  if (++runs % 16 == 1) {
    const std::string ok =
        Exchange(server.port(),
                 "GET /v1/items/ping HTTP/1.1\r\nHost: f\r\nConnection: close\r\n\r\n", &reset);
    if (ok.rfind("HTTP/1.1 200 ", 0) != 0 || ResponseChecker().Check(ok, reset) != 1) {
      Fail("the server no longer answers a well-formed request: " + ok.substr(0, 200));
    }
  }
  return 0;
}
