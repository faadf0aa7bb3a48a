// Users and catalog: registration, login, products, categories, search, inventory reads.

#include <spdlog/spdlog.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "services/domain.h"

namespace meridian::region {

HttpResponse RegionApp::Impl::Register(HttpRequest& req) {
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto email = StringField(*body, "email", true);
  auto password = StringField(*body, "password", true);
  auto name = StringField(*body, "name", false);
  auto residency = StringField(*body, "residency", false, "any");
  for (auto* f : {&email, &password, &name, &residency})
    if (!f->ok()) return ProblemFromStatus(f->status());
  for (absl::Status st :
       {services::ValidateEmail(*email), services::ValidatePassword(*password),
        services::ValidateText("name", *name, 0, 200), services::ValidateResidency(*residency)}) {
    if (!st.ok()) return ProblemFromStatus(Unprocessable(std::string(st.message())));
  }
  if (auto redirect = ResidencyRedirect(*residency, req)) return *redirect;
  std::string user_id = services::UserIdForEmail(*email);
  // The e-mail may be taken in a region that holds none of its data here (an account pinned to
  // another jurisdiction): the peers are asked first. A peer that cannot be asked does not stop
  // a registration (a region must be able to register while another is down); two registrations
  // of one e-mail that way keep their profiles apart (a profile never changes its residency).
  if (AccountElsewhere where = LocateAccount(user_id, ""); where.found) {
    return HttpResponse::Problem(409, "Conflict", "an account with this e-mail already exists");
  } else if (where.busy) {
    return AccountLookupsBusy();  // not asked: registering now could take a used e-mail
  }
  std::string hash = services::HashPassword(*password);
  crdt::HlcTimestamp ts = Now();
  // The profile replicates to the regions its residency allows (the outbox row carries it), as
  // a last-writer record by (HLC, origin).
  Json profile{{"user_id", user_id},    {"email", *email}, {"name", *name},
               {"password_hash", hash}, {"hlc", ts.value}, {"origin", config.replica_id}};
  std::string payload = profile.dump();
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    tx.exec0(
        "INSERT INTO users (user_id, email, name, password_hash, residency, hlc, origin) "
        "VALUES (" +
        tx.quote(user_id) + ", " + tx.quote(*email) + ", " + tx.quote(*name) + ", " +
        tx.quote(hash) + ", " + tx.quote(*residency) + ", " +
        tx.quote(static_cast<int64_t>(ts.value)) + ", " + tx.quote(config.replica_id) + ")");
    tx.exec0("INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" +
             tx.quote(config.replica_id) + ", 'user', " + tx.quote(user_id) + ", " +
             tx.quote_raw(reinterpret_cast<const unsigned char*>(payload.data()), payload.size()) +
             ", " + tx.quote(*residency) + ")");
  });
  if (absl::IsAlreadyExists(st)) {
    return HttpResponse::Problem(409, "Conflict", "an account with this e-mail already exists");
  }
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(
      201, Json{{"user_id", user_id}, {"email", *email}, {"residency", *residency}}.dump());
}

absl::StatusOr<std::optional<RegionApp::Impl::StoredUser>> RegionApp::Impl::FindUser(
    const std::string& user_id) {
  std::optional<StoredUser> user;
  absl::Status st = ShardFor(user_id).Run([&](pqxx::work& tx) {
    pqxx::result r = tx.exec(
        "SELECT password_hash, residency, hlc, origin FROM users WHERE "
        "user_id = " +
        tx.quote(user_id));
    if (!r.empty()) {
      user = StoredUser{r[0][0].as<std::string>(), r[0][1].as<std::string>(),
                        services::AccountStamp(r[0][2].as<int64_t>(), r[0][3].as<int64_t>())};
    }
  });
  if (!st.ok()) return st;
  return user;
}

absl::StatusOr<std::optional<std::string>> RegionApp::Impl::FindBlindAccount(
    const services::BlindAccountQuery& q) {
  std::optional<std::string> residency;
  for (const auto& shard : shards) {
    absl::Status st = shard->Run([&](pqxx::work& tx) {
      // The ids that start with the prefix: every character after it is a hex digit, below 'g'
      // (the primary key's index serves the range in any collation of ASCII).
      pqxx::result r =
          tx.exec("SELECT user_id, residency FROM users WHERE user_id >= " + tx.quote(q.prefix) +
                  " AND user_id < " + tx.quote(q.prefix + "g"));
      for (const auto& row : r) {
        const std::string id = row[0].as<std::string>();
        if (services::SecretsEqual(services::BlindedAccountId(q.key, id), q.blinded)) {
          residency = row[1].as<std::string>();
          break;  // ids are unique
        }
      }
    });
    if (!st.ok()) return st;
    if (residency) break;
  }
  return residency;
}

