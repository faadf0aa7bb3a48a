// Checkout, orders, payments.
//
// A checkout touches two databases: stock lives on the global shard, the order and the cart on
// the customer's shard. PostgreSQL cannot commit across them in one transaction, so a checkout is
// two local transactions in a fixed order: (1) take the stock and record a reservation with an
// expiry (global shard), (2) write the order, its items, its event, the confirmation and clear
// the cart (user shard). If (2) fails, (1) is undone at once; if the process dies between them,
// the reservation sweep finds a reservation without a paid order and gives the stock back. If
// the outcome of (2) is unknown (the connection broke during COMMIT), nothing is undone: the
// sweep settles the reservation by the order's status. Stock is therefore never lost and never
// sold twice, and an order never exists without its stock.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/quorum.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "region/documents.h"
#include "services/domain.h"

namespace meridian::region {

absl::Status ValidOrderId(std::string_view id) {
  bool ok = id.size() == 25 && id[0] == 'o';
  for (size_t i = 1; ok && i < id.size(); ++i)
    ok = std::isxdigit(static_cast<unsigned char>(id[i]));
  return ok ? absl::OkStatus() : absl::NotFoundError("no such order");
}

namespace {

// The filter for "this customer's orders": the customer's id and the residency of their stored
// profile. An order tagged otherwise belongs to another account under the same id (the id comes
// from the e-mail, and the same e-mail can be registered elsewhere while the customer is pinned
// here): it replicated here, but it is not this customer's to see, pay or cancel. Without a
// stored profile (a forwarded call that arrived before it), the id alone.
std::string OfCustomer(pqxx::work& tx, const std::string& user_id) {
  const std::string id = tx.quote(user_id);
  return " AND user_id = " + id +
         " AND residency = COALESCE((SELECT u.residency FROM users u WHERE u.user_id = " + id +
         "), residency)";
}

// Payment attempts of one order whose charge was refunded because the order's update failed
// (each a transient database failure), or declined before a retry with another card: past this,
// Pay refuses rather than charge again.
constexpr int kMaxPaymentAttempts = 8;

// How long a checkout waits for a twin with its Idempotency-Key (CheckoutTurn) beyond the twin's
// own wait for stock (replication.rights_wait_ms).
constexpr std::chrono::seconds kTwinWait{30};

// The statement that writes an order event to the outbox and returns its seq there (what a
// sync-peer answer waits for a peer to have applied). No trailing ';': it can end a batch.
std::string OrderEventSql(pqxx::work& tx, crdt::ReplicaId origin, const std::string& order_id,
                          const std::string& residency, const Json& event) {
  std::string e = event.dump();
  return "INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" + tx.quote(origin) +
         ", 'order', " + tx.quote(order_id) + ", " +
         tx.quote_raw(reinterpret_cast<const unsigned char*>(e.data()), e.size()) + ", " +
         tx.quote(residency) + ") RETURNING seq";
}

// Writes the event to the outbox; its seq there.
int64_t OrderEvent(pqxx::work& tx, crdt::ReplicaId origin, const std::string& order_id,
                   const std::string& residency, const Json& event) {
  return tx.exec1(OrderEventSql(tx, origin, order_id, residency, event))[0].as<int64_t>();
}

// An order's status change as its event: the owner's epoch and the order's new version order it
// against every other change of the order.
Json StatusEvent(std::string_view status, const std::string& order_id, const std::string& user_id,
                 uint32_t group, int64_t epoch, int64_t version) {
  return Json{{"event", status}, {"order_id", order_id}, {"user_id", user_id},
              {"group", group},  {"epoch", epoch},       {"version", version}};
}

// The fencing clause of an order UPDATE: nothing matches once the group's fence (the highest epoch
// this region knows was won for it) is above the writer's epoch. The statement must follow
// FenceLockSql's, in its own statement (so that its snapshot is taken after the lock).
std::string FenceSql(pqxx::work& tx, uint32_t group, int64_t epoch) {
  return " AND NOT EXISTS (SELECT 1 FROM order_fence f WHERE f.grp = " + tx.quote(group) +
         " AND f.epoch > " + tx.quote(epoch) + ")";
}

// The group's fence lock: shared by the writers of its orders, from before their fence check to
// their commit; RaiseFence takes it exclusively. A raise then waits for every writer that passed
// the old fence, so that the new owner's sync page, read after the raise, holds their writes, and
// a writer after the raise sees the new fence. Without it a writer that had checked the fence
// could commit after the raise, a change the new owner never heard of.
std::string FenceLockSql(pqxx::work& tx, uint32_t group, bool exclusive) {
  return DocumentLockSql(tx, "fence", std::to_string(group), /*shared=*/!exclusive);
}

// Serializes the checkout that writes an order with the sweep that finds it missing (ExpireOrder).
std::string OrderLockSql(pqxx::work& tx, const std::string& order_id) {
  return DocumentLockSql(tx, "order", order_id);
}

// After a fenced UPDATE matched nothing: was it the epoch (a newer owner), not the status?
bool IsStale(pqxx::work& tx, const std::string& order_id, uint32_t group, int64_t epoch) {
  pqxx::result r = tx.exec(
      "SELECT (SELECT epoch FROM orders WHERE order_id = " + tx.quote(order_id) + ") > " +
      tx.quote(epoch) + " OR EXISTS (SELECT 1 FROM order_fence WHERE grp = " + tx.quote(group) +
      " AND epoch > " + tx.quote(epoch) + ")");
  return !r.empty() && !r[0][0].is_null() && r[0][0].as<bool>();
}

std::optional<std::string> FindByIdempotencyKey(pqxx::work& tx, const std::string& user_id,
                                                const std::string& key) {
  pqxx::result r = tx.exec("SELECT order_id FROM orders WHERE true" + OfCustomer(tx, user_id) +
                           " AND idempotency_key = " + tx.quote(key));
  if (r.empty()) return std::nullopt;
  return r[0][0].as<std::string>();
}

}  // namespace

absl::StatusOr<std::string> RegionApp::Impl::ExpireOrder(const std::string& order_id,
                                                         const std::string& user_id,
                                                         std::string* payment_ref,
                                                         bool window_over) {
  std::string status;
  bool stale = false;
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    status = "missing";
    payment_ref->clear();
    stale = false;
    // The order's lock, which its checkout takes before writing it (OrderLockSql): a checkout
    // still writing the order commits first and is seen here; one that comes later finds the
    // order void and makes none. A session that holds it longer than 5 s (hung in its COMMIT) is
    // not waited for: this fails, and the sweep tries again.
    pqxx::result r = tx.exec(
        "SET LOCAL lock_timeout = '5s'; " + OrderLockSql(tx, order_id) +
        "SELECT status, residency, lease_group, owner_region, payment_ref FROM orders WHERE "
        "order_id = " +
        tx.quote(order_id) + " FOR UPDATE");
    if (r.empty()) {
      // Missing: its checkout died half-way, or has yet to commit. Its stock goes back on sale.
      tx.exec0("INSERT INTO orders_void (order_id) VALUES (" + tx.quote(order_id) +
               ") ON CONFLICT DO NOTHING");
      return;
    }
    status = r[0][0].as<std::string>();
    if (!r[0][4].is_null()) *payment_ref = r[0][4].as<std::string>();
    if (status != "pending_payment" || !window_over) return;
    const uint32_t group = GroupOf(r[0][2].as<int64_t>(), r[0][3].as<std::string>());
    LeaseTable::Decision lease = leases->ForGroup(group);
    if (!lease.mine) return;  // its owner expires it; the event tells us
    if (!LocalWriteHold(/*takes_stock=*/false).ok()) return;  // a later sweep, once it is off
    const auto epoch = static_cast<int64_t>(lease.epoch);
    pqxx::result u = tx.exec(
        FenceLockSql(tx, group, false) +
        "UPDATE orders SET status = 'expired', epoch = " + tx.quote(epoch) +
        ", version = version + 1, updated_at = now() WHERE order_id = " + tx.quote(order_id) +
        " AND status = 'pending_payment' AND epoch <= " + tx.quote(epoch) +
        FenceSql(tx, group, epoch) + " RETURNING version");
    if (u.empty()) {
      stale = true;  // a newer owner: it decides
      return;
    }
    OrderEvent(tx, config.replica_id, order_id, r[0][1].as<std::string>(),
               StatusEvent("expired", order_id, user_id, group, epoch, u[0][0].as<int64_t>()));
    status = "expired";
  });
  if (!st.ok()) return st;
  if (stale) stale_local_writes->Increment();
  return status;
}

