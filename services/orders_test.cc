#include "services/orders.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace meridian::services {
namespace {

OrderEvent Created() { return MakeOrderCreated("o1", 1, 1, "u1", 500, {{"kettle", 2, 250}}); }

TEST(Orders, StatusNamesRoundTrip) {
  for (OrderStatus s :
       {OrderStatus::kPendingPayment, OrderStatus::kPaid, OrderStatus::kPaymentDeclined,
        OrderStatus::kCancelled, OrderStatus::kExpired, OrderStatus::kRefunded}) {
    auto parsed = ParseOrderStatus(OrderStatusName(s));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, s);
  }
  EXPECT_FALSE(ParseOrderStatus("shipped").ok());
}

TEST(Orders, Transitions) {
  EXPECT_TRUE(OrderTransitionAllowed(OrderStatus::kPendingPayment, OrderStatus::kPaid));
  EXPECT_TRUE(OrderTransitionAllowed(OrderStatus::kPaid, OrderStatus::kRefunded));
  EXPECT_FALSE(OrderTransitionAllowed(OrderStatus::kPaid, OrderStatus::kCancelled));
  EXPECT_FALSE(OrderTransitionAllowed(OrderStatus::kCancelled, OrderStatus::kPaid));
}

TEST(Orders, EveryStatusButAwaitingPaymentIsDecided) {
  EXPECT_FALSE(OrderDecided(OrderStatus::kPendingPayment));
  EXPECT_TRUE(OrderDecided(OrderStatus::kPaid));
  for (OrderStatus s : {OrderStatus::kPaymentDeclined, OrderStatus::kCancelled,
                        OrderStatus::kExpired, OrderStatus::kRefunded}) {
    EXPECT_TRUE(OrderDecided(s)) << OrderStatusName(s);
    // A given-up order cannot move on to another status.
    for (OrderStatus to :
         {OrderStatus::kPendingPayment, OrderStatus::kPaid, OrderStatus::kPaymentDeclined,
          OrderStatus::kCancelled, OrderStatus::kExpired, OrderStatus::kRefunded}) {
      EXPECT_FALSE(OrderTransitionAllowed(s, to));
    }
  }
}

TEST(Orders, ApplyCreatesThenChanges) {
  OrderState s;
  ASSERT_EQ(*ApplyOrderEvent(s, Created()), ApplyOutcome::kApplied);
  EXPECT_TRUE(s.created);
  EXPECT_EQ(s.total_cents, 500);
  auto pay = MakeOrderChange(s, OrderStatus::kPaid, 1);
  ASSERT_TRUE(pay.ok());
  EXPECT_EQ(pay->version, 2u);
  ASSERT_EQ(*ApplyOrderEvent(s, *pay), ApplyOutcome::kApplied);
  EXPECT_EQ(s.status, OrderStatus::kPaid);
  EXPECT_EQ(*ApplyOrderEvent(s, *pay), ApplyOutcome::kDuplicate);
  EXPECT_EQ(*ApplyOrderEvent(s, Created()), ApplyOutcome::kDuplicate);
}

TEST(Orders, StaleEpochIsRejectedAndChangesNothing) {
  OrderState s;
  ASSERT_TRUE(ApplyOrderEvent(s, Created()).ok());
  auto pay = MakeOrderChange(s, OrderStatus::kPaid, 1);          // the old owner's, delivered late
  auto cancel = MakeOrderChange(s, OrderStatus::kCancelled, 2);  // the new owner's
  ASSERT_EQ(*ApplyOrderEvent(s, *cancel), ApplyOutcome::kApplied);
  OrderState before = s;
  EXPECT_EQ(*ApplyOrderEvent(s, *pay), ApplyOutcome::kStale);
  EXPECT_EQ(s, before);
  // The owner's own check: a change below the order's epoch is refused.
  s.epoch = 3;
  EXPECT_FALSE(MakeOrderChange(s, OrderStatus::kPaid, 2).ok());
}

