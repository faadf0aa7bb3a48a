#pragma once

// meridian-replicator's configuration (YAML), checked before anything starts; errors name the
// field. See replication/README.md for an example.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/yaml_reader.h"
#include "replication/lease.h"
#include "replication/rights.h"

namespace meridian::replication {

struct Peer {
  std::string name;          // region name; must match the CN of its certificate
  std::string jurisdiction;  // what its residency filter allows
  uint32_t replica_id = 0;
  Endpoint address;  // where its replicator listens (or the link emulator in front of it)
};

struct ReplicatorConfig {
  std::string region;
  std::string jurisdiction;
  uint32_t replica_id = 0;
  Endpoint region_grpc;  // this region's internal API
  // The region's security.internal_token (from region_token_file): sent on every call to
  // region_grpc and asked of every call to `control`; empty: none (`control` must then be a
  // loopback address).
  std::string region_token;
  Endpoint listen;   // peers dial here
  Endpoint metrics;  // Prometheus /metrics; port 0 = off
  // mutual TLS: this region's key and certificate, and the CA that signs every region's (paths
  // as given, or resolved against the config file's folder when relative).
  std::string tls_ca, tls_cert, tls_key;
  std::vector<Peer> peers;
  // shipping
  int batch_max_records = 512;
  int batch_max_bytes = 256 << 10;
  int64_t max_inflight_bytes = 8 << 20;
  int batch_linger_ms = 5;  // under load, wait this long between outbox reads
  int heartbeat_ms = 500;
  int peer_timeout_ms = 3000;  // no frame for this long: the stream is dead
  // The slowest link between two regions this config is built for. The silence watchdog hears
  // only whole frames, so a batch must cross such a link well within peer_timeout_ms (the config
  // refuses a batch_max_bytes that would take more than half of it).
  int min_link_mbit = 10;
  int backoff_min_ms = 100;
  int backoff_max_ms = 5000;
  int truncate_interval_ms = 5000;
  // The deadline of one TruncateOutbox call (the region bounds its DELETE by it).
  int truncate_timeout_ms = 10000;
  // Keys of each peer's applied records kept per origin database (RecentKeys), so that after a
  // loss a survivor sends another only the documents it lacks; 0 = keep none (always send every
  // document). About 100 bytes each.
  int recent_keys_per_stream = 50000;
  // The replicator's own folder (made if missing): the recent keys, one file per peer, and the
  // survivors' exchanges done (done-exchanges), so that a restarted replicator still knows them.
  // Empty: they are kept in memory only.
  std::string state_dir;
  // coordination (issue 5): leases, rights, takeover sync, forwarding, operator API
  bool coordination = false;
  Endpoint control;            // local API for the region (order forwarding); port 0 = off
  Endpoint admin;              // operator HTTP API (status, handback); port 0 = off
  std::string operator_token;  // bearer token of the admin API (from operator_token_file)
  LeaseConfig leases;
  RightsConfig rights;
  // coordination.account_questions: `blind` (false, the default) or `blind-or-named` (true): for
  // a rolling upgrade from a replicator before blind account questions, such a peer is asked again
  // with the id, and its questions naming an account without a password are answered
  // (account_questions.h).
  bool account_questions_named = false;
  // A two-region deployment's witness (meridian-witness): the third lease vote. Optional.
  std::optional<Peer> witness;
};

// Parses and validates; never throws. `source` names the file in errors. Relative paths
// (tls.ca, tls.cert, tls.key, coordination.operator_token_file) are resolved against `base_dir`,
// the config file's folder ("" leaves them as they are); the token file is read here.
[[nodiscard]] absl::StatusOr<ReplicatorConfig> ParseReplicatorConfig(
    std::string_view yaml, std::string_view source, std::string_view base_dir = "");
// Reads the file and parses it, with paths relative to the file's folder.
[[nodiscard]] absl::StatusOr<ReplicatorConfig> LoadReplicatorConfig(const std::string& path);

}  // namespace meridian::replication
