// The DNS client's wire format (queries with an EDNS Client Subnet, replies parsed by c-ares) and
// the router's TTL-driven re-asking against a small UDP responder in the test. The real
// pdns_server + meridian-geo path is exercised end to end by tests/e2e/drill_test.sh.
#include "tests/load/dns_client.h"

#include <gtest/gtest.h>

#include <asio/io_context.hpp>
#include <atomic>
#include <mutex>
#include <random>
#include <thread>

namespace meridian::load {
namespace {

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s.push_back(static_cast<char>(v));
  return s;
}

TEST(ParseIpv4SubnetTest, Cases) {
  auto s = ParseIpv4Subnet("198.18.1.0/24");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->address, 0xC6120100u);
  EXPECT_EQ(s->prefix, 24);
  EXPECT_TRUE(ParseIpv4Subnet("0.0.0.0/0").ok());
  EXPECT_TRUE(ParseIpv4Subnet("10.1.2.3/32").ok());
  for (const char* bad : {"198.18.1.1/24", "198.18.1.0", "198.18.1.0/33", "198.18.1.0/-1", "x/24",
                          "::1/128", "198.18.1.0/24x", "198.18.1.0/"}) {
    EXPECT_FALSE(ParseIpv4Subnet(bad).ok()) << bad;
  }
}

TEST(EncodeAQueryTest, QuestionAndEcsOption) {
  auto subnet = ParseIpv4Subnet("198.18.1.0/24");
  auto q = EncodeAQuery(0x1234, "shop.example.test.", &*subnet);
  ASSERT_TRUE(q.ok()) << q.status();
  std::string want = Bytes({0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1});
  want += Bytes({4}) + "shop" + Bytes({7}) + "example" + Bytes({4}) + "test" + Bytes({0});
  want += Bytes({0, 1, 0, 1});                               // A, IN
  want += Bytes({0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 11});  // OPT, 1232, RDLENGTH 11
  want += Bytes({0, 8, 0, 7, 0, 1, 24, 0, 198, 18, 1});      // ECS 198.18.1.0/24
  EXPECT_EQ(*q, want);
  // Without a subnet: an empty OPT.
  q = EncodeAQuery(1, "shop.example.test", nullptr);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->substr(q->size() - 2), Bytes({0, 0}));
  // A /12 sends two address bytes.
  subnet = ParseIpv4Subnet("10.16.0.0/12");
  q = EncodeAQuery(1, "a.b", &*subnet);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->substr(q->size() - 8), Bytes({0, 6, 0, 1, 12, 0, 10, 16}));
}

TEST(EncodeAQueryTest, RefusesBadNames) {
  for (const std::string& bad :
       {std::string(), std::string("."), std::string("a..b"), std::string(64, 'x') + ".test"}) {
    EXPECT_FALSE(EncodeAQuery(1, bad, nullptr).ok()) << bad;
  }
  EXPECT_FALSE(EncodeAQuery(1, std::string(254, 'a'), nullptr).ok());
}

// A reply to "shop.example.test A": two A records (TTL 5 and 3) named by compression pointers
// to the question, and an OPT record in the additional section.
std::string Reply(uint16_t id, int rcode, std::vector<std::array<int, 4>> addrs,
                  std::vector<int> ttls) {
  std::string r =
      Bytes({id >> 8, id & 0xff, 0x84, rcode, 0, 1, 0, static_cast<int>(addrs.size()), 0, 0, 0, 1});
  r += Bytes({4}) + "shop" + Bytes({7}) + "example" + Bytes({4}) + "test" + Bytes({0, 0, 1, 0, 1});
  for (size_t i = 0; i < addrs.size(); ++i) {
    r += Bytes({0xc0, 12, 0, 1, 0, 1, 0, 0, 0, ttls[i], 0, 4});
    for (int b : addrs[i]) r.push_back(static_cast<char>(b));
  }
  r += Bytes({0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0});
  return r;
}

TEST(DecodeAAnswerTest, AddressesAndSmallestTtl) {
  auto a = DecodeAAnswer(Reply(7, 0, {{10, 77, 0, 2}, {10, 77, 0, 3}}, {5, 3}));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->id, 7);
  EXPECT_EQ(a->rcode, 0);
  EXPECT_EQ(a->addresses, (std::vector<std::string>{"10.77.0.2", "10.77.0.3"}));
  EXPECT_EQ(a->ttl_s, 3);
}

TEST(DecodeAAnswerTest, ErrorsAndEmptyAnswers) {
  auto a = DecodeAAnswer(Reply(9, 3, {}, {}));  // NXDOMAIN
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->rcode, 3);
  EXPECT_TRUE(a->addresses.empty());
  std::string query = *EncodeAQuery(1, "a.b", nullptr);
  EXPECT_FALSE(DecodeAAnswer(query).ok());  // QR bit clear: not a reply
  EXPECT_FALSE(DecodeAAnswer("abc").ok());
}

TEST(DecodeAAnswerTest, NeverCrashesOnGarbageOrTruncation) {
  std::string good = Reply(7, 0, {{10, 77, 0, 2}}, {5});
  for (size_t n = 0; n < good.size(); ++n) (void)DecodeAAnswer(good.substr(0, n));
  std::mt19937 rng(42);
  for (int i = 0; i < 20000; ++i) {
    std::string p = good;
    int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) p[rng() % p.size()] = static_cast<char>(rng());
    if (rng() % 4 == 0) p.resize(rng() % p.size());
    (void)DecodeAAnswer(p);
  }
}

