#include "crdt/cart.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <map>
#include <tuple>

#include "crdt/crdt_testing.h"

namespace meridian::crdt {
namespace {

std::string Sku(uint32_t pick) { return "sku-" + std::to_string(pick % 5); }

struct CartModel {
  uint64_t clock = 0;
  testing::ChangeLog changes;
  testing::RemoveLog removes;

  Cart Make(ReplicaId id) { return Cart(id); }
  Cart Op(Cart& c, ReplicaId, uint32_t pick, uint32_t arg) {
    std::string sku = Sku(pick);
    switch (arg % 9) {
      case 0:
      case 1:
        removes[sku].push_back(c.version());
        return c.Remove(sku);
      case 2:
        for (uint32_t i = 0; i < 5; ++i) removes[Sku(i)].push_back(c.version());
        return c.Clear();
      case 3:
        clock += arg % 3;
        return c.SetCurrency((pick & 1) ? "EUR" : "USD", HlcTimestamp{clock});
      case 4:
        clock += arg % 3;
        return c.SetNote("note " + std::to_string(pick % 3), HlcTimestamp{clock});
      default: {
        int64_t amount = static_cast<int64_t>(arg % 5) - 1;
        Cart d = c.Add(sku, amount);
        changes[sku].push_back({d.state().store.Find(sku)->entries().front().first, amount});
        return d;
      }
    }
  }
  // Honest histories never look forged, whatever the order, duplication or loss of deltas.
  void Merge(Cart& into, const Cart& d) {
    RC_ASSERT(into.CheckSameWrites(d).ok());
    into.Merge(d);
  }

