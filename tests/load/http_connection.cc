#include "tests/load/http_connection.h"

#include <asio/connect.hpp>
#include <asio/error.hpp>
#include <asio/write.hpp>
#include <cassert>
#include <cctype>

namespace meridian::load {

std::string BuildRequest(std::string_view method, std::string_view target,
                         std::string_view host_header, const std::vector<Header>& headers,
                         std::string_view body) {
  std::string out;
  out.reserve(256 + body.size());
  out.append(method).append(" ").append(target).append(" HTTP/1.1\r\nHost: ");
  out.append(host_header).append("\r\n");
  for (const auto& [name, value] : headers) out.append(name).append(": ").append(value) += "\r\n";
  if (!body.empty() || method == "POST" || method == "PUT" || method == "PATCH") {
    out.append("Content-Type: application/json\r\nContent-Length: ")
        .append(std::to_string(body.size()))
        .append("\r\n");
  }
  out.append("\r\n").append(body);
  return out;
}

HttpConnection::HttpConnection(asio::io_context& io, asio::ip::tcp::endpoint endpoint)
    : socket_(io), timer_(io), endpoint_(std::move(endpoint)) {
  settings_.on_header_field = &HttpConnection::OnHeaderField;
  settings_.on_header_value = &HttpConnection::OnHeaderValue;
  settings_.on_headers_complete = &HttpConnection::OnHeadersComplete;
  settings_.on_body = &HttpConnection::OnBody;
  settings_.on_message_complete = &HttpConnection::OnMessageComplete;
}

HttpConnection::~HttpConnection() {
  std::error_code ec;
  socket_.close(ec);
}

void HttpConnection::Send(std::string request, std::chrono::milliseconds timeout, Done done) {
  assert(!busy());
  request_ = std::move(request);
  done_ = std::move(done);
  retried_ = false;
  ++epoch_;
  uint64_t id = ++send_id_;
  timer_.expires_after(timeout);
  timer_.async_wait([this, id](std::error_code ec) {
    if (ec || id != send_id_ || !busy()) return;
    Fail(HttpResult::Error::kTimeout, "no response within the timeout");
  });
  Start();
}

void HttpConnection::Abort() {
  if (busy()) {
    Fail(HttpResult::Error::kAborted, "aborted");
  } else {
    CloseSocket();
  }
}

void HttpConnection::Start() {
  ResetParser();
  if (socket_.is_open()) {
    reused_ = served_one_;
    Write();
  } else {
    reused_ = false;
    Connect();
  }
}

void HttpConnection::Connect() {
  uint64_t epoch = epoch_;
  socket_.async_connect(endpoint_, [this, epoch](std::error_code ec) {
    if (epoch != epoch_) return;
    if (ec) {
      Fail(HttpResult::Error::kConnect, "connect: " + ec.message());
      return;
    }
    ++connects_;
    served_one_ = false;
    std::error_code ignored;
    // Requests are small and latency is what we measure: do not let Nagle hold them back.
    socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
    Write();
  });
}

void HttpConnection::Write() {
  uint64_t epoch = epoch_;
  asio::async_write(socket_, asio::buffer(request_), [this, epoch](std::error_code ec, size_t) {
    if (epoch != epoch_) return;
    if (ec) {
      RetryOrFail(HttpResult::Error::kIo, "write: " + ec.message());
      return;
    }
    Read();
  });
}

void HttpConnection::Read() {
  uint64_t epoch = epoch_;
  socket_.async_read_some(asio::buffer(buf_), [this, epoch](std::error_code ec, size_t n) {
    if (epoch != epoch_) return;
    if (ec == asio::error::eof) {
      OnBytes(nullptr, 0, true);
      return;
    }
    if (ec) {
      RetryOrFail(HttpResult::Error::kIo, "read: " + ec.message());
      return;
    }
    OnBytes(buf_.data(), n, false);
  });
}

void HttpConnection::OnBytes(const char* data, size_t n, bool eof) {
  if (eof && !got_bytes_) {
    RetryOrFail(HttpResult::Error::kIo, "the server closed the connection before responding");
    return;
  }
  got_bytes_ = true;
  size_t parsed = http_parser_execute(&parser_, &settings_, data, n);
  auto err = HTTP_PARSER_ERRNO(&parser_);
  if (too_large_) {
    Fail(HttpResult::Error::kProtocol, "response body over 8 MiB");
    return;
  }
  if (eof && !complete_) {
    Fail(HttpResult::Error::kIo, "the server closed the connection mid-response");
    return;
  }
  if (err != HPE_OK && err != HPE_PAUSED) {
    Fail(HttpResult::Error::kProtocol, std::string("bad response: ") + http_errno_description(err));
    return;
  }
  if (complete_) {
    // Bytes past the response were never asked for: the stream cannot be trusted any more.
    bool keep_alive = !eof && parsed == n && http_should_keep_alive(&parser_) != 0;
    served_one_ = true;
    Finish(std::move(partial_), keep_alive);
    return;
  }
  Read();
}

void HttpConnection::RetryOrFail(HttpResult::Error error, const std::string& detail) {
  if (reused_ && !got_bytes_ && !retried_) {
    retried_ = true;
    ++stale_retries_;
    CloseSocket();
    Start();
    return;
  }
  Fail(error, detail);
}

void HttpConnection::Fail(HttpResult::Error error, const std::string& detail) {
  CloseSocket();
  HttpResult r;
  r.error = error;
  r.detail = detail;
  Finish(std::move(r), false);
}

void HttpConnection::Finish(HttpResult result, bool keep_alive) {
  assert(busy());
  ++send_id_;
  timer_.cancel();
  if (!keep_alive) CloseSocket();
  // Cleared before the call: the callback may start the next request on this connection.
  Done done = std::move(done_);
  done_ = nullptr;
  done(std::move(result));
}

void HttpConnection::CloseSocket() {
  ++epoch_;
  std::error_code ignored;
  socket_.close(ignored);
  served_one_ = false;
}

void HttpConnection::ResetParser() {
  http_parser_init(&parser_, HTTP_RESPONSE);
  parser_.data = this;
  partial_ = HttpResult{};
  header_field_.clear();
  after_value_ = false;
  complete_ = false;
  too_large_ = false;
  got_bytes_ = false;
}

int HttpConnection::OnHeaderField(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<HttpConnection*>(p->data);
  if (self->after_value_) {
    self->after_value_ = false;
    self->header_field_.clear();
  }
  // Only "retry-after" matters: longer names need not be kept whole.
  if (self->header_field_.size() < 64) self->header_field_.append(at, n);
  return 0;
}

int HttpConnection::OnHeaderValue(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<HttpConnection*>(p->data);
  std::string lower = self->header_field_;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "retry-after" && self->partial_.retry_after.size() < 64) {
    self->partial_.retry_after.append(at, n);
  }
  self->after_value_ = true;
  return 0;
}

int HttpConnection::OnHeadersComplete(http_parser* p) {
  auto* self = static_cast<HttpConnection*>(p->data);
  self->partial_.status = static_cast<int>(p->status_code);
  return 0;
}

int HttpConnection::OnBody(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<HttpConnection*>(p->data);
  if (self->partial_.body.size() + n > kMaxBodyBytes) {
    self->too_large_ = true;
    return 1;
  }
  self->partial_.body.append(at, n);
  return 0;
}

int HttpConnection::OnMessageComplete(http_parser* p) {
  auto* self = static_cast<HttpConnection*>(p->data);
  self->complete_ = true;
  // Stop at the end of this response; anything after it is handled as unexpected.
  http_parser_pause(p, 1);
  return 0;
}

}  // namespace meridian::load
