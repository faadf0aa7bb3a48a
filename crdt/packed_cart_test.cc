// The packed cart representation against the general one it replaces.
//
// The reference is ORMap<std::string, CounterStore> (the general DotMap/DotFun code the Cart used
// before it was packed): every Cart operation has an ORMap twin (Add = Update with CounterAdd,
// Remove = Remove, Merge = Join), so replaying the same random history through both must give the
// same state after every step, whichever form the Cart is in. Histories include values beyond the
// packed limits, so carts move to the general form and back.

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "crdt/cart.h"
#include "crdt/codec.h"

namespace meridian::crdt {
namespace {

using Reference = ORMap<std::string, CounterStore>;
using internal::PackedCart;

std::string Sku(uint32_t pick) {
  // Mostly short SKUs; now and then one longer than the packed form allows (255 bytes).
  if (pick % 97 == 96) return std::string(300, 'x') + std::to_string(pick % 2);
  return "sku-" + std::to_string(pick % 7);
}

int64_t Amount(uint32_t pick, int64_t small) {
  switch (pick % 16) {
    case 0:
      return PackedCart::kAmountMax + 1 + (pick >> 8) % 5;  // just beyond the packed range
    case 1:
      return PackedCart::kAmountMin - 1 - (pick >> 8) % 5;
    case 2:
      return PackedCart::kAmountMax;
    case 3:
      return PackedCart::kAmountMin;
    default:
      return small;
  }
}

bool Fits(const Reference::State& s) {
  PackedCart p;
  return PackedCart::Pack(s, &p);
}

// Checks a cart against its reference: same state, same context, same quantities, valid
// representation, and packed exactly when the state fits the packed form.
void CheckSame(const Cart& cart, const Reference& ref) {
  RC_ASSERT(cart.CheckInvariants());
  RC_ASSERT(cart.state() == ref.state());
  RC_ASSERT(cart.version() == ref.state().ctx);
  RC_ASSERT(cart.packed() == Fits(ref.state()));
  for (uint32_t i = 0; i < 7; ++i) {
    const CounterStore* line = ref.Find(Sku(i));
    RC_ASSERT(cart.Quantity(Sku(i)) == (line ? CounterValue(*line) : 0));
  }
  // Encoding does not depend on the form either, and decodes to the same cart.
  const std::string bytes = Encode(cart);
  RC_ASSERT(bytes == EncodeCartReference(cart));
  DecodeLimits limits;
  limits.max_key_bytes = 1024;  // the history's long SKUs
  auto decoded = DecodeCart(bytes, kNoReplica, limits);
  RC_ASSERT(decoded.ok());
  RC_ASSERT(decoded->state() == ref.state());
}

RC_GTEST_PROP(PackedCartProp, MatchesGeneralForm, ()) {
  // Replica ids: small, or spread over the whole range (the packed form stores them as given).
  const bool wide_ids = *rc::gen::arbitrary<bool>();
  const std::vector<ReplicaId> ids = wide_ids ? std::vector<ReplicaId>{4'000'000'000u, 7, 70'000}
                                              : std::vector<ReplicaId>{1, 2, 3};
  std::vector<Cart> carts;
  std::vector<Reference> refs;
  for (ReplicaId id : ids) {
    carts.emplace_back(id);
    refs.emplace_back();
  }
  struct Delta {
    Cart cart;
    Reference ref;
  };
  std::vector<Delta> deltas;
  auto ops = *rc::gen::container<std::vector<std::tuple<uint8_t, uint8_t, uint32_t, int8_t>>>(
      rc::gen::tuple(rc::gen::inRange<uint8_t>(0, 12), rc::gen::inRange<uint8_t>(0, 3),
                     rc::gen::arbitrary<uint32_t>(), rc::gen::arbitrary<int8_t>()));
  uint64_t foreign = 0;
  for (auto [kind, r, pick, small] : ops) {
    Cart& cart = carts[r];
    Reference& ref = refs[r];
    std::string sku = Sku(pick);
    if (kind < 5) {
      int64_t amount = Amount(pick, small % 6);
      Cart d = cart.Add(sku, amount);
      Reference rd = ref.Update(ids[r], sku, CounterAdd(amount));
      RC_ASSERT(d.state() == rd.state());
      deltas.push_back({std::move(d), std::move(rd)});
    } else if (kind < 7) {
      Cart d = cart.Remove(sku);
      Reference rd = ref.Remove(sku);
      RC_ASSERT(d.state() == rd.state());
      deltas.push_back({std::move(d), std::move(rd)});
    } else if (kind == 7) {
      Cart d = cart.Clear();
      Reference rd;
      for (uint32_t i = 0; i < 7; ++i) rd.Join(ref.Remove(Sku(i)));
      for (uint32_t i = 0; i < 2; ++i)
        rd.Join(ref.Remove(std::string(300, 'x') + std::to_string(i)));
      RC_ASSERT(d.state() == rd.state());
      deltas.push_back({std::move(d), std::move(rd)});
    } else if (kind < 10) {
      if (deltas.empty()) continue;
      const Delta& d = deltas[pick % deltas.size()];
      cart.Merge(d.cart);
      ref.Join(d.ref);
    } else if (kind == 10) {
      uint32_t from = (r + 1 + pick % 2) % 3;
      Cart state = carts[from];
      cart.Merge(state);
      ref.Join(refs[from]);
    } else {
      // A foreign change with a dot counter beyond 2^32 (a replica restored from a far-future
      // backup, or a forged delta): the receiver leaves the packed form for good.
      Dot dot{9, PackedCart::kCounterLimit + (++foreign)};
      Cart d;
      d.JoinChange(sku, dot, small);
      Reference::State rs;
      rs.store.FindOrInsert(sku).Insert(dot, small);
      rs.ctx.Insert(dot);
      RC_ASSERT(d.state() == rs);
      cart.Merge(d);
      ref.Join(Reference(rs));
      deltas.push_back({std::move(d), Reference(rs)});
    }
    CheckSame(cart, ref);
  }
  for (size_t i = 0; i < carts.size(); ++i) CheckSame(carts[i], refs[i]);
  // Converge everything both ways and compare once more.
  for (const Delta& d : deltas) {
    for (size_t i = 0; i < carts.size(); ++i) {
      carts[i].Merge(d.cart);
      refs[i].Join(d.ref);
    }
  }
  for (size_t i = 0; i < carts.size(); ++i) {
    CheckSame(carts[i], refs[i]);
    RC_ASSERT(carts[i] == carts[0]);
  }
}

// The join of two packed states equals the general join, for states built by real histories
// with partial, one-way syncs (so contexts have clouds and removals the other side has not seen).
RC_GTEST_PROP(PackedCartProp, JoinMatchesGeneralJoin, ()) {
  std::vector<Cart> carts = {Cart(1), Cart(2), Cart(300)};
  auto ops = *rc::gen::container<std::vector<std::tuple<uint8_t, uint8_t, uint8_t, int8_t>>>(
      rc::gen::tuple(rc::gen::inRange<uint8_t>(0, 8), rc::gen::inRange<uint8_t>(0, 3),
                     rc::gen::arbitrary<uint8_t>(), rc::gen::arbitrary<int8_t>()));
  std::vector<Cart> deltas;
  for (auto [kind, r, pick, v] : ops) {
    std::string sku = "s" + std::to_string(pick % 5);
    if (kind < 4) {
      deltas.push_back(carts[r].Add(sku, v));
    } else if (kind < 6) {
      deltas.push_back(carts[r].Remove(sku));
    } else if (!deltas.empty()) {
      carts[r].Merge(deltas[pick % deltas.size()]);  // out of order: clouds
    }
  }
  for (const Cart& a : carts) {
    for (const Cart& b : carts) {
      RC_ASSERT(a.packed() && b.packed());
      Cart joined = a;
      joined.Merge(b);
      Reference::State general = a.state();
      general.Join(b.state());
      RC_ASSERT(joined.CheckInvariants());
      RC_ASSERT(joined.state() == general);
    }
  }
}

// Encoding a one-record delta straight from the record gives Encode of the delta Cart.
RC_GTEST_PROP(PackedCartProp, RecordEncodersMatchDeltaEncoding, ()) {
  const auto replica = *rc::gen::inRange<uint32_t>(1, UINT32_MAX);
  const auto counter = *rc::gen::oneOf(rc::gen::inRange<uint64_t>(1, 300),
                                       rc::gen::inRange<uint64_t>(1, uint64_t{1} << 62));
  const auto amount =
      *rc::gen::oneOf(rc::gen::inRange<int64_t>(-3, 4), rc::gen::arbitrary<int64_t>());
  const auto sku = *rc::gen::container<std::string>(rc::gen::arbitrary<char>());
  Dot dot{replica, counter};
  Cart delta;
  delta.JoinChange(sku, dot, amount);
  std::string fast;
  EncodeChangeDeltaTo(sku, dot, amount, &fast);
  RC_ASSERT(fast == Encode(delta));

  auto dots = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(1, 4), rc::gen::inRange<uint8_t>(1, 9)));
  std::vector<Dot> retired;
  for (auto [r, c] : dots) retired.push_back(Dot{r, c});
  Cart removal;
  removal.JoinRemoval("x", retired.data(), retired.size());
  std::string fast_removal = "prefix";
  EncodeRemovalDeltaTo(retired.data(), retired.size(), &fast_removal);
  RC_ASSERT(fast_removal == "prefix" + Encode(removal));
}

