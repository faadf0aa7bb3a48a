#pragma once

// Time for the replication logic (leases, rights, failure detection). The logic never reads a
// clock of its own: the replicator passes SteadyClock, the simulator a simulated clock with skew
// and drift, so the same code runs in both.

#include <chrono>
#include <cstdint>

namespace meridian::replication {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic milliseconds since an arbitrary origin. Only differences mean anything: two
  // regions' clocks are never compared (lease safety rests on durations and a drift bound).
  [[nodiscard]] virtual int64_t NowMs() const = 0;
};

class SteadyClock final : public Clock {
 public:
  [[nodiscard]] int64_t NowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace meridian::replication
