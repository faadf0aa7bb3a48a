#pragma once

// Delta batches on the wire: building one from outbox records, and checking and decoding a peer's
// (a malformed, truncated, oversized or lying frame is an InvalidArgument, never a crash).
// Pure functions: no I/O.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "replication/replication.pb.h"

namespace meridian::replication {

namespace pb = ::meridian::replication::v1;

inline constexpr uint32_t kMaxBatchBytes = 16u << 20;  // uncompressed
inline constexpr int kMaxBatchRecords = 10000;
// The highest seq a peer may name (in a batch, an ack or its hello's resume points): far above
// any real outbox, and low enough that seq + 1 never overflows.
inline constexpr int64_t kMaxSeq = int64_t{1} << 62;
// Commit times a record may carry (Unix ms): from 1970 to about the year 3000.
inline constexpr int64_t kMaxCommittedUnixMs = int64_t{1} << 45;

// A batch of outbox records in seq order, or one of a state transfer (full documents with seq 0,
// first_seq 0; see DeltaBatch.state). No default: the two are validated differently, and a batch
// re-encoded as the wrong kind is refused by DecodeBatch.
enum class BatchKind { kDeltas, kState };

// Builds the batch of `records` (ascending seq, within [first_seq, last_seq]) of one origin
// database. Compresses with zlib when that saves at least an eighth.
pb::DeltaBatch EncodeBatch(uint32_t origin, const std::string& origin_database, int64_t first_seq,
                           int64_t last_seq, const pb::RecordList& records, int64_t now_unix_ms,
                           BatchKind kind);

// Checks a peer's batch against the stream's origin and the limits, and decodes its records.
absl::StatusOr<pb::RecordList> DecodeBatch(const pb::DeltaBatch& batch, uint32_t expected_origin);

// A database name as the region reports it: "global" or "shard-N" (1..64 of [a-z0-9-]).
bool ValidDatabaseName(const std::string& name);

}  // namespace meridian::replication