// The deltas a local cart makes, encoded from its outbox records, equal its Add/Remove deltas.
TEST(PackedCart, RecordEncodersMatchLocalDeltas) {
  Cart a(2), b(2);
  for (int i = 0; i < 40; ++i) {
    std::string sku = "sku-" + std::to_string(i % 3);
    std::string fast;
    if (i % 5 == 4) {
      std::vector<Dot> retired;
      a.RemoveLine(sku, &retired);
      EncodeRemovalDeltaTo(retired.data(), retired.size(), &fast);
      EXPECT_EQ(fast, Encode(b.Remove(sku)));
    } else {
      Dot dot = a.AddChange(sku, i - 7);
      EncodeChangeDeltaTo(sku, dot, i - 7, &fast);
      EXPECT_EQ(fast, Encode(b.Add(sku, i - 7)));
    }
  }
  EXPECT_EQ(a, b);
}

// Local changes leave the block unsorted (lines in arrival order); its encoding is still the
// canonical one (lines sorted by SKU), read from a sorted copy that lives as long as the encoding
// needs it (the SKUs once pointed into a copy already freed: ASan reports that; in a release build
// a reused block made lines duplicated or out of order).
TEST(PackedCart, UnsortedLocalChangesEncodeCanonically) {
  std::vector<Cart> carts;
  for (int c = 0; c < 64; ++c) {
    Cart cart(3);
    for (int i = 0; i < 6; ++i) cart.AddChange("sku-" + std::string(1, char('z' - (i + c) % 7)), 1);
    carts.push_back(std::move(cart));
  }
  std::vector<std::string> encoded;
  for (const Cart& cart : carts) encoded.push_back(Encode(cart));
  for (size_t c = 0; c < carts.size(); ++c) {
    auto decoded = DecodeCart(encoded[c], 3);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, carts[c]);
    EXPECT_EQ(Encode(*decoded), encoded[c]);
  }
}

