// Carts: the Cart CRDT, durable in the user's PostgreSQL shard (state + outbox delta in one
// transaction), hot in Redis with a version check so that a slow writer can never put an older
// cart over a newer one (read-your-writes), served from PostgreSQL when Redis is down.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "services/domain.h"

namespace meridian::region {
namespace {

struct CartRow {
  crdt::Cart cart;
  int64_t version = 0;
};

CartRow LoadCart(pqxx::work& tx, const std::string& user_id, crdt::ReplicaId replica, bool lock) {
  pqxx::result r = tx.exec((lock ? DocumentLockSql(tx, "cart", user_id) : std::string()) +
                           "SELECT state, version FROM carts WHERE user_id = " + tx.quote(user_id) +
                           (lock ? " FOR UPDATE" : ""));
  if (r.empty()) return CartRow{crdt::Cart(replica), 0};
  pqxx::binarystring bytes(r[0][0]);
  auto cart = crdt::DecodeCart(std::string_view(bytes.get(), bytes.size()), replica);
  if (!cart.ok()) {
    throw AbortTx{absl::DataLossError(
        absl::StrCat("cart of ", user_id, " is unreadable: ", cart.status().message()))};
  }
  return CartRow{*std::move(cart), r[0][1].as<int64_t>()};
}

Json CartJson(const std::string& user_id, const crdt::Cart& cart, int64_t version) {
  Json lines = Json::array();
  for (const auto& [sku, qty] : cart.Lines())
    lines.push_back(Json{{"sku", sku}, {"quantity", qty}});
  Json j{{"user_id", user_id}, {"lines", lines}, {"version", version}};
  if (cart.currency()) j["currency"] = *cart.currency();
  if (cart.note()) j["note"] = *cart.note();
  return j;
}

}  // namespace

// The SQL that saves the cart and its delta; `residency` tags the outbox row for the
// replicator's filter. SaveCart runs it; a caller batching several writes appends it to its own.
std::string SaveCartSql(pqxx::work& tx, const std::string& user_id, const std::string& residency,
                        const crdt::Cart& cart, const crdt::Cart& delta, int64_t version,
                        crdt::ReplicaId origin, size_t max_state_bytes) {
  std::string bytes = crdt::Encode(cart);
  if (max_state_bytes > 0 && bytes.size() > max_state_bytes) {
    throw AbortTx{
        Unprocessable(absl::StrCat("cart: too large to add to (its stored state would be ",
                                   bytes.size(), " bytes, the limit is ", max_state_bytes,
                                   "); remove a line or check out, then add again"))};
  }
  std::string d = crdt::Encode(delta);
  return "INSERT INTO carts (user_id, state, residency, version) VALUES (" + tx.quote(user_id) +
         ", " + tx.quote_raw(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()) +
         ", " + tx.quote(residency) + ", " + tx.quote(version) + ")" + kCartUpsertConflictSql +
         "; INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" +
         tx.quote(origin) + ", 'cart', " + tx.quote(user_id) + ", " +
         tx.quote_raw(reinterpret_cast<const unsigned char*>(d.data()), d.size()) + ", " +
         tx.quote(residency) + ");";
}

void SaveCart(pqxx::work& tx, const std::string& user_id, const std::string& residency,
              const crdt::Cart& cart, const crdt::Cart& delta, int64_t version,
              crdt::ReplicaId origin, size_t max_state_bytes) {
  tx.exec(SaveCartSql(tx, user_id, residency, cart, delta, version, origin,
                      max_state_bytes));  // one round trip
}

// What a cart change makes of the cart: its delta, or nullopt when the request asks for what the
// cart already is.
using CartChange = absl::StatusOr<std::optional<crdt::Cart>>;

// The line at `quantity` units as this region sees it: what this region has seen of the line
// goes (each of its changes was an entry of the stored state), and one change of `quantity`
// takes its place. Changes made elsewhere that this region has not seen still count, as they
// would with a change by the difference; but the line keeps one entry of ours, where changes by
// the difference kept one per change for as long as the line lived (a quantity toggled 200,000
// times made a cart no decoder accepts). A line that concurrent decreases left below zero also
// starts afresh this way, so the customer sees what they asked for.
static crdt::Cart ReplaceLine(crdt::Cart& cart, const std::string& sku, int64_t quantity) {
  crdt::Cart delta = cart.Remove(sku);
  delta.Merge(cart.Add(sku, quantity));
  return delta;
}

// Applies `change` to the customer's cart in one transaction, then refreshes Redis. A change
// that is nullopt writes nothing (no version bump, no outbox row), so repeating a request cannot
// grow the cart's history or the replication stream. A change that `grows` the cart is refused
// past limits.max_cart_bytes of stored state (422); one that shrinks it never is.
static HttpResponse MutateCart(RegionApp::Impl& app, const services::TokenClaims& who,
                               const std::function<CartChange(crdt::Cart&)>& change, bool grows) {
  CartRow saved;
  bool changed = false;
  int64_t written = 0;  // the version a failed COMMIT may have made
  absl::Status st = app.ShardFor(who.user_id).Run([&](pqxx::work& tx) {
    written = 0;
    app.RefuseLocalWriteIfHeld(/*takes_stock=*/false);
    CartRow row = LoadCart(tx, who.user_id, app.CartActorFor(who.user_id), true);
    CartChange delta = change(row.cart);
    if (!delta.ok()) throw AbortTx{delta.status()};
    changed = delta->has_value();
    if (changed) {
      row.version += 1;
      SaveCart(tx, who.user_id, who.residency, row.cart, **delta, row.version,
               app.config.replica_id, grows ? app.config.max_cart_bytes : 0);
      written = row.version;
    }
    saved = std::move(row);
  });
  if (!st.ok()) {
    // Failed after its write (the COMMIT's answer lost with the connection: it may have
    // committed): the copy from before the change is not served on.
    if (written > 0) app.RetireHotCopies({{who.user_id, written}}, {});
    return ProblemFromStatus(st);
  }
  if (!changed) {
    return HttpResponse::Json(200, CartJson(who.user_id, saved.cart, saved.version).dump());
  }
  app.StoreHotCart(who.user_id, saved.version, saved.cart);
  return HttpResponse::Json(200, CartJson(who.user_id, saved.cart, saved.version).dump());
}

std::string RegionApp::Impl::HotCartKey(std::string_view user_id) const {
  return absl::StrCat("cart:", CartActorFor(user_id), ":", AbslView(user_id));
}

void RegionApp::Impl::StoreHotCart(const std::string& user_id, int64_t version,
                                   const crdt::Cart& cart) {
  // Written only if newer than what Redis holds (a slower writer cannot regress it).
  static constexpr const char* kSetIfNewer = R"lua(
local v = tonumber(redis.call('HGET', KEYS[1], 'v') or '-1')
if tonumber(ARGV[1]) > v then
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 's', ARGV[2])
  redis.call('EXPIRE', KEYS[1], 3600)
end
return 1)lua";
  const std::string key = HotCartKey(user_id);
  if (!redis->Eval(kSetIfNewer, {key}, {std::to_string(version), crdt::Encode(cart)}).ok()) {
    // Redis may still hold the copy before this change: read around it until it is retired.
    MarkStale({{key, std::to_string(version)}});
  }
}

