#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config_files.h"
#include "common/strings.h"
#include "region/app_impl.h"
#include "region/control_service.h"
#include "region/internal_service.h"
#include "region/migrations.h"
#include "services/domain.h"

namespace meridian::region {

// ---------------------------------------------------------------------------------------------
// Helpers shared by the handlers.

std::string DocumentLockSql(pqxx::work& tx, std::string_view kind, const std::string& key,
                            bool shared) {
  return std::string("SELECT pg_advisory_xact_lock") + (shared ? "_shared" : "") +
         "(hashtextextended(" + tx.quote(absl::StrCat(AbslView(kind), ":", key)) + ", 0));";
}

crdt::ReplicaId CartActor(uint32_t replica_id, std::string_view stream_id) {
  uint32_t h = 2166136261u;  // FNV-1a: stable across builds and processes
  for (unsigned char ch : stream_id) h = (h ^ ch) * 16777619u;
  uint32_t epoch = h & 0xffffff;
  if (epoch == 0) epoch = 1;
  return (epoch << 8) | (replica_id & 0xff);
}

absl::StatusOr<std::string> ReadStreamId(PgPool& pool) {
  std::string id;
  absl::Status st = pool.Run([&](pqxx::work& tx) {
    pqxx::result r = tx.exec("SELECT id FROM outbox_stream LIMIT 1");
    if (!r.empty()) id = r[0][0].as<std::string>();
  });
  if (!st.ok()) return st;
  if (id.empty()) return absl::FailedPreconditionError(pool.name() + ": outbox_stream is empty");
  return id;
}

namespace {

// Shard `index` of `count` (postgres.shards): recorded in the database at its first start, and
// the same at every start after (migration 19, shard_placement). FailedPrecondition naming both
// when the list changed: users are placed by a jump hash over it, so a reordered, shortened or
// lengthened list puts them on shards that hold none of their rows.
absl::Status CheckShardPlacement(PgPool& shard, size_t index, size_t count) {
  int64_t was_index = 0, was_count = 0;
  std::string since;
  absl::Status st = shard.Run([&](pqxx::work& tx) {
    pqxx::row r = tx.exec1(
        "INSERT INTO shard_placement (shard_index, shard_count) VALUES (" +
        tx.quote(static_cast<int64_t>(index)) + ", " + tx.quote(static_cast<int64_t>(count)) +
        ") ON CONFLICT (only_row) DO UPDATE SET only_row = true RETURNING shard_index, "
        "shard_count, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')");
    was_index = r[0].as<int64_t>();
    was_count = r[1].as<int64_t>();
    since = r[2].as<std::string>();
  });
  if (!st.ok()) return st;
  if (was_index == static_cast<int64_t>(index) && was_count == static_cast<int64_t>(count)) {
    return absl::OkStatus();
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "postgres.shards[", index, "] (", shard.name(), ") is the database that was shard ",
      was_index, " of ", was_count, " (since ", since, " UTC), and the list now has ", count,
      ": a user's shard is the jump hash of the user id over the list's order and length, so "
      "changing it puts customers on shards that hold none of their rows (there is no "
      "resharding); restore the list as it was"));
}

struct PersistedHold {
  bool new_databases = false;
  std::vector<std::string> stock_awaits;
};

// Reads the write hold a previous run of the region server left (table write_hold); with
// `mark_new_databases` (databases were made at this start) it first records that they were.
absl::StatusOr<PersistedHold> LoadWriteHold(PgPool& global, bool mark_new_databases) {
  PersistedHold h;
  absl::Status st = global.Run([&](pqxx::work& tx) {
    h = PersistedHold{};
    if (mark_new_databases) tx.exec0("UPDATE write_hold SET new_databases = true");
    h.new_databases = tx.exec1("SELECT new_databases FROM write_hold")[0].as<bool>();
    for (const auto& row : tx.exec("SELECT unnest(stock_awaits) FROM write_hold")) {
      h.stock_awaits.push_back(row[0].as<std::string>());
    }
  });
  if (!st.ok()) return st;
  return h;
}

}  // namespace

absl::Status RegionApp::Impl::SaveWriteHold(bool new_databases,
                                            const std::vector<std::string>& stock_awaits) {
  return global->Run([&](pqxx::work& tx) {
    std::string list;
    for (const std::string& peer : stock_awaits) {
      absl::StrAppend(&list, list.empty() ? "" : ",", tx.quote(peer));
    }
    tx.exec0(
        absl::StrCat("UPDATE write_hold SET new_databases = ", new_databases ? "true" : "false",
                     ", stock_awaits = ARRAY[", list, "]::text[]"));
  });
}

crdt::ReplicaId RegionApp::Impl::CartActorFor(std::string_view user_id) const {
  return cart_actors[services::ShardForUser(user_id, static_cast<int32_t>(shards.size()))];
}

