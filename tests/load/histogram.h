#pragma once

// LatencyHistogram: a log-linear histogram of non-negative integer values (microseconds here),
// in the spirit of HdrHistogram with fixed precision: values below 256 are exact, larger ones fall
// in buckets no wider than 1/128 of their lower bound (< 0.8 % relative error). Memory is fixed
// (about 27 KiB) whatever the number of samples, so a long run cannot grow it.
//
// Not thread-safe: one owner records; merge copies to combine.

#include <array>
#include <cstdint>

namespace meridian::load {

class LatencyHistogram {
 public:
  // Values above this (about 71 minutes in microseconds) are clamped to it.
  static constexpr int64_t kMaxValue = (int64_t{1} << 32) - 1;

  void Record(int64_t value);
  void Merge(const LatencyHistogram& other);

  int64_t count() const { return count_; }
  // 0 when empty.
  int64_t min() const { return count_ == 0 ? 0 : min_; }
  int64_t max() const { return max_; }
  double mean() const;

  // The smallest recorded value v such that at least q of the samples are <= v, reported as the
  // highest value of v's bucket clamped to max() (so never below the true quantile).
  // REQUIRES: 0 <= q <= 1. Returns 0 when empty.
  int64_t ValueAtQuantile(double q) const;

 private:
  static constexpr int kSubBits = 7;                  // 128 linear steps per power of two
  static constexpr int kExact = 1 << (kSubBits + 1);  // values below 256 have their own bucket
  static constexpr int kBuckets = kExact + (32 - kSubBits - 1) * (1 << kSubBits);

  static int BucketOf(int64_t value);
  static int64_t BucketHighest(int index);

  std::array<int64_t, kBuckets> counts_{};
  int64_t count_ = 0;
  int64_t min_ = 0;
  int64_t max_ = 0;
  double sum_ = 0;
};

}  // namespace meridian::load
