#pragma once

// meridian-geo's configuration, read from YAML and validated before anything starts. Every error
// is an InvalidArgument naming the file and the field ("geo.yaml: regions[1].lat: must be between
// -90 and 90, got 123"); a config with an error starts nothing. geo/README.md documents each field.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/yaml_reader.h"
#include "geo/cidr.h"
#include "geo/decision.h"
#include "geo/health.h"

namespace meridian::geo {

struct RegionConfig {
  std::string name;                  // [a-z0-9-], 1..63 characters, unique
  std::vector<IpAddress> addresses;  // answered as A (IPv4) / AAAA (IPv6); at least one
  GeoPoint location;
  std::string readyz_url;  // http(s)://...; empty: no probes, health from hooks only
};

struct NameServerConfig {
  std::string name;                  // FQDN, lowercase, trailing dot
  std::vector<IpAddress> addresses;  // glue, answered only when `name` is inside the zone
};

struct ZoneConfig {
  std::string name;            // FQDN, lowercase, trailing dot: "shop.example.test."
  std::string service_name;    // at or under `name`; default: `name`
  uint32_t ttl_s = 300;        // TTL of SOA, NS and glue records
  std::string soa_primary;     // default: the first name server
  std::string soa_hostmaster;  // default: "hostmaster.<zone>"
  uint32_t soa_serial = 1;
  uint32_t soa_refresh_s = 3600;
  uint32_t soa_retry_s = 600;
  uint32_t soa_expire_s = 604800;
  uint32_t soa_minimum_s = 60;                // negative-answer TTL
  std::vector<NameServerConfig> nameservers;  // at least one
};

// A row of the client table: a prefix and where its clients are (a point, or a region's point).
struct LocationConfig {
  Cidr cidr;
  std::optional<size_t> region;  // index into GeoConfig::regions; else `point`
  GeoPoint point;
};

struct GeoConfig {
  Endpoint listen{"127.0.0.1", 8053};
  std::string dns_path = "/dns";
  int http_threads = 4;
  uint32_t answer_ttl_s = 5;
  ZoneConfig zone;
  std::vector<RegionConfig> regions;  // at least one, at most kRegionsMax
  // health
  int probe_interval_ms = 500;
  int probe_timeout_ms = 400;  // <= probe_interval_ms
  HealthPolicy health;
  // last resort (no region healthy)
  LastResort last_resort = LastResort::kAllRegions;
  size_t last_resort_region = 0;
  uint32_t last_resort_ttl_s = 1;
  // locating clients
  std::vector<LocationConfig> locations;
  GeoPoint default_location;             // for clients no source locates
  std::optional<size_t> default_region;  // when default_location names a region
  std::string maxmind_db;                // path to a .mmdb; empty: none
  // operator endpoints
  std::string operator_token;  // >= 16 bytes; from operator_token or operator_token_file

  [[nodiscard]] DecisionPolicy decision_policy() const {
    return DecisionPolicy{answer_ttl_s, last_resort, last_resort_region, last_resort_ttl_s};
  }
};

inline constexpr size_t kRegionsMax = 64;
inline constexpr size_t kAddressesPerRegionMax = 16;
inline constexpr size_t kLocationsMax = 1'000'000;

// Parses and validates. `source` names the file in messages; relative paths in the config
// (operator_token_file, maxmind_db) are taken relative to `base_dir` (empty: the working
// directory). Reads operator_token_file.
[[nodiscard]] absl::StatusOr<GeoConfig> ParseConfig(std::string_view yaml,
                                                    std::string_view source = "config",
                                                    std::string_view base_dir = "");
[[nodiscard]] absl::StatusOr<GeoConfig> LoadConfigFile(const std::string& path);

// Lowercases and adds the trailing dot; empty optional when `name` is not a valid DNS name
// (labels of 1..63 characters from [a-z0-9_-], 253 characters at most without the final dot).
[[nodiscard]] std::optional<std::string> NormalizeDnsName(std::string_view name);

}  // namespace meridian::geo
