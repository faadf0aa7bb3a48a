// meridian-sim: runs the deterministic simulator over many seeds (see tests/sim/README.md).
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "common/cli.h"
#include "common/files.h"
#include "tests/sim/sim.h"

namespace {

const char* ModeName(meridian::sim::Durability d) {
  return d == meridian::sim::Durability::kAsync ? "async" : "sync-peer";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "meridian-sim: the real lease, rights, CRDT and order code of 3-5 regions on a simulated "
      "clock and network, with faults, driven by one seed per run"};
  uint64_t seed = 0;
  uint64_t first = 1;
  uint64_t seeds = 100;
  int regions = 0;
  std::string durability = "both";
  int ops = 400;
  int64_t workload_ms = 20000;
  int64_t settle_ms = 20000;
  bool no_loss = false;
  bool trace = false;
  std::string results;
  // Seeds are 1..2^63-1: CLI11 reads "-1" into a uint64_t as 2^64-1 (and a range past it would
  // wrap around to run nothing).
  constexpr uint64_t kSeedMax = std::numeric_limits<int64_t>::max();
  app.add_option("--seed", seed, "run this one seed (replay); overrides --first/--seeds")
      ->check(CLI::Range(uint64_t{1}, kSeedMax));
  app.add_option("--first", first, "first seed of the range")
      ->check(CLI::Range(uint64_t{1}, kSeedMax));
  app.add_option("--seeds", seeds, "how many seeds")->check(CLI::Range(1, 100000000));
  app.add_option("--regions", regions, "3..5 regions (default: chosen by each seed)")
      ->check(CLI::Range(3, 5));
  app.add_option("--durability", durability, "async, sync-peer or both")
      ->check(CLI::IsMember({"async", "sync-peer", "both"}));
  app.add_option("--ops", ops, "customer operations per run")->check(CLI::Range(1, 1000000));
  app.add_option("--workload-ms", workload_ms, "simulated time with traffic and faults")
      ->check(CLI::Range(1000, 3600000));
  app.add_option("--settle-ms", settle_ms, "simulated quiet time before the final checks")
      ->check(CLI::Range(5000, 3600000));
  app.add_flag("--no-region-loss", no_loss, "never lose a region for good");
  app.add_flag("--trace", trace, "print every event (use with --seed)");
  app.add_option("--results", results, "write the totals as JSON to this file");
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
  if (seed == 0 && first > kSeedMax - seeds) {
    std::fprintf(stderr, "meridian-sim: --first %llu with --seeds %llu goes past seed %llu\n",
                 static_cast<unsigned long long>(first), static_cast<unsigned long long>(seeds),
                 static_cast<unsigned long long>(kSeedMax));
    return meridian::common::kUsageExitCode;
  }
  // The totals are written after every seed ran: a --results that cannot be written is a usage
  // error now, not a run whose result is lost at the end.
  if (!results.empty()) {
    if (absl::Status st = meridian::common::CheckWritableFile("--results", results); !st.ok()) {
      std::fprintf(stderr, "meridian-sim: %s\n", std::string(st.message()).c_str());
      return meridian::common::kUsageExitCode;
    }
  }

  std::vector<meridian::sim::Durability> modes;
  if (durability != "sync-peer") modes.push_back(meridian::sim::Durability::kAsync);
  if (durability != "async") modes.push_back(meridian::sim::Durability::kSyncPeer);
  if (seed != 0) {
    first = seed;
    seeds = 1;
  }

