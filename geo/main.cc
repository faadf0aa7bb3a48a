// meridian-geo: parses flags, loads the config, runs the GeoDNS backend until SIGINT/SIGTERM.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <string>

#include "geo/config.h"
#include "geo/service.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-geo: PowerDNS remote backend answering with the nearest healthy region"};
  std::string config_path;
  std::string log_level = "info";
  bool check_only = false;
  cli.add_option("-c,--config", config_path, "YAML config file (see geo/README.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  cli.add_flag("--check-config", check_only, "validate the config (and the GeoIP file) and exit");
  CLI11_PARSE(cli, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  absl::StatusOr<meridian::geo::GeoConfig> config = meridian::geo::LoadConfigFile(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-geo: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  // Block the signals in every thread; the main thread waits for them below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const size_t regions = config->regions.size();
  const std::string zone = config->zone.name;
  auto service = meridian::geo::GeoService::Create(*std::move(config), {});
  if (!service.ok()) {
    std::fprintf(stderr, "meridian-geo: %s\n", std::string(service.status().message()).c_str());
    return 2;
  }
  if (check_only) {
    std::printf("config ok: zone %s, %zu regions\n", zone.c_str(), regions);
    return 0;
  }
  if (absl::Status st = (*service)->Start(); !st.ok()) {
    std::fprintf(stderr, "meridian-geo: cannot start: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("event=geo_stopping signal={}", sig);
  (*service)->Stop();
  return 0;
}
