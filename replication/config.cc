#include "replication/config.h"

#include <fstream>
#include <set>
#include <sstream>

namespace meridian::replication {
namespace {

bool ValidJurisdiction(const std::string& j) {
  if (j.size() < 2 || j.size() > 16) return false;
  for (char c : j)
    if (c < 'a' || c > 'z') return false;
  return true;
}

}  // namespace

absl::StatusOr<ReplicatorConfig> ParseReplicatorConfig(std::string_view yaml,
                                                       std::string_view source) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(source), ": not valid YAML: ", e.what()));
  }
  if (!root.IsMap())
    return absl::InvalidArgumentError(absl::StrCat(std::string(source), ": not a mapping"));
  YamlReader r{std::string(source)};
  r.OnlyKeys(root, "",
             {"region", "jurisdiction", "replica_id", "region_grpc", "listen", "metrics", "tls",
              "peers", "shipping"});
  ReplicatorConfig c;
  c.region = r.String(root, "region", "region", true);
  c.jurisdiction = r.String(root, "jurisdiction", "jurisdiction", true);
  if (r.ok() && !ValidJurisdiction(c.jurisdiction)) {
    r.Fail("jurisdiction", "2..16 lowercase letters");
  }
  c.replica_id = r.Integer<uint32_t>(root, "replica_id", "replica_id", 0, 1, 255);
  if (r.ok() && c.replica_id == 0) r.Fail("replica_id", "missing (1..255)");
  c.region_grpc = r.HostPort(root, "region_grpc", "region_grpc", true);
  c.listen = r.HostPort(root, "listen", "listen", true);
  c.metrics = r.HostPort(root, "metrics", "metrics", false);
  YAML::Node tls = r.Map(root, "tls", "tls", true);
  r.OnlyKeys(tls, "tls", {"ca", "cert", "key"});
  c.tls_ca = r.String(tls, "ca", "tls.ca", true);
  c.tls_cert = r.String(tls, "cert", "tls.cert", true);
  c.tls_key = r.String(tls, "key", "tls.key", true);
  YAML::Node ship = r.Map(root, "shipping", "shipping", false);
  r.OnlyKeys(ship, "shipping",
             {"batch_max_records", "batch_max_bytes", "max_inflight_bytes", "batch_linger_ms",
              "heartbeat_ms", "peer_timeout_ms", "backoff_min_ms", "backoff_max_ms",
              "truncate_interval_ms"});
  c.batch_max_records =
      r.Integer<int>(ship, "batch_max_records", "shipping.batch_max_records", 512, 1, 10000);
  c.batch_max_bytes =
      r.Integer<int>(ship, "batch_max_bytes", "shipping.batch_max_bytes", 256 << 10, 1024, 8 << 20);
  c.max_inflight_bytes =
      r.Integer<int64_t>(ship, "max_inflight_bytes", "shipping.max_inflight_bytes", 8 << 20,
                         64 << 10, int64_t{1} << 32);
  c.batch_linger_ms =
      r.Integer<int>(ship, "batch_linger_ms", "shipping.batch_linger_ms", 5, 0, 1000);
  c.heartbeat_ms = r.Integer<int>(ship, "heartbeat_ms", "shipping.heartbeat_ms", 500, 50, 60000);
  c.peer_timeout_ms =
      r.Integer<int>(ship, "peer_timeout_ms", "shipping.peer_timeout_ms", 3000, 200, 600000);
  c.backoff_min_ms =
      r.Integer<int>(ship, "backoff_min_ms", "shipping.backoff_min_ms", 100, 1, 60000);
  c.backoff_max_ms =
      r.Integer<int>(ship, "backoff_max_ms", "shipping.backoff_max_ms", 5000, 1, 600000);
  c.truncate_interval_ms = r.Integer<int>(ship, "truncate_interval_ms",
                                          "shipping.truncate_interval_ms", 5000, 100, 3600000);
  if (r.ok() && c.peer_timeout_ms <= c.heartbeat_ms) {
    r.Fail("shipping.peer_timeout_ms", "must be greater than heartbeat_ms");
  }
  if (r.ok() && c.backoff_max_ms < c.backoff_min_ms) {
    r.Fail("shipping.backoff_max_ms", "must be at least backoff_min_ms");
  }
  YAML::Node peers = root["peers"];
  if (!peers || !peers.IsSequence() || peers.size() == 0) {
    r.Fail("peers", "a non-empty list of regions is required");
  } else {
    std::set<std::string> names;
    std::set<uint32_t> ids{c.replica_id};
    for (size_t i = 0; i < peers.size(); ++i) {
      std::string path = absl::StrCat("peers[", i, "]");
      YAML::Node n = peers[i];
      if (!n.IsMap()) {
        r.Fail(path, "must be a mapping");
        break;
      }
      r.OnlyKeys(n, path, {"name", "jurisdiction", "replica_id", "address"});
      Peer p;
      p.name = r.String(n, "name", path + ".name", true);
      p.jurisdiction = r.String(n, "jurisdiction", path + ".jurisdiction", true);
      if (r.ok() && !ValidJurisdiction(p.jurisdiction)) {
        r.Fail(path + ".jurisdiction", "2..16 lowercase letters");
      }
      p.replica_id = r.Integer<uint32_t>(n, "replica_id", path + ".replica_id", 0, 1, 255);
      p.address = r.HostPort(n, "address", path + ".address", true);
      if (r.ok() && (p.name == c.region || !names.insert(p.name).second)) {
        r.Fail(path + ".name", "must be unique and not this region's own");
      }
      if (r.ok() && (p.replica_id == 0 || !ids.insert(p.replica_id).second)) {
        r.Fail(path + ".replica_id", "1..255, unique, not this region's own");
      }
      c.peers.push_back(std::move(p));
    }
  }
  if (!r.ok()) return r.status();
  return c;
}

absl::StatusOr<ReplicatorConfig> LoadReplicatorConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseReplicatorConfig(ss.str(), path);
}

}  // namespace meridian::replication