HttpResponse RegionApp::Impl::Login(HttpRequest& req) {
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto email = StringField(*body, "email", true);
  auto password = StringField(*body, "password", true);
  if (!email.ok()) return ProblemFromStatus(email.status());
  if (!password.ok()) return ProblemFromStatus(password.status());
  std::string user_id = services::UserIdForEmail(*email);
  auto user = FindUser(user_id);
  if (!user.ok()) return ProblemFromStatus(user.status());
  // The same answer for an unknown e-mail and a wrong password.
  const HttpResponse refused =
      HttpResponse::Problem(401, "Unauthorized", "wrong e-mail or password");
  if (!*user) {
    // No row here: the account may be pinned to another jurisdiction (its data never comes
    // here), or made moments ago in another region. The peers say where, and the region that
    // holds it checks the password, so that a redirect tells nothing to someone without it.
    if (password->size() > services::kMaxPasswordBytes) return refused;  // no account's
    AccountElsewhere where = LocateAccount(user_id, *password);
    if (where.busy) return AccountLookupsBusy();
    if (where.found && where.attempts_exhausted) return TooManyLoginAttempts();
    if (where.found && !where.password_ok) return refused;
    if (where.found && !services::ResidencyAllows(where.residency, config.jurisdiction)) {
      return *ResidencyRedirect(where.residency, req);  // 307 to an allowed region, or 403
    }
    if (where.found) {
      HttpResponse r = HttpResponse::Problem(
          503, "Service Unavailable",
          absl::StrCat("this account was made in region ", RegionName(where.region),
                       " and has not reached region ", config.name, " yet; retry in a moment"));
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    if (!where.complete) {
      HttpResponse r = HttpResponse::Problem(
          503, "Service Unavailable",
          absl::StrCat("no account with this e-mail is held in region ", config.name,
                       ", and the regions that might hold it could not all be asked (",
                       where.unanswered, "); retry shortly"));
      r.headers.emplace_back("Retry-After", "2");
      return r;
    }
    // No account anywhere: its failed logins are limited as an account's are (here, where the
    // id is no customer's), so that a 429 does not tell which e-mails have accounts.
    if (!TakeLoginAttempt(user_id)) return TooManyLoginAttempts();
    // And the password is checked against a hash all the same, so that the refusal takes as long
    // as a wrong password's (an unknown e-mail answered in 1 ms, a wrong password in 22-37: the
    // timing told which e-mails have accounts).
    static const std::string kNoAccountHash = services::HashPassword("no account has this");
    (void)services::VerifyPassword(*password, kNoAccountHash);
    return refused;
  }
  // The account is held here: its failed logins count here.
  if (!TakeLoginAttempt(user_id)) return TooManyLoginAttempts();
  if (!services::VerifyPassword(*password, (*user)->password_hash)) return refused;
  ReturnLoginAttempt(user_id);
  const std::string& residency = (*user)->residency;
  if (auto redirect = ResidencyRedirect(residency, req)) return *redirect;
  services::TokenClaims claims{user_id, residency, UnixNowS() + config.token_ttl_s,
                               (*user)->account};
  return HttpResponse::Json(200, Json{{"token", services::IssueToken(claims, config.token_secret)},
                                      {"user_id", user_id},
                                      {"residency", residency},
                                      {"expires_at", claims.expires_unix_s}}
                                     .dump());
}

namespace {

Json ProductRow(const pqxx::row& r) {
  return Json{
      {"sku", r["sku"].as<std::string>()},
      {"name", r["name"].as<std::string>()},
      {"description", r["description"].as<std::string>()},
      {"category", r["category_id"].is_null() ? Json() : Json(r["category_id"].as<std::string>())},
      {"price_cents", r["price_cents"].as<int64_t>()},
      {"currency", r["currency"].as<std::string>()}};
}

constexpr const char* kProductCols = "sku, name, description, category_id, price_cents, currency";
// A product row made for stock that arrived before its catalog write (hlc 0: see ApplyDeltas) is
// not a product yet: no name or price of its own. Customers never see it.
constexpr const char* kRealProduct = "hlc > 0";

absl::StatusOr<int> LimitParam(const HttpRequest& req, const char* name, int def, int max) {
  auto v = req.QueryParam(name);
  if (!v) return def;
  int n = 0;
  if (!ParseInt(*v, &n) || n < 0 || n > max) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": an integer 0..", max));
  }
  return n;
}

}  // namespace

