#include "crdt/delta_buffer.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include "crdt/cart.h"

namespace meridian::crdt {
namespace {

TEST(DeltaBuffer, NeverSendsBackAndDropsRedundantParts) {
  Cart a_state(1), b_state(2), c_state(3);
  DeltaBuffer<Cart> b_buf;  // replica 2's buffer, peers 1 and 3
  b_buf.AddPeer(1);
  b_buf.AddPeer(3);
  Cart d = a_state.Add("x", 1);
  EXPECT_TRUE(b_buf.Receive(1, d, b_state));
  EXPECT_FALSE(b_buf.Receive(1, d, b_state));  // a duplicate adds nothing
  EXPECT_EQ(b_buf.size(), 1u);
  auto to_a = b_buf.Pending(1);
  ASSERT_TRUE(to_a.has_value());
  EXPECT_EQ(to_a->count, 0u);  // came from 1: not sent back
  auto to_c = b_buf.Pending(3);
  ASSERT_TRUE(to_c.has_value());
  EXPECT_EQ(to_c->count, 1u);
  c_state.Merge(to_c->delta);
  EXPECT_EQ(c_state.Quantity("x"), 1);
  b_buf.Ack(1, to_a->upto);
  b_buf.Ack(3, to_c->upto);
  EXPECT_EQ(b_buf.size(), 0u);
  EXPECT_FALSE(b_buf.Pending(3).has_value());
}

TEST(DeltaBuffer, OverflowAsksForFullSync) {
  Cart s(1);
  DeltaBuffer<Cart> buf(2);
  buf.AddPeer(2);
  buf.AddLocal(s.Add("a", 1));
  buf.AddLocal(s.Add("b", 1));
  EXPECT_FALSE(buf.NeedsFullSync(2));
  buf.AddLocal(s.Add("c", 1));
  EXPECT_TRUE(buf.NeedsFullSync(2));
  buf.ClearFullSync(2);
  EXPECT_FALSE(buf.Pending(2).has_value());
}

// RemoveInto/AddInto joined into an accumulator equal the join of the separate deltas.
RC_GTEST_PROP(CartProp, IntoVariantsEqualJoinedDeltas, ()) {
  Cart a(1), b(1);
  Cart acc, joined;
  auto ops = *rc::gen::container<std::vector<std::pair<uint8_t, int8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(0, 8), rc::gen::arbitrary<int8_t>()));
  for (auto [op, v] : ops) {
    std::string sku = "s" + std::to_string(op % 4);
    if (op & 4) {
      a.RemoveInto(sku, acc);
      joined.Merge(b.Remove(sku));
    } else {
      a.AddInto(sku, v, acc);
      joined.Merge(b.Add(sku, v));
    }
  }
  RC_ASSERT(a == b);
  RC_ASSERT(acc == joined);
}

// Gossip over a ring with buffers: everyone converges even though nobody sends back.
RC_GTEST_PROP(DeltaBufferProp, RingGossipConverges, ()) {
  const int n = *rc::gen::inRange(3, 6);
  std::vector<Cart> states;
  std::vector<DeltaBuffer<Cart>> bufs(n);
  for (int i = 0; i < n; ++i) {
    states.emplace_back(static_cast<ReplicaId>(i + 1));
    bufs[i].AddPeer(static_cast<ReplicaId>((i + 1) % n + 1));
  }
  auto ops = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(0, 255), rc::gen::inRange<uint8_t>(0, 255)));
  auto ship = [&](int i) {
    int next = (i + 1) % n;
    auto batch = bufs[i].Pending(static_cast<ReplicaId>(next + 1));
    if (!batch) return;
    bufs[next].Receive(static_cast<ReplicaId>(i + 1), batch->delta, states[next]);
    bufs[i].Ack(static_cast<ReplicaId>(next + 1), batch->upto);
  };
  for (auto [who, what] : ops) {
    int i = who % n;
    std::string sku = "s" + std::to_string(what % 4);
    if (what & 0x80) {
      ship(i);
    } else {
      bufs[i].AddLocal((what & 0x40) ? states[i].Remove(sku) : states[i].Add(sku, what % 3 + 1));
    }
  }
  for (int round = 0; round < n + 1; ++round)
    for (int i = 0; i < n; ++i) ship(i);
  for (int i = 1; i < n; ++i) RC_ASSERT(states[i] == states[0]);
}

}  // namespace
}  // namespace meridian::crdt
