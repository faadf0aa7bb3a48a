#pragma once

// Lease messages (replication/lease.h) to and from their wire form (LeaseFrame in
// replication.proto). Decoding validates: a malformed frame is InvalidArgument, never a crash.

#include "absl/status/statusor.h"
#include "replication/lease.h"
#include "replication/replication.pb.h"

namespace meridian::replication {

v1::LeaseFrame ToLeaseFrame(const LeaseMessage& m);
absl::StatusOr<LeaseMessage> FromLeaseFrame(const v1::LeaseFrame& l);

}  // namespace meridian::replication
