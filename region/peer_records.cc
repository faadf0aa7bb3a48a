#include "region/peer_records.h"

#include <algorithm>
#include <limits>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/json_text.h"
#include "crdt/codec.h"
#include "services/auth.h"
#include "services/domain.h"
#include "services/orders.h"

namespace meridian::region {
namespace {

using Json = nlohmann::json;

// An order event's epoch or version, as JSON carries it: an integer in 0..kMaxEpoch.
bool InEpochRange(const Json& v) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= kMaxEpoch;
  const int64_t x = v.get<int64_t>();
  return x >= 0 && static_cast<uint64_t>(x) <= kMaxEpoch;
}

// An integer in [lo, hi] (0 <= hi), as JSON may carry it: signed or unsigned, never a float.
bool IntegerIn(const Json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) {
    const uint64_t x = v.get<uint64_t>();
    return x <= static_cast<uint64_t>(hi) && (lo <= 0 || x >= static_cast<uint64_t>(lo));
  }
  const int64_t x = v.get<int64_t>();
  return x >= lo && x <= hi;
}

constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
// A write's HLC: its physical part (the high 48 bits) within the commit times' bound, 2^45 ms
// since 1970 (year ~3084). Beyond, one forged write would outrank every real one for ever.
constexpr int64_t kMaxHlc = int64_t{1} << 61;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// Characters as PostgreSQL's length() counts them in a UTF-8 database (nlohmann's parser
// admits only valid UTF-8): every byte that does not continue a sequence.
size_t Utf8Length(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// Whether `j` lacks `field`, or has it and `ok` holds for it (present as null counts as present:
// the apply's j.value() would throw on it).
template <typename Pred>
bool Optional(const Json& j, const char* field, Pred ok) {
  auto it = j.find(field);
  return it == j.end() || ok(*it);
}

bool IsString(const Json& v) { return v.is_string(); }

// Whether a string of `j` (a value or a key, at any depth) holds U+0000, which JSON may escape
// but PostgreSQL's text cannot store: libpqxx's quoting stops at it, so "\u0000" would be stored
// as '' (and fail a CHECK after other databases of the call committed) and "ab\u0000c" as "ab".
bool HoldsNul(const Json& j) {
  if (j.is_string()) return HasNul(j.get_ref<const std::string&>());
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (HasNul(it.key()) || HoldsNul(it.value())) return true;
    }
    return false;
  }
  if (j.is_array())
    return std::any_of(j.begin(), j.end(), [](const Json& v) { return HoldsNul(v); });
  return false;
}

// What is wrong with a peer's record (see the header): every field that Apply and
// ApplyOrderEvent read. Empty when the record is well formed.
std::string ProductWriteProblem(const Json& j, const std::string& key) {
  auto text = [&](const char* f, size_t min, size_t max) {
    return Optional(j, f, [&](const Json& v) {
      if (!v.is_string()) return false;
      const size_t n = Utf8Length(v.get<std::string>());
      return n >= min && n <= max;
    });
  };
  if (!j.contains("sku") || !j["sku"].is_string() ||
      !services::ValidateSku(j["sku"].get<std::string>()).ok()) {
    return "sku: a SKU";
  }
  // The record's key names the document (the Redis copy dropped, the keys a survivor lists after
  // a loss): it must be the row the apply writes.
  if (j["sku"].get<std::string>() != key) return "sku: not the record's key";
  if (!j.contains("hlc") || !IntegerIn(j["hlc"], 0, kMaxHlc) || !j["hlc"].is_number_unsigned()) {
    return "hlc: 0..2^61 (a physical part within 2^45 ms since 1970)";
  }
  if (!j.contains("name") || !text("name", 1, 200)) return "name: 1..200 characters";
  if (!text("description", 0, 4000)) return "description: at most 4000 characters";
  if (!Optional(j, "category", [](const Json& v) {
        return v.is_string() && (v.get<std::string>().empty() ||
                                 services::ValidateCategoryId(v.get<std::string>()).ok());
      })) {
    return "category: empty or a category id ([a-z0-9-]{1,64})";
  }
  if (!j.contains("price_cents") || !IntegerIn(j["price_cents"], 0, kInt64Max)) {
    return "price_cents: an integer >= 0";
  }
  if (!j.contains("currency") || !j["currency"].is_string() ||
      !services::ValidateCurrency(j["currency"].get<std::string>()).ok()) {
    return "currency: three capital letters";
  }
  if (!Optional(j, "origin", [](const Json& v) { return IntegerIn(v, 0, 255); })) {
    return "origin: a replica id";
  }
  return "";
}

