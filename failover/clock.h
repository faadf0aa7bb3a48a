#pragma once

// The one seam through which meridian-failover reads time, so tests drive decisions exactly.

#include <chrono>
#include <cstdint>

namespace meridian::failover {

// Milliseconds on a monotonic clock (arbitrary epoch). Implementations must be thread-safe.
class Clock {
 public:
  virtual ~Clock() = default;
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

}  // namespace meridian::failover
