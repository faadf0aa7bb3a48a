#pragma once

// Bounded counter (escrow), after Balegas et al., "Extending eventually consistent cloud databases
// for enforcing numeric invariants" (SRDS 2015): a non-negative counter whose decrements are split
// into per-replica rights. A replica decrements only within the rights it holds, so no interleaving
// of concurrent decrements can take the global value below zero, even during a partition.
//
// State: P[(i, j)] for i != j is the total of rights replica i ever transferred to j; P[(i, i)] is
// the total i ever added by increments (which become i's rights); U[i] is the total i ever
// decremented. All entries only grow and each is written by one replica (i), so join is the
// pointwise maximum. rights(i) = P[i][i] + sum_j P[j][i] - sum_j P[i][j] - U[i];
// value = sum_i P[i][i] - sum_i U[i].
//
// Every entry also carries `seq`, the writer's event number when it last changed; (writer, seq) is
// a dot, so "what changed since context C" is the entries whose dot C has not seen.

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "crdt/causal_context.h"
#include "crdt/dot.h"

namespace meridian::crdt {

class BoundedCounter {
 public:
  // Upper bound for any entry (about 10^12 units); decoders reject larger values.
  static constexpr uint64_t kMaxUnits = uint64_t{1} << 40;
  static constexpr size_t kMaxReplicas = 256;
  // The most Received or Consumed can be: one entry of kMaxUnits per replica.
  static constexpr uint64_t kMaxTotal = kMaxUnits * kMaxReplicas;

  struct Transfer {  // P[(from, to)]; from == to holds increments.
    ReplicaId from = kNoReplica;
    ReplicaId to = kNoReplica;
    uint64_t units = 0;
    uint64_t seq = 0;
    friend bool operator==(const Transfer&, const Transfer&) = default;
  };
  struct Spent {  // U[replica]
    ReplicaId replica = kNoReplica;
    uint64_t units = 0;
    uint64_t seq = 0;
    friend bool operator==(const Spent&, const Spent&) = default;
  };

  // Adds `n` units; they become `replica`'s rights. Fails if the total would pass kMaxUnits.
  [[nodiscard]] absl::StatusOr<BoundedCounter> Increment(ReplicaId replica, uint64_t n,
                                                         uint64_t seq);
  // Takes `n` units out of `replica`'s rights. FailedPrecondition if it holds fewer.
  [[nodiscard]] absl::StatusOr<BoundedCounter> Decrement(ReplicaId replica, uint64_t n,
                                                         uint64_t seq);
  // Moves `n` of `from`'s rights to `to`. FailedPrecondition if `from` holds fewer.
  [[nodiscard]] absl::StatusOr<BoundedCounter> Move(ReplicaId from, ReplicaId to, uint64_t n,
                                                    uint64_t seq);

  // Units `replica` may still decrement or transfer, as this replica sees it. Can be negative in a
  // state that has a replica's outgoing transfer but not yet the incoming rights it passed on.
  [[nodiscard]] int64_t Rights(ReplicaId replica) const;
  // The two sides of Rights (Received - Consumed), each of which only grows: the rights `replica`
  // was ever given (its increments and transfers to it) and the rights it ever used (its
  // decrements and transfers away), as this replica sees them.
  [[nodiscard]] int64_t Received(ReplicaId replica) const;
  [[nodiscard]] int64_t Consumed(ReplicaId replica) const;
  // The value as this replica sees it. The true global value (the join of every replica's state)
  // is never negative. A partial view can be, transiently, when deltas arrive out of causal order
  // (a sale seen before the restock whose rights allowed it); readers that show stock clamp it.
  [[nodiscard]] int64_t Value() const;

  void Join(const BoundedCounter& other);
  // InvalidArgument when an entry both counters hold was written out of step: one writer's entry
  // only grows, event by event, so of two versions the one with the later seq has at least the
  // units of the other, and one seq has one value. Only a forged or corrupted record breaks that,
  // and joining it would make replicas diverge for good: Since never sends the other version to
  // a replica whose context has its seq. Receivers of peer records check before Join.
  [[nodiscard]] absl::Status CheckSameWrites(const BoundedCounter& other) const;
  // Entries whose last write (writer, seq) is not in `seen`; whole entries, so joining is exact.
  [[nodiscard]] BoundedCounter Since(const CausalContext& seen) const;

  [[nodiscard]] const std::vector<Transfer>& transfers() const { return transfers_; }
  [[nodiscard]] const std::vector<Spent>& spent() const { return spent_; }
  [[nodiscard]] bool Empty() const { return transfers_.empty() && spent_.empty(); }
  // Replicas that appear in any entry.
  [[nodiscard]] std::vector<ReplicaId> Replicas() const;

  // For decoders: entries sorted by key, unique, within kMaxUnits, nonzero replicas.
  static absl::StatusOr<BoundedCounter> FromParts(std::vector<Transfer> transfers,
                                                  std::vector<Spent> spent);

  friend bool operator==(const BoundedCounter&, const BoundedCounter&) = default;

 private:
  Transfer& TransferSlot(ReplicaId from, ReplicaId to);
  Spent& SpentSlot(ReplicaId replica);
  uint64_t TransferUnits(ReplicaId from, ReplicaId to) const;

  std::vector<Transfer> transfers_;  // sorted by (from, to)
  std::vector<Spent> spent_;         // sorted by replica
};

}  // namespace meridian::crdt
