// meridian-witness: the third lease vote of a two-region deployment (replication/witness.h).

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/daemon.h"
#include "replication/tls_files.h"
#include "replication/witness.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-witness: an acceptor-only lease vote for two-region deployments"};
  meridian::common::DaemonOptions opt;
  meridian::common::AddDaemonOptions(cli, &opt, "YAML config file (see replication/README.md)")
      ->required();
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  meridian::common::ApplyLogLevel(opt);
  auto config = meridian::replication::LoadWitnessConfig(opt.config_path);
  if (config.ok()) {
    if (absl::Status files = meridian::replication::CheckTlsIdentity(
            config->tls_ca, config->tls_cert, config->tls_key, config->name);
        !files.ok()) {
      config = files;
    } else if (absl::Status store =
                   meridian::replication::FileLeaseStore(config->store_path).Check();
               !store.ok()) {
      config = absl::Status(store.code(), absl::StrCat("store: ", store.message()));
    }
  }
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-witness: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (opt.check_only) {
    std::printf("config ok: witness %s for %zu regions\n", config->name.c_str(),
                config->regions.size());
    return 0;
  }
  const sigset_t signals = meridian::common::BlockStopSignals();
  auto witness = meridian::replication::Witness::Start(*std::move(config));
  if (!witness.ok()) {
    std::fprintf(stderr, "meridian-witness: cannot start: %s\n",
                 std::string(witness.status().message()).c_str());
    return 1;
  }
  const int sig = meridian::common::WaitForStopSignal(signals);
  spdlog::info("event=witness_stopping signal={}", sig);
  (*witness)->Stop();
  return 0;
}