int64_t UnixNowS() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t UnixNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string RandomId(std::string_view prefix) {
  unsigned char b[12];
  services::RandomBytes(b, sizeof b);
  static const char* kHex = "0123456789abcdef";
  std::string out(prefix);
  for (unsigned char c : b) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

absl::Status Unprocessable(std::string message) {
  // FailedPrecondition is 409 (conflicts, stock); OutOfRange carries 422 here.
  return absl::OutOfRangeError(std::move(message));
}

namespace {

struct HttpStatus {
  int code;
  const char* title;
};

// The HTTP status ProblemFromStatus answers a status code with: a 4xx or 503, else a 500.
HttpStatus HttpStatusOf(absl::StatusCode c) {
  switch (c) {
    case absl::StatusCode::kInvalidArgument:
      return {400, "Bad Request"};
    case absl::StatusCode::kUnauthenticated:
      return {401, "Unauthorized"};
    case absl::StatusCode::kPermissionDenied:
      return {403, "Forbidden"};
    case absl::StatusCode::kNotFound:
      return {404, "Not Found"};
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kAborted:
      return {409, "Conflict"};
    case absl::StatusCode::kOutOfRange:
      return {422, "Unprocessable Entity"};
    case absl::StatusCode::kResourceExhausted:
      return {429, "Too Many Requests"};
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    // A COMMIT whose answer was lost with the connection (PgPool: in doubt): the request may
    // have been carried out; the answer says so (PublicDetail), not "internal error".
    case absl::StatusCode::kUnknown:
      // Overload (no free database connection) or a broken database connection: both pass.
      return {503, "Service Unavailable"};
    default:
      return {500, "Internal Server Error"};
  }
}

}  // namespace

std::string PublicDetail(const absl::Status& s) {
  if (HttpStatusOf(s.code()).code == 500) {
    spdlog::error("event=internal_error status=\"{}\"", s.ToString());
    return "internal error";
  }
  if (!IsDatabaseError(s)) return std::string(s.message());
  // The database's own text names hosts, tables, constraints and values: logged, not sent.
  spdlog::warn("event=database_error status=\"{}\"", s.ToString());
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      return "a database of this region is unavailable; retry shortly";
    case absl::StatusCode::kUnknown:
      return "the database connection failed while committing: the change may or may not have "
             "been made; read it back before you retry";
    case absl::StatusCode::kInvalidArgument:
      return "the database refused a value of the request";
    default:
      return "the request conflicts with the data as it is now (changed meanwhile); retry";
  }
}

HttpResponse ProblemFromStatus(const absl::Status& s) {
  const HttpStatus status = HttpStatusOf(s.code());
  HttpResponse r = HttpResponse::Problem(status.code, status.title, PublicDetail(s));
  if (status.code == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

namespace {

// A SAX pass over the body before any DOM is built: it stops at the first container nested deeper
// than kJsonDepthMax (a body of a million '[' must not become a million-level DOM) and at the
// first member name repeated within one object (nlohmann would keep the last one silently, so
// two readers of the same body could disagree about it).
class JsonShapeCheck : public nlohmann::json_sax<Json> {
 public:
  // The reason the body was refused; empty while it is acceptable.
  [[nodiscard]] const std::string& problem() const { return problem_; }

  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    if (!Open()) return false;
    keys_.emplace_back();
    return true;
  }
  bool key(string_t& k) override {
    if (!keys_.back().insert(k).second) {
      constexpr size_t kShownBytesMax = 64;
      problem_ = absl::StrCat("request body: duplicate member \"", k.substr(0, kShownBytesMax),
                              k.size() > kShownBytesMax ? "...\"" : "\"");
      return false;
    }
    return true;
  }
  bool end_object() override {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) override { return Open(); }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    problem_ = "request body: malformed JSON";
    return false;
  }

 private:
  bool Open() {
    if (++depth_ > kJsonDepthMax) {
      problem_ = absl::StrCat("request body: JSON nested deeper than ", kJsonDepthMax, " levels");
      return false;
    }
    return true;
  }

  size_t depth_ = 0;
  std::vector<std::set<std::string>> keys_;  // one set per open object, innermost last
  std::string problem_;
};

}  // namespace

absl::StatusOr<std::string> IdempotencyKey(const HttpRequest& req) {
  auto h = req.Header("idempotency-key");
  if (!h) return std::string();
  std::string key(*h);
  if (auto st = services::ValidateIdempotencyKey(key); !st.ok()) return st;
  return key;
}

absl::StatusOr<Json> ParseBody(const HttpRequest& req) {
  if (req.body.empty())
    return absl::InvalidArgumentError("request body: a JSON object is required");
  // nlohmann's lexer ends the input at a NUL byte, which JSON text never holds: without this,
  // "{...}<NUL>anything" was taken as the object (common::ParseJsonText).
  if (req.body.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("request body: malformed JSON (a NUL byte)");
  }
  JsonShapeCheck check;
  if (!Json::sax_parse(req.body, &check)) {
    return absl::InvalidArgumentError(check.problem().empty() ? "request body: malformed JSON"
                                                              : check.problem());
  }
  Json j = Json::parse(req.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("request body: malformed JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("request body: must be a JSON object");
  return j;
}

absl::StatusOr<std::string> StringField(const Json& j, const char* name, bool required,
                                        std::string def) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (required) return Unprocessable(absl::StrCat(name, ": required"));
    return def;
  }
  if (!it->is_string()) return Unprocessable(absl::StrCat(name, ": must be a string"));
  return it->get<std::string>();
}

absl::StatusOr<int64_t> IntField(const Json& j, const char* name, bool required, int64_t def) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (required) return Unprocessable(absl::StrCat(name, ": required"));
    return def;
  }
  // An unsigned value above INT64_MAX would come back negative from get<int64_t>().
  if (!it->is_number_integer() ||
      (it->is_number_unsigned() &&
       it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))) {
    return Unprocessable(absl::StrCat(name, ": must be an integer from -2^63 to 2^63-1"));
  }
  return it->get<int64_t>();
}

absl::StatusOr<std::string> SingleFlight::Do(
    const std::string& key, const std::function<absl::StatusOr<std::string>()>& load) {
  std::shared_future<absl::StatusOr<std::string>> f;
  std::promise<absl::StatusOr<std::string>> p;
  bool leader = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = inflight_.find(key);
    if (it != inflight_.end()) {
      f = it->second;
    } else {
      f = p.get_future().share();
      inflight_.emplace(key, f);
      leader = true;
    }
  }
  if (!leader) return f.get();
  absl::StatusOr<std::string> v = load();
  p.set_value(v);
  std::lock_guard<std::mutex> lock(mu_);
  inflight_.erase(key);
  return v;
}

// ---------------------------------------------------------------------------------------------

