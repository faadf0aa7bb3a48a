#pragma once

// The region's view of order-ownership leases (replication/lease.h runs in the replicator and
// pushes its view here through RegionControl.SetLeases). The region consults it before every
// order mutation: it acts on an order only while it holds the order's lease group, at that
// group's epoch, and until the lease's remaining time (counted from when the push arrived, minus
// a safety margin for the push's own transit) has run out.
//
// Without replication (a single region) every order belongs to this region at epoch 1, always.
// Thread-safe.

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace meridian::region {

struct LeaseGrant {
  uint32_t group = 0;        // the region (replica id) whose orders these are
  uint64_t epoch = 0;        // the highest epoch known won (the fence)
  uint32_t owner = 0;        // who won it (0: unknown)
  bool usable = false;       // this region may mutate the group's orders
  int64_t valid_for_ms = 0;  // when usable: for how much longer, as the replicator saw it
};

class LeaseTable {
 public:
  using Clock = std::chrono::steady_clock;

  // `self`: this region's replica id. `managed`: leases come from a replicator; when false this
  // region owns its own group forever at epoch 1 (a single-region deployment).
  LeaseTable(uint32_t self, bool managed, int64_t margin_ms = 100)
      : self_(self), managed_(managed), margin_ms_(margin_ms) {}

  // The replicator's view, as of now. Groups not mentioned keep their previous entry.
  void Update(const std::vector<LeaseGrant>& grants);

  struct Decision {
    bool mine = false;   // this region holds the group's lease now
    uint64_t epoch = 0;  // the epoch to write with (when mine), else the known fence
    uint32_t owner = 0;  // the owner to forward to (when not mine; 0: unknown)
  };
  [[nodiscard]] Decision ForGroup(uint32_t group) const;
  // Whether another region won `group`'s lease after this one, as a push of the last `fresh`
  // said (a replicator pushes every tick): the case of a region back from a loss whose group a
  // survivor took over and has not handed back. Not when the lease simply lapsed here (cut off
  // from a majority, starting): then no other region can take orders for it either.
  [[nodiscard]] bool HeldElsewhere(uint32_t group, std::chrono::milliseconds fresh) const;
  // The epoch this region must fence writes with for `group` (the highest known won epoch).
  [[nodiscard]] uint64_t Fence(uint32_t group) const;
  [[nodiscard]] bool managed() const { return managed_; }
  [[nodiscard]] uint32_t self() const { return self_; }

  struct Entry {
    LeaseGrant grant;
    Clock::time_point usable_until;
    Clock::time_point updated;
  };
  [[nodiscard]] std::map<uint32_t, Entry> Snapshot() const;

 private:
  uint32_t self_;
  bool managed_;
  int64_t margin_ms_;
  mutable std::mutex mu_;
  std::map<uint32_t, Entry> entries_;
};

}  // namespace meridian::region
