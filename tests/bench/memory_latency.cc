// How long one dependent memory load takes on this machine, by working-set size (not a pass/fail
// test). A pointer chase through a random cycle of 256-byte cells spread over each span: every
// load waits for the one before, as a cart op waits first for its `Cart` and then for its block
// (tests/bench/crdt_compare_meridian). The step from cache to DRAM latency shows how much of the
// shared L3 this VM gets at the moment, which is what moves the local cart ops/s of
// crdt_compare.sh from hour to hour.
//
//   memory_latency [--spans-mb 1,2,4,8,16,64] [--loads 2000000] [--huge-pages]
//                  [--out results/memory_latency.json]
// --huge-pages asks for transparent huge pages (madvise) on the spans, to show the part that
// TLB misses take.

#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/cli.h"

namespace {

constexpr size_t kCell = 256;
constexpr size_t kHuge = size_t{2} << 20;

// ns per dependent load over `span` bytes, or a negative value when the memory is not to be had.
double Chase(size_t span, size_t loads, bool huge) {
  const size_t mapped = span + kHuge;
  void* raw = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return -1;
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) &
                                       ~static_cast<uintptr_t>(kHuge - 1));
  if (huge) madvise(base, span, MADV_HUGEPAGE);
  std::memset(base, 0, span);
  const size_t cells = span / kCell;
  std::vector<uint32_t> order(cells);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(42));
  for (size_t i = 0; i < cells; ++i) {
    char* from = base + size_t{order[i]} * kCell;
    char* to = base + size_t{order[(i + 1) % cells]} * kCell;
    std::memcpy(from, &to, sizeof to);
  }
  // Each load's address is the value the previous one read; the empty asm keeps the compiler
  // from reasoning the chase away.
  auto chase = [](char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      std::memcpy(&p, p, sizeof p);
      asm volatile("" : "+r"(p));
    }
    return p;
  };
  char* p = chase(base + size_t{order[0]} * kCell, cells);  // warm the cycle once
  const auto t0 = std::chrono::steady_clock::now();
  p = chase(p, loads);
  const auto t1 = std::chrono::steady_clock::now();
  if (p == nullptr) std::fputs("", stderr);
  munmap(raw, mapped);
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(loads);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Dependent-load latency by working-set size (pointer chase)"};
  std::vector<double> spans_mb{1, 2, 4, 8, 16, 64};
  size_t loads = 2'000'000;
  bool huge = false;
  std::string out = "results/memory_latency.json";
  app.add_option("--spans-mb", spans_mb, "Working-set sizes in MiB")
      ->delimiter(',')
      ->check(CLI::Range(0.25, 4096.0));
  app.add_option("--loads", loads, "Dependent loads timed per span")
      ->check(CLI::Range(size_t{1000}, size_t{1'000'000'000}));
  app.add_flag("--huge-pages", huge, "madvise(MADV_HUGEPAGE) on the spans");
  app.add_option("--out", out, "Results file (JSON)");
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;

  nlohmann::json rows = nlohmann::json::array();
  std::printf("%10s  %16s\n", "span MiB", "ns per load");
  for (double mb : spans_mb) {
    const size_t span = std::max(kCell * 2, static_cast<size_t>(mb * 1024 * 1024) / kCell * kCell);
    const double ns = Chase(span, loads, huge);
    if (ns < 0) {
      std::fprintf(stderr, "memory_latency: cannot map %.2f MiB\n", mb);
      return 1;
    }
    std::printf("%10.2f  %16.1f\n", mb, ns);
    rows.push_back({{"span_mib", mb}, {"ns_per_dependent_load", ns}});
  }
  nlohmann::json doc{{"huge_pages", huge}, {"loads_per_span", loads}, {"results", rows}};
  std::ofstream file(out);
  if (!file) {
    std::fprintf(stderr, "memory_latency: cannot write %s\n", out.c_str());
    return 1;
  }
  file << doc.dump(2) << "\n";
  std::printf("wrote %s\n", out.c_str());
  return 0;
}