PgPool& RegionApp::Impl::ShardFor(std::string_view user_id) {
  return *shards[services::ShardForUser(user_id, static_cast<int32_t>(shards.size()))];
}

absl::Status RegionApp::Impl::LocalWriteHold(bool takes_stock) {
  // One look at the full hold: SetLocalWriteHold puts a hold on before it takes another off.
  const bool held = local_writes_held.load();
  if (!held && takes_stock && stock_held.load()) {
    std::string awaited;
    {
      std::lock_guard<std::mutex> l(hold_mu);
      awaited = absl::StrJoin(stock_awaits, ", ");
    }
    return absl::UnavailableError(absl::StrCat(
        "this region's databases are new, and its replicator has not heard from ", awaited,
        ", which may hold its last stock changes from before: stock changes (checkouts, restocks, "
        "rights moves) wait until it has; cart changes go through"));
  }
  if (!held) return absl::OkStatus();
  std::string peers;
  {
    std::lock_guard<std::mutex> l(hold_mu);
    peers = hold_peers;
  }
  if (peers.empty() && held_since_start.load()) {
    return absl::UnavailableError(
        "this region's databases are new: until its replicator has heard from its peers whether "
        "this region was rebuilt or restored, cart, stock and order changes wait; retry shortly");
  }
  return absl::UnavailableError(absl::StrCat(
      "this region's databases were rebuilt or restored, and it is taking its peers' state back "
      "(from ",
      peers.empty() ? "its peers" : peers,
      "): cart, stock and order changes wait until it is in; retry shortly"));
}

void RegionApp::Impl::RefuseLocalWriteIfHeld(bool takes_stock) {
  if (absl::Status held = LocalWriteHold(takes_stock); !held.ok()) throw AbortTx{held};
}

crdt::HlcTimestamp RegionApp::Impl::Now() {
  std::lock_guard<std::mutex> lock(hlc_mu);
  return hlc.Now(static_cast<uint64_t>(UnixNowMs()));
}

absl::StatusOr<crdt::HlcTimestamp> RegionApp::Impl::NowAfter(uint64_t seen) {
  const crdt::HlcTimestamp remote{seen};
  const int64_t now_ms = UnixNowMs();
  if (remote.physical_ms() > static_cast<uint64_t>(now_ms + kMaxHlcAheadMs)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "its last write is timestamped ", remote.physical_ms() - static_cast<uint64_t>(now_ms),
        " ms ahead of this region's clock (at most ", kMaxHlcAheadMs,
        " ms are taken): this write would lose to it; check the regions' clocks"));
  }
  std::lock_guard<std::mutex> lock(hlc_mu);
  return hlc.Observe(remote, static_cast<uint64_t>(now_ms));  // past `seen` and everything before
}

absl::StatusOr<services::TokenClaims> RegionApp::Impl::Customer(const HttpRequest& req) {
  auto h = req.Header("authorization");
  std::optional<std::string_view> bearer = h ? common::BearerToken(*h) : std::nullopt;
  if (!bearer) {
    return absl::UnauthenticatedError("missing bearer token (Authorization: Bearer <token>)");
  }
  auto claims = services::VerifyToken(*bearer, config.token_secret, UnixNowS());
  // A token for a residency this region may not hold is only redirected, and reads nothing here.
  if (!claims.ok() || !services::ResidencyAllows(claims->residency, config.jurisdiction)) {
    return claims;
  }
  auto here = AccountHere(claims->user_id);
  if (!here.ok()) return here.status();
  if (*here && **here != claims->account) {
    return absl::UnauthenticatedError(
        "this token is of another account with this e-mail than the one this region holds (the "
        "e-mail was registered again while the regions could not see each other); log in here");
  }
  return claims;
}

absl::StatusOr<std::optional<std::string>> RegionApp::Impl::AccountHere(
    const std::string& user_id) {
  const auto now = std::chrono::steady_clock::now();
  uint64_t forgotten = 0;
  {
    std::lock_guard<std::mutex> lock(accounts_mu);
    auto it = accounts.find(user_id);
    if (it != accounts.end() && now - it->second.second < kAccountCacheTtl) return it->second.first;
    forgotten = accounts_forgotten;
  }
  auto user = FindUser(user_id);
  if (!user.ok()) return user.status();
  if (!*user) return std::optional<std::string>();  // not cached: it may arrive any moment
  std::lock_guard<std::mutex> lock(accounts_mu);
  // A profile written while we read (ForgetAccount since): what we read may be the one it
  // replaced, not to be cached.
  if (accounts_forgotten != forgotten) return std::optional<std::string>((*user)->account);
  if (accounts.size() >= kAccountCacheMax) accounts.clear();
  accounts[user_id] = {(*user)->account, now};
  return std::optional<std::string>((*user)->account);
}

void RegionApp::Impl::ForgetAccount(const std::string& user_id) {
  std::lock_guard<std::mutex> lock(accounts_mu);
  accounts.erase(user_id);
  ++accounts_forgotten;
}

absl::Status RegionApp::Impl::Operator(const HttpRequest& req) {
  auto h = req.Header("authorization");
  std::optional<std::string_view> bearer = h ? common::BearerToken(*h) : std::nullopt;
  if (!bearer) {
    return absl::UnauthenticatedError("operator token required");
  }
  if (!services::SecretsEqual(*bearer, config.operator_token)) {
    return absl::PermissionDeniedError("not an operator token");
  }
  return absl::OkStatus();
}

