#include "services/orders.h"

#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace meridian::services {
namespace {

// The register's order. Status breaks a tie that one owner per epoch never makes, so that the
// join stays commutative even for a forged pair.
auto RegisterKey(uint64_t epoch, uint64_t version, OrderStatus status) {
  return std::make_tuple(epoch, version, static_cast<uint8_t>(status));
}

}  // namespace

std::string_view OrderStatusName(OrderStatus s) {
  switch (s) {
    case OrderStatus::kPendingPayment:
      return "pending_payment";
    case OrderStatus::kPaid:
      return "paid";
    case OrderStatus::kPaymentDeclined:
      return "payment_declined";
    case OrderStatus::kCancelled:
      return "cancelled";
    case OrderStatus::kExpired:
      return "expired";
    case OrderStatus::kRefunded:
      return "refunded";
  }
  return "unknown";
}

absl::StatusOr<OrderStatus> ParseOrderStatus(std::string_view name) {
  for (OrderStatus s :
       {OrderStatus::kPendingPayment, OrderStatus::kPaid, OrderStatus::kPaymentDeclined,
        OrderStatus::kCancelled, OrderStatus::kExpired, OrderStatus::kRefunded}) {
    if (OrderStatusName(s) == name) return s;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown order status '", AbslView(name), "'"));
}

bool OrderTransitionAllowed(OrderStatus from, OrderStatus to) {
  switch (from) {
    case OrderStatus::kPendingPayment:
      return to == OrderStatus::kPaid || to == OrderStatus::kPaymentDeclined ||
             to == OrderStatus::kCancelled || to == OrderStatus::kExpired;
    case OrderStatus::kPaid:
      return to == OrderStatus::kRefunded;
    default:
      return false;
  }
}

bool OrderDecided(OrderStatus s) { return s != OrderStatus::kPendingPayment; }

absl::StatusOr<ApplyOutcome> ApplyOrderEvent(OrderState& state, const OrderEvent& event) {
  if (event.order_id.empty() || event.group == 0 || event.epoch == 0 || event.version == 0) {
    return absl::InvalidArgumentError("order event: order_id, group, epoch and version are needed");
  }
  if (!state.order_id.empty() && (state.order_id != event.order_id || state.group != event.group)) {
    return absl::InvalidArgumentError(
        absl::StrCat("order event for ", event.order_id, " applied to ", state.order_id));
  }
  if (event.creates && (event.user_id.empty() || event.total_cents < 0)) {
    return absl::InvalidArgumentError("order event: a creating event needs user_id and a total");
  }
  bool changed = false;
  if (state.order_id.empty()) {
    state.order_id = event.order_id;
    state.group = event.group;
    changed = true;
  }
  if (event.creates && !state.created) {
    state.created = true;
    state.user_id = event.user_id;
    state.total_cents = event.total_cents;
    state.items = event.items;
    changed = true;
  }
  if (RegisterKey(event.epoch, event.version, event.status) >
      RegisterKey(state.epoch, state.version, state.status)) {
    state.epoch = event.epoch;
    state.version = event.version;
    state.status = event.status;
    return ApplyOutcome::kApplied;
  }
  if (changed) return ApplyOutcome::kApplied;  // facts only: they never conflict
  return event.epoch < state.epoch ? ApplyOutcome::kStale : ApplyOutcome::kDuplicate;
}

void JoinOrder(OrderState& state, const OrderState& other) {
  if (other.order_id.empty()) return;
  if (state.order_id.empty()) {
    state.order_id = other.order_id;
    state.group = other.group;
  }
  if (other.created && !state.created) {
    state.created = true;
    state.user_id = other.user_id;
    state.total_cents = other.total_cents;
    state.items = other.items;
  }
  if (RegisterKey(other.epoch, other.version, other.status) >
      RegisterKey(state.epoch, state.version, state.status)) {
    state.epoch = other.epoch;
    state.version = other.version;
    state.status = other.status;
  }
}

absl::StatusOr<OrderEvent> MakeOrderChange(const OrderState& state, OrderStatus to,
                                           uint64_t epoch) {
  if (epoch < state.epoch) {
    return absl::FailedPreconditionError(absl::StrCat("order ", state.order_id, " is at epoch ",
                                                      state.epoch, "; epoch ", epoch, " is stale"));
  }
  if (!OrderTransitionAllowed(state.status, to)) {
    return absl::FailedPreconditionError(
        absl::StrCat("order ", state.order_id, " is ", AbslView(OrderStatusName(state.status)),
                     " and cannot become ", AbslView(OrderStatusName(to))));
  }
  OrderEvent e;
  e.order_id = state.order_id;
  e.group = state.group;
  e.epoch = epoch;
  e.version = state.version + 1;
  e.status = to;
  return e;
}

OrderEvent MakeOrderCreated(std::string order_id, uint32_t group, uint64_t epoch,
                            std::string user_id, int64_t total_cents,
                            std::vector<OrderLine> items) {
  OrderEvent e;
  e.order_id = std::move(order_id);
  e.group = group;
  e.epoch = epoch;
  e.version = 1;
  e.status = OrderStatus::kPendingPayment;
  e.creates = true;
  e.user_id = std::move(user_id);
  e.total_cents = total_cents;
  e.items = std::move(items);
  return e;
}

}  // namespace meridian::services
