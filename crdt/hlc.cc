#include "crdt/hlc.h"

#include <algorithm>

namespace meridian::crdt {

HlcTimestamp Hlc::Advance(uint64_t floor_value, uint64_t physical_now_ms) {
  physical_now_ms = std::min(physical_now_ms, HlcTimestamp::kMaxPhysicalMs);
  HlcTimestamp wall = HlcTimestamp::Make(physical_now_ms, 0);
  // The next timestamp is the larger of the wall clock and one tick past everything seen. Adding 1
  // to the packed value carries a full logical counter into the millisecond, which is exactly the
  // "borrow the next millisecond" rule.
  uint64_t next = std::max(wall.value, floor_value + 1);
  last_ = HlcTimestamp{next};
  return last_;
}

HlcTimestamp Hlc::Now(uint64_t physical_now_ms) { return Advance(last_.value, physical_now_ms); }

HlcTimestamp Hlc::Observe(HlcTimestamp remote, uint64_t physical_now_ms) {
  return Advance(std::max(last_.value, remote.value), physical_now_ms);
}

}  // namespace meridian::crdt
