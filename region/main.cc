// meridian-region: parses flags, loads the config, runs the region until SIGINT/SIGTERM.

#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>

#include "common/cli.h"
#include "common/daemon.h"
#include "region/app.h"
#include "region/config.h"
#include "region/migrations.h"

int main(int argc, char** argv) {
  CLI::App cli{"meridian-region: one region of the Meridian order stack"};
  meridian::common::DaemonOptions opt;
  std::string print_schema;
  auto* config_opt = meridian::common::AddDaemonOptions(cli, &opt, "YAML config file");
  cli.add_option("--print-schema", print_schema,
                 "print the SQL of every migration of a database kind (global or shard) and exit")
      ->check(CLI::IsMember({"global", "shard"}))
      // It reads no config: given one (or --check-config), the reader expected a check.
      ->excludes(config_opt)
      ->excludes(cli.get_option("--check-config"));
  bool restored = false;
  cli.add_flag("--restored", restored,
               "this region's databases were put back from a backup in a way PostgreSQL cannot "
               "tell (a file copy of the data directory): give each a new outbox stream, as after "
               "a restore it does see; for this one start only, never in a service's flags");
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  meridian::common::ApplyLogLevel(opt);
  if (!print_schema.empty()) {
    auto kind = print_schema == "global" ? meridian::region::SchemaKind::kGlobal
                                         : meridian::region::SchemaKind::kShard;
    for (const auto& m : meridian::region::Migrations(kind)) {
      std::printf("-- migration %d: %s\n%s\n", m.version, m.name, m.sql);
    }
    return 0;
  }
  if (config_opt->count() == 0) {
    std::fprintf(stderr, "meridian-region: --config is required (see --help)\n");
    return 2;
  }

  auto config = meridian::region::LoadConfigFile(opt.config_path);
  if (!config.ok()) {
    std::fprintf(stderr, "meridian-region: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  if (opt.check_only) {
    std::printf("config ok: region %s (%s), %zu shards\n", config->name.c_str(),
                config->jurisdiction.c_str(), config->shard_dsns.size());
    return 0;
  }
  config->restored = restored;
  // Block the signals in every thread; the main thread waits for them below.
  const sigset_t signals = meridian::common::BlockStopSignals();

  auto app = meridian::region::RegionApp::Create(*std::move(config));
  if (!app.ok()) {
    std::fprintf(stderr, "meridian-region: cannot start: %s\n",
                 std::string(app.status().message()).c_str());
    return 1;
  }
  if (auto st = (*app)->Start(); !st.ok()) {
    std::fprintf(stderr, "meridian-region: cannot start: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  const int sig =
      meridian::common::WaitForStopSignalOr(signals, [&] { return (*app)->database_changed(); });
  if (sig == 0) {
    spdlog::critical(
        "event=region_stopping reason=database_changed_under_server (exit status 3: start it "
        "again, and its start gives the database a new life)");
    (*app)->Stop();
    return 3;
  }
  spdlog::info("event=region_stopping signal={}", sig);
  (*app)->Stop();
  return 0;
}
