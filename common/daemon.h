#pragma once

// What every Meridian daemon's main() shares: the --config / --log-level / --check-config flags,
// and stopping on SIGINT or SIGTERM. Header-only; the daemon links CLI11 and spdlog.

#include <pthread.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <csignal>
#include <functional>
#include <string>

namespace meridian::common {

struct DaemonOptions {
  std::string config_path;
  std::string log_level = "info";
  bool check_only = false;
};

// Adds -c,--config (an existing file; returned, so a daemon can make it required), --log-level
// and --check-config to `cli`.
inline CLI::Option* AddDaemonOptions(
    CLI::App& cli, DaemonOptions* o, const std::string& config_help,
    const std::string& check_help = "validate the config and exit") {
  CLI::Option* config =
      cli.add_option("-c,--config", o->config_path, config_help)->check(CLI::ExistingFile);
  cli.add_option("--log-level", o->log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
  // No `--check-config=false`: a flag that can be turned off by a value would start the daemon
  // for a reader who meant only to check.
  cli.add_flag("--check-config", o->check_only, check_help)->disable_flag_override();
  return config;
}

inline void ApplyLogLevel(const DaemonOptions& o) {
  spdlog::set_level(spdlog::level::from_str(o.log_level));
}

// Blocks SIGINT and SIGTERM in the calling thread and in every thread it starts afterwards, so
// that WaitForStopSignal receives them. Call before starting any thread.
inline sigset_t BlockStopSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return signals;
}

// Waits for one of the signals BlockStopSignals blocked; returns its number.
inline int WaitForStopSignal(const sigset_t& signals) {
  int sig = 0;
  sigwait(&signals, &sig);
  return sig;
}

// As WaitForStopSignal, but also asks `stop_now` every second: 0 once it said true.
inline int WaitForStopSignalOr(const sigset_t& signals, const std::function<bool()>& stop_now) {
  const timespec second{1, 0};
  while (true) {
    const int sig = sigtimedwait(&signals, nullptr, &second);
    if (sig > 0) return sig;
    if (stop_now()) return 0;
  }
}

}  // namespace meridian::common
