// libFuzzer target for every CRDT decoder, the replication frame decoder and the region's checks of
// a peer's ApplyDeltas call. The first byte picks the decoder; the rest is the message. Whatever
// the input, a decoder must return an error or a value that keeps its invariants, re-encodes to
// bytes that decode to the same value, and merges without harm.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "crdt/codec.h"
#include "region/peer_records.h"
#include "replication/frames.h"

namespace {

using namespace meridian::crdt;  // NOLINT: a fuzz entry point, not a header

void Check(bool ok) {
  if (!ok) std::abort();
}

template <class T, class DecodeFn>
void RoundTrip(std::string_view bytes, DecodeFn decode) {
  absl::StatusOr<T> v = decode(bytes);
  if (!v.ok()) return;
  absl::StatusOr<T> again = decode(Encode(*v));
  Check(again.ok() && *again == *v);
  T merged = *v;
  merged.Join(*v);
  Check(merged == *v);
}

// A call the region's checks pass holds what the apply reads: every record decoded as its kind
// says, bound for the database its kind and key say, within the call's seq range; and it merges
// into this region's documents without harm.
void CheckPeerCall(std::string_view bytes) {
  namespace region = meridian::region;
  region::v1::ApplyDeltasRequest req;
  if (!req.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  if (!region::CheckApplyCall(req, 7).ok()) return;
  absl::StatusOr<region::CheckedRecords> checked = region::CheckPeerRecords(req, 7, "eu");
  if (!checked.ok()) return;
  Check(checked->records.size() == static_cast<size_t>(req.records_size()));
  Cart cart(7);
  Inventory stock(7);
  for (const region::PeerRecord& p : checked->records) {
    const auto& rec = *p.record;
    Check(rec.residency() == "any" || rec.residency() == "eu");
    Check(req.state() ? rec.seq() == 0 : rec.seq() >= 1 && rec.seq() <= checked->last_seq);
    switch (rec.kind()) {
      case region::v1::OUTBOX_KIND_CART:
        Check(p.cart.has_value() && !p.global && p.shard_key == rec.key());
        Check(p.cart->version().CheckInvariants());
        cart.Merge(*p.cart);
        break;
      case region::v1::OUTBOX_KIND_INVENTORY:
        Check(p.inventory.has_value() && p.global);
        stock.Merge(*p.inventory);
        (void)stock.Take(rec.key(), 1);
        break;
      case region::v1::OUTBOX_KIND_PRODUCT:
        Check(p.global && p.json.contains("sku") && p.json["sku"].is_string());
        break;
      case region::v1::OUTBOX_KIND_ORDER:
        Check(!p.global && p.json.contains("user_id") && p.shard_key == p.json["user_id"]);
        // Units spent, of one SKU: by the origin in an event, by any region in a state transfer
        // (a survivor passes on a lost region's orders with their takes).
        for (const Inventory& take : p.stock_takes) {
          Check(take.items().size() == 1 && take.items()[0].second.transfers().empty());
          for (const auto& u : take.items()[0].second.spent()) {
            Check(u.replica >= 1 && u.replica <= 255 && (req.state() || u.replica == req.origin()));
          }
          stock.Merge(take);
        }
        break;
      case region::v1::OUTBOX_KIND_USER:
        Check(!p.global && p.shard_key == rec.key() && p.json.contains("user_id") &&
              p.json["user_id"] == rec.key());
        break;
      default:
        Check(false);  // an unknown kind must not pass
    }
  }
  Check(cart.version().CheckInvariants() && stock.version().CheckInvariants());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 11) {
    case 0:
      RoundTrip<GCounter>(bytes, [](std::string_view b) { return DecodeGCounter(b); });
      break;
    case 1:
      RoundTrip<PNCounter>(bytes, [](std::string_view b) { return DecodePNCounter(b); });
      break;
    case 2:
      RoundTrip<LWWRegister<std::string>>(bytes,
                                          [](std::string_view b) { return DecodeLwwRegister(b); });
      break;
    case 3:
      RoundTrip<MVRegister<std::string>>(bytes,
                                         [](std::string_view b) { return DecodeMvRegister(b); });
      break;
    case 4:
      RoundTrip<AWORSet<std::string>>(bytes, [](std::string_view b) { return DecodeAworSet(b); });
      break;
    case 5:
      RoundTrip<CounterMap>(bytes, [](std::string_view b) { return DecodeCounterMap(b); });
      break;
    case 6:
      RoundTrip<BoundedCounter>(bytes, [](std::string_view b) { return DecodeBoundedCounter(b); });
      break;
    case 7: {
      absl::StatusOr<Cart> c = DecodeCart(bytes, 7);
      if (!c.ok()) break;
      Check(c->version().CheckInvariants());
      absl::StatusOr<Cart> again = DecodeCart(Encode(*c), 7);
      Check(again.ok() && *again == *c);
      Cart local(7);
      local.Add("sku-1", 1);
      local.Merge(*c);
      local.Merge(*c);
      local.Add("sku-1", 1);  // still mutable after a hostile merge
      Check(local.version().CheckInvariants());
      (void)local.ChangesSince(CausalContext{});
      break;
    }
    case 9: {  // a peer's replication frame (replication/frames.h)
      meridian::replication::pb::DeltaBatch batch;
      if (!batch.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) break;
      auto list = meridian::replication::DecodeBatch(batch, batch.origin());
      if (!list.ok()) break;
      auto again = meridian::replication::DecodeBatch(
          meridian::replication::EncodeBatch(batch.origin(), batch.origin_database(),
                                             batch.first_seq(), batch.last_seq(), *list, 0,
                                             batch.state()
                                                 ? meridian::replication::BatchKind::kState
                                                 : meridian::replication::BatchKind::kDeltas),
          batch.origin());
      Check(again.ok() && again->SerializeAsString() == list->SerializeAsString());
      break;
    }
    case 10:  // a peer's ApplyDeltas call at the region (region/peer_records.h)
      CheckPeerCall(bytes);
      break;
    default: {
      absl::StatusOr<Inventory> inv = DecodeInventory(bytes, 7);
      if (!inv.ok()) break;
      Check(inv->version().CheckInvariants());
      absl::StatusOr<Inventory> again = DecodeInventory(Encode(*inv), 7);
      Check(again.ok() && *again == *inv);
      Inventory local(7);
      local.Merge(*inv);
      for (const auto& [sku, counter] : inv->items()) {
        (void)local.Take(sku, 1);
        (void)local.Rights(sku, 7);
      }
      break;
    }
  }
  return 0;
}