namespace {

// The customer's orders that `where` selects (a condition on orders o), newest first, at most
// `limit`, each with its items: one statement, whatever their number.
std::vector<Json> OrdersJson(pqxx::work& tx, const std::string& user_id, const std::string& where,
                             int limit) {
  std::vector<Json> out;
  for (const auto& row :
       tx.exec("SELECT o.order_id, o.status, o.total_cents, o.currency, o.owner_region, o.epoch, "
               "o.payment_ref, floor(extract(epoch from o.created_at))::bigint, (SELECT "
               "coalesce(json_agg(json_build_object('sku', i.sku, 'quantity', i.quantity, "
               "'price_cents', i.price_cents) ORDER BY i.sku), '[]') FROM order_items i WHERE "
               "i.order_id = o.order_id)::text FROM orders o WHERE " +
               where + OfCustomer(tx, user_id) + " ORDER BY o.created_at DESC LIMIT " +
               tx.quote(limit))) {
    out.push_back(Json{{"order_id", row[0].as<std::string>()},
                       {"status", row[1].as<std::string>()},
                       {"total_cents", row[2].as<int64_t>()},
                       {"currency", row[3].as<std::string>()},
                       {"owner_region", row[4].as<std::string>()},
                       {"epoch", row[5].as<int64_t>()},
                       {"payment_ref", row[6].is_null() ? Json() : Json(row[6].as<std::string>())},
                       {"created_at", row[7].as<int64_t>()},
                       {"items", Json::parse(row[8].as<std::string>())}});
  }
  return out;
}

}  // namespace

absl::StatusOr<Json> RegionApp::Impl::OrderJson(const std::string& user_id,
                                                const std::string& order_id) {
  Json out;
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    std::vector<Json> found = OrdersJson(tx, user_id, "o.order_id = " + tx.quote(order_id), 1);
    if (found.empty()) throw AbortTx{absl::NotFoundError(absl::StrCat("no order ", order_id))};
    out = std::move(found[0]);
  });
  if (!st.ok()) return st;
  return out;
}

absl::Status RegionApp::Impl::ReleaseReservation(const std::string& reservation_id,
                                                 const std::string& reason, bool* was_deferred) {
  bool released = false, deferred = false;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    released = deferred = false;
    pqxx::result r = tx.exec(
        "SELECT state FROM reservations WHERE id = " + tx.quote(reservation_id) + " FOR UPDATE");
    if (r.empty() || r[0][0].as<std::string>() == "released") return;  // idempotent
    std::vector<std::pair<std::string, int64_t>> items;
    for (const auto& i : tx.exec("SELECT sku, units FROM reservation_items WHERE "
                                 "reservation_id = " +
                                 tx.quote(reservation_id) + " ORDER BY sku")) {
      items.emplace_back(i[0].as<std::string>(), i[1].as<int64_t>());
    }
    // The units return as this region's rights: it took them from its own rights. While its
    // stock changes are held, the reservation stays out of sale instead and a later sweep
    // releases it, so that what asked for the release (a cancel, a declined payment, the sweep
    // itself) does not fail half-way after its own change went through.
    if (!items.empty() && StockWritesHeld()) {
      // Held and due before any expiry: the first sweep after the hold settles it by its
      // order's status (a paid order's reservation commits, any other is released); the sweeps
      // during the hold pass over it (Sweep).
      tx.exec0("UPDATE reservations SET state = 'held', expires_at = '-infinity' WHERE id = " +
               tx.quote(reservation_id));
      deferred = true;
      return;
    }
    for (const auto& [sku, units] : items) {
      crdt::Inventory inv = LoadInventoryForUpdate(tx, sku, config.replica_id);
      auto delta = inv.Restock(sku, static_cast<uint64_t>(units));
      if (!delta.ok()) throw AbortTx{delta.status()};
      SaveInventory(tx, sku, inv, *delta, config.replica_id);
    }
    tx.exec0("UPDATE reservations SET state = 'released' WHERE id = " + tx.quote(reservation_id));
    released = true;
  });
  if (st.ok() && released) {
    reservations_released->Increment();
    spdlog::info("event=reservation_released id={} reason={}", reservation_id, reason);
    // The units are this region's rights again: a checkout waiting for them takes them now
    // rather than after rights_wait_ms, and the replicator stops asking peers for them
    // (review of the inventory paths, finding 4).
    rights_signals.StockChanged();
  }
  if (st.ok() && deferred) {
    spdlog::info(
        "event=reservation_release_deferred id={} reason={} (stock changes are held; "
        "the sweep releases it once they are not)",
        reservation_id, reason);
  }
  if (was_deferred) *was_deferred = st.ok() && deferred;
  return st;
}

namespace {

// Whether clearing a checkout's snapshot took exactly its lines from the cart: `before` and
// `after` are the locked cart's lines around the clear, `taken` the snapshot's (all sorted by
// SKU, as Cart::Lines gives them).
bool ClearedExactly(const std::vector<std::pair<std::string, int64_t>>& before,
                    const std::vector<std::pair<std::string, int64_t>>& after,
                    const std::vector<std::pair<std::string, int64_t>>& taken) {
  std::map<std::string, int64_t> removed;
  for (const auto& [sku, qty] : before) removed[sku] += qty;
  for (const auto& [sku, qty] : after) removed[sku] -= qty;
  std::erase_if(removed, [](const auto& kv) { return kv.second == 0; });
  return removed == std::map<std::string, int64_t>(taken.begin(), taken.end());
}

}  // namespace

namespace {

// This checkout's turn among those of one customer with one Idempotency-Key (checkout_keys_busy):
// taken by the constructor, waiting until `deadline` at most; given back by the destructor.
class CheckoutTurn {
 public:
  CheckoutTurn(RegionApp::Impl& app, std::string key,
               std::chrono::steady_clock::time_point deadline)
      : app_(app), key_(std::move(key)) {
    std::unique_lock<std::mutex> lock(app_.checkout_keys_mu);
    held_ = app_.checkout_keys_cv.wait_until(lock, deadline,
                                             [&] { return !app_.checkout_keys_busy.count(key_); });
    if (held_) app_.checkout_keys_busy.insert(key_);
  }
  ~CheckoutTurn() {
    if (!held_) return;
    {
      std::lock_guard<std::mutex> lock(app_.checkout_keys_mu);
      app_.checkout_keys_busy.erase(key_);
    }
    app_.checkout_keys_cv.notify_all();
  }
  CheckoutTurn(const CheckoutTurn&) = delete;
  CheckoutTurn& operator=(const CheckoutTurn&) = delete;
  bool held() const { return held_; }

 private:
  RegionApp::Impl& app_;
  const std::string key_;
  bool held_ = false;
};

}  // namespace

