// Google Benchmark micro-benchmarks of crdt/: ops/s of each mutator and of joins, and bytes per
// encoded delta (reported as the counter "delta_bytes"). Run through tests/bench/run_crdt_bench.sh,
// which also writes results/crdt.json.

#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "crdt/bounded_counter.h"
#include "crdt/cart.h"
#include "crdt/codec.h"
#include "crdt/counters.h"
#include "crdt/inventory.h"
#include "crdt/or_set.h"
#include "crdt/registers.h"

namespace meridian::crdt {
namespace {

const std::vector<std::string>& Skus() {
  static const std::vector<std::string> skus = [] {
    std::vector<std::string> v;
    for (int i = 0; i < 64; ++i) v.push_back("sku-" + std::to_string(1000 + i));
    return v;
  }();
  return skus;
}

void BM_GCounterIncrement(benchmark::State& state) {
  GCounter c;
  size_t bytes = 0;
  for (auto _ : state) {
    GCounter d = c.Increment(1, 1);
    benchmark::DoNotOptimize(d);
  }
  bytes = Encode(c.Increment(1, 1)).size();
  state.counters["delta_bytes"] = static_cast<double>(bytes);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GCounterIncrement);

void BM_PNCounterDecrement(benchmark::State& state) {
  PNCounter c;
  for (auto _ : state) benchmark::DoNotOptimize(c.Decrement(2, 1));
  state.counters["delta_bytes"] = static_cast<double>(Encode(c.Decrement(2, 1)).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PNCounterDecrement);

void BM_LWWRegisterSet(benchmark::State& state) {
  LWWRegister<std::string> r;
  uint64_t t = 0;
  for (auto _ : state) benchmark::DoNotOptimize(r.Set("EUR", Stamp{HlcTimestamp{++t}, 1}));
  state.counters["delta_bytes"] =
      static_cast<double>(Encode(r.Set("EUR", Stamp{HlcTimestamp{++t}, 1})).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_LWWRegisterSet);

void BM_MVRegisterWrite(benchmark::State& state) {
  MVRegister<std::string> r;
  for (auto _ : state) benchmark::DoNotOptimize(r.Write(1, "value"));
  state.counters["delta_bytes"] = static_cast<double>(Encode(r.Write(1, "value")).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_MVRegisterWrite);

void BM_AWORSetAdd(benchmark::State& state) {
  AWORSet<std::string> s;
  size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(s.Add(1, Skus()[i++ % 16]));
  state.counters["delta_bytes"] = static_cast<double>(Encode(s.Add(1, Skus()[0])).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AWORSetAdd);

void BM_AWORSetRemove(benchmark::State& state) {
  AWORSet<std::string> s;
  size_t i = 0;
  for (auto _ : state) {
    const std::string& e = Skus()[i++ % 16];
    s.Add(1, e);
    benchmark::DoNotOptimize(s.Remove(e));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AWORSetRemove);

void BM_ORMapCounterUpdate(benchmark::State& state) {
  ORMap<std::string, CounterStore> m;
  size_t i = 0;
  for (auto _ : state) {
    // Each key is removed after every fourth change, as cart lines are, so values stay small.
    if (i % 32 >= 24) m.Remove(Skus()[i % 8]);
    benchmark::DoNotOptimize(m.Update(1, Skus()[i++ % 8], CounterAdd(1)));
  }
  state.counters["delta_bytes"] =
      static_cast<double>(Encode(m.Update(1, Skus()[0], CounterAdd(1))).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ORMapCounterUpdate);

void BM_CartAdd(benchmark::State& state) {
  Cart c(1);
  size_t i = 0;
  for (auto _ : state) {
    if (i % 24 >= 18) c.Remove(Skus()[i % 6]);  // every line removed after its third change
    benchmark::DoNotOptimize(c.Add(Skus()[i++ % 6], 1));
  }
  state.counters["delta_bytes"] = static_cast<double>(Encode(c.Add(Skus()[0], 1)).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CartAdd);

void BM_CartRemove(benchmark::State& state) {
  Cart c(1);
  size_t i = 0;
  for (auto _ : state) {
    const std::string& sku = Skus()[i++ % 6];
    c.Add(sku, 2);
    benchmark::DoNotOptimize(c.Remove(sku));
  }
  c.Add(Skus()[0], 2);
  state.counters["delta_bytes"] = static_cast<double>(Encode(c.Remove(Skus()[0])).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CartRemove);

void BM_CartJoinDelta(benchmark::State& state) {
  Cart src(1), dst(2);
  std::vector<Cart> deltas;
  for (int i = 0; i < 4096; ++i) {
    deltas.push_back(i % 24 >= 18 ? src.Remove(Skus()[i % 6]) : src.Add(Skus()[i % 6], 1));
  }
  // Each pass merges the whole history once into a fresh replica (time to copy it excluded).
  size_t i = 0;
  for (auto _ : state) {
    if (i % deltas.size() == 0) {
      state.PauseTiming();
      dst = Cart(2);
      state.ResumeTiming();
    }
    dst.Merge(deltas[i++ % deltas.size()]);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CartJoinDelta);

void BM_CartJoinState(benchmark::State& state) {
  Cart a(1), b(2);
  for (int i = 0; i < 6; ++i) {
    a.Add(Skus()[i], 1);
    b.Add(Skus()[i + 3], 2);
  }
  for (auto _ : state) {
    Cart x = a;
    x.Merge(b);
    benchmark::DoNotOptimize(x);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CartJoinState);

void BM_CartDeltaEncodeDecode(benchmark::State& state) {
  Cart c(1);
  Cart d = c.Add("sku-0042", 2);
  std::string buf;
  for (auto _ : state) {
    buf.clear();
    EncodeTo(d, &buf);
    auto back = DecodeCart(buf);
    benchmark::DoNotOptimize(back);
  }
  state.counters["delta_bytes"] = static_cast<double>(buf.size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CartDeltaEncodeDecode);

void BM_BoundedCounterDecrement(benchmark::State& state) {
  BoundedCounter c;
  (void)c.Increment(1, BoundedCounter::kMaxUnits - 1, 1);
  uint64_t seq = 1;
  for (auto _ : state) benchmark::DoNotOptimize(c.Decrement(1, 1, ++seq));
  state.counters["delta_bytes"] = static_cast<double>(Encode(*c.Decrement(1, 1, ++seq)).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BoundedCounterDecrement);

void BM_BoundedCounterTransfer(benchmark::State& state) {
  BoundedCounter c;
  (void)c.Increment(1, BoundedCounter::kMaxUnits - 1, 1);
  uint64_t seq = 1;
  for (auto _ : state) {
    ++seq;
    benchmark::DoNotOptimize(c.Move(1, static_cast<ReplicaId>(2 + seq % 3), 1, seq));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BoundedCounterTransfer);

void BM_InventoryTake(benchmark::State& state) {
  Inventory inv(1);
  for (const auto& sku : Skus()) (void)inv.Restock(sku, BoundedCounter::kMaxUnits - 1);
  size_t i = 0;
  for (auto _ : state) benchmark::DoNotOptimize(inv.Take(Skus()[i++ % Skus().size()], 1));
  state.counters["delta_bytes"] = static_cast<double>(Encode(*inv.Take(Skus()[0], 1)).size());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_InventoryTake);

void BM_InventoryJoinDelta(benchmark::State& state) {
  Inventory src(1), dst(2);
  std::vector<Inventory> deltas;
  for (const auto& sku : Skus()) deltas.push_back(*src.Restock(sku, 1000000));
  for (int i = 0; i < 4096; ++i) deltas.push_back(*src.Take(Skus()[i % Skus().size()], 1));
  size_t i = 0;
  for (auto _ : state) {
    dst.Merge(deltas[i++ % deltas.size()]);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_InventoryJoinDelta);

}  // namespace
}  // namespace meridian::crdt

BENCHMARK_MAIN();
