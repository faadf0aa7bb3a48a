#pragma once

// The region's configuration, read from YAML and checked before anything starts: a bad file is an
// InvalidArgument status naming the field (e.g. "postgres.shards[1]: must not be empty"), and the
// process does not start half-configured.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/yaml_reader.h"

namespace meridian::region {

enum class Durability { kAsync, kSyncPeer };

using Endpoint = ::meridian::Endpoint;

// Another region, for residency redirects (HTTP 307 to an allowed region).
struct PeerRegion {
  std::string name;
  std::string jurisdiction;
  std::string public_url;   // e.g. http://eu-west.shop.example:8080
  uint32_t replica_id = 0;  // 0 when not given (then leases cannot name it as an owner)
};

// Multi-region coordination with this region's replicator (issue 5). Absent: a single region,
// which owns all its orders at epoch 1 and sells only its own stock.
struct ReplicationLink {
  bool enabled = false;
  Endpoint replicator;              // the replicator's local control API (order forwarding)
  int rights_wait_ms = 200;         // a checkout short of rights waits this long for a grant
  int sync_peer_timeout_ms = 2000;  // a sync-peer checkout waits this long for a peer
  int lease_margin_ms = 100;        // the region stops acting on a lease this much early
};

struct RegionConfig {
  // region
  std::string name;          // e.g. "us-east"
  std::string jurisdiction;  // e.g. "us", "eu"
  uint32_t replica_id = 0;   // unique per region, 1..255
  // listen
  Endpoint http;
  Endpoint grpc;
  // postgres
  std::string global_dsn;               // catalog, inventory
  std::vector<std::string> shard_dsns;  // user-keyed data, placed by jump hash of user_id
  int pool_size = 8;                    // connections per database pool (global and each shard)
  // postgres.open_at_start: connections each pool opens at the start (1..pool_size; default
  // pool_size, so that a server that cannot take them all is found at the start); the rest open
  // when first needed. 0 (a config built in code): all of them, whatever pool_size is.
  int pool_open_at_start = 0;
  // postgres.identity_check_ms: how often each pool rechecks, on a connection it keeps, that its
  // database is still the one this server started on (PgPool::Recheck); 0: only new connections
  // are checked.
  int identity_check_ms = 1000;
  // redis
  Endpoint redis;
  int redis_timeout_ms = 200;
  // security
  std::string token_secret;  // HMAC key for customer tokens, >= 32 bytes
  // bearer token for admin routes: >= 16 bytes, printable ASCII without spaces
  std::string operator_token;
  // The bearer token of the internal gRPC API (listen.grpc) and of the replicator's control port,
  // shared with this region's replicator (its region_token_file); empty: none, and then
  // listen.grpc must be a loopback address.
  std::string internal_token;
  int token_ttl_s = 86400;
  // peers
  std::vector<PeerRegion> peers;
  // With peers: a start that makes new databases (a new region, or one rebuilt from nothing)
  // holds cart and stock changes (503) until the replicator has heard from the peers, which may
  // hold records of an earlier life of this region (a change before could reuse a CRDT dot they
  // have seen, and be dropped). Only the replicator releases it, through listen.grpc: with peers
  // and no listen.grpc the config is refused unless this is off.
  bool hold_new_databases = true;
  // Not from the file: `meridian-region --restored`. This start gives every database a new life
  // (CheckDatabaseLife), for a restore PostgreSQL cannot tell apart.
  bool restored = false;
  // durability
  Durability durability = Durability::kAsync;
  // replication
  ReplicationLink replication;
  // limits
  size_t max_body_bytes = 1 << 20;
  // HTTP connections from one remote address at a time (of 1,024 in all); 0 = no limit (e.g.
  // behind a proxy through which every customer comes from one address).
  int max_connections_per_client = 256;
  int http_threads = 8;
  // Account lookups at the peers (a login or registration of an e-mail this region holds no
  // row of) in flight at once. Each holds an HTTP thread until the peers answer (up to about
  // 3 s when one cannot), so they may not take every thread: at most http_threads, by default
  // half of them (at least 1); past the limit a lookup is answered 503 at once.
  int account_lookups = 4;
  double rate_limit_per_s = 50;
  double rate_limit_burst = 100;
  // Failed logins per account (a guessing limit that an address limit cannot give, since a
  // guesser spreads over addresses): this many at once, then one more every
  // login_attempt_refill_s seconds; past them, 429 without a password check. A successful login
  // costs nothing. 0 = no per-account limit.
  int login_attempts_per_account = 10;
  int login_attempt_refill_s = 60;
  int reservation_ttl_s = 900;
  // Seconds between the jobs thread's sweeps (expired reservations, orders left in doubt,
  // deferred releases and refunds). 0: no background sweep; only `POST /v1/admin/sweep` runs one
  // (tests that drive the sweep themselves and must not race it).
  int sweep_interval_s = 5;
  int max_cart_lines = 100;
  int max_line_quantity = 999;
  // A cart's stored state, in bytes, past which a change that adds to it is refused (422): the
  // state keeps one entry per add, and a document that grew past what the decoders accept
  // (crdt/codec.h's limits) could no longer be read, here or at a peer.
  size_t max_cart_bytes = 1 << 20;
};

// Parses and validates. `source` names the file in messages.
[[nodiscard]] absl::StatusOr<RegionConfig> ParseConfig(std::string_view yaml,
                                                       std::string_view source = "config");
[[nodiscard]] absl::StatusOr<RegionConfig> LoadConfigFile(const std::string& path);

std::string_view DurabilityName(Durability d);

}  // namespace meridian::region
