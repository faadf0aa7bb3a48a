#include "region/config.h"

#include <libpq-fe.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <limits>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/config_files.h"
#include "common/strings.h"
#include "common/yaml_reader.h"

namespace meridian::region {
namespace {

using Reader = YamlReader;

// A PostgreSQL connection string as libpq will read it ("host=... dbname=..." or a
// postgresql:// URI), so that a malformed one fails the config check, not the start.
void CheckConnectionString(Reader& r, const std::string& path, const std::string& dsn) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn.c_str(), &error);
  if (options == nullptr) {
    std::string why = error != nullptr ? error : "out of memory";
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    r.Fail(path, "not a PostgreSQL connection string: " + why);
  }
  PQconninfoFree(options);
  PQfreemem(error);
}

absl::StatusOr<RegionConfig> ParseUnguarded(std::string_view yaml, std::string_view source) {
  auto loaded = LoadConfigYaml(yaml, source);
  if (!loaded.ok()) return loaded.status();
  const YAML::Node root = *std::move(loaded);
  Reader r{std::string(source)};
  RegionConfig c;
  r.OnlyKeys(root, "",
             {"region", "listen", "postgres", "redis", "security", "durability", "limits", "peers",
              "replication", "hold_new_databases"});

  YAML::Node region = r.Map(root, "region", "region", true);
  r.OnlyKeys(region, "region", {"name", "jurisdiction", "replica_id"});
  c.name = r.String(region, "name", "region.name", true);
  c.jurisdiction = r.String(region, "jurisdiction", "region.jurisdiction", true);
  c.replica_id = r.Integer<uint32_t>(region, "replica_id", "region.replica_id", 0, 1, 255);
  if (r.ok() && c.replica_id == 0) r.Fail("region.replica_id", "missing");
  if (r.ok() && !common::ValidRegionName(c.name)) r.Fail("region.name", "1..32 of [A-Za-z0-9-]");
  // Must match how customers' residencies are written (services::ValidateResidency).
  if (r.ok() && !common::ValidJurisdiction(c.jurisdiction)) {
    r.Fail("region.jurisdiction", "2..16 lowercase letters, like a residency (e.g. eu, us)");
  }

  YAML::Node listen = r.Map(root, "listen", "listen", true);
  r.OnlyKeys(listen, "listen", {"http", "grpc"});
  c.http = r.HttpListenHostPort(listen, "http", "listen.http", true);
  c.grpc = r.HostPort(listen, "grpc", "listen.grpc", false);

  YAML::Node pg = r.Map(root, "postgres", "postgres", true);
  r.OnlyKeys(pg, "postgres",
             {"global", "shards", "pool_size", "open_at_start", "identity_check_ms"});
  c.global_dsn = r.String(pg, "global", "postgres.global", true);
  if (r.ok()) CheckConnectionString(r, "postgres.global", c.global_dsn);
  if (pg && pg["shards"]) {
    YAML::Node shards = pg["shards"];
    if (!shards.IsSequence() || shards.size() == 0) {
      r.Fail("postgres.shards", "must be a non-empty list of connection strings");
    } else if (shards.size() > 64) {
      r.Fail("postgres.shards", "at most 64 shards");
    } else {
      for (size_t i = 0; i < shards.size(); ++i) {
        std::string path = absl::StrCat("postgres.shards[", i, "]");
        if (!shards[i].IsScalar() || shards[i].Scalar().empty()) {
          r.Fail(path, "must be a non-empty connection string");
        } else {
          CheckConnectionString(r, path, shards[i].Scalar());
          c.shard_dsns.push_back(shards[i].Scalar());
        }
      }
    }
  } else if (pg) {
    r.Fail("postgres.shards", "missing");
  }
  c.pool_size = r.Integer<int>(pg, "pool_size", "postgres.pool_size", 8, 1, 256);
  c.pool_open_at_start =
      r.Integer<int>(pg, "open_at_start", "postgres.open_at_start", c.pool_size, 1, 256);
  if (c.pool_open_at_start > c.pool_size) {
    r.Fail("postgres.open_at_start",
           absl::StrCat("at most postgres.pool_size (", c.pool_size, ")"));
  }

  c.identity_check_ms =
      r.Integer<int>(pg, "identity_check_ms", "postgres.identity_check_ms", 1000, 0, 60000);
  if (c.identity_check_ms > 0 && c.identity_check_ms < 100) {
    r.Fail("postgres.identity_check_ms",
           absl::StrCat("0 (off) or 100..60000 ms, got ", c.identity_check_ms));
  }

  YAML::Node redis = r.Map(root, "redis", "redis", true);
  r.OnlyKeys(redis, "redis", {"address", "timeout_ms"});
  c.redis = r.DialHostPort(redis, "address", "redis.address", true);
  c.redis_timeout_ms = r.Integer<int>(redis, "timeout_ms", "redis.timeout_ms", 200, 1, 60000);

  YAML::Node sec = r.Map(root, "security", "security", true);
  r.OnlyKeys(sec, "security", {"token_secret", "operator_token", "token_ttl_s", "internal_token"});
  c.token_secret = r.String(sec, "token_secret", "security.token_secret", true);
  c.operator_token = r.String(sec, "operator_token", "security.operator_token", true);
  c.token_ttl_s = r.Integer<int>(sec, "token_ttl_s", "security.token_ttl_s", 86400, 60, 30 * 86400);
  if (r.ok() && c.token_secret.size() < 32) {
    r.Fail("security.token_secret", "must be at least 32 characters");
  }
  // The same rule as every other daemon's operator token (it travels in an Authorization
  // header: sixteen spaces are not a token).
  if (r.ok()) {
    if (absl::Status st = common::CheckOperatorToken(c.operator_token); !st.ok()) {
      r.Fail("security.operator_token", std::string(st.message()));
    }
  }
  // The replicator's key to listen.grpc (common/grpc_auth.h): that API moves orders, stock
  // rights and holds, so a listener other machines can reach needs it.
  c.internal_token = r.String(sec, "internal_token", "security.internal_token", false);
  if (r.ok() && !c.internal_token.empty()) {
    if (absl::Status st = common::CheckOperatorToken(c.internal_token); !st.ok()) {
      r.Fail("security.internal_token", std::string(st.message()));
    }
  }
  if (r.ok() && !c.grpc.host.empty() && c.internal_token.empty() &&
      !common::IsLoopbackHost(c.grpc.host)) {
    r.Fail("security.internal_token",
           absl::StrCat("required when listen.grpc is not a loopback address (", c.grpc.host,
                        "): it is the replicator's key to the region's internal API"));
  }

  if (root["peers"]) {
    YAML::Node peers = root["peers"];
    if (!peers.IsSequence()) {
      r.Fail("peers", "must be a list");
    } else {
      std::set<std::string> names;
      std::set<uint32_t> ids;
      for (size_t i = 0; i < peers.size(); ++i) {
        std::string path = absl::StrCat("peers[", i, "]");
        if (!peers[i].IsMap()) {
          r.Fail(path, "must be a mapping");
          continue;
        }
        r.OnlyKeys(peers[i], path, {"name", "jurisdiction", "url", "replica_id"});
        PeerRegion p;
        p.name = r.String(peers[i], "name", path + ".name", true);
        p.jurisdiction = r.String(peers[i], "jurisdiction", path + ".jurisdiction", true);
        p.public_url = r.String(peers[i], "url", path + ".url", true);
        p.replica_id = r.Integer<uint32_t>(peers[i], "replica_id", path + ".replica_id", 0, 1, 255);
        if (r.ok() && (!common::ValidRegionName(p.name) || p.name == c.name ||
                       !names.insert(p.name).second)) {
          r.Fail(path + ".name", "1..32 of [A-Za-z0-9-], unique, not region.name");
        }
        // Compared exactly with customers' residencies: "EU" would never match "eu".
        if (r.ok() && !common::ValidJurisdiction(p.jurisdiction)) {
          r.Fail(path + ".jurisdiction", "2..16 lowercase letters, like a residency (e.g. eu)");
        }
        if (r.ok() && (p.replica_id == c.replica_id ||
                       (p.replica_id != 0 && !ids.insert(p.replica_id).second))) {
          r.Fail(path + ".replica_id", "unique, and not region.replica_id");
        }
        if (r.ok() && !common::ValidHttpUrl(p.public_url)) {
          r.Fail(path + ".url",
                 "an http:// or https:// URL with a host (customers are sent there)");
        }
        c.peers.push_back(std::move(p));
      }
    }
  }

  const std::string hold =
      r.String(root, "hold_new_databases", "hold_new_databases", false, "true");
  if (hold == "true" || hold == "false") {
    c.hold_new_databases = hold == "true";
  } else {
    r.Fail("hold_new_databases", absl::StrCat("must be true or false, got '", hold, "'"));
  }
  // Only the replicator releases the hold, through listen.grpc: without it, a region with new
  // databases would answer 503 to every cart and stock change for good.
  if (r.ok() && c.hold_new_databases && !c.peers.empty() && c.grpc.host.empty()) {
    r.Fail("hold_new_databases",
           "with peers and no listen.grpc nothing could release the hold on new databases: set "
           "listen.grpc (and run the replicator) or hold_new_databases: false");
  }
  std::string durability = r.String(root, "durability", "durability", false, "async");
  if (durability == "async") {
    c.durability = Durability::kAsync;
  } else if (durability == "sync-peer") {
    c.durability = Durability::kSyncPeer;
  } else {
    r.Fail("durability", absl::StrCat("must be async or sync-peer, got '", durability, "'"));
  }

  YAML::Node repl = r.SwitchMap(root, "replication", "replication");
  if (repl) {
    r.OnlyKeys(repl, "replication",
               {"replicator", "rights_wait_ms", "sync_peer_timeout_ms", "lease_margin_ms"});
    c.replication.enabled = true;
    c.replication.replicator = r.DialHostPort(repl, "replicator", "replication.replicator", false);
    c.replication.rights_wait_ms =
        r.Integer<int>(repl, "rights_wait_ms", "replication.rights_wait_ms", 200, 0, 60000);
    c.replication.sync_peer_timeout_ms = r.Integer<int>(
        repl, "sync_peer_timeout_ms", "replication.sync_peer_timeout_ms", 2000, 1, 600000);
    c.replication.lease_margin_ms =
        r.Integer<int>(repl, "lease_margin_ms", "replication.lease_margin_ms", 100, 0, 60000);
  }
  // Leases, rights and fences come from the replicator through listen.grpc: without it every
  // order would wait for a lease that never comes.
  if (r.ok() && c.replication.enabled && c.grpc.host.empty()) {
    r.Fail("replication", "needs listen.grpc (the replicator pushes leases and rights there)");
  }
  if (r.ok() && c.durability == Durability::kSyncPeer && !c.replication.enabled) {
    r.Fail("durability", "sync-peer needs a replication section (there is no peer to wait for)");
  }
  // A sync-peer checkout waits for an ack from a peer named by its replica id: with none, every
  // checkout would wait out sync_peer_timeout_ms and fall back to async.
  if (r.ok() && c.durability == Durability::kSyncPeer &&
      std::none_of(c.peers.begin(), c.peers.end(),
                   [](const PeerRegion& p) { return p.replica_id != 0; })) {
    r.Fail("durability",
           "sync-peer needs a peer with a replica_id (peers[].replica_id): acks "
           "count only from peers named by their replica id");
  }

  YAML::Node lim = r.Map(root, "limits", "limits", false);
  r.OnlyKeys(lim, "limits",
             {"max_body_bytes", "http_threads", "rate_limit_per_s", "rate_limit_burst",
              "reservation_ttl_s", "max_cart_lines", "max_line_quantity", "max_cart_bytes",
              "account_lookups", "max_connections_per_client", "login_attempts_per_account",
              "login_attempt_refill_s", "sweep_interval_s"});
  c.max_body_bytes =
      r.Integer<size_t>(lim, "max_body_bytes", "limits.max_body_bytes", 1 << 20, 1024, 64 << 20);
  c.http_threads = r.Integer<int>(lim, "http_threads", "limits.http_threads", 8, 1, 256);
  c.max_connections_per_client = r.Integer<int>(lim, "max_connections_per_client",
                                                "limits.max_connections_per_client", 256, 0, 1024);
  c.account_lookups = r.Integer<int>(lim, "account_lookups", "limits.account_lookups",
                                     std::max(1, c.http_threads / 2), 1, 256);
  if (r.ok() && c.account_lookups > c.http_threads) {
    r.Fail("limits.account_lookups",
           absl::StrCat("at most limits.http_threads (", c.http_threads,
                        "): lookups waiting for the peers must leave threads to serve the rest"));
  }
  c.rate_limit_per_s = r.Number(lim, "rate_limit_per_s", "limits.rate_limit_per_s", 50, 0.1, 1e7);
  c.rate_limit_burst = r.Number(lim, "rate_limit_burst", "limits.rate_limit_burst", 100, 1, 1e7);
  c.login_attempts_per_account = r.Integer<int>(
      lim, "login_attempts_per_account", "limits.login_attempts_per_account", 10, 0, 1000000);
  c.login_attempt_refill_s =
      r.Integer<int>(lim, "login_attempt_refill_s", "limits.login_attempt_refill_s", 60, 1, 86400);
  c.reservation_ttl_s =
      r.Integer<int>(lim, "reservation_ttl_s", "limits.reservation_ttl_s", 900, 1, 7 * 86400);
  c.sweep_interval_s =
      r.Integer<int>(lim, "sweep_interval_s", "limits.sweep_interval_s", 5, 0, 3600);
  c.max_cart_lines = r.Integer<int>(lim, "max_cart_lines", "limits.max_cart_lines", 100, 1, 10000);
  c.max_line_quantity =
      r.Integer<int>(lim, "max_line_quantity", "limits.max_line_quantity", 999, 1, 1000000);
  // At most 2 MiB: well inside the decoders' 200,000 entries (about 13 bytes each).
  c.max_cart_bytes =
      r.Integer<size_t>(lim, "max_cart_bytes", "limits.max_cart_bytes", 1 << 20, 1024, 2 << 20);

  if (!r.ok()) return r.status();
  return c;
}

}  // namespace

std::string_view DurabilityName(Durability d) {
  return d == Durability::kSyncPeer ? "sync-peer" : "async";
}

absl::StatusOr<RegionConfig> ParseConfig(std::string_view yaml, std::string_view source) {
  return CatchYamlErrors(source, [&] { return ParseUnguarded(yaml, source); });
}

absl::StatusOr<RegionConfig> LoadConfigFile(const std::string& path) {
  auto text = common::ReadRegularFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path);
}

}  // namespace meridian::region
