#include "tests/load/histogram.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>

namespace meridian::load {

// Layout: [0, 256) one bucket per value; then, for each power of two 2^m with m >= 8, 128 buckets
// of width 2^(m-7). A value's bucket is found from its top 8 bits, in O(1).
int LatencyHistogram::BucketOf(int64_t value) {
  uint64_t v = static_cast<uint64_t>(value);
  if (v < static_cast<uint64_t>(kExact)) return static_cast<int>(v);
  int msb = 63 - std::countl_zero(v);
  int shift = msb - kSubBits;                                     // >= 1
  int mantissa = static_cast<int>(v >> shift) - (1 << kSubBits);  // 0..127
  return kExact + (shift - 1) * (1 << kSubBits) + mantissa;
}

int64_t LatencyHistogram::BucketHighest(int index) {
  if (index < kExact) return index;
  int rel = index - kExact;
  int shift = rel / (1 << kSubBits) + 1;
  int64_t mantissa = (rel % (1 << kSubBits)) + (1 << kSubBits);
  return ((mantissa + 1) << shift) - 1;
}

void LatencyHistogram::Record(int64_t value) {
  value = std::clamp<int64_t>(value, 0, kMaxValue);
  int b = BucketOf(value);
  assert(b >= 0 && b < kBuckets);
  ++counts_[static_cast<size_t>(b)];
  min_ = count_ == 0 ? value : std::min(min_, value);
  max_ = std::max(max_, value);
  ++count_;
  sum_ += static_cast<double>(value);
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += other.counts_[i];
  min_ = count_ == 0 ? other.min_ : std::min(min_, other.min_);
  max_ = std::max(max_, other.max_);
  count_ += other.count_;
  sum_ += other.sum_;
}

double LatencyHistogram::mean() const {
  return count_ == 0 ? 0.0 : sum_ / static_cast<double>(count_);
}

int64_t LatencyHistogram::ValueAtQuantile(double q) const {
  assert(q >= 0 && q <= 1);
  if (count_ == 0) return 0;
  // The rank of the sample that covers q: at least 1 so that q = 0 means the minimum.
  int64_t rank =
      std::max<int64_t>(1, static_cast<int64_t>(std::ceil(q * static_cast<double>(count_))));
  int64_t seen = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    seen += counts_[i];
    if (seen >= rank) {
      return std::clamp(BucketHighest(static_cast<int>(i)), min_, max_);
    }
  }
  return max_;
}

}  // namespace meridian::load
