#include "failover/drill_cluster.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "absl/strings/str_cat.h"

namespace meridian::failover::drill {
namespace {

std::string Get(const std::vector<std::pair<std::string, std::string>>& env,
                const std::string& key) {
  std::string v;
  for (const auto& [k, val] : env)
    if (k == key) v = val;
  return v;
}

// Loads a YAML file; errors name the file (yaml-cpp throws: caught here, never let out).
absl::StatusOr<YAML::Node> LoadYaml(const std::string& path) {
  try {
    return YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

std::string Scalar(const YAML::Node& n) {
  try {
    return n && n.IsScalar() ? n.as<std::string>() : std::string();
  } catch (const YAML::Exception&) {
    return std::string();
  }
}

}  // namespace

const DrillRegion* DrillCluster::Find(const std::string& name) const {
  for (const DrillRegion& r : regions)
    if (r.name == name) return &r;
  return nullptr;
}

absl::StatusOr<DrillCluster> LoadDrillCluster(const std::string& data_dir) {
  auto endpoints = LoadClusterFromDataDir(data_dir);
  if (!endpoints.ok()) return endpoints.status();
  DrillCluster c;
  c.data_dir = data_dir;
  c.token = endpoints->token;
  if (endpoints->regions.size() < 3) {
    return absl::FailedPreconditionError(
        absl::StrCat(data_dir, " holds a ", endpoints->regions.size(),
                     "-region cluster; the drill needs three (deploy/meridian up --regions 3)"));
  }
  auto cluster_env = ReadEnvFile(data_dir + "/cluster.env");
  if (!cluster_env.ok()) return cluster_env.status();
  c.links = Get(*cluster_env, "LINKS_MODE");
  if (c.links.empty()) c.links = "proxy";
  if (!endpoints->geo.empty()) c.geo = endpoints->geo.front();
  if (!endpoints->dns.empty()) {
    size_t colon = endpoints->dns.rfind(':');
    c.dns_host = endpoints->dns.substr(0, colon);
    c.dns_port = std::atoi(endpoints->dns.c_str() + colon + 1);
  }
  if (c.geo.empty() || c.dns_port <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(data_dir,
                     "/geo/ports.env: no GEO_PORT and DNS_PORT: the cluster runs without GeoDNS "
                     "(deploy/meridian up --regions 3 starts meridian-geo and pdns_server)"));
  }
  for (const ClusterRegion& e : endpoints->regions) {
    DrillRegion r;
    r.name = e.name;
    r.dir = data_dir + "/" + e.name;
    r.url = e.url;
    r.replicator = e.replicator;
    r.metrics = e.metrics;
    r.controller = e.controller;
    auto region_yaml = LoadYaml(r.dir + "/region.yaml");
    if (!region_yaml.ok()) return region_yaml.status();
    const YAML::Node& y = *region_yaml;
    if (y["postgres"] && y["postgres"]["shards"] && y["postgres"]["shards"].IsSequence()) {
      for (const YAML::Node& s : y["postgres"]["shards"]) r.dsns.push_back(Scalar(s));
    }
    if (r.dsns.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(r.dir, "/region.yaml: no postgres.shards"));
    }
    std::string durability = Scalar(y["durability"]);
    if (c.durability.empty()) c.durability = durability.empty() ? "async" : durability;
    auto repl_yaml = LoadYaml(r.dir + "/replicator.yaml");
    if (repl_yaml.ok()) {
      const YAML::Node& ry = *repl_yaml;
      const YAML::Node coordination = ry["coordination"];
      if (coordination && coordination["leases"] && coordination["leases"]["ttl_ms"]) {
        std::string ttl = Scalar(coordination["leases"]["ttl_ms"]);
        if (!ttl.empty()) c.lease_ttl_ms = std::atoll(ttl.c_str());
      }
      // The replicator's own config is authoritative for where it listens: deploy/meridian's
      // ports.env can lack ADMIN_PORT (or carry another region's) for all but the first region.
      if (coordination && !Scalar(coordination["admin"]).empty()) {
        r.replicator = "http://" + Scalar(coordination["admin"]);
      }
      if (!Scalar(ry["metrics"]).empty()) {
        r.metrics = "http://" + Scalar(ry["metrics"]) + "/metrics";
      }
    }
    // Likewise the controller's: its `listen`.
    if (auto fy = LoadYaml(r.dir + "/failover.yaml"); fy.ok() && !Scalar((*fy)["listen"]).empty()) {
      r.controller = "http://" + Scalar((*fy)["listen"]);
    }
    if (r.replicator.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(r.dir, "/ports.env: no ADMIN_PORT (a replicator with leases is needed)"));
    }
    c.regions.push_back(std::move(r));
  }

  // The GeoDNS config: service name, addresses, customers' subnets.
  namespace fs = std::filesystem;
  std::string geo_yaml = data_dir + "/geo/geo.yaml";
  std::error_code ec;
  if (!fs::exists(geo_yaml, ec)) {
    geo_yaml.clear();
    for (const auto& entry : fs::directory_iterator(data_dir + "/geo", ec)) {
      if (entry.path().extension() == ".yaml") {
        geo_yaml = entry.path().string();
        break;
      }
    }
  }
  if (geo_yaml.empty()) {
    return absl::NotFoundError(absl::StrCat(data_dir, "/geo/geo.yaml: no GeoDNS config found"));
  }
  c.geo_config_path = geo_yaml;
  auto geo = LoadYaml(geo_yaml);
  if (!geo.ok()) return geo.status();
  const YAML::Node& g = *geo;
  if (g["zone"]) {
    c.service_name = Scalar(g["zone"]["service_name"]);
    if (c.service_name.empty()) c.service_name = Scalar(g["zone"]["name"]);
  }
  if (c.service_name.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(geo_yaml, ": no zone.service_name or zone.name"));
  }
  if (g["regions"] && g["regions"].IsSequence()) {
    for (const YAML::Node& gr : g["regions"]) {
      std::string name = Scalar(gr["name"]);
      for (DrillRegion& r : c.regions) {
        if (r.name != name || !gr["addresses"] || !gr["addresses"].IsSequence()) continue;
        for (const YAML::Node& a : gr["addresses"]) r.dns_addresses.push_back(Scalar(a));
      }
    }
  }
  if (g["locations"] && g["locations"].IsSequence()) {
    for (const YAML::Node& row : g["locations"]) {
      std::string region = Scalar(row["region"]);
      std::string cidr = Scalar(row["cidr"]);
      for (DrillRegion& r : c.regions) {
        if (r.name == region && cidr.find(':') == std::string::npos) r.subnets.push_back(cidr);
      }
    }
  }
  for (const DrillRegion& r : c.regions) {
    if (r.dns_addresses.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(geo_yaml, ": region ", r.name, " has no addresses"));
    }
    if (r.subnets.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(geo_yaml, ": no IPv4 locations row names region ", r.name,
                       " (the drill needs each region's customers' client subnet)"));
    }
  }
  return c;
}

}  // namespace meridian::failover::drill
