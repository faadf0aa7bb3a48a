#include "crdt/causal_context.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <set>

namespace meridian::crdt {
namespace {

TEST(CausalContext, FoldsContiguousDotsIntoVersionVector) {
  CausalContext c;
  c.Insert({1, 2});
  c.Insert({1, 3});
  EXPECT_EQ(c.Max(1), 0u);
  EXPECT_EQ(c.cloud().size(), 2u);
  c.Insert({1, 1});
  EXPECT_EQ(c.Max(1), 3u);
  EXPECT_TRUE(c.cloud().empty());
  EXPECT_TRUE(c.CheckInvariants());
  EXPECT_EQ(c.Next(1), (Dot{1, 4}));
}

// The context behaves exactly like the set of dots it stands for.
RC_GTEST_PROP(CausalContextProp, MatchesASetOfDots, ()) {
  auto dots_a = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(1, 4), rc::gen::inRange<uint8_t>(1, 12)));
  auto dots_b = *rc::gen::container<std::vector<std::pair<uint8_t, uint8_t>>>(
      rc::gen::pair(rc::gen::inRange<uint8_t>(1, 4), rc::gen::inRange<uint8_t>(1, 12)));
  CausalContext a, b;
  std::set<Dot> sa, sb;
  for (auto [r, c] : dots_a) {
    a.Insert({r, c});
    sa.insert({r, c});
  }
  for (auto [r, c] : dots_b) {
    b.Insert({r, c});
    sb.insert({r, c});
  }
  RC_ASSERT(a.CheckInvariants());
  a.Join(b);
  sa.insert(sb.begin(), sb.end());
  RC_ASSERT(a.CheckInvariants());
  RC_ASSERT(a.DotCount() == sa.size());
  for (uint32_t r = 1; r < 4; ++r)
    for (uint64_t c = 1; c < 13; ++c) RC_ASSERT(a.Contains({r, c}) == (sa.count({r, c}) == 1));
}

}  // namespace
}  // namespace meridian::crdt
