#include "geo/remote_backend.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

namespace meridian::geo {
namespace {

using nlohmann::json;

constexpr char kConfig[] = R"(
zone:
  name: shop.example.test.
  soa: {serial: 42, minimum_s: 30}
  nameservers:
    - name: ns1.shop.example.test.
      addresses: [127.0.0.1, "::1"]
    - name: ns.elsewhere.test.
regions:
  - name: us-east
    addresses: [10.1.0.1, "2001:db8:1::1"]
    lat: 38.9
    lon: -77.0
  - name: eu-west
    addresses: [10.2.0.1, 10.2.0.2]
    lat: 53.3
    lon: -6.3
  - name: ap-southeast
    addresses: [10.3.0.1]
    lat: 1.35
    lon: 103.8
locations:
  - cidr: 198.18.1.0/24
    region: us-east
  - cidr: 198.18.2.0/24
    region: eu-west
  - cidr: 198.18.0.0/16
    region: ap-southeast
default_location: {region: us-east}
operator_token: operator-token-0123456789
)";

class Recorder : public BackendObserver {
 public:
  void OnRequest(std::string_view method) override { methods.emplace_back(method); }
  void OnAnswer(const Decision& d, const ClientLocation&) override { answers.push_back(d); }
  void OnBadRequest(std::string_view why) override { bad.emplace_back(why); }
  void OnGeoIpError(std::string_view) override {}
  std::vector<std::string> methods, bad;
  std::vector<Decision> answers;
};

class RemoteBackendTest : public ::testing::Test {
 protected:
  RemoteBackendTest()
      : config_(*ParseConfig(kConfig)),
        locator_(config_, nullptr),
        backend_(
            config_, locator_, [this] { return healthy_; }, &recorder_) {}

  json Call(const json& request, int expect_status = 200) {
    BackendReply reply = backend_.Handle(request.dump());
    EXPECT_EQ(reply.http_status, expect_status) << request.dump() << " -> " << reply.body;
    return json::parse(reply.body);
  }

  json Lookup(const std::string& qname, const std::string& qtype, const std::string& real_remote,
              const std::string& remote = "127.0.0.1") {
    return Call({{"method", "lookup"},
                 {"parameters",
                  {{"qname", qname},
                   {"qtype", qtype},
                   {"real-remote", real_remote},
                   {"remote", remote},
                   {"local", "127.0.0.1"},
                   {"zone-id", -1}}}});
  }

  // The A/AAAA contents of a lookup result.
  static std::vector<std::string> Contents(const json& reply, const std::string& type) {
    std::vector<std::string> out;
    if (!reply["result"].is_array()) return out;
    for (const json& r : reply["result"]) {
      if (r["qtype"] == type) out.push_back(r["content"]);
    }
    return out;
  }

