#include "tests/load/timeline.h"

#include <gtest/gtest.h>

namespace meridian::load {
namespace {

TEST(IsCustomerErrorTest, Classes) {
  for (const char* e : {"connect", "connection", "timeout", "protocol", "drain_abort", "5xx",
                        "4xx:429", "shed", "http:302"}) {
    EXPECT_TRUE(IsCustomerError(e)) << e;
  }
  for (const char* e : {"", "4xx:409", "4xx:404", "4xx:422"}) EXPECT_FALSE(IsCustomerError(e)) << e;
}

TEST(TimelineTest, BucketsBySecondAndFinishesInOrder) {
  Timeline t(1'000'000, {"us-east", "eu-west"});
  t.Arrival(0, 0, false);
  t.Arrival(0, 1, true);
  t.Arrival(1, 0, true);
  t.Done(0, 0, false, "", 2000);
  // Second 0 has one arrival outstanding: nothing is finished, and second 1 waits behind it.
  t.Done(1, 0, true, "connect", -1);
  EXPECT_TRUE(t.TakeFinished(5).empty());
  t.Done(0, 1, true, "5xx", 40000);
  t.Acked(0);
  auto out = t.TakeFinished(1);  // second 1 has not ended by second 1
  ASSERT_EQ(out.size(), 1u);
  const auto& s0 = out[0];
  EXPECT_EQ(s0["second"], 0);
  EXPECT_EQ(s0["start_unix_ms"], 1'000'000);
  EXPECT_EQ(s0["arrivals"], 2);
  EXPECT_EQ(s0["errors"], 1);
  EXPECT_DOUBLE_EQ(s0["error_rate"].get<double>(), 0.5);
  EXPECT_EQ(s0["errors_by_class"]["5xx"], 1);
  EXPECT_EQ(s0["checkout_errors"], 1);
  EXPECT_EQ(s0["acked_orders"], 1);
  EXPECT_EQ(s0["regions"]["eu-west"]["errors"], 1);
  EXPECT_EQ(s0["regions"]["us-east"]["errors"], 0);
  EXPECT_GE(s0["latency_ms"]["p99"].get<double>(), 40.0);
  EXPECT_EQ(s0["latency_ms"]["samples"], 2);
  out = t.TakeFinished(2);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0]["second"], 1);
  EXPECT_EQ(out[0]["start_unix_ms"], 1'001'000);
  EXPECT_EQ(out[0]["latency_ms"]["samples"], 0);  // a connect failure has no latency
  EXPECT_TRUE(t.TakeFinished(10).empty());
}

TEST(TimelineTest, ClientAnswersAreNotErrorsAndAllFlushesTheRest) {
  Timeline t(0, {"r"});
  t.Arrival(3, 0, true);
  t.Arrival(3, 0, false);
  t.Done(3, 0, true, "4xx:409", 1000);
  auto out = t.TakeFinished(100, /*all=*/true);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0]["errors"], 0);
  EXPECT_EQ(out[0]["client_4xx"], 1);
  EXPECT_EQ(out[0]["completed"], 1);
  EXPECT_EQ(out[0]["arrivals"], 2);
}

}  // namespace
}  // namespace meridian::load
