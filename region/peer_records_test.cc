#include "region/peer_records.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/escaping.h"
#include "crdt/codec.h"
#include "services/auth.h"

namespace meridian::region {
namespace {

constexpr uint32_t kSelf = 2;  // this region's replica id; the peer is 1

v1::OutboxRecord* AddRecord(v1::ApplyDeltasRequest& req, int64_t seq, v1::OutboxKind kind,
                            const std::string& key, const std::string& payload,
                            const std::string& residency = "any") {
  v1::OutboxRecord* r = req.add_records();
  r->set_seq(seq);
  r->set_kind(kind);
  r->set_key(key);
  r->set_payload(payload);
  r->set_residency(residency);
  return r;
}

std::string CartDelta() { return crdt::Encode(crdt::Cart(1).Add("sku-1", 2)); }

std::string StockDelta(const std::string& sku) {
  return crdt::Encode(*crdt::Inventory(1).Restock(sku, 5));
}

std::string Profile(const std::string& email) {
  return nlohmann::json{{"user_id", services::UserIdForEmail(email)},
                        {"email", email},
                        {"name", "Ada"},
                        {"password_hash", "x"},
                        {"hlc", 7u}}
      .dump();
}

// A call with one record of every kind, as a peer's replicator sends it.
v1::ApplyDeltasRequest EveryKind() {
  v1::ApplyDeltasRequest req;
  req.set_origin(1);
  req.set_origin_database("shard-0");
  const std::string user = services::UserIdForEmail("ada@example.com");
  AddRecord(req, 3, v1::OUTBOX_KIND_CART, user, CartDelta());
  AddRecord(req, 4, v1::OUTBOX_KIND_INVENTORY, "sku-1", StockDelta("sku-1"));
  AddRecord(req, 6, v1::OUTBOX_KIND_PRODUCT, "sku-1",
            R"({"sku":"sku-1","hlc":9,"name":"Mug","price_cents":500,"currency":"EUR"})");
  AddRecord(req, 7, v1::OUTBOX_KIND_ORDER, "o-1",
            nlohmann::json{{"user_id", user}, {"event", "placed"}, {"epoch", 1}}.dump());
  AddRecord(req, 8, v1::OUTBOX_KIND_USER, user, Profile("ada@example.com"), "eu");
  return req;
}

TEST(PeerRecords, DecodesEveryKindAndNamesTheDatabaseEachGoesTo) {
  v1::ApplyDeltasRequest req = EveryKind();
  req.set_through_seq(10);
  ASSERT_TRUE(CheckApplyCall(req, kSelf).ok());
  auto checked = CheckPeerRecords(req, kSelf, "eu");
  ASSERT_TRUE(checked.ok()) << checked.status();
  ASSERT_EQ(checked->records.size(), 5u);
  const std::string user = services::UserIdForEmail("ada@example.com");
  const auto& r = checked->records;
  EXPECT_TRUE(r[0].cart.has_value());
  EXPECT_EQ(r[0].cart->Quantity("sku-1"), 2);
  EXPECT_FALSE(r[0].global);
  EXPECT_EQ(r[0].shard_key, user);
  EXPECT_TRUE(r[1].inventory.has_value());
  EXPECT_EQ(r[1].inventory->Available("sku-1"), 5);
  EXPECT_TRUE(r[1].global);
  EXPECT_TRUE(r[2].global);
  EXPECT_EQ(r[2].json["name"], "Mug");
  EXPECT_FALSE(r[3].global);
  EXPECT_EQ(r[3].shard_key, user);  // an order event goes to its customer's shard
  EXPECT_EQ(r[4].shard_key, user);
  EXPECT_EQ(checked->last_seq, 10);  // through_seq covers seqs that were not for this region
  EXPECT_EQ(r[4].record, &req.records(4));
}

TEST(PeerRecords, RefusesACallWhoseOwnFieldsAreWrong) {
  v1::ApplyDeltasRequest req = EveryKind();
  req.set_origin(0);
  EXPECT_TRUE(absl::IsInvalidArgument(CheckApplyCall(req, kSelf)));
  req.set_origin(kSelf);  // our own records coming back
  EXPECT_TRUE(absl::IsInvalidArgument(CheckApplyCall(req, kSelf)));
  req.set_origin(1);
  req.set_origin_database("");
  EXPECT_TRUE(absl::IsInvalidArgument(CheckApplyCall(req, kSelf)));
  req.set_origin_database(std::string("shard-0\0x", 9));  // quoted as another stream's name
  EXPECT_TRUE(absl::IsInvalidArgument(CheckApplyCall(req, kSelf)));
  req.set_origin_database("shard-0");
  req.set_state_end(true);  // without state
  EXPECT_TRUE(absl::IsInvalidArgument(CheckApplyCall(req, kSelf)));
}

// Each case breaks one record of an otherwise good call: the whole call is refused, naming why.
TEST(PeerRecords, RefusesTheWholeCallForOneBadRecord) {
  struct Case {
    const char* name;
    void (*breaks)(v1::ApplyDeltasRequest&);
    const char* says;
  };
  const Case cases[] = {
      {"seq out of order", [](v1::ApplyDeltasRequest& r) { r.mutable_records(2)->set_seq(4); },
       "seq must ascend"},
      {"pinned elsewhere",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(4)->set_residency("us"); },
       "residency violation"},
      {"cart payload",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(0)->set_payload("\x0a\xff"); },
       "record 3"},
      {"stock of another SKU",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(1)->set_key("sku-2"); }, "another SKU"},
      {"stock of a replica that is no region",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(1)->set_payload(
             crdt::Encode(*crdt::Inventory(1000).Restock("sku-1", 5)));
       },
       "no region"},
      {"stock this region restocked, in the peer's delta",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(1)->set_payload(
             crdt::Encode(*crdt::Inventory(kSelf).Restock("sku-1", 1000)));
       },
       "carries rights written by replica 2"},
      {"units a third region spent, in the peer's delta",
       [](v1::ApplyDeltasRequest& r) {
         crdt::Inventory third(3);
         (void)third.Restock("sku-1", 5);
         r.mutable_records(1)->set_payload(crdt::Encode(*third.Take("sku-1", 1)));
       },
       "carries units spent by replica 3"},
      {"stock claiming events past any real count",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(1)->set_payload(crdt::Encode(*crdt::Inventory::FromParts(
             {}, crdt::CausalContext::FromParts({{kSelf, (uint64_t{1} << 52) + 1}}, {}))));
       },
       "past the limit"},
      {"a cart claiming events past any real count",
       [](v1::ApplyDeltasRequest& r) {
         const crdt::Cart cart = crdt::Cart(1).Add("sku-1", 2);
         auto state = cart.state();
         state.ctx.Insert(crdt::Dot{kSelf, (uint64_t{1} << 52) + 1});
         r.mutable_records(0)->set_payload(crdt::Encode(
             crdt::Cart::FromParts(std::move(state), cart.currency_field(), cart.note_field())));
       },
       "past the limit"},
      {"product hlc",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(2)->set_payload(
             R"({"sku":"sku-1","hlc":-1,"name":"Mug","price_cents":500,"currency":"EUR"})");
       },
       "hlc"},
      {"product hlc past 2^45 ms since 1970",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(2)->set_payload(
             R"({"sku":"sku-1","hlc":9223372036854775807,"name":"Mug","price_cents":500,)"
             R"("currency":"EUR"})");
       },
       "hlc: 0..2^61"},
      {"order epoch",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(
             R"({"user_id":"u1","event":"placed","epoch":9007199254740993})");
       },
       "epoch"},
      {"order creation time past 2^45 ms",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(
             R"({"user_id":"u1","event":"created","epoch":1,"created_at_ms":35184372088833})");
       },
       "created_at_ms"},
      {"order creation time not a number",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(
             R"({"user_id":"u1","event":"created","epoch":1,"created_at_ms":"yesterday"})");
       },
       "created_at_ms"},
      {"order idempotency key with a quote",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(
             R"({"user_id":"u1","event":"created","epoch":1,"idempotency_key":"k'1"})");
       },
       "idempotency_key"},
      {"order idempotency key not a string",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(
             R"({"user_id":"u1","event":"created","epoch":1,"idempotency_key":7})");
       },
       "idempotency_key"},
      {"order with a NUL byte and more after its JSON",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(r.records(3).payload() + std::string(1, '\0') + "}");
       },
       "not a JSON object"},
      // PostgreSQL's text holds no NUL: stored, "\u0000" would be '' and fail the product's
      // name CHECK after the call's shards committed; inside a string it would be cut there.
      {"product name of one escaped NUL",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(2)->set_payload(
             R"({"sku":"sku-1","hlc":9,"name":"\u0000","price_cents":500,"currency":"EUR"})");
       },
       "record 6: a string holds U+0000"},
      {"order item SKU with an escaped NUL inside",
       [](v1::ApplyDeltasRequest& r) {
         const std::string user = services::UserIdForEmail("ada@example.com");
         r.mutable_records(3)->set_payload(
             R"({"user_id":")" + user +
             R"(","event":"placed","epoch":1,"items":[{"sku":"sku\u00001","quantity":1}]})");
       },
       "record 7: a string holds U+0000"},
      {"profile name with an escaped NUL",
       [](v1::ApplyDeltasRequest& r) {
         nlohmann::json j = nlohmann::json::parse(Profile("ada@example.com"));
         j["name"] = std::string("Ad\0a", 4);
         r.mutable_records(4)->set_payload(j.dump());
       },
       "record 8: a string holds U+0000"},
      {"product whose key is another SKU",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(2)->set_key("sku-2"); },
       "record 6: malformed product write: sku: not the record's key"},
      {"order of a user id the region never makes",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(3)->set_payload(R"({"user_id":"u1","event":"placed","epoch":1})");
       },
       "record 7: malformed order event: user_id: not a user id"},
      // libpqxx quotes up to the first NUL: this key would read and write ada's row while
      // every lookup by the whole key missed.
      {"cart key of a user id, a NUL and more",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(0)->set_key(services::UserIdForEmail("ada@example.com") +
                                       std::string("\0x", 2));
       },
       "record 3: its key holds a NUL byte"},
      {"order key with a NUL",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(3)->set_key(std::string("o-1\0", 4)); },
       "record 7: its key holds a NUL byte"},
      {"cart key that is no user id",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(0)->set_key("someone"); },
       "cart key: a user id"},
      {"order not JSON",
       [](v1::ApplyDeltasRequest& r) { r.mutable_records(3)->set_payload("{\"user_id\":"); },
       "not a JSON object"},
      {"profile under another id",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(4)->set_payload(Profile("grace@example.com"));
       },
       "user_id"},
      {"unknown kind",
       [](v1::ApplyDeltasRequest& r) {
         r.mutable_records(1)->set_kind(static_cast<v1::OutboxKind>(42));
       },
       "unknown kind"},
      {"through_seq below the records", [](v1::ApplyDeltasRequest& r) { r.set_through_seq(7); },
       "through_seq"},
  };
  for (const Case& c : cases) {
    v1::ApplyDeltasRequest req = EveryKind();
    c.breaks(req);
    auto checked = CheckPeerRecords(req, kSelf, "eu");
    ASSERT_FALSE(checked.ok()) << c.name;
    EXPECT_TRUE(absl::IsInvalidArgument(checked.status())) << c.name;
    EXPECT_NE(checked.status().message().find(c.says), absl::string_view::npos)
        << c.name << ": " << checked.status();
  }
}

