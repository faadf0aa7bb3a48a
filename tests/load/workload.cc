#include "tests/load/workload.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>

#include "absl/status/status.h"

namespace meridian::load {
namespace {

constexpr std::array<std::string_view, kOpKinds> kNames = {
    "browse",      "list",     "search",   "cart_add",       "cart_update",
    "cart_remove", "get_cart", "checkout", "checkout_replay"};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

}  // namespace

std::string_view OpName(OpKind kind) { return kNames[static_cast<size_t>(kind)]; }

absl::StatusOr<Mix> Mix::Parse(std::string_view spec) {
  Mix mix;
  std::array<bool, kOpKinds> seen{};
  size_t start = 0;
  while (start <= spec.size()) {
    size_t comma = spec.find(',', start);
    std::string_view item = Trim(spec.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start));
    start = comma == std::string_view::npos ? spec.size() + 1 : comma + 1;
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      return absl::InvalidArgumentError("--mix: '" + std::string(item) + "' is not NAME=WEIGHT");
    }
    std::string_view name = Trim(item.substr(0, eq));
    std::string_view value = Trim(item.substr(eq + 1));
    auto it = std::find(kNames.begin(), kNames.end() - 1, name);  // checkout_replay excluded
    if (it == kNames.end() - 1) {
      std::string known;
      for (size_t i = 0; i + 1 < kNames.size(); ++i) {
        known += (i ? ", " : "") + std::string(kNames[i]);
      }
      return absl::InvalidArgumentError("--mix: unknown operation '" + std::string(name) +
                                        "' (known: " + known + ")");
    }
    size_t index = static_cast<size_t>(it - kNames.begin());
    if (seen[index]) {
      return absl::InvalidArgumentError("--mix: '" + std::string(name) + "' given twice");
    }
    seen[index] = true;
    double w = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), w);
    if (ec != std::errc() || end != value.data() + value.size() || !std::isfinite(w) || w < 0 ||
        w > 1e6) {
      return absl::InvalidArgumentError("--mix: weight of '" + std::string(name) +
                                        "' must be a number in 0..1000000");
    }
    mix.weights_[index] = w;
    mix.total_ += w;
  }
  if (mix.total_ <= 0) {
    return absl::InvalidArgumentError("--mix: at least one operation needs a positive weight");
  }
  return mix;
}

OpKind Mix::Pick(double u) const {
  assert(u >= 0 && u < 1);
  double target = u * total_;
  double acc = 0;
  size_t last_positive = 0;
  for (size_t i = 0; i < kOpKinds; ++i) {
    if (weights_[i] <= 0) continue;
    last_positive = i;
    acc += weights_[i];
    if (target < acc) return static_cast<OpKind>(i);
  }
  // Rounding can leave target == total: the last kind with weight takes it.
  return static_cast<OpKind>(last_positive);
}

std::string Mix::ToString() const {
  std::string out;
  for (size_t i = 0; i < kOpKinds; ++i) {
    if (weights_[i] <= 0) continue;
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, weights_[i]);
    (void)ec;
    out += (out.empty() ? "" : ",") + std::string(kNames[i]) + "=" + std::string(buf, end);
  }
  return out;
}

ZipfSampler::ZipfSampler(size_t n, double s) {
  assert(n >= 1 && s >= 0 && s <= 10);
  cdf_.resize(n);
  double acc = 0;
  for (size_t k = 0; k < n; ++k) {
    acc += 1.0 / std::pow(static_cast<double>(k + 1), s);
    cdf_[k] = acc;
  }
  for (double& c : cdf_) c /= acc;
  cdf_.back() = 1.0;
}

size_t ZipfSampler::Sample(double u) const {
  assert(u >= 0 && u < 1);
  auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
  return std::min(static_cast<size_t>(it - cdf_.begin()), cdf_.size() - 1);
}

ArrivalSchedule::ArrivalSchedule(double rate_per_s, double duration_s, int64_t max_arrivals,
                                 bool poisson, uint64_t seed)
    : rate_per_s_(rate_per_s),
      duration_s_(duration_s),
      max_arrivals_(max_arrivals),
      poisson_(poisson),
      rng_(seed) {
  assert(rate_per_s > 0 && duration_s > 0 && max_arrivals >= 1);
}

bool ArrivalSchedule::Next(double* offset_s) {
  if (emitted_ >= max_arrivals_) return false;
  double t;
  if (poisson_) {
    t = next_s_;
    next_s_ += std::exponential_distribution<double>(rate_per_s_)(rng_);
  } else {
    // From the index, not by adding up gaps: no drift from rounding over a long run.
    t = static_cast<double>(emitted_) / rate_per_s_;
  }
  if (t >= duration_s_) return false;
  ++emitted_;
  *offset_s = t;
  return true;
}

}  // namespace meridian::load
