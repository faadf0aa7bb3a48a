#include "tests/load/workload.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace meridian::load {
namespace {

TEST(MixTest, ParsesAndPicksInProportion) {
  auto mix = Mix::Parse("browse=40, search=10,cart_add=25,cart_remove=5,checkout=15,get_cart=5");
  ASSERT_TRUE(mix.ok()) << mix.status();
  EXPECT_EQ(mix->weight(OpKind::kBrowse), 40);
  EXPECT_EQ(mix->weight(OpKind::kList), 0);
  std::vector<int> counts(kOpKinds);
  const int n = 100000;
  for (int i = 0; i < n; ++i) ++counts[static_cast<size_t>(mix->Pick((i + 0.5) / n))];
  EXPECT_NEAR(counts[static_cast<size_t>(OpKind::kBrowse)], 40000, 2);
  EXPECT_NEAR(counts[static_cast<size_t>(OpKind::kCheckout)], 15000, 2);
  EXPECT_EQ(counts[static_cast<size_t>(OpKind::kList)], 0);
  EXPECT_EQ(counts[static_cast<size_t>(OpKind::kCheckoutReplay)], 0);
  EXPECT_EQ(mix->ToString(),
            "browse=40,search=10,cart_add=25,cart_remove=5,get_cart=5,checkout=15");
}

TEST(MixTest, EdgeOfTheUnitInterval) {
  auto mix = Mix::Parse("checkout=1");
  ASSERT_TRUE(mix.ok());
  EXPECT_EQ(mix->Pick(0.0), OpKind::kCheckout);
  EXPECT_EQ(mix->Pick(std::nextafter(1.0, 0.0)), OpKind::kCheckout);
}

TEST(MixTest, RefusesBadSpecs) {
  for (const char* spec : {"", "browse", "browse=x", "browse=-1", "nope=3", "browse=0",
                           "browse=1,browse=2", "checkout_replay=5", "browse=1e9"}) {
    EXPECT_FALSE(Mix::Parse(spec).ok()) << spec;
  }
}

TEST(ZipfSamplerTest, FollowsThePowerLaw) {
  ZipfSampler z(100, 1.0);
  std::vector<int> counts(100);
  const int n = 200000;
  for (int i = 0; i < n; ++i) ++counts[z.Sample((i + 0.5) / n)];
  // rank 1 is twice as likely as rank 2, ten times rank 10.
  EXPECT_NEAR(static_cast<double>(counts[0]) / counts[1], 2.0, 0.01);
  EXPECT_NEAR(static_cast<double>(counts[0]) / counts[9], 10.0, 0.05);
}

TEST(ZipfSamplerTest, ZeroExponentIsUniformAndOneItemWorks) {
  ZipfSampler z(4, 0.0);
  EXPECT_EQ(z.Sample(0.0), 0u);
  EXPECT_EQ(z.Sample(0.3), 1u);
  EXPECT_EQ(z.Sample(0.99), 3u);
  ZipfSampler one(1, 1.1);
  EXPECT_EQ(one.Sample(0.7), 0u);
}

TEST(ArrivalScheduleTest, UniformIsExactlySpaced) {
  ArrivalSchedule s(100, 2.0, 1000000, false, 1);
  std::vector<double> t;
  double x = 0;
  while (s.Next(&x)) t.push_back(x);
  ASSERT_EQ(t.size(), 200u);
  EXPECT_DOUBLE_EQ(t[0], 0.0);
  EXPECT_DOUBLE_EQ(t[150], 1.5);
  EXPECT_LT(t.back(), 2.0);
}

TEST(ArrivalScheduleTest, MaxArrivalsCutsTheTimeline) {
  ArrivalSchedule s(1000, 10.0, 250, false, 1);
  double x = 0;
  int n = 0;
  while (s.Next(&x)) ++n;
  EXPECT_EQ(n, 250);
  EXPECT_EQ(s.emitted(), 250);
}

TEST(ArrivalScheduleTest, PoissonHasTheRateAndReplaysFromACopy) {
  ArrivalSchedule s(500, 20.0, 1000000, true, 42);
  ArrivalSchedule copy = s;
  double x = 0, y = 0;
  int n = 0;
  while (s.Next(&x)) {
    ASSERT_TRUE(copy.Next(&y));
    ASSERT_EQ(x, y);
    ++n;
  }
  EXPECT_FALSE(copy.Next(&y));
  EXPECT_NEAR(n, 10000, 400);  // ~4 standard deviations
}

}  // namespace
}  // namespace meridian::load
