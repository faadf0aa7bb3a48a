#include "geo/config.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"

namespace meridian::geo {
namespace {

constexpr size_t kDnsNameMax = 253;
constexpr size_t kLabelMax = 63;

std::string Idx(const std::string& path, size_t i) { return absl::StrCat(path, "[", i, "]"); }

bool ValidRegionName(std::string_view name) {
  return !name.empty() && name.size() <= 63 && name.front() != '-' && name.back() != '-' &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
         });
}

bool IsWithin(const std::string& name, const std::string& zone) {
  return name == zone || (name.size() > zone.size() &&
                          name.compare(name.size() - zone.size(), zone.size(), zone) == 0 &&
                          name[name.size() - zone.size() - 1] == '.');
}

// Reads a YAML sequence of IP address strings.
std::vector<IpAddress> Addresses(YamlReader& r, const YAML::Node& parent, const std::string& key,
                                 const std::string& path, bool required, size_t max) {
  std::vector<IpAddress> out;
  const YAML::Node n = parent[key];
  if (!n || n.IsNull()) {
    if (required) r.Fail(path, "missing (a list of IP addresses is required)");
    return out;
  }
  if (!n.IsSequence()) {
    r.Fail(path, "must be a list of IP addresses");
    return out;
  }
  if (required && n.size() == 0) r.Fail(path, "must not be empty");
  if (n.size() > max) r.Fail(path, absl::StrCat("at most ", max, " addresses"));
  for (size_t i = 0; i < n.size() && r.ok(); ++i) {
    if (!n[i].IsScalar()) {
      r.Fail(Idx(path, i), "must be an IP address");
      break;
    }
    absl::StatusOr<IpAddress> a = ParseIpAddress(n[i].Scalar());
    if (!a.ok()) {
      r.Fail(Idx(path, i), std::string(a.status().message()));
      break;
    }
    if (std::find(out.begin(), out.end(), *a) != out.end()) {
      r.Fail(Idx(path, i), absl::StrCat(n[i].Scalar(), " is listed twice"));
      break;
    }
    out.push_back(*a);
  }
  return out;
}

std::string DnsName(YamlReader& r, const YAML::Node& parent, const std::string& key,
                    const std::string& path, bool required, std::string def = "") {
  const std::string text = r.String(parent, key, path, required);
  if (text.empty()) {
    if (required && r.ok()) r.Fail(path, "must not be empty");
    return def;
  }
  std::optional<std::string> name = NormalizeDnsName(text);
  if (!name) {
    r.Fail(path, absl::StrCat("'", text,
                              "' is not a DNS name (labels of 1..63 characters from a-z, 0-9, "
                              "'-', '_', at most 253 characters)"));
    return def;
  }
  return *name;
}

// A point given as {lat, lon} or {region: name}. Returns the region index for the latter.
std::optional<size_t> PointOrRegion(YamlReader& r, const YAML::Node& n, const std::string& path,
                                    const std::map<std::string, size_t>& region_index,
                                    const std::vector<RegionConfig>& regions, GeoPoint* point) {
  const bool has_region = n["region"] && !n["region"].IsNull();
  const bool has_lat = n["lat"] && !n["lat"].IsNull();
  const bool has_lon = n["lon"] && !n["lon"].IsNull();
  if (has_region && (has_lat || has_lon)) {
    r.Fail(path, "give either region or lat/lon, not both");
    return std::nullopt;
  }
  if (has_region) {
    const std::string name = r.String(n, "region", path + ".region", true);
    auto it = region_index.find(name);
    if (it == region_index.end()) {
      r.Fail(path + ".region", absl::StrCat("'", name, "' is not a region in regions"));
      return std::nullopt;
    }
    *point = regions[it->second].location;
    return it->second;
  }
  if (!has_lat || !has_lon) {
    r.Fail(path, "needs region, or both lat and lon");
    return std::nullopt;
  }
  point->lat_deg = r.RequiredNumber(n, "lat", path + ".lat", -90, 90);
  point->lon_deg = r.RequiredNumber(n, "lon", path + ".lon", -180, 180);
  return std::nullopt;
}