// What is wrong with an inventory document or delta of `sku` from a peer ("" when nothing):
// every item is `sku`'s, and every entry's replica is a region (1..255). With `writer` (not 0),
// every entry is one that replica wrote. Every entry has one writer (bounded_counter.h), and a
// region's deltas are its own mutations: the units it restocked, moved or spent. Only a state
// transfer carries the other writers' entries. A delta holding another region's entry (this
// region's own restocks, say) would give rights to units nobody restocked (review of the
// inventory paths, finding 2).
std::string InventoryDeltaProblem(const crdt::Inventory& inv, const std::string& sku,
                                  uint32_t writer) {
  for (const auto& [item, counter] : inv.items()) {
    if (item != sku) return "inventory delta names another SKU than its key";
    // Stock rights belong to regions (replica ids 1..255): units of any other id could never be
    // sold or given back, and enough such ids make the joined document one that no longer
    // decodes (the SKU could then be neither sold nor released).
    for (const crdt::ReplicaId r : counter.Replicas()) {
      if (r < 1 || r > 255) {
        return absl::StrCat("inventory rights of replica ", r, ", which is no region (1..255)");
      }
    }
    if (writer == 0) continue;
    for (const auto& t : counter.transfers()) {
      if (t.from != writer) {
        return absl::StrCat("an inventory delta of region ", writer,
                            " carries rights written by replica ", t.from);
      }
    }
    for (const auto& u : counter.spent()) {
      if (u.replica != writer) {
        return absl::StrCat("an inventory delta of region ", writer,
                            " carries units spent by replica ", u.replica);
      }
    }
  }
  return "";
}

// The bytes of one encoded stock take, at most (a take is one SKU's spent entry and its dot: a few
// dozen bytes).
constexpr size_t kMaxStockTakeBytes = 1024;

// One stock take of `sku` (its encoded inventory delta): units spent by `writer` (0: by any
// region), of that SKU and nothing else, since a checkout spends and moves no rights. Decoded
// into `out`; "" or what is wrong.
std::string StockTakeProblem(const std::string& sku, std::string_view bytes, uint32_t writer,
                             uint32_t replica_id, std::vector<crdt::Inventory>* out) {
  if (bytes.size() > kMaxStockTakeBytes) {
    return absl::StrCat("stock_takes: a take of at most ", kMaxStockTakeBytes, " bytes");
  }
  auto take = crdt::DecodeInventory(bytes, replica_id);
  if (!take.ok()) return absl::StrCat("stock_takes: ", take.status().message());
  if (const std::string why = InventoryDeltaProblem(*take, sku, writer); !why.empty()) {
    return "stock_takes: " + why;
  }
  if (take->items().size() != 1 || !take->items()[0].second.transfers().empty()) {
    return "stock_takes: a take is units spent of its SKU, nothing else";
  }
  out->push_back(*std::move(take));
  return "";
}

// An order's `created` event carries its checkout's stock takes ("stock_takes": SKU -> the base64
// of the take's inventory delta), so that a region holding the order holds its stock consumption
// too, whatever became of the stock stream that carries the take as well (review of the inventory
// paths, finding 1). Each take names a SKU of the order's items and is a StockTakeProblem-checked
// take spent by the event's origin (`origin`; 0 in a state transfer, whose orders a survivor may
// pass on from any region). Decoded into `out`; "" or what is wrong.
std::string StockTakesProblem(const Json& j, uint32_t origin, uint32_t replica_id,
                              std::vector<crdt::Inventory>* out) {
  const Json& takes = j["stock_takes"];
  if (!takes.is_object()) return "stock_takes: an object of SKU to take";
  if (j["event"] != "created") return "stock_takes: only in a created event";
  if (!j.contains("items") || takes.size() > j["items"].size()) {
    return "stock_takes: more takes than items";
  }
  for (auto it = takes.begin(); it != takes.end(); ++it) {
    const std::string& sku = it.key();
    const bool ordered = std::any_of(j["items"].begin(), j["items"].end(), [&](const Json& item) {
      return item.contains("sku") && item["sku"] == sku;
    });
    if (!ordered) return "stock_takes: a take of a SKU that is not among the items";
    std::string bytes;
    if (!it.value().is_string() ||
        it.value().get_ref<const std::string&>().size() > kMaxStockTakeBytes * 4 / 3 + 4 ||
        !absl::Base64Unescape(it.value().get<std::string>(), &bytes)) {
      return "stock_takes: base64 of an encoded inventory delta";
    }
    if (std::string why = StockTakeProblem(sku, bytes, origin, replica_id, out); !why.empty()) {
      return why;
    }
  }
  return "";
}

