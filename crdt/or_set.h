#pragma once

// Add-wins observed-remove set and observed-remove map with nested causal values.

#include <cstdint>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/counters.h"
#include "crdt/dot_store.h"

namespace meridian::crdt {

// Add-wins observed-remove set. An element is present while it has a live dot. Remove drops only
// the dots it has seen, so an add concurrent with a remove survives (add wins), and a removed
// element comes back only through a new add. REQUIRES: E totally ordered. Value type.
template <class E>
class AWORSet {
 public:
  using State = Causal<DotMap<E, DotSet>>;

  AWORSet() = default;
  explicit AWORSet(State state) : state_(std::move(state)) {}

  // Adds `e` with a fresh dot; the delta also retires the element's older dots (its context
  // covers them), so the set does not accumulate dots for an element added many times.
  AWORSet Add(ReplicaId replica, const E& e) {
    AWORSet delta;
    if (const DotSet* old = state_.store.Find(e)) {
      old->ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
    }
    Dot dot = state_.ctx.Next(replica);
    delta.state_.ctx.Insert(dot);
    delta.state_.store.FindOrInsert(e).Insert(dot, Unit{});
    DotSet& mine = state_.store.FindOrInsert(e);
    mine.Clear();
    mine.Insert(dot, Unit{});
    return delta;
  }

  // Removes the dots of `e` this replica has seen.
  AWORSet Remove(const E& e) {
    AWORSet delta;
    if (const DotSet* old = state_.store.Find(e)) {
      old->ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
      state_.store.Erase(e);
    }
    return delta;
  }

  [[nodiscard]] bool Contains(const E& e) const { return state_.store.Find(e) != nullptr; }
  [[nodiscard]] std::vector<E> Elements() const {
    std::vector<E> out;
    for (const auto& entry : state_.store.entries()) out.push_back(entry.first);
    return out;
  }

  void Join(const AWORSet& other) { state_.Join(other.state_); }
  [[nodiscard]] AWORSet Since(const CausalContext& seen) const {
    return AWORSet(state_.Since(seen));
  }
  [[nodiscard]] const State& state() const { return state_; }

  friend bool operator==(const AWORSet&, const AWORSet&) = default;

 private:
  State state_;
};

// Hands out the next dots of one replica without touching the context, so that the delta they go
// into can be joined into the state afterwards (join keeps an entry only if the context has not
// seen its dot yet).
class DotGen {
 public:
  DotGen(const CausalContext& ctx, ReplicaId replica) : ctx_(ctx), replica_(replica) {}
  Dot Next() { return Dot{replica_, ctx_.Max(replica_) + ++issued_}; }

 private:
  const CausalContext& ctx_;
  ReplicaId replica_;
  uint64_t issued_ = 0;
};

// Observed-remove map K -> nested causal value with dot store S (DotSet, DotFun<T>, DotMap<..>).
// Nested values share the map's context. Removing a key drops only the dots it has seen, so a
// concurrent update of the nested value survives with just the unseen part.
template <class K, class S>
class ORMap {
 public:
  using State = Causal<DotMap<K, S>>;

  ORMap() = default;
  explicit ORMap(State state) : state_(std::move(state)) {}

  // Applies a nested mutator to the value at `key` (empty if absent) as `replica`.
  // `fn(const S& current, DotGen& dots)` returns the nested delta as Causal<S>, taking new dots
  // from `dots`. Returns the map delta {key: nested delta}.
  template <class Fn>
  ORMap Update(ReplicaId replica, const K& key, Fn&& fn) {
    static const S kEmpty{};
    const S* current = state_.store.Find(key);
    DotGen dots(state_.ctx, replica);
    Causal<S> inner = fn(current ? *current : kEmpty, dots);
    ORMap delta;
    if (!inner.store.Empty()) delta.state_.store.FindOrInsert(key) = std::move(inner.store);
    delta.state_.ctx = std::move(inner.ctx);
    // Apply the delta to ourselves: the one join keeps state and delta consistent by construction.
    state_.Join(delta.state_);
    return delta;
  }

  // Removes the key's observed dots.
  ORMap Remove(const K& key) {
    ORMap delta;
    if (const S* cur = state_.store.Find(key)) {
      cur->ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
      state_.store.Erase(key);
    }
    return delta;
  }

  [[nodiscard]] const S* Find(const K& key) const { return state_.store.Find(key); }
  void Join(const ORMap& other) { state_.Join(other.state_); }
  [[nodiscard]] ORMap Since(const CausalContext& seen) const { return ORMap(state_.Since(seen)); }
  [[nodiscard]] const State& state() const { return state_; }

  friend bool operator==(const ORMap&, const ORMap&) = default;

 private:
  State state_;
};

// Nested mutators usable as ORMap::Update functions. A causal counter keeps one dot per change
// (dot -> signed amount); its value is the sum. Because every change has its own dot, removing the
// enclosing key retires exactly the changes that were seen: a concurrent change survives alone,
// and the removed units never come back (unlike a counter that keeps one running total per
// replica).
using CounterStore = DotFun<int64_t>;

inline int64_t CounterValue(const CounterStore& s) {  // held within int64's range
  int64_t v = 0;
  for (const auto& e : s.entries()) v = SaturatingAdd(v, e.second);
  return v;
}

// Returns a nested mutator adding `amount` (may be negative).
inline auto CounterAdd(int64_t amount) {
  return [amount](const CounterStore&, DotGen& dots) {
    Causal<CounterStore> d;
    Dot dot = dots.Next();
    d.store.Insert(dot, amount);
    d.ctx.Insert(dot);
    return d;
  };
}

// Returns a nested mutator that turns on an enable-wins flag (a DotSet value).
inline auto FlagEnable() {
  return [](const DotSet& cur, DotGen& dots) {
    Causal<DotSet> d;
    cur.ForEachDot([&](const Dot& x) { d.ctx.Insert(x); });
    Dot dot = dots.Next();
    d.store.Insert(dot, Unit{});
    d.ctx.Insert(dot);
    return d;
  };
}

}  // namespace meridian::crdt
