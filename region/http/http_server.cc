#include "region/http/http_server.h"

#include <http_parser.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>
#include <asio/basic_socket_acceptor.hpp>
#include <asio/basic_stream_socket.hpp>
#include <asio/basic_waitable_timer.hpp>
#include <asio/buffer.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <asio/wait_traits.hpp>
#include <asio/write.hpp>

namespace meridian::region::http {
namespace {

using Tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Strand = asio::strand<asio::io_context::executor_type>;
// Every I/O object of a connection is bound to the connection's strand, so all its completion
// handlers (and the handler call they lead to) run one at a time without locks.
using Socket = asio::basic_stream_socket<Tcp, Strand>;
using Timer = asio::basic_waitable_timer<Clock, asio::wait_traits<Clock>, Strand>;
using Acceptor = asio::basic_socket_acceptor<Tcp, Strand>;

constexpr size_t kReadChunkBytes = 16 * 1024;
// After an error response the server stops sending and reads (and drops) what the client still
// sends, at most this much for at most this long: closing with unread data makes the kernel send a
// reset, which can destroy our response in the client's receive buffer before it reads it.
constexpr size_t kLingerBytesMax = 256 * 1024;
constexpr int kLingerMsMax = 1000;
// accept() failing (EMFILE, ENFILE, ENOBUFS) usually lasts a while: retrying at once would spin.
constexpr int kAcceptRetryMs = 50;
// Larger write buffers are released after the response, not kept per idle connection.
constexpr size_t kOutBufferKeepBytes = 64 * 1024;
constexpr uint64_t kBodyReserveBytesMax = 64 * 1024;
// Offsets in http_parser_url are 16-bit.
constexpr size_t kTargetBytesMax = 65535;
constexpr std::string_view kContinueResponse = "HTTP/1.1 100 Continue\r\n\r\n";

class Connection;

// What the server shares with its connections. Lives in HttpServer::Impl, declared there before
// the io_context, so it outlives every Connection (the last ones die with the io_context).
struct ServerCore {
  ServerCore(HttpServer::Options o, Handler h) : options(std::move(o)), handler(std::move(h)) {}

  const HttpServer::Options options;
  const Handler handler;
  std::atomic<bool> stopping{false};

  std::mutex mu;
  // Live connections, for max_connections and for Stop(). Guarded by mu.
  std::unordered_map<uint64_t, std::weak_ptr<Connection>> connections;
  uint64_t next_connection_id = 0;  // guarded by mu
  // Live connections per remote address (only with max_connections_per_client). Guarded by mu.
  std::unordered_map<std::string, int> per_client;
};

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) ==
           std::tolower(static_cast<unsigned char>(y));
  });
}

