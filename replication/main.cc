// meridian-replicator: ships this region's outbox to its peer regions and applies theirs.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "common/cli.h"
#include "common/daemon.h"
#include "replication/config.h"
#include "replication/replicator.h"
#include "replication/tls_files.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-replicator: replicates one region with its peers over gRPC streams"};
  meridian::common::DaemonOptions opt;
  meridian::common::AddDaemonOptions(cli, &opt, "YAML config file (see replication/README.md)")
      ->required();
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  meridian::common::ApplyLogLevel(opt);

  auto config = meridian::replication::LoadReplicatorConfig(opt.config_path);
  if (config.ok()) {
    if (absl::Status files = meridian::replication::CheckTlsIdentity(
            config->tls_ca, config->tls_cert, config->tls_key, config->region);
        !files.ok()) {
      config = files;
    }
  }
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-replicator: %s\n",
                 std::string(config.status().message()).c_str());
    return 2;
  }
  if (opt.check_only) {
    std::printf("config ok: region %s (%s), %zu peers\n", config->region.c_str(),
                config->jurisdiction.c_str(), config->peers.size());
    return 0;
  }
  const sigset_t signals = meridian::common::BlockStopSignals();

  auto replicator = meridian::replication::Replicator::Start(*std::move(config));
  if (!replicator.ok()) {
    std::fprintf(stderr, "meridian-replicator: cannot start: %s\n",
                 std::string(replicator.status().message()).c_str());
    return 1;
  }
  const int sig = meridian::common::WaitForStopSignal(signals);
  spdlog::info("event=replicator_stopping signal={}", sig);
  (*replicator)->Stop();
  return 0;
}
