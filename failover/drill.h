#pragma once

// The region-loss drill, called by `meridianctl drill region-loss`. meridianctl parses the flags
// into DrillOptions and calls RunDrillCommand; the drill (failover/drill.cc, owned by the drill's
// author) does everything else and returns the process exit code.
//
// Build wiring (failover/CMakeLists.txt): if failover/drill.cmake exists it is included and must
// define the static library target `meridian_failover_drill`; otherwise, if failover/drill.cc
// exists, `meridian_failover_drill` is built from drill.cc (and report.cc when present) linked
// with meridian_failover, spdlog, nlohmann_json, absl and libcurl. meridianctl links it when the
// target exists; until then `meridianctl drill` says the drill is not available (exit 2).

#include <string>

namespace meridian::failover {

struct DrillOptions {
  std::string data_dir = ".meridian";  // deploy/meridian's data folder (--data)
  std::string region;                  // the region to remove (--region), e.g. "eu-west"
  std::string mode = "kill";           // "kill" (kill -9 of its processes) or "partition"
  int duration_s = 30;                 // how long the region stays away (--duration)
  std::string output_dir = "drills";   // where the report goes (--output-dir)
  bool json = false;                   // --output json: machine-readable summary on stdout
};

// Runs the drill; returns the exit code (0: the drill ran and met its targets).
int RunDrillCommand(const DrillOptions& options);

}  // namespace meridian::failover
