// meridian-failover: parses flags, loads the config, runs one region's failover controller until
// SIGINT/SIGTERM.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <string>

#include "failover/config.h"
#include "failover/controller.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-failover: detects a lost region by quorum, moves DNS, fails back"};
  std::string config_path;
  std::string log_level = "info";
  bool check_only = false;
  cli.add_option("-c,--config", config_path, "YAML config file (see failover/README.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  cli.add_flag("--check-config", check_only, "validate the config and exit");
  CLI11_PARSE(cli, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));

  auto config = meridian::failover::LoadConfigFile(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-failover: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (check_only) {
    std::printf("config ok: region %s, %zu regions, %zu geo instances\n", config->region.c_str(),
                config->regions.size(), config->geo.size());
    return 0;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

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
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("event=failover_stopping signal={}", sig);
  (*controller)->Stop();
  return 0;
}