std::optional<HttpResponse> RegionApp::Impl::ResidencyRedirect(std::string_view residency,
                                                               const HttpRequest& req) {
  if (services::ResidencyAllows(residency, config.jurisdiction)) return std::nullopt;
  for (const auto& peer : config.peers) {
    if (services::ResidencyAllows(residency, peer.jurisdiction)) {
      HttpResponse r =
          HttpResponse::Problem(307, "Temporary Redirect",
                                absl::StrCat("this customer's data is pinned to ",
                                             AbslView(residency), "; use region ", peer.name));
      // Same path and query at the allowed region, so the client repeats the same request there.
      // From the parsed path and query, not the raw target: an absolute-form target
      // ("GET http://host/v1/cart") would otherwise be appended whole after the peer's base URL.
      std::string base = peer.public_url;
      while (!base.empty() && base.back() == '/') base.pop_back();
      std::string location = base + req.path;
      if (!req.query.empty()) absl::StrAppend(&location, "?", req.query);
      r.headers.emplace_back("Location", std::move(location));
      return r;
    }
  }
  return HttpResponse::Problem(
      403, "Forbidden",
      absl::StrCat("data pinned to ", AbslView(residency), " may not be served by region ",
                   config.name, " (", config.jurisdiction,
                   ") and no allowed region is configured"));
}

bool RegionApp::Impl::TakeBucketToken(const std::string& key, double rate_per_s, double burst,
                                      double cost) {
  int64_t now = UnixNowMs();
  auto taken = redis->TakeToken(key, rate_per_s, burst, now, cost);
  if (taken.ok()) return *taken;
  // Redis down: keep limiting, per process.
  redis_fallbacks->Increment();
  std::lock_guard<std::mutex> lock(local_buckets_mu);
  auto found = local_buckets.find(key);
  if (found == local_buckets.end()) {
    if (cost < 0) return true;  // a full bucket: nothing to give back
    if (local_buckets.size() > 100000) local_buckets.clear();
    found = local_buckets.try_emplace(key, burst, now).first;
  }
  auto& [tokens, ts] = found->second;
  tokens = std::min(burst, tokens + static_cast<double>(now - ts) * rate_per_s / 1000.0);
  ts = now;
  if (cost < 0) {
    tokens = std::min(burst, tokens - cost);
    return true;
  }
  if (tokens < 1) return false;
  tokens -= cost;
  return true;
}

bool RegionApp::Impl::RateLimit(const std::string& client) {
  return TakeBucketToken("rl:" + client, config.rate_limit_per_s, config.rate_limit_burst);
}

bool RegionApp::Impl::TakeLoginAttempt(const std::string& user_id) {
  if (config.login_attempts_per_account == 0) return true;
  if (TakeBucketToken("login:" + user_id, 1.0 / config.login_attempt_refill_s,
                      config.login_attempts_per_account)) {
    return true;
  }
  login_attempts_refused->Increment();
  return false;
}

void RegionApp::Impl::ReturnLoginAttempt(const std::string& user_id) {
  if (config.login_attempts_per_account == 0) return;
  (void)TakeBucketToken("login:" + user_id, 1.0 / config.login_attempt_refill_s,
                        config.login_attempts_per_account, -1);
}

HttpResponse RegionApp::Impl::TooManyLoginAttempts() const {
  HttpResponse r = HttpResponse::Problem(
      429, "Too Many Requests",
      absl::StrCat("too many login attempts for this e-mail; one more is allowed every ",
                   config.login_attempt_refill_s, " s"));
  r.headers.emplace_back("Retry-After", std::to_string(config.login_attempt_refill_s));
  return r;
}

