#include "crdt/inventory.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

std::string Sku(uint32_t pick) { return "sku-" + std::to_string(pick % 3); }

struct InventoryModel {
  int replicas = 3;
  std::map<std::string, int64_t> truth;  // restocked - sold, per SKU
  Inventory global;                      // join of every delta made so far

  Inventory Make(ReplicaId id) { return Inventory(id); }
  Inventory Op(Inventory& inv, ReplicaId id, uint32_t pick, uint32_t arg) {
    std::string sku = Sku(pick);
    uint64_t n = arg % 4 + 1;
    absl::StatusOr<Inventory> d;
    switch (arg % 5) {
      case 0:
        d = inv.Restock(sku, n);
        if (d.ok()) truth[sku] += static_cast<int64_t>(n);
        break;
      case 1:
      case 2:
        d = inv.Take(sku, n);
        if (d.ok()) truth[sku] -= static_cast<int64_t>(n);
        break;
      default:
        d = inv.Transfer(sku, static_cast<ReplicaId>((id + pick % (replicas - 1)) % replicas + 1),
                         n);
    }
    RC_ASSERT(inv.Rights(sku, id) >= 0);
    if (!d.ok()) return Inventory{};
    global.Merge(*d);
    for (const auto& [s, c] : global.items()) {
      RC_ASSERT(c.Value() >= 0);  // never oversold, whatever the interleaving
      RC_ASSERT(c.Value() == truth[s]);
    }
    return *d;
  }
  // Honest histories never look forged, whatever the order, duplication or loss of deltas.
  void Merge(Inventory& into, const Inventory& d) {
    RC_ASSERT(into.CheckSameWrites(d).ok());
    into.Merge(d);
  }
};

TEST(Inventory, SellsOnlyWithinLocalRights) {
  Inventory eu(1), us(2);
  auto r = eu.Restock("sku-1", 3);
  ASSERT_TRUE(r.ok());
  us.Merge(*r);
  EXPECT_EQ(us.Available("sku-1"), 3);
  EXPECT_FALSE(us.Take("sku-1", 1).ok());  // the rights are eu's
  auto t = eu.Transfer("sku-1", 2, 2);
  ASSERT_TRUE(t.ok());
  us.Merge(*t);
  EXPECT_TRUE(us.Take("sku-1", 2).ok());
  EXPECT_FALSE(us.Take("sku-1", 1).ok());
  EXPECT_EQ(us.Rights("sku-1", 1), 1);
}

// One writer's entry only grows with its seq; a record out of step with the held one is forged.
TEST(Inventory, AnEntryOutOfStepIsNamed) {
  Inventory eu(1);
  auto three = eu.Restock("sku-1", 3);  // P[1][1] = 3 at seq 1
  auto five = eu.Restock("sku-1", 2);   // 5 at seq 2
  ASSERT_TRUE(three.ok() && five.ok());
  auto other_units = Inventory(1).Restock("sku-1", 6);  // 6 at seq 1, more than 5 at seq 2
  ASSERT_TRUE(other_units.ok());
  absl::Status st = eu.CheckSameWrites(*other_units);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("stock of sku-1"), std::string_view::npos) << st;
  Inventory fewer_later(1);
  ASSERT_TRUE(fewer_later.Restock("sku-1", 1).ok());
  ASSERT_TRUE(fewer_later.Restock("sku-1", 1).ok());
  auto two_at_three = fewer_later.Restock("sku-1", 0);  // 2 at seq 3, against 5 at seq 2
  ASSERT_TRUE(two_at_three.ok());
  EXPECT_EQ(eu.CheckSameWrites(*two_at_three).code(), absl::StatusCode::kInvalidArgument);
  // Only the held version is known: 4 at seq 1 could be an older step of it (the units at seq 1
  // were 3), so it passes.
  auto four = Inventory(1).Restock("sku-1", 4);
  ASSERT_TRUE(four.ok());
  EXPECT_TRUE(eu.CheckSameWrites(*four).ok());
  // Older and newer versions of the entry in step, another SKU, and a whole honest state pass.
  EXPECT_TRUE(eu.CheckSameWrites(*three).ok());
  EXPECT_TRUE(Inventory(2).CheckSameWrites(eu).ok());
  Inventory us(2);
  us.Merge(*three);
  EXPECT_TRUE(us.CheckSameWrites(eu).ok());
  auto other_sku = Inventory(1).Restock("sku-2", 9);
  ASSERT_TRUE(other_sku.ok());
  EXPECT_TRUE(eu.CheckSameWrites(*other_sku).ok());
}

RC_GTEST_PROP(InventoryProp, JoinLaws, ()) {
  InventoryModel m;
  testing::CheckJoinLaws<Inventory>(m);
}

RC_GTEST_PROP(InventoryProp, NeverOversellsAndConverges, ()) {
  InventoryModel m;
  m.replicas = *rc::gen::inRange(3, 6);
  auto rs = testing::RunScenario<Inventory>(m, m.replicas, *testing::GenSteps());
  for (const auto& r : rs) {
    RC_ASSERT(r == rs[0]);
    for (uint32_t i = 0; i < 3; ++i) RC_ASSERT(r.Available(Sku(i)) == m.truth[Sku(i)]);
  }
}

RC_GTEST_PROP(InventoryProp, ChangesSinceEqualsWholeState, ()) {
  InventoryModel m;
  auto states = testing::RandomStates<Inventory>(m, *testing::GenSteps());
  Inventory expected = states[1];
  expected.Merge(states[0]);
  Inventory caught_up = states[1];
  caught_up.Merge(states[0].ChangesSince(states[1].version()));
  RC_ASSERT(caught_up == expected);
  Inventory novel = states[1];
  novel.Merge(states[0].NovelPart(states[1]));
  RC_ASSERT(novel == expected);
}

}  // namespace
}  // namespace meridian::crdt
