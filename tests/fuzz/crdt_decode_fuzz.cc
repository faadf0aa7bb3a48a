// libFuzzer target for every CRDT decoder and the replication frame decoder. The first byte
// picks the decoder; the rest is the message. Whatever the input, a decoder must return an error or
// a value that keeps its invariants, re-encodes to bytes that decode to the same value, and merges
// without harm.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "crdt/codec.h"
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 10) {
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
