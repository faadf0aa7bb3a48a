#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "crdt/dot.h"

namespace meridian::crdt {

// The set of dots (events) a replica has seen, kept compact as a version vector (every dot
// (r, 1..vv[r]) is in the set) plus a dot cloud for the dots seen out of order.
//
// Invariant (checked by CheckInvariants and kept by every mutator): the version vector is sorted by
// replica with no zero entries; the cloud is sorted, unique, and holds no dot the version vector
// already covers nor the dot right after it (such a dot is folded into the vector).
//
// Value type, not thread-safe.
class CausalContext {
 public:
  CausalContext() = default;

  [[nodiscard]] bool Contains(const Dot& dot) const;

  // Adds one dot, then folds the cloud into the version vector where it became contiguous.
  void Insert(const Dot& dot);

  // Makes and inserts the next dot of `replica`: (replica, vv[replica] + 1).
  // REQUIRES: `replica` has no dots in the cloud (true for the local replica, whose own events
  // are always contiguous).
  Dot Next(ReplicaId replica);

  // Set union.
  void Join(const CausalContext& other);

  // Highest counter of `replica` in the contiguous prefix (0 if none).
  [[nodiscard]] uint64_t Max(ReplicaId replica) const;

  // Calls fn(dot) for every dot in the set: version-vector ranges first, then the cloud. The number
  // of calls is the number of dots, so callers bound it with DotCount first.
  template <class Fn>
  void ForEachDot(Fn&& fn) const {
    for (const auto& [replica, max] : vv_) {
      for (uint64_t c = 1; c <= max; ++c) fn(Dot{replica, c});
    }
    for (const Dot& d : cloud_) fn(d);
  }
  // Saturates at UINT64_MAX: four version entries of 2^62 (which a decoder takes) would wrap a
  // plain sum to 0, and a caller bounding ForEachDot with it would then walk 2^64 dots.
  [[nodiscard]] uint64_t DotCount() const;

  [[nodiscard]] bool Empty() const { return vv_.empty() && cloud_.empty(); }
  // A handful of regions: the version vector lives inline, saving an allocation and a cache miss
  // on every context touched.
  using VersionVector = absl::InlinedVector<std::pair<ReplicaId, uint64_t>, 4>;
  [[nodiscard]] const VersionVector& version_vector() const { return vv_; }
  // A delta's context is a few dots out of order: keep two inline.
  using Cloud = absl::InlinedVector<Dot, 2>;
  [[nodiscard]] const Cloud& cloud() const { return cloud_; }

  // Used by the decoder after it validated the parts: sorts, removes duplicates and compacts.
  static CausalContext FromParts(std::vector<std::pair<ReplicaId, uint64_t>> vv,
                                 std::vector<Dot> cloud);

  [[nodiscard]] bool CheckInvariants() const;

  friend bool operator==(const CausalContext&, const CausalContext&) = default;

 private:
  uint64_t* Slot(ReplicaId replica);
  uint64_t& SlotOrInsert(ReplicaId replica);
  void Compact();

  VersionVector vv_;
  Cloud cloud_;
};

}  // namespace meridian::crdt