TEST(PackedCart, ManyLinesLeaveAndReenterThePackedForm) {
  Cart c(1);
  for (int i = 0; i < 300; ++i) c.Add("sku-" + std::to_string(1000 + i), 1);
  EXPECT_FALSE(c.packed());  // more than 255 lines
  EXPECT_EQ(c.Lines().size(), 300u);
  for (int i = 0; i < 100; ++i) c.Remove("sku-" + std::to_string(1000 + i));
  EXPECT_TRUE(c.packed());
  EXPECT_TRUE(c.CheckInvariants());
  EXPECT_EQ(c.Lines().size(), 200u);
  auto decoded = DecodeCart(Encode(c));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, c);
}

TEST(PackedCart, ManyChangesOnOneLine) {
  Cart c(1), general_peer(2);
  general_peer.Add("b", PackedCart::kAmountMax + 1);  // keeps this peer general
  for (int i = 0; i < 260; ++i) {
    Cart d = c.Add("a", 1);
    general_peer.Merge(d);
  }
  EXPECT_FALSE(c.packed());  // 260 changes on one line
  EXPECT_EQ(c.Quantity("a"), 260);
  c.Remove("a");
  EXPECT_TRUE(c.packed());
  EXPECT_EQ(general_peer.Quantity("a"), 260);
  general_peer.Merge(c);
  EXPECT_EQ(general_peer.Quantity("a"), 0);
  EXPECT_EQ(general_peer.Quantity("b"), PackedCart::kAmountMax + 1);
}

TEST(PackedCart, ManyReplicas) {
  Cart c(1);
  for (ReplicaId r = 2; r < 300; ++r) {
    Cart peer(r);
    c.Merge(peer.Add("x", 1));
  }
  EXPECT_FALSE(c.packed());  // more than 255 replicas in the context
  EXPECT_EQ(c.Quantity("x"), 298);
  EXPECT_TRUE(c.CheckInvariants());
  c.Add("x", 1);
  EXPECT_EQ(c.Quantity("x"), 299);
  auto decoded = DecodeCart(Encode(c));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, c);
}

TEST(PackedCart, CloudDotsFoldIntoTheLocalPrefix) {
  // Replica 1's own later dots come back from a peer (a restore from an old backup): the next
  // local change takes the first free counter, and the cloud folds into the prefix.
  Cart original(1);
  std::vector<Cart> deltas;
  for (int i = 0; i < 4; ++i) deltas.push_back(original.Add("a", 1));
  Cart restored(1);
  restored.Merge(deltas[0]);
  restored.Merge(deltas[2]);
  restored.Merge(deltas[3]);  // counters 3 and 4 in the cloud
  EXPECT_EQ(restored.version().cloud().size(), 2u);
  Dot next = restored.AddChange("b", 1);
  EXPECT_EQ(next, (Dot{1, 2}));
  EXPECT_TRUE(restored.version().cloud().empty());
  EXPECT_EQ(restored.version().version_vector()[0].second, 4u);
  EXPECT_TRUE(restored.CheckInvariants());
}

TEST(PackedCart, SmallCartsAreSmall) {
  // The point of the packed form: a typical cart (6 lines, 10 changes, 3 replicas) in one block
  // of about 200 bytes next to a 32-byte Cart.
  Cart c(1), p2(2), p3(3);
  for (int i = 0; i < 10; ++i) {
    c.Merge((i % 3 == 0 ? p2 : (i % 3 == 1 ? p3 : c)).Add("sku-000" + std::to_string(i % 6), 1));
  }
  EXPECT_TRUE(c.packed());
  EXPECT_LE(sizeof(Cart), 32u);
  EXPECT_LE(c.LineBytes(), 256u);
}

}  // namespace
}  // namespace meridian::crdt