void RegionApp::Impl::SetupMetrics() {
  using namespace prometheus;  // NOLINT: metric builders read better unqualified
  latency = &BuildHistogram()
                 .Name("meridian_http_request_duration_seconds")
                 .Help("HTTP request latency by route")
                 .Register(*registry);
  requests = &BuildCounter()
                  .Name("meridian_http_requests_total")
                  .Help("HTTP requests by route and status")
                  .Register(*registry);
  auto& cache = BuildCounter()
                    .Name("meridian_catalog_cache_total")
                    .Help("Catalog cache lookups by result")
                    .Register(*registry);
  cache_hits = &cache.Add({{"result", "hit"}});
  cache_misses = &cache.Add({{"result", "miss"}});
  redis_fallbacks = &BuildCounter()
                         .Name("meridian_redis_fallbacks_total")
                         .Help("Operations served without Redis because it failed")
                         .Register(*registry)
                         .Add({});
  stale_hot_cart_gauge = &BuildGauge()
                              .Name("meridian_redis_stale_hot_carts")
                              .Help(
                                  "Carts whose Redis copy may be stale (a write to Redis "
                                  "failed): read from PostgreSQL until the copy is deleted")
                              .Register(*registry)
                              .Add({});
  local_writes_held_gauge =
      &BuildGauge()
           .Name("meridian_local_writes_held")
           .Help(
               "1 while this region's cart and stock changes answer 503: its databases are new "
               "or were rebuilt, and its replicator has not yet heard from the peers or taken "
               "their state back")
           .Register(*registry)
           .Add({});
  stock_writes_held_gauge =
      &BuildGauge()
           .Name("meridian_stock_writes_held")
           .Help(
               "1 while this region's stock changes (checkouts, restocks, rights moves) answer "
               "503: it started with new databases and was released without hearing a peer that "
               "may hold its last stock changes from before")
           .Register(*registry)
           .Add({});
  rate_limited = &BuildCounter()
                      .Name("meridian_rate_limited_total")
                      .Help("Requests refused by the rate limiter")
                      .Register(*registry)
                      .Add({});
  login_attempts_refused = &BuildCounter()
                                .Name("meridian_login_attempts_refused_total")
                                .Help(
                                    "Logins refused unchecked: the account's attempts were used "
                                    "up (limits.login_attempts_per_account)")
                                .Register(*registry)
                                .Add({});
  pool_in_use = &BuildGauge()
                     .Name("meridian_pg_pool_in_use")
                     .Help("PostgreSQL connections in use per pool")
                     .Register(*registry);
  outbox_depth = &BuildGauge()
                      .Name("meridian_outbox_depth")
                      .Help("Rows in the outbox per database (shipped by the replicator)")
                      .Register(*registry);
  auto& notes = BuildCounter()
                    .Name("meridian_notifications_total")
                    .Help("Notification deliveries by result")
                    .Register(*registry);
  notifications_sent = &notes.Add({{"result", "sent"}});
  notifications_failed = &notes.Add({{"result", "failed"}});
  notifications_dead = &notes.Add({{"result", "dead_letter"}});
  notifications_oldest_due =
      &BuildGauge()
           .Name("meridian_notifications_oldest_due_seconds")
           .Help("How long the oldest notification due for sending has waited, per shard (0: none)")
           .Register(*registry);
  replication_rejected = &BuildCounter()
                              .Name("meridian_replication_rejected_frames_total")
                              .Help("Peer delta batches refused (malformed, residency, origin)")
                              .Register(*registry)
                              .Add({});
  auto& stale = BuildCounter()
                    .Name("meridian_stale_epoch_rejected_total")
                    .Help(
                        "Order changes refused for a stale lease epoch: this region's own fenced "
                        "writes, and peers' events superseded by a newer owner")
                    .Register(*registry);
  stale_local_writes = &stale.Add({{"source", "local_write"}});
  stale_peer_events = &stale.Add({{"source", "peer_event"}});
  forwards = &BuildCounter()
                  .Name("meridian_order_forwards_total")
                  .Help("Order changes forwarded to the order's owner region, by result")
                  .Register(*registry);
  account_lookups =
      &BuildCounter()
           .Name("meridian_account_lookups_total")
           .Help(
               "Accounts this region holds no row of, looked up at the peer regions (a login "
               "miss, a registration), by result: elsewhere, none, incomplete (not found and a "
               "peer unanswered), failed (the replicator unreachable), busy (not asked: "
               "limits.account_lookups were in flight; answered 503)")
           .Register(*registry);
  account_questions =
      &BuildCounter()
           .Name("meridian_account_questions_total")
           .Help(
               "Peers' questions whether this region holds an account (FindAccount), by form: "
               "blind (a prefix and an HMAC, as every peer is asked), named (the user id and "
               "a login's password, sent only to the region that holds the account) or legacy "
               "(the user id alone, from a peer older than blind questions, answered only while "
               "coordination.account_questions is blind-or-named)")
           .Register(*registry);
  rights_waits = &BuildCounter()
                      .Name("meridian_rights_waits_total")
                      .Help(
                          "Checkouts that waited for inventory rights from other regions, by "
                          "result (granted, refused)")
                      .Register(*registry);
  checkout_durability = &BuildCounter()
                             .Name("meridian_checkout_durability_total")
                             .Help("Checkouts by the durability they were acknowledged with")
                             .Register(*registry);
  reservations_released = &BuildCounter()
                               .Name("meridian_reservations_released_total")
                               .Help("Reservations released (cancel, decline, expiry)")
                               .Register(*registry)
                               .Add({});
}

void RegionApp::Impl::SetupRoutes() {
  auto bind = [this](HttpResponse (Impl::*fn)(HttpRequest&)) {
    return [this, fn](HttpRequest& r) { return (this->*fn)(r); };
  };
  router.Add("GET", "/healthz", bind(&Impl::Healthz));
  router.Add("GET", "/readyz", bind(&Impl::Readyz));
  router.Add("GET", "/metrics", bind(&Impl::Metrics));
  router.Add("POST", "/v1/users", bind(&Impl::Register));
  router.Add("POST", "/v1/sessions", bind(&Impl::Login));
  router.Add("GET", "/v1/products", bind(&Impl::ListProducts));
  router.Add("GET", "/v1/products/{sku}", bind(&Impl::GetProduct));
  router.Add("GET", "/v1/search", bind(&Impl::Search));
  router.Add("GET", "/v1/inventory/{sku}", bind(&Impl::GetInventory));
  router.Add("GET", "/v1/cart", bind(&Impl::GetCart));
  router.Add("POST", "/v1/cart/items", bind(&Impl::AddCartItem));
  router.Add("PUT", "/v1/cart/items/{sku}", bind(&Impl::SetCartItem));
  router.Add("DELETE", "/v1/cart/items/{sku}", bind(&Impl::RemoveCartItem));
  router.Add("POST", "/v1/checkout", bind(&Impl::Checkout));
  router.Add("GET", "/v1/orders", bind(&Impl::ListOrders));
  router.Add("GET", "/v1/orders/{id}", bind(&Impl::GetOrder));
  router.Add("POST", "/v1/orders/{id}/pay", bind(&Impl::PayOrder));
  router.Add("POST", "/v1/orders/{id}/cancel", bind(&Impl::CancelOrder));
  router.Add("PUT", "/v1/admin/categories/{id}", bind(&Impl::PutCategory));
  router.Add("PUT", "/v1/admin/products/{sku}", bind(&Impl::PutProduct));
  router.Add("POST", "/v1/admin/inventory/{sku}/restock", bind(&Impl::Restock));
  router.Add("POST", "/v1/admin/reconcile", bind(&Impl::Reconcile));
  router.Add("POST", "/v1/admin/sweep", bind(&Impl::SweepNow));
  router.Add("POST", "/v1/admin/notify", bind(&Impl::NotifyNow));
  router.Add("GET", "/v1/admin/leases", bind(&Impl::GetLeases));
  router.Add("GET", "/v1/admin/rights/{sku}", bind(&Impl::GetRights));
  router.Add("GET", "/v1/admin/residency", bind(&Impl::ResidencyAudit));
  router.Add("POST", "/v1/admin/residency/profiles", bind(&Impl::ResidencyProfiles));
}

