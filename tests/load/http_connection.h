#pragma once

// HttpConnection: one keep-alive HTTP/1.1 client connection for the loadgen, on standalone Asio,
// with Node's http-parser reading responses. One request at a time (no pipelining), so a
// connection is either idle or carries exactly one request.
//
// Thread-safety: none. Every call and every callback happens on the thread running the
// io_context. Ownership: the io_context must outlive the connection, and the connection must not
// be destroyed while the io_context may still run one of its handlers (destroy it after run()
// has returned, or after the io_context has stopped for good).

#include <http_parser.h>

#include <array>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meridian::load {

struct HttpResult {
  enum class Error : uint8_t {
    kNone,      // a complete response arrived: see status
    kConnect,   // could not connect
    kIo,        // the connection failed mid-request (reset, EOF before the response ended)
    kTimeout,   // no complete response within the request's timeout
    kProtocol,  // the response was not valid HTTP/1.1 or was too large
    kAborted,   // Abort() was called
  };
  Error error = Error::kNone;
  int status = 0;
  std::string body;
  std::string retry_after;  // the Retry-After header, if any
  std::string detail;       // what failed, for errors
};

using Header = std::pair<std::string, std::string>;

// A complete HTTP/1.1 request. Content-Type: application/json and Content-Length are added when
// the method is POST, PUT or PATCH or the body is non-empty.
std::string BuildRequest(std::string_view method, std::string_view target,
                         std::string_view host_header, const std::vector<Header>& headers,
                         std::string_view body);

class HttpConnection {
 public:
  using Done = std::function<void(HttpResult)>;
  static constexpr size_t kMaxBodyBytes = 8 << 20;

  HttpConnection(asio::io_context& io, asio::ip::tcp::endpoint endpoint);
  HttpConnection(const HttpConnection&) = delete;
  HttpConnection& operator=(const HttpConnection&) = delete;
  ~HttpConnection();

  // Sends `request` (from BuildRequest) and calls `done` exactly once with the response or the
  // failure; `done` may call Send again. Connects first when not connected. When a reused
  // keep-alive connection turns out closed by the server (the write fails, or EOF arrives before
  // any response byte), it reconnects and resends once: the server cannot have acted on it.
  // The timeout covers everything, the reconnect included.
  // REQUIRES: !busy().
  void Send(std::string request, std::chrono::milliseconds timeout, Done done);

  // Fails the request in flight, if any, with kAborted, and closes the connection.
  void Abort();

  bool busy() const { return static_cast<bool>(done_); }
  int64_t connects() const { return connects_; }
  // Resends after a stale keep-alive connection.
  int64_t stale_retries() const { return stale_retries_; }

 private:
  void Start();
  void Connect();
  void Write();
  void Read();
  void OnBytes(const char* data, size_t n, bool eof);
  void RetryOrFail(HttpResult::Error error, const std::string& detail);
  void Fail(HttpResult::Error error, const std::string& detail);
  void Finish(HttpResult result, bool keep_alive);
  void CloseSocket();
  void ResetParser();

  static int OnHeaderField(http_parser* p, const char* at, size_t n);
  static int OnHeaderValue(http_parser* p, const char* at, size_t n);
  static int OnHeadersComplete(http_parser* p);
  static int OnBody(http_parser* p, const char* at, size_t n);
  static int OnMessageComplete(http_parser* p);

  asio::ip::tcp::socket socket_;
  asio::steady_timer timer_;
  asio::ip::tcp::endpoint endpoint_;
  // Handlers carry the epoch they were started in and ignore themselves when it has moved on:
  // it moves on at every Send and every close, so a late completion of an earlier socket or an
  // earlier request never touches the current one.
  uint64_t epoch_ = 0;
  uint64_t send_id_ = 0;  // the timer's counterpart of epoch_: one per Send

  std::string request_;
  Done done_;
  bool reused_ = false;     // the socket had already carried a response before this request
  bool retried_ = false;    // the one stale-connection resend has been spent
  bool got_bytes_ = false;  // some response byte arrived for this request
  bool served_one_ = false;

  http_parser parser_{};
  http_parser_settings settings_{};
  HttpResult partial_;
  std::string header_field_;
  bool after_value_ = false;  // the last header callback was a value: a new field starts next
  bool complete_ = false;
  bool too_large_ = false;
  std::array<char, 16384> buf_{};

  int64_t connects_ = 0;
  int64_t stale_retries_ = 0;
};

}  // namespace meridian::load