HttpResponse RegionApp::Impl::Checkout(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  Json body = Json::object();
  if (!req.body.empty()) {
    auto parsed = ParseBody(req);
    if (!parsed.ok()) return ProblemFromStatus(parsed.status());
    body = *std::move(parsed);
  }
  auto card = StringField(body, "card_number", false);
  if (!card.ok()) return ProblemFromStatus(card.status());
  if (!card->empty()) {
    if (auto st = services::ValidateCardNumber(*card); !st.ok()) {
      return ProblemFromStatus(Unprocessable(std::string(st.message())));
    }
  }
  auto key = IdempotencyKey(req);
  if (!key.ok()) return ProblemFromStatus(key.status());
  const std::string& idem = *key;
  const std::string& user_id = who->user_id;
  PgPool& shard = ShardFor(user_id);
  // A twin still under way after its longest wait for stock and a good margin is stuck: this one
  // is refused rather than held as long.
  std::optional<CheckoutTurn> turn;
  if (!idem.empty()) {
    turn.emplace(*this, absl::StrCat(user_id, "\n", idem),
                 std::chrono::steady_clock::now() + kTwinWait +
                     std::chrono::milliseconds(config.replication.rights_wait_ms));
    if (!turn->held()) {
      HttpResponse r = HttpResponse::Problem(
          409, "Conflict",
          "a checkout with this Idempotency-Key is still under way; retry it in a moment to get "
          "its order");
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
  }

  auto replay = [&](const std::string& order_id) {
    auto order = OrderJson(user_id, order_id);
    if (!order.ok()) return ProblemFromStatus(order.status());
    // A retry of a checkout with a card whose payment did not complete (its charge's COMMIT in
    // doubt, a database failure, the answer lost): the order awaits payment, and the retry pays
    // it, as the first request would have. A capture of the first attempt is the one used (the
    // charge's key is the order's). Before, the retry answered the order as it was, unpaid, and
    // the capture stayed until the order was paid with it or expired (review of the order paths,
    // 2026-12-07).
    if (!card->empty() && order->value("status", "") ==
                              services::OrderStatusName(services::OrderStatus::kPendingPayment)) {
      HttpResponse paid = PayForUser(user_id, order_id, *card, /*may_forward=*/true);
      if (paid.status != 409) {
        Json body = Json::parse(paid.body, nullptr, false);
        if (paid.status / 100 != 2 || !body.is_object()) return paid;
        body["idempotent_replay"] = true;
        paid.body = body.dump();
        return paid;
      }
      // Decided meanwhile (paid by a twin request, cancelled): the order as it now is.
      order = OrderJson(user_id, order_id);
      if (!order.ok()) return ProblemFromStatus(order.status());
    }
    (*order)["idempotent_replay"] = true;
    return HttpResponse::Json(200, order->dump());
  };

  // 1. A repeated key returns the order it made.
  crdt::Cart snapshot(CartActorFor(user_id));
  std::optional<std::string> existing;
  absl::Status st = shard.Run([&](pqxx::work& tx) {
    // Cart first, key second: each statement sees the latest commits (READ COMMITTED), and a twin
    // request that commits in between has emptied the cart but is then found by its key.
    pqxx::result r = tx.exec("SELECT state FROM carts WHERE user_id = " + tx.quote(user_id));
    if (!r.empty()) {
      pqxx::binarystring bytes(r[0][0]);
      auto cart =
          crdt::DecodeCart(std::string_view(bytes.get(), bytes.size()), CartActorFor(user_id));
      if (!cart.ok()) throw AbortTx{absl::DataLossError(std::string(cart.status().message()))};
      snapshot = *std::move(cart);
    }
    if (!idem.empty()) existing = FindByIdempotencyKey(tx, user_id, idem);
  });
  if (!st.ok()) return ProblemFromStatus(st);
  if (existing) return replay(*existing);
  auto lines = snapshot.Lines();
  if (lines.empty()) return ProblemFromStatus(Unprocessable("cart: empty, nothing to check out"));

  // The order will belong to this region's lease group: without the lease (cut off from the
  // majority, or starting) this region must not create orders other regions may take over.
  LeaseTable::Decision lease = leases->ForGroup(config.replica_id);
  if (!lease.mine) {
    HttpResponse r = HttpResponse::Problem(
        503, "Service Unavailable",
        absl::StrCat("region ", config.name,
                     " cannot take orders right now: it does not hold its order lease (it is "
                     "starting, or cut off from the other regions); retry shortly"));
    r.headers.emplace_back("Retry-After", "1");
    return r;
  }
  if (config.replication.enabled) {
    for (const auto& [sku, qty] : lines)
      rights_signals.RecordDemand(sku, static_cast<uint64_t>(qty));
  }

  // 2. Prices, and 3. stock: take it and record the reservation. A region sells only within its
  //    own rights; short of them, it waits (bounded) for a grant from a region that has spare.
  std::string order_id = RandomId("o");
  // Puts this checkout's stock back, if it took any, when no order will be made; should that
  // fail, the sweep releases it when the reservation expires.
  const auto put_stock_back = [&](std::string_view reason) {
    absl::Status undo = ReleaseReservation(order_id, std::string(reason));
    if (!undo.ok()) {
      spdlog::error("event=reservation_release_failed id={} status=\"{}\" (the sweep retries)",
                    order_id, undo.ToString());
    }
  };
  int64_t total = 0;
  std::string currency;
  std::map<std::string, int64_t> prices;
  const auto wait_deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(config.replication.enabled ? config.replication.rights_wait_ms : 0);
  bool waited = false;
  int64_t stock_seq = 0;  // the global outbox's seq of the last stock take
  // SKU -> the base64 of its take's delta: the order's created event carries them (see
  // StockTakesProblem in peer_records.cc).
  Json stock_takes = Json::object();
  for (;;) {
    std::map<std::string, int64_t> short_units;  // SKU -> units missing here
    const uint64_t stock_seen = rights_signals.StockVersion();
    st = global->Run([&](pqxx::work& tx) {
      RefuseLocalWriteIfHeld();  // it takes stock, then clears the cart
      // Reset here, not before Run: it runs this body again after a deadlock or serialization
      // failure, and a total summed over two attempts would be charged.
      short_units.clear();
      stock_takes = Json::object();
      total = 0;
      currency.clear();
      prices.clear();
      // Reads one round trip per line (price and locked stock together); all writes go in one
      // batch at the end: round trips, not work, bound a checkout's latency and lock hold time.
      std::string writes;
      for (const auto& [sku, qty] : lines) {  // Lines() is sorted by SKU: a fixed lock order
        pqxx::result p = tx.exec(
            "SELECT p.price_cents, p.currency, i.state, p.hlc FROM products p JOIN inventory i "
            "USING (sku) WHERE p.sku = " +
            tx.quote(sku) + " FOR UPDATE OF i");
        if (p.empty()) {
          if (tx.exec("SELECT 1 FROM products WHERE sku = " + tx.quote(sku)).empty()) {
            throw AbortTx{Unprocessable(absl::StrCat("cart: product ", sku, " no longer exists"))};
          }
          short_units[sku] = qty;
          continue;
        }
        if (p[0][3].as<int64_t>() == 0) {
          // Its stock arrived from another region before its catalog write: no price yet (the
          // row's 0 is a placeholder, not a price to charge).
          throw AbortTx{Unprocessable(absl::StrCat("cart: product ", sku,
                                                   " is not yet in this region's catalog (it is "
                                                   "on its way from another region); retry "
                                                   "shortly"))};
        }
        if (!currency.empty() && p[0][1].as<std::string>() != currency) {
          throw AbortTx{Unprocessable("cart: products in different currencies")};
        }
        currency = p[0][1].as<std::string>();
        prices[sku] = p[0][0].as<int64_t>();
        // Prices come from operators and from peers' replicated products: a product of an
        // absurd price must not wrap the total around into a small or negative charge.
        int64_t line_cents = 0;
        if (__builtin_mul_overflow(prices[sku], qty, &line_cents) ||
            __builtin_add_overflow(total, line_cents, &total)) {
          throw AbortTx{Unprocessable(absl::StrCat("cart: the total is too large to charge (over ",
                                                   INT64_MAX, " cents at ", sku, ")"))};
        }
        pqxx::binarystring bytes(p[0][2]);
        auto inv =
            crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()), config.replica_id);
        if (!inv.ok()) throw AbortTx{absl::DataLossError(std::string(inv.status().message()))};
        auto delta = inv->Take(sku, static_cast<uint64_t>(qty));
        if (!delta.ok()) {
          short_units[sku] = qty - std::max<int64_t>(inv->Rights(sku, config.replica_id), 0);
          continue;
        }
        writes += SaveInventorySql(tx, sku, *inv, *delta, config.replica_id);
        stock_takes[sku] = absl::Base64Escape(crdt::Encode(*delta));
      }
      if (!short_units.empty()) throw AbortTx{absl::ResourceExhaustedError("short of rights")};
      writes += "INSERT INTO reservations (id, user_id, state, expires_at) VALUES (" +
                tx.quote(order_id) + ", " + tx.quote(user_id) + ", 'held', now() + " +
                tx.quote(absl::StrCat(config.reservation_ttl_s, " seconds")) + "::interval);";
      for (const auto& [sku, qty] : lines) {
        writes += "INSERT INTO reservation_items (reservation_id, sku, units) VALUES (" +
                  tx.quote(order_id) + ", " + tx.quote(sku) + ", " + tx.quote(qty) + ");";
      }
      // The last outbox row of this transaction is its last stock take (each line's delta, in
      // SKU order): what a sync-peer answer waits for on the global stream. (The order's event
      // carries its takes too, and a peer of this version joins them before it stores the order;
      // the wait still covers a peer of an earlier version, which ignores them, during an
      // upgrade.)
      writes += "SELECT currval('outbox_seq_seq');";
      stock_seq = tx.exec(writes)[0][0].as<int64_t>();
    });
    // Only a shortage waits for stock; any other refusal (a product gone, mixed currencies, an
    // absurd total) is final even when an earlier line was short as well.
    if (st.ok() || !absl::IsResourceExhausted(st)) break;
    if (std::chrono::steady_clock::now() >= wait_deadline) {
      std::string what;
      for (const auto& [sku, missing] : short_units) {
        int64_t qty = 0;
        for (const auto& [l, q] : lines)
          if (l == sku) qty = q;
        absl::StrAppend(&what, what.empty() ? "" : "; ", sku, " (", qty, " requested, ",
                        qty - missing, " available in region ", config.name, ")");
      }
      if (waited) rights_waits->Add({{"result", "refused"}}).Increment();
      return ProblemFromStatus(absl::FailedPreconditionError(absl::StrCat(
          "out of stock: ", what,
          config.replication.enabled ? absl::StrCat("; waited ", config.replication.rights_wait_ms,
                                                    " ms for stock from other regions")
                                     : std::string())));
    }
    // Short: tell the replicator (it asks peers with spare rights), and wait for stock to change.
    waited = true;
    std::vector<uint64_t> tickets;
    for (const auto& [sku, missing] : short_units) {
      tickets.push_back(rights_signals.StartWaiting(sku, static_cast<uint64_t>(missing)));
    }
    (void)rights_signals.WaitForStockChange(stock_seen, wait_deadline);
    for (uint64_t t : tickets) rights_signals.DoneWaiting(t);
  }
  if (absl::IsUnknown(st)) {
    // The connection broke during the stock step's COMMIT: the stock may be taken, for an order
    // that will not be made. Nothing refers to the reservation yet, so it goes back now rather
    // than when it expires, when a retry would have found those units gone (a release finds
    // nothing if the commit did not happen; one that lands after this check is the sweep's).
    spdlog::warn("event=stock_take_in_doubt order={} status=\"{}\"", order_id, st.ToString());
    put_stock_back("checkout_in_doubt");
    return ProblemFromStatus(absl::UnavailableError(
        "the database connection failed while reserving the stock for this checkout; no order "
        "was made and the cart is unchanged: retry"));
  }
  if (!st.ok()) return ProblemFromStatus(st);
  if (waited) rights_waits->Add({{"result", "granted"}}).Increment();

  // 4. The order, atomically with its event, its confirmation and the cart cleared of exactly
  //    the lines it took (lines added meanwhile stay). The event goes last: its outbox seq is what
  //    a sync-peer checkout waits for a peer to acknowledge.
  Json created_items = Json::array();
  const int64_t created_ms = UnixNowMs();
  int64_t event_seq = 0;
  int64_t cleared_version = 0;  // the cart as the order left it
  crdt::Cart cleared(CartActorFor(user_id));
  const auto lease_lost = [&] {
    return absl::UnavailableError(absl::StrCat(
        "region ", config.name,
        " lost its order lease while taking the stock (another region now owns its orders); the "
        "stock went back, retry shortly"));
  };
  st = shard.Run([&](pqxx::work& tx) {
    // The wait for stock can be long (rights_wait_ms): the lease must still be ours, at the
    // epoch the order is written with, and no newer owner of the group known here (the fence).
    const LeaseTable::Decision now = leases->ForGroup(config.replica_id);
    if (!now.mine || now.epoch != lease.epoch) throw AbortTx{lease_lost()};
    // Reads first (the cart, locked; the fence; whether the sweep gave this checkout's stock
    // back), then every write in one round trip.
    pqxx::result r =
        tx.exec(DocumentLockSql(tx, "cart", user_id) + OrderLockSql(tx, order_id) +
                FenceLockSql(tx, config.replica_id, false) +
                "SELECT state, version, EXISTS (SELECT 1 FROM order_fence WHERE grp = " +
                tx.quote(config.replica_id) + " AND epoch > " +
                tx.quote(static_cast<int64_t>(lease.epoch)) +
                "), EXISTS (SELECT 1 FROM orders_void WHERE order_id = " + tx.quote(order_id) +
                ") FROM carts WHERE user_id = " + tx.quote(user_id) + " FOR UPDATE");
    if (!r.empty() && r[0][2].as<bool>()) throw AbortTx{lease_lost()};
    if (!r.empty() && r[0][3].as<bool>()) {
      throw AbortTx{absl::AbortedError(absl::StrCat(
          "the checkout took longer than its stock reservation (", config.reservation_ttl_s,
          " s), and the stock went back on sale; check out again"))};
    }
    // After the lock: a twin with the same key that got it first has committed its order by
    // now, and this statement sees it (it would otherwise find the cart emptied by its twin).
    if (!idem.empty()) {
      if (auto other = FindByIdempotencyKey(tx, user_id, idem)) {
        throw AbortTx{absl::AlreadyExistsError(*other)};
      }
    }
    std::string writes =
        "INSERT INTO orders (order_id, user_id, status, total_cents, currency, "
        "reservation_id, idempotency_key, owner_region, residency, lease_group, epoch, version, "
        "created_at, stock_takes) VALUES (" +
        tx.quote(order_id) + ", " + tx.quote(user_id) + ", 'pending_payment', " + tx.quote(total) +
        ", " + tx.quote(currency) + ", " + tx.quote(order_id) + ", " +
        (idem.empty() ? std::string("NULL") : tx.quote(idem)) + ", " + tx.quote(config.name) +
        ", " + tx.quote(who->residency) + ", " + tx.quote(config.replica_id) + ", " +
        tx.quote(static_cast<int64_t>(lease.epoch)) + ", 1, " + TimestampFromMsSql(created_ms) +
        ", " + tx.quote(stock_takes.dump()) + ");";
    Json items = Json::array();
    for (const auto& [sku, qty] : lines) {
      writes += "INSERT INTO order_items (order_id, sku, quantity, price_cents) VALUES (" +
                tx.quote(order_id) + ", " + tx.quote(sku) + ", " + tx.quote(qty) + ", " +
                tx.quote(prices[sku]) + ");";
      items.push_back(Json{{"sku", sku}, {"quantity", qty}, {"price_cents", prices[sku]}});
    }
    created_items = items;
    Json event{{"event", "created"},          {"order_id", order_id},
               {"user_id", user_id},          {"group", config.replica_id},
               {"epoch", lease.epoch},        {"version", 1},
               {"owner_region", config.name}, {"total_cents", total},
               {"currency", currency},        {"items", items},
               {"created_at_ms", created_ms}};
    // The key goes with the order, so that a retry that reaches another region (DNS moved the
    // customer meanwhile) finds the order there too.
    if (!idem.empty()) event["idempotency_key"] = idem;
    writes += "INSERT INTO notifications (order_id, user_id, kind, payload) VALUES (" +
              tx.quote(order_id) + ", " + tx.quote(user_id) + ", 'order_confirmation', " +
              tx.quote(event.dump()) + ");";
    // Not in the customer's confirmation: the stock takes are for the regions.
    event["stock_takes"] = stock_takes;
    // Clear what the snapshot held. The snapshot was read unlocked: the order stands only if
    // the locked cart still holds every unit of it, so that two checkouts of one cart (a
    // double click) cannot both take its lines; the one that comes second takes nothing.
    if (r.empty()) throw AbortTx{Unprocessable("cart: empty, nothing to check out")};
    pqxx::binarystring bytes(r[0][0]);
    auto cart =
        crdt::DecodeCart(std::string_view(bytes.get(), bytes.size()), CartActorFor(user_id));
    if (!cart.ok()) throw AbortTx{absl::DataLossError(std::string(cart.status().message()))};
    crdt::Cart taken = snapshot;
    crdt::Cart delta = taken.Clear();
    const auto before = cart->Lines();
    cart->Merge(delta);
    if (!ClearedExactly(before, cart->Lines(), lines)) {
      throw AbortTx{before.empty()
                        ? Unprocessable("cart: empty, nothing to check out")
                        : absl::AbortedError(
                              "cart: it changed while checking out (another checkout, or a "
                              "change made in another region); review it and check out again")};
    }
    cleared_version = r[0][1].as<int64_t>() + 1;
    writes +=
        SaveCartSql(tx, user_id, who->residency, *cart, delta, cleared_version, config.replica_id);
    cleared = *std::move(cart);
    writes += OrderEventSql(tx, config.replica_id, order_id, who->residency, event);
    pqxx::result out = tx.exec(writes);
    if (out.size() == 1) event_seq = out[0][0].as<int64_t>();
  });
  if (absl::IsUnknown(st)) {
    // The connection broke during COMMIT: the order may exist. Settled now when it can be: on a
    // fresh connection, under the order's lock (which waits for that COMMIT while its session
    // runs), an order found missing is voided, so that no late COMMIT makes it, and its stock goes
    // back at once; a retry then finds its units (it met "out of stock" when they were the
    // last, until the sweep). Otherwise releasing the stock could sell those units twice: the
    // reservation stays held, and the sweep settles it by the order's status once it expires
    // (commits it if paid, releases it otherwise).
    std::string unused_ref;
    absl::StatusOr<std::string> found =
        ExpireOrder(order_id, user_id, &unused_ref, /*window_over=*/false);
    if (found.ok() && *found == "missing") {
      spdlog::warn("event=checkout_in_doubt_not_made order={} status=\"{}\"", order_id,
                   st.ToString());
      put_stock_back("checkout_not_made");
      return ProblemFromStatus(absl::UnavailableError(absl::StrCat(
          "the database connection failed while committing order ", order_id,
          ": it was not created; the cart is as it was, its stock goes back on sale; check out "
          "again")));
    }
    spdlog::warn("event=checkout_in_doubt order={} status=\"{}\" settled=\"{}\"", order_id,
                 st.ToString(), found.ok() ? *found : found.status().ToString());
    if (cleared_version > 0) RetireHotCopies({{user_id, cleared_version}}, {});  // may be cleared
    return ProblemFromStatus(absl::UnavailableError(
        absl::StrCat("the database connection failed while committing order ", order_id,
                     ": it may or may not have been created; list your orders (GET /v1/orders) "
                     "or retry with the same Idempotency-Key")));
  }
  if (!st.ok()) {
    put_stock_back("checkout_failed");
    if (absl::IsAlreadyExists(st) && !idem.empty()) {
      // A concurrent request with the same key won (seen by our check, or by the unique index
      // when both checked before either committed): answer with its order.
      std::optional<std::string> winner;
      absl::Status found =
          shard.Run([&](pqxx::work& tx) { winner = FindByIdempotencyKey(tx, user_id, idem); });
      if (found.ok() && winner) return replay(*winner);
    }
    return ProblemFromStatus(st);
  }
  // The hot copy as the cart now is, by version as every cart write: a deletion instead would
  // let a cart change committed before this checkout, slower to write its copy, put the lines
  // just ordered back on view for an hour.
  StoreHotCart(user_id, cleared_version, cleared);

  // 5. Pay now when a card came with the checkout. The response is built from what was written
  //    (no read back).
  KnownOrder known{total,
                   currency,
                   who->residency,
                   config.replica_id,
                   lease.epoch,
                   Json{{"order_id", order_id},
                        {"status", "pending_payment"},
                        {"total_cents", total},
                        {"currency", currency},
                        {"owner_region", config.name},
                        {"epoch", lease.epoch},
                        {"payment_ref", Json()},
                        {"created_at", created_ms / 1000},
                        {"items", created_items}}};
  int status = 201;
  absl::StatusOr<Json> order;
  int64_t pay_seq = 0;  // the payment's event, after the order's in the same stream
  if (!card->empty()) {
    order = Pay(user_id, order_id, *card, &status, &known, &pay_seq);
    if (status == 200) status = 201;
    if (!order.ok()) {
      // The order exists and the cart is cleared: report it, awaiting payment, with the reason,
      // rather than an error that would make the customer check out again. (The reason as a
      // problem response would give it: a database's own text stays in the log.)
      std::string why = PublicDetail(order.status());
      order = OrderJson(user_id, order_id);
      if (order.ok()) (*order)["payment_error"] = why;
      status = 201;
    }
  } else {
    order = known.json;
  }
  if (!order.ok()) return ProblemFromStatus(order.status());
  // 6. Durability: in sync-peer mode, the answer waits for a peer to have the order, its
  //    payment (acknowledgements are cumulative: the payment's event covers the order's) and
  //    its stock take. The take travels on the global database's stream, the order on the
  //    shard's: a peer with the order but not the take would, once this region is declared
  //    lost, count the units sold here as this region's rights, reclaim and sell them again.
  const PeerDurability durability =
      AwaitPeer(shard, std::max(event_seq, pay_seq), who->residency, config.replica_id, stock_seq);
  checkout_durability->Add({{"mode", durability.mode}}).Increment();
  durability.AddTo(*order);
  return HttpResponse::Json(status, order->dump());
}

