// GeoService without the network: requests go through Handle(), probes through a scripted
// ProbeClient, time through a fake clock. The integration test (tests/integration/geo_test.cc)
// covers the same paths through real sockets, pdns_server and dig.

#include "geo/service.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

namespace meridian::geo {
namespace {

using nlohmann::json;
using region::http::HttpRequest;
using region::http::HttpResponse;

constexpr char kToken[] = "operator-token-0123456789";

constexpr char kConfig[] = R"(
zone:
  name: shop.example.test.
  nameservers: [{name: ns1.shop.example.test.}]
regions:
  - name: us-east
    addresses: [10.1.0.1]
    lat: 38.9
    lon: -77.0
    readyz: http://us-east/readyz
  - name: eu-west
    addresses: [10.2.0.1]
    lat: 53.3
    lon: -6.3
    readyz: http://eu-west/readyz
  - name: ap-southeast
    addresses: [10.3.0.1]
    lat: 1.35
    lon: 103.8
locations:
  - {cidr: 198.18.1.0/24, region: us-east}
  - {cidr: 198.18.2.0/24, region: eu-west}
  - {cidr: 198.18.3.0/24, region: ap-southeast}
health: {fall: 3, rise: 2}
operator_token: operator-token-0123456789
)";

class FakeClock : public Clock {
 public:
  int64_t NowMs() const override { return now_ms.load(); }
  std::atomic<int64_t> now_ms{1'000'000};
};

class ScriptedProbes : public ProbeClient {
 public:
  std::vector<ProbeResult> ProbeAll(const std::vector<std::string>& urls, int) override {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<ProbeResult> out;
    for (const std::string& url : urls) {
      auto it = failing.find(url);
      out.push_back(it == failing.end() ? ProbeResult{true, ""} : ProbeResult{false, it->second});
    }
    return out;
  }
  void Fail(const std::string& url, std::string error) {
    std::lock_guard<std::mutex> lock(mu);
    failing[url] = std::move(error);
  }
  void Heal(const std::string& url) {
    std::lock_guard<std::mutex> lock(mu);
    failing.erase(url);
  }
  std::mutex mu;
  std::map<std::string, std::string> failing;
};

class GeoServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_sink_ = std::make_shared<spdlog::sinks::ostream_sink_mt>(log_);
    previous_logger_ = spdlog::default_logger();
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("test", log_sink_));
    absl::StatusOr<GeoConfig> config = ParseConfig(kConfig);
    ASSERT_TRUE(config.ok()) << config.status();
    GeoService::Options o;
    o.clock = &clock_;
    o.probe_client = &probes_;
    auto service = GeoService::Create(*std::move(config), std::move(o));
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
  }
  void TearDown() override {
    service_.reset();
    spdlog::set_default_logger(previous_logger_);
  }

  HttpResponse Call(const std::string& method, const std::string& target,
                    const std::string& body = "", const std::string& token = "") {
    HttpRequest r;
    r.method = method;
    r.target = target;
    const size_t q = target.find('?');
    r.path = target.substr(0, q);
    if (q != std::string::npos) r.query = target.substr(q + 1);
    r.body = body;
    r.remote_address = "127.0.0.1:5555";
    if (!token.empty()) r.headers.emplace_back("authorization", "Bearer " + token);
    return service_->Handle(r);
  }

  // The A records the backend answers for a client subnet.
  std::vector<std::string> Answer(const std::string& subnet, int* ttl = nullptr) {
    HttpResponse r = Call("POST", "/dns",
                          json{{"method", "lookup"},
                               {"parameters",
                                {{"qname", "shop.example.test."},
                                 {"qtype", "ANY"},
                                 {"real-remote", subnet},
                                 {"remote", "127.0.0.1"}}}}
                              .dump());
    EXPECT_EQ(r.status, 200) << r.body;
    std::vector<std::string> out;
    const json reply = json::parse(r.body);
    for (const json& rec : reply["result"]) {
      if (rec["qtype"] == "A") {
        out.push_back(rec["content"]);
        if (ttl) *ttl = rec["ttl"];
      }
    }
    return out;
  }

  json Regions() {
    HttpResponse r = Call("GET", "/v1/regions");
    EXPECT_EQ(r.status, 200);
    return json::parse(r.body);
  }

  std::string Log() {
    spdlog::default_logger()->flush();
    return log_.str();
  }

  FakeClock clock_;
  ScriptedProbes probes_;
  std::unique_ptr<GeoService> service_;
  std::ostringstream log_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> log_sink_;
  std::shared_ptr<spdlog::logger> previous_logger_;
};

