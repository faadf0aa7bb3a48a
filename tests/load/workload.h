#pragma once

// The loadgen's workload model, free of I/O: the operations a customer session performs, their
// mix (--mix weights), and the Zipf popularity of products. Deterministic for a given random
// stream, so a run's sequence of choices replays from its --seed.

#include <array>
#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace meridian::load {

// One scheduled arrival performs one of these. kCheckoutReplay is not a --mix key: it is the
// share --replay-fraction of checkouts that repeat an earlier Idempotency-Key.
enum class OpKind : uint8_t {
  kBrowse,      // GET /v1/products/{sku}, sku by Zipf
  kList,        // GET /v1/products?limit=20&offset=M
  kSearch,      // GET /v1/search?q=WORD&limit=10
  kCartAdd,     // POST /v1/cart/items
  kCartUpdate,  // PUT /v1/cart/items/{sku} (quantity 0..3; 0 removes)
  kCartRemove,  // DELETE /v1/cart/items/{sku}
  kGetCart,     // GET /v1/cart
  kCheckout,  // POST /v1/checkout, fresh Idempotency-Key (adds an item first if the cart is empty)
  kCheckoutReplay,  // POST /v1/checkout repeating the customer's previous key
};
inline constexpr size_t kOpKinds = 9;

std::string_view OpName(OpKind kind);

// Weights per OpKind (kCheckoutReplay is always 0 here).
class Mix {
 public:
  // "browse=40,search=10,cart_add=25,cart_remove=5,checkout=15,get_cart=5": names from OpName
  // (not checkout_replay), non-negative numbers, at least one positive; unnamed kinds weigh 0.
  [[nodiscard]] static absl::StatusOr<Mix> Parse(std::string_view spec);

  // REQUIRES: 0 <= u < 1. Picks a kind in proportion to its weight.
  OpKind Pick(double u) const;
  double weight(OpKind kind) const { return weights_[static_cast<size_t>(kind)]; }
  std::string ToString() const;

 private:
  std::array<double, kOpKinds> weights_{};
  double total_ = 0;
};

// Ranks 0..n-1 with P(rank k) proportional to 1/(k+1)^s; s = 0 is uniform.
class ZipfSampler {
 public:
  // REQUIRES: n >= 1, 0 <= s <= 10.
  ZipfSampler(size_t n, double s);
  // REQUIRES: 0 <= u < 1.
  size_t Sample(double u) const;
  size_t size() const { return cdf_.size(); }

 private:
  std::vector<double> cdf_;  // normalized; cdf_.back() == 1
};

// The open-loop arrival timeline: offsets in seconds from the run's start, fixed in advance and
// independent of how fast the server answers. Uniform spaces arrivals exactly 1/rate apart;
// Poisson draws exponential gaps of mean 1/rate from its own seeded stream. The timeline ends
// before `duration_s` or after `max_arrivals` arrivals, whichever comes first. A copy replays
// the same timeline, which lets the caller learn its end before running it.
class ArrivalSchedule {
 public:
  // REQUIRES: rate_per_s > 0, duration_s > 0, max_arrivals >= 1.
  ArrivalSchedule(double rate_per_s, double duration_s, int64_t max_arrivals, bool poisson,
                  uint64_t seed);

  // Sets *offset_s to the next arrival and returns true, or returns false at the end.
  bool Next(double* offset_s);
  int64_t emitted() const { return emitted_; }

 private:
  double rate_per_s_;
  double duration_s_;
  int64_t max_arrivals_;
  bool poisson_;
  std::mt19937_64 rng_;
  int64_t emitted_ = 0;
  double next_s_ = 0;
};

}  // namespace meridian::load