RegionApp::Impl::PeerDurability RegionApp::Impl::AwaitPeer(PgPool& shard, int64_t seq,
                                                           const std::string& residency,
                                                           uint32_t group, int64_t stock_seq) {
  PeerDurability out;
  if (config.durability != Durability::kSyncPeer) return out;
  auto stream = StreamName(shard);
  absl::StatusOr<std::string> stock_stream =
      stock_seq > 0 ? StreamName(*global) : absl::StatusOr<std::string>("");
  // Enough peers that every takeover sync's quorum includes one of them (common/quorum.h): with
  // five regions one peer is not, and a successor that synced from the three others would
  // count the units sold here as rights to reclaim.
  // A customer pinned to a jurisdiction of few regions: a takeover syncs their orders only to a
  // taker of that jurisdiction, itself one of the allowed peers, so all of those suffice.
  size_t allowed = 0;
  for (const PeerRegion& p : config.peers) {
    allowed += p.replica_id != 0 && services::ResidencyAllows(residency, p.jurisdiction);
  }
  const size_t needed =
      std::max<size_t>(1, std::min(common::PeersForSurvival(config.peers.size() + 1), allowed));
  std::vector<uint32_t> peers;
  if (stream.ok() && stock_stream.ok() && seq > 0) {
    std::vector<PeerAcks::Mark> marks = {{*stream, seq}};
    if (stock_seq > 0) marks.push_back({*stock_stream, stock_seq});
    peers = peer_acks.WaitFor(
        marks, [&](uint32_t p) { return PeerMayHold(p, residency); }, needed,
        std::chrono::steady_clock::now() +
            std::chrono::milliseconds(config.replication.sync_peer_timeout_ms));
  }
  if (!peers.empty() && leases->ForGroup(group).mine) {
    out.mode = "sync-peer";
    std::vector<std::string> names;
    for (uint32_t p : peers) names.push_back(RegionName(p));
    out.note = absl::StrCat("persisted in region", peers.size() > 1 ? "s " : " ",
                            absl::StrJoin(names, ", "));
  } else if (!peers.empty()) {
    out.note = "peers applied the order, but this region's lease lapsed meanwhile";
  } else {
    out.note = absl::StrCat("fewer than ", needed, " region", needed > 1 ? "s" : "",
                            " allowed to hold this order confirmed it within ",
                            config.replication.sync_peer_timeout_ms,
                            " ms; it is committed here and replicates asynchronously");
  }
  return out;
}

