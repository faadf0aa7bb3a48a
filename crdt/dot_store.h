#pragma once

// Dot stores: the payloads of causal CRDTs (Almeida, Shoker, Baquero, "Delta state replicated data
// types", 2018, section 6). A causal CRDT is a pair (store, causal context); the join of two such
// pairs keeps an entry when both sides have it, or when one side has it and the other side's
// context has not seen its dot (so the other side has not deleted it). This is what makes removes
// "observed-remove": deleting drops entries but keeps their dots in the context.
//
// All stores are flat sorted vectors: the documents Meridian keeps (carts, small sets) hold a few
// entries each, where a vector beats a tree by a wide margin. Value types, not thread-safe.

#include <algorithm>
#include <compare>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/dot.h"

namespace meridian::crdt {

// Unit value for DotSet.
struct Unit {
  friend auto operator<=>(const Unit&, const Unit&) = default;
};

// A map dot -> V. A dot names one write, so two replicas holding the same dot hold the same value;
// the join still picks max(V) for dots found on both sides so that a forged value cannot make
// replicas diverge. REQUIRES: V is totally ordered.
template <class V>
class DotFun {
 public:
  using Entry = std::pair<Dot, V>;

  [[nodiscard]] bool Empty() const { return entries_.empty(); }
  [[nodiscard]] size_t Size() const { return entries_.size(); }
  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }

  // Adds (dot, value). REQUIRES: dot is new (not yet in the store).
  void Insert(const Dot& dot, V value) {
    if (entries_.empty() || entries_.back().first < dot) {
      entries_.emplace_back(dot, std::move(value));
      return;
    }
    auto it = std::lower_bound(entries_.begin(), entries_.end(), dot,
                               [](const Entry& e, const Dot& d) { return e.first < d; });
    if (it != entries_.end() && it->first == dot) {
      if (it->second < value) it->second = std::move(value);
      return;
    }
    entries_.insert(it, Entry{dot, std::move(value)});
  }

  void Clear() { entries_.clear(); }

  template <class Fn>
  void ForEachDot(Fn&& fn) const {
    for (const auto& e : entries_) fn(e.first);
  }

  // Keeps only entries whose dot is not in `seen`: what a peer that has seen `seen` lacks.
  [[nodiscard]] DotFun Unseen(const CausalContext& seen) const {
    DotFun out;
    for (const auto& e : entries_)
      if (!seen.Contains(e.first)) out.entries_.push_back(e);
    return out;
  }

  // this := store part of join((this, ctx), (other, other_ctx)).
  void JoinWith(const CausalContext& ctx, const DotFun& other, const CausalContext& other_ctx) {
    if (other.entries_.empty()) {
      if (entries_.empty()) return;
      std::erase_if(entries_, [&](const Entry& e) { return other_ctx.Contains(e.first); });
      return;
    }
    std::vector<Entry> out;
    out.reserve(entries_.size() + other.entries_.size());
    auto a = entries_.begin();
    auto b = other.entries_.begin();
    while (a != entries_.end() || b != other.entries_.end()) {
      if (b == other.entries_.end() || (a != entries_.end() && a->first < b->first)) {
        if (!other_ctx.Contains(a->first)) out.push_back(std::move(*a));
        ++a;
      } else if (a == entries_.end() || b->first < a->first) {
        if (!ctx.Contains(b->first)) out.push_back(*b);
        ++b;
      } else {
        out.emplace_back(a->first, std::max(a->second, b->second));
        ++a;
        ++b;
      }
    }
    entries_ = std::move(out);
  }

  // Used by decoders: entries must be sorted by dot and unique.
  [[nodiscard]] static bool IsSortedUnique(const std::vector<Entry>& e) {
    for (size_t i = 1; i < e.size(); ++i)
      if (!(e[i - 1].first < e[i].first)) return false;
    return true;
  }
  static DotFun FromSorted(std::vector<Entry> entries) {
    DotFun f;
    f.entries_ = std::move(entries);
    return f;
  }

  friend bool operator==(const DotFun&, const DotFun&) = default;

 private:
  std::vector<Entry> entries_;
};

using DotSet = DotFun<Unit>;

// A map K -> S where S is itself a dot store; all nested stores share the enclosing context.
// Keys whose store becomes empty disappear. REQUIRES: K totally ordered; S a dot store.
template <class K, class S>
class DotMap {
 public:
  using Entry = std::pair<K, S>;