TEST(Orders, LaterEpochWinsWhateverTheArrivalOrder) {
  OrderState a;
  ASSERT_TRUE(ApplyOrderEvent(a, Created()).ok());
  auto cancel = MakeOrderChange(a, OrderStatus::kCancelled, 2);  // a successor cancels
  ASSERT_TRUE(cancel.ok());
  OrderState b;  // a copy that sees the cancel first
  ASSERT_EQ(*ApplyOrderEvent(b, *cancel), ApplyOutcome::kApplied);
  EXPECT_FALSE(b.created);
  ASSERT_EQ(*ApplyOrderEvent(b, Created()), ApplyOutcome::kApplied);
  ASSERT_TRUE(ApplyOrderEvent(a, *cancel).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(b.status, OrderStatus::kCancelled);
}

TEST(Orders, MalformedEventsAreErrors) {
  OrderState s;
  OrderEvent e = Created();
  e.epoch = 0;
  EXPECT_FALSE(ApplyOrderEvent(s, e).ok());
  e = Created();
  e.user_id.clear();
  EXPECT_FALSE(ApplyOrderEvent(s, e).ok());
  ASSERT_TRUE(ApplyOrderEvent(s, Created()).ok());
  e = Created();
  e.order_id = "o2";
  EXPECT_FALSE(ApplyOrderEvent(s, e).ok());
  EXPECT_EQ(s.order_id, "o1");
}

// A history of one order across owners: created at epoch 1, then changes by successive owners.
rc::Gen<std::vector<OrderEvent>> GenHistory() {
  return rc::gen::exec([] {
    std::vector<OrderEvent> h;
    OrderState s;
    h.push_back(Created());
    (void)ApplyOrderEvent(s, h.back());
    uint64_t epoch = 1;
    const int steps = *rc::gen::inRange(0, 6);
    for (int i = 0; i < steps; ++i) {
      epoch += *rc::gen::inRange<uint64_t>(0, 2);
      const auto to = *rc::gen::element(OrderStatus::kPaid, OrderStatus::kCancelled,
                                        OrderStatus::kRefunded, OrderStatus::kExpired);
      auto e = MakeOrderChange(s, to, epoch);
      if (!e.ok()) continue;
      (void)ApplyOrderEvent(s, *e);
      h.push_back(*e);
    }
    return h;
  });
}

OrderState FromEvent(const OrderEvent& e) {
  OrderState s;
  (void)ApplyOrderEvent(s, e);
  return s;
}

RC_GTEST_PROP(OrdersProperty, AnyOrderAnyDuplicationSameState, ()) {
  const auto history = *GenHistory();
  OrderState expected;
  for (const auto& e : history) RC_ASSERT(ApplyOrderEvent(expected, e).ok());
  auto shuffled = history;
  const auto extra =
      *rc::gen::container<std::vector<size_t>>(rc::gen::inRange<size_t>(0, history.size()));
  for (size_t i : extra) shuffled.push_back(history[i]);
  const auto perm = *rc::gen::arbitrary<uint64_t>();
  std::mt19937_64 rng(perm);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  OrderState got;
  for (const auto& e : shuffled) RC_ASSERT(ApplyOrderEvent(got, e).ok());
  RC_ASSERT(got == expected);
}

RC_GTEST_PROP(OrdersProperty, JoinIsCommutativeAssociativeIdempotent, ()) {
  const auto history = *GenHistory();
  const auto pick = [&] {
    OrderState s;
    for (const auto& e : history)
      if (*rc::gen::arbitrary<bool>()) JoinOrder(s, FromEvent(e));
    return s;
  };
  const OrderState a = pick(), b = pick(), c = pick();
  OrderState ab = a;
  JoinOrder(ab, b);
  OrderState ba = b;
  JoinOrder(ba, a);
  RC_ASSERT(ab == ba);
  OrderState ab_c = ab;
  JoinOrder(ab_c, c);
  OrderState bc = b;
  JoinOrder(bc, c);
  OrderState a_bc = a;
  JoinOrder(a_bc, bc);
  RC_ASSERT(ab_c == a_bc);
  OrderState aa = a;
  JoinOrder(aa, a);
  RC_ASSERT(aa == a);
}

RC_GTEST_PROP(OrdersProperty, JoiningEventStatesEqualsApplyingEvents, ()) {
  const auto history = *GenHistory();
  OrderState applied, joined;
  for (const auto& e : history) {
    (void)ApplyOrderEvent(applied, e);
    JoinOrder(joined, FromEvent(e));
  }
  RC_ASSERT(applied == joined);
}

}  // namespace
}  // namespace meridian::services