absl::StatusOr<std::pair<uint64_t, std::string>> RegionApp::Impl::LoadProduct(
    const std::string& sku, bool after_write) {
  std::optional<std::pair<uint64_t, std::string>> found;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    pqxx::result r = tx.exec(absl::StrCat("SELECT ", kProductCols,
                                          ", hlc FROM products WHERE sku = ", tx.quote(sku),
                                          " AND ", kRealProduct));
    if (!r.empty()) found.emplace(r[0]["hlc"].as<uint64_t>(), ProductRow(r[0]).dump());
  });
  if (!st.ok()) return st;
  if (!found) return absl::NotFoundError(absl::StrCat("no product ", sku));
  // Written unless Redis holds a newer copy, or a marker of a newer write: a reader that read
  // the row before a write and stores after its deletion cannot put the old product back.
  const std::string version = ProductCopyVersion(found->first);
  const std::string key = "product:" + sku;
  if (!redis->Eval(kStoreProductCopy, {key}, {version, absl::StrCat(version, "|", found->second)})
           .ok() &&
      after_write) {
    // Redis may still hold the copy before this write (an operator's price change was served
    // from it for up to 300 s, while checkouts charged the new price).
    MarkStale({{key, version}});
  }
  return *std::move(found);
}

absl::StatusOr<std::string> RegionApp::Impl::ProductJson(const std::string& sku) {
  std::string key = "product:" + sku;
  // A copy that may be older than the row (storing a write's copy failed) is not read.
  absl::StatusOr<std::optional<std::string>> cached = std::nullopt;
  if (!stale_hot_copies.IsStale(key)) cached = redis->Get(key);
  // A copy is "<version>|<json>"; a marker (a newer write than any copy read so far), the
  // version and '|' alone: read around it.
  constexpr size_t kHead = 21;
  if (cached.ok() && cached->has_value() && (*cached)->size() > kHead &&
      (**cached)[kHead - 1] == '|') {
    cache_hits->Increment();
    return (*cached)->substr(kHead);
  }
  if (!cached.ok()) redis_fallbacks->Increment();
  cache_misses->Increment();
  // Single flight: a burst of misses on one product makes one database read.
  return product_flight.Do(key, [&]() -> absl::StatusOr<std::string> {
    auto loaded = LoadProduct(sku);
    if (!loaded.ok()) return loaded.status();
    return std::move(loaded->second);
  });
}

HttpResponse RegionApp::Impl::GetProduct(HttpRequest& req) {
  const std::string& sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  auto json = ProductJson(sku);
  if (!json.ok()) return ProblemFromStatus(json.status());
  return HttpResponse::Json(200, *json);
}

