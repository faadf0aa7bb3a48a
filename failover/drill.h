#pragma once

// The region-loss drill, called by `meridianctl drill region-loss`. meridianctl parses the flags
// into DrillOptions and calls RunDrillCommand; the drill (failover/drill.cc, owned by the drill's
// author) does everything else and returns the process exit code.
//
// Against a running deploy/meridian cluster of three regions (with geo, pdns and the failover
// controllers), the drill starts meridian-loadgen itself (customers routed by GeoDNS), records a
// baseline, removes the region (kill -9 of its meridian-region and meridian-replicator, or
// `deploy/meridian partition`), keeps it away for duration_s, brings it back (`deploy/meridian
// up`, or `heal`), waits for full recovery, stops the load and checks the invariants. It measures
// detection, DNS switch, lease takeover, customer errors per second, RPO, oversell, cart
// convergence and recovery, and writes OUTPUT_DIR/<UTC time>-<region>-<mode>/ report.md,
// report.json and timeline.svg (raw load files under DATA/drills/). See failover/DRILL.md.
//
// Build wiring (failover/CMakeLists.txt): if failover/drill.cmake exists it is included and must
// define the static library target `meridian_failover_drill`; otherwise, if failover/drill.cc
// exists, `meridian_failover_drill` is built from drill.cc (and report.cc when present) linked
// with meridian_failover, spdlog, nlohmann_json, absl and libcurl. meridianctl links it when the
// target exists; until then `meridianctl drill` says the drill is not available (exit 2).

#include <string>

#include "absl/status/status.h"

namespace meridian::failover {

struct DrillOptions {
  std::string data_dir = ".meridian";  // deploy/meridian's data folder (--data)
  std::string region;                  // the region to remove (--region), e.g. "eu-west"
  std::string mode = "kill";           // "kill" (kill -9 of its processes) or "partition"
  int duration_s = 30;                 // how long the region stays away (--duration)
  std::string output_dir = "drills";   // where the report goes (--output-dir)
  bool json = false;                   // --output json: machine-readable summary on stdout

  // Tuning (defaults suit both the demo and CI; environment MERIDIAN_DRILL_<NAME> overrides,
  // e.g. MERIDIAN_DRILL_RATE=80, see failover/DRILL.md).
  int baseline_s = 8;            // load before the region is removed
  double rate_per_s = 100;       // loadgen arrivals per second, all customers
  int customers = 90;            // loadgen customers, spread over the regions' client subnets
  int recovery_timeout_s = 120;  // after the return, how long to wait for full recovery
  int settle_s = 5;              // load kept after recovery, to see the error rate stay low
  int cart_sample = 20;          // customers whose carts are compared across regions
  int scarce_products = 4;       // SKUs with little stock, for the oversell check
  int scarce_stock_per_region = 12;
  std::string loadgen;          // meridian-loadgen binary; "" = found next to meridianctl
  std::string meridian_script;  // deploy/meridian; "" = found from the data dir or the binary
};

// What RunDrillCommand does first, before it looks at the cluster: applies the
// MERIDIAN_DRILL_<NAME> environment overrides to `options` (a bad value, NaN included, or a
// MERIDIAN_DRILL_MERIDIAN that is not a readable file, is an error naming the variable), checks
// --mode and --duration, and creates --output-dir and writes a probe file in it, so that a report
// folder that cannot be written is found before a region is removed. InvalidArgument naming the
// flag or variable otherwise.
[[nodiscard]] absl::Status PrepareDrillOptions(DrillOptions* options);

// --data as deploy/meridian spells it (`cd DIR && pwd`: absolute, "." and ".." folded, no
// trailing slash, symlinks kept): deploy/meridian finds a cluster's processes by that spelling in
// their command lines, so a resolved symlink made the drill's `up` and `partition` take the
// survivors' processes for strangers.
[[nodiscard]] std::string DataDirAsDeploySpellsIt(const std::string& data_dir);

// Runs the drill; returns the exit code: 0 every target met and every invariant held; 1 the
// drill ran and something missed (the report says what); 2 bad options or a cluster not ready
// for a drill (nothing was removed).
int RunDrillCommand(const DrillOptions& options);

}  // namespace meridian::failover
