// The libcurl probe client against real HTTP servers on loopback, and the probe loop's timing.

#include "geo/prober.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "region/http/http_server.h"

namespace meridian::geo {
namespace {

using region::http::HttpRequest;
using region::http::HttpResponse;
using region::http::HttpServer;

std::unique_ptr<HttpServer> Serve(std::function<HttpResponse(HttpRequest&)> handler) {
  HttpServer::Options o;
  o.threads = 2;
  auto server = std::make_unique<HttpServer>(o, std::move(handler));
  EXPECT_TRUE(server->Start().ok());
  return server;
}

std::string Url(const HttpServer& s) {
  return "http://127.0.0.1:" + std::to_string(s.port()) + "/readyz";
}

TEST(CurlProbeClient, ClassifiesStatusRefusalAndTimeoutInParallel) {
  std::atomic<int> status{200};
  auto flippable = Serve([&](HttpRequest&) { return HttpResponse::Json(status.load(), "{}"); });
  auto slow = Serve([](HttpRequest&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    return HttpResponse::Json(200, "{}");
  });
  auto closed = Serve([](HttpRequest&) { return HttpResponse::Json(200, "{}"); });
  const std::string closed_url = Url(*closed);
  closed->Stop();

  CurlProbeClient client;
  const std::vector<std::string> urls = {Url(*flippable), Url(*slow), closed_url};
  const auto start = std::chrono::steady_clock::now();
  std::vector<ProbeResult> r = client.ProbeAll(urls, 150);
  const auto elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                              std::chrono::steady_clock::now() - start)
                              .count();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_TRUE(r[0].ok) << r[0].error;
  EXPECT_FALSE(r[1].ok);
  EXPECT_EQ(r[1].error, "timeout after 150 ms");
  EXPECT_FALSE(r[2].ok);
  EXPECT_NE(r[2].error.find("Failed to connect to 127.0.0.1"), std::string::npos) << r[2].error;
  // In parallel and bounded: about one timeout (150 ms, at most 350 ms by design), never the slow
  // server's 1000 ms; the margin is for a loaded machine.
  EXPECT_LT(elapsed_ms, 800);

  status = 503;
  r = client.ProbeAll({Url(*flippable)}, 150);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_FALSE(r[0].ok);
  EXPECT_EQ(r[0].error, "HTTP 503");
  status = 204;
  r = client.ProbeAll({Url(*flippable)}, 150);
  EXPECT_TRUE(r[0].ok) << r[0].error;
}

TEST(CurlProbeClient, ReusesItsConnection) {
  std::atomic<int> distinct_peers{0};
  std::mutex mu;
  std::set<std::string> peers;
  auto server = Serve([&](HttpRequest& r) {
    std::lock_guard<std::mutex> lock(mu);
    if (peers.insert(r.remote_address).second) ++distinct_peers;
    return HttpResponse::Json(200, "{}");
  });
  CurlProbeClient client;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(client.ProbeAll({Url(*server)}, 500)[0].ok);
  }
  EXPECT_EQ(distinct_peers.load(), 1);  // one keep-alive connection for five probes
}

class CountingClient : public ProbeClient {
 public:
  std::vector<ProbeResult> ProbeAll(const std::vector<std::string>& urls, int) override {
    ++rounds;
    return std::vector<ProbeResult>(urls.size(), ProbeResult{true, ""});
  }
  std::atomic<int> rounds{0};
};

TEST(ProbeLoop, RunsOnFixedTicksAndStopsPromptly) {
  CountingClient client;
  std::atomic<int> results{0};
  ProbeLoop loop({"http://a/readyz", "http://b/readyz"}, 20, 10, client,
                 [&](size_t, const ProbeResult&) { ++results; });
  loop.Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(210));
  const auto stop_start = std::chrono::steady_clock::now();
  loop.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - stop_start, std::chrono::milliseconds(100));
  // About 11 rounds (t = 0, 20, ..., 200 ms); generous bounds for a loaded 2-core machine.
  EXPECT_GE(client.rounds.load(), 5);
  EXPECT_LE(client.rounds.load(), 12);
  EXPECT_EQ(results.load(), 2 * client.rounds.load());
  loop.Stop();  // idempotent
}

TEST(ProbeLoop, WithoutTargetsStartsNoThread) {
  CountingClient client;
  ProbeLoop loop({}, 20, 10, client, [](size_t, const ProbeResult&) {});
  loop.Start();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  loop.Stop();
  EXPECT_EQ(client.rounds.load(), 0);
}

}  // namespace
}  // namespace meridian::geo