HttpResponse RegionApp::Impl::Dispatch(HttpRequest& req) {
  auto start = std::chrono::steady_clock::now();
  HttpResponse resp;
  // The route label: the matched pattern (bounded cardinality), "" when no pattern matches.
  std::string route;
  bool limited = false;
  if (req.path != "/healthz" && req.path != "/readyz" && req.path != "/metrics") {
    // Per client: the customer when the token verifies (a forged or random token must not buy a
    // fresh bucket, nor drain someone else's), the operator, else the address.
    std::string client = "ip:" + req.remote_address.substr(0, req.remote_address.rfind(':'));
    if (auto claims = Customer(req); claims.ok()) {
      // A customer whose data may not be held here (about to be redirected) stays limited by
      // address: their id must not be written to this region's Redis.
      if (services::ResidencyAllows(claims->residency, config.jurisdiction)) {
        client = "user:" + claims->user_id;
      }
    } else if (Operator(req).ok()) {
      client = "operator";
    }
    if (!RateLimit(client)) {
      limited = true;
      rate_limited->Increment();
      resp = HttpResponse::Problem(429, "Too Many Requests",
                                   "rate limit exceeded; retry after a second");
      resp.headers.emplace_back("Retry-After", "1");
      route = router.PatternFor(req);  // counted under its route, as if it had been served
    }
  }
  if (!limited) resp = router.Handle(req, &route);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5};
  latency->Add({{"route", route}, {"method", req.method}}, kBuckets).Observe(seconds);
  requests->Add({{"route", route}, {"method", req.method}, {"code", std::to_string(resp.status)}})
      .Increment();
  return resp;
}

HttpResponse RegionApp::Impl::Healthz(HttpRequest&) {
  return HttpResponse::Json(200, Json{{"status", "ok"}, {"region", config.name}}.dump());
}

HttpResponse RegionApp::Impl::Readyz(HttpRequest& req) {
  // `?require=order_lease`, what meridian-geo probes: not ready while another region holds this
  // one's order lease. A region back from a loss answers plain /readyz at once, and the
  // failover controllers must see that to judge it recovered and ask for its lease back; but
  // until the lease is home its checkouts answer 503, so DNS sends no customer there before.
  // A lease that only lapsed here (cut off from a majority, starting) does not count: a region
  // left alone after its peers were lost cannot hold one, yet still serves browsing and carts,
  // and with it out too geo would answer every region, the lost ones included.
  bool need_lease = false;
  if (std::optional<std::string> require = req.QueryParam("require")) {
    if (*require != "order_lease") {
      return HttpResponse::Problem(400, "Bad Request",
                                   "require: the only check that can be required is order_lease");
    }
    need_lease = true;
  }
  Json checks = Json::object();
  bool ready = migrations_done.load();
  checks["migrations"] = ready ? "done" : "pending";
  bool pg_ok = global->Ping();
  checks["postgres_global"] = pg_ok ? "ok" : "unreachable";
  ready = ready && pg_ok;
  for (auto& s : shards) {
    bool ok = s->Ping();
    checks["postgres_" + s->name()] = ok ? "ok" : "unreachable";
    ready = ready && ok;
  }
  // Redis down degrades the region (reads and writes go to PostgreSQL) and does not make it
  // unready: the failover controllers and meridian-geo read a 503 here as a failed region, and
  // a Redis restart took a region that still served writes out of DNS and had it declared lost
  // (review of the failover paths, 2026-12-07, finding 1).
  const bool redis_ok = redis->Ping().ok();
  checks["redis"] = redis_ok ? "ok" : "unreachable";
  const bool lease_held = leases->ForGroup(config.replica_id).mine;
  const bool elsewhere =
      !lease_held && leases->HeldElsewhere(config.replica_id, std::chrono::seconds(10));
  checks["order_lease"] = lease_held ? "held" : elsewhere ? "held_elsewhere" : "not_held";
  if (need_lease) ready = ready && !elsewhere;
  Json body{{"ready", ready}, {"checks", checks}};
  if (!redis_ok) body["degraded"] = Json::array({"redis"});
  return HttpResponse::Json(ready ? 200 : 503, body.dump());
}

HttpResponse RegionApp::Impl::Metrics(HttpRequest&) {
  SampleGauges();
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4";
  r.body = prometheus::TextSerializer().Serialize(registry->Collect());
  return r;
}

void RegionApp::Impl::WarmCatalogCache() {
  // Fill the cache before the first customer arrives, so a cold start is not a stampede on the
  // global shard. Best effort: without Redis the region serves from PostgreSQL anyway.
  // The SKUs are read first, in a transaction of their own: ProductJson draws a connection from
  // the same pool, and one held here meanwhile would make each product wait for a free one (with
  // postgres.pool_size 1, the whole acquire timeout, for every product).
  std::vector<std::string> skus;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    skus.clear();
    for (const auto& r : tx.exec("SELECT sku FROM products ORDER BY updated_at DESC LIMIT 2000")) {
      skus.push_back(r[0].as<std::string>());
    }
  });
  int warmed = 0;
  for (const std::string& sku : skus) {
    if (redis->breaker_open()) break;
    if (ProductJson(sku).ok()) ++warmed;
  }
  spdlog::info("event=catalog_cache_warmed products={} status=\"{}\"", warmed, st.ToString());
}

