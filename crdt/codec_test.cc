#include "crdt/codec.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <limits>

#include "crdt/crdt.pb.h"

namespace meridian::crdt {
namespace {

Cart RandomCart() {
  Cart a(1), b(2);
  auto ops = *rc::gen::container<std::vector<std::pair<uint8_t, int8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(0, 12), rc::gen::arbitrary<int8_t>()));
  uint64_t t = 0;
  for (auto [op, v] : ops) {
    Cart& c = (op & 1) ? a : b;
    std::string sku = "sku-" + std::to_string(op % 4);
    if (op < 7) {
      b.Merge(a.Add(sku, v));
    } else if (op < 9) {
      c.Remove(sku);
    } else if (op == 9) {
      c.SetNote("n" + std::to_string(v), HlcTimestamp{++t});
    } else if (op == 10) {
      a.Merge(b);
    } else {
      c.SetCurrency("EUR", HlcTimestamp{++t});
    }
  }
  return (ops.size() % 2) ? a : b;
}

RC_GTEST_PROP(CodecProp, CartRoundTrips, ()) {
  Cart c = RandomCart();
  auto decoded = DecodeCart(Encode(c));
  RC_ASSERT(decoded.ok());
  RC_ASSERT(*decoded == c);
  RC_ASSERT(Encode(*decoded) == Encode(c));  // deterministic
}

RC_GTEST_PROP(CodecProp, FastCartEncoderMatchesProtobuf, ()) {
  Cart c = RandomCart();
  RC_ASSERT(Encode(c) == EncodeCartReference(c));
  Cart d(3);
  d.Merge(c.ChangesSince(CausalContext{}));
  RC_ASSERT(Encode(d) == EncodeCartReference(d));
}

RC_GTEST_PROP(CodecProp, InventoryRoundTrips, ()) {
  Inventory a(1), b(2);
  auto ops = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(0, 8), rc::gen::inRange<uint8_t>(1, 9)));
  for (auto [op, n] : ops) {
    std::string sku = "s" + std::to_string(op % 3);
    Inventory& inv = (op & 1) ? a : b;
    absl::StatusOr<Inventory> d =
        op < 3 ? inv.Restock(sku, n)
               : (op < 6 ? inv.Take(sku, n) : inv.Transfer(sku, op & 1 ? 2 : 1, n));
    if (d.ok() && (n & 1)) ((op & 1) ? b : a).Merge(*d);
  }
  auto decoded = DecodeInventory(Encode(a));
  RC_ASSERT(decoded.ok());
  RC_ASSERT(*decoded == a);
}

RC_GTEST_PROP(CodecProp, SmallTypesRoundTrip, ()) {
  GCounter g;
  PNCounter p;
  LWWRegister<std::string> lww;
  MVRegister<std::string> mv;
  AWORSet<std::string> set;
  CounterMap map;
  BoundedCounter bc;
  auto ops = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(1, 4), rc::gen::arbitrary<uint8_t>()));
  uint64_t seq = 0;
  for (auto [r, v] : ops) {
    g.Increment(r, v);
    p.Decrement(r, v % 3);
    lww.Set(std::to_string(v), Stamp{HlcTimestamp{v}, r});
    mv.Write(r, std::to_string(v));
    if (v & 1) {
      set.Add(r, std::to_string(v % 5));
    } else {
      set.Remove(std::to_string(v % 5));
    }
    map.Update(r, std::to_string(v % 3), CounterAdd(v));
    (void)bc.Increment(r, v, ++seq);
    (void)bc.Move(r, r % 3 + 1, v / 2, ++seq);
  }
  RC_ASSERT(*DecodeGCounter(Encode(g)) == g);
  RC_ASSERT(*DecodePNCounter(Encode(p)) == p);
  RC_ASSERT(*DecodeLwwRegister(Encode(lww)) == lww);
  RC_ASSERT(*DecodeMvRegister(Encode(mv)) == mv);
  RC_ASSERT(*DecodeAworSet(Encode(set)) == set);
  RC_ASSERT(*DecodeCounterMap(Encode(map)) == map);
  RC_ASSERT(*DecodeBoundedCounter(Encode(bc)) == bc);
}

// Any byte string: either a clean error or a value that is internally consistent and mergeable.
RC_GTEST_PROP(CodecProp, GarbageIsAnErrorOrAValidValue, ()) {
  auto bytes = *rc::gen::container<std::string>(rc::gen::arbitrary<char>());
  auto c = DecodeCart(bytes);
  if (c.ok()) {
    RC_ASSERT(c->version().CheckInvariants());
    Cart mine(9);
    mine.Merge(*c);
    mine.Add("x", 1);
  }
  auto inv = DecodeInventory(bytes);
  if (inv.ok()) RC_ASSERT(inv->version().CheckInvariants());
}