HttpResponse RegionApp::Impl::ListProducts(HttpRequest& req) {
  auto limit = LimitParam(req, "limit", 20, 100);
  auto offset = LimitParam(req, "offset", 0, 1000000);
  if (!limit.ok()) return ProblemFromStatus(limit.status());
  if (!offset.ok()) return ProblemFromStatus(offset.status());
  auto category = req.QueryParam("category");
  if (category) {
    if (auto st = services::ValidateCategoryId(*category); !st.ok()) return ProblemFromStatus(st);
  }
  Json items = Json::array();
  absl::Status st = global->Run([&](pqxx::work& tx) {
    std::string where = absl::StrCat(" WHERE ", kRealProduct);
    if (category) absl::StrAppend(&where, " AND category_id = ", tx.quote(*category));
    for (const auto& r :
         tx.exec(absl::StrCat("SELECT ", kProductCols, " FROM products", where,
                              " ORDER BY sku LIMIT ", *limit, " OFFSET ", *offset))) {
      items.push_back(ProductRow(r));
    }
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, Json{{"items", items}}.dump());
}

HttpResponse RegionApp::Impl::Search(HttpRequest& req) {
  auto q = req.QueryParam("q");
  if (!q || q->empty())
    return HttpResponse::Problem(400, "Bad Request", "q: a search text is required");
  if (auto st = services::ValidateText("q", *q, 1, 200); !st.ok()) return ProblemFromStatus(st);
  auto limit = LimitParam(req, "limit", 20, 100);
  if (!limit.ok()) return ProblemFromStatus(limit.status());
  Json items = Json::array();
  absl::Status st = global->Run([&](pqxx::work& tx) {
    // websearch_to_tsquery accepts any user text without syntax errors, but more than 32
    // operators waiting for their operand ("-" runs, "-&", "-(") overflow its parser's stack:
    // PostgreSQL's XX000 "tsquery stack too small", the text's fault and not the region's. The
    // text is parsed on its own first so that only that statement's failure is taken for it.
    std::string parsed;
    try {
      parsed = tx.exec1("SELECT websearch_to_tsquery('english', " + tx.quote(*q) + ")::text")[0]
                   .as<std::string>();
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != "XX000") throw;
      throw AbortTx{absl::InvalidArgumentError(
          "q: more than 32 search operators (such as '-') in a row; PostgreSQL cannot run it")};
    }
    const std::string query = tx.quote(parsed) + "::tsquery";
    for (const auto& r : tx.exec(absl::StrCat(
             "SELECT ", kProductCols, ", ts_rank(search, ", query, ") AS rank FROM products WHERE ",
             kRealProduct, " AND search @@ ", query, " ORDER BY rank DESC, sku LIMIT ", *limit))) {
      Json p = ProductRow(r);
      p["rank"] = r["rank"].as<double>();
      items.push_back(std::move(p));
    }
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, Json{{"items", items}}.dump());
}

HttpResponse RegionApp::Impl::PutCategory(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  const std::string& id = req.params["id"];
  if (auto st = services::ValidateCategoryId(id); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto name = StringField(*body, "name", true);
  if (!name.ok()) return ProblemFromStatus(name.status());
  if (auto st = services::ValidateText("name", *name, 1, 200); !st.ok()) {
    return ProblemFromStatus(Unprocessable(std::string(st.message())));
  }
  absl::Status st = global->Run([&](pqxx::work& tx) {
    tx.exec0("INSERT INTO categories (id, name) VALUES (" + tx.quote(id) + ", " + tx.quote(*name) +
             ") ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name");
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, Json{{"id", id}, {"name", *name}}.dump());
}

HttpResponse RegionApp::Impl::PutProduct(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  const std::string& sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto name = StringField(*body, "name", true);
  auto description = StringField(*body, "description", false);
  auto category = StringField(*body, "category", false);
  auto currency = StringField(*body, "currency", false, "USD");
  auto price = IntField(*body, "price_cents", true);
  for (auto* f : {&name, &description, &category, &currency})
    if (!f->ok()) return ProblemFromStatus(f->status());
  if (!price.ok()) return ProblemFromStatus(price.status());
  for (absl::Status st : {services::ValidateText("name", *name, 1, 200),
                          services::ValidateText("description", *description, 0, 4000),
                          services::ValidateCurrency(*currency)}) {
    if (!st.ok()) return ProblemFromStatus(Unprocessable(std::string(st.message())));
  }
  if (*price < 0 || *price > 100'000'000'00) {
    return ProblemFromStatus(Unprocessable("price_cents: must be 0..10000000000"));
  }
  if (!category->empty()) {
    if (auto st = services::ValidateCategoryId(*category); !st.ok()) {
      return ProblemFromStatus(Unprocessable(std::string(st.message())));
    }
  }
  bool created = false;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    if (!category->empty() &&
        tx.exec("SELECT 1 FROM categories WHERE id = " + tx.quote(*category)).empty()) {
      throw AbortTx{Unprocessable(absl::StrCat("category: no category ", *category))};
    }
    // After the write it replaces, whoever made it: a peer's from a clock ahead of ours would
    // otherwise keep the row, and this write be answered 200 with the old values and lost.
    pqxx::result row =
        tx.exec("SELECT hlc FROM products WHERE sku = " + tx.quote(sku) + " FOR UPDATE");
    const int64_t seen = row.empty() ? 0 : std::max<int64_t>(0, row[0][0].as<int64_t>());
    auto after = NowAfter(static_cast<uint64_t>(seen));
    if (!after.ok()) {
      throw AbortTx{absl::FailedPreconditionError(
          absl::StrCat("product ", sku, ": ", after.status().message()))};
    }
    const crdt::HlcTimestamp ts = *after;
    std::string cat = category->empty() ? "NULL" : tx.quote(*category);
    // Last writer by HLC wins, also against a concurrent replicated write (issue 4).
    pqxx::result r = tx.exec(
        "INSERT INTO products (sku, name, description, category_id, price_cents, currency, hlc, "
        "origin) VALUES (" +
        tx.quote(sku) + ", " + tx.quote(*name) + ", " + tx.quote(*description) + ", " + cat + ", " +
        tx.quote(*price) + ", " + tx.quote(*currency) + ", " +
        tx.quote(static_cast<int64_t>(ts.value)) + ", " + tx.quote(config.replica_id) +
        ") ON CONFLICT (sku) DO UPDATE SET name = EXCLUDED.name, description = "
        "EXCLUDED.description, category_id = EXCLUDED.category_id, price_cents = "
        "EXCLUDED.price_cents, currency = EXCLUDED.currency, hlc = EXCLUDED.hlc, origin = "
        "EXCLUDED.origin, updated_at = now() WHERE (products.hlc, products.origin) < "
        "(EXCLUDED.hlc, EXCLUDED.origin) RETURNING (xmax = 0) AS created");
    created = !r.empty() && r[0][0].as<bool>();
    Json delta{{"sku", sku},
               {"name", *name},
               {"description", *description},
               {"category", *category},
               {"price_cents", *price},
               {"currency", *currency},
               {"hlc", ts.value},
               {"origin", config.replica_id}};
    tx.exec0("INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" +
             tx.quote(config.replica_id) + ", 'product', " + tx.quote(sku) + ", " +
             tx.quote_raw(reinterpret_cast<const unsigned char*>(delta.dump().data()),
                          delta.dump().size()) +
             ", 'any')");
  });
  if (!st.ok()) return ProblemFromStatus(st);
  // The answer is the product as this write left it (the cache, or a read in flight that began
  // before the write, could still give it as it was), and the same goes to the cache.
  auto json = LoadProduct(sku, /*after_write=*/true);
  if (!json.ok()) return ProblemFromStatus(json.status());
  return HttpResponse::Json(created ? 201 : 200, json->second);
}

namespace {

// Loads the SKU's inventory document (FOR UPDATE when `lock`), or an empty one.
crdt::Inventory LoadInventory(pqxx::work& tx, const std::string& sku, crdt::ReplicaId replica,
                              bool lock) {
  pqxx::result r = tx.exec((lock ? DocumentLockSql(tx, "inventory", sku) : std::string()) +
                           "SELECT state FROM inventory WHERE sku = " + tx.quote(sku) +
                           (lock ? " FOR UPDATE" : ""));
  if (r.empty()) return crdt::Inventory(replica);
  pqxx::binarystring bytes(r[0][0]);
  auto inv = crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()), replica);
  if (!inv.ok()) {
    throw AbortTx{absl::DataLossError(
        absl::StrCat("inventory of ", sku, " is unreadable: ", inv.status().message()))};
  }
  return *std::move(inv);
}

}  // namespace