  [[nodiscard]] bool Empty() const { return entries_.empty(); }
  [[nodiscard]] size_t Size() const { return entries_.size(); }
  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }

  [[nodiscard]] const S* Find(const K& key) const {
    auto it = Lower(key);
    return (it != entries_.end() && it->first == key) ? &it->second : nullptr;
  }
  S& FindOrInsert(const K& key) {
    auto it = LowerMut(key);
    if (it == entries_.end() || it->first != key) it = entries_.insert(it, Entry{key, S{}});
    return it->second;
  }
  // Drops the key. Returns whether it was present.
  bool Erase(const K& key) {
    auto it = LowerMut(key);
    if (it == entries_.end() || it->first != key) return false;
    entries_.erase(it);
    return true;
  }
  void Clear() { entries_.clear(); }

  template <class Fn>
  void ForEachDot(Fn&& fn) const {
    for (const auto& e : entries_) e.second.ForEachDot(fn);
  }

  [[nodiscard]] DotMap Unseen(const CausalContext& seen) const {
    DotMap out;
    for (const auto& e : entries_) {
      S s = e.second.Unseen(seen);
      if (!s.Empty()) out.entries_.emplace_back(e.first, std::move(s));
    }
    return out;
  }

  void JoinWith(const CausalContext& ctx, const DotMap& other, const CausalContext& other_ctx) {
    std::vector<Entry> out;
    out.reserve(entries_.size() + other.entries_.size());
    static const S kEmpty{};
    auto a = entries_.begin();
    auto b = other.entries_.begin();
    while (a != entries_.end() || b != other.entries_.end()) {
      if (b == other.entries_.end() || (a != entries_.end() && a->first < b->first)) {
        a->second.JoinWith(ctx, kEmpty, other_ctx);
        if (!a->second.Empty()) out.push_back(std::move(*a));
        ++a;
      } else if (a == entries_.end() || b->first < a->first) {
        S s;
        s.JoinWith(ctx, b->second, other_ctx);
        if (!s.Empty()) out.emplace_back(b->first, std::move(s));
        ++b;
      } else {
        a->second.JoinWith(ctx, b->second, other_ctx);
        if (!a->second.Empty()) out.push_back(std::move(*a));
        ++a;
        ++b;
      }
    }
    entries_ = std::move(out);
  }

  [[nodiscard]] static bool IsSortedUnique(const std::vector<Entry>& e) {
    for (size_t i = 1; i < e.size(); ++i)
      if (!(e[i - 1].first < e[i].first)) return false;
    return true;
  }
  static DotMap FromSorted(std::vector<Entry> entries) {
    DotMap m;
    m.entries_ = std::move(entries);
    return m;
  }

  friend bool operator==(const DotMap&, const DotMap&) = default;

 private:
  typename std::vector<Entry>::const_iterator Lower(const K& key) const {
    return std::lower_bound(entries_.begin(), entries_.end(), key,
                            [](const Entry& e, const K& k) { return e.first < k; });
  }
  typename std::vector<Entry>::iterator LowerMut(const K& key) {
    return std::lower_bound(entries_.begin(), entries_.end(), key,
                            [](const Entry& e, const K& k) { return e.first < k; });
  }

  std::vector<Entry> entries_;
};

// A causal CRDT: a dot store and the context of every dot it has seen. Join is the only merge,
// for states and deltas alike.
template <class S>
struct Causal {
  S store;
  CausalContext ctx;

  void Join(const Causal& other) {
    store.JoinWith(ctx, other.store, other.ctx);
    ctx.Join(other.ctx);
  }

  // The part of this state a replica that has seen `seen` lacks: entries with unseen dots, and a
  // context that also carries the dots it has seen but that were removed here since. Falls back to
  // the whole state when the context is too large to enumerate (a whole state is always a valid
  // delta). `max_dots` bounds the work.
  [[nodiscard]] Causal Since(const CausalContext& seen, uint64_t max_dots = 1u << 16) const {
    if (ctx.DotCount() > max_dots) return *this;
    Causal out;
    out.store = store.Unseen(seen);
    std::vector<Dot> live;
    store.ForEachDot([&](const Dot& d) { live.push_back(d); });
    std::sort(live.begin(), live.end());
    ctx.ForEachDot([&](const Dot& d) {
      if (!seen.Contains(d) || !std::binary_search(live.begin(), live.end(), d)) out.ctx.Insert(d);
    });
    return out;
  }

  // The part of this delta that is new to `state`: entries whose dot `state` has not seen, and
  // context dots that are unseen there or that retire an entry `state` still holds. Joining the
  // result into `state` equals joining *this. Returns *this when the context is too large to
  // enumerate.
  [[nodiscard]] Causal NovelPart(const Causal& state, uint64_t max_dots = 1u << 16) const {
    if (ctx.DotCount() > max_dots) return *this;
    Causal out;
    out.store = store.Unseen(state.ctx);
    std::vector<Dot> mine, theirs;
    store.ForEachDot([&](const Dot& d) { mine.push_back(d); });
    state.store.ForEachDot([&](const Dot& d) { theirs.push_back(d); });
    std::sort(mine.begin(), mine.end());
    std::sort(theirs.begin(), theirs.end());
    ctx.ForEachDot([&](const Dot& d) {
      if (!state.ctx.Contains(d) || (std::binary_search(theirs.begin(), theirs.end(), d) &&
                                     !std::binary_search(mine.begin(), mine.end(), d))) {
        out.ctx.Insert(d);
      }
    });
    return out;
  }

  friend bool operator==(const Causal&, const Causal&) = default;
};

}  // namespace meridian::crdt
