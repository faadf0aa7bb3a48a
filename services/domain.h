#pragma once

// Pure domain rules shared by the region's handlers: shard placement, input validation, the
// sandbox payment provider's decision, reconciliation. No I/O.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace meridian::services {

// Jump consistent hash (Lamping & Veach, 2014) of a 64-bit key into [0, buckets): adding a shard
// moves only 1/(k+1) of the users. The key is the FNV-1a hash of the user id.
int32_t JumpHash(uint64_t key, int32_t buckets);
uint64_t Fnv1a64(std::string_view s);
inline int32_t ShardForUser(std::string_view user_id, int32_t shards) {
  return JumpHash(Fnv1a64(user_id), shards);
}

// Field validators: OK or InvalidArgument naming the field.
absl::Status ValidateSku(std::string_view sku);
// An item of a declaration that a region is lost (its rights reclaimed in one SKU), or of its
// write-off: a valid SKU, 1..2^40 units, and `received` (the lost region's rights ever received
// in the SKU, as the declarer saw them) unknown (0) or at least the units, at most what a
// bounded counter can hold.
bool ValidReclaimedItem(std::string_view sku, uint64_t units, uint64_t received = 0);
absl::Status ValidateEmail(std::string_view email);
absl::Status ValidatePassword(std::string_view password);
absl::Status ValidateResidency(std::string_view residency);  // "any" or [a-z]{2,16}
absl::Status ValidateCurrency(std::string_view currency);    // ISO 4217 shape
absl::Status ValidateCategoryId(std::string_view id);
// A checkout's Idempotency-Key: 1..128 of letters, digits and -_.: (a header value, and a field
// of the order's created event).
absl::Status ValidateIdempotencyKey(std::string_view key);
// Free text (names, descriptions, search queries, any query/path/body string stored or sent to
// PostgreSQL): min_len..max_len bytes of valid UTF-8 without control characters (C0 except tab
// and newline, DEL, C1).
absl::Status ValidateText(std::string_view field, std::string_view value, size_t min_len,
                          size_t max_len);
// What CheckText found; ValidateText and ValidateEmail turn it into their field's message.
enum class TextProblem { kNone, kInvalidUtf8, kControl };
TextProblem CheckText(std::string_view value);

// Whether a customer pinned to `residency` may have data in a region of `jurisdiction`.
inline bool ResidencyAllows(std::string_view residency, std::string_view jurisdiction) {
  return residency == "any" || residency == jurisdiction;
}

// The sandbox provider's rules, like a real provider's test cards: the number must pass the Luhn
// check (else InvalidArgument); 4000000000000002 is always declined, everything else approved.
enum class CardDecision { kApproved, kDeclined };
absl::Status ValidateCardNumber(std::string_view number);
CardDecision SandboxDecision(std::string_view card_number);

// Reconciliation: compares the provider's charges with the orders that reference them. A
// declined charge, or a refunded one that no order references (the compensation of a payment
// whose order changed meanwhile), is settled and never a mismatch.
struct ProviderCharge {
  std::string charge_id;
  std::string order_id;
  std::string status;  // captured, declined, refunded
  int64_t amount_cents = 0;
};
struct OrderPayment {
  std::string order_id;
  std::string status;       // order status
  std::string payment_ref;  // charge id, empty if none
  int64_t total_cents = 0;
};
struct Mismatch {
  std::string kind;  // charge_without_order, paid_order_without_charge, amount_differs,
                     // status_differs
  std::string order_id;
  std::string charge_id;
  std::string detail;
};
// Orders paid with a charge another region took (ChargeTakenElsewhere) are not compared: each
// region's provider holds only its own charges, and the region that took one reconciles it.
std::vector<Mismatch> Reconcile(const std::vector<ProviderCharge>& charges,
                                const std::vector<OrderPayment>& orders, uint32_t replica_id);

// A charge id names the region that took it: "ch<replica id>_<24 hex digits>".
std::string ChargeIdPrefix(uint32_t replica_id);
// True for a charge id of another region than `replica_id` (ids without a region, from before,
// count as this region's).
bool ChargeTakenElsewhere(std::string_view charge_id, uint32_t replica_id);

}  // namespace meridian::services
