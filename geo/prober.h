#pragma once

// Active health probes: every interval, one HTTP GET of each region's readyz URL, all regions in
// parallel, each bounded by a timeout. A probe succeeds on any 2xx status; anything else (other
// status, refused, reset, timeout) is a failure with a short reason.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace meridian::geo {

struct ProbeResult {
  bool ok = false;
  std::string error;  // empty when ok: "HTTP 503", "connection refused", "timeout after 400 ms"
};

// The seam between the probe loop and the network.
class ProbeClient {
 public:
  virtual ~ProbeClient() = default;
  // Probes every URL concurrently and returns one result per URL, in order. Returns within about
  // `timeout_ms` (each probe is bounded by it). Called from one thread at a time.
  virtual std::vector<ProbeResult> ProbeAll(const std::vector<std::string>& urls,
                                            int timeout_ms) = 0;
};

// libcurl (multi interface). Keeps one easy handle per URL, so a region's probes reuse one
// keep-alive connection; a dead connection is noticed by the next probe (reset or timeout).
class CurlProbeClient : public ProbeClient {
 public:
  CurlProbeClient();
  ~CurlProbeClient() override;
  CurlProbeClient(const CurlProbeClient&) = delete;
  CurlProbeClient& operator=(const CurlProbeClient&) = delete;

  std::vector<ProbeResult> ProbeAll(const std::vector<std::string>& urls, int timeout_ms) override;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Runs rounds of probes on its own thread, starting one round every `interval_ms` (fixed ticks,
// not "interval after the last round", so detection time is predictable), and hands each result
// to `sink(target_index, result)`. Targets are fixed at construction.
//
// Thread-safety: Start/Stop from one owner thread; `sink` is called on the probe thread.
class ProbeLoop {
 public:
  using Sink = std::function<void(size_t target, const ProbeResult& result)>;

  // REQUIRES: interval_ms >= 1, 1 <= timeout_ms <= interval_ms; `client` outlives the loop.
  ProbeLoop(std::vector<std::string> urls, int interval_ms, int timeout_ms, ProbeClient& client,
            Sink sink);
  ~ProbeLoop();  // Stop()s

  void Start();
  // Wakes the loop and joins it; returns within about one probe timeout. Idempotent.
  void Stop();

  // One round, on the caller's thread (tests; Start() must not have been called).
  void RunOnce();

 private:
  void Run();

  const std::vector<std::string> urls_;
  const int interval_ms_;
  const int timeout_ms_;
  ProbeClient& client_;
  Sink sink_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace meridian::geo