  meridian::sim::SimStats total;
  uint64_t runs = 0;
  uint64_t failures = 0;
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  for (uint64_t s = first; s < first + seeds; ++s) {
    for (auto mode : modes) {
      meridian::sim::SimOptions o;
      o.seed = s;
      o.regions = regions;
      o.durability = mode;
      o.ops = ops;
      o.workload_ms = workload_ms;
      o.settle_ms = settle_ms;
      o.lose_region = !no_loss;
      o.trace = trace;
      meridian::sim::SimResult r = meridian::sim::RunSimulation(o);
      ++runs;
      const auto& st = r.stats;
      total.checkouts_ok += st.checkouts_ok;
      total.checkouts_refused_no_rights += st.checkouts_refused_no_rights;
      total.refused_while_spare_elsewhere += st.refused_while_spare_elsewhere;
      total.checkouts_refused_no_lease += st.checkouts_refused_no_lease;
      total.orders_sync_acked += st.orders_sync_acked;
      total.orders_degraded += st.orders_degraded;
      total.orders_lost_async += st.orders_lost_async;
      total.order_changes += st.order_changes;
      total.forwarded += st.forwarded;
      total.stale_rejected += st.stale_rejected;
      total.grants += st.grants;
      total.takeovers += st.takeovers;
      total.handbacks += st.handbacks;
      total.crashes += st.crashes;
      total.partitions += st.partitions;
      total.lost_region += st.lost_region ? 1 : 0;
      total.messages += st.messages;
      if (!r.ok) {
        ++failures;
        std::printf(
            "FAIL seed %llu (%s, %d regions): %s\n  replay: meridian-sim --seed %llu "
            "--durability %s --trace\n",
            static_cast<unsigned long long>(s), ModeName(mode), st.regions, r.failure.c_str(),
            static_cast<unsigned long long>(s), ModeName(mode));
        std::fflush(stdout);
      }
      if (trace) {
        std::printf("seed %llu %s: %s; checkouts %d, refused (rights) %d, takeovers %d\n",
                    static_cast<unsigned long long>(s), ModeName(mode), r.ok ? "ok" : "FAILED",
                    st.checkouts_ok, st.checkouts_refused_no_rights, st.takeovers);
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_report > std::chrono::seconds(10)) {
      last_report = now;
      std::printf("... %llu runs, %llu failed, %.0f s\n", static_cast<unsigned long long>(runs),
                  static_cast<unsigned long long>(failures),
                  std::chrono::duration<double>(now - start).count());
      std::fflush(stdout);
    }
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "meridian-sim: %llu runs (seeds %llu..%llu, %s), %llu failed, %.1f s (%.1f ms/run)\n"
      "  checkouts %d ok, %d refused for rights (%d while another region held enough), %d "
      "refused without a lease\n"
      "  sync-peer orders acknowledged %d (degraded to async %d); async orders lost with a "
      "lost region %d\n"
      "  order changes %d (forwarded %d), stale events rejected %d; rights grants %d\n"
      "  faults: crashes %d, partitions %d, regions lost %d; lease takeovers %d, handbacks %d; "
      "messages %lld\n",
      static_cast<unsigned long long>(runs), static_cast<unsigned long long>(first),
      static_cast<unsigned long long>(first + seeds - 1), durability.c_str(),
      static_cast<unsigned long long>(failures), secs, 1000.0 * secs / static_cast<double>(runs),
      total.checkouts_ok, total.checkouts_refused_no_rights, total.refused_while_spare_elsewhere,
      total.checkouts_refused_no_lease, total.orders_sync_acked, total.orders_degraded,
      total.orders_lost_async, total.order_changes, total.forwarded, total.stale_rejected,
      total.grants, total.crashes, total.partitions, total.lost_region, total.takeovers,
      total.handbacks, static_cast<long long>(total.messages));
  if (!results.empty()) {
    // Its folders are made only now (the check above made none).
    if (absl::Status st = meridian::common::MakeParentFolders(results); !st.ok()) {
      std::fprintf(stderr, "meridian-sim: could not write --results %s\n",
                   std::string(st.message()).c_str());
      return 1;
    }
    std::ofstream out(results);
    out << "{\"runs\": " << runs << ", \"first_seed\": " << first << ", \"seeds\": " << seeds
        << ", \"durability\": \"" << durability << "\", \"failures\": " << failures
        << ", \"seconds\": " << secs << ", \"checkouts_ok\": " << total.checkouts_ok
        << ", \"refused_no_rights\": " << total.checkouts_refused_no_rights
        << ", \"refused_while_spare_elsewhere\": " << total.refused_while_spare_elsewhere
        << ", \"sync_acked\": " << total.orders_sync_acked
        << ", \"async_lost_with_region\": " << total.orders_lost_async
        << ", \"takeovers\": " << total.takeovers << ", \"crashes\": " << total.crashes
        << ", \"partitions\": " << total.partitions << ", \"regions_lost\": " << total.lost_region
        << "}\n";
    out.close();
    if (!out) {
      std::fprintf(stderr, "meridian-sim: could not write --results %s\n", results.c_str());
      return 1;
    }
  }
  return failures == 0 ? 0 : 1;
}
