#pragma once

// Lease messages (replication/lease.h) to and from their wire form (LeaseFrame in
// replication.proto). Decoding validates: a malformed frame is InvalidArgument, never a crash.

#include "absl/status/statusor.h"
#include "replication/lease.h"
#include "replication/replication.pb.h"

namespace meridian::replication {

// The highest epoch a peer may name: 2^53, far beyond any lease's lifetime of takeovers, so that
// epoch + 1 never wraps, and exact in JSON (order events carry epochs).
inline constexpr uint64_t kMaxEpoch = uint64_t{1} << 53;

v1::LeaseFrame ToLeaseFrame(const LeaseMessage& m);
absl::StatusOr<LeaseMessage> FromLeaseFrame(const v1::LeaseFrame& l);

}  // namespace meridian::replication