TEST_F(GeoServiceTest, ProbeFailuresMoveTheAnswerAfterFallAndBackAfterRise) {
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});
  probes_.Fail("http://eu-west/readyz", "HTTP 503");
  service_->ProbeOnce();
  clock_.now_ms += 500;
  service_->ProbeOnce();
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});  // 2 < fall
  clock_.now_ms += 500;
  service_->ProbeOnce();
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.1.0.1"});  // next nearest

  const json eu = Regions()["regions"][1];
  EXPECT_EQ(eu["name"], "eu-west");
  EXPECT_EQ(eu["effective"], "down");
  EXPECT_EQ(eu["probe"]["state"], "down");
  EXPECT_EQ(eu["probe"]["last_error"], "HTTP 503");
  EXPECT_EQ(eu["probe"]["failures_total"], 3);
  EXPECT_EQ(eu["effective_since_ms_ago"], 0);
  EXPECT_EQ(Regions()["regions"][2]["probe"]["enabled"], false);  // no readyz configured

  EXPECT_NE(Log().find("event=geo_region_health region=eu-west state=down source=probe "
                       "reason=\"3 consecutive probe failures: HTTP 503\""),
            std::string::npos)
      << Log();
  const std::string metrics = Call("GET", "/metrics").body;
  EXPECT_NE(metrics.find("meridian_geo_region_healthy{region=\"eu-west\"} 0"), std::string::npos);
  EXPECT_NE(metrics.find("meridian_geo_region_healthy{region=\"us-east\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("meridian_geo_probe_failures_total{region=\"eu-west\"} 3"),
            std::string::npos);
  EXPECT_NE(metrics.find("meridian_geo_answers_total{kind=\"nearest\",region=\"us-east\"} 1"),
            std::string::npos)
      << metrics;

  probes_.Heal("http://eu-west/readyz");
  service_->ProbeOnce();
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.1.0.1"});  // 1 < rise
  service_->ProbeOnce();
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});
  EXPECT_NE(Log().find("event=geo_region_health region=eu-west state=up source=probe"),
            std::string::npos);
}

TEST_F(GeoServiceTest, HealthHookNeedsTheOperatorToken) {
  const std::string down = R"({"state":"down","reason":"drill"})";
  HttpResponse r = Call("POST", "/v1/regions/eu-west/health", down);
  EXPECT_EQ(r.status, 401);
  r = Call("POST", "/v1/regions/eu-west/health", down, "operator-token-0123456780");
  EXPECT_EQ(r.status, 403);
  r = Call("POST", "/v1/regions/eu-west/health", down, "short");
  EXPECT_EQ(r.status, 403);
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});  // nothing changed
  EXPECT_NE(Call("GET", "/metrics")
                .body.find("meridian_geo_health_hook_requests_total{result=\"unauthorized\"} 3"),
            std::string::npos);
  // The scheme is case-insensitive (RFC 9110 11.1): "bearer" is the same credential.
  HttpRequest lower;
  lower.method = "POST";
  lower.target = lower.path = "/v1/regions/eu-west/health";
  lower.body = down;
  lower.remote_address = "127.0.0.1:5555";
  lower.headers.emplace_back("authorization", std::string("bearer ") + kToken);
  EXPECT_EQ(service_->Handle(lower).status, 200);
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.1.0.1"});  // now it is down
}

TEST_F(GeoServiceTest, HealthHookRejectsBadInputAndChangesNothing) {
  const std::pair<std::string, int> cases[] = {
      {"", 400},
      {"not json", 400},
      {"[]", 400},
      {R"({"state":"sideways"})", 400},
      {R"({"state":"DOWN"})", 400},
      {R"({"reason":"no state"})", 400},
      {R"({"state":"down","reason":7})", 400},
      {R"({"state":"down","extra":1})", 400},
      {R"({"state":"down","reason":")" + std::string(300, 'x') + "\"}", 400},
  };
  for (const auto& [body, status] : cases) {
    EXPECT_EQ(Call("POST", "/v1/regions/eu-west/health", body, kToken).status, status) << body;
  }
  EXPECT_EQ(Call("POST", "/v1/regions/mars/health", R"({"state":"down"})", kToken).status, 404);
  EXPECT_EQ(Regions()["regions"][1]["override"]["state"], "auto");
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});
}

