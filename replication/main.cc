// meridian-replicator: ships this region's outbox to its peer regions and applies theirs.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "replication/config.h"
#include "replication/replicator.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-replicator: replicates one region with its peers over gRPC streams"};
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

  auto config = meridian::replication::LoadReplicatorConfig(config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-replicator: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  if (check_only) {
    std::printf("config ok: region %s (%s), %zu peers\n", config->region.c_str(),
                config->jurisdiction.c_str(), config->peers.size());
    return 0;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto replicator = meridian::replication::Replicator::Start(*std::move(config));
  if (!replicator.ok()) {
    std::fprintf(stderr, "meridian-replicator: cannot start: %s\n",
                 std::string(replicator.status().message()).c_str());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("event=replicator_stopping signal={}", sig);
  (*replicator)->Stop();
  return 0;
}