  std::optional<int64_t> Expected(const std::string& sku) const {
    return testing::ExpectedCounter(changes, removes, sku);
  }
};

TEST(Cart, ConcurrentAddsAllCount) {
  Cart eu(1), us(2);
  auto d1 = eu.Add("book", 1);
  auto d2 = us.Add("book", 2);
  eu.Merge(d2);
  us.Merge(d1);
  EXPECT_EQ(eu.Quantity("book"), 3);
  EXPECT_EQ(eu, us);
}

TEST(Cart, DynamoAnomalyIsImpossible) {
  // The Dynamo paper's cart: an item deleted in one replica reappears after a merge with a stale
  // replica. Here the stale copy's changes are covered by the remove's context.
  Cart a(1), b(2);
  auto add = a.Add("lamp", 2);
  b.Merge(add);
  auto rm = a.Remove("lamp");
  b.Merge(rm);
  a.Merge(b);
  b.Merge(add);  // replayed
  a.Merge(add);
  EXPECT_EQ(a.Quantity("lamp"), 0);
  EXPECT_TRUE(a.Lines().empty());
  EXPECT_EQ(a, b);
}

TEST(Cart, FieldsAreLastWriterWins) {
  Cart a(1), b(2);
  auto d1 = a.SetCurrency("EUR", HlcTimestamp{10});
  auto d2 = b.SetCurrency("USD", HlcTimestamp{11});
  a.Merge(d2);
  b.Merge(d1);
  EXPECT_EQ(*a.currency(), "USD");
  EXPECT_EQ(a, b);
}

// A forged record reusing a held dot on another line would be kept or dropped depending on the
// order of joins; with another amount, ChangesSince would never send the other version.
TEST(Cart, ARewrittenDotIsNamed) {
  Cart a(1);
  const Cart first = a.Add("x", 2);
  a.Add("y", 1);
  const Cart other_line = Cart(1).Add("y", 2);    // dot (1, 1) on y
  const Cart other_amount = Cart(1).Add("x", 3);  // dot (1, 1) with 3
  for (const Cart* forged : {&other_line, &other_amount}) {
    absl::Status st = a.CheckSameWrites(*forged);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("dot 1:1"), std::string_view::npos) << st;
    EXPECT_EQ(forged->CheckSameWrites(a).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(a.CheckSameWrites(first).ok());
  EXPECT_TRUE(a.CheckSameWrites(a).ok());
  // A dot this cart no longer holds (its line was removed) cannot be checked: the join drops it.
  Cart removed = a;
  removed.Remove("x");
  EXPECT_TRUE(removed.CheckSameWrites(other_line).ok());
  removed.Merge(other_line);
  EXPECT_EQ(removed.Quantity("y"), 1);
}

TEST(Cart, NovelPartDropsWhatTheStateHas) {
  Cart a(1), b(2);
  auto d = a.Add("x", 1);
  b.Merge(d);
  EXPECT_TRUE(d.NovelPart(b).Empty());
  auto d2 = a.Add("x", 1);
  Cart novel = d2.NovelPart(b);
  EXPECT_FALSE(novel.Empty());
  Cart c = b;
  c.Merge(novel);
  b.Merge(d2);
  EXPECT_EQ(c, b);
}

RC_GTEST_PROP(CartProp, JoinLaws, ()) {
  CartModel m;
  testing::CheckJoinLaws<Cart>(m);
}
RC_GTEST_PROP(CartProp, Converges, ()) {
  CartModel m;
  testing::CheckConvergence<Cart>(m);
}
RC_GTEST_PROP(CartProp, RemovedUnitsNeverComeBack, ()) {
  CartModel m;
  int n = *rc::gen::inRange(3, 6);
  auto rs = testing::RunScenario<Cart>(m, n, *testing::GenSteps());
  for (uint32_t i = 0; i < 5; ++i) {
    std::string sku = Sku(i);
    std::optional<int64_t> expected = m.Expected(sku);
    RC_ASSERT(rs[0].Quantity(sku) == expected.value_or(0));
  }
}
RC_GTEST_PROP(CartProp, ChangesSinceEqualsWholeState, ()) {
  CartModel m;
  auto states = testing::RandomStates<Cart>(m, *testing::GenSteps());
  Cart expected = states[1];
  expected.Merge(states[0]);
  Cart caught_up = states[1];
  caught_up.Merge(states[0].ChangesSince(states[1].version()));
  RC_ASSERT(caught_up == expected);
}
RC_GTEST_PROP(CartProp, NovelPartJoinsLikeTheWholeDelta, ()) {
  CartModel m;
  auto states = testing::RandomStates<Cart>(m, *testing::GenSteps());
  Cart whole = states[1];
  whole.Merge(states[0]);
  Cart novel = states[1];
  novel.Merge(states[0].NovelPart(states[1]));
  RC_ASSERT(novel == whole);
}

// The outbox-record primitives are the general join, specialised: folding records from several
// replicas, in any order, equals merging their deltas.
RC_GTEST_PROP(CartProp, RecordsFoldLikeDeltas, ()) {
  std::vector<Cart> replicas = {Cart(1), Cart(2), Cart(3)};
  struct Rec {
    std::string sku;
    Dot dot;
    int64_t amount;
    std::vector<Dot> retired;
  };
  std::vector<Rec> log;
  std::vector<Cart> deltas;
  auto ops = *rc::gen::container<std::vector<std::tuple<uint8_t, uint8_t, int8_t>>>(
      rc::gen::tuple(rc::gen::inRange<uint8_t>(0, 3), rc::gen::inRange<uint8_t>(0, 8),
                     rc::gen::arbitrary<int8_t>()));
  for (auto [r, what, v] : ops) {
    Cart& c = replicas[r];
    std::string sku = "s" + std::to_string(what % 4);
    if (what & 4) {
      Rec rec{sku, {}, 0, {}};
      Cart before = c;
      c.RemoveLine(sku, &rec.retired);
      deltas.push_back(before.Remove(sku));
      log.push_back(rec);
    } else {
      Cart before = c;
      Dot d = c.AddChange(sku, v);
      deltas.push_back(before.Add(sku, v));
      log.push_back({sku, d, v, {}});
    }
    if (v & 1) replicas[(r + 1) % 3].Merge(deltas.back());  // some deltas travel early
  }
  auto order = *rc::gen::arbitrary<std::vector<uint16_t>>();
  std::vector<size_t> perm(log.size());
  for (size_t i = 0; i < perm.size(); ++i) perm[i] = i;
  for (size_t i = 0; i < perm.size() && i < order.size(); ++i) {
    std::swap(perm[i], perm[order[i] % perm.size()]);
  }
  Cart folded, merged;
  for (size_t i : perm) {
    const Rec& rec = log[i];
    if (rec.retired.empty() && rec.dot.replica != kNoReplica) {
      folded.JoinChange(rec.sku, rec.dot, rec.amount);
    } else if (!rec.retired.empty()) {
      folded.JoinRemoval(rec.sku, rec.retired.data(), rec.retired.size());
    }
    merged.Merge(deltas[i]);
  }
  RC_ASSERT(folded == merged);
}

}  // namespace
}  // namespace meridian::crdt
