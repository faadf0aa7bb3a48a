#include "crdt/or_set.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <map>
#include <set>
#include <string>

#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

using StrSet = AWORSet<std::string>;
using CounterMap = ORMap<std::string, CounterStore>;

std::string Elem(uint32_t pick) { return "e" + std::to_string(pick % 4); }

// Records, per element, every add's dot and the context each operation on it had seen. An add
// retires the element's older dots it has seen, and a remove all it has seen; so the add-wins rule
// says: the element is present iff some add's dot was seen by no other operation on it.
struct SetModel {
  std::map<std::string, std::vector<Dot>> adds;
  std::map<std::string, std::vector<CausalContext>> removes;  // contexts of removes and adds

  StrSet Make(ReplicaId) { return {}; }
  StrSet Op(StrSet& s, ReplicaId id, uint32_t pick, uint32_t arg) {
    std::string e = Elem(pick);
    if (arg % 3 == 0) {
      removes[e].push_back(s.state().ctx);
      return s.Remove(e);
    }
    removes[e].push_back(s.state().ctx);  // an add's context does not hold its own new dot
    StrSet d = s.Add(id, e);
    adds[e].push_back(d.state().store.Find(e)->entries().front().first);
    return d;
  }
  void Merge(StrSet& into, const StrSet& d) { into.Join(d); }

  // e is present iff some add of e was seen by no other operation on e.
  bool Expected(const std::string& e) const {
    auto a = adds.find(e);
    if (a == adds.end()) return false;
    auto r = removes.find(e);
    for (const Dot& d : a->second) {
      bool seen = false;
      if (r != removes.end())
        for (const auto& ctx : r->second) seen = seen || ctx.Contains(d);
      if (!seen) return true;
    }
    return false;
  }
};

struct MapModel {
  testing::ChangeLog changes;
  testing::RemoveLog removes;

  CounterMap Make(ReplicaId) { return {}; }
  CounterMap Op(CounterMap& m, ReplicaId id, uint32_t pick, uint32_t arg) {
    std::string k = Elem(pick);
    if (arg % 4 == 0) {
      removes[k].push_back(m.state().ctx);
      return m.Remove(k);
    }
    int64_t amount = static_cast<int64_t>(arg % 7) - 2;
    CounterMap d = m.Update(id, k, CounterAdd(amount));
    changes[k].push_back({d.state().store.Find(k)->entries().front().first, amount});
    return d;
  }
  void Merge(CounterMap& into, const CounterMap& d) { into.Join(d); }

  std::optional<int64_t> Expected(const std::string& k) const {
    return testing::ExpectedCounter(changes, removes, k);
  }
};

TEST(AWORSet, ConcurrentAddWinsOverRemove) {
  StrSet a, b;
  auto d1 = a.Add(1, "x");
  b.Join(d1);
  auto rm = b.Remove("x");  // b removes what it saw
  auto d2 = a.Add(1, "x");  // a re-adds concurrently
  a.Join(rm);
  b.Join(d2);
  EXPECT_TRUE(a.Contains("x"));
  EXPECT_EQ(a, b);
}

TEST(AWORSet, RemovedElementDoesNotComeBackFromOldDelta) {
  StrSet a, b;
  auto add = a.Add(1, "x");
  b.Join(add);
  auto rm = b.Remove("x");
  a.Join(rm);
  a.Join(add);  // a stale, duplicated delivery of the add
  b.Join(add);
  EXPECT_FALSE(a.Contains("x"));
  EXPECT_FALSE(b.Contains("x"));
}

TEST(ORMap, RemoveDropsOnlyObservedChanges) {
  CounterMap a, b;
  auto d1 = a.Update(1, "k", CounterAdd(3));
  b.Join(d1);
  auto rm = b.Remove("k");
  auto d2 = a.Update(1, "k", CounterAdd(2));  // concurrent with the remove
  a.Join(rm);
  b.Join(d2);
  ASSERT_NE(a.Find("k"), nullptr);
  EXPECT_EQ(CounterValue(*a.Find("k")), 2);  // the removed 3 units stay removed
  EXPECT_EQ(a, b);
}

RC_GTEST_PROP(AWORSetProp, JoinLaws, ()) {
  SetModel m;
  testing::CheckJoinLaws<StrSet>(m);
}
RC_GTEST_PROP(AWORSetProp, Converges, ()) {
  SetModel m;
  testing::CheckConvergence<StrSet>(m);
}
RC_GTEST_PROP(AWORSetProp, RemovedElementsComeBackOnlyThroughUnseenAdds, ()) {
  SetModel m;
  int n = *rc::gen::inRange(3, 6);
  auto rs = testing::RunScenario<StrSet>(m, n, *testing::GenSteps());
  for (uint32_t i = 0; i < 4; ++i) {
    std::string e = Elem(i);
    RC_ASSERT(rs[0].Contains(e) == m.Expected(e));
  }
}
RC_GTEST_PROP(ORMapProp, JoinLaws, ()) {
  MapModel m;
  testing::CheckJoinLaws<CounterMap>(m);
}
RC_GTEST_PROP(ORMapProp, Converges, ()) {
  MapModel m;
  testing::CheckConvergence<CounterMap>(m);
}
RC_GTEST_PROP(ORMapProp, RemovedChangesNeverComeBack, ()) {
  MapModel m;
  int n = *rc::gen::inRange(3, 6);
  auto rs = testing::RunScenario<CounterMap>(m, n, *testing::GenSteps());
  for (uint32_t i = 0; i < 4; ++i) {
    std::string k = Elem(i);
    const CounterStore* s = rs[0].Find(k);
    std::optional<int64_t> expected = m.Expected(k);
    RC_ASSERT((s != nullptr) == expected.has_value());
    if (s) RC_ASSERT(CounterValue(*s) == *expected);
  }
}
RC_GTEST_PROP(ORMapProp, SinceBringsAnyReplicaUpToDate, ()) {
  MapModel m;
  auto states = testing::RandomStates<CounterMap>(m, *testing::GenSteps());
  const CounterMap& a = states[0];
  const CounterMap& b = states[1];
  CounterMap expected = b;
  expected.Join(a);
  CounterMap caught_up = b;
  caught_up.Join(a.Since(b.state().ctx));
  RC_ASSERT(caught_up == expected);
}

}  // namespace
}  // namespace meridian::crdt
