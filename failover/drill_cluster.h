#pragma once

// What the drill needs to know about a deploy/meridian cluster, read from its data folder:
// meridianctl's endpoints (LoadClusterFromDataDir), plus each region's pid files, database DSNs
// (region.yaml), durability and lease TTL (region.yaml, replicator.yaml), the links mode
// (cluster.env), and from the GeoDNS config the service name, each region's addresses and the
// client subnets of each region's customers (locations rows naming a region).

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "failover/ctl.h"

namespace meridian::failover::drill {

struct DrillRegion {
  std::string name;
  std::string dir;                         // DATA/<name>
  std::string url;                         // customer API
  std::string replicator;                  // operator API base URL
  std::string metrics;                     // replicator /metrics URL
  std::string controller;                  // meridian-failover base URL ("" when none)
  std::vector<std::string> dsns;           // shard databases (orders, carts), from region.yaml
  std::vector<std::string> dns_addresses;  // what GeoDNS answers for it
  std::vector<std::string> subnets;        // its customers' client subnets
};

struct DrillCluster {
  std::string data_dir;
  std::string token;
  std::vector<DrillRegion> regions;
  std::string geo;       // meridian-geo base URL ("" when none)
  std::string dns_host;  // pdns_server
  int dns_port = 0;
  std::string service_name;  // e.g. shop.example.test
  std::string links;         // netns | proxy
  std::string durability;    // sync-peer | async
  int64_t lease_ttl_ms = 6000;
  std::string geo_config_path;

  [[nodiscard]] const DrillRegion* Find(const std::string& name) const;
};

// Reads DATA. The GeoDNS config is DATA/geo/geo.yaml (or the first *.yaml in DATA/geo/): its
// `zone.service_name` (else `zone.name`), `regions[].addresses` and `locations[]` rows with a
// `region` give the service name, addresses and subnets. NotFound / InvalidArgument naming the
// file for anything missing or malformed; FailedPrecondition when the cluster has no GeoDNS.
[[nodiscard]] absl::StatusOr<DrillCluster> LoadDrillCluster(const std::string& data_dir);

}  // namespace meridian::failover::drill
