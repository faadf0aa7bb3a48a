// meridian-failover: parses flags, loads the config, runs one region's failover controller until
// SIGINT/SIGTERM.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <string>

#include "common/cli.h"
#include "common/daemon.h"
#include "common/files.h"
#include "failover/config.h"
#include "failover/controller.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-failover: detects a lost region by quorum, moves DNS, fails back"};
  meridian::common::DaemonOptions opt;
  meridian::common::AddDaemonOptions(cli, &opt, "YAML config file (see failover/README.md)")
      ->required();
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  meridian::common::ApplyLogLevel(opt);

  auto config = meridian::failover::LoadConfigFile(opt.config_path);
  // The audit file is opened (in a folder that exists) at the start: one that cannot be fails
  // --check-config too, which deploy/meridian runs before it starts anything. Nothing is written.
  if (config.ok() && !config->audit_file.empty()) {
    if (absl::Status st =
            meridian::common::CheckWritableFileInExistingFolder("audit_file", config->audit_file);
        !st.ok()) {
      config = st;
    }
  }
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-failover: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (opt.check_only) {
    std::printf("config ok: region %s, %zu regions, %zu geo instances\n", config->region.c_str(),
                config->regions.size(), config->geo.size());
    return 0;
  }
  const sigset_t signals = meridian::common::BlockStopSignals();

  auto controller = meridian::failover::Controller::Create(*std::move(config), {});
  if (!controller.ok()) {
    std::fprintf(stderr, "meridian-failover: %s\n",
                 std::string(controller.status().message()).c_str());
    return 2;
  }
  if (absl::Status st = (*controller)->Start(); !st.ok()) {
    std::fprintf(stderr, "meridian-failover: cannot start: %s\n",
                 std::string(st.message()).c_str());
    return 1;
  }
  const int sig = meridian::common::WaitForStopSignal(signals);
  spdlog::info("event=failover_stopping signal={}", sig);
  (*controller)->Stop();
  return 0;
}