absl::StatusOr<Json> RegionApp::Impl::Pay(const std::string& user_id, const std::string& order_id,
                                          const std::string& card_number, int* http_status,
                                          const KnownOrder* known, int64_t* event_seq) {
  PgPool& shard = ShardFor(user_id);
  int64_t total = known ? known->total_cents : 0;
  std::string currency = known ? known->currency : "";
  std::string residency = known ? known->residency : "";
  uint32_t group = known ? known->group : 0;
  const bool decision = services::SandboxDecision(card_number) == services::CardDecision::kApproved;
  // Only the lease holder changes an order, with its epoch; checked again in the UPDATE.
  LeaseTable::Decision lease;
  auto take_lease = [&]() -> absl::Status {
    if (absl::Status held = LocalWriteHold(/*takes_stock=*/false); !held.ok()) return held;
    lease = leases->ForGroup(group);
    if (lease.mine) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("region ", config.name, " does not hold the lease of order ", order_id));
  };
  // Before an approved capture, on the order's shard (in the transaction that reads the order,
  // when it is read): the order's captures are settled by its status (SettleChargesOf) unless
  // this attempt records its payment. A capture whose payment is never recorded (the process
  // died, or the shard stopped answering, after the capture) is then refunded once the order is
  // decided. Before, one that committed after a cancel or an expiry had looked for captures was
  // never refunded. The row's created_at is this attempt's: the sweep keeps a row for
  // kChargeAttemptGraceS after the latest attempt (SettleChargesOf).
  auto settle_unless_recorded = [&](pqxx::work& tx) {
    tx.exec0("INSERT INTO charges_to_settle (order_id) VALUES (" + tx.quote(order_id) +
             ") ON CONFLICT (order_id) DO UPDATE SET created_at = now()");
  };
  absl::Status st;
  if (!known) {
    st = shard.Run([&](pqxx::work& tx) {
      pqxx::result r = tx.exec(
          "SELECT status, total_cents, currency, residency, lease_group, owner_region, created_at "
          "< now() - " +
          tx.quote(absl::StrCat(config.reservation_ttl_s, " seconds")) +
          "::interval FROM orders WHERE order_id = " + tx.quote(order_id) +
          OfCustomer(tx, user_id));
      if (r.empty()) throw AbortTx{absl::NotFoundError(absl::StrCat("no order ", order_id))};
      std::string status = r[0][0].as<std::string>();
      if (status != "pending_payment") {
        throw AbortTx{absl::FailedPreconditionError(
            absl::StrCat("order ", order_id, " is ", status, ", not awaiting payment"))};
      }
      total = r[0][1].as<int64_t>();
      currency = r[0][2].as<std::string>();
      residency = r[0][3].as<std::string>();
      group = GroupOf(r[0][4].as<int64_t>(), r[0][5].as<std::string>());
      if (absl::Status mine = take_lease(); !mine.ok()) throw AbortTx{mine};
      // Another region's order, here because this region took its group over: its reservation,
      // and the sweep that expires it once its payment window is over, are at its home region.
      // Past that window it is not paid here: the home region, back, expires it (or finds it
      // paid there before it was lost; expiring it here would have undone that payment).
      if (group != config.replica_id && r[0][6].as<bool>()) {
        throw AbortTx{absl::FailedPreconditionError(
            absl::StrCat("order ", order_id, ": its payment window (", config.reservation_ttl_s,
                         " s) is over; its home region ", r[0][5].as<std::string>(),
                         " expires it once it is back. Place a new order"))};
      }
      if (decision) settle_unless_recorded(tx);
    });
  } else {
    st = take_lease();
    if (st.ok() && decision) st = shard.Run(settle_unless_recorded);
  }
  if (!st.ok()) return st;
  const auto epoch = static_cast<int64_t>(lease.epoch);

  // The sandbox provider: one live charge per order (idempotent capture by key). A retry reuses
  // the first decision -- unless that charge was refunded because this order's update failed
  // (below): that attempt is void, and the retry is a new attempt, keyed after the refunded one.
  // A decline binds only the card that got it: when recording it failed (the order still awaits
  // payment), a retry with a card the provider approves is a new attempt as well.
  bool approved = decision;
  std::string charge_id;
  st = global->Run([&](pqxx::work& tx) {
    std::string key = "pay:" + order_id;
    for (int attempt = 1;; ++attempt) {
      charge_id = RandomId(services::ChargeIdPrefix(config.replica_id));
      approved = decision;
      pqxx::result r = tx.exec(
          "INSERT INTO sandbox_charges (charge_id, idempotency_key, order_id, amount_cents, "
          "currency, status) VALUES (" +
          tx.quote(charge_id) + ", " + tx.quote(key) + ", " + tx.quote(order_id) + ", " +
          tx.quote(total) + ", " + tx.quote(currency) + ", " +
          tx.quote(approved ? "captured" : "declined") +
          ") ON CONFLICT (idempotency_key) DO NOTHING RETURNING charge_id");
      if (!r.empty()) return;
      pqxx::row prior = tx.exec1(
          "SELECT charge_id, status FROM sandbox_charges WHERE "
          "idempotency_key = " +
          tx.quote(key));
      charge_id = prior[0].as<std::string>();
      const std::string status = prior[1].as<std::string>();
      approved = status == "captured";
      if (status != "refunded" && !(status == "declined" && decision)) return;
      if (attempt >= kMaxPaymentAttempts) {
        throw AbortTx{absl::FailedPreconditionError(
            absl::StrCat("order ", order_id, ": ", kMaxPaymentAttempts,
                         " payment attempts were given back or declined already; not trying "
                         "again"))};
      }
      key = absl::StrCat("pay:", order_id, ":after:", charge_id);
    }
  });
  if (!st.ok()) return st;

  bool stale = false;
  int64_t seq = 0;
  st = shard.Run([&](pqxx::work& tx) {
    stale = false;
    // The charge took a round trip: the lease must still be ours, at the same epoch, as we write
    // (the fence below covers a newer owner this database has heard of; this, one it has not).
    const LeaseTable::Decision now = leases->ForGroup(group);
    if (!now.mine || now.epoch != lease.epoch) {
      throw AbortTx{absl::UnavailableError(absl::StrCat(
          "region ", config.name, " lost the lease of order ", order_id, " while paying it"))};
    }
    std::string next = approved ? "paid" : "payment_declined";
    // Fenced: nothing matches if the order or its group has moved to a newer epoch.
    pqxx::result r = tx.exec(
        FenceLockSql(tx, group, false) + "UPDATE orders SET status = " + tx.quote(next) +
        ", payment_ref = " + tx.quote(charge_id) + ", epoch = " + tx.quote(epoch) +
        ", version = version + 1, updated_at = now() WHERE order_id = " + tx.quote(order_id) +
        " AND status = 'pending_payment' AND epoch <= " + tx.quote(epoch) +
        FenceSql(tx, group, epoch) + " RETURNING version");
    if (r.empty()) {
      stale = IsStale(tx, order_id, group, epoch);
      if (stale) {
        throw AbortTx{absl::FailedPreconditionError(
            absl::StrCat("order ", order_id,
                         " has been changed by a newer owner; this region's payment was refused"))};
      }
      throw AbortTx{absl::FailedPreconditionError(
          absl::StrCat("order ", order_id, " changed while being paid"))};
    }
    // Attempts at once share the charge (it is keyed by the order), and one that fails gives it
    // back under this order's row lock (below), which our UPDATE now holds: the charge must
    // still be captured as we record it.
    if (approved && ChargeStatus(charge_id) != "captured") {
      throw AbortTx{absl::FailedPreconditionError(absl::StrCat(
          "order ", order_id,
          ": its charge was given back by a concurrent payment attempt that failed; pay again"))};
    }
    Json event = StatusEvent(next, order_id, user_id, group, epoch, r[0][0].as<int64_t>());
    event["payment_ref"] = charge_id;
    seq = OrderEvent(tx, config.replica_id, order_id, residency, event);
    // Paid with this charge: every attempt at once captures this same charge (they share its
    // key), so no capture of the order is left for the sweep to settle.
    if (approved) {
      tx.exec0("DELETE FROM charges_to_settle WHERE order_id = " + tx.quote(order_id));
    }
  });
  if (!st.ok()) {
    if (stale) stale_local_writes->Increment();
    if (approved && absl::IsUnknown(st)) {
      // The connection broke during COMMIT: the order may be paid. Keep the capture: a retry
      // reuses it, and the sweep refunds it if the order expires unpaid.
      spdlog::warn("event=payment_in_doubt order={} charge={} status=\"{}\"", order_id, charge_id,
                   st.ToString());
      return absl::UnavailableError(absl::StrCat(
          "the database connection failed while recording the payment of order ", order_id,
          ": it may or may not be paid; read the order, and pay again if "
          "it still awaits payment (the same charge is used)"));
    }
    if (approved && RefundUnlessPaidWith(shard, order_id, charge_id)) {
      // A concurrent attempt paid the order with this same charge: it is that one's now.
      return absl::FailedPreconditionError(
          absl::StrCat("order ", order_id, " was paid by a concurrent request"));
    }
    return st;
  }
  if (event_seq != nullptr) *event_seq = seq;
  // The order's status is decided and committed: the answer is that status. Settling its
  // reservation is the sweep's work as well (when the reservation expires it commits a paid
  // order's and releases any other's), so a failure here only leaves the stock held until then.
  // Before, it answered 500 for an order it had paid, and the retry 409.
  if (approved) {
    // Not over a mark for the sweep (SettleAtNextSweep): a cancel since our commit decided the
    // order again, and its release may have failed; the sweep settles it by the order's status.
    st = global->Run([&](pqxx::work& tx) {
      tx.exec0("UPDATE reservations SET state = 'committed' WHERE id = " + tx.quote(order_id) +
               " AND state = 'held' AND expires_at > '-infinity'");
    });
    *http_status = 200;
  } else {
    st = ReleaseReservation(order_id, "payment_declined");
    *http_status = 402;
  }
  if (!st.ok()) {
    spdlog::warn("event=reservation_left_to_sweep order={} order_status={} status=\"{}\"", order_id,
                 approved ? "paid" : "payment_declined", st.ToString());
  }
  if (known) {
    Json out = known->json;
    out["status"] = approved ? "paid" : "payment_declined";
    out["payment_ref"] = charge_id;
    return out;
  }
  return OrderJson(user_id, order_id);
}

