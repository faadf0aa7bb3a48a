#pragma once

// meridian-failover's configuration, read from YAML and validated before anything starts. Every
// error is an InvalidArgument naming the file and the field ("failover.yaml: regions[1].url: must
// be an http:// or https:// URL"); a config with an error starts nothing. failover/README.md
// documents every field.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/yaml_reader.h"
#include "failover/decision.h"
#include "failover/probe.h"

namespace meridian::failover {

struct RegionEndpoints {
  std::string name;        // [a-z0-9-], unique
  std::string url;         // the region's base URL (readyz: url + "/readyz"; admin views)
  std::string replicator;  // the replicator's operator API base URL (coordination.admin)
  std::string metrics;     // the replicator's Prometheus URL (http://host:port/metrics)
  std::string controller;  // that region's meridian-failover base URL (required for peers)
  // SHA-256 (64 lowercase hex digits) of that region's controller_token: a peer's observation is
  // taken only with the token whose digest is its `from` region's (required for peers).
  std::string controller_token_sha256;
};

struct FailoverConfig {
  std::string region;  // this controller's region
  Endpoint listen{"127.0.0.1", 0};
  int http_threads = 2;
  std::vector<RegionEndpoints> regions;  // every region, this one included
  std::vector<std::string> geo;          // meridian-geo base URLs (health hooks); may be empty
  int probe_interval_ms = 500;
  int probe_timeout_ms = 400;
  uint32_t lost_after_checks = 3;
  uint32_t recover_after_checks = 10;
  int64_t observation_ttl_ms = 1500;  // default: 3 * probe_interval_ms
  CatchUpPolicy catch_up;
  int64_t handback_timeout_ms = 60000;       // give up asking for the lease back after this
  int64_t geo_reconcile_interval_ms = 5000;  // re-check geo overrides of lost regions this often
  std::string audit_file;                    // appended to; empty: log only
  std::string operator_token;
  // This controller's own credential: it sends its observations with it, and no other controller
  // holds it (they hold its digest). Required when there are other regions; not the operator token.
  std::string controller_token;

  [[nodiscard]] DeciderConfig decider_config() const;
  [[nodiscard]] const RegionEndpoints* Find(std::string_view name) const;
  // The other region whose controller_token_sha256 is the digest of `token`, or nullptr. Compares
  // with every peer's digest in time that does not depend on which one matches.
  [[nodiscard]] const RegionEndpoints* PeerControllerOfToken(std::string_view token) const;
};

// SHA-256 of `token` in 64 lowercase hex digits: what regions[].controller_token_sha256 holds
// (`printf %s "$token" | sha256sum` gives the same).
[[nodiscard]] std::string TokenSha256Hex(std::string_view token);

// Parses and validates. `source` names the file in errors; `base_dir` resolves relative paths.
[[nodiscard]] absl::StatusOr<FailoverConfig> ParseConfig(std::string_view yaml,
                                                         std::string_view source,
                                                         std::string_view base_dir);
[[nodiscard]] absl::StatusOr<FailoverConfig> LoadConfigFile(const std::string& path);

}  // namespace meridian::failover
