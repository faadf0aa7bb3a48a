#pragma once

// Internal to region/: the state RegionApp's handlers and jobs share. Not a public header.

#include <grpcpp/support/status_code_enum.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "crdt/hlc.h"
#include "region/app.h"
#include "region/config.h"
#include "region/coordination.h"
#include "region/documents.h"
#include "region/http/http_server.h"
#include "region/http/router.h"
#include "region/leases.h"
#include "region/pg_pool.h"
#include "region/redis_client.h"
#include "services/auth.h"

namespace meridian::region {

using http::HttpRequest;
using http::HttpResponse;
using Json = nlohmann::json;

// What a client may read of `s`: its message, except that a database's own text (hosts, tables,
// values) becomes a fixed wording per code and an internal error (a 500) becomes "internal
// error"; both are logged in full (event=database_error, event=internal_error).
std::string PublicDetail(const absl::Status& s);

// Maps a Status to the problem+json response with the right HTTP status (detail: PublicDetail).
HttpResponse ProblemFromStatus(const absl::Status& s);

// Parses a JSON object body; InvalidArgument (-> 400) when it is not one, when it nests
// containers deeper than kJsonDepthMax, or when an object repeats a member name. The depth is
// checked while parsing, before any DOM is built, so a deep body costs no memory beyond itself.
inline constexpr size_t kJsonDepthMax = 32;
absl::StatusOr<Json> ParseBody(const HttpRequest& req);
// Typed field access with clear errors (InvalidArgument -> 422 via the field's name).
absl::StatusOr<std::string> StringField(const Json& j, const char* name, bool required,
                                        std::string def = "");
absl::StatusOr<int64_t> IntField(const Json& j, const char* name, bool required, int64_t def = 0);

// A validation failure on a well-formed body: 422.
absl::Status Unprocessable(std::string message);
// The answer to a customer whose change of order `order_id` could not be forwarded to its owner
// region (control_service.cc): 503, saying whether the change may have been made.
HttpResponse ForwardFailedProblem(grpc::StatusCode code, const std::string& order_id,
                                  const std::string& owner_name);
// A product's copy in Redis ("product:<sku>") is its HLC as 20 decimal digits (so that versions
// compare as strings, in Lua too), '|', and its JSON; a marker of a peer's write is the first two
// alone. store_product(key, version, value), a Lua function that scripts begin with
// (kStoreProductCopyFn), writes the value unless Redis holds a newer version, or the same version
// as a copy (a marker gives way to a copy of its own version), for 300 s. kStoreProductCopy runs
// it alone (KEYS: the key; ARGV: the version, the value).
inline std::string ProductCopyVersion(uint64_t hlc) { return absl::StrFormat("%020u", hlc); }
inline constexpr const char* kStoreProductCopyFn = R"lua(
local function store_product(key, version, value)
  local cur = redis.call('GET', key)
  if cur and string.sub(cur, 21, 21) == '|' then
    local theirs = string.sub(cur, 1, 20)
    if theirs > version or (theirs == version and (#cur > 21 or #value <= 21)) then return 0 end
  end
  redis.call('SET', key, value, 'EX', 300)
  return 1
end
)lua";
inline const std::string kStoreProductCopy =
    std::string(kStoreProductCopyFn) + "return store_product(KEYS[1], ARGV[1], ARGV[2])";
// Order ids are "o" + 24 hex digits (RandomId); anything else cannot name an order (NotFound).
absl::Status ValidOrderId(std::string_view id);
// The request's Idempotency-Key header, checked ("" when there is none).
absl::StatusOr<std::string> IdempotencyKey(const HttpRequest& req);

int64_t UnixNowS();
int64_t UnixNowMs();

// An order's creation time is a fact of the order, set once by the region that made it and
// carried to the others (its created event, state transfers, takeover syncs), so that every
// region shows the same `created_at`. Stored to the millisecond; shown in whole seconds, rounded
// down. SQL for a column value from milliseconds since the epoch, and for reading one back.
inline std::string TimestampFromMsSql(int64_t ms) {
  return absl::StrCat("to_timestamp(", ms, " / 1000.0)");
}
inline constexpr const char* kCreatedMsSql = "floor(extract(epoch from created_at) * 1000)::bigint";

// How long after a payment attempt wrote its charges_to_settle row the sweep keeps the row of a
// decided order: longer than an attempt takes from reading the order to capturing (a connection
// wait of at most PgPool::Options::acquire_timeout_ms, 5 s, and a capture), so that a capture it
// makes after the order was decided is still settled.
inline constexpr int kChargeAttemptGraceS = 120;

// The database's outbox stream id (region/migrations.cc: drawn when the database is made).
absl::StatusOr<std::string> ReadStreamId(PgPool& pool);
// A database's stream as the replicator names it: "<pool name>-<outbox stream id>".
inline std::string StreamNameOf(const PgPool& pool, const std::string& stream_id) {
  return absl::StrCat(pool.name(), "-", stream_id);
}

class OrderForwarder;  // region/control_service.cc: the client of the replicator's forwarder
std::string RandomId(std::string_view prefix);

// Single flight: concurrent loads of the same key wait for one loader.
class SingleFlight {
 public:
  absl::StatusOr<std::string> Do(const std::string& key,
                                 const std::function<absl::StatusOr<std::string>()>& load);

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_future<absl::StatusOr<std::string>>> inflight_;
};

struct RegionApp::Impl {
  RegionConfig config;
  std::unique_ptr<PgPool> global;
  std::vector<std::unique_ptr<PgPool>> shards;
  std::unique_ptr<RedisClient> redis;
  std::unique_ptr<http::HttpServer> server;
  std::unique_ptr<class InternalServer> grpc;
  http::Router router;
  SingleFlight product_flight;
  // Hot copies of carts ("cart:<actor>:<user>") and products ("product:<sku>") that may be
  // older than PostgreSQL's row: not read, and the jobs thread retires them in Redis
  // (SyncStaleCopies). One hour: the carts' expiry (a product's is shorter).
  StaleKeys stale_hot_copies{200'000, std::chrono::seconds(3600)};
  std::mutex hlc_mu;
  crdt::Hlc hlc;
  std::atomic<bool> migrations_done{false};

  // issue 5: leases, rights signals, peers' acknowledgements, forwarding
  std::unique_ptr<LeaseTable> leases;
  RightsSignals rights_signals;
  PeerAcks peer_acks;
  std::shared_ptr<OrderForwarder> forwarder;  // null without a replicator
  std::mutex streams_mu;
  std::map<std::string, std::string> stream_names;  // pool name -> its outbox stream name

  // Set by the replicator (SetLocalWriteHold) while this region, its databases rebuilt, waits
  // for its peers' state: no change of its own to a cart or to stock meanwhile (each would take
  // a CRDT dot or per-replica count it had already used before the rebuild).
  std::atomic<bool> local_writes_held{false};
  std::mutex hold_mu;
  std::string hold_peers;  // the peers awaited, for the error
  // Held since the start: a database's outbox stream was made at this start (the databases are
  // new or were rebuilt), so until the replicator has heard from the peers nobody can tell
  // whether they hold records of an earlier life of this region. Cleared by a release that says
  // the peers were heard (SetLocalWriteHoldRequest.release_new_databases).
  std::atomic<bool> held_since_start{false};
  // Stock changes held (SetLocalWriteHoldRequest.stock_awaits): a start with new databases was
  // released without hearing these peers. stock_awaits is guarded by hold_mu.
  std::vector<std::string> stock_awaits;
  std::atomic<bool> stock_held{false};
  // Set by a connection that found a database changed since the start (RegionApp::Create).
  std::atomic<bool> database_changed{false};
  // Writes held_since_start's and stock_awaits' next values to the global database (table
  // write_hold), where the next start of the region server reads them.
  absl::Status SaveWriteHold(bool new_databases, const std::vector<std::string>& stock_awaits);
  // Unavailable (503, Retry-After 1) while the hold is on, saying why; `takes_stock` false for a
  // change that takes no stock, which the stock hold lets through. Order changes (a payment, a
  // cancel, the sweep's expiry) ask it too: a restored shard holds orders at versions its peers
  // may have passed, and a change of its own at the same version would never converge.
  absl::Status LocalWriteHold(bool takes_stock = true);
  // Throws AbortTx with LocalWriteHold's error. Called in the transaction of every local cart and
  // stock change, before it writes.
  void RefuseLocalWriteIfHeld(bool takes_stock = true);
  // Whether stock changes are held (either hold), for changes that wait rather than fail.
  bool StockWritesHeld() const { return local_writes_held.load() || stock_held.load(); }

  // metrics
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Histogram>* latency = nullptr;
  prometheus::Family<prometheus::Counter>* requests = nullptr;
  prometheus::Counter* cache_hits = nullptr;
  prometheus::Counter* cache_misses = nullptr;
  prometheus::Counter* redis_fallbacks = nullptr;
  prometheus::Gauge* stale_hot_cart_gauge = nullptr;
  prometheus::Gauge* local_writes_held_gauge = nullptr;
  prometheus::Gauge* stock_writes_held_gauge = nullptr;
  prometheus::Counter* rate_limited = nullptr;
  prometheus::Counter* login_attempts_refused = nullptr;
  prometheus::Family<prometheus::Gauge>* pool_in_use = nullptr;
  prometheus::Family<prometheus::Gauge>* outbox_depth = nullptr;
  prometheus::Counter* notifications_sent = nullptr;
  prometheus::Counter* notifications_failed = nullptr;
  prometheus::Counter* notifications_dead = nullptr;
  prometheus::Family<prometheus::Gauge>* notifications_oldest_due = nullptr;
  prometheus::Counter* reservations_released = nullptr;
  prometheus::Counter* replication_rejected = nullptr;
  prometheus::Counter* stale_local_writes = nullptr;  // fenced UPDATEs that matched nothing
  prometheus::Counter* stale_peer_events = nullptr;   // peers' order events superseded here
  prometheus::Family<prometheus::Counter>* forwards = nullptr;             // {result}
  prometheus::Family<prometheus::Counter>* rights_waits = nullptr;         // {result}
  prometheus::Family<prometheus::Counter>* checkout_durability = nullptr;  // {mode}
  prometheus::Family<prometheus::Counter>* account_lookups = nullptr;      // {result}
  prometheus::Family<prometheus::Counter>* account_questions = nullptr;    // {form}

  // background jobs
  std::mutex jobs_mu;
  std::condition_variable jobs_cv;
  bool stopping = false;
  std::vector<std::thread> jobs;
  // Failure injection for the notification sink (tests): the next N sends fail.
  std::atomic<int> fail_next_notifications{0};

  PgPool& ShardFor(std::string_view user_id);
  // The global database, then the shards.
  std::vector<PgPool*> AllDatabases() const {
    std::vector<PgPool*> pools{global.get()};
    for (const auto& s : shards) pools.push_back(s.get());
    return pools;
  }
  // The actor of local changes to this user's cart: its shard's (documents.h CartActor).
  crdt::ReplicaId CartActorFor(std::string_view user_id) const;
  std::vector<crdt::ReplicaId> cart_actors;  // per shard, set at the start
  crdt::HlcTimestamp Now();
  // A timestamp after `seen` (the HLC of the row a local write replaces, maybe a peer's from a
  // clock ahead of ours; 0: none), so that the write wins as it should: this region's clock
  // observes it.
  // FailedPrecondition when `seen` is more than kMaxHlcAheadMs ahead of this region's clock (a
  // clock far off, or a forged write): observing it would move every later write that far ahead.
  static constexpr int64_t kMaxHlcAheadMs = 60'000;
  absl::StatusOr<crdt::HlcTimestamp> NowAfter(uint64_t seen);

  void SetupMetrics();
  void SetupRoutes();
  HttpResponse Dispatch(HttpRequest& req);

  // Authentication: the customer's claims, or a 401 status. Where the token's residency allows
  // this region, the token must be of the account stored here, if one is (AccountHere): one
  // e-mail registered in two regions that could not see each other is two accounts under one user
  // id, and one's token opens nothing of the other's.
  absl::StatusOr<services::TokenClaims> Customer(const HttpRequest& req);
  // The AccountStamp of the profile stored here under `user_id` (nullopt: none), cached for
  // kAccountCacheTtl; ForgetAccount drops the entry once a profile write committed (and a read
  // that overlapped it caches nothing: accounts_forgotten).
  absl::StatusOr<std::optional<std::string>> AccountHere(const std::string& user_id);
  void ForgetAccount(const std::string& user_id);
  static constexpr std::chrono::seconds kAccountCacheTtl{30};
  static constexpr size_t kAccountCacheMax = 200000;
  std::mutex accounts_mu;
  std::unordered_map<std::string, std::pair<std::string, std::chrono::steady_clock::time_point>>
      accounts;
  uint64_t accounts_forgotten = 0;  // ForgetAccount calls so far (guarded by accounts_mu)
  absl::Status Operator(const HttpRequest& req);
  // 307 to an allowed region (or 403) when the residency does not allow this region.
  std::optional<HttpResponse> ResidencyRedirect(std::string_view residency, const HttpRequest& req);
  bool RateLimit(const std::string& client);
  // Takes `cost` tokens from the bucket `key` (Redis, shared by the region's processes; per
  // process while Redis is down) if it holds at least one. False when it holds none. A negative
  // cost gives tokens back (up to the burst).
  bool TakeBucketToken(const std::string& key, double rate_per_s, double burst, double cost = 1);
  // Failed logins per account: `limits.login_attempts_per_account` of them, one more every
  // `limits.login_attempt_refill_s` seconds. Counted in the region that checks the password:
  // the one that holds the account (only there may its id be written to Redis) or, for an
  // e-mail with no account anywhere, the region asked (the id is then no customer's), so that
  // a 429 tells no one whether an account exists. Every password check takes an attempt first
  // (TakeLoginAttempt false: refuse the login, TooManyLoginAttempts, without checking it), and a
  // right password gives it back (ReturnLoginAttempt). Taken before the check, not counted after
  // a wrong one: concurrent guesses all passed a look at a bucket that still held one attempt,
  // and each got its password checked.
  bool TakeLoginAttempt(const std::string& user_id);
  void ReturnLoginAttempt(const std::string& user_id);
  HttpResponse TooManyLoginAttempts() const;
  std::mutex local_buckets_mu;
  std::map<std::string, std::pair<double, int64_t>> local_buckets;

  // handlers (region/*_api.cc)
  HttpResponse Healthz(HttpRequest& req);
  HttpResponse Readyz(HttpRequest& req);
  HttpResponse Metrics(HttpRequest& req);
  HttpResponse Register(HttpRequest& req);
  HttpResponse Login(HttpRequest& req);
  HttpResponse ListProducts(HttpRequest& req);
  HttpResponse GetProduct(HttpRequest& req);
  HttpResponse Search(HttpRequest& req);
  HttpResponse PutCategory(HttpRequest& req);
  HttpResponse PutProduct(HttpRequest& req);
  HttpResponse Restock(HttpRequest& req);
  HttpResponse GetInventory(HttpRequest& req);
  HttpResponse GetCart(HttpRequest& req);
  HttpResponse AddCartItem(HttpRequest& req);
  HttpResponse SetCartItem(HttpRequest& req);
  HttpResponse RemoveCartItem(HttpRequest& req);
  HttpResponse Checkout(HttpRequest& req);
  // Redis's hot copy of a cart: its key names the cart's database actor as well as the customer,
  // so that a copy of a database since rebuilt (whose versions start again from 0) is never
  // read nor compared with a new one.
  std::string HotCartKey(std::string_view user_id) const;
  // Redis's hot copy of a cart just committed at `version` (cart_api.cc): written unless Redis
  // holds a newer copy or marker; when the write fails the key is read around until it is
  // repaired.
  void StoreHotCart(const std::string& user_id, int64_t version, const crdt::Cart& cart);
  // Peers' changes committed these carts at these versions (user id, version) and wrote these
  // products (sku, HLC), all retired in one round trip: each copy older than that becomes a
  // marker of the version alone, which reads go around (to PostgreSQL) and which keeps a slower
  // writer's or reader's older copy out, in any process of the region. Deleting the copy instead
  // let such a writer put back a cart without the peer's lines, served for an hour (a product,
  // for 5 minutes).
  void RetireHotCopies(const std::vector<std::pair<std::string, int64_t>>& carts,
                       const std::vector<std::pair<std::string, uint64_t>>& products);
  // The retire of RetireHotCopies for copies given by key ("cart:..." or "product:...") and
  // version, in one round trip; StaleKeys::Repair's RetireFn.
  absl::Status RetireCopies(const std::vector<StaleKeys::Entry>& copies);
  // Marks copies Redis refused to update (it may still hold older ones) in stale_hot_copies and
  // saves the marks to the global database at once, before the write is answered: a mark kept
  // only in memory until the jobs thread's next tick (up to a second) was lost with a crash in
  // that second, and the older copy was served until the next write or its expiry. A failed save
  // is logged and left to the tick. While Redis is down, every cart write pays one such save.
  void MarkStale(const std::vector<StaleKeys::Entry>& copies);
  // Upserts marks into the global database's stale_hot_copies (a higher version wins).
  absl::Status SaveStaleMarks(const std::vector<StaleKeys::Entry>& marks);
  // The jobs thread's tick for stale_hot_copies: saves new marks to the global database's
  // stale_hot_copies table, retires what Redis can take now and deletes it from the table, then
  // lists what other processes of the region saved since the last look (all of it at the first
  // tick, so a restart knows what the run before it could not repair).
  void SyncStaleCopies();
  std::string stale_copies_seen_until;  // the jobs thread's: the global database's clock
  // Checkouts of one customer that carry one Idempotency-Key run one at a time in this process
  // (CheckoutTurn, order_api.cc): a twin waits for the first to end, then finds its order by the
  // key and replays it. Without the wait it could see only what the first had done so far (the
  // stock it took, the cart it emptied) and refuse a purchase that was going through.
  std::mutex checkout_keys_mu;
  std::condition_variable checkout_keys_cv;
  std::set<std::string> checkout_keys_busy;
  HttpResponse ListOrders(HttpRequest& req);
  HttpResponse GetOrder(HttpRequest& req);
  HttpResponse PayOrder(HttpRequest& req);
  HttpResponse CancelOrder(HttpRequest& req);
  HttpResponse Reconcile(HttpRequest& req);
  HttpResponse SweepNow(HttpRequest& req);
  HttpResponse NotifyNow(HttpRequest& req);
  HttpResponse GetLeases(HttpRequest& req);
  HttpResponse GetRights(HttpRequest& req);
  HttpResponse ResidencyAudit(HttpRequest& req);
  HttpResponse ResidencyProfiles(HttpRequest& req);

  // Order changes, for the HTTP handlers and for changes forwarded from other regions. When this
  // region does not hold the order's lease and `may_forward`, the change goes to the owner.
  HttpResponse PayForUser(const std::string& user_id, const std::string& order_id,
                          const std::string& card_number, bool may_forward);
  HttpResponse CancelForUser(const std::string& user_id, const std::string& order_id,
                             bool may_forward);
  HttpResponse NotOwnerProblem(const std::string& order_id, const LeaseTable::Decision& lease);
  // region/control_service.cc. Forwards a pay or cancel to the order's owner, if its
  // jurisdiction allows the order's `residency` (503 otherwise).
  HttpResponse ForwardToOwner(uint32_t owner, const std::string& user_id,
                              const std::string& order_id, const std::string& residency, bool pay,
                              const std::string& card_number);
  // The lease group of an order row (older rows carry 0 and their creator's name).
  uint32_t GroupOf(int64_t lease_group, const std::string& owner_region) const;
  std::string RegionName(uint32_t replica) const;
  // Whether peer `replica`'s jurisdiction allows data of `residency` (false for an unknown one).
  bool PeerMayHold(uint32_t replica, std::string_view residency) const;

  // Accounts this region has no row of. The stored account, when this region holds it:
  struct StoredUser {
    std::string password_hash;
    std::string residency;
    std::string account;  // services::AccountStamp of its registration
  };
  absl::StatusOr<std::optional<StoredUser>> FindUser(const std::string& user_id);
  // A peer's question that does not name the account (services::BlindAccountQuery): the
  // residency of the account held here whose id matches, if one does. The prefix is not the
  // shard's key, so every shard is asked (an index range of one id in 4,096).
  // REQUIRES: services::ValidateBlindAccountQuery(q) is OK.
  absl::StatusOr<std::optional<std::string>> FindBlindAccount(const services::BlindAccountQuery& q);
  // Where else the account lives (region/control_service.cc): every peer region is asked at once
  // through the replicator, which answers within about a second, without the id (a prefix and
  // an HMAC, services::BlindAccountQuery). Only a residency comes back. The id and a login's
  // `password` go to the region found to hold the account only, which checks it.
  struct AccountElsewhere {
    bool found = false;
    uint32_t region = 0;
    std::string residency;
    bool password_ok = false;  // a password was given, and it is the account's
    // A password was given and not checked: the account's login attempts there are used up.
    bool attempts_exhausted = false;
    // Some peer could not be asked (unreachable, or the replicator was); trivially true without
    // peers or without a replicator (a region of its own).
    bool complete = true;
    std::string unanswered;  // who, for messages: "eu-west, ap-south" or "the replicator"
    // Not asked: `limits.account_lookups` lookups were already waiting for the peers.
    bool busy = false;
  };
  AccountElsewhere LocateAccount(const std::string& user_id, const std::string& password);
  std::atomic<int> account_lookups_in_flight{0};
  // The 503 for a lookup refused as busy (Retry-After 1).
  HttpResponse AccountLookupsBusy() const;
  // Refunds the captured charges that `where` (an SQL condition on sandbox_charges) selects;
  // returns the ids of those refunded. Idempotent: a refunded charge is not selected again.
  static std::vector<std::string> RefundCaptured(pqxx::work& tx, const std::string& where);
  // The sandbox charge's status ("" when there is none); a database error aborts the caller's
  // transaction (AbortTx).
  std::string ChargeStatus(const std::string& charge_id);
  // A payment attempt whose order update failed after its capture: whether the order is paid with
  // that charge by a concurrent attempt (they share it); if not, the charge is refunded.
  bool RefundUnlessPaidWith(PgPool& shard, const std::string& order_id,
                            const std::string& charge_id);
  // The outbox stream name of a database ("shard-0-<id>"), as the replicator reports acks.
  absl::StatusOr<std::string> StreamName(PgPool& pool);
  // Raises the fence of `group` to `epoch` in every shard (never lowers it).
  absl::Status RaiseFence(uint32_t group, uint64_t epoch, uint32_t owner);
  std::mutex fence_mu;
  std::map<uint32_t, uint64_t> fence_written;  // what RaiseFence already wrote

  // shared pieces
  absl::StatusOr<std::string> ProductJson(const std::string& sku);  // cached
  // The product's HLC and JSON from the global database, stored in the cache unless it holds a
  // newer copy or marker (NotFound for no product). `after_write`: the product was just changed
  // here, so a copy Redis holds is older: if storing fails, the key is marked stale and read
  // around until the jobs thread deletes it.
  absl::StatusOr<std::pair<uint64_t, std::string>> LoadProduct(const std::string& sku,
                                                               bool after_write = false);
  absl::StatusOr<Json> OrderJson(const std::string& user_id, const std::string& order_id);
  // Returns a reservation's units to this region's rights, once. While stock changes are held
  // it leaves the reservation held for a later sweep (*deferred true) and succeeds.
  absl::Status ReleaseReservation(const std::string& reservation_id, const std::string& reason,
                                  bool* deferred = nullptr);
  // Called inside `tx`, the order's shard transaction that decides the order
  // (services::OrderDecided: a cancel or refund here, or a status learned from a peer), before it
  // commits. If this region holds the order's reservation, unreleased, it goes first in the
  // sweep's line (held, due at -infinity), and the next sweep settles it by the order's status
  // then. Given up: it refunds what this region captured for the order and puts the units back
  // on sale. Paid: it commits the reservation and refunds the captures here other than the paid
  // one (a payment here whose event a successor never got, before the customer paid again
  // there). Independently, if this region holds a capture of the order, the order goes into
  // `charges_to_settle` in `tx`, and the sweep settles its captures by its status
  // (SettleCharges), reservation or not: a successor holds the captures of the payments it took
  // for a lost region's orders, never their reservations. Should the transaction not commit
  // after all, the sweep settles by the status as it stands. So money and stock are settled
  // however the caller's own settling ends, and wherever the order was decided. A database error
  // aborts the caller's transaction (AbortTx).
  void SettleAtNextSweep(pqxx::work& tx, const std::string& order_id);
  // Joins peer deltas of one SKU's stock document into `tx` (the global database's), under the
  // document's lock; a SKU without a product row gets a placeholder (its catalog write may come
  // later). (region/internal_service.cc)
  void JoinStock(pqxx::work& tx, const std::string& sku,
                 const std::vector<const crdt::Inventory*>& deltas);
  // Orders' checkout stock takes (one SKU each, checked by the caller) joined into the global
  // database in one transaction, SKUs locked in order. Called before the orders are stored, so
  // that a region that holds an order holds its stock consumption too: a declaration would
  // otherwise count the order's sold units as the lost creator's rights and sell them again
  // (review of the inventory paths, finding 1). Idempotent: the take arriving again on its own
  // stream, or with the order again, changes nothing. (region/internal_service.cc)
  absl::Status JoinStockTakes(const std::vector<const crdt::Inventory*>& takes);
  // Pays this region's rights debt in `sku` (rights_debt, oldest first) from the rights it holds
  // in `inv`, which the caller locked and saves: takes them, merges the take into `delta`, and
  // records the payment in `tx`. Every change that raises this region's rights calls it (a peer's
  // grant joined, a restock), so units a short write-off still owes are not sold here once they
  // arrive. Nothing while stock writes are held. Returns the units paid.
  // (region/internal_service.cc)
  uint64_t PayRightsDebt(pqxx::work& tx, const std::string& sku, crdt::Inventory& inv,
                         crdt::Inventory& delta);
  // The reservation sweep's step on an unpaid order whose reservation expired: if this region
  // owns the order, it becomes `expired` (fenced, with its event, so every region learns it).
  // Returns the order's status afterwards: "expired", its current final status, "missing", or
  // "pending_payment" when another region owns it (its owner decides; the sweep waits) or its
  // payment window is not over (`window_over` false); and in *payment_ref the order's payment
  // ("" when none).
  absl::StatusOr<std::string> ExpireOrder(const std::string& order_id, const std::string& user_id,
                                          std::string* payment_ref, bool window_over);
  // An order the caller has just written (checkout): Pay needs no read, and the response is built
  // from it instead of read back.
  struct KnownOrder {
    int64_t total_cents = 0;
    std::string currency;
    std::string residency;
    uint32_t group = 0;
    uint64_t epoch = 0;
    Json json;
  };
  // *event_seq, when given: the outbox seq of the status event the payment wrote (0: none).
  absl::StatusOr<Json> Pay(const std::string& user_id, const std::string& order_id,
                           const std::string& card_number, int* http_status,
                           const KnownOrder* known = nullptr, int64_t* event_seq = nullptr);
  // What an answer says of an order change's durability ("durability", "durability_note").
  struct PeerDurability {
    std::string mode = "async";
    std::string note;
    void AddTo(Json& answer) const {
      answer["durability"] = mode;
      if (!note.empty()) answer["durability_note"] = note;
    }
  };
  // In sync-peer mode: waits (sync_peer_timeout_ms at most) until a region allowed to hold
  // `residency` data has applied `shard`'s events through `seq` and, when `stock_seq` > 0, the
  // global database's through `stock_seq` (a checkout's stock take), and says "sync-peer" if
  // this region still holds `group`'s lease then (a takeover syncs from that region before
  // acting); otherwise "async" with the reason. In async mode: "async" at once.
  PeerDurability AwaitPeer(PgPool& shard, int64_t seq, const std::string& residency, uint32_t group,
                           int64_t stock_seq = 0);
  absl::StatusOr<SweepCounts> Sweep();
  // Refunds the captured charges that failed payments owe (refunds_due, each shard), as a sweep's
  // step.
  void RefundsDue();
  // Settles the captures here of the orders in `charges_to_settle` (each shard, its oldest 500
  // rows), as a sweep's last step: by each order's status, under its row lock.
  // Paid: every capture but the one it is paid with goes back. Refunded, cancelled, expired or
  // declined: every capture goes back, the paid one included. A row goes in the transaction that
  // settled it, once kChargeAttemptGraceS have passed since the payment attempt that wrote it
  // (one still in flight may capture after this sweep); a refund that fails leaves it for the
  // next sweep (counted in counts->failed).
  // Refunds are idempotent, so a crash between a refund and its row's removal refunds nothing
  // twice.
  void SettleCharges(SweepCounts* counts);
  absl::Status SettleChargesOf(PgPool& shard, const std::string& order_id);
  // Where the last sweep stopped (its last item's expires_at as text, and id) when it took a full
  // page: the next one goes on from there, and from the oldest again after a page that was not
  // full. Items a sweep cannot settle (failing for good, or left to their order's owner) are
  // passed over in turn, so they never hold back newer expiries (before, every sweep took the
  // same 500 oldest: review of the stock paths, 2026-12-04).
  std::mutex sweep_mu;
  std::optional<std::pair<std::string, std::string>> sweep_cursor;
  bool SkipFailedSweepItem(const std::string& id, const absl::Status& st, SweepCounts* counts);
  absl::StatusOr<int> NotifyOnce();
  // One batch of at most `limit` due notifications of `shard`, in one transaction: those sent
  // (`*rows`: the due rows it took, sent or not).
  absl::StatusOr<int> NotifyBatch(PgPool& shard, int limit, int* rows);
  void SampleGauges();
  std::mutex outbox_depth_mu;                             // SampleGauges' depth counts
  std::chrono::steady_clock::time_point outbox_depth_at;  // the last of them
  void WarmCatalogCache();
  // A thread that runs `job` every `interval` until StopJobs (which it does not hold up between
  // runs).
  void RunEvery(std::chrono::milliseconds interval, std::function<void()> job);
  void StartJobs();
  void StopJobs();
};

}  // namespace meridian::region
