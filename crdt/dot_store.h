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

#include "absl/container/inlined_vector.h"
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
  // Most values hold one or two dots (a cart line changed once or twice, a set element): keep
  // them inline, which saves an allocation and a cache miss per value.
  using Entries = absl::InlinedVector<Entry, 2>;

  [[nodiscard]] bool Empty() const { return entries_.empty(); }
  [[nodiscard]] size_t Size() const { return entries_.size(); }
  [[nodiscard]] uint64_t DotCount() const { return entries_.size(); }
  [[nodiscard]] const Entries& entries() const { return entries_; }

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

  // this := store part of join((this, ctx), (other, other_ctx)). In place: a delta usually adds
  // one dot past our last one, so the common case is an append.
  void JoinWith(const CausalContext& ctx, const DotFun& other, const CausalContext& other_ctx) {
    if (entries_.empty() && other.entries_.empty()) return;
    // Our entries: keep when the other side has the dot too (max value) or has not seen it.
    auto b = other.entries_.begin();
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [&](Entry& e) {
                                    while (b != other.entries_.end() && b->first < e.first) ++b;
                                    if (b != other.entries_.end() && b->first == e.first) {
                                      if (e.second < b->second) e.second = b->second;
                                      return false;
                                    }
                                    return other_ctx.Contains(e.first);
                                  }),
                   entries_.end());
    // Their entries we lack: take those our context has not seen (else we deleted them).
    bool sorted = true;
    for (const Entry& e : other.entries_) {
      if (ctx.Contains(e.first)) continue;
      auto it = std::lower_bound(entries_.begin(), entries_.end(), e.first,
                                 [](const Entry& x, const Dot& d) { return x.first < d; });
      if (it != entries_.end() && it->first == e.first) continue;  // kept above
      if (!entries_.empty() && !(entries_.back().first < e.first)) sorted = false;
      entries_.push_back(e);
    }
    if (!sorted) {
      std::sort(entries_.begin(), entries_.end(),
                [](const Entry& x, const Entry& y) { return x.first < y.first; });
    }
  }

  // Used by decoders: entries must be sorted by dot and unique.
  template <class Vec>
  [[nodiscard]] static bool IsSortedUnique(const Vec& e) {
    for (size_t i = 1; i < e.size(); ++i)
      if (!(e[i - 1].first < e[i].first)) return false;
    return true;
  }
  template <class Vec>
  static DotFun FromSorted(Vec&& entries) {
    DotFun f;
    f.entries_.assign(std::make_move_iterator(entries.begin()),
                      std::make_move_iterator(entries.end()));
    return f;
  }

  friend bool operator==(const DotFun&, const DotFun&) = default;

 private:
  Entries entries_;
};

using DotSet = DotFun<Unit>;

// A map K -> S where S is itself a dot store; all nested stores share the enclosing context.
// Keys whose store becomes empty disappear. REQUIRES: K totally ordered; S a dot store.
template <class K, class S>
class DotMap {
 public:
  using Entry = std::pair<K, S>;
  // A cart holds a handful of lines: keep up to four inline, next to the cart itself, which
  // saves a dependent cache miss per access on a large set of documents.
  using Entries = absl::InlinedVector<Entry, 4>;

  [[nodiscard]] bool Empty() const { return entries_.empty(); }
  [[nodiscard]] size_t Size() const { return entries_.size(); }
  [[nodiscard]] const Entries& entries() const { return entries_; }

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
  [[nodiscard]] uint64_t DotCount() const {
    uint64_t n = 0;
    for (const auto& e : entries_) n += e.second.DotCount();
    return n;
  }

  [[nodiscard]] DotMap Unseen(const CausalContext& seen) const {
    DotMap out;
    for (const auto& e : entries_) {
      S s = e.second.Unseen(seen);
      if (!s.Empty()) out.entries_.emplace_back(e.first, std::move(s));
    }
    return out;
  }

  // In place: a delta touches one or two keys, so rebuilding the whole map would dominate.
  void JoinWith(const CausalContext& ctx, const DotMap& other, const CausalContext& other_ctx) {
    static const S kEmpty{};
    // Store dots are always part of their context. When the other context holds nothing else, it
    // removes nothing, and our keys it does not mention stay as they are: the common case of a
    // delta that only adds.
    const bool other_removes = other_ctx.DotCount() != other.DotCount();
    absl::InlinedVector<const Entry*, 4> theirs_only;
    auto b = other.entries_.begin();
    for (Entry& a : entries_) {
      while (b != other.entries_.end() && b->first < a.first) theirs_only.push_back(&*b++);
      if (b != other.entries_.end() && b->first == a.first) {
        a.second.JoinWith(ctx, b->second, other_ctx);
        ++b;
      } else if (other_removes) {
        a.second.JoinWith(ctx, kEmpty, other_ctx);
      }
    }
    for (; b != other.entries_.end(); ++b) theirs_only.push_back(&*b);
    entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                  [](const Entry& e) { return e.second.Empty(); }),
                   entries_.end());
    for (const Entry* e : theirs_only) {
      S s;
      s.JoinWith(ctx, e->second, other_ctx);
      if (s.Empty()) continue;
      auto it = LowerMut(e->first);
      entries_.insert(it, Entry{e->first, std::move(s)});
    }
  }

  template <class Vec>
  [[nodiscard]] static bool IsSortedUnique(const Vec& e) {
    for (size_t i = 1; i < e.size(); ++i)
      if (!(e[i - 1].first < e[i].first)) return false;
    return true;
  }
  template <class Vec>
  static DotMap FromSorted(Vec&& entries) {
    DotMap m;
    m.entries_.assign(std::make_move_iterator(entries.begin()),
                      std::make_move_iterator(entries.end()));
    return m;
  }

  friend bool operator==(const DotMap&, const DotMap&) = default;

 private:
  typename Entries::const_iterator Lower(const K& key) const {
    return std::lower_bound(entries_.begin(), entries_.end(), key,
                            [](const Entry& e, const K& k) { return e.first < k; });
  }
  typename Entries::iterator LowerMut(const K& key) {
    return std::lower_bound(entries_.begin(), entries_.end(), key,
                            [](const Entry& e, const K& k) { return e.first < k; });
  }

  Entries entries_;
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
