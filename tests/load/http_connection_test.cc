#include "tests/load/http_connection.h"

#include <gtest/gtest.h>

#include <asio/read.hpp>
#include <asio/read_until.hpp>
#include <asio/streambuf.hpp>
#include <asio/write.hpp>
#include <atomic>
#include <functional>
#include <string>
#include <thread>

namespace meridian::load {
namespace {

using asio::ip::tcp;
using namespace std::chrono_literals;

// A scripted HTTP server on a free loopback port: connections are accepted one after the other
// on a thread, and each is handed to `serve`, which reads requests and writes what the test wants.
class ScriptServer {
 public:
  using Serve = std::function<void(tcp::socket&)>;
  ScriptServer(int connections, Serve serve)
      : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    thread_ = std::thread([this, connections, serve] {
      for (int i = 0; i < connections; ++i) {
        tcp::socket s(io_);
        std::error_code ec;
        acceptor_.accept(s, ec);
        if (ec) return;
        ++accepted_;
        serve(s);
      }
    });
  }
  ~ScriptServer() {
    std::error_code ec;
    acceptor_.close(ec);
    thread_.join();
  }
  tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  int accepted() const { return accepted_.load(); }

  // Reads one request (headers and a Content-Length body); false at EOF.
  static bool ReadRequest(tcp::socket& s, std::string* head) {
    asio::streambuf buf;
    std::error_code ec;
    size_t n = asio::read_until(s, buf, "\r\n\r\n", ec);
    if (ec) return false;
    std::string all(asio::buffers_begin(buf.data()), asio::buffers_end(buf.data()));
    *head = all.substr(0, n);
    size_t cl = head->find("Content-Length: ");
    size_t body = cl == std::string::npos ? 0 : std::stoul(head->substr(cl + 16));
    size_t have = all.size() - n;
    if (body > have) {
      std::string rest(body - have, '\0');
      asio::read(s, asio::buffer(rest), ec);
    }
    return !ec;
  }
  static void Write(tcp::socket& s, const std::string& data) {
    std::error_code ec;
    asio::write(s, asio::buffer(data), ec);
  }

 private:
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::atomic<int> accepted_{0};
  std::thread thread_;
};

const std::string kOk = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

HttpResult SendAndWait(asio::io_context& io, HttpConnection& c, const std::string& request,
                       std::chrono::milliseconds timeout = 2000ms) {
  HttpResult out;
  bool done = false;
  c.Send(request, timeout, [&](HttpResult r) {
    out = std::move(r);
    done = true;
  });
  io.restart();
  io.run();
  EXPECT_TRUE(done);
  return out;
}

TEST(BuildRequestTest, AddsJsonHeadersForBodies) {
  std::string r = BuildRequest("POST", "/v1/cart/items", "127.0.0.1:1", {{"A", "b"}}, "{}");
  EXPECT_EQ(r,
            "POST /v1/cart/items HTTP/1.1\r\nHost: 127.0.0.1:1\r\nA: b\r\nContent-Type: "
            "application/json\r\nContent-Length: 2\r\n\r\n{}");
  EXPECT_EQ(BuildRequest("GET", "/x", "h", {}, ""), "GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
}

TEST(HttpConnectionTest, KeepsTheConnectionAlive) {
  ScriptServer server(1, [](tcp::socket& s) {
    std::string head;
    while (ScriptServer::ReadRequest(s, &head)) ScriptServer::Write(s, kOk);
  });
  asio::io_context io;
  HttpConnection c(io, server.endpoint());
  for (int i = 0; i < 3; ++i) {
    HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""));
    EXPECT_EQ(r.error, HttpResult::Error::kNone) << r.detail;
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "ok");
  }
  EXPECT_EQ(c.connects(), 1);
  EXPECT_EQ(c.stale_retries(), 0);
}

// The server closes an idle keep-alive connection without saying so: the next request goes out
// again on a new connection instead of failing.
TEST(HttpConnectionTest, ResendsOnceAfterAStaleKeepAlive) {
  ScriptServer server(2, [](tcp::socket& s) {
    std::string head;
    if (ScriptServer::ReadRequest(s, &head)) ScriptServer::Write(s, kOk);
  });
  asio::io_context io;
  HttpConnection c(io, server.endpoint());
  EXPECT_EQ(SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, "")).status, 200);
  std::this_thread::sleep_for(50ms);  // let the server's close arrive
  HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""));
  EXPECT_EQ(r.error, HttpResult::Error::kNone) << r.detail;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(c.connects(), 2);
  EXPECT_EQ(c.stale_retries(), 1);
}

TEST(HttpConnectionTest, ConnectionCloseIsHonoured) {
  ScriptServer server(2, [](tcp::socket& s) {
    std::string head;
    if (ScriptServer::ReadRequest(s, &head)) {
      ScriptServer::Write(s,
                          "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nConnection: "
                          "close\r\nContent-Length: 0\r\n\r\n");
    }
  });
  asio::io_context io;
  HttpConnection c(io, server.endpoint());
  HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.retry_after, "3");
  r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(c.connects(), 2);
  EXPECT_EQ(c.stale_retries(), 0);
}

TEST(HttpConnectionTest, TimesOutASilentServer) {
  std::atomic<bool> release{false};
  ScriptServer server(1, [&](tcp::socket& s) {
    std::string head;
    ScriptServer::ReadRequest(s, &head);
    while (!release) std::this_thread::sleep_for(5ms);
  });
  asio::io_context io;
  HttpConnection c(io, server.endpoint());
  auto start = std::chrono::steady_clock::now();
  HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""), 100ms);
  auto took = std::chrono::steady_clock::now() - start;
  release = true;
  EXPECT_EQ(r.error, HttpResult::Error::kTimeout);
  EXPECT_GE(took, 100ms);
  EXPECT_LT(took, 2s);
  EXPECT_FALSE(c.busy());
}

TEST(HttpConnectionTest, ReportsAFailedConnect) {
  tcp::endpoint closed;
  {
    // A port that was free a moment ago and has no listener now.
    asio::io_context tmp;
    tcp::acceptor a(tmp, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    closed = a.local_endpoint();
  }
  asio::io_context io;
  HttpConnection c(io, closed);
  HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/", "h", {}, ""));
  EXPECT_EQ(r.error, HttpResult::Error::kConnect);
}

TEST(HttpConnectionTest, RefusesGarbageAndTruncation) {
  ScriptServer server(2, [](tcp::socket& s) {
    std::string head;
    if (!ScriptServer::ReadRequest(s, &head)) return;
    if (head.find("/garbage") != std::string::npos) {
      ScriptServer::Write(s, "NOT HTTP AT ALL\r\n\r\n");
    } else {
      ScriptServer::Write(s, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    }
  });
  asio::io_context io;
  HttpConnection c(io, server.endpoint());
  HttpResult r = SendAndWait(io, c, BuildRequest("GET", "/garbage", "h", {}, ""));
  EXPECT_EQ(r.error, HttpResult::Error::kProtocol);
  r = SendAndWait(io, c, BuildRequest("GET", "/short", "h", {}, ""));
  EXPECT_EQ(r.error, HttpResult::Error::kIo);
}

}  // namespace
}  // namespace meridian::load
