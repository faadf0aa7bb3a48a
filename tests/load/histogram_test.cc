#include "tests/load/histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace meridian::load {
namespace {

TEST(LatencyHistogramTest, EmptyIsAllZero) {
  LatencyHistogram h;
  EXPECT_EQ(h.count(), 0);
  EXPECT_EQ(h.ValueAtQuantile(0.99), 0);
  EXPECT_EQ(h.min(), 0);
  EXPECT_EQ(h.max(), 0);
  EXPECT_EQ(h.mean(), 0);
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram h;
  for (int v = 1; v <= 100; ++v) h.Record(v);
  EXPECT_EQ(h.ValueAtQuantile(0.5), 50);
  EXPECT_EQ(h.ValueAtQuantile(0.99), 99);
  EXPECT_EQ(h.ValueAtQuantile(1.0), 100);
  EXPECT_EQ(h.ValueAtQuantile(0.0), 1);
  EXPECT_DOUBLE_EQ(h.mean(), 50.5);
}

// Against exact quantiles of sorted samples: never below, and within the bucket precision.
TEST(LatencyHistogramTest, QuantilesWithinOnePercentOfExact) {
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> dist(8.0, 1.5);  // median ~3 ms in microseconds
  LatencyHistogram h;
  std::vector<int64_t> samples;
  for (int i = 0; i < 100000; ++i) {
    auto v = static_cast<int64_t>(dist(rng));
    samples.push_back(v);
    h.Record(v);
  }
  std::sort(samples.begin(), samples.end());
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    auto rank = static_cast<size_t>(std::ceil(q * static_cast<double>(samples.size())));
    int64_t exact = samples[rank - 1];
    int64_t got = h.ValueAtQuantile(q);
    EXPECT_GE(got, exact) << q;
    EXPECT_LE(static_cast<double>(got), static_cast<double>(exact) * 1.008 + 1) << q;
  }
  EXPECT_EQ(h.max(), samples.back());
  EXPECT_EQ(h.ValueAtQuantile(1.0), samples.back());
}

TEST(LatencyHistogramTest, ClampsOutOfRange) {
  LatencyHistogram h;
  h.Record(-5);
  h.Record(int64_t{1} << 40);
  EXPECT_EQ(h.min(), 0);
  EXPECT_EQ(h.max(), LatencyHistogram::kMaxValue);
  EXPECT_EQ(h.ValueAtQuantile(1.0), LatencyHistogram::kMaxValue);
}

TEST(LatencyHistogramTest, MergeAddsUp) {
  LatencyHistogram a, b;
  for (int i = 0; i < 1000; ++i) a.Record(1000);
  for (int i = 0; i < 1000; ++i) b.Record(5000);
  a.Merge(b);
  EXPECT_EQ(a.count(), 2000);
  EXPECT_EQ(a.min(), 1000);
  EXPECT_EQ(a.max(), 5000);
  EXPECT_NEAR(static_cast<double>(a.ValueAtQuantile(0.25)), 1000, 8);
  EXPECT_EQ(a.ValueAtQuantile(0.75), 5000);
  LatencyHistogram empty;
  a.Merge(empty);
  EXPECT_EQ(a.count(), 2000);
}

}  // namespace
}  // namespace meridian::load