TEST(PeerRecords, AStateTransferCarriesSeqZero) {
  v1::ApplyDeltasRequest req;
  req.set_origin(1);
  req.set_origin_database("shard-0");
  req.set_state(true);
  AddRecord(req, 0, v1::OUTBOX_KIND_CART, services::UserIdForEmail("ada@example.com"), CartDelta());
  AddRecord(req, 0, v1::OUTBOX_KIND_CART, services::UserIdForEmail("grace@example.com"),
            CartDelta());
  ASSERT_TRUE(CheckApplyCall(req, kSelf).ok());
  auto checked = CheckPeerRecords(req, kSelf, "eu");
  ASSERT_TRUE(checked.ok()) << checked.status();
  EXPECT_EQ(checked->last_seq, 0);
  req.mutable_records(1)->set_seq(5);
  EXPECT_FALSE(CheckPeerRecords(req, kSelf, "eu").ok());
  // A state transfer sends whole documents: every writer's entries, this region's included.
  req.mutable_records(1)->set_seq(0);
  crdt::Inventory doc(1);
  (void)doc.Restock("sku-1", 5);
  doc.Merge(*crdt::Inventory(kSelf).Restock("sku-1", 7));
  AddRecord(req, 0, v1::OUTBOX_KIND_INVENTORY, "sku-1", crdt::Encode(doc));
  auto whole = CheckPeerRecords(req, kSelf, "eu");
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->records[2].inventory->Available("sku-1"), 12);
}