absl::Status RegionApp::Impl::RetireCopies(const std::vector<StaleKeys::Entry>& copies) {
  // One round trip: KEYS holds the copies' keys, ARGV their versions. A copy at the same version
  // or newer (a write committed after the one retired, so it holds its change) stays. A cart's
  // marker lives 60 s: a local writer stores its copy right after its commit, and most carts a
  // peer changes in real traffic have no copy here (their customers shop elsewhere), so markers
  // of an hour would fill Redis with them. A product's lives as long as its copies, 300 s
  // (store_product's rules).
  static const std::string kRetire = std::string(kStoreProductCopyFn) + R"lua(
for i, key in ipairs(KEYS) do
  local version = ARGV[i]
  if string.sub(key, 1, 8) == 'product:' then
    store_product(key, version, version .. '|')
  else
    local v = tonumber(redis.call('HGET', key, 'v') or '-1')
    if tonumber(version) > v then
      redis.call('HSET', key, 'v', version)
      redis.call('HDEL', key, 's')
      redis.call('EXPIRE', key, 60)
    end
  end
end
return 1)lua";
  if (copies.empty()) return absl::OkStatus();
  std::vector<std::string> keys, versions;
  for (const StaleKeys::Entry& c : copies) {
    keys.push_back(c.key);
    versions.push_back(c.version);
    // A product's version is compared as a string of 20 digits (ProductCopyVersion); one listed
    // from the database lost its leading zeros.
    if (absl::StartsWith(c.key, "product:") && c.version.size() < 20) {
      versions.back().insert(0, 20 - c.version.size(), '0');
    }
  }
  return redis->Eval(kRetire, keys, versions);
}

void RegionApp::Impl::RetireHotCopies(
    const std::vector<std::pair<std::string, int64_t>>& carts,
    const std::vector<std::pair<std::string, uint64_t>>& products) {
  std::vector<StaleKeys::Entry> copies;
  for (const auto& [user_id, version] : carts) {
    copies.push_back({HotCartKey(user_id), std::to_string(version)});
  }
  for (const auto& [sku, hlc] : products) {
    copies.push_back({"product:" + sku, ProductCopyVersion(hlc)});
  }
  if (!RetireCopies(copies).ok()) MarkStale(copies);
}

