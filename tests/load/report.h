#pragma once

// What a loadgen run measured, and its two renderings: a table for people and JSON for tools.
// Latencies are in microseconds inside, milliseconds in both renderings.

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/load/histogram.h"
#include "tests/load/workload.h"

namespace meridian::load {

struct OpReport {
  // Arrivals of this kind scheduled inside the measured window that have finished, whatever
  // the outcome (latency, status and error figures are over these).
  int64_t count = 0;
  // HTTP responses of any status that arrived inside the measured window (wall clock): the
  // achieved throughput is this over the window's length.
  int64_t responses_in_window = 0;
  // Scheduled time to the last response byte, for arrivals that got an HTTP response.
  LatencyHistogram latency_us;
  std::map<int, int64_t> statuses;                    // by HTTP status
  std::map<std::string, int64_t> errors;              // by class: "4xx:409", "5xx", "timeout", ...
  std::map<std::string, std::string> error_examples;  // the first detail seen per class
  int64_t expected_declines = 0;                      // 402 for a card meant to be declined
  int64_t prefill_adds = 0;  // checkout only: items added to empty carts first
};

struct RunReport {
  // Facts about the run.
  std::string command_line;
  std::string start_time_utc;  // ISO 8601, when the measured run (not setup) began
  std::string target_url;
  double target_rate_per_s = 0;
  double duration_s = 0;
  double warmup_s = 0;
  double window_s = 0;  // measured window: from warmup_s to the end of the schedule
  std::string arrivals = "uniform";
  int connections = 0;
  int customers = 0;
  int64_t catalog_products = 0;
  bool seeded = false;
  std::string mix;
  double declined_fraction = 0;
  double replay_fraction = 0;
  double zipf_s = 0;
  uint64_t seed = 0;
  double setup_s = 0;
  double max_lag_ms = 0;

  // Totals.
  int64_t arrivals_total = 0;     // every scheduled arrival, warmup included
  int64_t arrivals_measured = 0;  // scheduled inside the measured window
  int64_t http_requests = 0;      // requests written, prefill adds and stale resends included
  int64_t shed = 0;               // arrivals dropped because the client backlog was full
  int64_t backlog_max = 0;        // most arrivals waiting for a free connection at once
  int64_t connects = 0;
  int64_t stale_retries = 0;
  int64_t cart_fallbacks = 0;  // cart_update/cart_remove turned into cart_add (no cart lines)
  LatencyHistogram lag_us;     // scheduled time to send time, measured window

  std::array<OpReport, kOpKinds> ops;

  // Multi-region runs and drills.
  bool stopped_by_signal = false;  // SIGINT/SIGTERM ended the schedule early
  int64_t acked_orders = 0;        // checkouts answered 201 (also in --acks-out)
  struct DnsSwitch {
    int64_t at_unix_ms = 0;
    std::string subnet;
    std::string from;
    std::string to;
  };
  struct DnsFigures {
    bool enabled = false;
    int64_t queries = 0;
    int64_t timeouts = 0;
    int64_t failures = 0;
    std::vector<DnsSwitch> switches;
  } dns;

  // Derived by Finalize().
  double achieved_rate_per_s = 0;
  int64_t errors_total = 0;
  bool sustained = false;
  std::vector<std::string> unsustained_reasons;

  void Finalize();
  nlohmann::ordered_json ToJson() const;
  std::string ToTable() const;
};

}  // namespace meridian::load