TEST_F(GeoServiceTest, HealthHookOverridesProbesUntilAuto) {
  HttpResponse r = Call("POST", "/v1/regions/eu-west/health",
                        R"({"state":"down","reason":"failover: region lost"})", kToken);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["effective"], "down");
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.1.0.1"});
  // Good probes do not bring it back while the override holds.
  for (int i = 0; i < 10; ++i) service_->ProbeOnce();
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.1.0.1"});
  const json eu = Regions()["regions"][1];
  EXPECT_EQ(eu["override"]["state"], "down");
  EXPECT_EQ(eu["override"]["reason"], "failover: region lost");
  EXPECT_EQ(eu["probe"]["state"], "up");
  EXPECT_NE(Log().find("event=geo_region_health region=eu-west state=down source=override "
                       "reason=\"override down: failover: region lost\""),
            std::string::npos)
      << Log();

  // A forged reason cannot inject key=value pairs or lines into the log.
  ASSERT_EQ(Call("POST", "/v1/regions/us-east/health",
                 R"({"state":"up","reason":"x\" state=down\nevent=fake"})", kToken)
                .status,
            200);
  EXPECT_EQ(Log().find("\nevent=fake"), std::string::npos);

  ASSERT_EQ(Call("POST", "/v1/regions/eu-west/health",
                 R"({"state":"auto","reason":"failover: region recovered"})", kToken)
                .status,
            200);
  EXPECT_EQ(Answer("198.18.2.0/24"), std::vector<std::string>{"10.2.0.1"});
  EXPECT_EQ(Regions()["regions"][1]["override"]["reason"], "failover: region recovered");
  EXPECT_LT(Regions()["regions"][1]["override"]["since_ms_ago"], 60000);
  ASSERT_EQ(Call("POST", "/v1/regions/eu-west/health", R"({"state":"auto"})", kToken).status, 200);
  EXPECT_EQ(Regions()["regions"][1]["override"]["reason"], "no reason given");
}

TEST_F(GeoServiceTest, EveryRegionDownAnswersTheLastResort) {
  for (const char* region : {"us-east", "eu-west", "ap-southeast"}) {
    ASSERT_EQ(Call("POST", std::string("/v1/regions/") + region + "/health",
                   R"({"state":"down","reason":"test"})", kToken)
                  .status,
              200);
  }
  int ttl = 0;
  EXPECT_EQ(Answer("198.18.2.0/24", &ttl),
            (std::vector<std::string>{"10.1.0.1", "10.2.0.1", "10.3.0.1"}));
  EXPECT_EQ(ttl, 1);
  const json regions = Regions();
  EXPECT_EQ(regions["last_resort_active"], true);
  EXPECT_EQ(regions["healthy_regions"], 0);
  EXPECT_NE(Log().find("event=geo_last_resort_active mode=all ttl_s=1"), std::string::npos);

  ASSERT_EQ(Call("POST", "/v1/regions/ap-southeast/health", R"({"state":"auto"})", kToken).status,
            200);
  EXPECT_EQ(Answer("198.18.2.0/24", &ttl), std::vector<std::string>{"10.3.0.1"});
  EXPECT_EQ(ttl, 5);
  EXPECT_NE(Log().find("event=geo_last_resort_cleared healthy_regions=1"), std::string::npos);
}

TEST_F(GeoServiceTest, RouteExplainsTheDecision) {
  HttpResponse r = Call("GET", "/v1/route?client=198.18.3.9/24");
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = json::parse(r.body);
  EXPECT_EQ(j["client"], "198.18.3.0/24");
  EXPECT_EQ(j["source"], "cidr");
  EXPECT_EQ(j["regions"], json::array({"ap-southeast"}));
  EXPECT_EQ(j["scope_prefix_len"], 24);
  EXPECT_EQ(j["ttl_s"], 5);
  EXPECT_GT(j["distance_km"]["us-east"].get<double>(), 15000);
  EXPECT_EQ(Call("GET", "/v1/route").status, 400);
  EXPECT_EQ(Call("GET", "/v1/route?client=nonsense").status, 400);
}

TEST_F(GeoServiceTest, UnknownRegionAndRoutes) {
  EXPECT_EQ(Call("GET", "/v1/regions/mars").status, 404);
  EXPECT_EQ(Call("GET", "/v1/regions/eu-west").status, 200);
  EXPECT_EQ(Call("GET", "/healthz").status, 200);
  EXPECT_EQ(Call("GET", "/dns").status, 405);
  EXPECT_EQ(Call("POST", "/dns", "garbage").status, 400);
}

TEST(GeoServiceCreate, AMissingMaxMindDatabaseStopsTheStart) {
  absl::StatusOr<GeoConfig> config =
      ParseConfig(std::string(kConfig) + "maxmind_db: /nonexistent/city.mmdb\n");
  ASSERT_TRUE(config.ok()) << config.status();
  auto service = GeoService::Create(*std::move(config), {});
  ASSERT_FALSE(service.ok());
  EXPECT_NE(std::string(service.status().message()).find("/nonexistent/city.mmdb"),
            std::string::npos);
}

}  // namespace
}  // namespace meridian::geo