void ParseZone(YamlReader& r, const YAML::Node& root, ZoneConfig& z) {
  const YAML::Node n = r.Map(root, "zone", "zone", true);
  if (!n) return;
  r.OnlyKeys(n, "zone", {"name", "service_name", "ttl_s", "soa", "nameservers"});
  z.name = DnsName(r, n, "name", "zone.name", true);
  if (z.name == ".") r.Fail("zone.name", "must not be the root");
  z.service_name = DnsName(r, n, "service_name", "zone.service_name", false, z.name);
  if (r.ok() && !IsWithin(z.service_name, z.name)) {
    r.Fail("zone.service_name",
           absl::StrCat("'", z.service_name, "' is not inside zone '", z.name, "'"));
  }
  z.ttl_s = r.Integer<uint32_t>(n, "ttl_s", "zone.ttl_s", 300, 1, 604800);

  const YAML::Node ns = n["nameservers"];
  if (!ns || !ns.IsSequence() || ns.size() == 0) {
    r.Fail("zone.nameservers", "must be a non-empty list of {name, addresses}");
  } else {
    for (size_t i = 0; i < ns.size() && r.ok(); ++i) {
      const std::string path = Idx("zone.nameservers", i);
      if (!ns[i].IsMap()) {
        r.Fail(path, "must be a mapping with name (and optional addresses)");
        break;
      }
      r.OnlyKeys(ns[i], path, {"name", "addresses"});
      NameServerConfig server;
      server.name = DnsName(r, ns[i], "name", path + ".name", true);
      server.addresses =
          Addresses(r, ns[i], "addresses", path + ".addresses", false, kAddressesPerRegionMax);
      if (r.ok() && !server.addresses.empty() && !IsWithin(server.name, z.name)) {
        r.Fail(path + ".addresses", "glue addresses are only for names inside the zone");
      }
      // The service name answers with the one nearest healthy region; glue there would add the
      // name server's own addresses (another TTL, no scope) to every answer.
      if (r.ok() && !server.addresses.empty() && server.name == z.service_name) {
        r.Fail(path + ".name",
               absl::StrCat("'", server.name,
                            "' is the service name: a name server with glue addresses needs a "
                            "name of its own (e.g. ns1.",
                            z.name, ")"));
      }
      for (const NameServerConfig& other : z.nameservers) {
        if (other.name == server.name) r.Fail(path + ".name", "listed twice");
      }
      z.nameservers.push_back(std::move(server));
    }
  }

  const YAML::Node soa = r.Map(n, "soa", "zone.soa", false);
  if (soa) {
    r.OnlyKeys(
        soa, "zone.soa",
        {"primary", "hostmaster", "serial", "refresh_s", "retry_s", "expire_s", "minimum_s"});
  }
  z.soa_primary = DnsName(r, soa, "primary", "zone.soa.primary", false,
                          z.nameservers.empty() ? std::string() : z.nameservers.front().name);
  z.soa_hostmaster =
      DnsName(r, soa, "hostmaster", "zone.soa.hostmaster", false, "hostmaster." + z.name);
  z.soa_serial = r.Integer<uint32_t>(soa, "serial", "zone.soa.serial", 1, 0, 4294967295u);
  z.soa_refresh_s =
      r.Integer<uint32_t>(soa, "refresh_s", "zone.soa.refresh_s", 3600, 1, 2147483647);
  z.soa_retry_s = r.Integer<uint32_t>(soa, "retry_s", "zone.soa.retry_s", 600, 1, 2147483647);
  z.soa_expire_s = r.Integer<uint32_t>(soa, "expire_s", "zone.soa.expire_s", 604800, 1, 2147483647);
  z.soa_minimum_s = r.Integer<uint32_t>(soa, "minimum_s", "zone.soa.minimum_s", 60, 0, 86400);
}

void ParseRegions(YamlReader& r, const YAML::Node& root, GeoConfig& c,
                  std::map<std::string, size_t>& index) {
  const YAML::Node n = root["regions"];
  if (!n || !n.IsSequence() || n.size() == 0) {
    r.Fail("regions", "must be a non-empty list of regions");
    return;
  }
  if (n.size() > kRegionsMax) {
    r.Fail("regions", absl::StrCat("at most ", kRegionsMax, " regions"));
    return;
  }
  for (size_t i = 0; i < n.size() && r.ok(); ++i) {
    const std::string path = Idx("regions", i);
    if (!n[i].IsMap()) {
      r.Fail(path, "must be a mapping");
      return;
    }
    r.OnlyKeys(n[i], path, {"name", "addresses", "lat", "lon", "readyz"});
    RegionConfig region;
    region.name = r.String(n[i], "name", path + ".name", true);
    if (r.ok() && !ValidRegionName(region.name)) {
      r.Fail(path + ".name",
             absl::StrCat("'", region.name, "': use 1..63 characters from a-z, 0-9 and '-'"));
    }
    if (r.ok() && index.count(region.name)) {
      r.Fail(path + ".name", absl::StrCat("'", region.name, "' is listed twice"));
    }
    region.addresses =
        Addresses(r, n[i], "addresses", path + ".addresses", true, kAddressesPerRegionMax);
    region.location.lat_deg = r.RequiredNumber(n[i], "lat", path + ".lat", -90, 90);
    region.location.lon_deg = r.RequiredNumber(n[i], "lon", path + ".lon", -180, 180);
    region.readyz_url = r.String(n[i], "readyz", path + ".readyz", false);
    if (!region.readyz_url.empty() && !common::ValidHttpUrl(region.readyz_url)) {
      r.Fail(path + ".readyz", absl::StrCat("'", region.readyz_url,
                                            "' must be an http:// or https:// URL with a host "
                                            "(and a port of 1..65535 when given)"));
    }
    index[region.name] = c.regions.size();
    c.regions.push_back(std::move(region));
  }
}