TEST(Codec, RejectsHostileCarts) {
  v1::Cart m;
  m.set_format_version(kFormatVersion);
  auto* line = m.add_lines();
  line->set_sku("a");
  auto* ch = line->add_changes();
  ch->set_replica(1);
  ch->set_counter(1);
  ch->set_value(1);
  std::string ok = m.SerializeAsString();
  EXPECT_TRUE(DecodeCart(ok).ok());

  v1::Cart dup = m;  // the same dot on two lines
  auto* l2 = dup.add_lines();
  l2->set_sku("b");
  *l2->add_changes() = *ch;
  EXPECT_FALSE(DecodeCart(dup.SerializeAsString()).ok());

  v1::Cart unsorted = m;
  unsorted.mutable_lines(0)->set_sku("z");
  auto* l3 = unsorted.add_lines();
  l3->set_sku("a");
  auto* c3 = l3->add_changes();
  c3->set_replica(2);
  c3->set_counter(1);
  EXPECT_FALSE(DecodeCart(unsorted.SerializeAsString()).ok());

  v1::Cart zero = m;
  zero.mutable_lines(0)->mutable_changes(0)->set_replica(0);
  EXPECT_FALSE(DecodeCart(zero.SerializeAsString()).ok());

  v1::Cart huge = m;
  huge.mutable_lines(0)->mutable_changes(0)->set_value(int64_t{1} << 50);
  EXPECT_FALSE(DecodeCart(huge.SerializeAsString()).ok());

  v1::Cart version = m;
  version.set_format_version(2);
  auto st = DecodeCart(version.SerializeAsString());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("format_version"), std::string::npos);

  EXPECT_FALSE(DecodeCart(ok.substr(0, ok.size() - 1)).ok());  // truncated
  DecodeLimits small;
  small.max_message_bytes = 4;
  EXPECT_FALSE(DecodeCart(ok, kNoReplica, small).ok());
}

// A context whose version entries add up past 2^64 (four of 2^62, each within the decoder's
// limit). Its dot count used to wrap to 0: merges then skipped the removals it implies in one
// order and not the other, and ChangesSince, bounded by that count, walked 2^62 dots.
TEST(Codec, AContextOfMoreThan2To64DotsMergesTheSameInEitherOrder) {
  v1::Cart m;
  m.set_format_version(kFormatVersion);
  for (uint32_t replica : {1u, 2u, 3u, 7u}) {
    auto* e = m.mutable_context()->add_versions();
    e->set_replica(replica);
    e->set_counter(uint64_t{1} << 62);
  }
  auto hostile = DecodeCart(m.SerializeAsString());
  ASSERT_TRUE(hostile.ok()) << hostile.status();
  EXPECT_EQ(hostile->version().DotCount(), std::numeric_limits<uint64_t>::max());
  Cart a(7);
  a.Add("sku-a", 1);  // dot (7, 1): the hostile context covers it, so it removes the line
  Cart a_then_h = a, h_then_a = *hostile;
  a_then_h.Merge(*hostile);
  h_then_a.Merge(a);
  EXPECT_EQ(a_then_h.Quantity("sku-a"), 0);
  EXPECT_EQ(h_then_a.Quantity("sku-a"), 0);
  EXPECT_TRUE(a_then_h == h_then_a);
  // Bounded by the count, it gives the whole state (a valid delta) instead of walking the dots.
  Cart fresh(9);
  fresh.Merge(a_then_h.ChangesSince(CausalContext{}));
  EXPECT_TRUE(fresh.version() == a_then_h.version());
}

TEST(Codec, RejectsAnInventoryEventOnTwoEntries) {
  v1::Inventory m;
  m.set_format_version(kFormatVersion);
  for (const char* sku : {"sku-1", "sku-2"}) {
    auto* item = m.add_items();
    item->set_sku(sku);
    auto* t = item->add_transfers();
    t->set_from_replica(1);
    t->set_to_replica(1);
    t->set_units(5);
    t->set_seq(3);  // the same (1, 3) on both SKUs
  }
  auto st = DecodeInventory(m.SerializeAsString());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("on two entries"), std::string::npos) << st.status();
  m.mutable_items(1)->mutable_transfers(0)->set_seq(4);
  EXPECT_TRUE(DecodeInventory(m.SerializeAsString()).ok());
}

TEST(Codec, OneChangeCartDeltaIsSmall) {
  Cart c(1);
  Cart d = c.Add("sku-0042", 2);
  // format_version, one line with the SKU and one change; the context is implied.
  EXPECT_LE(Encode(d).size(), 22u);
}

}  // namespace
}  // namespace meridian::crdt
