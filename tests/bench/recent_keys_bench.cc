// What keeping the recent keys in a file (replication/recent_keys.h, the replicator's state_dir)
// costs the applies (not a pass/fail test). Feeds one peer's listing as the replicator does, one
// Applied call per batch of each of three streams, paced to --rate records per second, and
// reports the time per call and the slowest calls: the file's rewrites run in a thread of their
// own, and this shows what the applies still feel of them. --no-persist: the same in memory only.
//
//   recent_keys_bench [--rate 30000] [--seconds 20] [--batch 10] [--per-stream 50000]
//                     [--dir DIR] [--no-persist] [--out results/recent_keys.json]
// The file goes to a fresh folder under $TMPDIR (/tmp) unless --dir says where.

#include <stdlib.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/cli.h"
#include "common/files.h"
#include "replication/recent_keys.h"

namespace {
using Clock = std::chrono::steady_clock;
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The cost of persisting the replicator's recent keys to the applies"};
  int rate = 30000, batch = 10, per_stream = 50000;
  double seconds = 20;
  bool no_persist = false;
  std::string dir, out = "results/recent_keys.json";
  app.add_option("--rate", rate, "Records per second, over the three streams")
      ->check(CLI::Range(100, 10000000));
  app.add_option("--seconds", seconds, "How long to feed")
      ->check(meridian::common::FiniteRange(1.0, 3600.0));  // CLI::Range lets NaN through
  app.add_option("--batch", batch, "Records per Applied call")->check(CLI::Range(1, 10000));
  app.add_option("--per-stream", per_stream, "Keys kept per stream (the replicator's default)")
      ->check(CLI::Range(1, 10000000));
  app.add_option("--dir", dir, "Folder for the file (default: a fresh temporary one)");
  app.add_flag("--no-persist", no_persist, "Keep the keys in memory only");
  app.add_option("--out", out, "Results file (JSON)");
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
  if (absl::Status st = meridian::common::CheckWritableFile("--out", out); !st.ok()) {
    std::fprintf(stderr, "recent_keys_bench: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  bool made_dir = false;
  if (!dir.empty()) {
    if (absl::Status st = meridian::common::CheckWritableDir("--dir", dir); !st.ok()) {
      std::fprintf(stderr, "recent_keys_bench: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  } else {  // on the disk, as a state_dir is (not /dev/shm)
    std::string tmpl = (std::filesystem::temp_directory_path() / "recent-keys-bench-XXXXXX");
    if (!::mkdtemp(tmpl.data())) {
      std::perror("recent_keys_bench: mkdtemp");
      return 1;
    }
    dir = tmpl;
    made_dir = true;
  }
  const std::string path = dir + "/recent-keys-2.log";
  meridian::replication::RecentKeys keys(static_cast<size_t>(per_stream));
  int write_errors = 0;
  if (!no_persist) {
    std::filesystem::remove(path);
    std::string warning;
    absl::Status st = keys.Persist(path, &warning, [&](const std::string& why) {
      ++write_errors;
      std::fprintf(stderr, "recent_keys_bench: %s\n", why.c_str());
    });
    if (!st.ok()) {
      std::fprintf(stderr, "recent_keys_bench: %s\n", st.ToString().c_str());
      return 1;
    }
  }

  const char* streams[] = {"shard-0-bench", "shard-1-bench", "global-bench"};
  int64_t seqs[3] = {0, 0, 0};
  std::vector<double> call_ms;
  size_t biggest_file = 0;
  const auto start = Clock::now();
  const auto period = std::chrono::duration<double>(3.0 * batch / rate);
  std::fprintf(stderr, "recent_keys_bench: %d records/s in batches of %d for %.0f s, %s\n", rate,
               batch, seconds, no_persist ? "in memory only" : path.c_str());
  for (int64_t round = 0;; ++round) {
    const auto due = start + std::chrono::duration_cast<Clock::duration>(period * round);
    if (due - start > std::chrono::duration<double>(seconds)) break;
    std::this_thread::sleep_until(due);
    for (int s = 0; s < 3; ++s) {
      std::vector<meridian::replication::RecentKeys::Record> records;
      for (int i = 0; i < batch; ++i) {
        const int64_t seq = ++seqs[s];
        records.push_back({seq, 1, "user-" + std::to_string(seq % 20000) + "-0123456789abcdef"});
      }
      const auto t0 = Clock::now();
      keys.Applied(streams[s], seqs[s] - batch + 1, seqs[s], std::move(records));
      call_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    if (std::error_code ec; !no_persist && round % 1000 == 0) {
      const auto size = std::filesystem::file_size(path, ec);
      if (!ec) biggest_file = std::max<size_t>(biggest_file, size);
    }
  }
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> sorted = call_ms;
  std::sort(sorted.begin(), sorted.end());
  auto at = [&](double q) { return sorted[static_cast<size_t>(q * (sorted.size() - 1))]; };
  const auto over = [&](double ms) {
    return std::count_if(call_ms.begin(), call_ms.end(), [&](double v) { return v > ms; });
  };
  nlohmann::json j = {{"bench", "recent_keys"},       {"persisted", !no_persist},
                      {"records_per_s", rate},        {"batch", batch},
                      {"per_stream", per_stream},     {"seconds", wall},
                      {"calls", call_ms.size()},      {"call_ms_p50", at(0.5)},
                      {"call_ms_p99", at(0.99)},      {"call_ms_p999", at(0.999)},
                      {"call_ms_max", sorted.back()}, {"calls_over_1ms", over(1)},
                      {"calls_over_5ms", over(5)},    {"biggest_file_bytes", biggest_file},
                      {"write_errors", write_errors}};
  std::printf(
      "recent keys, %s: %zu calls in %.1f s; ms per call p50 %.4f, p99 %.4f, p99.9 %.3f, max "
      "%.1f; %ld calls over 1 ms, %ld over 5 ms; file at most %zu bytes\n",
      no_persist ? "memory only" : "persisted", call_ms.size(), wall, at(0.5), at(0.99), at(0.999),
      sorted.back(), static_cast<long>(over(1)), static_cast<long>(over(5)), biggest_file);
  if (std::error_code ec; made_dir) std::filesystem::remove_all(dir, ec);
  if (absl::Status st = meridian::common::WriteTextFile(out, j.dump(2) + "\n"); !st.ok()) {
    std::fprintf(stderr, "recent_keys_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return write_errors == 0 ? 0 : 1;
}
