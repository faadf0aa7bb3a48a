#pragma once

// Timeline: the loadgen's per-second view of what customers saw, for drills that line it up with
// events (a region killed, DNS switched). Arrivals are bucketed by the second of their SCHEDULED
// time from the run's start, so a request that hangs until its timeout is counted in the second
// the customer tried, not when they gave up. A bucket is finished once its second has ended and
// every arrival in it has completed; finished buckets are taken out in order as JSON.
//
// Customer errors are what a customer experiences as a failure: no connection, a reset, a
// timeout, a malformed answer, a 5xx (including 503 "region cannot take orders"), 429, and
// arrivals shed by the loadgen itself. Other 4xx (409 out of stock, 404/422 from the loadgen
// racing itself, 402 declined cards) are answers, counted apart as client_4xx.
//
// Not thread-safe: one owner.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/load/histogram.h"

namespace meridian::load {

// True for the error classes above ("connect", "5xx", "4xx:429", "shed", ...); false for "" (a
// success) and other "4xx:N".
[[nodiscard]] bool IsCustomerError(std::string_view error_class);

class Timeline {
 public:
  // `t0_unix_ms`: wall-clock time of the run's second 0 (so tools line the buckets up with their
  // own wall-clock events); `regions`: names by index.
  Timeline(int64_t t0_unix_ms, std::vector<std::string> regions);

  // REQUIRES: second >= 0, 0 <= region < regions.size().
  void Arrival(int64_t second, int region, bool checkout);
  // One completion per Arrival. `error_class` is "" for a success or an expected answer (402 on
  // a declined card), else the class; `latency_us` < 0 when there was no HTTP response.
  void Done(int64_t second, int region, bool checkout, std::string_view error_class,
            int64_t latency_us);
  // A checkout acknowledged with 201 (an order the customer was told exists).
  void Acked(int64_t second);

  // Removes and returns, oldest first, the buckets finished by `now_second` (their second is
  // < now_second and nothing in them is outstanding), stopping at the first unfinished one.
  // With `all`, returns every bucket left, finished or not (at the end of a run).
  std::vector<nlohmann::ordered_json> TakeFinished(int64_t now_second, bool all = false);

 private:
  struct RegionCount {
    int64_t arrivals = 0;
    int64_t errors = 0;
  };
  struct Bucket {
    int64_t arrivals = 0;
    int64_t completed = 0;
    int64_t errors = 0;
    int64_t client_4xx = 0;
    int64_t checkouts = 0;
    int64_t checkout_errors = 0;
    int64_t acked = 0;
    std::map<std::string, int64_t> error_classes;
    std::vector<RegionCount> regions;
    LatencyHistogram latency_us;  // every arrival that got an HTTP response
  };
  nlohmann::ordered_json ToJson(int64_t second, const Bucket& b) const;
  Bucket& At(int64_t second);

  int64_t t0_unix_ms_;
  std::vector<std::string> regions_;
  std::map<int64_t, Bucket> buckets_;
};

}  // namespace meridian::load
