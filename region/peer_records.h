#pragma once

// A peer's ApplyDeltas call, checked and decoded before anything of it is applied (pass 1 of
// RegionInternal.ApplyDeltas): the call's own fields, then every record with every field that the
// apply reads, as the type it reads it as and within the ranges the schema's CHECK constraints
// and column types allow (region/migrations.cc). A record that passed here and failed in the apply
// would fail after other databases of the call had committed, as a region error rather than
// INVALID_ARGUMENT: the replicator would not count it as a rejected frame, and the peer would
// resend it forever.
//
// Pure functions (no I/O, no state), so that a fuzz target drives them (tests/fuzz).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "crdt/cart.h"
#include "crdt/inventory.h"
#include "region/control.pb.h"
#include "region/internal.pb.h"

namespace meridian::region {

// The highest epoch or version an order or a lease may carry: one a lease could have reached (an
// epoch far beyond would fix an order's status for good, and a fence's: no later owner could
// outrank it).
inline constexpr uint64_t kMaxEpoch = uint64_t{1} << 53;

// PostgreSQL's text holds no NUL, and libpqxx's quoting stops at the first one: a string with one
// would be stored (or looked up) cut short, as another value.
inline bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// The latest creation time an order may carry (`created_at_ms`, ms since 1970): 2^45, the year
// 3084.
inline constexpr int64_t kMaxCreatedAtMs = int64_t{1} << 45;

// One peer record that passed the checks, decoded.
struct PeerRecord {
  const v1::OutboxRecord* record = nullptr;  // points into the request
  std::optional<crdt::Cart> cart;            // OUTBOX_KIND_CART
  std::optional<crdt::Inventory> inventory;  // OUTBOX_KIND_INVENTORY
  // An order's `created` event: its checkout's stock takes, one SKU each (StockTakesProblem).
  std::vector<crdt::Inventory> stock_takes;
  nlohmann::json json;    // product, order and user records
  bool global = false;    // stock and catalog records: the global database stores them
  std::string shard_key;  // otherwise: the user id whose shard stores the record
};

struct CheckedRecords {
  std::vector<PeerRecord> records;  // in the request's order
  // The highest seq the call covers: its last record's or its through_seq, whichever is higher
  // (0 for a state transfer's call that does not end it).
  int64_t last_seq = 0;
};

// The call's own fields (origin, origin_database, record count, the state flags).
// InvalidArgument naming the first one that is wrong. `replica_id` is this region's.
absl::Status CheckApplyCall(const v1::ApplyDeltasRequest& req, uint32_t replica_id);

// Every record of `req`: seqs ascending (or 0 in a state transfer), residency allowed in
// `jurisdiction`, payloads decoded and their fields checked, through_seq not below the last seq.
// InvalidArgument naming the first bad record; nothing is decoded lazily afterwards.
// REQUIRES: CheckApplyCall(req, replica_id) is OK. The result points into `req`.
absl::StatusOr<CheckedRecords> CheckPeerRecords(const v1::ApplyDeltasRequest& req,
                                                uint32_t replica_id, std::string_view jurisdiction);

// An order's state from a peer (a takeover sync's page, ApplyOrderStates), checked as an order
// event's fields are (OrderEventProblem): "" when every field is one the apply can store and a
// lease could have made, else what is wrong. An epoch far beyond any real one would fix the
// order's status for good, and a value that fails in the database would fail after other orders
// of the page committed. Its stock takes (each units spent of one of its SKUs, by any region) are
// decoded and appended to `stock_takes`.
std::string OrderStateProblem(const v1::OrderState& s, uint32_t replica_id,
                              std::vector<crdt::Inventory>* stock_takes);

}  // namespace meridian::region
