#pragma once

// The drill's arithmetic, free of I/O and clocks, so that every figure in a report can be checked
// by a test: the loadgen's per-second timeline and acknowledged orders parsed, the error window
// found, RPO and oversell computed from order rows read from the regions' databases, and every
// target judged. All times are wall-clock Unix milliseconds from this machine's one clock (the
// drill, the loadgen and the controllers run on it).

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace meridian::failover::drill {

// One line of meridian-loadgen --timeline-out (arrivals bucketed by their scheduled second).
struct TimelineSecond {
  int64_t start_unix_ms = 0;
  int64_t arrivals = 0;
  int64_t errors = 0;  // customer errors (see tests/load/timeline.h)
  double error_rate = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  int64_t acked = 0;
  std::map<std::string, int64_t> errors_by_class;
  std::map<std::string, std::pair<int64_t, int64_t>> regions;  // name -> (arrivals, errors)
};

// One line of meridian-loadgen --acks-out.
struct Ack {
  std::string order_id;
  int64_t acked_unix_ms = 0;
  std::string region;      // the region that answered 201
  std::string durability;  // "sync-peer" or "async", as the answer said
  std::string customer;
  std::vector<std::pair<std::string, int64_t>> items;
};

// Lines that are not valid JSON objects of the expected shape are InvalidArgument naming the
// line; an empty input is an empty list. A last line cut short (a file being written) is
// skipped.
[[nodiscard]] absl::StatusOr<std::vector<TimelineSecond>> ParseTimeline(std::string_view jsonl);
[[nodiscard]] absl::StatusOr<std::vector<Ack>> ParseAcks(std::string_view jsonl);

// An order as one region's database holds it.
struct OrderRow {
  std::string order_id;
  std::string status;  // pending_payment, paid, payment_declined, cancelled, ...
  int64_t epoch = 0;
  int64_t version = 0;
  std::vector<std::pair<std::string, int64_t>> items;
};

// Every order once, as the newest copy ((epoch, version) highest) of all the rows seen.
[[nodiscard]] std::map<std::string, OrderRow> MergeOrders(const std::vector<OrderRow>& rows);

// Whether an order in this status holds its stock (declined and cancelled orders gave it back).
[[nodiscard]] bool HoldsStock(std::string_view status);

struct StockFigures {
  std::string sku;
  int64_t restocked = 0;  // units put in, over every region
  int64_t sold = 0;       // units in orders that hold stock
  int64_t orders = 0;     // such orders
  int64_t oversold = 0;   // max(0, sold - restocked)
};
[[nodiscard]] std::vector<StockFigures> ComputeStock(
    const std::map<std::string, OrderRow>& orders, const std::map<std::string, int64_t>& restocked);

struct RpoFigures {
  int64_t acked_by_lost = 0;  // acknowledged by the lost region, before it was back
  int64_t acked_sync_peer = 0;
  int64_t acked_async = 0;
  int64_t missing_sync_peer = 0;  // of those, absent from every survivor at the check
  int64_t missing_async = 0;
  std::vector<std::string> missing_examples;  // up to 10 order ids
  double lag_p99_ms = 0;  // replication lag p99 from the lost region before the kill
  // Acknowledged by it from kill - lag_p99 on (in kill mode nothing after the kill; a partitioned
  // region keeps answering its customers until its lease lapses): what async mode may lose.
  int64_t async_window_orders = 0;
  int64_t missing_before_window = 0;  // missing and acknowledged before that window (must be 0)
};
// `present` holds the order ids found in any survivor's database when the check ran
// (`checked_unix_ms`, while the region was still away); acknowledgements after the check are not
// counted.
[[nodiscard]] RpoFigures ComputeRpo(const std::vector<Ack>& acks, const std::string& lost_region,
                                    const std::set<std::string>& present, int64_t kill_unix_ms,
                                    int64_t checked_unix_ms, double lag_p99_ms);

struct ErrorFigures {
  double baseline_error_rate = 0;  // seconds before the kill
  double baseline_p99_ms = 0;      // the worst second's p99 before the kill
  double peak_error_rate = 0;      // from the kill to the end
  double peak_p99_ms = 0;
  int64_t errors_in_outage = 0;  // customer errors in seconds from the kill to the return
  int64_t arrivals_in_outage = 0;
  // Start of the first second after the kill from which every second up to the return has an
  // error rate under the threshold (empty: never).
  std::optional<int64_t> outage_ok_unix_ms;
  // After the return: start of the first second from which every later second is under the
  // threshold, and the worst rate after the return.
  std::optional<int64_t> failback_ok_unix_ms;
  double failback_peak_error_rate = 0;
  int64_t seconds_over_threshold = 0;  // from the kill to the end
};
// REQUIRES: seconds in order. Seconds with no arrivals count as under the threshold.
[[nodiscard]] ErrorFigures AnalyzeErrors(const std::vector<TimelineSecond>& seconds,
                                         int64_t kill_unix_ms, int64_t return_unix_ms,
                                         double threshold);

// One row of the targets table. `invariant` rows (oversell, sync-peer RPO, regions back, carts
// converged) must hold in every run; the others are timing targets.
struct Target {
  std::string name;
  std::string goal;
  std::string measured;
  bool pass = false;
  bool invariant = false;
};

// What the drill observed, for the targets (ms after the kill, empty when never seen).
struct Observed {
  std::string mode;        // kill | partition
  std::string durability;  // sync-peer | async
  int64_t lease_ttl_ms = 6000;
  std::optional<int64_t> detection_ms;
  std::optional<int64_t> dns_switch_ms;
  std::optional<int64_t> takeover_ms;
  std::optional<int64_t> errors_ok_ms;      // customer error rate under 1% (and staying so)
  std::optional<int64_t> full_recovery_ms;  // after the return
  bool region_back = false;
  bool carts_converged = false;
  int64_t carts_compared = 0;
  RpoFigures rpo;
  bool rpo_checked = false;  // false: the acks or the survivors' databases could not be read
  std::vector<StockFigures> stock;
  int64_t acked_total = 0;                    // orders acknowledged in the whole run
  int64_t acked_missing_after_recovery = -1;  // of them, absent from some region; -1 unchecked
};
// A check that did not run, or had nothing to check (no order acknowledged by the lost region,
// no unit sold), fails its target: a drill that saw nothing does not pass.
[[nodiscard]] std::vector<Target> JudgeTargets(const Observed& o);

}  // namespace meridian::failover::drill