// Review of the inventory paths, finding 1: an order's created event carries its checkout's stock
// takes, so that a region holding the order holds its stock consumption. A take is checked as a
// stock delta of the event's origin is, and more narrowly: only units spent, of a SKU the order
// holds, only in a created event. A state transfer's orders carry the takes their sender stored
// with them, spent by whichever region checked the order out.
TEST(PeerRecords, AnOrderCarriesItsStockTakesCheckedAsStockDeltasAre) {
  const std::string user = services::UserIdForEmail("ada@example.com");
  crdt::Inventory origin(1);
  (void)origin.Restock("sku-1", 10);
  const crdt::Inventory take = *origin.Take("sku-1", 4);
  auto b64 = [](const std::string& bytes) { return absl::Base64Escape(bytes); };
  auto call = [&](nlohmann::json takes, const char* event = "created") {
    v1::ApplyDeltasRequest req;
    req.set_origin(1);
    req.set_origin_database("shard-0");
    nlohmann::json e{{"user_id", user},
                     {"event", event},
                     {"epoch", 1},
                     {"group", 1},
                     {"items", {{{"sku", "sku-1"}, {"quantity", 4}, {"price_cents", 100}}}}};
    e["stock_takes"] = std::move(takes);
    AddRecord(req, 7, v1::OUTBOX_KIND_ORDER, "o-1", e.dump());
    return req;
  };
  {
    v1::ApplyDeltasRequest req = call({{"sku-1", b64(crdt::Encode(take))}});
    auto checked = CheckPeerRecords(req, kSelf, "us");
    ASSERT_TRUE(checked.ok()) << checked.status();
    ASSERT_EQ(checked->records[0].stock_takes.size(), 1u);
    EXPECT_EQ(checked->records[0].stock_takes[0].Consumed("sku-1", 1), 4);
  }
  crdt::Inventory third(3);
  (void)third.Restock("sku-1", 5);
  crdt::Inventory moved(1);
  (void)moved.Restock("sku-1", 5);
  struct Case {
    const char* name;
    nlohmann::json takes;
    const char* event;
    const char* says;
  };
  const Case cases[] = {
      {"units a third region spent",
       {{"sku-1", b64(crdt::Encode(*third.Take("sku-1", 1)))}},
       "created",
       "carries units spent by replica 3"},
      {"rights moved, not spent",
       {{"sku-1", b64(crdt::Encode(*moved.Transfer("sku-1", kSelf, 2)))}},
       "created",
       "units spent of its SKU"},
      {"a SKU the order does not hold",
       {{"sku-2", b64(crdt::Encode(take))}},
       "created",
       "not among the items"},
      {"a take of another SKU than its name",
       {{"sku-1", b64(crdt::Encode(*crdt::Inventory(1).Restock("sku-2", 1)))}},
       "created",
       "another SKU"},
      {"not base64", {{"sku-1", "%%%"}}, "created", "base64"},
      {"not an encoded delta", {{"sku-1", b64("\x0a\xff")}}, "created", "stock_takes: "},
      {"not an object", nlohmann::json::array(), "created", "an object of SKU"},
      {"in a status event", {{"sku-1", b64(crdt::Encode(take))}}, "paid", "only in a created"},
  };
  for (const Case& c : cases) {
    v1::ApplyDeltasRequest req = call(c.takes, c.event);
    auto checked = CheckPeerRecords(req, kSelf, "us");
    ASSERT_FALSE(checked.ok()) << c.name;
    EXPECT_TRUE(absl::IsInvalidArgument(checked.status())) << c.name;
    EXPECT_NE(checked.status().message().find(c.says), absl::string_view::npos)
        << c.name << ": " << checked.status();
  }
  // A state transfer: a survivor (origin 1 here) passes on another region's order with its take
  // (spent by region 3), still units spent of a SKU the order holds.
  crdt::Inventory creator(3);
  (void)creator.Restock("sku-1", 5);
  v1::ApplyDeltasRequest state = call({{"sku-1", b64(crdt::Encode(*creator.Take("sku-1", 2)))}});
  state.set_state(true);
  state.mutable_records(0)->set_seq(0);
  auto passed_on = CheckPeerRecords(state, kSelf, "us");
  ASSERT_TRUE(passed_on.ok()) << passed_on.status();
  ASSERT_EQ(passed_on->records[0].stock_takes.size(), 1u);
  EXPECT_EQ(passed_on->records[0].stock_takes[0].Consumed("sku-1", 3), 2);
  state = call({{"sku-1", b64(crdt::Encode(*moved.Transfer("sku-1", kSelf, 2)))}});
  state.set_state(true);
  state.mutable_records(0)->set_seq(0);
  auto refused = CheckPeerRecords(state, kSelf, "us");
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("units spent of its SKU"), absl::string_view::npos)
      << refused.status();
}