std::string OrderEventProblem(const Json& j) {
  if (!j.contains("user_id") || !j["user_id"].is_string()) return "user_id: a string";
  if (!j.contains("event") || !j["event"].is_string()) return "event: a string";
  if (!j.contains("epoch") || !InEpochRange(j["epoch"])) return "epoch: 0..2^53";
  // version and group are read only when they are integers (events from before leases lack
  // them, or carry something else).
  if (j.contains("version") && j["version"].is_number_integer() && !InEpochRange(j["version"])) {
    return "version: 0..2^53";
  }
  if (j.contains("group") && j["group"].is_number_integer() && !IntegerIn(j["group"], 0, 255)) {
    return "group: 0..255";
  }
  if (!Optional(j, "owner_region", IsString)) return "owner_region: a string";
  if (!Optional(j, "total_cents", [](const Json& v) { return IntegerIn(v, 0, kInt64Max); })) {
    return "total_cents: an integer >= 0";
  }
  if (!Optional(j, "currency", IsString)) return "currency: a string";
  if (!Optional(j, "created_at_ms",
                [](const Json& v) { return IntegerIn(v, 0, kMaxCreatedAtMs); })) {
    return "created_at_ms: 0..2^45 (ms since 1970)";
  }
  if (!Optional(j, "idempotency_key", [](const Json& v) {
        return v.is_string() && services::ValidateIdempotencyKey(v.get<std::string>()).ok();
      })) {
    return "idempotency_key: 1..128 of letters, digits and -_.:";
  }
  if (!Optional(j, "items", [](const Json& v) { return v.is_array(); })) return "items: a list";
  if (j.contains("items")) {
    for (const Json& it : j["items"]) {
      if (!it.is_object() || !Optional(it, "sku", IsString) ||
          !Optional(it, "quantity", [](const Json& v) { return IntegerIn(v, 1, kInt32Max); }) ||
          !Optional(it, "price_cents", [](const Json& v) { return IntegerIn(v, 0, kInt64Max); })) {
        return "items: objects of sku (a string), quantity (1..2^31-1) and price_cents (>= 0)";
      }
    }
  }
  // It picks the shard the event goes to, and is stored: an id as the region makes them.
  if (!services::IsUserId(j["user_id"].get<std::string>())) return "user_id: not a user id";
  return "";
}

std::string ProfileWriteProblem(const Json& j, const v1::OutboxRecord& rec) {
  auto str = [&](const char* f) { return j.is_object() && j.contains(f) && j[f].is_string(); };
  if (!str("user_id") || !str("email") || !str("name") || !str("password_hash")) {
    return "user_id, email, name and password_hash: strings";
  }
  if (!j.contains("hlc") || !j["hlc"].is_number_unsigned() || !IntegerIn(j["hlc"], 0, kMaxHlc)) {
    return "hlc: 0..2^61 (a physical part within 2^45 ms since 1970)";
  }
  const std::string email = j["email"].get<std::string>();
  if (j["user_id"].get<std::string>() != rec.key()) return "user_id: not the record's key";
  if (!services::ValidateEmail(email).ok()) return "email: an e-mail address";
  // A user's id is derived from the e-mail: another id with this e-mail would break the
  // e-mail's uniqueness in the apply.
  if (rec.key() != services::UserIdForEmail(email)) return "user_id: not the e-mail's user id";
  if (!Optional(j, "origin", [](const Json& v) { return IntegerIn(v, 0, 255); })) {
    return "origin: a replica id";
  }
  if (rec.residency().empty()) return "residency: required";
  return "";
}

absl::Status Bad(const std::string& why) { return absl::InvalidArgumentError(why); }

// The most events of one replica a peer's record may claim: far beyond any real count (4.5e15
// changes), far below the decoders' limit (2^62). Past it, this region's next change of the
// document would take its own counter past that limit, and the stored document would no longer
// decode (review of the stock paths, 2026-12-04: the SKU could then be neither sold nor released).
constexpr uint64_t kMaxPeerCounter = uint64_t{1} << 52;