void RegionApp::Impl::SampleGauges() {
  local_writes_held_gauge->Set(local_writes_held.load() ? 1 : 0);
  stock_writes_held_gauge->Set(stock_held.load() ? 1 : 0);
  pool_in_use->Add({{"pool", global->name()}}).Set(global->in_use());
  for (auto& s : shards) pool_in_use->Add({{"pool", s->name()}}).Set(s->in_use());
  // The outbox depths are a count on every database, through the pools customers use, and
  // /metrics answers anyone, outside the rate limit: a few clients looping on it held the
  // connections and HTTP threads. So at most one count a second, and none while one is in
  // flight; a scrape meanwhile gets the last depths.
  std::unique_lock<std::mutex> lock(outbox_depth_mu, std::try_to_lock);
  const auto now = std::chrono::steady_clock::now();
  if (!lock.owns_lock() || now - outbox_depth_at < std::chrono::seconds(1)) return;
  outbox_depth_at = now;
  auto depth = [&](PgPool& p) {
    int64_t n = -1;
    (void)p.Run(
        [&](pqxx::work& tx) { n = tx.exec1("SELECT count(*) FROM outbox")[0].as<int64_t>(); });
    if (n >= 0) outbox_depth->Add({{"db", p.name()}}).Set(static_cast<double>(n));
  };
  depth(*global);
  for (auto& s : shards) depth(*s);
}

// ---------------------------------------------------------------------------------------------

