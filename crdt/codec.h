#pragma once

// Protobuf encoding of every CRDT state and delta (crdt/crdt.proto). Encoding is deterministic
// for a given value. Decoding trusts nothing: size limits, field ranges, ordering, uniqueness and
// the CRDT invariants are checked, and any violation is an InvalidArgument status naming what was
// wrong; a decoded value is always safe to Merge.

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "crdt/bounded_counter.h"
#include "crdt/cart.h"
#include "crdt/counters.h"
#include "crdt/inventory.h"
#include "crdt/or_set.h"
#include "crdt/registers.h"

namespace meridian::crdt {

inline constexpr uint32_t kFormatVersion = 1;

// Limits applied by every decoder.
struct DecodeLimits {
  size_t max_message_bytes = 8u << 20;
  size_t max_entries = 200'000;               // keys, lines, elements, changes, context entries
  size_t max_key_bytes = 256;                 // SKUs, set elements, map keys
  size_t max_value_bytes = 64u << 10;         // register values and cart fields
  uint64_t max_counter = uint64_t{1} << 62;   // dot counters
  int64_t max_abs_amount = int64_t{1} << 40;  // one counter change
};

using CounterMap = ORMap<std::string, CounterStore>;

std::string Encode(const GCounter& v);
std::string Encode(const PNCounter& v);
std::string Encode(const LWWRegister<std::string>& v);
std::string Encode(const MVRegister<std::string>& v);
std::string Encode(const AWORSet<std::string>& v);
std::string Encode(const CounterMap& v);
std::string Encode(const BoundedCounter& v);
std::string Encode(const Cart& v);
std::string Encode(const Inventory& v);
// Appends the encoding of `v` to `out`, reusing its buffer (the hot path of delta shipping).
// Hand-written wire encoding; byte-identical to EncodeCartReference (property-tested).
void EncodeTo(const Cart& v, std::string* out);
// The same encoding through the generated protobuf message: the reference for EncodeTo.
std::string EncodeCartReference(const Cart& v);
// The encodings of outbox records' deltas, without building the delta Carts (the hot path of a
// sender that logs each change and ships per-cart deltas). Byte-identical to Encode of the
// delta Cart (property-tested):
// - EncodeChangeDelta: the delta of Cart::AddChange, the cart {sku: {dot: amount}} with context
//   {dot}. Writes at most MaxChangeDeltaBytes(sku.size()) bytes at `out`; returns their end.
// - EncodeRemovalDelta: the delta of Cart::RemoveLine, no lines and context `retired`. Writes at
//   most MaxRemovalDeltaBytes(count) bytes.
// - EncodeRecordsTo: the join of several records' deltas in log order (what folding them with
//   Cart::JoinChange / Cart::JoinRemoval into an empty Cart gives).
// The ...To forms append to a string.
constexpr size_t MaxChangeDeltaBytes(size_t sku_bytes) { return 64 + sku_bytes; }
constexpr size_t MaxRemovalDeltaBytes(size_t count) { return 16 + 32 * count; }
char* EncodeChangeDelta(std::string_view sku, Dot dot, int64_t amount, char* out);
char* EncodeRemovalDelta(const Dot* retired, size_t count, char* out);
void EncodeChangeDeltaTo(std::string_view sku, Dot dot, int64_t amount, std::string* out);
void EncodeRemovalDeltaTo(const Dot* retired, size_t count, std::string* out);
// One outbox record: a change (retired_count == 0: dot, amount) or a removal of the line `sku`
// (the dots it retired). Views into the caller's storage.
struct CartRecord {
  std::string_view sku;
  Dot dot;
  int64_t amount = 0;
  const Dot* retired = nullptr;
  size_t retired_count = 0;
};
void EncodeRecordsTo(const CartRecord* records, size_t n, std::string* out);

absl::StatusOr<GCounter> DecodeGCounter(std::string_view bytes, const DecodeLimits& l = {});
absl::StatusOr<PNCounter> DecodePNCounter(std::string_view bytes, const DecodeLimits& l = {});
absl::StatusOr<LWWRegister<std::string>> DecodeLwwRegister(std::string_view bytes,
                                                           const DecodeLimits& l = {});
absl::StatusOr<MVRegister<std::string>> DecodeMvRegister(std::string_view bytes,
                                                         const DecodeLimits& l = {});
absl::StatusOr<AWORSet<std::string>> DecodeAworSet(std::string_view bytes,
                                                   const DecodeLimits& l = {});
absl::StatusOr<CounterMap> DecodeCounterMap(std::string_view bytes, const DecodeLimits& l = {});
absl::StatusOr<BoundedCounter> DecodeBoundedCounter(std::string_view bytes,
                                                    const DecodeLimits& l = {});
// `replica` is the local replica id of the result (kNoReplica for a delta that is only merged).
absl::StatusOr<Cart> DecodeCart(std::string_view bytes, ReplicaId replica = kNoReplica,
                                const DecodeLimits& l = {});
absl::StatusOr<Inventory> DecodeInventory(std::string_view bytes, ReplicaId replica = kNoReplica,
                                          const DecodeLimits& l = {});

}  // namespace meridian::crdt
