#include "replication/config.h"

#include <cctype>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"

namespace meridian::replication {
namespace {

using common::ValidJurisdiction;
using common::ValidRegionName;

absl::StatusOr<ReplicatorConfig> ParseUnguarded(std::string_view yaml, std::string_view source,
                                                std::string_view base_dir) {
  auto loaded = LoadConfigYaml(yaml, source);
  if (!loaded.ok()) return loaded.status();
  const YAML::Node root = *std::move(loaded);
  YamlReader r{std::string(source)};
  r.OnlyKeys(root, "",
             {"region", "jurisdiction", "replica_id", "region_grpc", "listen", "metrics", "tls",
              "peers", "shipping", "coordination", "state_dir", "region_token_file"});
  ReplicatorConfig c;
  c.region = r.String(root, "region", "region", true);
  if (r.ok() && !ValidRegionName(c.region)) r.Fail("region", "1..32 of [A-Za-z0-9-]");
  c.jurisdiction = r.String(root, "jurisdiction", "jurisdiction", true);
  if (r.ok() && !ValidJurisdiction(c.jurisdiction)) {
    r.Fail("jurisdiction", "2..16 lowercase letters");
  }
  c.replica_id = r.Integer<uint32_t>(root, "replica_id", "replica_id", 0, 1, 255);
  if (r.ok() && c.replica_id == 0) r.Fail("replica_id", "missing (1..255)");
  c.region_grpc = r.DialHostPort(root, "region_grpc", "region_grpc", true);
  // A token from the file `key` of `node` names (relative to the config's folder): "" without
  // one, a failure naming `path` when it cannot be read or is no usable token.
  auto token_from_file = [&](const YAML::Node& node, const char* key, const std::string& path) {
    const std::string file = common::ResolveConfigPath(base_dir, r.String(node, key, path, false));
    if (!r.ok() || file.empty()) return std::string();
    auto token = common::ReadOperatorTokenFile(file);
    if (!token.ok()) {
      r.Fail(path, std::string(token.status().message()));
      return std::string();
    }
    return *std::move(token);
  };
  // The region's security.internal_token (common/grpc_auth.h): sent on every call to region_grpc,
  // and asked of the region's calls to coordination.control.
  c.region_token = token_from_file(root, "region_token_file", "region_token_file");
  c.listen = r.HostPort(root, "listen", "listen", true);
  c.metrics = r.HostPort(root, "metrics", "metrics", false);
  YAML::Node tls = r.Map(root, "tls", "tls", true);
  r.OnlyKeys(tls, "tls", {"ca", "cert", "key"});
  c.tls_ca = common::ResolveConfigPath(base_dir, r.String(tls, "ca", "tls.ca", true));
  c.tls_cert = common::ResolveConfigPath(base_dir, r.String(tls, "cert", "tls.cert", true));
  c.tls_key = common::ResolveConfigPath(base_dir, r.String(tls, "key", "tls.key", true));
  c.state_dir =
      common::ResolveConfigPath(base_dir, r.String(root, "state_dir", "state_dir", false));
  YAML::Node ship = r.Map(root, "shipping", "shipping", false);
  r.OnlyKeys(
      ship, "shipping",
      {"batch_max_records", "batch_max_bytes", "max_inflight_bytes", "batch_linger_ms",
       "heartbeat_ms", "peer_timeout_ms", "min_link_mbit", "backoff_min_ms", "backoff_max_ms",
       "truncate_interval_ms", "truncate_timeout_ms", "recent_keys_per_stream"});
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
  c.min_link_mbit = r.Integer<int>(ship, "min_link_mbit", "shipping.min_link_mbit", 10, 1, 1000000);
  c.backoff_min_ms =
      r.Integer<int>(ship, "backoff_min_ms", "shipping.backoff_min_ms", 100, 1, 60000);
  c.backoff_max_ms =
      r.Integer<int>(ship, "backoff_max_ms", "shipping.backoff_max_ms", 5000, 1, 600000);
  c.truncate_interval_ms = r.Integer<int>(ship, "truncate_interval_ms",
                                          "shipping.truncate_interval_ms", 5000, 100, 3600000);
  c.truncate_timeout_ms = r.Integer<int>(ship, "truncate_timeout_ms",
                                         "shipping.truncate_timeout_ms", 10000, 100, 600000);
  c.recent_keys_per_stream = r.Integer<int>(ship, "recent_keys_per_stream",
                                            "shipping.recent_keys_per_stream", 50000, 0, 10000000);
  if (r.ok() && c.peer_timeout_ms <= c.heartbeat_ms) {
    r.Fail("shipping.peer_timeout_ms", "must be greater than heartbeat_ms");
  }
  // A full batch's time on the slowest link, in ms: bits / (Mbit/s * 1,000).
  const int64_t crossing_ms = (int64_t{c.batch_max_bytes} * 8 + c.min_link_mbit * 1000 - 1) /
                              (int64_t{c.min_link_mbit} * 1000);
  if (r.ok() && 2 * crossing_ms > c.peer_timeout_ms) {
    r.Fail("shipping.batch_max_bytes",
           absl::StrCat(c.batch_max_bytes, " bytes take ", crossing_ms, " ms to cross a ",
                        c.min_link_mbit,
                        " Mbit/s link (shipping.min_link_mbit), more than half "
                        "of peer_timeout_ms (",
                        c.peer_timeout_ms,
                        "): the watchdog hears whole "
                        "frames only, so the receiver would cut the stream mid-batch. Lower "
                        "batch_max_bytes, raise peer_timeout_ms, or raise min_link_mbit if every "
                        "link is faster"));
  }
  if (r.ok() && c.backoff_max_ms < c.backoff_min_ms) {
    r.Fail("shipping.backoff_max_ms", "must be at least backoff_min_ms");
  }
  YAML::Node co = r.SwitchMap(root, "coordination", "coordination");
  if (co) {
    c.coordination = true;
    r.OnlyKeys(co, "coordination",
               {"control", "admin", "operator_token_file", "leases", "rights", "witness",
                "account_questions"});
    const std::string questions =
        r.String(co, "account_questions", "coordination.account_questions", false, "blind");
    if (questions == "blind" || questions == "blind-or-named") {
      c.account_questions_named = questions == "blind-or-named";
    } else {
      r.Fail("coordination.account_questions",
             absl::StrCat("blind or blind-or-named (only while peers from before blind questions "
                          "run), got '",
                          questions, "'"));
    }
    YAML::Node w = r.SwitchMap(co, "witness", "coordination.witness");
    if (w) {
      r.OnlyKeys(w, "coordination.witness", {"name", "replica_id", "address"});
      Peer wp;
      wp.name = r.String(w, "name", "coordination.witness.name", true);
      wp.jurisdiction = "none";
      wp.replica_id =
          r.Integer<uint32_t>(w, "replica_id", "coordination.witness.replica_id", 0, 1, 255);
      wp.address = r.DialHostPort(w, "address", "coordination.witness.address", true);
      if (r.ok() && (!ValidRegionName(wp.name) || wp.name == c.region)) {
        r.Fail("coordination.witness.name", "1..32 of [A-Za-z0-9-], not this region's own");
      }
      if (r.ok() && (wp.replica_id == 0 || wp.replica_id == c.replica_id)) {
        r.Fail("coordination.witness.replica_id", "1..255, not this region's own");
      }
      c.witness = wp;
    }
    c.control = r.HostPort(co, "control", "coordination.control", false);
    c.admin = r.HostPort(co, "admin", "coordination.admin", false);
    c.operator_token =
        token_from_file(co, "operator_token_file", "coordination.operator_token_file");
    if (r.ok() && c.admin.port != 0 && c.operator_token.empty()) {
      r.Fail("coordination.operator_token_file", "required when coordination.admin is set");
    }
    if (r.ok() && c.control.port != 0 && c.region_token.empty() &&
        !common::IsLoopbackHost(c.control.host)) {
      r.Fail("region_token_file",
             absl::StrCat("required when coordination.control is not a loopback address (",
                          c.control.host, "): it is the region's key to order forwarding"));
    }
    YAML::Node l = r.Map(co, "leases", "coordination.leases", false);
    r.OnlyKeys(l, "coordination.leases",
               {"ttl_ms", "renew_interval_ms", "retry_interval_ms", "round_timeout_ms",
                "alive_timeout_ms", "max_drift", "margin_ms", "handback_after_ms"});
    const std::string lp = "coordination.leases.";
    c.leases.ttl_ms =
        r.Integer<int64_t>(l, "ttl_ms", lp + "ttl_ms", 6000, kLeaseTtlMsMin, kLeaseTtlMsMax);
    c.leases.renew_interval_ms =
        r.Integer<int64_t>(l, "renew_interval_ms", lp + "renew_interval_ms", 1000, 10, 300000);
    c.leases.retry_interval_ms =
        r.Integer<int64_t>(l, "retry_interval_ms", lp + "retry_interval_ms", 250, 10, 600000);
    c.leases.round_timeout_ms =
        r.Integer<int64_t>(l, "round_timeout_ms", lp + "round_timeout_ms", 1500, 10, 600000);
    c.leases.alive_timeout_ms =
        r.Integer<int64_t>(l, "alive_timeout_ms", lp + "alive_timeout_ms", 2500, 20, 600000);
    c.leases.max_drift = r.Number(l, "max_drift", lp + "max_drift", 0.01, 0, 0.1);
    c.leases.margin_ms = r.Integer<int64_t>(l, "margin_ms", lp + "margin_ms", 100, 0, 600000);
    c.leases.handback_after_ms =
        r.Integer<int64_t>(l, "handback_after_ms", lp + "handback_after_ms", 5000, 0, 3600000);
    if (r.ok()) {
      // A ttl too short for the other timings is named as such, with the least that fits them.
      // (Not when retry_interval_ms is above ttl_ms: Validate names that field.)
      if (const int64_t min = c.leases.MinTtlMs(); c.leases.ttl_ms < min && min <= kLeaseTtlMsMax &&
                                                   c.leases.retry_interval_ms <= c.leases.ttl_ms) {
        r.Fail(lp + "ttl_ms",
               absl::StrCat("must be at least ", min,
                            " with these lease timings (the holder's validity, ttl_ms * (1 - 2 * "
                            "max_drift) - margin_ms, must hold two renew_interval_ms and exceed "
                            "round_timeout_ms), got ",
                            c.leases.ttl_ms));
      } else if (absl::Status st = c.leases.Validate(); !st.ok()) {
        r.Fail("coordination", std::string(st.message()));
      }
    }
    YAML::Node rg = r.Map(co, "rights", "coordination.rights", false);
    r.OnlyKeys(rg, "coordination.rights",
               {"gossip_interval_ms", "demand_half_life_ms", "lead_ms", "horizon_ms", "tte_ratio",
                "grant_cooldown_ms", "request_cooldown_ms", "info_ttl_ms"});
    const std::string rp = "coordination.rights.";
    c.rights.gossip_interval_ms =
        r.Integer<int64_t>(rg, "gossip_interval_ms", rp + "gossip_interval_ms", 100, 10, 60000);
    c.rights.demand_half_life_ms = r.Integer<int64_t>(
        rg, "demand_half_life_ms", rp + "demand_half_life_ms", 2000, 100, 3600000);
    c.rights.lead_ms = r.Integer<int64_t>(rg, "lead_ms", rp + "lead_ms", 300, 0, 600000);
    c.rights.horizon_ms =
        r.Integer<int64_t>(rg, "horizon_ms", rp + "horizon_ms", 10000, 100, 3600000);
    c.rights.tte_ratio = r.Number(rg, "tte_ratio", rp + "tte_ratio", 2.0, 1, 100);
    c.rights.grant_cooldown_ms =
        r.Integer<int64_t>(rg, "grant_cooldown_ms", rp + "grant_cooldown_ms", 50, 0, 600000);
    c.rights.request_cooldown_ms =
        r.Integer<int64_t>(rg, "request_cooldown_ms", rp + "request_cooldown_ms", 50, 0, 600000);
    c.rights.info_ttl_ms =
        r.Integer<int64_t>(rg, "info_ttl_ms", rp + "info_ttl_ms", 3000, 20, 3600000);
    if (r.ok()) {
      if (absl::Status st = c.rights.Validate(); !st.ok()) {
        r.Fail("coordination", std::string(st.message()));
      }
    }
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
      p.address = r.DialHostPort(n, "address", path + ".address", true);
      if (r.ok() &&
          (!ValidRegionName(p.name) || p.name == c.region || !names.insert(p.name).second)) {
        r.Fail(path + ".name", "1..32 of [A-Za-z0-9-], unique, not this region's own");
      }
      if (r.ok() && (p.replica_id == 0 || !ids.insert(p.replica_id).second)) {
        r.Fail(path + ".replica_id", "1..255, unique, not this region's own");
      }
      c.peers.push_back(std::move(p));
    }
  }
  if (r.ok() && c.witness) {
    for (const Peer& p : c.peers) {
      if (p.replica_id == c.witness->replica_id || p.name == c.witness->name) {
        r.Fail("coordination.witness", "must differ from every peer (name and replica_id)");
      }
    }
  }
  if (!r.ok()) return r.status();
  return c;
}

}  // namespace

absl::StatusOr<ReplicatorConfig> ParseReplicatorConfig(std::string_view yaml,
                                                       std::string_view source,
                                                       std::string_view base_dir) {
  return CatchYamlErrors(source, [&] { return ParseUnguarded(yaml, source, base_dir); });
}

absl::StatusOr<ReplicatorConfig> LoadReplicatorConfig(const std::string& path) {
  auto text = common::ReadRegularFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseReplicatorConfig(*text, path, common::ConfigDir(path));
}

}  // namespace meridian::replication