// Review of 2026-12-05 (receiving side), finding 4: a takeover sync's order states were checked
// for presence, not range. An epoch of 2^60 fixed the order's status for good, and a quantity
// past the column's range failed after the page's earlier orders had committed.
TEST(PeerRecords, AnOrderStateIsCheckedAsAnOrderEventIs) {
  v1::OrderState good;
  good.set_order_id("o0123456789abcdef01234567");
  good.set_group(1);
  good.set_user_id(services::UserIdForEmail("ada@example.com"));
  good.set_total_cents(1000);
  good.set_currency("EUR");
  good.set_residency("any");
  good.set_epoch(3);
  good.set_version(2);
  good.set_status("paid");
  good.set_created_at_ms(1700000000000);
  v1::OrderLine* line = good.add_items();
  line->set_sku("sku-1");
  line->set_quantity(2);
  line->set_price_cents(500);
  // Its take, spent by the region that checked it out (any region's, in a sync page).
  crdt::Inventory creator(3);
  (void)creator.Restock("sku-1", 5);
  (*good.mutable_stock_takes())["sku-1"] = crdt::Encode(*creator.Take("sku-1", 2));
  std::vector<crdt::Inventory> takes;
  EXPECT_EQ(OrderStateProblem(good, kSelf, &takes), "");
  ASSERT_EQ(takes.size(), 1u);
  EXPECT_EQ(takes[0].Consumed("sku-1", 3), 2);
  struct Case {
    const char* name;
    void (*breaks)(v1::OrderState&);
    const char* says;
  };
  const Case cases[] = {
      {"epoch 2^60", [](v1::OrderState& s) { s.set_epoch(uint64_t{1} << 60); }, "epoch"},
      {"epoch 2^63", [](v1::OrderState& s) { s.set_epoch(uint64_t{1} << 63); }, "epoch"},
      {"version 0", [](v1::OrderState& s) { s.set_version(0); }, "version"},
      {"quantity 2^31",
       [](v1::OrderState& s) { s.mutable_items(0)->set_quantity(int64_t{1} << 31); }, "items"},
      {"quantity 0", [](v1::OrderState& s) { s.mutable_items(0)->set_quantity(0); }, "items"},
      {"price below 0", [](v1::OrderState& s) { s.mutable_items(0)->set_price_cents(-1); },
       "items"},
      {"SKU with a NUL",
       [](v1::OrderState& s) { s.mutable_items(0)->set_sku(std::string("sku\0x", 5)); }, "items"},
      {"user id the region never makes", [](v1::OrderState& s) { s.set_user_id("u1"); }, "user_id"},
      {"order id with a NUL", [](v1::OrderState& s) { s.set_order_id(std::string("o0123\0x", 7)); },
       "order_id"},
      {"group 0", [](v1::OrderState& s) { s.set_group(0); }, "group"},
      {"unknown status", [](v1::OrderState& s) { s.set_status("lost"); }, "status"},
      {"created past 2^45 ms",
       [](v1::OrderState& s) { s.set_created_at_ms((int64_t{1} << 45) + 1); }, "created_at_ms"},
      {"payment ref with a NUL",
       [](v1::OrderState& s) { s.set_payment_ref(std::string("pay\0", 4)); }, "payment_ref"},
      {"a take of a SKU it does not hold",
       [](v1::OrderState& s) {
         (*s.mutable_stock_takes())["sku-2"] = s.stock_takes().at("sku-1");
         s.mutable_stock_takes()->erase("sku-1");
       },
       "not among the items"},
      {"a take that moves rights",
       [](v1::OrderState& s) {
         crdt::Inventory from(3);
         (void)from.Restock("sku-1", 5);
         (*s.mutable_stock_takes())["sku-1"] = crdt::Encode(*from.Transfer("sku-1", 1, 2));
       },
       "units spent of its SKU"},
      {"a take that does not decode",
       [](v1::OrderState& s) { (*s.mutable_stock_takes())["sku-1"] = "\x0a\xff"; },
       "stock_takes: "},
      {"a take past 1024 bytes",
       [](v1::OrderState& s) { (*s.mutable_stock_takes())["sku-1"] = std::string(1025, 'x'); },
       "at most 1024 bytes"},
  };
  for (const Case& c : cases) {
    v1::OrderState s = good;
    c.breaks(s);
    std::vector<crdt::Inventory> ignored;
    const std::string why = OrderStateProblem(s, kSelf, &ignored);
    EXPECT_NE(why.find(c.says), std::string::npos) << c.name << ": \"" << why << "\"";
  }
}

}  // namespace
}  // namespace meridian::region
