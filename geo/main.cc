// meridian-geo: parses flags, loads the config, runs the GeoDNS backend until SIGINT/SIGTERM.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <string>

#include "common/cli.h"
#include "common/daemon.h"
#include "geo/config.h"
#include "geo/service.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-geo: PowerDNS remote backend answering with the nearest healthy region"};
  meridian::common::DaemonOptions opt;
  meridian::common::AddDaemonOptions(cli, &opt, "YAML config file (see geo/README.md)",
                                     "validate the config (and the GeoIP file) and exit")
      ->required();
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  meridian::common::ApplyLogLevel(opt);

  absl::StatusOr<meridian::geo::GeoConfig> config = meridian::geo::LoadConfigFile(opt.config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-geo: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  // Block the signals in every thread; the main thread waits for them below.
  const sigset_t signals = meridian::common::BlockStopSignals();

  const size_t regions = config->regions.size();
  const std::string zone = config->zone.name;
  auto service = meridian::geo::GeoService::Create(*std::move(config), {});
  if (!service.ok()) {
    std::fprintf(stderr, "meridian-geo: %s\n", std::string(service.status().message()).c_str());
    return 2;
  }
  if (opt.check_only) {
    std::printf("config ok: zone %s, %zu regions\n", zone.c_str(), regions);
    return 0;
  }
  if (absl::Status st = (*service)->Start(); !st.ok()) {
    std::fprintf(stderr, "meridian-geo: cannot start: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  const int sig = meridian::common::WaitForStopSignal(signals);
  spdlog::info("event=geo_stopping signal={}", sig);
  (*service)->Stop();
  return 0;
}
