#pragma once

// Grow-only and positive-negative counters, delta-state (Almeida et al. 2018, section 5).

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "crdt/dot.h"

namespace meridian::crdt {

// a + b, held at the type's bounds instead of wrapping (or, signed, undefined behaviour): a
// decoder takes entries up to 2^62, and a few of them, or enough joined changes, pass 2^63.
template <class T>
T SaturatingAdd(T a, T b) {
  T sum;
  if (!__builtin_add_overflow(a, b, &sum)) return sum;
  if constexpr (std::numeric_limits<T>::is_signed) {
    if (b < 0) return std::numeric_limits<T>::min();
  }
  return std::numeric_limits<T>::max();
}

// Per-replica monotone counts; value = their sum. Each replica only raises its own entry.
// Value type, not thread-safe.
class GCounter {
 public:
  using Entry = std::pair<ReplicaId, uint64_t>;

  // Adds n at `replica`; returns the delta (that replica's new entry).
  GCounter Increment(ReplicaId replica, uint64_t n = 1) {
    uint64_t& slot = SlotOrInsert(replica);
    slot += n;
    GCounter delta;
    delta.entries_.emplace_back(replica, slot);
    return delta;
  }

  [[nodiscard]] uint64_t Value() const {  // saturates at UINT64_MAX
    uint64_t v = 0;
    for (const auto& e : entries_) v = SaturatingAdd(v, e.second);
    return v;
  }
  [[nodiscard]] uint64_t Get(ReplicaId replica) const {
    auto it = Lower(replica);
    return (it != entries_.end() && it->first == replica) ? it->second : 0;
  }

  // Pointwise maximum.
  void Join(const GCounter& other) {
    for (const auto& [r, v] : other.entries_) {
      uint64_t& slot = SlotOrInsert(r);
      slot = std::max(slot, v);
    }
  }

  [[nodiscard]] const std::vector<Entry>& entries() const { return entries_; }
  // For decoders: entries sorted by replica, unique, nonzero replica.
  static GCounter FromSorted(std::vector<Entry> entries) {
    GCounter c;
    c.entries_ = std::move(entries);
    return c;
  }

  friend bool operator==(const GCounter&, const GCounter&) = default;

 private:
  std::vector<Entry>::const_iterator Lower(ReplicaId r) const {
    return std::lower_bound(entries_.begin(), entries_.end(), r,
                            [](const Entry& e, ReplicaId x) { return e.first < x; });
  }
  uint64_t& SlotOrInsert(ReplicaId r) {
    auto it = std::lower_bound(entries_.begin(), entries_.end(), r,
                               [](const Entry& e, ReplicaId x) { return e.first < x; });
    if (it == entries_.end() || it->first != r) it = entries_.insert(it, {r, 0});
    return it->second;
  }

  std::vector<Entry> entries_;
};

// Two GCounters: increments and decrements. Value may go negative.
class PNCounter {
 public:
  PNCounter Increment(ReplicaId replica, uint64_t n = 1) {
    PNCounter d;
    d.p_ = p_.Increment(replica, n);
    return d;
  }
  PNCounter Decrement(ReplicaId replica, uint64_t n = 1) {
    PNCounter d;
    d.n_ = n_.Increment(replica, n);
    return d;
  }
  [[nodiscard]] int64_t Value() const {  // held within int64's range
    const __int128 v = static_cast<__int128>(p_.Value()) - static_cast<__int128>(n_.Value());
    return static_cast<int64_t>(std::clamp<__int128>(v, std::numeric_limits<int64_t>::min(),
                                                     std::numeric_limits<int64_t>::max()));
  }
  void Join(const PNCounter& other) {
    p_.Join(other.p_);
    n_.Join(other.n_);
  }
  [[nodiscard]] const GCounter& p() const { return p_; }
  [[nodiscard]] const GCounter& n() const { return n_; }
  static PNCounter FromParts(GCounter p, GCounter n) {
    PNCounter c;
    c.p_ = std::move(p);
    c.n_ = std::move(n);
    return c;
  }

  friend bool operator==(const PNCounter&, const PNCounter&) = default;

 private:
  GCounter p_;
  GCounter n_;
};

}  // namespace meridian::crdt