  GeoConfig config_;
  ClientLocator locator_;
  std::vector<bool> healthy_ = {true, true, true};
  Recorder recorder_;
  RemoteBackend backend_;
};

TEST_F(RemoteBackendTest, InitializeAndMethodsAreCaseInsensitive) {
  EXPECT_EQ(Call({{"method", "initialize"}, {"parameters", json::object()}}),
            json({{"result", true}}));
  EXPECT_EQ(Call({{"method", "INITIALIZE"}}), json({{"result", true}}));
  json r = Call(
      {{"method", "LookUp"}, {"parameters", {{"qname", "shop.example.test."}, {"qtype", "soa"}}}});
  ASSERT_TRUE(r["result"].is_array());
  EXPECT_EQ(r["result"][0]["qtype"], "SOA");
  EXPECT_EQ(recorder_.methods, (std::vector<std::string>{"initialize", "initialize", "lookup"}));
}

TEST_F(RemoteBackendTest, SoaAndNsAtTheApex) {
  json r = Lookup("shop.example.test.", "ANY", "0.0.0.0/0");
  ASSERT_TRUE(r["result"].is_array()) << r;
  EXPECT_EQ(r["result"][0],
            json({{"qtype", "SOA"},
                  {"qname", "shop.example.test."},
                  {"content",
                   "ns1.shop.example.test. hostmaster.shop.example.test. 42 3600 600 604800 30"},
                  {"ttl", 300},
                  {"auth", 1}}));
  const json ns = Lookup("SHOP.example.test.", "NS", "0.0.0.0/0");
  ASSERT_EQ(ns["result"].size(), 2u);
  EXPECT_EQ(ns["result"][0]["content"], "ns1.shop.example.test.");
  EXPECT_EQ(ns["result"][1]["content"], "ns.elsewhere.test.");
  EXPECT_EQ(ns["result"][0]["qname"], "SHOP.example.test.");  // as asked

  // Glue for the in-zone name server.
  const json glue = Lookup("ns1.shop.example.test.", "ANY", "0.0.0.0/0");
  EXPECT_EQ(Contents(glue, "A"), std::vector<std::string>{"127.0.0.1"});
  EXPECT_EQ(Contents(glue, "AAAA"), std::vector<std::string>{"::1"});
}

TEST_F(RemoteBackendTest, ServiceNameAnswersTheNearestRegionWithScopeAndTtl) {
  json r = Lookup("shop.example.test.", "A", "198.18.2.0/24");
  ASSERT_TRUE(r["result"].is_array()) << r;
  EXPECT_EQ(Contents(r, "A"), (std::vector<std::string>{"10.2.0.1", "10.2.0.2"}));
  EXPECT_EQ(r["result"][0]["ttl"], 5);
  EXPECT_EQ(r["result"][0]["scopeMask"], 24);

  // The /16 catches the rest of 198.18/16, but its /24s answer otherwise: the scope is the
  // block around the client that holds none of them (198.18.64.0/18), not the /16, or a
  // resolver would give this answer to 198.18.1.x clients too.
  r = Lookup("shop.example.test.", "A", "198.18.77.0/24");
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.3.0.1"});
  EXPECT_EQ(r["result"][0]["scopeMask"], 18);
  r = Lookup("shop.example.test.", "A", "198.18.200.0/24");
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.3.0.1"});
  EXPECT_EQ(r["result"][0]["scopeMask"], 17);  // 198.18.128.0/17 holds no /24 of the table

  // The same clients as IPv4-mapped IPv6 subnets: located as IPv4, the same regions, but the
  // scope counts IPv6 bits (a 24 there would cover all of ::/24, every mapped client).
  r = Lookup("shop.example.test.", "A", "::ffff:198.18.2.0/120");
  EXPECT_EQ(Contents(r, "A"), (std::vector<std::string>{"10.2.0.1", "10.2.0.2"}));
  EXPECT_EQ(r["result"][0]["scopeMask"], 120);
  r = Lookup("shop.example.test.", "A", "::ffff:198.18.77.0/120");
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.3.0.1"});
  EXPECT_EQ(r["result"][0]["scopeMask"], 114);

  // ANY brings SOA, NS and the region's A and AAAA.
  r = Lookup("shop.example.test.", "ANY", "198.18.1.0/24");
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.1.0.1"});
  EXPECT_EQ(Contents(r, "AAAA"), std::vector<std::string>{"2001:db8:1::1"});
  EXPECT_EQ(Contents(r, "SOA").size(), 1u);

  // AAAA only: eu-west has no IPv6 address, so nothing of that type -> false.
  EXPECT_EQ(Lookup("shop.example.test.", "AAAA", "198.18.2.0/24"), json({{"result", false}}));
}

TEST_F(RemoteBackendTest, WithoutEcsTheResolverAddressDecides) {
  // pdns without ECS: real-remote is the resolver's address as a /32.
  json r = Lookup("shop.example.test.", "A", "198.18.2.53/32", "198.18.2.53");
  EXPECT_EQ(Contents(r, "A"), (std::vector<std::string>{"10.2.0.1", "10.2.0.2"}));
  EXPECT_EQ(r["result"][0]["scopeMask"], 24);
  // An unparseable or empty real-remote: fall back to remote.
  r = Lookup("shop.example.test.", "A", "garbage", "198.18.2.53");
  EXPECT_EQ(Contents(r, "A").front(), "10.2.0.1");
  EXPECT_EQ(r["result"][0]["scopeMask"], 24);
  // An ECS query with the empty subnet (/0) asks that no client subnet be used: placed by the
  // resolver, answered with scope 0 (RFC 7871; it got the resolver's /24 before).
  r = Lookup("shop.example.test.", "A", "0.0.0.0/0", "198.18.2.53");
  EXPECT_EQ(Contents(r, "A").front(), "10.2.0.1");
  EXPECT_FALSE(r["result"][0].contains("scopeMask")) << r.dump();
  // Unknown clients get the default location (us-east) with their own prefix as scope.
  r = Lookup("shop.example.test.", "A", "8.8.8.0/24");
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.1.0.1"});
  EXPECT_EQ(r["result"][0]["scopeMask"], 24);
}

TEST_F(RemoteBackendTest, UnhealthyRegionsAreSkippedAndAllDownIsTheLastResort) {
  healthy_ = {true, false, true};
  json r = Lookup("shop.example.test.", "A", "198.18.2.0/24");
  // eu-west down: its clients (Dublin) go to us-east (5400 km), not ap-southeast (11000 km).
  EXPECT_EQ(Contents(r, "A"), std::vector<std::string>{"10.1.0.1"});

  healthy_ = {false, false, false};
  r = Lookup("shop.example.test.", "A", "198.18.2.0/24");
  EXPECT_EQ(Contents(r, "A"),
            (std::vector<std::string>{"10.1.0.1", "10.2.0.1", "10.2.0.2", "10.3.0.1"}));
  for (const json& rec : r["result"]) {
    EXPECT_EQ(rec["ttl"], 1);
    EXPECT_FALSE(rec.contains("scopeMask"));  // the same answer for everyone
  }
  ASSERT_FALSE(recorder_.answers.empty());
  EXPECT_TRUE(recorder_.answers.back().last_resort);
}

TEST_F(RemoteBackendTest, NamesOutsideTheZoneOrWithoutRecordsAreFalse) {
  EXPECT_EQ(Lookup("example.test.", "SOA", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup("test.", "SOA", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup("evilshop.example.test.", "ANY", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup("www.shop.example.test.", "ANY", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup("shop.example.test.", "MX", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup("shop\\032x.example.test.", "ANY", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_EQ(Lookup(std::string(2000, 'a'), "ANY", "0.0.0.0/0"), json({{"result", false}}));
  EXPECT_TRUE(recorder_.answers.empty());  // no region decision was needed for any of these
}

TEST_F(RemoteBackendTest, DomainInfoForTheZoneCache) {
  json all = Call({{"method", "getAllDomains"}, {"parameters", {{"include_disabled", false}}}});
  ASSERT_EQ(all["result"].size(), 1u);
  EXPECT_EQ(all["result"][0]["zone"], "shop.example.test.");
  EXPECT_EQ(all["result"][0]["serial"], 42);
  EXPECT_EQ(Call({{"method", "getDomainInfo"},
                  {"parameters", {{"name", "shop.example.test."}}}})["result"]["kind"],
            "native");
  EXPECT_EQ(Call({{"method", "getDomainInfo"}, {"parameters", {{"name", "other.test."}}}}),
            json({{"result", false}}));
}

TEST_F(RemoteBackendTest, UnknownMethodsAndMetadataAreFalse) {
  for (const char* m : {"getAllDomainMetadata", "getDomainMetadata", "getDomainKeys", "list",
                        "startTransaction", "frobnicate", ""}) {
    EXPECT_EQ(Call({{"method", m}, {"parameters", {{"name", "shop.example.test."}}}}),
              json({{"result", false}}))
        << m;
  }
  EXPECT_EQ(recorder_.methods.back(), "other");
}

TEST_F(RemoteBackendTest, MalformedBodiesGet400AndFalseNeverACrash) {
  const std::string cases[] = {
      "",
      "{",
      "null",
      "[]",
      "\"lookup\"",
      "{\"method\": 7}",
      "{\"parameters\": {}}",
      "{\"method\": \"lookup\"}",
      "{\"method\": \"lookup\", \"parameters\": []}",
      "{\"method\": \"lookup\", \"parameters\": {\"qname\": 1, \"qtype\": \"A\"}}",
      "{\"method\": \"lookup\", \"parameters\": {\"qname\": \"shop.example.test.\"}}",
      "{\"method\": \"lookup\", \"parameters\": {\"qname\": \"a\", \"qtype\": null}}",
      std::string("{\"method\": \"look\0up\"}", 21),
      "{\"method\": \"lookup\xff\"}",  // invalid UTF-8
      std::string(60000, '[') + std::string(60000, ']'),
      std::string(70 * 1024, ' '),  // over the body limit
      // After a NUL byte, and a repeated key: taken before (the probe of 2026-12-04).
      std::string("{\"method\": \"initialize\"}\0garbage", 32),
      "{\"method\": \"lookup\", \"method\": \"initialize\"}",
  };
  for (const std::string& body : cases) {
    BackendReply reply = backend_.Handle(body);
    EXPECT_EQ(reply.http_status, 400) << body.substr(0, 80);
    const json parsed = json::parse(reply.body, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << reply.body;
    EXPECT_EQ(parsed["result"], false);
    EXPECT_TRUE(parsed["log"].is_array());
  }
  EXPECT_EQ(recorder_.bad.size(), std::size(cases));
}

// Whatever the bytes, the reply is valid JSON with a result, and the status is 200 or 400.
RC_GTEST_PROP(RemoteBackendFuzz, AnyBytesGiveAValidJsonReply, ()) {
  const GeoConfig config = *ParseConfig(kConfig);
  const ClientLocator locator(config, nullptr);
  const RemoteBackend backend(
      config, locator,
      [] {
        return std::vector<bool>{true, false};
      },
      nullptr);
  // Half the time mutate a valid request, so the parser gets past the first byte.
  std::string body;
  if (*rc::gen::arbitrary<bool>()) {
    body = *rc::gen::arbitrary<std::string>();
  } else {
    body = R"({"method":"lookup","parameters":{"qname":"shop.example.test.","qtype":"ANY",)"
           R"("real-remote":"198.18.1.0/24","remote":"127.0.0.1"}})";
    const int edits = *rc::gen::inRange(1, 6);
    for (int i = 0; i < edits && !body.empty(); ++i) {
      const size_t at = *rc::gen::inRange<size_t>(0, body.size());
      switch (*rc::gen::inRange(0, 3)) {
        case 0:
          body.erase(at, 1);
          break;
        case 1:
          body.insert(at, 1, *rc::gen::arbitrary<char>());
          break;
        default:
          body[at] = *rc::gen::arbitrary<char>();
      }
    }
  }
  const BackendReply reply = backend.Handle(body);
  RC_ASSERT(reply.http_status == 200 || reply.http_status == 400);
  const json parsed = json::parse(reply.body, nullptr, false);
  RC_ASSERT(!parsed.is_discarded());
  RC_ASSERT(parsed.contains("result"));
}

// Structurally valid lookups with random field values and types never break the handler, and a
// service-name answer only ever names healthy regions while any is healthy.
RC_GTEST_PROP(RemoteBackendFuzz, RandomLookupsOnlyAnswerHealthyRegions, ()) {
  const GeoConfig config = *ParseConfig(kConfig);
  const ClientLocator locator(config, nullptr);
  std::vector<bool> healthy = *rc::gen::container<std::vector<bool>>(3, rc::gen::arbitrary<bool>());
  const RemoteBackend backend(
      config, locator, [&] { return healthy; }, nullptr);
  const auto value = rc::gen::oneOf(
      rc::gen::map(rc::gen::arbitrary<std::string>(), [](std::string s) { return json(s); }),
      rc::gen::map(rc::gen::element<std::string>("198.18.1.0/24", "198.18.2.7/32", "8.8.8.0/24",
                                                 "2001:db8::/56", "0.0.0.0/0", "1.2.3.4/99"),
                   [](std::string s) { return json(s); }),
      rc::gen::map(rc::gen::arbitrary<int>(), [](int i) { return json(i); }),
      rc::gen::just(json(nullptr)), rc::gen::just(json::array()));
  const json params = {{"qname", *rc::gen::element<json>("shop.example.test.", "SHOP.EXAMPLE.TEST",
                                                         "ns1.shop.example.test.", 7)},
                       {"qtype", *rc::gen::element<json>("ANY", "A", "AAAA", "SOA", "ns", 1)},
                       {"real-remote", *value},
                       {"remote", *value}};
  // Random strings may be invalid UTF-8; pdns would never send those, so replace them here.
  const BackendReply reply = backend.Handle(json{{"method", "lookup"}, {"parameters", params}}.dump(
      -1, ' ', false, json::error_handler_t::replace));
  const json parsed = json::parse(reply.body, nullptr, false);
  RC_ASSERT(!parsed.is_discarded());
  const bool any_healthy = healthy[0] || healthy[1] || healthy[2];
  if (!any_healthy || !parsed["result"].is_array()) return;
  for (const json& rec : parsed["result"]) {
    if (rec["qtype"] != "A" && rec["qtype"] != "AAAA") continue;
    if (rec["qname"] != "shop.example.test." && rec["qname"] != "SHOP.EXAMPLE.TEST") continue;
    const std::string content = rec["content"];
    size_t region = 0;
    if (content.rfind("10.2.", 0) == 0) region = 1;
    if (content.rfind("10.3.", 0) == 0) region = 2;
    RC_ASSERT(healthy[region]);
    RC_ASSERT(rec["ttl"] == 5);
  }
}

}  // namespace
}  // namespace meridian::geo
