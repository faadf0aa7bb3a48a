#include "crdt/counters.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <limits>

#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

struct GCounterModel {
  GCounter Make(ReplicaId) { return {}; }
  GCounter Op(GCounter& c, ReplicaId id, uint32_t, uint32_t arg) {
    return c.Increment(id, arg % 5 + 1);
  }
  void Merge(GCounter& into, const GCounter& d) { into.Join(d); }
};

struct PNCounterModel {
  int64_t total = 0;  // sum of every operation made, the value replicas must converge to
  PNCounter Make(ReplicaId) { return {}; }
  PNCounter Op(PNCounter& c, ReplicaId id, uint32_t pick, uint32_t arg) {
    if (pick & 1) {
      total += arg % 5 + 1;
      return c.Increment(id, arg % 5 + 1);
    }
    total -= arg % 3 + 1;
    return c.Decrement(id, arg % 3 + 1);
  }
  void Merge(PNCounter& into, const PNCounter& d) { into.Join(d); }
};

TEST(GCounter, SumsReplicas) {
  GCounter a, b;
  a.Increment(1, 3);
  b.Increment(2, 4);
  a.Join(b);
  a.Join(b);
  EXPECT_EQ(a.Value(), 7u);
}

// Entries of up to 2^62 (what a decoder takes) add up past 2^64: the values hold at the bounds
// (before, GCounter wrapped and PNCounter's subtraction overflowed).
TEST(Counters, ValuesHoldAtTheBoundsInsteadOfWrapping) {
  constexpr uint64_t kBig = uint64_t{1} << 62;
  GCounter g;
  for (ReplicaId r = 1; r <= 4; ++r) g.Increment(r, kBig);
  EXPECT_EQ(g.Value(), std::numeric_limits<uint64_t>::max());
  PNCounter up, down;
  up.Increment(1, kBig);
  up.Increment(2, kBig);
  EXPECT_EQ(up.Value(), std::numeric_limits<int64_t>::max());
  down.Increment(1, kBig);
  down.Increment(2, kBig);
  down.Decrement(1, 1);
  EXPECT_EQ(down.Value(), std::numeric_limits<int64_t>::max());
  PNCounter negative;
  for (ReplicaId r = 1; r <= 4; ++r) negative.Decrement(r, kBig);
  EXPECT_EQ(negative.Value(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(SaturatingAdd<int64_t>(-5, 3), -2);
}

RC_GTEST_PROP(GCounterProp, JoinLaws, ()) {
  GCounterModel m;
  testing::CheckJoinLaws<GCounter>(m);
}
RC_GTEST_PROP(GCounterProp, Converges, ()) {
  GCounterModel m;
  testing::CheckConvergence<GCounter>(m);
}
RC_GTEST_PROP(PNCounterProp, JoinLaws, ()) {
  PNCounterModel m;
  testing::CheckJoinLaws<PNCounter>(m);
}
RC_GTEST_PROP(PNCounterProp, ConvergesToSumOfOperations, ()) {
  PNCounterModel m;
  int n = *rc::gen::inRange(3, 6);
  auto rs = testing::RunScenario<PNCounter>(m, n, *testing::GenSteps());
  for (int i = 0; i < n; ++i) RC_ASSERT(rs[i].Value() == m.total);
}

}  // namespace
}  // namespace meridian::crdt