void ParseHealth(YamlReader& r, const YAML::Node& root, GeoConfig& c) {
  const YAML::Node n = r.Map(root, "health", "health", false);
  if (n) {
    r.OnlyKeys(n, "health",
               {"probe_interval_ms", "probe_timeout_ms", "fall", "rise", "initial_state"});
  }
  c.probe_interval_ms =
      r.Integer<int>(n, "probe_interval_ms", "health.probe_interval_ms", 500, 10, 60000);
  c.probe_timeout_ms = r.Integer<int>(n, "probe_timeout_ms", "health.probe_timeout_ms",
                                      std::min(400, c.probe_interval_ms), 1, 60000);
  if (r.ok() && c.probe_timeout_ms > c.probe_interval_ms) {
    r.Fail("health.probe_timeout_ms",
           absl::StrCat("must not exceed health.probe_interval_ms (", c.probe_interval_ms,
                        "), so a round of probes ends before the next one starts"));
  }
  c.health.fall = r.Integer<int>(n, "fall", "health.fall", 3, 1, 100);
  c.health.rise = r.Integer<int>(n, "rise", "health.rise", 5, 1, 100);
  const std::string initial = r.String(n, "initial_state", "health.initial_state", false, "up");
  if (initial == "up") {
    c.health.initial = Health::kUp;
  } else if (initial == "down") {
    c.health.initial = Health::kDown;
  } else {
    r.Fail("health.initial_state", absl::StrCat("must be up or down, got '", initial, "'"));
  }
}

void ParseLastResort(YamlReader& r, const YAML::Node& root, GeoConfig& c,
                     const std::map<std::string, size_t>& index) {
  const YAML::Node n = r.Map(root, "last_resort", "last_resort", false);
  if (n) r.OnlyKeys(n, "last_resort", {"mode", "region", "ttl_s"});
  const std::string mode = r.String(n, "mode", "last_resort.mode", false, "all");
  c.last_resort_ttl_s = r.Integer<uint32_t>(n, "ttl_s", "last_resort.ttl_s", 1, 0, 3600);
  if (mode == "all") {
    c.last_resort = LastResort::kAllRegions;
    if (n && n["region"]) r.Fail("last_resort.region", "only with mode: region");
  } else if (mode == "region") {
    c.last_resort = LastResort::kFixedRegion;
    const std::string name = r.String(n, "region", "last_resort.region", true);
    auto it = index.find(name);
    if (r.ok() && it == index.end()) {
      r.Fail("last_resort.region", absl::StrCat("'", name, "' is not a region in regions"));
    } else if (it != index.end()) {
      c.last_resort_region = it->second;
    }
  } else {
    r.Fail("last_resort.mode", absl::StrCat("must be all or region, got '", mode, "'"));
  }
}

void ParseLocations(YamlReader& r, const YAML::Node& root, GeoConfig& c,
                    const std::map<std::string, size_t>& index) {
  const YAML::Node n = root["locations"];
  if (n && !n.IsNull()) {
    if (!n.IsSequence()) {
      r.Fail("locations", "must be a list of {cidr, region} or {cidr, lat, lon}");
      return;
    }
    if (n.size() > kLocationsMax) {
      r.Fail("locations", absl::StrCat("at most ", kLocationsMax, " entries"));
      return;
    }
    CidrTable seen;
    for (size_t i = 0; i < n.size() && r.ok(); ++i) {
      const std::string path = Idx("locations", i);
      if (!n[i].IsMap()) {
        r.Fail(path, "must be a mapping");
        return;
      }
      r.OnlyKeys(n[i], path, {"cidr", "region", "lat", "lon"});
      LocationConfig loc;
      const std::string text = r.String(n[i], "cidr", path + ".cidr", true);
      if (!r.ok()) return;
      absl::StatusOr<Cidr> cidr = ParseCidr(text, /*strict_host_bits=*/true);
      if (!cidr.ok()) {
        r.Fail(path + ".cidr", std::string(cidr.status().message()));
        return;
      }
      loc.cidr = *cidr;
      if (absl::Status st = seen.Insert(loc.cidr, i); !st.ok()) {
        r.Fail(path + ".cidr", std::string(st.message()));
        return;
      }
      loc.region = PointOrRegion(r, n[i], path, index, c.regions, &loc.point);
      c.locations.push_back(std::move(loc));
    }
  }
  const YAML::Node d = r.Map(root, "default_location", "default_location", false);
  if (d.IsMap()) {
    r.OnlyKeys(d, "default_location", {"region", "lat", "lon"});
    c.default_region =
        PointOrRegion(r, d, "default_location", index, c.regions, &c.default_location);
  } else if (!c.regions.empty()) {
    c.default_region = 0;
    c.default_location = c.regions.front().location;
  }
}