HttpResponse RegionApp::Impl::PayOrder(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  if (auto st = ValidOrderId(req.params["id"]); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto card = StringField(*body, "card_number", true);
  if (!card.ok()) return ProblemFromStatus(card.status());
  if (auto st = services::ValidateCardNumber(*card); !st.ok()) {
    return ProblemFromStatus(Unprocessable(std::string(st.message())));
  }
  return PayForUser(who->user_id, req.params["id"], *card, /*may_forward=*/true);
}

// Whose lease an order is under, and what to do when it is not this region's.
namespace {
struct OrderOwner {
  uint32_t group = 0;
  bool found = false;
  std::string residency;
};
}  // namespace

HttpResponse RegionApp::Impl::PayForUser(const std::string& user_id, const std::string& order_id,
                                         const std::string& card_number, bool may_forward) {
  OrderOwner o;
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    pqxx::result r =
        tx.exec("SELECT lease_group, owner_region, residency FROM orders WHERE order_id = " +
                tx.quote(order_id) + OfCustomer(tx, user_id));
    if (r.empty()) return;
    o.found = true;
    o.group = GroupOf(r[0][0].as<int64_t>(), r[0][1].as<std::string>());
    o.residency = r[0][2].as<std::string>();
  });
  if (!st.ok()) return ProblemFromStatus(st);
  if (!o.found) return ProblemFromStatus(absl::NotFoundError(absl::StrCat("no order ", order_id)));
  LeaseTable::Decision lease = leases->ForGroup(o.group);
  if (!lease.mine) {
    if (may_forward && lease.owner != 0 && lease.owner != config.replica_id) {
      return ForwardToOwner(lease.owner, user_id, order_id, o.residency, /*pay=*/true, card_number);
    }
    return NotOwnerProblem(order_id, lease);
  }
  int status = 200;
  int64_t seq = 0;
  auto order = Pay(user_id, order_id, card_number, &status, nullptr, &seq);
  if (!order.ok()) return ProblemFromStatus(order.status());
  // Sync-peer mode covers a payment as it does a checkout: a successor that took the order over
  // without its payment would ask the customer to pay again.
  const PeerDurability durability = AwaitPeer(ShardFor(user_id), seq, o.residency, o.group);
  durability.AddTo(*order);
  return HttpResponse::Json(status, order->dump());
}

