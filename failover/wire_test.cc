// The observation wire format: round trips, every rejection naming its field, random input never
// crashing, and log values that cannot forge fields.

#include "failover/wire.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <nlohmann/json.hpp>

namespace meridian::failover {
namespace {

using Json = nlohmann::json;

Observation Sample() {
  Observation o;
  o.from = "ap-south";
  o.incarnation = 0xfedcba9876543210ull;
  o.seq = 42;
  o.regions["us-east"] = RegionReport{true, true, 0, 12, ""};
  o.regions["eu-west"] = RegionReport{false, false, 3, 0, "readyz: connection refused"};
  o.regions["ap-south"] = RegionReport{true, false, 0, 0, "catching up: peer x not alive"};
  return o;
}

TEST(WireTest, RoundTrip) {
  const Observation o = Sample();
  const std::string text = ObservationToJson(o);
  EXPECT_NE(text.find("\"incarnation\":\"fedcba9876543210\""), std::string::npos);
  auto back = ObservationFromJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, o);
}

TEST(WireTest, RejectionsNameTheField) {
  const Json good = Json::parse(ObservationToJson(Sample()));
  auto expect_error = [](const Json& j, const std::string& field) {
    auto r = ObservationFromJson(j.dump());
    ASSERT_FALSE(r.ok()) << j.dump();
    EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status();
  };
  Json j = good;
  j["extra"] = 1;
  expect_error(j, "extra: unknown field");
  j = good;
  j.erase("from");
  expect_error(j, "from");
  j = good;
  j["incarnation"] = 5;
  expect_error(j, "incarnation");
  j = good;
  j["incarnation"] = "XYZ";
  expect_error(j, "incarnation");
  j = good;
  j["seq"] = -1;
  expect_error(j, "seq");
  j = good;
  j["regions"] = Json::array();
  expect_error(j, "regions");
  j = good;
  j["regions"]["eu-west"]["healthy"] = "no";
  expect_error(j, "regions.eu-west.healthy");
  j = good;
  j["regions"]["eu-west"]["fail_streak"] = 1ll << 33;
  expect_error(j, "regions.eu-west.fail_streak");
  j = good;
  j["regions"]["eu-west"]["ok_streak"] = 4;  // unhealthy with an ok streak: inconsistent
  expect_error(j, "regions.eu-west.ok_streak");
  j = good;
  j["regions"]["us-east"]["fail_streak"] = 2;  // healthy with a fail streak
  expect_error(j, "regions.us-east.fail_streak");
  j = good;
  j["regions"]["eu-west"]["caught_up"] = true;
  expect_error(j, "regions.eu-west.caught_up");
  j = good;
  j["regions"]["eu-west"]["reason"] = std::string(300, 'x');
  expect_error(j, "regions.eu-west.reason");
  j = good;
  j["regions"]["eu-west"]["colour"] = "red";
  expect_error(j, "regions.eu-west.colour: unknown field");
  EXPECT_FALSE(ObservationFromJson(std::string(kMaxObservationBytes + 1, ' ')).ok());
  EXPECT_FALSE(ObservationFromJson("[1,2]").ok());
  EXPECT_FALSE(ObservationFromJson("{").ok());
  // A NUL byte ended nlohmann's input: the observation before it was taken, the rest ignored.
  EXPECT_FALSE(
      ObservationFromJson(ObservationToJson(Sample()) + std::string(1, '\0') + "junk").ok());
}

RC_GTEST_PROP(WireProperty, RandomValidObservationsRoundTrip, ()) {
  Observation o;
  o.from = *rc::gen::element<std::string>("us-east", "eu-west", "ap-south");
  o.incarnation = *rc::gen::arbitrary<uint64_t>();
  o.seq = *rc::gen::arbitrary<uint64_t>();
  const int n = *rc::gen::inRange(0, 10);
  for (int i = 0; i < n; ++i) {
    RegionReport r;
    r.healthy = *rc::gen::arbitrary<bool>();
    r.caught_up = r.healthy && *rc::gen::arbitrary<bool>();
    r.fail_streak = r.healthy ? 0 : *rc::gen::arbitrary<uint32_t>();
    r.ok_streak = r.caught_up ? *rc::gen::arbitrary<uint32_t>() : 0;
    r.reason = *rc::gen::container<std::string>(*rc::gen::inRange(0, 200),
                                                rc::gen::inRange<char>(32, 127));
    o.regions["r" + std::to_string(i)] = r;
  }
  auto back = ObservationFromJson(ObservationToJson(o));
  RC_ASSERT(back.ok());
  RC_ASSERT(*back == o);
}

RC_GTEST_PROP(WireProperty, ArbitraryBytesNeverCrash, (const std::string& bytes)) {
  (void)ObservationFromJson(bytes);
  // Mutations of a valid body: a byte flipped.
  std::string body = ObservationToJson(Sample());
  if (!body.empty()) {
    const size_t at = *rc::gen::inRange<size_t>(0, body.size());
    body[at] = *rc::gen::arbitrary<char>();
    (void)ObservationFromJson(body);
  }
}

TEST(WireTest, LogValue) {
  EXPECT_EQ(LogValue("eu-west"), "eu-west");
  EXPECT_EQ(LogValue("us-east,ap-south"), "us-east,ap-south");
  EXPECT_EQ(LogValue(""), "\"\"");
  EXPECT_EQ(LogValue("a b"), "\"a b\"");
  EXPECT_EQ(LogValue("x\" decision=lost"), "\"x\\\" decision=lost\"");
  EXPECT_EQ(LogValue("line\nevent=forged"), "\"line\\x0aevent=forged\"");
  EXPECT_EQ(LogValue("back\\slash"), "\"back\\\\slash\"");
}

}  // namespace
}  // namespace meridian::failover
