#include "region/migrations.h"

#include <spdlog/spdlog.h>

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace meridian::region {
namespace {

// Every table that holds replicated state writes its deltas to `outbox` in the same transaction;
// seq is the per-origin (this region, this database) sequence number the replicator ships by.
constexpr const char* kOutbox = R"sql(
CREATE TABLE outbox (
  seq        bigserial PRIMARY KEY,
  origin     integer NOT NULL,
  kind       text NOT NULL,
  key        text NOT NULL,
  payload    bytea NOT NULL,
  residency  text NOT NULL DEFAULT 'any',
  created_at timestamptz NOT NULL DEFAULT now()
);
)sql";

// Every outbox record names its residency: a write that forgot it would otherwise have shipped a
// pinned customer's record to every region, with no error (residency review, 2026-12-04).
// Products and stock are written 'any' explicitly. (Global migration 17, shard migration 13.)
constexpr const char* kOutboxResidencyRequired = R"sql(
ALTER TABLE outbox ALTER COLUMN residency DROP DEFAULT;
)sql";

// How far the outbox was ever truncated (TruncateOutbox, in the transaction of its DELETE): a peer
// resuming below it needs the database's full state. One row. An outbox truncated before this
// was recorded is taken as truncated through every seq below its lowest row, or through every
// seq taken when it is empty (the replicator's rule until then).
constexpr const char* kOutboxTruncated = R"sql(
CREATE TABLE outbox_truncated (through_seq bigint NOT NULL);
INSERT INTO outbox_truncated
SELECT coalesce((SELECT min(seq) - 1 FROM outbox),
                (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_seq_seq));
)sql";

// Per peer stream (origin replica, origin database): the highest seq applied to this database.
constexpr const char* kReplicationApplied = R"sql(
CREATE TABLE replication_applied (
  origin    integer NOT NULL,
  origin_db text NOT NULL,
  seq       bigint NOT NULL,
  PRIMARY KEY (origin, origin_db)
);
)sql";

// The outbox in commit order. A seq is taken by a transaction that already holds an xid, so a
// reader that sees seq n+1 but not n knows n belongs to a transaction that was running when it
// looked (or aborted): PollOutbox waits until every such transaction has ended before it ships
// past the gap. Each insert statement also wakes the replicator's long poll (LISTEN).
constexpr const char* kOutboxCommitOrder = R"sql(
CREATE FUNCTION meridian_outbox_next_seq() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_current_xact_id();
  RETURN nextval('outbox_seq_seq');
END $$;
ALTER TABLE outbox ALTER COLUMN seq SET DEFAULT meridian_outbox_next_seq();
CREATE FUNCTION meridian_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('meridian_outbox', '');
  RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
  FOR EACH STATEMENT EXECUTE FUNCTION meridian_outbox_notify();
)sql";

// Lag is measured from the outbox row's created_at: the moment of the insert (close to the
// commit, the outbox insert is a transaction's last write), not the transaction's start.
constexpr const char* kOutboxInsertTime = R"sql(
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
)sql";

// The outbox's stream identity: peers keep their marks per (origin, stream), so a database that
// is rebuilt (its sequence starts over) is a new stream to them, not an old one to resume.
constexpr const char* kOutboxStream = R"sql(
CREATE TABLE outbox_stream (id text PRIMARY KEY);
INSERT INTO outbox_stream VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 8));
)sql";

// The outbox stream made in this database, from the transaction of the migration that makes it
// (or of CheckDatabaseLife, which gives a restored database a new one) until a start has handed
// it to the write hold and dropped the resume points (region/app.cc): a start that stops in between
// (killed, or a later migration failing) leaves the mark for the next one. Made before any
// migration, like schema_migrations, so that the stream's migration can write it; empty in a
// database whose stream was made before marks were kept (those starts recorded their hold).
constexpr const char* kNewStreamMarks = R"sql(
CREATE TABLE IF NOT EXISTS new_stream_marks (
  stream_id text PRIMARY KEY,
  marked_at timestamptz NOT NULL DEFAULT now()
)
)sql";