HttpResponse RegionApp::Impl::ListOrders(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  Json items = Json::array();
  absl::Status st = ShardFor(who->user_id).Run([&](pqxx::work& tx) {
    items = OrdersJson(tx, who->user_id, "true", 100);
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, Json{{"items", items}}.dump());
}

HttpResponse RegionApp::Impl::GetOrder(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  if (auto st = ValidOrderId(req.params["id"]); !st.ok()) return ProblemFromStatus(st);
  // Another customer's order id reads as not found: no hint that it exists.
  auto o = OrderJson(who->user_id, req.params["id"]);
  if (!o.ok()) return ProblemFromStatus(o.status());
  return HttpResponse::Json(200, o->dump());
}

HttpResponse RegionApp::Impl::CancelOrder(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  if (auto st = ValidOrderId(req.params["id"]); !st.ok()) return ProblemFromStatus(st);
  return CancelForUser(who->user_id, req.params["id"], /*may_forward=*/true);
}

HttpResponse RegionApp::Impl::CancelForUser(const std::string& user_id, const std::string& order_id,
                                            bool may_forward) {
  std::string next;
  std::string already;  // the order was cancelled or refunded before: only settle the rest
  std::string residency;
  uint32_t group = 0;
  int64_t seq = 0;  // the status event's
  bool stale = false;
  std::optional<LeaseTable::Decision> not_mine;
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    not_mine.reset();
    already.clear();
    next.clear();
    seq = 0;
    stale = false;
    pqxx::result r = tx.exec(
        "SELECT status, residency, lease_group, owner_region FROM orders WHERE order_id = " +
        tx.quote(order_id) + OfCustomer(tx, user_id) + " FOR UPDATE");
    if (r.empty()) throw AbortTx{absl::NotFoundError(absl::StrCat("no order ", order_id))};
    group = GroupOf(r[0][2].as<int64_t>(), r[0][3].as<std::string>());
    residency = r[0][1].as<std::string>();
    LeaseTable::Decision lease = leases->ForGroup(group);
    if (!lease.mine) {
      not_mine = lease;
      return;
    }
    RefuseLocalWriteIfHeld(/*takes_stock=*/false);
    std::string status = r[0][0].as<std::string>();
    if (status == "pending_payment") {
      next = "cancelled";
    } else if (status == "paid") {
      next = "refunded";
    } else if (status == "cancelled" || status == "refunded") {
      // A retry of a cancel whose refund or stock release failed after the status changed: do
      // those again (both are idempotent), then answer as for any order already cancelled.
      already = status;
      next = status;
      return;
    } else {
      throw AbortTx{absl::FailedPreconditionError(
          absl::StrCat("order ", order_id, " is ", status, " and cannot be cancelled"))};
    }
    const auto epoch = static_cast<int64_t>(lease.epoch);
    pqxx::result u = tx.exec(
        FenceLockSql(tx, group, false) + "UPDATE orders SET status = " + tx.quote(next) +
        ", epoch = " + tx.quote(epoch) +
        ", version = version + 1, updated_at = now() WHERE order_id = " + tx.quote(order_id) +
        " AND epoch <= " + tx.quote(epoch) + FenceSql(tx, group, epoch) + " RETURNING version");
    if (u.empty()) {
      stale = true;
      throw AbortTx{absl::FailedPreconditionError(absl::StrCat(
          "order ", order_id, " has been changed by a newer owner; this change was refused"))};
    }
    seq = OrderEvent(tx, config.replica_id, order_id, residency,
                     StatusEvent(next, order_id, user_id, group, epoch, u[0][0].as<int64_t>()));
    // Should the refund or the release below fail, and the customer not retry, the sweep still
    // settles them.
    SettleAtNextSweep(tx, order_id);
  });
  if (stale) stale_local_writes->Increment();
  if (!st.ok()) return ProblemFromStatus(st);
  if (not_mine) {
    if (may_forward && not_mine->owner != 0 && not_mine->owner != config.replica_id) {
      return ForwardToOwner(not_mine->owner, user_id, order_id, residency, /*pay=*/false, "");
    }
    return NotOwnerProblem(order_id, *not_mine);
  }
  // Every capture of the order, not only the paid one: a payment whose order update was in doubt
  // left a capture on a pending order. Charges captured in another region (the order was paid
  // there, a successor's, during a failover) are refunded there, when it applies the order's
  // status (SettleAtNextSweep, then its sweep). Should this refund fail, this region's sweep
  // makes it (charges_to_settle, written with the status change).
  st = global->Run([&](pqxx::work& tx) { RefundCaptured(tx, "order_id = " + tx.quote(order_id)); });
  if (!st.ok()) return ProblemFromStatus(st);
  st = ReleaseReservation(order_id, next);
  if (!st.ok()) return ProblemFromStatus(st);
  if (!already.empty()) {
    return ProblemFromStatus(absl::FailedPreconditionError(
        absl::StrCat("order ", order_id, " is ", already, " and cannot be cancelled")));
  }
  auto o = OrderJson(user_id, order_id);
  if (!o.ok()) return ProblemFromStatus(o.status());
  // Sync-peer mode covers a cancel as it does a payment: a successor that took the order over
  // without it would still ship a paid order whose money went back.
  const PeerDurability durability = AwaitPeer(ShardFor(user_id), seq, residency, group);
  durability.AddTo(*o);
  return HttpResponse::Json(200, o->dump());
}

