#pragma once

// Registers: last-writer-wins (by HLC stamp) and multi-value (keeps concurrent writes).

#include <optional>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/dot_store.h"
#include "crdt/hlc.h"

namespace meridian::crdt {

// Holds the value with the highest Stamp (HLC time, then replica id). An unset register has no
// value and loses to every write. REQUIRES: T equality-comparable and ordered (used only so that
// two writes with an identical stamp, which only a forged delta can produce, still join
// deterministically).
template <class T>
class LWWRegister {
 public:
  // Writes `value` stamped `stamp`; the delta is the whole (tiny) register.
  LWWRegister Set(T value, Stamp stamp) {
    LWWRegister delta;
    delta.value_ = std::move(value);
    delta.stamp_ = stamp;
    Join(delta);
    return delta;
  }

  void Join(const LWWRegister& other) {
    if (!other.value_) return;
    if (!value_ || stamp_ < other.stamp_ || (stamp_ == other.stamp_ && *value_ < *other.value_)) {
      value_ = other.value_;
      stamp_ = other.stamp_;
    }
  }

  [[nodiscard]] const std::optional<T>& value() const { return value_; }
  [[nodiscard]] Stamp stamp() const { return stamp_; }

  friend bool operator==(const LWWRegister&, const LWWRegister&) = default;

 private:
  std::optional<T> value_;
  Stamp stamp_;
};

// Keeps every write not overwritten by a later one that saw it: after concurrent writes it holds
// all of them until one write supersedes them.
template <class T>
class MVRegister {
 public:
  MVRegister() = default;
  explicit MVRegister(Causal<DotFun<T>> state) : state_(std::move(state)) {}

  // Overwrites every value this replica has seen. The delta carries the new dot and value and,
  // in its context, the dots it overwrote.
  MVRegister Write(ReplicaId replica, T value) {
    MVRegister delta;
    state_.store.ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
    Dot dot = state_.ctx.Next(replica);
    delta.state_.ctx.Insert(dot);
    delta.state_.store.Insert(dot, std::move(value));
    state_.store.Clear();
    state_.store.Insert(dot, delta.state_.store.entries().front().second);
    return delta;
  }

  // Every current value, ordered by dot.
  [[nodiscard]] std::vector<T> Values() const {
    std::vector<T> out;
    for (const auto& e : state_.store.entries()) out.push_back(e.second);
    return out;
  }

  void Join(const MVRegister& other) { state_.Join(other.state_); }
  [[nodiscard]] MVRegister Since(const CausalContext& seen) const {
    return MVRegister(state_.Since(seen));
  }
  [[nodiscard]] const Causal<DotFun<T>>& state() const { return state_; }

  friend bool operator==(const MVRegister&, const MVRegister&) = default;

 private:
  Causal<DotFun<T>> state_;
};

}  // namespace meridian::crdt