void ParseOperatorToken(YamlReader& r, const YAML::Node& root, GeoConfig& c,
                        std::string_view base_dir) {
  const std::string inline_token = r.String(root, "operator_token", "operator_token", false);
  const std::string file = r.String(root, "operator_token_file", "operator_token_file", false);
  if (!r.ok()) return;
  if (inline_token.empty() == file.empty()) {
    r.Fail("operator_token", "give exactly one of operator_token or operator_token_file");
    return;
  }
  if (file.empty()) {
    if (absl::Status st = common::CheckOperatorToken(inline_token); !st.ok()) {
      r.Fail("operator_token", std::string(st.message()));
    }
    c.operator_token = inline_token;
    return;
  }
  // ReadOperatorTokenFile checks the token too.
  auto token = common::ReadOperatorTokenFile(common::ResolveConfigPath(base_dir, file));
  if (!token.ok()) {
    r.Fail("operator_token_file", std::string(token.status().message()));
    return;
  }
  c.operator_token = *std::move(token);
}

}  // namespace

std::optional<std::string> NormalizeDnsName(std::string_view name) {
  std::string out(name);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (out == ".") return out;
  if (!out.empty() && out.back() == '.') out.pop_back();
  if (out.empty() || out.size() > kDnsNameMax) return std::nullopt;
  size_t label = 0;
  for (char ch : out) {
    if (ch == '.') {
      if (label == 0) return std::nullopt;
      label = 0;
      continue;
    }
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_';
    if (!ok || ++label > kLabelMax) return std::nullopt;
  }
  if (label == 0) return std::nullopt;
  out.push_back('.');
  return out;
}

absl::StatusOr<GeoConfig> ParseConfig(std::string_view yaml, std::string_view source,
                                      std::string_view base_dir) {
  auto loaded = LoadConfigYaml(yaml, source);
  if (!loaded.ok()) return loaded.status();
  YamlReader r{std::string(source)};
  GeoConfig c;
  try {
    const YAML::Node root = *std::move(loaded);
    r.OnlyKeys(root, "",
               {"listen", "dns_path", "http_threads", "answer_ttl_s", "zone", "regions", "health",
                "last_resort", "locations", "default_location", "maxmind_db", "operator_token",
                "operator_token_file"});
    if (root["listen"]) c.listen = r.HttpListenHostPort(root, "listen", "listen", false);
    c.dns_path = r.String(root, "dns_path", "dns_path", false, "/dns");
    if (r.ok() && (c.dns_path.empty() || c.dns_path.front() != '/' ||
                   c.dns_path.find_first_of("?#{} ") != std::string::npos ||
                   c.dns_path.rfind("/v1/", 0) == 0 || c.dns_path == "/metrics" ||
                   c.dns_path == "/healthz")) {
      r.Fail("dns_path", absl::StrCat("'", c.dns_path,
                                      "' must be a path starting with '/', without ?#{} or "
                                      "spaces, and not /metrics, /healthz or under /v1/"));
    }
    c.http_threads = r.Integer<int>(root, "http_threads", "http_threads", 4, 1, 64);
    c.answer_ttl_s = r.Integer<uint32_t>(root, "answer_ttl_s", "answer_ttl_s", 5, 0, 86400);
    ParseZone(r, root, c.zone);
    std::map<std::string, size_t> index;
    if (r.ok()) ParseRegions(r, root, c, index);
    if (r.ok()) ParseHealth(r, root, c);
    if (r.ok()) ParseLastResort(r, root, c, index);
    if (r.ok()) ParseLocations(r, root, c, index);
    if (r.ok()) {
      c.maxmind_db =
          common::ResolveConfigPath(base_dir, r.String(root, "maxmind_db", "maxmind_db", false));
    }
    if (r.ok()) ParseOperatorToken(r, root, c, base_dir);
  } catch (const YAML::Exception& e) {
    r.Fail("(yaml)", e.what());
  }
  if (!r.ok()) return r.status();
  return c;
}

absl::StatusOr<GeoConfig> LoadConfigFile(const std::string& path) {
  auto text = common::ReadRegularFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path, common::ConfigDir(path));
}

}  // namespace meridian::geo
