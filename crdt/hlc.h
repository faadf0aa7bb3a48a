#pragma once

#include <compare>
#include <cstdint>

#include "crdt/dot.h"

namespace meridian::crdt {

// A hybrid logical clock timestamp (Kulkarni et al. 2014): 48 bits of physical milliseconds and
// 16 bits of logical counter in one uint64, so it orders like its integer value. Ties between
// replicas are broken by the replica id (Stamp below).
struct HlcTimestamp {
  uint64_t value = 0;

  static constexpr int kLogicalBits = 16;
  static constexpr uint64_t kLogicalMask = (uint64_t{1} << kLogicalBits) - 1;
  static constexpr uint64_t kMaxPhysicalMs = (uint64_t{1} << (64 - kLogicalBits)) - 1;

  [[nodiscard]] uint64_t physical_ms() const { return value >> kLogicalBits; }
  [[nodiscard]] uint64_t logical() const { return value & kLogicalMask; }
  static HlcTimestamp Make(uint64_t physical_ms, uint64_t logical) {
    return HlcTimestamp{(physical_ms << kLogicalBits) | (logical & kLogicalMask)};
  }

  friend auto operator<=>(const HlcTimestamp&, const HlcTimestamp&) = default;
};

// A totally ordered write stamp: HLC time, then replica id.
struct Stamp {
  HlcTimestamp time;
  ReplicaId replica = kNoReplica;

  friend auto operator<=>(const Stamp&, const Stamp&) = default;
};

// The clock itself. It reads no time: the caller passes the physical time (from its Clock seam),
// which keeps crdt/ free of I/O and lets the simulator drive it.
//
// Guarantees: Now() is strictly increasing; after Observe(t), Now() > t. Physical time going
// backwards does not move the clock backwards. When the logical counter would overflow (65,536
// events in one millisecond) the clock borrows the next millisecond. Not thread-safe.
class Hlc {
 public:
  // Timestamp for a local event or a send.
  HlcTimestamp Now(uint64_t physical_now_ms);
  // Merge a timestamp received from a peer, then timestamp the receive event.
  HlcTimestamp Observe(HlcTimestamp remote, uint64_t physical_now_ms);
  [[nodiscard]] HlcTimestamp last() const { return last_; }

 private:
  HlcTimestamp Advance(uint64_t floor_ms, uint64_t physical_now_ms);

  HlcTimestamp last_;
};

}  // namespace meridian::crdt
