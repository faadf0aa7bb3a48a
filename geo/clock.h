#pragma once

// The one seam through which meridian-geo reads time, so tests drive health decisions exactly.

#include <chrono>
#include <cstdint>

namespace meridian::geo {

// Milliseconds on a monotonic clock (arbitrary epoch). Thread-safe implementations only.
class Clock {
 public:
  virtual ~Clock() = default;
  [[nodiscard]] virtual int64_t NowMs() const = 0;
};

class SteadyClock : public Clock {
 public:
  [[nodiscard]] int64_t NowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace meridian::geo
