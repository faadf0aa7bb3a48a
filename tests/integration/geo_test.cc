// meridian-geo behind a real pdns_server, queried with dig (issue 6). Each test starts its own
// processes on free loopback ports: three tiny readyz servers (in this process, flippable), one
// meridian-geo, one pdns_server with launch=remote. Nothing is skipped: without pdns_server or dig
// the tests fail and say what to install.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "region/http/http_server.h"
#include "tests/integration/http_client.h"
#include "tests/support/ports.h"
#include "tests/support/process.h"
#include "tests/support/temp_dir.h"

namespace meridian {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using region::http::HttpRequest;
using region::http::HttpResponse;
using region::http::HttpServer;
using test_support::Process;

constexpr char kToken[] = "geo-integration-operator-token";
constexpr char kService[] = "shop.example.test";
// Customers' subnets (RFC 2544 benchmark range), one per region, plus a catch-all /16.
constexpr char kUsEastSubnet[] = "198.18.1.0/24";
constexpr char kEuWestSubnet[] = "198.18.2.0/24";
constexpr char kApSubnet[] = "198.18.3.0/24";
constexpr char kUsEast[] = "10.1.0.1";
constexpr char kEuWest[] = "10.2.0.1";
constexpr char kAp[] = "10.3.0.1";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// The program's path if it is in PATH, else "".
std::string FindInPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  // pdns_server lives in /usr/sbin, which a non-root PATH may lack.
  std::stringstream dirs(std::string(path ? path : "/usr/bin:/bin") + ":/usr/sbin:/sbin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const std::string candidate = dir + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct DigResult {
  std::string status;                  // NOERROR, NXDOMAIN, ... ("" if dig failed)
  std::vector<std::string> addresses;  // A records of the answer section, sorted
  int ttl = -1;                        // TTL of the first A record
  int scope = -1;                      // ECS scope in the reply's CLIENT-SUBNET, -1 if absent
  std::string output;
};

// A readyz endpoint whose status the test flips.
struct Readyz {
  std::atomic<int> status{200};
  std::unique_ptr<HttpServer> server;
};

class GeoDnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pdns_bin_ = FindInPath("pdns_server");
    dig_bin_ = FindInPath("dig");
    ASSERT_FALSE(pdns_bin_.empty())
        << "pdns_server is not installed (not in PATH nor /usr/sbin): run deploy/install-deps.sh "
           "(Debian packages pdns-server, pdns-backend-remote)";
    ASSERT_FALSE(dig_bin_.empty())
        << "dig is not installed: run deploy/install-deps.sh (Debian package dnsutils)";
    struct stat st {};
    ASSERT_EQ(::stat(MERIDIAN_GEO_BIN, &st), 0) << MERIDIAN_GEO_BIN << " is not built";
    absl::StatusOr<std::string> dir = test_support::MakeTempDir("geo", "");
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    for (auto& r : readyz_) {
      r = std::make_unique<Readyz>();
      HttpServer::Options o;
      o.threads = 1;
      Readyz* self = r.get();
      r->server = std::make_unique<HttpServer>(
          o, [self](HttpRequest&) { return HttpResponse::Json(self->status.load(), "{}"); });
      ASSERT_TRUE(r->server->Start().ok());
    }
  }

  void TearDown() override {
    if (HasFailure()) {
      if (geo_)
        std::fprintf(stderr, "--- meridian-geo log:\n%s\n",
                     test_support::FileTail(geo_->log_path(), 6000).c_str());
      if (pdns_)
        std::fprintf(stderr, "--- pdns_server log:\n%s\n",
                     test_support::FileTail(pdns_->log_path(), 3000).c_str());
    }
    pdns_.reset();
    geo_.reset();
    for (auto& r : readyz_) {
      if (r) r->server->Stop();
    }
    if (!dir_.empty()) test_support::RemoveTempDir(dir_);
  }

  std::string ReadyzUrl(int i) const {
    return "http://127.0.0.1:" + std::to_string(readyz_[i]->server->port()) + "/readyz";
  }

  // `health` is the YAML of the health section.
  void StartGeo(const std::string& health) {
    for (int attempt = 0; attempt < 5; ++attempt) {
      geo_port_ = test_support::FreeTcpPort();
      ASSERT_NE(geo_port_, 0);
      const std::string config = dir_ + "/geo.yaml";
      {
        std::ofstream out(config);
        out << "listen: 127.0.0.1:" << geo_port_ << "\n"
            << "dns_path: /dns\n"
            << "answer_ttl_s: 5\n"
            << "zone:\n"
            << "  name: " << kService << ".\n"
            << "  soa: {serial: 7}\n"
            << "  nameservers: [{name: ns1." << kService << ".}]\n"
            << "regions:\n"
            << "  - {name: us-east, addresses: [" << kUsEast
            << "], lat: 38.9, lon: -77.0, readyz: " << ReadyzUrl(0) << "}\n"
            << "  - {name: eu-west, addresses: [" << kEuWest
            << "], lat: 53.3, lon: -6.3, readyz: " << ReadyzUrl(1) << "}\n"
            << "  - {name: ap-southeast, addresses: [" << kAp
            << "], lat: 1.35, lon: 103.8, readyz: " << ReadyzUrl(2) << "}\n"
            << "health: " << health << "\n"
            << "last_resort: {mode: all, ttl_s: 1}\n"
            << "locations:\n"
            << "  - {cidr: " << kUsEastSubnet << ", region: us-east}\n"
            << "  - {cidr: " << kEuWestSubnet << ", region: eu-west}\n"
            << "  - {cidr: " << kApSubnet << ", region: ap-southeast}\n"
            << "  - {cidr: 192.0.2.0/24, lat: 50.11, lon: 8.68}\n"  // Frankfurt
            << "  - {cidr: 198.18.0.0/16, region: ap-southeast}\n"
            << "default_location: {region: us-east}\n"
            << "operator_token: " << kToken << "\n";
      }
      auto p = Process::Spawn(
          {.argv = {MERIDIAN_GEO_BIN, "--config", config}, .log_path = dir_ + "/geo.log"});
      ASSERT_TRUE(p.ok()) << p.status();
      geo_ = *std::move(p);
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      while (Clock::now() < deadline && geo_->Running()) {
        if (testing::Request(geo_port_, "GET", "/healthz").status == 200) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      const std::string log = test_support::FileTail(geo_->log_path());
      // The free port was taken between FreeTcpPort and the bind: try another.
      if (log.find("bind") == std::string::npos) {
        FAIL() << "meridian-geo did not become ready:\n" << log;
      }
      geo_.reset();
    }
    FAIL() << "meridian-geo could not bind a free port in 5 attempts";
  }

  void StartPdns() {
    for (int attempt = 0; attempt < 5; ++attempt) {
      dns_port_ = test_support::FreeTcpPort();
      ASSERT_NE(dns_port_, 0);
      {
        std::ofstream out(dir_ + "/pdns.conf");
        out << "launch=remote\n"
            << "remote-connection-string=http:url=http://127.0.0.1:" << geo_port_
            << "/dns,post=1,post_json=1\n"
            << "local-address=127.0.0.1\n"
            << "local-port=" << dns_port_ << "\n"
            << "daemon=no\nguardian=no\ndisable-syslog=yes\n"
            << "socket-dir=" << dir_ << "\n"
            << "edns-subnet-processing=yes\n"
            << "cache-ttl=0\nnegquery-cache-ttl=0\nquery-cache-ttl=0\n"
            << "zone-cache-refresh-interval=0\n"
            << "webserver=no\nsecurity-poll-suffix=\n";
      }
      auto p = Process::Spawn(
          {.argv = {pdns_bin_, "--config-dir=" + dir_}, .log_path = dir_ + "/pdns.log"});
      ASSERT_TRUE(p.ok()) << p.status();
      pdns_ = *std::move(p);
      const auto deadline = Clock::now() + std::chrono::seconds(10);
      while (Clock::now() < deadline && pdns_->Running()) {
        if (UdpQuery(kEuWestSubnet, 300) >= 0) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      const std::string log = test_support::FileTail(pdns_->log_path());
      if (log.find("in use") == std::string::npos) {
        FAIL() << "pdns_server did not answer within 10 s:\n" << log;
      }
      pdns_.reset();
    }
    FAIL() << "pdns_server could not bind a free port in 5 attempts";
  }

  DigResult Dig(const std::string& subnet, const std::string& qtype = "A",
                const std::string& name = kService) {
    const std::string out_path = dir_ + "/dig.out";
    std::vector<std::string> argv = {
        dig_bin_,   "@127.0.0.1", "-p",       std::to_string(dns_port_), name, qtype,
        "+tries=1", "+time=2",    "+nocookie"};
    if (!subnet.empty()) argv.push_back("+subnet=" + subnet);
    std::remove(out_path.c_str());
    DigResult r;
    const absl::Status st = Process::Run({.argv = argv, .log_path = out_path}, absl::Seconds(10));
    r.output = ReadFile(out_path);
    if (!st.ok()) return r;
    // (std::regex trips a false -Wmaybe-uninitialized in GCC 12 with sanitizers: parse by hand.)
    if (size_t at = r.output.find("status: "); at != std::string::npos) {
      at += 8;
      while (at < r.output.size() && std::isupper(static_cast<unsigned char>(r.output[at]))) {
        r.status.push_back(r.output[at++]);
      }
    }
    if (size_t at = r.output.find("CLIENT-SUBNET: "); at != std::string::npos) {
      const size_t eol = r.output.find('\n', at);
      const std::string ecs = r.output.substr(at, eol - at);  // "CLIENT-SUBNET: a.b.c.d/24/16"
      r.scope = std::atoi(ecs.substr(ecs.rfind('/') + 1).c_str());
    }
    std::istringstream lines(r.output);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.empty() || line[0] == ';') continue;
      std::istringstream fields(line);
      std::string name, ttl, cls, type, data;
      if (fields >> name >> ttl >> cls >> type >> data && cls == "IN" && type == "A") {
        if (r.ttl < 0) r.ttl = std::atoi(ttl.c_str());
        r.addresses.push_back(data);
      }
    }
    std::sort(r.addresses.begin(), r.addresses.end());
    return r;
  }

  // One query over UDP with an ECS option for an IPv4 /24: returns the answer count, or -1 when
  // nothing (or an error) came back within `timeout_ms`. Used to wait for pdns and to time
  // queries without dig's process start-up.
  int UdpQuery(const std::string& subnet24, int timeout_ms, uint16_t id = 0x4d47) {
    in_addr net{};
    if (inet_pton(AF_INET, subnet24.substr(0, subnet24.find('/')).c_str(), &net) != 1) return -1;
    std::vector<uint8_t> q = {static_cast<uint8_t>(id >> 8),
                              static_cast<uint8_t>(id),
                              0x01,
                              0x00,
                              0,
                              1,
                              0,
                              0,
                              0,
                              0,
                              0,
                              1};
    for (const char* label : {"shop", "example", "test"}) {
      q.push_back(static_cast<uint8_t>(std::strlen(label)));
      q.insert(q.end(), label, label + std::strlen(label));
    }
    q.insert(q.end(), {0, 0, 1, 0, 1});  // root, type A, class IN
    const auto* a = reinterpret_cast<const uint8_t*>(&net);
    // OPT: root name, type 41, UDP size 1232, TTL 0, rdata = ECS option (code 8, length 7:
    // family 1, source 24, scope 0, three address bytes).
    q.insert(q.end(),
             {0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11, 0, 8, 0, 7, 0, 1, 24, 0, a[0], a[1], a[2]});
    const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return -1;
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(dns_port_);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int answers = -1;
    if (::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
        static_cast<ssize_t>(q.size())) {
      std::array<uint8_t, 1500> buf{};
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      // Same id, a response, RCODE 0.
      if (n >= 12 && buf[0] == q[0] && buf[1] == q[1] && (buf[2] & 0x80) && (buf[3] & 0x0f) == 0) {
        answers = (buf[6] << 8) | buf[7];
      }
    }
    ::close(fd);
    return answers;
  }

  // Sends `count` lookup requests over one keep-alive connection to meridian-geo and returns the
  // time of each request/response round trip (empty on any error).
  std::vector<double> BackendLookupLatencies(int count) {
    std::vector<double> out;
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(geo_port_);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
      if (fd >= 0) ::close(fd);
      return out;
    }
    const std::string body =
        R"({"method":"lookup","parameters":{"qtype":"ANY","qname":"shop.example.test.",)"
        R"("remote":"127.0.0.1","local":"127.0.0.1","real-remote":"198.18.2.0/24","zone-id":-1}})";
    const std::string request =
        "POST /dns HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        "text/javascript; charset=utf-8\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    std::string in;
    char buf[4096];
    for (int i = 0; i < count; ++i) {
      const auto t0 = Clock::now();
      if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(request.size())) {
        break;
      }
      // Read one response: headers, then Content-Length bytes.
      size_t need = std::string::npos;
      for (;;) {
        const size_t head_end = in.find("\r\n\r\n");
        if (need == std::string::npos && head_end != std::string::npos) {
          const size_t cl = in.find("Content-Length: ");
          if (cl == std::string::npos || cl > head_end) break;
          need = head_end + 4 + std::stoul(in.substr(cl + 16));
        }
        if (need != std::string::npos && in.size() >= need) break;
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        in.append(buf, static_cast<size_t>(n));
      }
      if (need == std::string::npos || in.size() < need || in.compare(0, 12, "HTTP/1.1 200") != 0) {
        break;
      }
      in.erase(0, need);
      out.push_back(Ms(Clock::now() - t0));
    }
    ::close(fd);
    return out;
  }

  testing::Response SetHealth(const std::string& region, const std::string& state,
                              const std::string& token = kToken) {
    return testing::Request(geo_port_, "POST", "/v1/regions/" + region + "/health",
                            json{{"state", state}, {"reason", "geo_test"}}.dump(),
                            {{"Authorization", "Bearer " + token}});
  }

  // Polls dig until the answer for `subnet` is `address`; returns the time it took, or -1.
  // Milliseconds from `since` until a dig answered `address` (-1: not within `timeout_ms`);
  // `dig_ms`: how long that last dig took (a process start and a query: measurement, not the
  // answer's delay, and hundreds of ms on a loaded machine).
  double WaitForAnswer(const std::string& subnet, const std::string& address,
                       Clock::time_point since, double timeout_ms, double* dig_ms) {
    while (Ms(Clock::now() - since) < timeout_ms) {
      const auto started = Clock::now();
      const DigResult r = Dig(subnet);
      *dig_ms = Ms(Clock::now() - started);
      if (r.addresses == std::vector<std::string>{address}) return Ms(Clock::now() - since);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  std::string pdns_bin_, dig_bin_, dir_;
  std::array<std::unique_ptr<Readyz>, 3> readyz_;
  std::unique_ptr<Process> geo_, pdns_;
  uint16_t geo_port_ = 0, dns_port_ = 0;
};

// Probes are slowed down here so they cannot interfere; hooks and the map are what is tested.
constexpr char kSlowProbes[] = "{probe_interval_ms: 5000, probe_timeout_ms: 1000}";

TEST_F(GeoDnsTest, AnswersTheNearestRegionPerSubnetWithEcsScopeAndTtl) {
  ASSERT_NO_FATAL_FAILURE(StartGeo(kSlowProbes));
  ASSERT_NO_FATAL_FAILURE(StartPdns());
  const struct {
    const char* subnet;
    const char* address;
    int scope;
  } cases[] = {
      {kUsEastSubnet, kUsEast, 24},
      {kEuWestSubnet, kEuWest, 24},
      {kApSubnet, kAp, 24},
      // Only the /16 matches, but its /24s above answer otherwise: the scope is the block around
      // the client that holds none of them (198.18.128.0/17), not the /16.
      {"198.18.200.0/24", kAp, 17},
      {"192.0.2.0/24", kEuWest, 24},        // Frankfurt by coordinates: Dublin is nearest
      {"8.8.8.0/24", kUsEast, 24},          // unknown: the default region, the client's own prefix
      {"2001:db8:1200::/56", kUsEast, 56},  // an IPv6 client subnet works the same way
  };
  for (const auto& c : cases) {
    const DigResult r = Dig(c.subnet);
    EXPECT_EQ(r.status, "NOERROR") << r.output;
    EXPECT_EQ(r.addresses, std::vector<std::string>{c.address}) << c.subnet << "\n" << r.output;
    EXPECT_EQ(r.ttl, 5) << r.output;
    EXPECT_EQ(r.scope, c.scope) << c.subnet << "\n" << r.output;
  }
  // Without ECS the resolver's address (127.0.0.1, unmapped) decides: the default region.
  DigResult plain = Dig("");
  EXPECT_EQ(plain.addresses, std::vector<std::string>{kUsEast}) << plain.output;
  EXPECT_EQ(plain.scope, -1);

  const DigResult soa = Dig("", "SOA");
  EXPECT_NE(soa.output.find("ns1.shop.example.test. hostmaster.shop.example.test. 7 3600"),
            std::string::npos)
      << soa.output;
  const DigResult ns = Dig("", "NS");
  EXPECT_NE(ns.output.find("IN\tNS\tns1.shop.example.test."), std::string::npos) << ns.output;
  EXPECT_EQ(Dig(kEuWestSubnet, "A", "www.shop.example.test").status, "NXDOMAIN");
  EXPECT_EQ(Dig("", "A", "other.test").status, "REFUSED");  // not our zone
}

TEST_F(GeoDnsTest, HealthHookMovesTheAnswerAndBack) {
  ASSERT_NO_FATAL_FAILURE(StartGeo(kSlowProbes));
  ASSERT_NO_FATAL_FAILURE(StartPdns());
  ASSERT_EQ(Dig(kEuWestSubnet).addresses, std::vector<std::string>{kEuWest});

  EXPECT_EQ(SetHealth("eu-west", "down", "not-the-operator-token").status, 403);
  EXPECT_EQ(testing::Request(geo_port_, "POST", "/v1/regions/eu-west/health", R"({"state":"down"})")
                .status,
            401);
  EXPECT_EQ(Dig(kEuWestSubnet).addresses, std::vector<std::string>{kEuWest});

  const auto marked = Clock::now();
  ASSERT_EQ(SetHealth("eu-west", "down").status, 200);
  const DigResult moved = Dig(kEuWestSubnet);
  std::printf("[geo] hook down -> first dig answer after %.1f ms\n", Ms(Clock::now() - marked));
  // Dublin's next nearest healthy region is us-east (5400 km), not ap-southeast (11000 km).
  EXPECT_EQ(moved.addresses, std::vector<std::string>{kUsEast}) << moved.output;
  EXPECT_EQ(moved.ttl, 5);
  EXPECT_EQ(Dig(kApSubnet).addresses, std::vector<std::string>{kAp});  // others unaffected

  const testing::Response regions = testing::Request(geo_port_, "GET", "/v1/regions");
  ASSERT_EQ(regions.status, 200);
  const json eu = json::parse(regions.body)["regions"][1];
  EXPECT_EQ(eu["override"]["state"], "down");
  EXPECT_EQ(eu["probe"]["state"], "up");
  EXPECT_EQ(eu["effective"], "down");

  ASSERT_EQ(SetHealth("eu-west", "auto").status, 200);
  EXPECT_EQ(Dig(kEuWestSubnet).addresses, std::vector<std::string>{kEuWest});
  EXPECT_NE(ReadFile(geo_->log_path())
                .find("event=geo_region_health region=eu-west state=down source=override"),
            std::string::npos);

  // SIGTERM stops it cleanly (exit 0; under ASan this includes the leak check at exit).
  absl::StatusOr<int> status = geo_->Terminate(SIGTERM, absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0)
      << test_support::DescribeWaitStatus(*status) << "\n"
      << test_support::FileTail(geo_->log_path());
}

// The default health settings (probe every 500 ms, timeout 400 ms, fall 3, rise 5): a region whose
// readyz fails is out of the answers within fall x interval (+ one timeout), not after one
// failure, and back only after rise good probes.
TEST_F(GeoDnsTest, FailingReadyzMovesTheAnswerWithinTheThresholds) {
  ASSERT_NO_FATAL_FAILURE(
      StartGeo("{probe_interval_ms: 500, probe_timeout_ms: 400, fall: 3, rise: 5}"));
  ASSERT_NO_FATAL_FAILURE(StartPdns());
  ASSERT_EQ(Dig(kEuWestSubnet).addresses, std::vector<std::string>{kEuWest});

  const auto failed_at = Clock::now();
  readyz_[1]->status = 503;
  double dig_ms = 0;
  const double down_ms = WaitForAnswer(kEuWestSubnet, kUsEast, failed_at, 5000, &dig_ms);
  std::printf(
      "[geo] readyz 503 -> answer moved after %.0f ms (bounds: > %d, <= %d + dig %.0f ms)\n",
      down_ms, 2 * 500, 3 * 500 + 400, dig_ms);
  ASSERT_GT(down_ms, 0) << "the answer never moved";
  EXPECT_GT(down_ms, 2 * 500 - 100) << "down before `fall` failures: no hysteresis";
  EXPECT_LE(down_ms, 3 * 500 + 400 + 300 + dig_ms);

  const auto healed_at = Clock::now();
  readyz_[1]->status = 200;
  const double up_ms = WaitForAnswer(kEuWestSubnet, kEuWest, healed_at, 6000, &dig_ms);
  std::printf("[geo] readyz 200 -> answer back after %.0f ms (bounds: > %d, <= %d + dig %.0f ms)\n",
              up_ms, 4 * 500, 5 * 500, dig_ms);
  ASSERT_GT(up_ms, 0) << "the answer never came back";
  EXPECT_GT(up_ms, 4 * 500 - 100) << "up before `rise` good probes: no hysteresis";
  // The 5th good probe lands up to one interval after the heal, plus the probe thread's and the
  // previous dig's lateness on a loaded machine (other clusters run beside this test).
  EXPECT_LE(up_ms, 5 * 500 + 800 + dig_ms);

  // A region that stops answering at all (connection refused) goes down the same way.
  const auto stopped_at = Clock::now();
  readyz_[2]->server->Stop();
  // Singapore's next nearest is eu-west (Dublin, 11300 km), not us-east (15500 km).
  const double refused_ms = WaitForAnswer(kApSubnet, kEuWest, stopped_at, 5000, &dig_ms);
  std::printf("[geo] readyz refused -> answer moved after %.0f ms (dig %.0f ms)\n", refused_ms,
              dig_ms);
  ASSERT_GT(refused_ms, 0);
  EXPECT_LE(refused_ms, 3 * 500 + 400 + 300 + dig_ms);

  const std::string log = ReadFile(geo_->log_path());
  EXPECT_NE(log.find("event=geo_region_health region=eu-west state=down source=probe "
                     "reason=\"3 consecutive probe failures: HTTP 503\""),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("event=geo_region_health region=eu-west state=up source=probe"),
            std::string::npos);
  const std::string metrics = testing::Request(geo_port_, "GET", "/metrics").body;
  EXPECT_NE(metrics.find("meridian_geo_region_healthy{region=\"ap-southeast\"} 0"),
            std::string::npos)
      << metrics;
}

TEST_F(GeoDnsTest, EveryRegionDownAnswersTheLastResort) {
  ASSERT_NO_FATAL_FAILURE(StartGeo(kSlowProbes));
  ASSERT_NO_FATAL_FAILURE(StartPdns());
  for (const char* region : {"us-east", "eu-west", "ap-southeast"}) {
    ASSERT_EQ(SetHealth(region, "down").status, 200);
  }
  const DigResult r = Dig(kEuWestSubnet);
  EXPECT_EQ(r.status, "NOERROR") << r.output;
  EXPECT_EQ(r.addresses, (std::vector<std::string>{kUsEast, kEuWest, kAp})) << r.output;
  EXPECT_EQ(r.ttl, 1) << r.output;
  EXPECT_EQ(r.scope, 0) << r.output;  // the same answer for every client
  const json regions = json::parse(testing::Request(geo_port_, "GET", "/v1/regions").body);
  EXPECT_EQ(regions["last_resort_active"], true);

  ASSERT_EQ(SetHealth("ap-southeast", "auto").status, 200);
  const DigResult one = Dig(kEuWestSubnet);
  EXPECT_EQ(one.addresses, std::vector<std::string>{kAp});
  EXPECT_EQ(one.ttl, 5);
  EXPECT_NE(ReadFile(geo_->log_path()).find("event=geo_last_resort_active mode=all ttl_s=1"),
            std::string::npos);
}

// Latency of a DNS query through pdns and the remote backend: raw UDP queries (no process start
// per query) and, for scale, whole dig invocations. A backend that left Nagle on would show
// ~40-130 ms per query here.
TEST_F(GeoDnsTest, QueryLatency) {
  ASSERT_NO_FATAL_FAILURE(StartGeo(kSlowProbes));
  ASSERT_NO_FATAL_FAILURE(StartPdns());
  constexpr int kQueries = 1000;
  std::vector<double> ms;
  ms.reserve(kQueries);
  const char* subnets[] = {kUsEastSubnet, kEuWestSubnet, kApSubnet, "198.18.9.0/24"};
  const auto start = Clock::now();
  for (int i = 0; i < kQueries; ++i) {
    const auto t0 = Clock::now();
    const int answers = UdpQuery(subnets[i % 4], 2000, static_cast<uint16_t>(i));
    ms.push_back(Ms(Clock::now() - t0));
    ASSERT_EQ(answers, 1) << "query " << i;
  }
  const double total_ms = Ms(Clock::now() - start);
  std::sort(ms.begin(), ms.end());
  const auto pct = [&](double p) { return ms[static_cast<size_t>(p * (ms.size() - 1))]; };
  std::printf(
      "[geo] %d UDP queries with ECS through pdns_server + meridian-geo, sequential: p50 %.3f ms, "
      "p90 %.3f ms, p99 %.3f ms, max %.3f ms, %.0f queries/s\n",
      kQueries, pct(0.5), pct(0.9), pct(0.99), ms.back(), kQueries * 1000.0 / total_ms);

  // The backend alone, over one kept-alive connection as pdns uses it: what meridian-geo adds.
  std::vector<double> backend_ms = BackendLookupLatencies(1000);
  ASSERT_EQ(backend_ms.size(), 1000u);
  std::sort(backend_ms.begin(), backend_ms.end());
  std::printf(
      "[geo] 1000 lookups POSTed to meridian-geo over one keep-alive connection: p50 %.3f ms, "
      "p99 %.3f ms, max %.3f ms\n",
      backend_ms[499], backend_ms[989], backend_ms.back());

  constexpr int kDigs = 50;
  const auto dig_start = Clock::now();
  for (int i = 0; i < kDigs; ++i) ASSERT_EQ(Dig(subnets[i % 4]).addresses.size(), 1u);
  std::printf("[geo] %d dig runs: %.1f ms each on average (process start included)\n", kDigs,
              Ms(Clock::now() - dig_start) / kDigs);
  EXPECT_LT(pct(0.5), 20.0) << "median query over 20 ms: is Nagle back on the backend socket?";
}

}  // namespace
}  // namespace meridian
