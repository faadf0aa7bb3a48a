#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "region/http/http_types.h"

namespace meridian::region::http {

// An HTTP/1.1 server (Asio + Node's http-parser) that hands each request to one Handler.
//
// Protocol: persistent connections (HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with
// "Connection: keep-alive"); pipelined requests are answered one after the other, in order;
// Content-Length and chunked request bodies; "Expect: 100-continue" is answered with
// "100 Continue" before the body is read. Responses always carry Content-Length (never chunked).
// A HEAD request gets its handler's headers without the body. Upgrade/CONNECT are not
// supported: the request is answered (by the handler) and the connection closed.
//
// Limits, each answered with a problem+json response and then a close:
//   malformed request -> 400; request target + headers over max_header_bytes -> 431; body over
//   max_body_bytes -> 413 (as soon as Content-Length says so, or when the chunks add up to more;
//   the rest of the body is not read); a request not fully received within read_timeout_ms of its
//   first byte (of the accept, for a connection's first request) -> 408.
// A keep-alive connection idle for idle_timeout_ms, or one that sent nothing within
// read_timeout_ms of being accepted, is closed without a response. A response the client does not
// take within write_timeout_ms is abandoned (close). A connection over max_connections_per_client
// from one remote address is closed as soon as it is accepted. One over max_connections takes the
// place of the connection idle the longest (accepted or answered, no request begun since), which
// is closed (at once, or after its response if a request began meanwhile); it is closed at once
// only when every connection has a request under way.
// After an error response the server closes its sending side and discards what the client still
// sends for a short, bounded time, so the client reads the response instead of a reset.
//
// Threading: `threads` threads run one io_context. Each connection's work runs on its own strand,
// and its handler calls run inline there: a handler that blocks (database calls) holds one pool
// thread, so at most `threads` requests are handled at a time; the others wait. The Handler is
// called concurrently from different threads and must be thread-safe. A handler that throws gets
// a 500 response and an error log line; the connection stays usable.
//
// Lifetime: Start once, Stop once (Stop and the destructor are idempotent). The Handler and what
// it refers to must outlive Stop(). Stop() must not be called from a handler (it joins the pool).
class HttpServer {
 public:
  struct Options {
    std::string address = "127.0.0.1";  // an IPv4 or IPv6 literal, not a host name
    uint16_t port = 0;                  // 0 = pick a free one; see port()
    int threads = 4;
    // Counts the request target and each header line (name, value, ": " and CRLF; not the
    // method and version). http_parser caps the whole head at 80 KiB whatever this says.
    size_t max_header_bytes = 16 * 1024;
    size_t max_body_bytes = 1 << 20;
    int read_timeout_ms = 10000;  // the whole request must arrive within this
    int idle_timeout_ms = 30000;  // keep-alive idle between requests
    int max_connections = 1024;
    // Connections from one remote address at a time; 0 = no limit. Without it one client's idle
    // sockets could take every connection (a health check then waited out their idle timeout).
    int max_connections_per_client = 0;
    int write_timeout_ms = 10000;  // a response must be taken by the client within this
  };

  HttpServer(Options options, Handler handler);
  ~HttpServer();  // Stop()s

  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Validates the options, binds and listens, starts the threads. Errors: InvalidArgument (bad
  // option or address), Unavailable (bind/listen failed; the message names address:port),
  // FailedPrecondition (called twice, or after Stop).
  [[nodiscard]] absl::Status Start();

  // The bound port (the picked one when Options::port was 0). 0 before a successful Start.
  [[nodiscard]] uint16_t port() const;

  // Closes the listener and every connection, waits for running handlers to return and joins the
  // threads. Not a graceful drain: a response still being produced or written is sent only if
  // the kernel takes it before the close (then with "Connection: close"), else it is dropped.
  // Idempotent; a no-op if never started.
  // REQUIRES: not called from a handler.
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::region::http
