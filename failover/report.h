#pragma once

// A drill's report: everything the drill measured, judged against the targets, and its three
// renderings — report.md for people, report.json for tools, timeline.svg (customer error rate and
// p99 latency per second, with a vertical line per event). Pure: no I/O but WriteReportFiles.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "failover/drill_analysis.h"

namespace meridian::failover::drill {

struct Event {
  std::string name;  // "kill", "detection", "dns switch", ...
  int64_t unix_ms = 0;
  std::string source;  // where it was seen: "controller eu-west /v1/decisions", "dig", ...
};

struct CartCheck {
  int64_t customers = 0;
  int64_t identical = 0;
  std::optional<int64_t> converged_after_ms;  // after the load stopped
  std::vector<std::string> differing;         // "customer: region A {..} vs region B {..}"
};

struct DrillReport {
  // The run.
  std::string id;  // "<UTC time>-<region>-<mode>"
  std::string region;
  std::string mode;
  int duration_s = 0;
  std::string started_utc;
  std::string data_dir;
  std::string links;       // netns | proxy
  std::string durability;  // sync-peer | async
  int64_t lease_ttl_ms = 0;
  int dns_ttl_s = 0;
  std::vector<std::string> lost_subnets;  // the lost region's customers' client subnets
  std::string load;                       // loadgen parameters, one line
  std::string loadgen_command;
  std::string command;  // how to run this drill again
  std::vector<std::string> notes;

  // Observations.
  std::vector<Event> events;  // in time order after Sort()
  std::vector<TimelineSecond> timeline;
  ErrorFigures errors;
  RpoFigures rpo;
  int64_t rpo_checked_unix_ms = 0;
  std::vector<StockFigures> stock;
  int64_t stock_available_after = -1;  // rights seen available after recovery (-1 unknown)
  CartCheck carts;
  int64_t acked_total = 0;
  int64_t acked_missing_after_recovery = -1;  // acked orders absent from some region at the end
  int64_t orders_seen = 0;
  Observed observed;
  std::vector<Target> targets;

  // Milliseconds from the kill to the first event of that name, if any.
  [[nodiscard]] std::optional<int64_t> After(const std::string& event,
                                             const std::string& from = "kill") const;
  [[nodiscard]] const Event* Find(const std::string& name) const;
  void Sort();
  [[nodiscard]] bool AllPass() const;
  [[nodiscard]] bool InvariantsHold() const;

  [[nodiscard]] nlohmann::ordered_json ToJson() const;
  [[nodiscard]] std::string ToMarkdown() const;
  [[nodiscard]] std::string ToSvg() const;
  // The targets as a fixed-width table with PASS/FAIL, for the terminal.
  [[nodiscard]] std::string SummaryTable() const;
};

// Writes DIR/report.md, DIR/report.json and DIR/timeline.svg (DIR created if needed).
[[nodiscard]] absl::Status WriteReportFiles(const DrillReport& report, const std::string& dir);

}  // namespace meridian::failover::drill