// What the database is, as PostgreSQL tells it: the cluster's system identifier, the timeline it
// writes on, the database's OID, and this table's own OID. A restore changes one of them: a
// physical restore to a point in time (or a promoted standby, which may lack the old primary's
// last commits) writes on a new timeline; a logical restore makes a new database, or new tables
// in the old one, or lands in another cluster. The region compares them at every start
// (CheckDatabaseLife): a database that went back in time gets a new outbox stream, as a rebuilt
// one does. One row; made at the first start that finds it empty.
constexpr const char* kDatabaseIdentity = R"sql(
CREATE TABLE database_identity (
  only_row          boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  system_identifier text NOT NULL,
  timeline          bigint NOT NULL,
  database_oid      bigint NOT NULL,
  table_oid         bigint NOT NULL,
  recorded_at       timestamptz NOT NULL DEFAULT now()
);
)sql";

const std::vector<Migration> kGlobal = {
    {1, "catalog",
     R"sql(
CREATE TABLE categories (
  id   text PRIMARY KEY CHECK (id ~ '^[a-z0-9-]{1,64}$'),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200)
);
CREATE TABLE products (
  sku         text PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9._-]{1,64}$'),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  description text NOT NULL DEFAULT '' CHECK (length(description) <= 4000),
  category_id text REFERENCES categories(id),
  price_cents bigint NOT NULL CHECK (price_cents >= 0),
  currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  hlc         bigint NOT NULL,
  origin      integer NOT NULL,
  search      tsvector GENERATED ALWAYS AS (
                setweight(to_tsvector('english', name), 'A') ||
                setweight(to_tsvector('english', description), 'B')) STORED,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_search ON products USING gin (search);
CREATE INDEX products_category ON products (category_id);
)sql"},
    {2, "inventory",
     R"sql(
CREATE TABLE inventory (
  sku        text PRIMARY KEY REFERENCES products(sku),
  state      bytea NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE reservations (
  id         text PRIMARY KEY,
  user_id    text NOT NULL,
  state      text NOT NULL CHECK (state IN ('held', 'committed', 'released')),
  expires_at timestamptz NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_expiry ON reservations (expires_at) WHERE state = 'held';
CREATE TABLE reservation_items (
  reservation_id text NOT NULL REFERENCES reservations(id),
  sku            text NOT NULL,
  units          bigint NOT NULL CHECK (units > 0),
  PRIMARY KEY (reservation_id, sku)
);
)sql"},
    {3, "outbox", kOutbox},
    {4, "sandbox_payments",
     R"sql(
-- The built-in sandbox payment provider's own records (what a real provider would hold).
CREATE TABLE sandbox_charges (
  charge_id       text PRIMARY KEY,
  idempotency_key text NOT NULL UNIQUE,
  order_id        text NOT NULL,
  amount_cents    bigint NOT NULL CHECK (amount_cents >= 0),
  currency        text NOT NULL,
  status          text NOT NULL CHECK (status IN ('captured', 'declined', 'refunded')),
  refunded_cents  bigint NOT NULL DEFAULT 0,
  created_at      timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {5, "replication_applied", kReplicationApplied},
    {6, "outbox_commit_order", kOutboxCommitOrder},
    {7, "outbox_insert_time", kOutboxInsertTime},
    {kGlobalOutboxStreamVersion, "outbox_stream", kOutboxStream},
    {9, "lease_acceptor",
     R"sql(
-- The order-lease acceptor's durable records (replication/lease.h): per lease group, the highest
-- epoch this region granted and to whom. Written before a grant is sent, so epochs never go back.
CREATE TABLE lease_acceptor (
  grp        integer PRIMARY KEY CHECK (grp BETWEEN 1 AND 255),
  epoch      bigint NOT NULL CHECK (epoch >= 0),
  owner      integer NOT NULL CHECK (owner BETWEEN 0 AND 255),
  updated_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {10, "lost_declarations",
     R"sql(
-- An operator declared a region lost: the rights this region reclaimed from it, per SKU (sent to
-- the region when it returns), and, on the returning region, the declarations it has written off.
CREATE TABLE lost_declarations (
  id          text NOT NULL,
  region      integer NOT NULL CHECK (region BETWEEN 1 AND 255),
  declared_by integer NOT NULL CHECK (declared_by BETWEEN 1 AND 255),
  sku         text NOT NULL,
  units       bigint NOT NULL CHECK (units > 0),
  declared_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id, sku)
);
CREATE TABLE rights_retired (
  declaration_id text PRIMARY KEY,
  declared_by    integer NOT NULL,
  units          bigint NOT NULL,
  retired_at     timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {11, "lost_declarations_announced",
     R"sql(
-- Whether the declaration was announced to the region since (it came back, and writes the rights
-- off): until then its units stay counted in the region's rights here, and declaring it lost
-- again must not reclaim them a second time.
ALTER TABLE lost_declarations ADD COLUMN announced boolean NOT NULL DEFAULT false;
)sql"},
    {12, "lost_declarations_restocked",
     R"sql(
-- Whether the declarer restocked the reclaimed rights: only once a majority of regions recorded
-- the declaration, so that it outlives the declarer. Earlier rows were restocked when made; other
-- regions' declarations are recorded as they are (the flag means something only to the declarer).
ALTER TABLE lost_declarations ADD COLUMN restocked boolean NOT NULL DEFAULT true;
)sql"},
    {13, "lost_declarations_settled",
     R"sql(
-- A declaration its declarer had not restocked when the region it named came back is settled by
-- that region: it wrote the declaration off (learned from another region's record), and the
-- declarer restocks exactly what it wrote off, or it refused it (kept its rights) and the
-- declaration is void. Before, such a declaration was void as soon as the region was back; those
-- rows stay void. On the returning region, a refusal is kept like a write-off (once per
-- declaration), and a write-off keeps what it took per SKU, to answer the declarer again.
ALTER TABLE lost_declarations ADD COLUMN voided boolean NOT NULL DEFAULT false;
UPDATE lost_declarations SET voided = true WHERE announced AND NOT restocked;
ALTER TABLE rights_retired ADD COLUMN refused boolean NOT NULL DEFAULT false;
CREATE TABLE rights_retired_items (
  declaration_id text NOT NULL REFERENCES rights_retired (declaration_id),
  sku            text NOT NULL,
  units          bigint NOT NULL CHECK (units > 0),
  PRIMARY KEY (declaration_id, sku)
);
)sql"},
    {14, "write_hold",
     R"sql(
-- The write hold (region/app_impl.h) outlives a restart of the region server: whether a start
-- with new databases still waits for the replicator's release, and which peers its stock changes
-- still await. Written before the region server acts on a change of either.
CREATE TABLE write_hold (
  singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  new_databases boolean NOT NULL DEFAULT false,
  stock_awaits  text[] NOT NULL DEFAULT '{}'
);
INSERT INTO write_hold DEFAULT VALUES;
)sql"},
    {15, "restock_requests",
     R"sql(
-- Restocks made with an Idempotency-Key: a retry of one (its answer lost, or its commit in
-- doubt) adds nothing. Kept for good: restocks are operator actions, a handful a day.
CREATE TABLE restock_requests (
  idempotency_key text PRIMARY KEY,
  sku             text NOT NULL,
  units           bigint NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {16, "lost_declarations_received",
     R"sql(
-- The region's rights ever received in the SKU (restocks and transfers to it) as the declarer saw
-- them: the declaration stays counted in the region's rights here until the region's consumption
-- seen here (spent and given away, its write-off included) reaches this figure. Being announced
-- to the region (migration 11) is not enough: its write-off may never have arrived, and a second
-- declaration would reclaim the same units again (review of the stock paths, 2026-12-04). NULL
-- on rows made before: those keep the rule of being counted until announced.
ALTER TABLE lost_declarations ADD COLUMN received bigint CHECK (received IS NULL OR received >= units);
)sql"},
    {17, "outbox_residency_required", kOutboxResidencyRequired},
    {18, "outbox_truncated", kOutboxTruncated},
    {19, "sandbox_charges_by_order",
     R"sql(
-- Every apply of an order's decided status asks whether this region holds a capture of it
-- (SettleAtNextSweep), and the sweep refunds an order's captures: both by order, which scanned
-- the whole table before.
CREATE INDEX sandbox_charges_order ON sandbox_charges (order_id);
)sql"},
    {20, "stale_hot_copies",
     R"sql(
-- Redis copies (carts, products) that may be older than their row, because writing or retiring
-- them failed, with the version of that write (RegionApp::Impl::SyncStaleCopies). Every process
-- of the region saves the ones it could not repair yet and lists the ones the others saved, so
-- that neither another process nor a restart reads such a copy (they served it for up to its
-- expiry before: an hour for a cart, 5 minutes for a product). A row goes once its copy is
-- retired.
CREATE TABLE stale_hot_copies (
  key       text PRIMARY KEY,
  version   numeric(20) NOT NULL CHECK (version >= 0),
  marked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stale_hot_copies_marked ON stale_hot_copies (marked_at);
)sql"},
    {21, "rights_debt",
     R"sql(
-- On a region that came back, per declaration against it and SKU, once its declarer said how
-- many units it restocked (its own write-off announcement): that figure, beyond which no copy of
-- the declaration is written off, and what this region's write-off came short of it (a rights
-- grant to it was still in flight, or it had spent units the declarer had not seen). The
-- shortfall is paid from this region's next rights in the SKU (a grant landing, a restock), so
-- that those units, which the declarer restocked, are not sold a second time.
CREATE TABLE rights_debt (
  declaration_id text NOT NULL REFERENCES rights_retired (declaration_id),
  sku            text NOT NULL,
  restocked      bigint NOT NULL CHECK (restocked >= 0),
  owed           bigint NOT NULL CHECK (owed >= 0),
  paid           bigint NOT NULL DEFAULT 0 CHECK (paid >= 0 AND paid <= owed),
  owed_since     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (declaration_id, sku)
);
CREATE INDEX rights_debt_unpaid ON rights_debt (sku, owed_since) WHERE paid < owed;
)sql"},
    {22, "lost_declarations_restocked_units",
     R"sql(
-- On the declarer: the units of each SKU it restocked (fewer than reclaimed when the lost
-- region's rights it saw had shrunk by the restock). Its write-off announcement to the region
-- carries them: the region owes what its write-off comes short of these, never more. NULL: not
-- restocked here, or restocked before the figure was kept.
ALTER TABLE lost_declarations ADD COLUMN restocked_units bigint CHECK (restocked_units >= 0);
)sql"},
    {23, "database_identity", kDatabaseIdentity},
};

const std::vector<Migration> kShard = {
    {1, "users",
     R"sql(
CREATE TABLE users (
  user_id       text PRIMARY KEY,
  email         text NOT NULL UNIQUE,
  name          text NOT NULL DEFAULT '',
  password_hash text NOT NULL,
  residency     text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {2, "carts",
     R"sql(
CREATE TABLE carts (
  user_id    text PRIMARY KEY,
  state      bytea NOT NULL,
  residency  text NOT NULL,
  version    bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {3, "orders",
     R"sql(
CREATE TABLE orders (
  order_id        text PRIMARY KEY,
  user_id         text NOT NULL,
  status          text NOT NULL CHECK (status IN ('pending_payment', 'paid', 'cancelled',
                                                  'payment_declined', 'expired', 'refunded')),
  total_cents     bigint NOT NULL CHECK (total_cents >= 0),
  currency        text NOT NULL,
  reservation_id  text NOT NULL,
  idempotency_key text,
  owner_region    text NOT NULL,
  epoch           bigint NOT NULL DEFAULT 1,
  payment_ref     text,
  residency       text NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_user ON orders (user_id, created_at DESC);
CREATE TABLE order_items (
  order_id    text NOT NULL REFERENCES orders(order_id),
  sku         text NOT NULL,
  quantity    integer NOT NULL CHECK (quantity > 0),
  price_cents bigint NOT NULL CHECK (price_cents >= 0),
  PRIMARY KEY (order_id, sku)
);
)sql"},
    {4, "notifications",
     R"sql(
CREATE TABLE notifications (
  id              bigserial PRIMARY KEY,
  order_id        text NOT NULL,
  user_id         text NOT NULL,
  kind            text NOT NULL,
  payload         text NOT NULL,
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  sent_at         timestamptz,
  last_error      text
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE sent_at IS NULL;
CREATE TABLE notifications_dead (
  id         bigint PRIMARY KEY,
  order_id   text NOT NULL,
  user_id    text NOT NULL,
  kind       text NOT NULL,
  payload    text NOT NULL,
  attempts   integer NOT NULL,
  last_error text,
  dead_at    timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {5, "outbox", kOutbox},
    {6, "replication_applied", kReplicationApplied},
    {7, "outbox_commit_order", kOutboxCommitOrder},
    {8, "users_replicated",
     R"sql(
-- Profiles replicate to residency-allowed regions; the last writer by (HLC, origin) wins.
ALTER TABLE users ADD COLUMN hlc bigint NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN origin integer NOT NULL DEFAULT 0;
)sql"},
    {9, "outbox_insert_time", kOutboxInsertTime},
    {kShardOutboxStreamVersion, "outbox_stream", kOutboxStream},
    {11, "order_leases",
     R"sql(
-- Order ownership (issue 5): every order belongs to the lease group of the region that created
-- it, and its status is a register ordered by (epoch, version). A region writes an order only
-- with the epoch of the lease it holds, and only if neither the order nor the group's fence has a
-- higher one: a stale writer's UPDATE matches nothing.
ALTER TABLE orders ADD COLUMN lease_group integer NOT NULL DEFAULT 0;
ALTER TABLE orders ADD COLUMN version bigint NOT NULL DEFAULT 1;
-- false for a row made from a status event that arrived before the order's creation (its
-- creation facts come later).
ALTER TABLE orders ADD COLUMN facts boolean NOT NULL DEFAULT true;
CREATE TABLE order_fence (
  grp        integer PRIMARY KEY CHECK (grp BETWEEN 1 AND 255),
  epoch      bigint NOT NULL,
  owner      integer NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_lease_group ON orders (lease_group, order_id);
)sql"},
    {12, "orders_void",
     R"sql(
-- A checkout whose order the sweep found missing once its reservation expired: the stock went
-- back on sale, so that checkout must not make its order after all (a commit late past the
-- reservation's time to live). One row per such checkout, which is rare: a checkout that died
-- half-way or stalled; its id is never used again.
CREATE TABLE orders_void (
  order_id  text PRIMARY KEY,
  voided_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {13, "outbox_residency_required", kOutboxResidencyRequired},
    {14, "carts_residency_narrowed",
     R"sql(
-- A cart row kept the tag of its first writer. Under two accounts of one user id (one e-mail
-- registered in two regions that could not see each other) an `any` first writer left a pinned
-- customer's lines under `any`, for state transfers to ship everywhere. Rows now only narrow
-- (region/documents.h, kCartUpsertConflictSql); rows written before narrow to their owner's
-- profile here.
UPDATE carts c SET residency = u.residency
  FROM users u
 WHERE c.user_id = u.user_id AND c.residency = 'any' AND u.residency <> 'any';
)sql"},
    {15, "outbox_truncated", kOutboxTruncated},
    {16, "refunds_due",
     R"sql(
-- Captured charges that a failed payment must give back and could not at once (the global
-- database did not answer): the sweep refunds them (RegionApp::Impl::RefundsDue). Kept on the
-- order's shard, in the transaction that found the payment failed, so that the obligation
-- outlives the global database's outage and the process.
CREATE TABLE refunds_due (
  charge_id  text PRIMARY KEY,
  order_id   text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {17, "charges_to_settle",
     R"sql(
-- Orders decided (here or at a peer) while this region holds captures of them: the sweep settles
-- those captures by the order's status (RegionApp::Impl::SettleCharges), whether or not this
-- region holds the order's reservation. A successor that took payments for a lost region's
-- orders holds their captures but not their reservations: before, those captures were never
-- refunded once the order was refunded, cancelled or expired after the handback (review of
-- accounts and money, 2026-12-05, finding 1). Written in the transaction that decides the order
-- or applies its decided status, on the order's shard; a row goes once its order is settled.
CREATE TABLE charges_to_settle (
  order_id   text PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {18, "order_stock_takes",
     R"sql(
-- An order's checkout stock takes (a JSON object: SKU -> base64 of the take's encoded inventory
-- delta), kept with the order so that whoever learns the order as state (a survivors' exchange,
-- a takeover sync's page) learns its stock consumption too; NULL when this region never had
-- them (an order from a region of an earlier version). A declaration would otherwise count the
-- sold units of a lost region's order as that region's rights and sell them again.
ALTER TABLE orders ADD COLUMN stock_takes text;
)sql"},
    {19, "shard_placement",
     R"sql(
-- Where this database sits in its region's postgres.shards list: a user's shard is the jump hash
-- of the user id over the list's length, so the list's order and length place every user's rows.
-- Written at the first start that finds it empty and checked at every start after
-- (RegionApp::Create): a reordered, shortened or lengthened list would otherwise put customers
-- on shards that hold none of their rows, without an error (there is no resharding).
CREATE TABLE shard_placement (
  only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  shard_index integer NOT NULL,
  shard_count integer NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now()
);
)sql"},
    {20, "database_identity", kDatabaseIdentity},
};

}  // namespace

const std::vector<Migration>& Migrations(SchemaKind kind) {
  return kind == SchemaKind::kGlobal ? kGlobal : kShard;
}

namespace {

const char* KindName(SchemaKind kind) {
  return kind == SchemaKind::kGlobal ? "the global schema" : "a shard's schema";
}

// The recorded migrations' names must be this schema's: versions are numbered from 1 in both
// schemas, so a database holding the other (a shard DSN naming the global database, or the
// reverse) would otherwise find every version "applied" and start without its tables.
// Versions this build does not know (a newer build's) are left alone.
absl::Status CheckRecorded(pqxx::work& tx, const PgPool& pool, SchemaKind kind) {
  const std::vector<Migration>& want = Migrations(kind);
  const SchemaKind other_kind =
      kind == SchemaKind::kGlobal ? SchemaKind::kShard : SchemaKind::kGlobal;
  const std::vector<Migration>& other = Migrations(other_kind);
  auto name_of = [](const std::vector<Migration>& list, int version) -> const char* {
    for (const Migration& m : list) {
      if (m.version == version) return m.name;
    }
    return nullptr;
  };
  std::optional<std::pair<int, std::string>> first_wrong;
  bool all_others = true;  // every recorded name is the other schema's
  for (const auto& row : tx.exec("SELECT version, name FROM schema_migrations ORDER BY version")) {
    const int version = row[0].as<int>();
    const std::string name = row[1].as<std::string>();
    const char* expected = name_of(want, version);
    const char* theirs = name_of(other, version);
    if (theirs == nullptr || name != theirs) all_others = false;
    if (expected != nullptr && name != expected && !first_wrong) first_wrong.emplace(version, name);
  }
  if (!first_wrong) return absl::OkStatus();
  const std::string db = tx.exec1("SELECT current_database()")[0].as<std::string>();
  const std::string configured = kind == SchemaKind::kGlobal
                                     ? std::string("the global database (postgres.global)")
                                     : absl::StrCat(pool.name(), " (postgres.shards)");
  const std::string holds =
      all_others ? KindName(other_kind)
                 : absl::StrCat("a schema this build does not know (its migration ",
                                first_wrong->first, " is \"", first_wrong->second, "\", not \"",
                                name_of(want, first_wrong->first), "\")");
  return absl::FailedPreconditionError(absl::StrCat(
      "database \"", db, "\" holds ", holds, "; it is configured as ", configured, ", which needs ",
      KindName(kind), " in a database of its own: check the connection strings"));
}

// One advisory lock per database, held by a start's schema work to the end of its transaction:
// concurrent starters wait here, then find nothing to do.
std::string StartLockSql() {
  constexpr long long kLockKey = 0x4d6572696469616eLL;  // "Meridian"
  return absl::StrCat("SELECT pg_advisory_xact_lock(", kLockKey, ")");
}

}  // namespace

absl::StatusOr<std::vector<int>> ApplyMigrations(PgPool& pool, SchemaKind kind) {
  std::vector<int> applied;
  const std::string lock = StartLockSql();
  absl::Status checked;
  absl::Status st = pool.Run([&](pqxx::work& tx) {
    tx.exec(lock);
    tx.exec0(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT "
        "NULL, applied_at timestamptz NOT NULL DEFAULT now())");
    tx.exec0(kNewStreamMarks);
    checked = CheckRecorded(tx, pool, kind);
  });
  if (!st.ok()) return st;
  if (!checked.ok()) {
    return absl::Status(checked.code(), absl::StrCat(pool.name(), ": ", checked.message()));
  }
  const int stream_version =
      kind == SchemaKind::kGlobal ? kGlobalOutboxStreamVersion : kShardOutboxStreamVersion;
  // Each migration in its own transaction with the row that records it.
  for (const Migration& m : Migrations(kind)) {
    bool did = false;
    st = pool.Run([&](pqxx::work& tx) {
      did = false;
      tx.exec(lock);
      if (!tx.exec("SELECT 1 FROM schema_migrations WHERE version = " + tx.quote(m.version))
               .empty()) {
        return;
      }
      tx.exec0(m.sql);
      tx.exec0("INSERT INTO schema_migrations (version, name) VALUES (" + tx.quote(m.version) +
               ", " + tx.quote(m.name) + ")");
      if (m.version == stream_version) {
        tx.exec0("INSERT INTO new_stream_marks (stream_id) SELECT id FROM outbox_stream");
      }
      did = true;
    });
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("migration ", m.version, " (", m.name, ") on ",
                                                  pool.name(), ": ", st.message()));
    }
    if (did) applied.push_back(m.version);
  }
  if (!applied.empty()) {
    spdlog::info("event=migrations_applied db={} count={}", pool.name(), applied.size());
  }
  return applied;
}

absl::StatusOr<bool> NewStreamMarked(PgPool& pool) {
  bool marked = false;
  absl::Status st = pool.Run(
      [&](pqxx::work& tx) { marked = !tx.exec("SELECT 1 FROM new_stream_marks LIMIT 1").empty(); });
  if (!st.ok()) return st;
  return marked;
}

absl::Status ClearNewStreamMark(PgPool& pool) {
  return pool.Run([](pqxx::work& tx) { tx.exec0("DELETE FROM new_stream_marks"); });
}

absl::Status ForgetResumePoints(PgPool& pool) {
  return pool.Run([](pqxx::work& tx) { tx.exec0("DELETE FROM replication_applied"); });
}

namespace {
// The system identifier ForgetDatabaseIdentity records: no cluster has it.
constexpr const char* kForgotten = "forgotten (--restored)";
// What the database is: PostgreSQL's system identifier, the timeline it writes on (the first 8
// hex digits of the current WAL segment's name), its OID, the identity table's OID. None of
// these needs a superuser.
constexpr const char* kIdentityColumns =
    "(SELECT system_identifier::text FROM pg_control_system()), ('x' || "
    "substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::bigint, (SELECT "
    "oid::bigint FROM pg_database WHERE datname = current_database()), "
    "'database_identity'::regclass::oid::bigint";
}  // namespace

std::string DatabaseIdentity(pqxx::transaction_base& tx) {
  pqxx::row r = tx.exec1(std::string("SELECT ") + kIdentityColumns +
                         ", (SELECT id FROM outbox_stream LIMIT 1)");
  return absl::StrCat("system identifier ", r[0].as<std::string>(), ", timeline ",
                      r[1].as<std::string>(), ", database OID ", r[2].as<std::string>(),
                      ", identity table OID ", r[3].as<std::string>(), ", outbox stream ",
                      r[4].c_str());
}

absl::Status ForgetDatabaseIdentity(PgPool& pool) {
  return pool.Run([](pqxx::work& tx) {
    tx.exec(StartLockSql());
    tx.exec0(
        "INSERT INTO database_identity (system_identifier, timeline, database_oid, table_oid) "
        "VALUES (" +
        tx.quote(kForgotten) +
        ", 0, 0, 0) ON CONFLICT (only_row) DO UPDATE SET system_identifier = " +
        tx.quote(kForgotten));
  });
}

absl::StatusOr<bool> CheckDatabaseLife(PgPool& pool) {
  std::string reason, old_stream, new_stream;
  absl::Status st = pool.Run([&](pqxx::work& tx) {
    reason.clear();
    tx.exec(StartLockSql());
    pqxx::row now = tx.exec1(std::string("SELECT ") + kIdentityColumns);
    constexpr const char* kNames[] = {"system identifier", "timeline", "database OID",
                                      "identity table OID"};
    pqxx::result was = tx.exec(
        "SELECT system_identifier, timeline::text, database_oid::text, table_oid::text FROM "
        "database_identity");
    if (!was.empty() && was[0][0].as<std::string>() == kForgotten) {
      reason = "the operator said it was restored (--restored)";
    }
    for (int i = 0; !was.empty() && i < 4 && reason.empty(); ++i) {
      const std::string then = was[0][i].as<std::string>(), is = now[i].as<std::string>();
      if (then != is) reason = absl::StrCat(kNames[i], " ", then, " -> ", is);
    }
    if (!reason.empty()) {
      // A new life, as a rebuilt database's: a new stream (peers resume nothing of it, and its
      // shard's cart changes take dots under a new actor, documents.h CartActor), marked new:
      // the start then holds writes for the peers and drops every database's resume points
      // (they were the backup's), so each peer sends its full state, this region's own records
      // made since the backup among them.
      old_stream = tx.exec1("SELECT id FROM outbox_stream")[0].as<std::string>();
      new_stream = tx.exec1(
                         "UPDATE outbox_stream SET id = substr(md5(random()::text || "
                         "clock_timestamp()::text), 1, 8) RETURNING id")[0]
                       .as<std::string>();
      tx.exec0("INSERT INTO new_stream_marks (stream_id) VALUES (" + tx.quote(new_stream) +
               ") ON CONFLICT DO NOTHING");
    }
    if (!was.empty() && reason.empty()) return;  // the same database: nothing to record
    tx.exec0("DELETE FROM database_identity");
    tx.exec0(
        "INSERT INTO database_identity (system_identifier, timeline, database_oid, table_oid) "
        "VALUES (" +
        tx.quote(now[0].as<std::string>()) + ", " + tx.quote(now[1].as<int64_t>()) + ", " +
        tx.quote(now[2].as<int64_t>()) + ", " + tx.quote(now[3].as<int64_t>()) + ")");
  });
  if (!st.ok()) {
    return absl::Status(
        st.code(),
        absl::StrCat("checking whether ", pool.name(), " was restored: ", st.message(),
                     absl::StrContains(st.message(), "permission denied")
                         ? " (the region's role needs EXECUTE on pg_control_system(), "
                           "pg_current_wal_lsn() and pg_walfile_name(), which PostgreSQL grants "
                           "to every role unless revoked)"
                         : ""));
  }
  if (reason.empty()) return false;
  spdlog::warn(
      "event=database_new_life db={} reason=\"{}\" old_stream={} new_stream={} (a restored "
      "database: its peers send their full state, and its own writes wait for it)",
      pool.name(), reason, old_stream, new_stream);
  return true;
}

}  // namespace meridian::region