// Writes the SKU's inventory document and its delta to the outbox, in `tx`.
std::string SaveInventorySql(pqxx::work& tx, const std::string& sku, const crdt::Inventory& state,
                             const crdt::Inventory& delta, crdt::ReplicaId origin) {
  std::string bytes = crdt::Encode(state);
  return "INSERT INTO inventory (sku, state) VALUES (" + tx.quote(sku) + ", " +
         tx.quote_raw(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size()) +
         ") ON CONFLICT (sku) DO UPDATE SET state = EXCLUDED.state, updated_at = now();" +
         InventoryOutboxSql(tx, sku, delta, origin);
}

std::string InventoryOutboxSql(pqxx::work& tx, const std::string& sku, const crdt::Inventory& delta,
                               crdt::ReplicaId origin) {
  std::string d = crdt::Encode(delta);
  return "INSERT INTO outbox (origin, kind, key, payload, residency) VALUES (" + tx.quote(origin) +
         ", 'inventory', " + tx.quote(sku) + ", " +
         tx.quote_raw(reinterpret_cast<const unsigned char*>(d.data()), d.size()) + ", 'any');";
}

void SaveInventory(pqxx::work& tx, const std::string& sku, const crdt::Inventory& state,
                   const crdt::Inventory& delta, crdt::ReplicaId origin) {
  // Both statements in one round trip (the simple query protocol runs them in order).
  tx.exec(SaveInventorySql(tx, sku, state, delta, origin));
}