// True when the comma-separated header value holds `token` (case-insensitive).
bool HasToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const size_t comma = value.find(',');
    std::string_view item = value.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (EqualsIgnoreCase(item, token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

bool IsTokenChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// A byte a field value may hold (RFC 9110 5.5): HTAB, visible ASCII, space, and obs-text (0x80 and
// up). Any other control (CR, LF and NUL among them) would split the response, or make strict
// clients (http-parser, Node) refuse all of it.
bool IsFieldValueChar(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u == '\t' || (u >= 0x20 && u != 0x7f);
}

// A header the handler set that we can put on the wire as it is.
bool IsSafeHeader(std::string_view name, std::string_view value) {
  return !name.empty() && std::all_of(name.begin(), name.end(), IsTokenChar) &&
         std::all_of(value.begin(), value.end(), IsFieldValueChar);
}

std::string_view ReasonPhrase(int status) {
  // http_status is an unscoped enum without a fixed type: only values within its range
  // (0..511) may be cast to it.
  if (status < 100 || status > 511) return "";
  if (status == 413) return "Content Too Large";  // RFC 9110's name (http_parser has the old one)
  const std::string_view reason = http_status_str(static_cast<enum http_status>(status));
  return reason == "<unknown>" ? std::string_view() : reason;
}

std::string EndpointString(const asio::ip::address& address, uint16_t port) {
  const std::string host = address.to_string();
  return (address.is_v6() ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// One accepted TCP connection: parses requests with http_parser, runs the handler, writes the
// responses, one request at a time. Everything after the constructor runs on the socket's strand.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `client`: the remote address counted in core.per_client ("" when not counted).
  Connection(ServerCore& core, Socket socket, uint64_t id, std::string client)
      : core_(core),
        id_(id),
        client_(std::move(client)),
        socket_(std::move(socket)),
        deadline_(socket_.get_executor()) {
    asio::error_code ec;
    // Responses go out in one write; Nagle would hold a second small write (or the client's next
    // request) back for up to an ACK delay, 40-200 ms.
    socket_.set_option(Tcp::no_delay(true), ec);
    const Tcp::endpoint remote = socket_.remote_endpoint(ec);
    if (!ec) remote_address_ = EndpointString(remote.address(), remote.port());
    http_parser_init(&parser_, HTTP_REQUEST);
    parser_.data = this;
  }

  ~Connection() {
    std::lock_guard<std::mutex> lock(core_.mu);
    core_.connections.erase(id_);
    if (!client_.empty()) {
      auto it = core_.per_client.find(client_);
      if (it != core_.per_client.end() && --it->second <= 0) core_.per_client.erase(it);
    }
  }

  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Both are safe from any thread.
  void Start() {
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->Begin(); });
  }
  void Shutdown() {
    asio::post(socket_.get_executor(), [self = shared_from_this()] { self->Close(); });
  }

  // Since when (steady clock, ns) the connection has been waiting for a request with none begun:
  // from its accept, and again after each response of a keep-alive connection; -1 while a request
  // is being read, handled or answered. Safe from any thread (read under core.mu by the accept).
  int64_t idle_since() const { return idle_since_.load(std::memory_order_relaxed); }
  bool evicting() const { return evicted_.load(); }
  // Marks the connection to make room for a new one (a full server, the longest idle): it closes
  // now if still idle, else once its request is answered. False when it already was marked.
  bool MakeRoom() {
    if (evicted_.exchange(true)) return false;
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
      if (self->idle_since() >= 0 && self->state_ == State::kReading) self->Close();
    });
    return true;
  }

 private:
  enum class State {
    kReading,          // parsing; a read may be pending
    kWritingContinue,  // writing "100 Continue"
    kHandling,         // the handler runs (inline, on this strand)
    kWriting,          // writing a response
    kLingering,        // after a closing response: draining input until EOF or a limit
    kClosed,
  };

  static const http_parser_settings* Settings() {
    static const http_parser_settings settings = [] {
      http_parser_settings s;
      http_parser_settings_init(&s);
      s.on_message_begin = &Connection::OnMessageBegin;
      s.on_url = &Connection::OnUrl;
      s.on_header_field = &Connection::OnHeaderField;
      s.on_header_value = &Connection::OnHeaderValue;
      s.on_headers_complete = &Connection::OnHeadersComplete;
      s.on_body = &Connection::OnBody;
      s.on_message_complete = &Connection::OnMessageComplete;
      return s;
    }();
    return &settings;
  }

  static Connection& Of(http_parser* parser) { return *static_cast<Connection*>(parser->data); }

  // http_parser callbacks: 0 continues, non-zero stops the parser with an error (the status to
  // answer with is in error_status_).

  static int OnMessageBegin(http_parser* parser) {
    Connection& c = Of(parser);
    c.request_ = HttpRequest();
    c.header_name_.clear();
    c.header_value_.clear();
    c.in_header_value_ = false;
    c.in_trailer_ = false;
    c.header_bytes_ = 0;
    c.message_begun_ = true;
    c.expect_continue_ = false;
    c.head_ = false;
    c.idle_since_.store(-1, std::memory_order_relaxed);
    // A connection's first request is timed from the accept (Begin armed it), so a client cannot
    // hold a connection longer by trickling its first byte late.
    if (c.requests_begun_++ > 0) c.ArmDeadline(c.core_.options.read_timeout_ms);
    return 0;
  }

  static int OnUrl(http_parser* parser, const char* at, size_t length) {
    Connection& c = Of(parser);
    if (!c.CountHeaderBytes(length)) return -1;
    c.request_.target.append(at, length);
    return 0;
  }

  static int OnHeaderField(http_parser* parser, const char* at, size_t length) {
    Connection& c = Of(parser);
    if (!c.CountHeaderBytes(length)) return -1;
    // A chunked body's trailer fields (RFC 9112, 7.1.2) are counted against the header limit
    // and dropped: taken as headers, they came after the check of fields given twice, so a
    // trailer could add a second Authorization or Idempotency-Key, or the one a proxy never saw.
    if (c.in_trailer_) return 0;
    // A field after a value starts the next header; several fields in a row are one name split
    // across reads.
    if (c.in_header_value_) c.CommitHeader();
    // A new field line also costs its ": " and CRLF: without them, thousands of one-letter
    // headers fitted under the limit.
    if (c.header_name_.empty() && !c.CountHeaderBytes(4)) return -1;
    for (size_t i = 0; i < length; ++i) {
      c.header_name_.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(at[i]))));
    }
    return 0;
  }

  static int OnHeaderValue(http_parser* parser, const char* at, size_t length) {
    Connection& c = Of(parser);
    if (!c.CountHeaderBytes(length)) return -1;
    if (c.in_trailer_) return 0;
    c.in_header_value_ = true;
    c.header_value_.append(at, length);
    return 0;
  }

  static int OnHeadersComplete(http_parser* parser) {
    Connection& c = Of(parser);
    if (c.in_header_value_) c.CommitHeader();
    c.in_trailer_ = true;
    HttpRequest& request = c.request_;
    // Fields that carry one value (RFC 9110, 5.3; Host: RFC 9112, 3.2), sent twice: which one the
    // client meant is not ours to guess. The first used to win silently (a second Idempotency-Key
    // made a second order; a valid then a bogus Authorization was let in).
    for (std::string_view name : {"host", "authorization", "idempotency-key", "content-type"}) {
      const auto n = std::count_if(request.headers.begin(), request.headers.end(),
                                   [&](const auto& h) { return h.first == name; });
      if (n > 1) {
        return c.Fail(400, "Bad Request",
                      "the " + std::string(name) + " header is given more than once");
      }
    }
    const auto method = static_cast<enum http_method>(parser->method);
    request.method = http_method_str(method);
    c.head_ = method == HTTP_HEAD;
    c.http10_ = parser->http_major == 1 && parser->http_minor == 0;
    c.keep_alive_ = http_should_keep_alive(parser) != 0;

    if (request.target.size() > kTargetBytesMax) {
      return c.Fail(414, "URI Too Long", "the request target is over 65535 bytes");
    }
    http_parser_url url;
    http_parser_url_init(&url);
    if (http_parser_parse_url(request.target.data(), request.target.size(),
                              method == HTTP_CONNECT ? 1 : 0, &url) != 0) {
      return c.Fail(400, "Bad Request", "the request target is not a valid URI");
    }
    const auto field = [&](http_parser_url_fields f) {
      return std::string_view(request.target).substr(url.field_data[f].off, url.field_data[f].len);
    };
    if (url.field_set & (1 << UF_PATH)) {
      request.path = field(UF_PATH);
    } else if (url.field_set & (1 << UF_HOST) && method != HTTP_CONNECT) {
      request.path = "/";  // absolute-form without a path: "http://host"
    }
    if (url.field_set & (1 << UF_QUERY)) request.query = field(UF_QUERY);

    // What this server cannot honour is refused rather than half done: another HTTP version than
    // 1.x (HTTP/0.9 and "HTTP/2.7" were answered as HTTP/1.1), a transfer coding other than
    // chunked (the body was taken still encoded), a content coding, an expectation other than
    // 100-continue (RFC 9110, 10.1.1).
    if (parser->http_major != 1) {
      return c.Fail(505, "HTTP Version Not Supported", "this server speaks HTTP/1.0 and HTTP/1.1");
    }
    if (const auto te = request.Header("transfer-encoding");
        te && !EqualsIgnoreCase(*te, "chunked")) {
      return c.Fail(501, "Not Implemented",
                    "transfer coding \"" + std::string(*te) + "\" is not supported (only chunked)");
    }
    if (const auto ce = request.Header("content-encoding");
        ce && !ce->empty() && !EqualsIgnoreCase(*ce, "identity")) {
      return c.Fail(
          415, "Unsupported Media Type",
          "content coding \"" + std::string(*ce) + "\" is not supported; send the body as is");
    }
    if (const auto expect = request.Header("expect");
        expect && !EqualsIgnoreCase(*expect, "100-continue")) {
      return c.Fail(
          417, "Expectation Failed",
          "only \"Expect: 100-continue\" is supported, not \"" + std::string(*expect) + "\"");
    }

    const bool chunked = (parser->flags & F_CHUNKED) != 0;
    const bool length_known = !chunked && parser->content_length != ULLONG_MAX;
    if (length_known && parser->content_length > c.core_.options.max_body_bytes) {
      return c.Fail(413, "Content Too Large",
                    "the body is " + std::to_string(parser->content_length) +
                        " bytes; the limit is " + std::to_string(c.core_.options.max_body_bytes));
    }
    // Capped: a client announcing 1 MiB and sending nothing must not make us hold 1 MiB (times
    // every connection it opens).
    if (length_known)
      request.body.reserve(std::min<uint64_t>(parser->content_length, kBodyReserveBytesMax));
    const bool has_body = chunked || (length_known && parser->content_length > 0);
    if (has_body && !c.http10_) c.expect_continue_ = request.Header("expect").has_value();
    return 0;
  }

  static int OnBody(http_parser* parser, const char* at, size_t length) {
    Connection& c = Of(parser);
    if (c.request_.body.size() + length > c.core_.options.max_body_bytes) {
      return c.Fail(413, "Content Too Large",
                    "the chunked body is over the limit of " +
                        std::to_string(c.core_.options.max_body_bytes) + " bytes");
    }
    c.request_.body.append(at, length);
    return 0;
  }

  static int OnMessageComplete(http_parser* parser) {
    Connection& c = Of(parser);
    c.message_begun_ = false;
    // The whole body is here (it came with the headers, or the 100 was already sent): a
    // "100 Continue" now would arrive after the final response, as a stray response of its own.
    c.expect_continue_ = false;
    // Pausing makes http_parser_execute return right after this request: pipelined requests
    // behind it stay in in_ until this one is answered.
    http_parser_pause(parser, 1);
    return 0;
  }

  int Fail(int status, std::string_view title, std::string detail) {
    error_status_ = status;
    error_title_ = title;
    error_detail_ = std::move(detail);
    return -1;
  }

  bool CountHeaderBytes(size_t length) {
    header_bytes_ += length;
    if (header_bytes_ <= core_.options.max_header_bytes) return true;
    Fail(431, "Request Header Fields Too Large",
         "the request line and headers are over the limit of " +
             std::to_string(core_.options.max_header_bytes) + " bytes");
    return false;
  }

  void CommitHeader() {
    // A field value excludes its leading and trailing whitespace (RFC 9110, 5.5); http_parser
    // drops only the leading part.
    while (!header_value_.empty() && (header_value_.back() == ' ' || header_value_.back() == '\t'))
      header_value_.pop_back();
    request_.headers.emplace_back(std::move(header_name_), std::move(header_value_));
    header_name_.clear();
    header_value_.clear();
    in_header_value_ = false;
  }

  void Begin() {
    if (state_ == State::kClosed) return;  // Stop() came first
    ArmDeadline(core_.options.read_timeout_ms);
    DoRead();
  }

  void DoRead() {
    // An error response can be written while a read is still pending (timeouts); its completion
    // then serves the linger, so never two reads at once.
    if (read_pending_) return;
    read_pending_ = true;
    socket_.async_read_some(
        asio::buffer(read_buf_),
        [self = shared_from_this()](asio::error_code ec, size_t n) { self->OnRead(ec, n); });
  }

  void OnRead(asio::error_code ec, size_t n) {
    read_pending_ = false;
    switch (state_) {
      case State::kReading:
        // EOF or an error: a half-received request has nobody to answer to.
        if (ec) return Close();
        in_.append(read_buf_.data(), n);
        return ProcessInput();
      case State::kLingering:
        lingered_bytes_ += n;
        if (ec || lingered_bytes_ > kLingerBytesMax) return Close();
        return DoRead();
      default:
        // Writing an error response that ends the connection: the input is not needed.
        return;
    }
  }

  // Parses what is buffered; answers a complete request, or reads more.
  void ProcessInput() {
    if (in_.empty()) return RequestMore();
    const size_t parsed = http_parser_execute(&parser_, Settings(), in_.data(), in_.size());
    const enum http_errno error = HTTP_PARSER_ERRNO(&parser_);
    if (error == HPE_PAUSED) {
      in_.erase(0, parsed);
      http_parser_pause(&parser_, 0);
      return Dispatch();
    }
    if (error != HPE_OK) return RejectMalformed(error);
    in_.clear();  // without an error or a pause, http_parser consumes everything
    RequestMore();
  }

  void RequestMore() {
    if (expect_continue_) {
      // The client waits for this before sending the body (curl: up to 1 s).
      expect_continue_ = false;
      state_ = State::kWritingContinue;
      asio::async_write(socket_, asio::buffer(kContinueResponse),
                        [self = shared_from_this()](asio::error_code ec, size_t) {
                          if (self->state_ != State::kWritingContinue) return;
                          if (ec) return self->Close();
                          self->state_ = State::kReading;
                          self->DoRead();
                        });
      return;
    }
    DoRead();
  }

  void RejectMalformed(enum http_errno error) {
    if (error_status_ != 0) return Reject(error_status_, error_title_, error_detail_);
    if (error == HPE_HEADER_OVERFLOW) {
      return Reject(431, "Request Header Fields Too Large", http_errno_description(error));
    }
    Reject(400, "Bad Request", http_errno_description(error));
  }

  void Dispatch() {
    state_ = State::kHandling;
    DisarmDeadline();
    request_.remote_address = remote_address_;
    HttpResponse response = RunHandler();
    // An upgrade or CONNECT request leaves the rest of the stream in another protocol we do not
    // speak: answer and close.
    const bool close = !keep_alive_ || parser_.upgrade != 0 || core_.stopping.load();
    Send(std::move(response), close);
  }

  HttpResponse RunHandler() {
    try {
      return core_.handler(request_);
    } catch (const std::exception& e) {
      spdlog::error("event=http_handler_threw method={} path=\"{}\" remote={} what=\"{}\"",
                    request_.method, request_.path, remote_address_, e.what());
    } catch (...) {
      spdlog::error("event=http_handler_threw method={} path=\"{}\" remote={} what=non-std",
                    request_.method, request_.path, remote_address_);
    }
    return HttpResponse::Problem(500, "Internal Server Error", "the request handler failed");
  }

  void Reject(int status, std::string_view title, std::string_view detail) {
    spdlog::debug("event=http_request_rejected status={} remote={} detail=\"{}\"", status,
                  remote_address_, detail);
    head_ = false;
    Send(HttpResponse::Problem(status, title, detail), /*close=*/true);
  }

  void Send(HttpResponse response, bool close) {
    if (response.status < 200 || response.status > 599) {
      spdlog::error("event=http_handler_bad_status status={} method={} path=\"{}\"",
                    response.status, request_.method, request_.path);
      response = HttpResponse::Problem(500, "Internal Server Error",
                                       "the request handler returned an invalid status");
    }
    const bool no_body = response.status == 204 || response.status == 304;

    out_.clear();
    out_.reserve(256 + response.body.size());
    out_ += "HTTP/1.1 ";
    out_ += std::to_string(response.status);
    out_ += ' ';
    out_ += ReasonPhrase(response.status);
    out_ += "\r\n";
    if (!response.content_type.empty() && !no_body &&
        IsSafeHeader("Content-Type", response.content_type)) {
      out_ += "Content-Type: ";
      out_ += response.content_type;
      out_ += "\r\n";
    }
    if (!no_body) {
      out_ += "Content-Length: ";
      out_ += std::to_string(response.body.size());
      out_ += "\r\n";
    }
    for (const auto& [name, value] : response.headers) {
      if (EqualsIgnoreCase(name, "connection")) {
        close = close || HasToken(value, "close");
        continue;
      }
      if (EqualsIgnoreCase(name, "content-length") || EqualsIgnoreCase(name, "content-type") ||
          EqualsIgnoreCase(name, "transfer-encoding")) {
        continue;
      }
      if (!IsSafeHeader(name, value)) {
        spdlog::error("event=http_handler_bad_header name=\"{}\" method={} path=\"{}\"", name,
                      request_.method, request_.path);
        continue;
      }
      out_ += name;
      out_ += ": ";
      out_ += value;
      out_ += "\r\n";
    }
    if (close) {
      out_ += "Connection: close\r\n";
    } else if (http10_) {
      out_ += "Connection: keep-alive\r\n";
    }
    out_ += "\r\n";
    if (!no_body && !head_) out_ += response.body;

    close_after_write_ = close;
    state_ = State::kWriting;
    ArmDeadline(core_.options.write_timeout_ms);
    asio::async_write(
        socket_, asio::buffer(out_),
        [self = shared_from_this()](asio::error_code ec, size_t) { self->OnWritten(ec); });
  }

  void OnWritten(asio::error_code ec) {
    if (state_ != State::kWriting) return;
    if (ec) return Close();
    if (out_.capacity() > kOutBufferKeepBytes) std::string().swap(out_);
    if (close_after_write_) return Linger();
    if (evicted_.load()) return Close();  // made room for a new connection while it was busy
    state_ = State::kReading;
    idle_since_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    // OnMessageBegin switches to the read timeout when the next request starts.
    ArmDeadline(core_.options.idle_timeout_ms);
    ProcessInput();
  }

  void Linger() {
    state_ = State::kLingering;
    asio::error_code ec;
    socket_.shutdown(Tcp::socket::shutdown_send, ec);
    if (ec) return Close();
    lingered_bytes_ = 0;
    ArmDeadline(std::min(kLingerMsMax, core_.options.read_timeout_ms));
    DoRead();
  }

  void ArmDeadline(int timeout_ms) {
    // Re-arming cancels the previous wait; a wait that had already fired is recognized in
    // OnDeadline by the expiry having moved.
    deadline_.expires_after(std::chrono::milliseconds(timeout_ms));
    deadline_.async_wait(
        [self = shared_from_this()](asio::error_code ec) { self->OnDeadline(ec); });
  }

  void DisarmDeadline() { deadline_.expires_at(Clock::time_point::max()); }

  void OnDeadline(asio::error_code ec) {
    if (ec == asio::error::operation_aborted || state_ == State::kClosed) return;
    if (deadline_.expiry() > Clock::now()) return;
    if (state_ == State::kReading && message_begun_) {
      return Reject(408, "Request Timeout",
                    "the request did not arrive within " +
                        std::to_string(core_.options.read_timeout_ms) + " ms");
    }
    // Idle keep-alive, silent new connection, a client not taking its response, linger over.
    Close();
  }

  void Close() {
    if (state_ == State::kClosed) return;
    state_ = State::kClosed;
    asio::error_code ec;
    socket_.close(ec);
    deadline_.cancel();
  }

  ServerCore& core_;
  const uint64_t id_;
  const std::string client_;
  std::atomic<int64_t> idle_since_{Clock::now().time_since_epoch().count()};
  std::atomic<bool> evicted_{false};
  Socket socket_;
  Timer deadline_;  // the one timeout in force for the current state
  State state_ = State::kReading;
  std::string remote_address_;
  http_parser parser_;
  std::array<char, kReadChunkBytes> read_buf_;
  bool read_pending_ = false;
  std::string in_;   // received, not yet parsed (pipelined requests wait here)
  std::string out_;  // the response being written
  bool close_after_write_ = false;
  size_t lingered_bytes_ = 0;
  uint64_t requests_begun_ = 0;

  // The request being parsed, filled by the callbacks.
  HttpRequest request_;
  std::string header_name_;
  std::string header_value_;
  bool in_header_value_ = false;
  // Past the headers: fields now are a chunked body's trailer, which is dropped.
  bool in_trailer_ = false;
  size_t header_bytes_ = 0;
  bool message_begun_ = false;  // between its first byte and its last
  bool expect_continue_ = false;
  bool keep_alive_ = false;
  bool http10_ = false;
  bool head_ = false;
  int error_status_ = 0;  // set by Fail: what to answer when the parser stops with an error
  std::string error_title_;
  std::string error_detail_;
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(Options options, Handler handler)
      : core_(std::move(options), std::move(handler)),
        io_(std::max(1, core_.options.threads)),
        acceptor_(asio::make_strand(io_)),
        accept_retry_(acceptor_.get_executor()) {}

  ~Impl() { Stop(); }

  absl::Status Start() {
    std::lock_guard<std::mutex> lock(lifecycle_mu_);
    if (lifecycle_ != Lifecycle::kNew) {
      return absl::FailedPreconditionError("HttpServer::Start: already started or stopped");
    }
    const Options& o = core_.options;
    if (o.threads < 1 || o.max_connections < 1 || o.read_timeout_ms < 1 || o.idle_timeout_ms < 1 ||
        o.write_timeout_ms < 1 || o.max_header_bytes < 1) {
      return absl::InvalidArgumentError(
          "HttpServer::Start: threads, max_connections, max_header_bytes and the timeouts must "
          "be positive");
    }
    if (o.max_connections_per_client < 0) {
      return absl::InvalidArgumentError(
          "HttpServer::Start: max_connections_per_client must be 0 (no limit) or positive");
    }
    asio::error_code ec;
    const asio::ip::address address = asio::ip::make_address(o.address, ec);
    if (ec) {
      return absl::InvalidArgumentError("HttpServer::Start: address \"" + o.address +
                                        "\" is not an IP address");
    }
    const std::string where = EndpointString(address, o.port);
    const Tcp::endpoint endpoint(address, o.port);
    const auto fail = [&](std::string_view step) {
      asio::error_code ignored;
      acceptor_.close(ignored);
      return absl::UnavailableError("HttpServer::Start: " + std::string(step) + " " + where + ": " +
                                    ec.message());
    };
    // (With ASIO_NO_DEPRECATED these return void: the error is only in `ec`.)
    acceptor_.open(endpoint.protocol(), ec);
    if (ec) return fail("open");
    // Lets a restarted server bind while connections of the previous one are in TIME_WAIT.
    acceptor_.set_option(Tcp::acceptor::reuse_address(true), ec);
    if (ec) return fail("setsockopt");
    acceptor_.bind(endpoint, ec);
    if (ec) return fail("bind");
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail("listen");
    const Tcp::endpoint local = acceptor_.local_endpoint(ec);
    if (ec) return fail("getsockname");
    port_.store(local.port());

    work_.emplace(io_.get_executor());
    // No pool thread runs yet, so touching the acceptor from here does not race.
    DoAccept();
    lifecycle_ = Lifecycle::kRunning;
    try {
      threads_.reserve(static_cast<size_t>(o.threads));
      for (int i = 0; i < o.threads; ++i) threads_.emplace_back([this] { Run(); });
    } catch (const std::system_error& e) {
      StopLocked();
      return absl::ResourceExhaustedError(std::string("HttpServer::Start: starting threads: ") +
                                          e.what());
    }
    spdlog::info("event=http_server_started address={} threads={} max_connections={}",
                 EndpointString(address, local.port()), o.threads, o.max_connections);
    return absl::OkStatus();
  }

  void Stop() {
    std::lock_guard<std::mutex> lock(lifecycle_mu_);
    StopLocked();
  }

  uint16_t port() const { return port_.load(); }

 private:
  enum class Lifecycle { kNew, kRunning, kStopped };

  void StopLocked() {
    if (lifecycle_ != Lifecycle::kRunning) {
      lifecycle_ = Lifecycle::kStopped;
      return;
    }
    lifecycle_ = Lifecycle::kStopped;
    for (const std::thread& t : threads_) {
      if (t.get_id() == std::this_thread::get_id()) {
        spdlog::critical("event=http_server_stop_from_handler");
        std::abort();
      }
    }
    core_.stopping.store(true);
    // On the acceptor's strand, so that every connection accepted before the close is registered
    // (OnAccept runs there too) and none is accepted after it.
    asio::post(acceptor_.get_executor(), [this] {
      asio::error_code ignored;
      acceptor_.close(ignored);
      accept_retry_.cancel();
      std::vector<std::shared_ptr<Connection>> live;
      {
        std::lock_guard<std::mutex> lock(core_.mu);
        for (const auto& [id, weak] : core_.connections) {
          if (std::shared_ptr<Connection> connection = weak.lock()) live.push_back(connection);
        }
      }
      for (const std::shared_ptr<Connection>& connection : live) connection->Shutdown();
    });
    // With the guard gone, run() returns once every connection has closed and every running
    // handler has returned.
    work_.reset();
    for (std::thread& t : threads_) t.join();
    threads_.clear();
    spdlog::info("event=http_server_stopped port={}", port_.load());
  }

  void Run() {
    for (;;) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {
        // Handler exceptions are caught per request; this is a bug in the server itself. Keep
        // the thread serving rather than terminate the process.
        spdlog::error("event=http_io_loop_threw what=\"{}\"", e.what());
      } catch (...) {
        spdlog::error("event=http_io_loop_threw what=non-std");
      }
    }
  }

  void DoAccept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](asio::error_code ec, Socket socket) {
      OnAccept(ec, std::move(socket));
    });
  }

  void OnAccept(asio::error_code ec, Socket socket) {
    if (core_.stopping.load() || !acceptor_.is_open()) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      spdlog::warn("event=http_accept_failed error=\"{}\" retry_ms={}", ec.message(),
                   kAcceptRetryMs);
      accept_retry_.expires_after(std::chrono::milliseconds(kAcceptRetryMs));
      accept_retry_.async_wait([this](asio::error_code wait_ec) {
        if (!wait_ec && !core_.stopping.load()) DoAccept();
      });
      return;
    }
    std::string client;
    if (core_.options.max_connections_per_client > 0) {
      asio::error_code remote_ec;
      const Tcp::endpoint remote = socket.remote_endpoint(remote_ec);
      if (!remote_ec) client = remote.address().to_string();
    }
    std::shared_ptr<Connection> connection;
    const char* refused_for = "max_connections";
    // Connections looked at while making room: released after the lock (the last reference's
    // destructor takes core_.mu).
    std::vector<std::shared_ptr<Connection>> looked_at;
    {
      std::lock_guard<std::mutex> lock(core_.mu);
      // A full server makes room by closing the connection idle the longest (it holds no request),
      // so that idle keep-alive sockets, one client's or many, cannot lock everyone else out
      // (pdns's backend connections and the failover controllers' hooks at meridian-geo, found by
      // the probe of 2026-12-04). Only when every connection has a request under way is a new
      // one refused. A client over its own limit is refused first: it makes no room.
      const bool full =
          core_.connections.size() >= static_cast<size_t>(core_.options.max_connections);
      if (!client.empty() && core_.per_client[client] >= core_.options.max_connections_per_client) {
        refused_for = "max_connections_per_client";
      } else if (full && !MakeRoomLocked(&looked_at)) {
        refused_for = "max_connections";
      } else {
        const uint64_t id = core_.next_connection_id++;
        if (!client.empty()) ++core_.per_client[client];
        connection = std::make_shared<Connection>(core_, std::move(socket), id, client);
        core_.connections.emplace(id, connection);
      }
    }
    if (connection) {
      connection->Start();
    } else {
      // Refused: closing at once is cheaper for both sides than queueing work we cannot take.
      asio::error_code ignored;
      socket.close(ignored);
      if (refused_++ % 1024 == 0) {
        spdlog::warn(
            "event=http_connection_refused reason={} max_connections={} "
            "max_connections_per_client={} client={} refused_total={}",
            refused_for, core_.options.max_connections, core_.options.max_connections_per_client,
            client, refused_);
      }
    }
    DoAccept();
  }

  // Marks the connection idle the longest to close (Connection::MakeRoom). False when none is
  // idle. REQUIRES: core_.mu held; every connection it locks goes into *looked_at, for the
  // caller to release after unlocking.
  bool MakeRoomLocked(std::vector<std::shared_ptr<Connection>>* looked_at) {
    Connection* longest = nullptr;
    int64_t oldest = std::numeric_limits<int64_t>::max();
    for (const auto& [id, weak] : core_.connections) {
      std::shared_ptr<Connection> c = weak.lock();
      if (!c) continue;
      looked_at->push_back(c);
      const int64_t since = c->idle_since();
      if (since >= 0 && since < oldest && !c->evicting()) {
        oldest = since;
        longest = c.get();
      }
    }
    if (!longest || !longest->MakeRoom()) return false;
    if (evicted_++ % 1024 == 0) {
      spdlog::info("event=http_idle_connection_closed_for_room max_connections={} total={}",
                   core_.options.max_connections, evicted_);
    }
    return true;
  }

  // Declared before io_: connections, destroyed with io_ at the latest, unregister from it.
  ServerCore core_;
  asio::io_context io_;
  Acceptor acceptor_;
  Timer accept_retry_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::vector<std::thread> threads_;
  std::atomic<uint16_t> port_{0};
  uint64_t refused_ = 0;  // acceptor strand only
  uint64_t evicted_ = 0;  // acceptor strand only

  std::mutex lifecycle_mu_;
  Lifecycle lifecycle_ = Lifecycle::kNew;  // guarded by lifecycle_mu_
};

HttpServer::HttpServer(Options options, Handler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}

HttpServer::~HttpServer() { impl_->Stop(); }

absl::Status HttpServer::Start() { return impl_->Start(); }

uint16_t HttpServer::port() const { return impl_->port(); }

void HttpServer::Stop() { impl_->Stop(); }

}  // namespace meridian::region::http