// Empty when every counter in `seen` is within kMaxPeerCounter; else why not.
std::string CounterPastTheLimit(const crdt::CausalContext& seen) {
  uint64_t most = 0;
  crdt::ReplicaId of = 0;
  for (const auto& [replica, max] : seen.version_vector()) {
    if (max > most) std::tie(most, of) = std::pair{max, replica};
  }
  for (const crdt::Dot& d : seen.cloud()) {
    if (d.counter > most) std::tie(most, of) = std::pair{d.counter, d.replica};
  }
  if (most <= kMaxPeerCounter) return "";
  return absl::StrCat("claims event ", most, " of replica ", of, ", past the limit of ",
                      kMaxPeerCounter);
}

}  // namespace

std::string OrderStateProblem(const v1::OrderState& s, uint32_t replica_id,
                              std::vector<crdt::Inventory>* stock_takes) {
  auto epoch_like = [](uint64_t v) { return v >= 1 && v <= kMaxEpoch; };
  if (s.order_id().empty() || s.order_id().size() > 64 || HasNul(s.order_id())) {
    return "order_id: 1..64 characters, no NUL";
  }
  if (!services::IsUserId(s.user_id())) return "user_id: not a user id";
  if (s.group() < 1 || s.group() > 255) return "group: 1..255";
  if (!epoch_like(s.epoch())) return "epoch: 1..2^53";
  if (!epoch_like(s.version())) return "version: 1..2^53";
  if (!services::ParseOrderStatus(s.status()).ok()) return "status: an order status";
  if (s.total_cents() < 0) return "total_cents: >= 0";
  if (s.currency().size() > 16 || HasNul(s.currency())) return "currency: a currency code";
  if (!services::ValidateResidency(s.residency()).ok()) return "residency: 'any' or [a-z]{2,16}";
  if (s.created_at_ms() < 0 || s.created_at_ms() > kMaxCreatedAtMs) {
    return "created_at_ms: 0..2^45 (ms since 1970)";
  }
  if (s.payment_ref().size() > 256 || HasNul(s.payment_ref())) {
    return "payment_ref: at most 256 characters, no NUL";
  }
  if (s.items_size() > 1000) return "items: at most 1000";
  for (const auto& line : s.items()) {
    if (!services::ValidateSku(line.sku()).ok() || line.quantity() < 1 ||
        line.quantity() > kInt32Max || line.price_cents() < 0) {
      return "items: a SKU, quantity 1..2^31-1 and price_cents >= 0 each";
    }
  }
  if (s.stock_takes_size() > s.items_size()) return "stock_takes: more takes than items";
  for (const auto& take : s.stock_takes()) {
    const std::string& sku = take.first;
    const std::string& bytes = take.second;
    const bool ordered = std::any_of(s.items().begin(), s.items().end(),
                                     [&](const v1::OrderLine& line) { return line.sku() == sku; });
    if (!ordered) return "stock_takes: a take of a SKU that is not among the items";
    // A sync page may hold any region's orders (a survivor's catch-up), so any region's take.
    if (std::string why = StockTakeProblem(sku, bytes, 0, replica_id, stock_takes); !why.empty()) {
      return why;
    }
  }
  return "";
}

absl::Status CheckApplyCall(const v1::ApplyDeltasRequest& req, uint32_t replica_id) {
  if (req.origin() == 0 || req.origin() == replica_id) {
    return Bad("origin: a peer's replica id, not 0 or this region's own");
  }
  if (req.origin_database().empty() || req.origin_database().size() > 64 ||
      HasNul(req.origin_database())) {
    return Bad("origin_database: 1..64 characters, no NUL");
  }
  if (req.records_size() > 10000) return Bad("records: at most 10000 per call");
  if (req.state_end() && !req.state()) return Bad("state_end: only with state");
  if (req.state() && !req.state_end() && req.through_seq() != 0) {
    return Bad("through_seq: 0 in a state transfer's call that does not end it");
  }
  return absl::OkStatus();
}

