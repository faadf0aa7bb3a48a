#include "region/documents.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "crdt/codec.h"

namespace meridian::region {
namespace {

TEST(CartActor, KeepsTheReplicaIdInTheLowByteAndIsNeverTheBareReplicaId) {
  for (uint32_t replica : {1u, 2u, 255u}) {
    for (const char* stream : {"", "0", "a1b2c3d4", "ffffffff"}) {
      crdt::ReplicaId actor = CartActor(replica, stream);
      EXPECT_EQ(actor & 0xff, replica) << stream;
      EXPECT_NE(actor >> 8, 0u) << stream;  // never the bare replica id, never 0
    }
  }
}

TEST(CartActor, IsStableForAStreamAndDiffersAcrossStreams) {
  EXPECT_EQ(CartActor(3, "5e0c1a9b"), CartActor(3, "5e0c1a9b"));
  EXPECT_NE(CartActor(3, "5e0c1a9b"), CartActor(4, "5e0c1a9b"));
  // A rebuilt database draws a new 8-hex-digit stream id: over many of them the actors of one
  // region do not repeat (24 bits of epoch; a repeat among 4,096 would be a 1-in-8 event).
  std::set<crdt::ReplicaId> seen;
  for (uint32_t i = 0; i < 4096; ++i) {
    char id[9];
    std::snprintf(id, sizeof id, "%08x", i * 2654435761u);
    seen.insert(CartActor(7, id));
  }
  EXPECT_GE(seen.size(), 4095u);
}

// A rebuilt region's cart changes must not take dots its earlier life used: the same cart,
// the same counters, but a new actor, so a peer holding the old changes keeps both.
TEST(CartActor, ARebuiltDatabasesChangesDoNotCollideWithItsEarlierOnes) {
  crdt::Cart before(CartActor(2, "0badf00d"));
  crdt::Cart peer_copy(CartActor(1, "11111111"));
  peer_copy.Merge(before.Add("sku-old", 1));   // the peer saw the earlier life's change
  crdt::Cart after(CartActor(2, "c0ffee00"));  // databases rebuilt: the cart starts empty
  crdt::Cart delta = after.Add("sku-new", 1);
  peer_copy.Merge(delta);
  after.Merge(peer_copy);
  EXPECT_EQ(peer_copy.Quantity("sku-new"), 1);
  EXPECT_EQ(peer_copy.Quantity("sku-old"), 1);
  EXPECT_TRUE(after == peer_copy);
}

}  // namespace
}  // namespace meridian::region