void RegionApp::Impl::MarkStale(const std::vector<StaleKeys::Entry>& copies) {
  for (const StaleKeys::Entry& c : copies) stale_hot_copies.Mark(c.key, c.version);
  // Saved now, and left unsaved in memory: the jobs thread's tick saves them again (an upsert,
  // harmless), which covers a save that fails here. While Redis is down this is one more write,
  // to the global database, for every cart write: the price of a mark that survives a crash.
  // (Skipping it while the breaker was already open did not work: the request's own earlier
  // Redis call, the rate limiter's, is what opens it.)
  if (absl::Status st = SaveStaleMarks(copies); !st.ok()) {
    spdlog::warn("event=stale_copies_save_failed keys={} status=\"{}\" (the jobs thread retries)",
                 copies.size(), st.ToString());
  }
}

HttpResponse RegionApp::Impl::GetCart(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  const std::string key = HotCartKey(who->user_id);
  // A copy that may be older than the row (writing it failed) is not read.
  if (!stale_hot_copies.IsStale(key)) {
    auto hot = redis->HGetAll(key);
    if (hot.ok() && hot->count("s") && hot->count("v")) {
      auto cart = crdt::DecodeCart(hot->at("s"), CartActorFor(who->user_id));
      int64_t version = 0;
      if (cart.ok() && ParseInt(hot->at("v"), &version)) {
        cache_hits->Increment();
        return HttpResponse::Json(200, CartJson(who->user_id, *cart, version).dump());
      }
    }
    if (!hot.ok()) redis_fallbacks->Increment();
  }
  cache_misses->Increment();
  CartRow row;
  absl::Status st = ShardFor(who->user_id).Run([&](pqxx::work& tx) {
    row = LoadCart(tx, who->user_id, CartActorFor(who->user_id), false);
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, CartJson(who->user_id, row.cart, row.version).dump());
}

HttpResponse RegionApp::Impl::AddCartItem(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto sku = StringField(*body, "sku", true);
  auto qty = IntField(*body, "quantity", false, 1);
  if (!sku.ok()) return ProblemFromStatus(sku.status());
  if (!qty.ok()) return ProblemFromStatus(qty.status());
  if (auto st = services::ValidateSku(*sku); !st.ok()) {
    return ProblemFromStatus(Unprocessable(std::string(st.message())));
  }
  if (*qty <= 0 || *qty > config.max_line_quantity) {
    return ProblemFromStatus(
        Unprocessable(absl::StrCat("quantity: must be 1..", config.max_line_quantity)));
  }
  auto product = ProductJson(*sku);
  if (absl::IsNotFound(product.status())) {
    return ProblemFromStatus(Unprocessable(absl::StrCat("sku: no product ", *sku)));
  }
  if (!product.ok()) return ProblemFromStatus(product.status());
  return MutateCart(
      *this, *who,
      [&](crdt::Cart& cart) -> CartChange {
        int64_t current = cart.Quantity(*sku);
        if (std::max<int64_t>(current, 0) + *qty > config.max_line_quantity) {
          return Unprocessable(
              absl::StrCat("quantity: at most ", config.max_line_quantity, " per line"));
        }
        if (current <= 0 && static_cast<int>(cart.Lines().size()) >= config.max_cart_lines) {
          return Unprocessable(absl::StrCat("cart: at most ", config.max_cart_lines, " lines"));
        }
        if (current < 0) {
          // Concurrent decrements in two regions left the line below zero, so the customer does not
          // see it: adding to it would leave it hidden. Start the line afresh (remove what this
          // region has seen of it, then add): the customer sees exactly what they added, and
          // changes made elsewhere meanwhile still count.
          return ReplaceLine(cart, *sku, *qty);
        }
        return cart.Add(*sku, *qty);
      },
      /*grows=*/true);
}

HttpResponse RegionApp::Impl::SetCartItem(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  const std::string sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto qty = IntField(*body, "quantity", true);
  if (!qty.ok()) return ProblemFromStatus(qty.status());
  if (*qty < 0 || *qty > config.max_line_quantity) {
    return ProblemFromStatus(
        Unprocessable(absl::StrCat("quantity: must be 0..", config.max_line_quantity)));
  }
  return MutateCart(
      *this, *who,
      [&](crdt::Cart& cart) -> CartChange {
        int64_t current = cart.Quantity(sku);
        if (current <= 0) return absl::NotFoundError(absl::StrCat("no line ", sku, " in the cart"));
        if (*qty == current) return std::nullopt;  // already so: an idempotent PUT writes nothing
        if (*qty == 0) return cart.Remove(sku);
        return ReplaceLine(cart, sku, *qty);
      },
      /*grows=*/*qty > 0);
}

HttpResponse RegionApp::Impl::RemoveCartItem(HttpRequest& req) {
  auto who = Customer(req);
  if (!who.ok()) return ProblemFromStatus(who.status());
  if (auto redirect = ResidencyRedirect(who->residency, req)) return *redirect;
  const std::string sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  return MutateCart(
      *this, *who,
      [&](crdt::Cart& cart) -> CartChange {
        if (cart.Quantity(sku) <= 0) {
          return absl::NotFoundError(absl::StrCat("no line ", sku, " in the cart"));
        }
        return cart.Remove(sku);
      },
      /*grows=*/false);
}

}  // namespace meridian::region
