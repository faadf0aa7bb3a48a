#include "crdt/bounded_counter.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "crdt/codec.h"
#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

// Replicas restock, sell and pass rights around at random; a refused operation yields an empty
// delta. `sold` and `restocked` count what really happened, to check the converged value;
// `global` is the join of every delta made so far: the true global state at this instant.
struct BcModel {
  int replicas = 3;
  uint64_t seq = 0;
  int64_t restocked = 0;
  int64_t sold = 0;
  BoundedCounter global;

  BoundedCounter Make(ReplicaId) { return {}; }
  BoundedCounter Op(BoundedCounter& c, ReplicaId id, uint32_t pick, uint32_t arg) {
    ++seq;
    uint64_t n = arg % 4 + 1;
    const int64_t received = c.Received(id), consumed = c.Consumed(id);
    absl::StatusOr<BoundedCounter> d;
    switch (pick % 5) {
      case 0:
        d = c.Increment(id, n, seq);
        if (d.ok()) restocked += static_cast<int64_t>(n);
        break;
      case 1:
      case 2:
        d = c.Decrement(id, n, seq);
        if (d.ok()) sold += static_cast<int64_t>(n);
        break;
      default: {
        ReplicaId to = static_cast<ReplicaId>((id + arg % (replicas - 1)) % replicas + 1);
        d = c.Move(id, to, n, seq);
      }
    }
    RC_ASSERT(c.Rights(id) >= 0);  // a replica never spends or gives away rights it lacks
    // Both sides of its rights only grow, and their difference is its rights.
    RC_ASSERT(c.Received(id) >= received && c.Consumed(id) >= consumed);
    RC_ASSERT(c.Rights(id) == c.Received(id) - c.Consumed(id));
    if (!d.ok()) return {};
    global.Join(*d);
    RC_ASSERT(global.Value() >= 0);  // the global value never goes below zero
    RC_ASSERT(global.Value() == restocked - sold);
    return *d;
  }
  // Honest histories never look forged, whatever the order, duplication or loss of deltas.
  void Merge(BoundedCounter& into, const BoundedCounter& d) {
    RC_ASSERT(into.CheckSameWrites(d).ok());
    into.Join(d);
  }
};

TEST(BoundedCounter, DecrementOnlyWithinOwnRights) {
  BoundedCounter a;
  ASSERT_TRUE(a.Increment(1, 5, 1).ok());
  EXPECT_EQ(a.Rights(1), 5);
  EXPECT_EQ(a.Rights(2), 0);
  EXPECT_FALSE(a.Decrement(2, 1, 1).ok());
  EXPECT_FALSE(a.Decrement(1, 6, 2).ok());
  auto t = a.Move(1, 2, 3, 3);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(a.Rights(1), 2);
  EXPECT_EQ(a.Rights(2), 3);
  EXPECT_TRUE(a.Decrement(2, 3, 1).ok());
  EXPECT_EQ(a.Value(), 2);
  EXPECT_FALSE(a.Move(1, 1, 1, 4).ok());
}

TEST(BoundedCounter, ReceivedAndConsumedAreTheTwoSidesOfRights) {
  BoundedCounter a;
  ASSERT_TRUE(a.Increment(1, 5, 1).ok());
  ASSERT_TRUE(a.Move(1, 2, 3, 2).ok());
  ASSERT_TRUE(a.Decrement(1, 1, 3).ok());
  BoundedCounter b = a;
  ASSERT_TRUE(b.Decrement(2, 2, 1).ok());
  ASSERT_TRUE(b.Increment(2, 4, 2).ok());
  EXPECT_EQ(a.Received(1), 5);
  EXPECT_EQ(a.Consumed(1), 4);  // 3 given to 2, 1 spent
  EXPECT_EQ(a.Received(2), 3);
  EXPECT_EQ(a.Consumed(2), 0);
  a.Join(b);
  EXPECT_EQ(a.Received(2), 7);  // 3 from 1, 4 of its own
  EXPECT_EQ(a.Consumed(2), 2);
  EXPECT_EQ(a.Rights(2), 5);
  EXPECT_EQ(a.Received(3), 0);
  EXPECT_EQ(a.Consumed(3), 0);
}

TEST(BoundedCounter, RefusedOperationChangesNothing) {
  BoundedCounter a;
  ASSERT_TRUE(a.Increment(1, 2, 1).ok());
  BoundedCounter before = a;
  EXPECT_FALSE(a.Decrement(1, 3, 2).ok());
  EXPECT_FALSE(a.Move(1, 2, 3, 2).ok());
  EXPECT_FALSE(a.Increment(1, BoundedCounter::kMaxUnits, 2).ok());
  EXPECT_EQ(a, before);
}

// A replica's spent and moved units are cumulative: with rights received from others they can
// grow past kMaxUnits, where every decoder refuses the state. The change is refused instead,
// and the state stays decodable.
TEST(BoundedCounter, CumulativeSlotsStayWithinTheLimit) {
  constexpr uint64_t kMax = BoundedCounter::kMaxUnits;
  BoundedCounter a;
  ASSERT_TRUE(a.Increment(1, kMax, 1).ok());
  ASSERT_TRUE(a.Decrement(1, kMax, 2).ok());  // replica 1 has spent the limit
  ASSERT_TRUE(a.Increment(2, kMax, 1).ok());
  ASSERT_TRUE(a.Move(2, 1, kMax, 2).ok());  // and holds the limit again, from replica 2
  ASSERT_TRUE(a.Increment(3, 5, 1).ok());
  ASSERT_TRUE(a.Move(3, 2, 5, 2).ok());  // replica 2 holds rights again, from replica 3
  BoundedCounter before = a;
  EXPECT_FALSE(a.Decrement(1, 1, 3).ok());
  EXPECT_FALSE(a.Move(2, 1, 1, 3).ok());  // 2 -> 1 has moved the limit
  EXPECT_EQ(a, before);
  EXPECT_TRUE(a.Move(2, 3, 1, 3).ok());  // other slots still move
  EXPECT_TRUE(a.Move(1, 3, 1, 4).ok());
  auto decoded = DecodeBoundedCounter(Encode(a));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, a);
}

RC_GTEST_PROP(BoundedCounterProp, JoinLaws, ()) {
  BcModel m;
  testing::CheckJoinLaws<BoundedCounter>(m);
}

RC_GTEST_PROP(BoundedCounterProp, NeverBelowZeroAndConvergesToTruth, ()) {
  BcModel m;
  m.replicas = *rc::gen::inRange(3, 6);
  std::vector<BoundedCounter> deltas;
  auto rs = testing::RunScenario<BoundedCounter>(m, m.replicas, *testing::GenSteps(), &deltas);
  for (const auto& r : rs) {
    RC_ASSERT(r == rs[0]);
    RC_ASSERT(r.Value() == m.restocked - m.sold);
    RC_ASSERT(r.Value() >= 0);
    int64_t rights = 0;
    for (int i = 1; i <= m.replicas; ++i) rights += r.Rights(static_cast<ReplicaId>(i));
    RC_ASSERT(rights == r.Value());  // rights account for every unit
  }
}

}  // namespace
}  // namespace meridian::crdt
