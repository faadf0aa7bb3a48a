#include "crdt/registers.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <string>

#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

struct LwwModel {
  uint64_t clock = 0;
  LWWRegister<std::string> Make(ReplicaId) { return {}; }
  LWWRegister<std::string> Op(LWWRegister<std::string>& r, ReplicaId id, uint32_t pick,
                              uint32_t arg) {
    // Clocks of different replicas collide often (arg % 4) to exercise the replica tie-break.
    clock += arg % 4;
    return r.Set("v" + std::to_string(pick % 7), Stamp{HlcTimestamp{clock}, id});
  }
  void Merge(LWWRegister<std::string>& into, const LWWRegister<std::string>& d) { into.Join(d); }
};

struct MvModel {
  MVRegister<std::string> Make(ReplicaId) { return {}; }
  MVRegister<std::string> Op(MVRegister<std::string>& r, ReplicaId id, uint32_t pick, uint32_t) {
    return r.Write(id, "v" + std::to_string(pick % 7));
  }
  void Merge(MVRegister<std::string>& into, const MVRegister<std::string>& d) { into.Join(d); }
};

TEST(LWWRegister, LaterStampWinsAndReplicaBreaksTies) {
  LWWRegister<std::string> a, b;
  a.Set("x", Stamp{HlcTimestamp{5}, 1});
  b.Set("y", Stamp{HlcTimestamp{5}, 2});
  a.Join(b);
  EXPECT_EQ(*a.value(), "y");
  b.Set("z", Stamp{HlcTimestamp{4}, 3});
  EXPECT_EQ(*b.value(), "y");
}

TEST(MVRegister, KeepsConcurrentWritesUntilOverwritten) {
  MVRegister<std::string> a, b;
  auto da = a.Write(1, "a");
  auto db = b.Write(2, "b");
  a.Join(db);
  b.Join(da);
  EXPECT_EQ(a.Values(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(a, b);
  auto dc = a.Write(1, "c");
  b.Join(dc);
  EXPECT_EQ(b.Values(), (std::vector<std::string>{"c"}));
}

TEST(Hlc, MonotonicAcrossBackwardsClockAndObserve) {
  Hlc h;
  auto t1 = h.Now(1000);
  auto t2 = h.Now(999);  // wall clock went back
  EXPECT_LT(t1, t2);
  auto remote = HlcTimestamp::Make(5000, 7);
  auto t3 = h.Observe(remote, 1000);
  EXPECT_LT(remote, t3);
  EXPECT_EQ(t3.physical_ms(), 5000u);
  EXPECT_EQ(t3.logical(), 8u);
  auto t4 = h.Now(6000);
  EXPECT_EQ(t4, HlcTimestamp::Make(6000, 0));
}

RC_GTEST_PROP(HlcProp, StrictlyIncreasingAndAfterEveryObserved, ()) {
  Hlc h;
  HlcTimestamp prev = h.last();
  auto events = *rc::gen::container<std::vector<std::pair<bool, uint32_t>>>(
      rc::gen::pair(rc::gen::arbitrary<bool>(), rc::gen::inRange<uint32_t>(0, 100)));
  for (auto [observe, t] : events) {
    HlcTimestamp remote = HlcTimestamp::Make(t, t % 3);
    HlcTimestamp now = observe ? h.Observe(remote, t / 2) : h.Now(t);
    RC_ASSERT(prev < now);
    if (observe) RC_ASSERT(remote < now);
    prev = now;
  }
}

RC_GTEST_PROP(LWWRegisterProp, JoinLaws, ()) {
  LwwModel m;
  testing::CheckJoinLaws<LWWRegister<std::string>>(m);
}
RC_GTEST_PROP(LWWRegisterProp, Converges, ()) {
  LwwModel m;
  testing::CheckConvergence<LWWRegister<std::string>>(m);
}
RC_GTEST_PROP(MVRegisterProp, JoinLaws, ()) {
  MvModel m;
  testing::CheckJoinLaws<MVRegister<std::string>>(m);
}
RC_GTEST_PROP(MVRegisterProp, Converges, ()) {
  MvModel m;
  testing::CheckConvergence<MVRegister<std::string>>(m);
}

}  // namespace
}  // namespace meridian::crdt
