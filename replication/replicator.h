#pragma once

// meridian-replicator: one per region. Ships the region's outbox to every peer region over one
// mutually authenticated bidirectional gRPC stream per pair (the lower replica id dials), and
// applies what peers ship through the region's internal API (ApplyDeltas: a CRDT join plus the
// stream's high-water mark in one transaction per database, so a crash at any point loses nothing
// and applies nothing twice).
//
// Per stream: Hello both ways (region, jurisdiction, protocol version, and the resume point of
// every origin database), then DeltaBatch frames in seq order (batched by count, bytes and the
// outbox poll; bounded bytes in flight), Acks after the receiver's commit, Heartbeats when idle.
// A peer that goes quiet for peer_timeout_ms, or sends a bad frame, loses the stream; the dialer
// reconnects with exponential backoff and jitter and shipping resumes from the receiver's marks.
// The sender never ships a record whose residency the peer's jurisdiction does not allow; the
// receiver rejects (and logs and counts) a frame that carries one. The outbox is truncated
// through the lowest seq every peer has acked.

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "replication/config.h"

namespace meridian::replication {

class Replicator {
 public:
  static absl::StatusOr<std::unique_ptr<Replicator>> Start(ReplicatorConfig config);
  ~Replicator();
  // The replication port (useful with listen port 0).
  [[nodiscard]] uint16_t port() const;
  void Stop();

  struct Impl;

 private:
  explicit Replicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::replication
