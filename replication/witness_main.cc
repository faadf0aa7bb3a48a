// meridian-witness: the third lease vote of a two-region deployment (replication/witness.h).

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "replication/witness.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-witness: an acceptor-only lease vote for two-region deployments"};
  std::string config_path;
  std::string log_level = "info";
  bool check_only = false;
  cli.add_option("-c,--config", config_path, "YAML config file (see replication/README.md)")
      ->required()
      ->check(CLI::ExistingFile);
  cli.add_option("--log-level", log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  cli.add_flag("--check-config", check_only, "validate the config and exit");
  CLI11_PARSE(cli, argc, argv);
  spdlog::set_level(spdlog::level::from_str(log_level));
  auto config = meridian::replication::LoadWitnessConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-witness: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (check_only) {
    std::printf("config ok: witness %s for %zu regions\n", config->name.c_str(),
                config->regions.size());
    return 0;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  auto witness = meridian::replication::Witness::Start(*std::move(config));
  if (!witness.ok()) {
    std::fprintf(stderr, "meridian-witness: cannot start: %s\n",
                 std::string(witness.status().message()).c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("event=witness_stopping signal={}", sig);
  (*witness)->Stop();
  return 0;
}
