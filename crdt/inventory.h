#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "crdt/bounded_counter.h"
#include "crdt/causal_context.h"
#include "crdt/dot.h"

namespace meridian::crdt {

// Stock per SKU as a document: one BoundedCounter per SKU. A region sells (Take) only within the
// rights it holds for that SKU, so the stock seen after every region's sales are merged is never
// below zero; rights move between regions by Transfer deltas; Restock gives the new units' rights
// to the restocking region. Mutators return deltas (Inventory values); Merge joins deltas or
// states.
//
// Each mutation is an event (replica, seq), a dot; version() is the set of events reflected here,
// kept as a causal context so that deltas merged out of order never claim events they lack.
// ChangesSince(v) returns what a replica at version v lacks. Value type, not thread-safe.
class Inventory {
 public:
  using Item = std::pair<std::string, BoundedCounter>;

  Inventory() = default;
  explicit Inventory(ReplicaId replica) : replica_(replica) {}

  [[nodiscard]] absl::StatusOr<Inventory> Restock(std::string_view sku, uint64_t units);
  // FailedPrecondition (and nothing changes) when this replica's rights are short.
  [[nodiscard]] absl::StatusOr<Inventory> Take(std::string_view sku, uint64_t units);
  [[nodiscard]] absl::StatusOr<Inventory> Transfer(std::string_view sku, ReplicaId to,
                                                   uint64_t units);

  void Merge(const Inventory& other);
  // BoundedCounter::CheckSameWrites for every SKU both hold, naming the SKU.
  [[nodiscard]] absl::Status CheckSameWrites(const Inventory& other) const;
  [[nodiscard]] Inventory ChangesSince(const CausalContext& seen) const;

  // The part of this delta that `state` lacks (for DeltaBuffer's redundancy removal).
  [[nodiscard]] Inventory NovelPart(const Inventory& state) const;
  [[nodiscard]] bool Empty() const { return items_.empty() && version_.Empty(); }

  // Stock as seen here, clamped at zero (see BoundedCounter::Value on transient partial views).
  [[nodiscard]] int64_t Available(std::string_view sku) const;
  [[nodiscard]] int64_t Rights(std::string_view sku, ReplicaId replica) const;
  // BoundedCounter::Received and Consumed of the SKU (0 for a SKU not here).
  [[nodiscard]] int64_t Received(std::string_view sku, ReplicaId replica) const;
  [[nodiscard]] int64_t Consumed(std::string_view sku, ReplicaId replica) const;
  [[nodiscard]] const BoundedCounter* Find(std::string_view sku) const;
  [[nodiscard]] const std::vector<Item>& items() const { return items_; }
  [[nodiscard]] const CausalContext& version() const { return version_; }
  [[nodiscard]] ReplicaId replica() const { return replica_; }

  // For the codec: items sorted by SKU and unique. Adds every entry's (writer, seq) to `version`.
  // InvalidArgument when two entries (of one SKU or of two) carry the same (writer, seq): each
  // event is one entry, and a peer that has seen the dot through one would skip the other.
  static absl::StatusOr<Inventory> FromParts(std::vector<Item> items, CausalContext version);

  friend bool operator==(const Inventory& a, const Inventory& b) {
    return a.items_ == b.items_ && a.version_ == b.version_;
  }

 private:
  template <class Op>
  absl::StatusOr<Inventory> Mutate(std::string_view sku, Op op);
  BoundedCounter& Slot(std::string_view sku);

  ReplicaId replica_ = kNoReplica;
  std::vector<Item> items_;  // sorted by SKU
  CausalContext version_;
};

}  // namespace meridian::crdt
