#pragma once

#include <compare>
#include <cstdint>

namespace meridian::crdt {

// A replica (one region's copy of a document). 0 is never a valid replica id: it is what an
// unset protobuf field decodes to, so the codecs reject it.
using ReplicaId = uint32_t;
inline constexpr ReplicaId kNoReplica = 0;

// One event: the `counter`-th event made by `replica`. Counters start at 1.
struct Dot {
  ReplicaId replica = kNoReplica;
  uint64_t counter = 0;

  friend auto operator<=>(const Dot&, const Dot&) = default;
};

}  // namespace meridian::crdt