HttpResponse RegionApp::Impl::NotOwnerProblem(const std::string& order_id,
                                              const LeaseTable::Decision& lease) {
  std::string detail =
      lease.owner != 0 && lease.owner != config.replica_id
          ? absl::StrCat("order ", order_id, " is owned by region ", RegionName(lease.owner),
                         ", which cannot be reached from here right now; retry shortly")
          : absl::StrCat("no region holds the lease of order ", order_id,
                         " right now (a failover is in progress); retry in a few seconds");
  HttpResponse r = HttpResponse::Problem(503, "Service Unavailable", detail);
  r.headers.emplace_back("Retry-After", "2");
  return r;
}

uint32_t RegionApp::Impl::GroupOf(int64_t lease_group, const std::string& owner_region) const {
  if (lease_group > 0) return static_cast<uint32_t>(lease_group);
  // Rows written before leases existed: their creator's group.
  if (owner_region == config.name) return config.replica_id;
  for (const auto& p : config.peers)
    if (p.name == owner_region && p.replica_id != 0) return p.replica_id;
  return config.replica_id;
}

void RegionApp::Impl::SettleAtNextSweep(pqxx::work& tx, const std::string& order_id) {
  bool captured_here = false;
  absl::Status st = global->Run([&](pqxx::work& g) {
    // One round trip: a peer's state page applies thousands of decided orders, each with this.
    captured_here =
        !g.exec("UPDATE reservations SET state = 'held', expires_at = '-infinity' WHERE id = " +
                g.quote(order_id) +
                " AND state IN ('held', 'committed'); SELECT 1 FROM sandbox_charges WHERE "
                "order_id = " +
                g.quote(order_id) + " AND status = 'captured' LIMIT 1")
             .empty();
  });
  if (!st.ok()) throw AbortTx{st};
  // The captures go by the order's status, not by its reservation: a successor that was paid for
  // a lost region's order holds the capture, while the reservation stays where the order was
  // made. A capture committed after this read is a payment here whose order update comes after
  // ours (it waits for this row lock): it finds the order decided and gives its capture back
  // itself (RefundUnlessPaidWith).
  if (captured_here) {
    tx.exec0("INSERT INTO charges_to_settle (order_id) VALUES (" + tx.quote(order_id) +
             ") ON CONFLICT DO NOTHING");
  }
}

bool RegionApp::Impl::PeerMayHold(uint32_t replica, std::string_view residency) const {
  for (const auto& p : config.peers)
    if (p.replica_id == replica) return services::ResidencyAllows(residency, p.jurisdiction);
  return false;
}

std::string RegionApp::Impl::ChargeStatus(const std::string& charge_id) {
  std::string status;
  absl::Status st = global->ReadAutocommit([&](pqxx::nontransaction& q) {
    status.clear();
    pqxx::result r =
        q.exec("SELECT status FROM sandbox_charges WHERE charge_id = " + q.quote(charge_id));
    if (!r.empty()) status = r[0][0].as<std::string>();
  });
  if (!st.ok()) throw AbortTx{st};
  return status;
}

bool RegionApp::Impl::RefundUnlessPaidWith(PgPool& shard, const std::string& order_id,
                                           const std::string& charge_id) {
  bool paid_with = false;
  absl::Status st = shard.Run([&](pqxx::work& tx) {
    // The row lock orders this against a concurrent attempt recording the same charge (it
    // checks the charge under this lock): either it committed and we see its payment_ref, or it
    // will find the charge refunded and not record it.
    pqxx::result r = tx.exec(
        "SELECT payment_ref FROM orders WHERE order_id = " + tx.quote(order_id) + " FOR UPDATE");
    paid_with = !r.empty() && !r[0][0].is_null() && r[0][0].as<std::string>() == charge_id;
    if (!paid_with) {
      absl::Status refunded = global->Run(
          [&](pqxx::work& g) { RefundCaptured(g, "charge_id = " + g.quote(charge_id)); });
      if (!refunded.ok()) {
        // The capture stays, owed: the sweep refunds it (RefundsDue). The order may be decided
        // already (a cancel or an expiry that came first), its reservation released, so no
        // sweep of reservations would ever look at it again.
        spdlog::warn(
            "event=payment_refund_failed order={} charge={} status=\"{}\" (the sweep retries)",
            order_id, charge_id, refunded.ToString());
        tx.exec0("INSERT INTO refunds_due (charge_id, order_id) VALUES (" + tx.quote(charge_id) +
                 ", " + tx.quote(order_id) + ") ON CONFLICT DO NOTHING");
        return;
      }
    }
    tx.exec0("DELETE FROM refunds_due WHERE charge_id = " + tx.quote(charge_id));  // settled
  });
  if (!st.ok()) {
    // Nothing recorded (the order's shard failed too): the capture stays for the reconcile
    // report (charge_without_order), or for the sweep if the order expires unpaid.
    spdlog::warn("event=payment_refund_failed order={} charge={} status=\"{}\"", order_id,
                 charge_id, st.ToString());
  }
  return paid_with;
}

std::vector<std::string> RegionApp::Impl::RefundCaptured(pqxx::work& tx, const std::string& where) {
  std::vector<std::string> ids;
  for (const auto& r : tx.exec("UPDATE sandbox_charges SET status = 'refunded', refunded_cents = "
                               "amount_cents WHERE status = 'captured' AND " +
                               where + " RETURNING charge_id")) {
    ids.push_back(r[0].as<std::string>());
  }
  return ids;
}

std::string RegionApp::Impl::RegionName(uint32_t replica) const {
  if (replica == config.replica_id) return config.name;
  for (const auto& p : config.peers)
    if (p.replica_id == replica) return p.name;
  return absl::StrCat("replica-", replica);
}

absl::StatusOr<std::string> RegionApp::Impl::StreamName(PgPool& pool) {
  {
    std::lock_guard<std::mutex> lock(streams_mu);
    auto it = stream_names.find(pool.name());
    if (it != stream_names.end()) return it->second;
  }
  auto id = ReadStreamId(pool);
  if (!id.ok()) return id.status();
  std::string name = StreamNameOf(pool, *id);
  std::lock_guard<std::mutex> lock(streams_mu);
  stream_names[pool.name()] = name;
  return name;
}

absl::Status RegionApp::Impl::RaiseFence(uint32_t group, uint64_t epoch, uint32_t owner) {
  {
    std::lock_guard<std::mutex> lock(fence_mu);
    if (fence_written[group] >= epoch) return absl::OkStatus();
  }
  for (auto& shard : shards) {
    absl::Status st = shard->Run([&](pqxx::work& tx) {
      tx.exec0(FenceLockSql(tx, group, true) +
               "INSERT INTO order_fence (grp, epoch, owner) VALUES (" + tx.quote(group) + ", " +
               tx.quote(static_cast<int64_t>(epoch)) + ", " + tx.quote(owner) +
               ") ON CONFLICT (grp) DO UPDATE SET epoch = EXCLUDED.epoch, owner = "
               "EXCLUDED.owner, updated_at = now() WHERE order_fence.epoch < EXCLUDED.epoch");
    });
    if (!st.ok()) return st;
  }
  std::lock_guard<std::mutex> lock(fence_mu);
  uint64_t& w = fence_written[group];
  w = std::max(w, epoch);
  return absl::OkStatus();
}

HttpResponse RegionApp::Impl::Reconcile(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  std::vector<services::ProviderCharge> charges;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    for (const auto& r : tx.exec("SELECT charge_id, order_id, status, amount_cents FROM "
                                 "sandbox_charges ORDER BY charge_id")) {
      charges.push_back({r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(),
                         r[3].as<int64_t>()});
    }
  });
  if (!st.ok()) return ProblemFromStatus(st);
  std::vector<services::OrderPayment> orders;
  for (auto& shard : shards) {
    st = shard->Run([&](pqxx::work& tx) {
      for (const auto& r : tx.exec("SELECT order_id, status, coalesce(payment_ref, ''), "
                                   "total_cents FROM orders WHERE payment_ref IS NOT NULL OR "
                                   "status IN ('paid', 'refunded')")) {
        orders.push_back({r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(),
                          r[3].as<int64_t>()});
      }
    });
    if (!st.ok()) return ProblemFromStatus(st);
  }
  Json mismatches = Json::array();
  for (const auto& m : services::Reconcile(charges, orders, config.replica_id)) {
    mismatches.push_back(Json{{"kind", m.kind},
                              {"order_id", m.order_id},
                              {"charge_id", m.charge_id},
                              {"detail", m.detail}});
  }
  return HttpResponse::Json(
      200, Json{{"charges", charges.size()}, {"orders", orders.size()}, {"mismatches", mismatches}}
               .dump());
}

}  // namespace meridian::region