// A UDP responder that answers each query with the address currently set for its ECS subnet's
// third byte (198.18.X.0/24), with TTL `ttl`; counts the queries.
class Responder {
 public:
  explicit Responder(int ttl)
      : socket_(io_, asio::ip::udp::endpoint(asio::ip::make_address("127.0.0.1"), 0)), ttl_(ttl) {
    Receive();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Responder() {
    io_.stop();
    thread_.join();
  }
  asio::ip::udp::endpoint endpoint() const { return socket_.local_endpoint(); }
  void Set(int subnet_byte, std::array<int, 4> addr) {
    std::lock_guard<std::mutex> lock(mu_);
    answers_[subnet_byte] = addr;
  }
  void set_silent(bool s) { silent_ = s; }
  int queries() const { return queries_; }

 private:
  void Receive() {
    socket_.async_receive_from(asio::buffer(buf_), from_, [this](std::error_code ec, size_t n) {
      if (ec) return;
      ++queries_;
      std::string q(buf_.data(), n);
      if (!silent_ && n >= 12) {
        uint16_t id =
            static_cast<uint16_t>(static_cast<uint8_t>(q[0]) << 8 | static_cast<uint8_t>(q[1]));
        int subnet_byte = static_cast<uint8_t>(q[n - 1]);  // ECS address: 198, 18, X
        std::array<int, 4> addr;
        {
          std::lock_guard<std::mutex> lock(mu_);
          addr = answers_[subnet_byte];
        }
        auto reply = std::make_shared<std::string>(Reply(id, 0, {addr}, {ttl_}));
        socket_.async_send_to(asio::buffer(*reply), from_, [reply](std::error_code, size_t) {});
      }
      Receive();
    });
  }
  asio::io_context io_;
  asio::ip::udp::socket socket_;
  int ttl_;
  std::array<char, 1500> buf_{};
  asio::ip::udp::endpoint from_;
  std::mutex mu_;
  std::map<int, std::array<int, 4>> answers_;
  std::atomic<bool> silent_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

TEST(ResolveOnceTest, AsksWithTheSubnetAndTimesOut) {
  Responder dns(5);
  dns.Set(1, {10, 77, 0, 1});
  dns.Set(2, {10, 77, 0, 2});
  auto a = ResolveOnce(dns.endpoint(), "shop.example.test", *ParseIpv4Subnet("198.18.2.0/24"),
                       std::chrono::milliseconds(1000));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->addresses, std::vector<std::string>{"10.77.0.2"});
  EXPECT_EQ(a->ttl_s, 5);
  dns.set_silent(true);
  auto start = std::chrono::steady_clock::now();
  a = ResolveOnce(dns.endpoint(), "shop.example.test", *ParseIpv4Subnet("198.18.2.0/24"),
                  std::chrono::milliseconds(200));
  EXPECT_TRUE(absl::IsDeadlineExceeded(a.status())) << a.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1000));
}

TEST(DnsRouterTest, FollowsAnswersWhenTheirTtlRunsOut) {
  Responder dns(1);  // TTL 1 s
  dns.Set(1, {10, 77, 0, 1});
  dns.Set(2, {10, 77, 0, 2});
  asio::io_context io;
  DnsRouter::Options o;
  o.server = dns.endpoint();
  o.name = "shop.example.test";
  o.subnets = {*ParseIpv4Subnet("198.18.1.0/24"), *ParseIpv4Subnet("198.18.2.0/24")};
  o.region_of_address = {{"10.77.0.1", 0}, {"10.77.0.2", 1}};
  o.timeout = std::chrono::milliseconds(300);
  o.retry = std::chrono::milliseconds(100);
  DnsRouter router(io, o, {0, 1}, {0, 0});
  router.Start();
  asio::steady_timer step(io);
  // After 0.5 s: unchanged. Then subnet 1's answer moves to region 1; within one TTL (1 s) plus
  // a query the router follows; an address of no region counts as a failure and keeps the
  // region.
  step.expires_after(std::chrono::milliseconds(500));
  step.wait();
  io.run_for(std::chrono::milliseconds(100));
  EXPECT_EQ(router.region(0), 0);
  EXPECT_EQ(router.region(1), 1);
  dns.Set(1, {10, 77, 0, 2});
  auto moved = std::chrono::steady_clock::now();
  while (router.region(0) != 1 &&
         std::chrono::steady_clock::now() - moved < std::chrono::seconds(3)) {
    io.run_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(router.region(0), 1);
  EXPECT_LE(std::chrono::steady_clock::now() - moved, std::chrono::milliseconds(1500));
  ASSERT_EQ(router.switches().size(), 1u);
  EXPECT_EQ(router.switches()[0].subnet, 0u);
  EXPECT_EQ(router.switches()[0].from, 0);
  EXPECT_EQ(router.switches()[0].to, 1);
  dns.Set(2, {192, 0, 2, 9});
  io.run_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(router.region(1), 1);
  EXPECT_GE(router.stats().unknown_addresses.count("192.0.2.9"), 1u);
  // A silent server: timeouts, the last answer kept.
  dns.set_silent(true);
  int64_t timeouts = router.stats().timeouts;
  io.run_for(std::chrono::milliseconds(1500));
  EXPECT_GT(router.stats().timeouts, timeouts);
  EXPECT_EQ(router.region(0), 1);
  router.Stop();
  io.run_for(std::chrono::milliseconds(50));
}

}  // namespace
}  // namespace meridian::load
