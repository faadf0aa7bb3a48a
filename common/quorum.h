#pragma once

#include <algorithm>
#include <cstddef>

namespace meridian::common {

// How many regions (the taker included) must have answered a takeover sync before a won lease
// is used: a majority of the `regions`, but never the old owner too (with two regions and a
// witness the survivor is the only other copy there is, and it needs no one's answer).
constexpr size_t TakeoverSyncQuorum(size_t regions) {
  return std::max<size_t>(1, std::min(regions / 2 + 1, regions - 1));
}

// How many peers must hold a write before a region may say it survives the region's loss (a
// sync-peer checkout): enough that every takeover sync's quorum, drawn from the other regions,
// includes one of them. A quorum of q among the regions - 1 survivors misses at most
// regions - 1 - q of them, so regions - q peers are needed: 1 of 2 peers with three regions, 2 of
// 4 with five.
constexpr size_t PeersForSurvival(size_t regions) {
  return std::max<size_t>(1, regions - TakeoverSyncQuorum(regions));
}

static_assert(TakeoverSyncQuorum(2) == 1 && TakeoverSyncQuorum(3) == 2 &&
              TakeoverSyncQuorum(5) == 3 && TakeoverSyncQuorum(7) == 4);
static_assert(PeersForSurvival(2) == 1 && PeersForSurvival(3) == 1 && PeersForSurvival(4) == 1 &&
              PeersForSurvival(5) == 2 && PeersForSurvival(7) == 3);

}  // namespace meridian::common
