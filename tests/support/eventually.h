#pragma once

// Polling for tests that wait on real processes.

#include <chrono>
#include <functional>
#include <thread>

namespace meridian::test_support {

// Polls `done` every `poll_ms` until it holds or `seconds` have passed, then looks once more.
inline bool Eventually(const std::function<bool()>& done, double seconds, int poll_ms = 50) {
  const auto until = std::chrono::steady_clock::now() +
                     std::chrono::milliseconds(static_cast<int>(seconds * 1000));
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(poll_ms));
  }
  return done();
}

}  // namespace meridian::test_support