RegionApp::RegionApp(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RegionApp::~RegionApp() { Stop(); }

namespace {

// Has every connection `db` opens from now on check that the database is the one it is now, with
// the outbox stream `stream` the start read (see the caller): one that finds another is refused
// (Unavailable) and sets `*changed`. Fails when the database's stream is already another.
absl::Status WatchDatabaseIdentity(PgPool& db, const std::string& stream,
                                   std::atomic<bool>* changed) {
  std::string identity;
  if (absl::Status st = db.Run([&](pqxx::work& tx) { identity = DatabaseIdentity(tx); });
      !st.ok()) {
    return st;
  }
  // The cart actors come from the streams the start read: another process of the region that
  // gave the database a new stream since would leave this one on the old actor.
  if (!absl::EndsWith(identity, ", outbox stream " + stream)) {
    return absl::FailedPreconditionError(
        absl::StrCat(db.name(), "'s outbox stream changed during this start (", stream, ", now ",
                     identity, "): another process of the region gave it a new life; start again"));
  }
  auto last_logged = std::make_shared<std::atomic<int64_t>>(0);
  db.SetConnectCheck([identity, last_logged, changed, name = db.name()](pqxx::connection& conn) {
    pqxx::read_transaction tx(conn);
    const std::string now = DatabaseIdentity(tx);
    if (now == identity) return absl::OkStatus();
    changed->store(true);
    const int64_t t = UnixNowMs();
    if (int64_t was = last_logged->load(); t - was >= 60'000) {
      if (last_logged->compare_exchange_strong(was, t)) {
        spdlog::error(
            "event=database_changed_under_server db={} at_start=\"{}\" now=\"{}\" (restored or "
            "failed over since this server started: the server stops with exit status 3; its "
            "next start gives the database a new life)",
            name, identity, now);
      }
    }
    return absl::UnavailableError(absl::StrCat(
        "postgres ", name,
        ": the database is no longer the one this server started on (restored from a backup, or "
        "failed over to a standby); the region server stops, and takes requests again once "
        "restarted"));
  });
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RegionApp>> RegionApp::Create(RegionConfig config) {
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  const RegionConfig& c = impl->config;
  auto pool = [&c](std::string name, const std::string& dsn) {
    return PgPool::Create({.name = std::move(name),
                           .dsn = dsn,
                           .size = c.pool_size,
                           .open_at_start = c.pool_open_at_start});
  };
  auto global = pool("global", c.global_dsn);
  if (!global.ok()) return global.status();
  impl->global = *std::move(global);
  for (size_t i = 0; i < c.shard_dsns.size(); ++i) {
    auto shard = pool(absl::StrCat("shard-", i), c.shard_dsns[i]);
    if (!shard.ok()) return shard.status();
    impl->shards.push_back(*std::move(shard));
  }
  // A database whose outbox stream was made since the last start that got past the write hold
  // is new, was rebuilt, or was restored from a backup (CheckDatabaseLife gives it a new stream):
  // this region may have lived before, and its peers may hold records it no longer has. That is the
  // stream's mark (migrations.h), made in the stream's own transaction, not "this start made it": a
  // start that stopped after the stream was made (killed, or a later migration failing) leaves the
  // mark for the next one.
  const std::vector<PgPool*> databases = impl->AllDatabases();
  bool new_stream = false;
  for (PgPool* db : databases) {
    auto applied =
        ApplyMigrations(*db, db == impl->global.get() ? SchemaKind::kGlobal : SchemaKind::kShard);
    if (!applied.ok()) return applied.status();
  }
  // --restored first makes every database forget what it was, so that a start that stops half-way
  // leaves the rest to be given their new lives by the next start, flag or not.
  for (PgPool* db : databases) {
    if (!c.restored) break;
    if (absl::Status forgot = ForgetDatabaseIdentity(*db); !forgot.ok()) return forgot;
  }
  for (PgPool* db : databases) {
    if (auto life = CheckDatabaseLife(*db); !life.ok()) return life.status();
    auto marked = NewStreamMarked(*db);
    if (!marked.ok()) return marked.status();
    new_stream = new_stream || *marked;
  }
  impl->migrations_done = true;
  // Each shard's cart actor, from its outbox stream id (see CartActor). Two pools on one stream
  // name one database (two shard DSNs, spelled alike or not): the second found the first's
  // migrations applied, and the two would share the users, the outbox and its stream.
  std::vector<std::pair<std::string, std::string>> streams;  // stream id, pool
  for (PgPool* db : databases) {
    auto id = ReadStreamId(*db);
    if (!id.ok()) return id.status();
    for (const auto& [seen, pool] : streams) {
      if (seen == *id) {
        return absl::FailedPreconditionError(
            absl::StrCat(db->name(), " and ", pool, " are one database (both hold outbox stream ",
                         *id, "): each needs a database of its own: check the connection strings"));
      }
    }
    streams.emplace_back(*id, db->name());
    if (db != impl->global.get()) impl->cart_actors.push_back(CartActor(c.replica_id, *id));
  }
  for (size_t i = 0; i < impl->shards.size(); ++i) {
    if (absl::Status st = CheckShardPlacement(*impl->shards[i], i, impl->shards.size()); !st.ok()) {
      return st;
    }
  }
  // Until the replicator has heard from the peers, a change here could take a CRDT dot (or a
  // per-replica count) this region used before a rebuild, which the peers drop as seen.
  // The hold outlives a restart of this server (table write_hold): databases made at an earlier
  // start that the replicator had not released yet, and stock changes still awaiting peers.
  if (c.hold_new_databases && !c.peers.empty()) {
    auto persisted = LoadWriteHold(*impl->global, new_stream);
    if (!persisted.ok()) return persisted.status();
    if (persisted->new_databases) {
      impl->held_since_start = true;
      impl->local_writes_held = true;
      spdlog::warn("event=local_writes_held reason=new_databases{}",
                   new_stream ? "" : " (made at an earlier start, not yet released)");
    }
    if (!persisted->stock_awaits.empty()) {
      impl->stock_awaits = std::move(persisted->stock_awaits);
      impl->stock_held = true;
      spdlog::warn("event=stock_writes_held awaiting=\"{}\" reason=earlier_start",
                   absl::StrJoin(impl->stock_awaits, ", "));
    }
  }
  // The marks are handed over now: to write_hold.new_databases (committed above), which only the
  // replicator's release clears, or, with the hold off, to nothing, as before. A start that stops
  // before this point leaves them, and the next one marks the hold again.
  // First every database forgets its resume points of the peers' streams: the hello's come from
  // the global database, and a shard that is new (rebuilt, or restored from a backup) lacks what
  // was applied to it since, which the peers would never send again. With none, each peer sends
  // its full state (the records of this region's earlier life among them).
  // All are forgotten before any mark is cleared: a start that stops in between leaves a mark, and
  // the next one forgets them again. Looked at again just before: another process of the region
  // that started at the same time may have done both already, and its peers' state transfers may
  // have left new resume points since.
  bool still_new = false;
  for (PgPool* db : databases) {
    if (!new_stream) break;
    auto marked = NewStreamMarked(*db);
    if (!marked.ok()) return marked.status();
    still_new = still_new || *marked;
  }
  if (still_new) {
    for (PgPool* db : databases) {
      if (absl::Status forgot = ForgetResumePoints(*db); !forgot.ok()) return forgot;
    }
    for (PgPool* db : databases) {
      if (absl::Status cleared = ClearNewStreamMark(*db); !cleared.ok()) return cleared;
    }
  }
  // From now on every new connection must find the database this start found: a restore or a
  // failover to a standby under this server (its connections break, and it reconnects) would
  // otherwise have it write at rewound seqs and dots; another process of the region that gave
  // the database a new stream, under this one's cached cart actor. Such a connection is refused
  // (503), and the server stops with exit status 3 (main.cc); its next start gives the database
  // its new life.
  for (size_t i = 0; i < databases.size(); ++i) {
    absl::Status watched =
        WatchDatabaseIdentity(*databases[i], streams[i].first, &impl->database_changed);
    if (!watched.ok()) return watched;
  }
  impl->leases = std::make_unique<LeaseTable>(c.replica_id, c.replication.enabled,
                                              c.replication.lease_margin_ms);
  impl->redis = std::make_unique<RedisClient>(
      RedisClient::Options{c.redis.host, c.redis.port, c.redis_timeout_ms, c.http_threads, 1000});
  impl->SetupMetrics();
  impl->SetupRoutes();
  return std::unique_ptr<RegionApp>(new RegionApp(std::move(impl)));
}

absl::Status RegionApp::Start() {
  Impl& i = *impl_;
  http::HttpServer::Options o;
  o.address = i.config.http.host;
  o.port = i.config.http.port;
  o.threads = i.config.http_threads;
  o.max_body_bytes = i.config.max_body_bytes;
  o.max_connections_per_client = i.config.max_connections_per_client;
  i.server = std::make_unique<http::HttpServer>(o, [&i](HttpRequest& r) { return i.Dispatch(r); });
  absl::Status st = i.server->Start();
  if (!st.ok()) return st;
  if (!i.config.grpc.host.empty()) {
    auto grpc = InternalServer::Start(i, i.config.grpc.host, i.config.grpc.port);
    if (!grpc.ok()) {
      i.server->Stop();
      return grpc.status();
    }
    i.grpc = *std::move(grpc);
  }
  ConnectForwarder(i);
  i.WarmCatalogCache();
  i.StartJobs();
  spdlog::info("event=region_started region={} jurisdiction={} http={}:{} shards={} durability={}",
               i.config.name, i.config.jurisdiction, o.address, i.server->port(), i.shards.size(),
               DurabilityName(i.config.durability));
  return absl::OkStatus();
}

void RegionApp::Stop() {
  if (!impl_) return;
  impl_->StopJobs();
  if (impl_->grpc) impl_->grpc->Stop();
  if (impl_->server) impl_->server->Stop();
  // A last save of the stale Redis copies marked since the jobs thread's last tick, so that the
  // next run, or another process of the region, reads around them.
  if (impl_->global && !impl_->stale_hot_copies.Unsaved(1).empty()) impl_->SyncStaleCopies();
}

uint16_t RegionApp::http_port() const { return impl_->server ? impl_->server->port() : 0; }
uint16_t RegionApp::grpc_port() const { return impl_->grpc ? impl_->grpc->port() : 0; }
bool RegionApp::database_changed() const { return impl_->database_changed.load(); }

absl::StatusOr<SweepCounts> RegionApp::SweepReservations() { return impl_->Sweep(); }
absl::StatusOr<int> RegionApp::RunNotificationsOnce() { return impl_->NotifyOnce(); }

}  // namespace meridian::region
