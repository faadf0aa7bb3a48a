// Writes the seed corpus for crdt_decode_fuzz: one valid encoding per decoder (prefixed with the
// selector byte), built with the real mutators. Run: make_corpus DIR
#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/escaping.h"
#include "crdt/codec.h"
#include "region/internal.pb.h"
#include "replication/frames.h"
#include "services/auth.h"

using namespace meridian::crdt;  // NOLINT: a tool's main

namespace {
void Write(const std::string& dir, const std::string& name, char selector, const std::string& b) {
  std::ofstream out(dir + "/" + name, std::ios::binary);
  out << selector << b;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_corpus DIR\n");
    return 2;
  }
  std::string dir = argv[1];
  GCounter g;
  g.Increment(1, 3);
  g.Increment(2, 5);
  PNCounter p;
  p.Increment(1, 4);
  p.Decrement(2, 1);
  LWWRegister<std::string> lww;
  lww.Set("EUR", Stamp{HlcTimestamp::Make(1000, 2), 3});
  MVRegister<std::string> mv, mv2;
  mv.Join(mv2.Write(2, "b"));
  mv.Write(1, "a");
  mv.Join(mv2.Write(2, "c"));
  AWORSet<std::string> set;
  set.Add(1, "x");
  set.Add(2, "y");
  set.Remove("x");
  CounterMap map;
  map.Update(1, "k", CounterAdd(3));
  map.Update(2, "j", CounterAdd(-1));
  BoundedCounter bc;
  (void)bc.Increment(1, 10, 1);
  (void)bc.Move(1, 2, 4, 2);
  (void)bc.Decrement(2, 1, 1);
  Cart cart(1), other(2);
  cart.Add("sku-0001", 2);
  other.Add("sku-0002", 1);
  cart.Merge(other.Remove("sku-0002"));
  cart.Merge(other.Add("sku-0003", 5));
  cart.SetCurrency("EUR", HlcTimestamp::Make(1000, 0));
  cart.SetNote("gift", HlcTimestamp::Make(1001, 0));
  Inventory inv(1);
  (void)inv.Restock("sku-0001", 10);
  (void)inv.Transfer("sku-0001", 2, 3);
  (void)inv.Take("sku-0001", 2);
  Write(dir, "gcounter", 0, Encode(g));
  Write(dir, "pncounter", 1, Encode(p));
  Write(dir, "lww", 2, Encode(lww));
  Write(dir, "mvregister", 3, Encode(mv));
  Write(dir, "aworset", 4, Encode(set));
  Write(dir, "countermap", 5, Encode(map));
  Write(dir, "bounded", 6, Encode(bc));
  Write(dir, "cart", 7, Encode(cart));
  Write(dir, "cart_delta", 7, Encode(Cart(3).Add("sku-0042", 2)));
  Write(dir, "inventory", 8, Encode(inv));
  meridian::replication::pb::RecordList records;
  for (int i = 0; i < 40; ++i) {
    auto* r = records.add_records();
    r->set_seq(100 + i);
    r->set_kind(meridian::replication::pb::RECORD_KIND_CART);
    r->set_key("user-" + std::to_string(i % 5));
    r->set_payload(Encode(Cart(3).Add("sku-0042", 1 + i % 3)));
    r->set_residency(i % 4 ? "any" : "eu");
  }
  Write(dir, "replication_batch", 9,
        meridian::replication::EncodeBatch(3, "shard-0", 100, 150, records, 1,
                                           meridian::replication::BatchKind::kDeltas)
            .SerializeAsString());
  // A peer's ApplyDeltas call with a record of every kind, as region/peer_records_test.cc has it.
  namespace rpb = meridian::region::v1;
  rpb::ApplyDeltasRequest call;
  call.set_origin(3);
  call.set_origin_database("shard-0");
  call.set_through_seq(12);
  auto add = [&](int64_t seq, rpb::OutboxKind kind, const std::string& key,
                 const std::string& payload, const std::string& residency) {
    rpb::OutboxRecord* r = call.add_records();
    r->set_seq(seq);
    r->set_kind(kind);
    r->set_key(key);
    r->set_payload(payload);
    r->set_residency(residency);
  };
  const std::string user = meridian::services::UserIdForEmail("ada@example.com");
  add(3, rpb::OUTBOX_KIND_CART, user, Encode(Cart(3).Add("sku-0042", 2)), "any");
  Inventory stock(3);
  add(4, rpb::OUTBOX_KIND_INVENTORY, "sku-0042", Encode(*stock.Restock("sku-0042", 5)), "any");
  add(6, rpb::OUTBOX_KIND_PRODUCT, "sku-0042",
      R"({"sku":"sku-0042","hlc":9,"name":"Mug","price_cents":500,"currency":"EUR"})", "any");
  add(7, rpb::OUTBOX_KIND_ORDER, "o-1",
      R"({"user_id":")" + user +
          R"(","event":"placed","epoch":1,"items":[{"sku":"sku-0042",)"
          R"("quantity":1,"price_cents":500}]})",
      "any");
  add(8, rpb::OUTBOX_KIND_USER, user,
      R"({"user_id":")" + user +
          R"(","email":"ada@example.com","name":"Ada","password_hash":"x","hlc":7})",
      "eu");
  Write(dir, "region_apply_call", 10, call.SerializeAsString());
  // An order's created event with its checkout's stock take (StockTakesProblem).
  call = rpb::ApplyDeltasRequest();
  call.set_origin(3);
  call.set_origin_database("shard-1");
  add(9, rpb::OUTBOX_KIND_ORDER, "o-2",
      R"({"user_id":")" + user +
          R"(","event":"created","epoch":1,"group":3,"items":[{"sku":"sku-0042",)"
          R"("quantity":2,"price_cents":500}],"stock_takes":{"sku-0042":")" +
          absl::Base64Escape(Encode(*stock.Take("sku-0042", 2))) + R"("}})",
      "any");
  Write(dir, "region_apply_call_stock_takes", 10, call.SerializeAsString());
  return 0;
}