absl::StatusOr<CheckedRecords> CheckPeerRecords(const v1::ApplyDeltasRequest& req,
                                                uint32_t replica_id,
                                                std::string_view jurisdiction) {
  CheckedRecords out;
  out.records.reserve(static_cast<size_t>(req.records_size()));
  int64_t last_seq = 0;
  for (const auto& rec : req.records()) {
    if (req.state()) {
      if (rec.seq() != 0) return Bad("records of a state transfer carry seq 0");
    } else {
      if (rec.seq() <= last_seq) return Bad("records: seq must ascend");
      last_seq = rec.seq();
    }
    // libpqxx quotes a string only up to its first NUL: a key "<victim>\0x" would read and write
    // the victim's row while every lookup by the whole key missed (the merge would start from an
    // empty document, and the stored cart be replaced by the delta alone).
    if (HasNul(rec.key())) {
      return Bad(absl::StrCat("record ", rec.seq(), ": its key holds a NUL byte"));
    }
    if (!services::ResidencyAllows(rec.residency(), jurisdiction)) {
      return Bad(absl::StrCat("residency violation: record ", rec.seq(), " is pinned to ",
                              rec.residency(), ", this region is ", std::string(jurisdiction)));
    }
    PeerRecord p;
    p.record = &rec;
    switch (rec.kind()) {
      case v1::OUTBOX_KIND_CART: {
        auto c = crdt::DecodeCart(rec.payload(), replica_id);
        if (!c.ok()) return Bad(absl::StrCat("record ", rec.seq(), ": ", c.status().message()));
        // A cart is a customer's: its key picks the shard and the profile its residency is
        // checked against, as an id the region makes.
        if (!services::IsUserId(rec.key())) return Bad("cart key: a user id");
        if (auto why = CounterPastTheLimit(c->version()); !why.empty()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": cart ", why));
        }
        p.cart = *std::move(c);
        p.shard_key = rec.key();
        break;
      }
      case v1::OUTBOX_KIND_INVENTORY: {
        auto inv = crdt::DecodeInventory(rec.payload(), replica_id);
        if (!inv.ok()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": ", inv.status().message()));
        }
        if (!services::ValidateSku(rec.key()).ok()) return Bad("inventory key: a SKU");
        if (auto why = CounterPastTheLimit(inv->version()); !why.empty()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": inventory ", why));
        }
        if (const std::string why =
                InventoryDeltaProblem(*inv, rec.key(), req.state() ? 0 : req.origin());
            !why.empty()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": ", why));
        }
        p.inventory = *std::move(inv);
        p.global = true;
        break;
      }
      case v1::OUTBOX_KIND_PRODUCT:
      case v1::OUTBOX_KIND_ORDER: {
        p.json = common::ParseJsonText<Json>(rec.payload());
        if (p.json.is_discarded() || !p.json.is_object()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": payload is not a JSON object"));
        }
        if (HoldsNul(p.json)) {
          return Bad(absl::StrCat("record ", rec.seq(), ": a string holds U+0000"));
        }
        if (rec.kind() == v1::OUTBOX_KIND_PRODUCT) {
          if (const std::string why = ProductWriteProblem(p.json, rec.key()); !why.empty()) {
            return Bad(absl::StrCat("record ", rec.seq(), ": malformed product write: ", why));
          }
          p.global = true;
        } else {
          if (const std::string why = OrderEventProblem(p.json); !why.empty()) {
            return Bad(absl::StrCat("record ", rec.seq(), ": malformed order event: ", why));
          }
          // A state transfer's orders come from the peer's tables, with the takes it stored
          // with them: spent by whichever region checked the order out (a survivor passes on a
          // lost region's orders), as a state transfer's stock documents may hold any region's.
          if (p.json.contains("stock_takes")) {
            const std::string why = StockTakesProblem(p.json, req.state() ? 0 : req.origin(),
                                                      replica_id, &p.stock_takes);
            if (!why.empty()) {
              return Bad(absl::StrCat("record ", rec.seq(), ": malformed order event: ", why));
            }
          }
          p.shard_key = p.json["user_id"].get<std::string>();
        }
        break;
      }
      case v1::OUTBOX_KIND_USER: {
        p.json = common::ParseJsonText<Json>(rec.payload());
        if (const std::string why = ProfileWriteProblem(p.json, rec); !why.empty()) {
          return Bad(absl::StrCat("record ", rec.seq(), ": malformed profile write: ", why));
        }
        if (HoldsNul(p.json)) {
          return Bad(absl::StrCat("record ", rec.seq(), ": a string holds U+0000"));
        }
        p.shard_key = rec.key();
        break;
      }
      default:
        return Bad(absl::StrCat("record ", rec.seq(), ": unknown kind"));
    }
    out.records.push_back(std::move(p));
  }
  if (req.through_seq() != 0 && req.through_seq() < last_seq) {
    return Bad("through_seq: below the last record's seq");
  }
  out.last_seq = std::max(last_seq, req.through_seq());
  return out;
}

}  // namespace meridian::region
