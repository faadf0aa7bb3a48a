#pragma once

// LoadDriver: runs one loadgen session against a Meridian region on this machine.
//
//   Setup()  — not measured: checks the region answers, seeds products with large stock when an
//              operator token is given, registers and logs in the customer pool (accounts from
//              an earlier run with the same prefix are reused), and reads each customer's cart.
//   Run()    — measured: arrivals on a fixed open-loop timeline (see ArrivalSchedule), each one
//              operation of a random customer, over a fixed pool of keep-alive connections.
//              An arrival that finds every connection busy waits in a bounded FIFO backlog; its
//              latency still counts from its scheduled time, so a slow server cannot hide its
//              queueing (no coordinated omission). Stops by itself at the schedule's end plus at
//              most one request timeout of draining.
//
// Not thread-safe; call Setup() then Run(), once each, from one thread. Setup uses a few
// threads of its own; Run uses the calling thread only.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/load/report.h"
#include "tests/load/target.h"
#include "tests/load/workload.h"

namespace meridian::load {

struct LoadOptions {
  Target target;
  std::string target_url;
  double rate_per_s = 200;
  double duration_s = 30;
  double warmup_s = 3;
  int64_t max_requests = 1'000'000;
  int customers = 200;
  int connections = 32;
  std::string operator_token;  // empty: no seeding, the workload uses the existing catalog
  int seed_products = 100;
  int64_t seed_stock_units = 1'000'000;
  Mix mix;
  double declined_fraction = 0.1;
  double replay_fraction = 0.02;
  double zipf_s = 1.1;
  int timeout_ms = 5000;
  uint64_t seed = 1;
  bool poisson = false;
  int64_t max_backlog = 10000;
  std::string customer_prefix = "loadgen";
  double max_lag_ms = 50;
  int setup_concurrency = 8;
  bool progress = true;  // a line on stderr every second
};

class LoadDriver {
 public:
  // REQUIRES: options validated (positive rate, duration > warmup, counts >= 1).
  explicit LoadDriver(LoadOptions options);
  ~LoadDriver();
  LoadDriver(const LoadDriver&) = delete;
  LoadDriver& operator=(const LoadDriver&) = delete;

  // Fails with a message that says what to fix (region down, operator token refused, a customer
  // that cannot log in, an empty catalog).
  [[nodiscard]] absl::Status Setup();

  // REQUIRES: Setup() succeeded. Request errors are figures in the report, not failures.
  [[nodiscard]] absl::StatusOr<RunReport> Run();

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace meridian::load
