#pragma once

// The order's replicated state and the rules for changing and merging it (no I/O). Used by the
// region (its own mutations and the events peers ship) and by the simulator, so both run one
// set of rules.
//
// An order has one owner at a time: the holder of its lease group's current epoch (see
// replication/lease.h). Its state is a join-semilattice, so copies converge whatever order events
// and state transfers arrive in:
//   - the creation facts (user, items, total, residency) are written once, by the creator;
//   - the status is a register ordered by (epoch, version): the owner bumps version on every
//     change, a new owner continues from the version it synced at a higher epoch, and the join
//     keeps the larger (epoch, version).
// Fencing: an event made at an epoch below the order's current epoch is stale: a newer owner has
// changed the order since, so the event is rejected (counted by the caller) and changes nothing
// but the creation facts, which never conflict. An old owner's late event on an order the new
// owner has not touched is still applied: it happened while its maker held the lease (the lease
// protocol guarantees no region acts after its lease ends), and applying it keeps every copy
// convergent whatever order events and state transfers arrive in. The owner's own writes are
// fenced before they happen (MakeOrderChange, and the region's conditional UPDATE).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meridian::services {

enum class OrderStatus : uint8_t {
  kPendingPayment,
  kPaid,
  kPaymentDeclined,
  kCancelled,
  kExpired,
  kRefunded,
};
std::string_view OrderStatusName(OrderStatus s);
absl::StatusOr<OrderStatus> ParseOrderStatus(std::string_view name);

// Whether the owner may move an order from `from` to `to` (pay, decline, cancel, expire, refund).
bool OrderTransitionAllowed(OrderStatus from, OrderStatus to);
// Whether an order in this status is decided: paid, or given up for good (declined, cancelled,
// expired, refunded). The region holding its reservation and captures settles them by it,
// wherever it was decided: a paid order keeps its stock and one capture, the paid one; a given-up
// order's stock goes back on sale and every capture of it is refunded.
bool OrderDecided(OrderStatus s);

struct OrderLine {
  std::string sku;
  int64_t quantity = 0;
  int64_t price_cents = 0;
  friend bool operator==(const OrderLine&, const OrderLine&) = default;
};

struct OrderState {
  std::string order_id;
  uint32_t group = 0;  // the lease group: the region that created the order
  // creation facts; `created` is false for a copy that so far only saw later status events
  bool created = false;
  std::string user_id;
  int64_t total_cents = 0;
  std::vector<OrderLine> items;
  // the status register
  uint64_t epoch = 0;
  uint64_t version = 0;
  OrderStatus status = OrderStatus::kPendingPayment;

  friend bool operator==(const OrderState&, const OrderState&) = default;
};

// One change, as the owner made it and as it is shipped.
struct OrderEvent {
  std::string order_id;
  uint32_t group = 0;
  uint64_t epoch = 0;
  uint64_t version = 0;
  OrderStatus status = OrderStatus::kPendingPayment;
  // only on the creating event (version 1)
  bool creates = false;
  std::string user_id;
  int64_t total_cents = 0;
  std::vector<OrderLine> items;

  friend bool operator==(const OrderEvent&, const OrderEvent&) = default;
};

enum class ApplyOutcome {
  kApplied,    // the state changed
  kDuplicate,  // already reflected (or superseded): nothing to do
  kStale,      // made at an epoch below the order's: superseded by a newer owner, rejected
};

// Applies a shipped event to `state` (which may be empty: order_id unset). Never fails on a
// well-formed event; a malformed one (wrong order, epoch or version 0) is InvalidArgument and
// changes nothing.
absl::StatusOr<ApplyOutcome> ApplyOrderEvent(OrderState& state, const OrderEvent& event);

// Joins another copy of the same order (a state transfer). Commutative, associative, idempotent.
void JoinOrder(OrderState& state, const OrderState& other);

// The owner's change: the event that moves `state` to `to` at `epoch`. FailedPrecondition when
// the transition is not allowed or `epoch` is below the state's (the caller is not the owner).
absl::StatusOr<OrderEvent> MakeOrderChange(const OrderState& state, OrderStatus to, uint64_t epoch);

// The creating event.
OrderEvent MakeOrderCreated(std::string order_id, uint32_t group, uint64_t epoch,
                            std::string user_id, int64_t total_cents, std::vector<OrderLine> items);

}  // namespace meridian::services