crdt::Inventory LoadInventoryForUpdate(pqxx::work& tx, const std::string& sku,
                                       crdt::ReplicaId replica) {
  return LoadInventory(tx, sku, replica, true);
}

HttpResponse RegionApp::Impl::Restock(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  const std::string& sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  auto units = IntField(*body, "units", true);
  if (!units.ok()) return ProblemFromStatus(units.status());
  if (*units <= 0 || *units > 1'000'000'000) {
    return ProblemFromStatus(Unprocessable("units: must be 1..1000000000"));
  }
  auto key = IdempotencyKey(req);
  if (!key.ok()) return ProblemFromStatus(key.status());
  const std::string& idem = *key;
  int64_t available = 0, rights = 0;
  uint64_t debt_paid = 0;
  bool replay = false;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    replay = false;
    debt_paid = 0;
    if (tx.exec("SELECT 1 FROM products WHERE sku = " + tx.quote(sku)).empty()) {
      throw AbortTx{absl::NotFoundError(absl::StrCat("no product ", sku))};
    }
    RefuseLocalWriteIfHeld();
    crdt::Inventory inv = LoadInventory(tx, sku, config.replica_id, true);
    if (!idem.empty()) {
      // After the stock row's lock: a twin with the key has committed, or has yet to begin.
      pqxx::result r = tx.exec(
          "INSERT INTO restock_requests (idempotency_key, sku, units) VALUES (" + tx.quote(idem) +
          ", " + tx.quote(sku) + ", " + tx.quote(*units) +
          ") ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key"
          " RETURNING sku, units, (xmax = 0) AS created");
      replay = !r[0][2].as<bool>();
      if (replay && (r[0][0].as<std::string>() != sku || r[0][1].as<int64_t>() != *units)) {
        throw AbortTx{Unprocessable(absl::StrCat(
            "Idempotency-Key: already used for a restock of ", r[0][1].as<int64_t>(), " units of ",
            r[0][0].as<std::string>(), "; a new restock needs a new key"))};
      }
    }
    if (!replay) {
      auto delta = inv.Restock(sku, static_cast<uint64_t>(*units));
      if (!delta.ok()) throw AbortTx{Unprocessable(std::string(delta.status().message()))};
      debt_paid = PayRightsDebt(tx, sku, inv, *delta);
      SaveInventory(tx, sku, inv, *delta, config.replica_id);
    }
    available = inv.Available(sku);
    rights = inv.Rights(sku, config.replica_id);
  });
  if (absl::IsUnknown(st)) {
    return ProblemFromStatus(absl::UnavailableError(
        absl::StrCat("the database connection failed while committing the restock of ", sku,
                     ": it may or may not have been applied; ",
                     idem.empty() ? "read GET /v1/inventory/" + sku +
                                        " before restocking again (a restock "
                                        "with an Idempotency-Key can be retried)"
                                  : absl::StrCat("retry with the same Idempotency-Key at this "
                                                 "region (",
                                                 config.name,
                                                 ", its own URL): a key is known only to "
                                                 "the region that took it"))));
  }
  if (!st.ok()) return ProblemFromStatus(st);
  if (!replay) rights_signals.StockChanged();  // waiting checkouts may now have the units
  Json out{{"sku", sku}, {"available", available}, {"local_rights", rights}};
  if (replay) out["idempotent_replay"] = true;
  // Units of the restock that paid what an earlier short write-off owed (PayRightsDebt).
  if (debt_paid > 0) out["rights_debt_paid"] = debt_paid;
  return HttpResponse::Json(200, out.dump());
}

HttpResponse RegionApp::Impl::GetInventory(HttpRequest& req) {
  const std::string& sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  Json out;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    crdt::Inventory inv = LoadInventory(tx, sku, config.replica_id, false);
    Json rights = Json::object();
    if (const crdt::BoundedCounter* c = inv.Find(sku)) {
      for (crdt::ReplicaId r : c->Replicas()) rights[std::to_string(r)] = c->Rights(r);
    }
    out = Json{{"sku", sku}, {"available", inv.Available(sku)}, {"rights_by_replica", rights}};
  });
  if (!st.ok()) return ProblemFromStatus(st);
  return HttpResponse::Json(200, out.dump());
}

}  // namespace meridian::region
