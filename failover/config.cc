#include "failover/config.h"

#include <openssl/sha.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"

namespace meridian::failover {
namespace {

std::string Idx(const std::string& path, size_t i) { return absl::StrCat(path, "[", i, "]"); }

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

// What common::ValidHttpUrl takes, said in full: a port of 0 or 65536 fails the URL, and the
// message must say why.
constexpr const char* kUrlRule =
    "must be an http:// or https:// URL with a host (and, if given, a port 1..65535)";

std::string TrimSlash(std::string s) {
  while (!s.empty() && s.back() == '/') s.pop_back();
  return s;
}

std::string Url(YamlReader& r, const YAML::Node& n, const std::string& key, const std::string& path,
                bool required) {
  std::string u = r.String(n, key, path, required);
  if (u.empty()) {
    if (required && r.ok()) r.Fail(path, "must not be empty");
    return u;
  }
  if (!common::ValidHttpUrl(u)) {
    r.Fail(path, absl::StrCat(kUrlRule, ", got '", u, "'"));
    return "";
  }
  return TrimSlash(u);
}

bool IsSha256Hex(std::string_view s) {
  if (s.size() != 2 * SHA256_DIGEST_LENGTH) return false;
  for (char ch : s) {
    if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f'))) return false;
  }
  return true;
}

// A bearer token given inline (`name`) or in a file (`name`_file): exactly one of them when
// `required`, at most one otherwise. Empty when absent or on an error (recorded in r).
std::string TokenField(YamlReader& r, const YAML::Node& root, const std::string& name,
                       std::string_view base_dir, bool required) {
  const std::string file_key = name + "_file";
  const bool inline_given = root[name] && !root[name].IsNull();
  const bool file_given = root[file_key] && !root[file_key].IsNull();
  if (!r.ok()) return "";
  if (inline_given == file_given) {
    if (inline_given || required) {
      r.Fail(name, absl::StrCat(required ? "exactly one" : "at most one", " of ", name, " and ",
                                file_key, required ? " is required" : " may be given"));
    }
    return "";
  }
  if (inline_given) {
    std::string token = r.String(root, name, name, true);
    // (A token file is checked by ReadOperatorTokenFile.)
    if (absl::Status st = common::CheckOperatorToken(token); r.ok() && !st.ok()) {
      r.Fail(name, std::string(st.message()));
      return "";
    }
    return token;
  }
  auto token = common::ReadOperatorTokenFile(
      common::ResolveConfigPath(base_dir, r.String(root, file_key, file_key, true)));
  if (!token.ok()) {
    r.Fail(file_key, std::string(token.status().message()));
    return "";
  }
  return *std::move(token);
}

}  // namespace

std::string TokenSha256Hex(std::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * SHA256_DIGEST_LENGTH, '0');
  for (size_t i = 0; i < SHA256_DIGEST_LENGTH; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

DeciderConfig FailoverConfig::decider_config() const {
  DeciderConfig d;
  for (const auto& r : regions) d.regions.push_back(r.name);
  d.self = region;
  d.lost_after_checks = lost_after_checks;
  d.recover_after_checks = recover_after_checks;
  d.observation_ttl_ms = observation_ttl_ms;
  return d;
}

const RegionEndpoints* FailoverConfig::Find(std::string_view name) const {
  for (const auto& r : regions)
    if (r.name == name) return &r;
  return nullptr;
}

const RegionEndpoints* FailoverConfig::PeerControllerOfToken(std::string_view token) const {
  const std::string digest = TokenSha256Hex(token);
  const RegionEndpoints* found = nullptr;
  for (const auto& r : regions) {
    if (r.name == region || r.controller_token_sha256.empty()) continue;
    if (common::TokenEquals(digest, r.controller_token_sha256)) found = &r;
  }
  return found;
}

namespace {

absl::StatusOr<FailoverConfig> ParseUnguarded(std::string_view yaml, std::string_view source,
                                              std::string_view base_dir) {
  auto loaded = LoadConfigYaml(yaml, source);
  if (!loaded.ok()) return loaded.status();
  const YAML::Node root = *std::move(loaded);
  YamlReader r{std::string(source)};
  FailoverConfig c;
  r.OnlyKeys(
      root, "",
      {"region", "listen", "http_threads", "regions", "geo", "probe_interval_ms",
       "probe_timeout_ms", "lost_after_checks", "recover_after_checks", "observation_ttl_ms",
       "catch_up", "handback_timeout_ms", "geo_reconcile_interval_ms", "audit_file",
       "operator_token", "operator_token_file", "controller_token", "controller_token_file"});
  c.region = r.String(root, "region", "region", true);
  if (root["listen"]) c.listen = r.HttpListenHostPort(root, "listen", "listen", false);
  c.http_threads = r.Integer<int>(root, "http_threads", "http_threads", 2, 1, 16);

  YAML::Node regions = root["regions"];
  if (!regions || regions.IsNull()) {
    r.Fail("regions", "missing (a list of every region is required)");
  } else if (!regions.IsSequence() || regions.size() == 0) {
    r.Fail("regions", "must be a non-empty list");
  } else if (regions.size() > 64) {
    r.Fail("regions", "at most 64 regions");
  } else {
    std::set<std::string> names;
    for (size_t i = 0; i < regions.size(); ++i) {
      const std::string p = Idx("regions", i);
      YAML::Node n = regions[i];
      if (!n.IsMap()) {
        r.Fail(p, "must be a mapping");
        break;
      }
      r.OnlyKeys(n, p,
                 {"name", "url", "replicator", "metrics", "controller", "controller_token_sha256"});
      RegionEndpoints e;
      e.name = r.String(n, "name", p + ".name", true);
      if (r.ok() && !ValidName(e.name)) {
        r.Fail(p + ".name",
               absl::StrCat("must be 1..63 characters of [a-z0-9-], got '", e.name, "'"));
      }
      if (r.ok() && !names.insert(e.name).second) {
        r.Fail(p + ".name", absl::StrCat("'", e.name, "' appears twice"));
      }
      e.url = Url(r, n, "url", p + ".url", true);
      e.replicator = Url(r, n, "replicator", p + ".replicator", true);
      e.metrics = Url(r, n, "metrics", p + ".metrics", true);
      e.controller = Url(r, n, "controller", p + ".controller", false);
      e.controller_token_sha256 =
          r.String(n, "controller_token_sha256", p + ".controller_token_sha256", false);
      if (r.ok() && !e.controller_token_sha256.empty() && !IsSha256Hex(e.controller_token_sha256)) {
        r.Fail(p + ".controller_token_sha256",
               "must be 64 lowercase hex digits (printf %s \"$token\" | sha256sum)");
      }
      c.regions.push_back(std::move(e));
    }
  }
  if (r.ok() && c.Find(c.region) == nullptr) {
    r.Fail("region", absl::StrCat("'", c.region, "' is not one of regions[].name"));
  }
  if (r.ok()) {
    for (size_t i = 0; i < c.regions.size(); ++i) {
      if (c.regions[i].name != c.region && c.regions[i].controller.empty()) {
        r.Fail(Idx("regions", i) + ".controller",
               "missing (every other region's controller URL is required: observations are "
               "exchanged)");
        break;
      }
      if (c.regions[i].name != c.region && c.regions[i].controller_token_sha256.empty()) {
        r.Fail(Idx("regions", i) + ".controller_token_sha256",
               "missing (every other region's controller token digest is required: its "
               "observations are taken only with its own token)");
        break;
      }
      // One token per controller: two regions with one digest would make either's observations
      // look like the other's (and be refused as forged), so one controller could never vote.
      for (size_t j = 0; j < i && r.ok(); ++j) {
        if (!c.regions[i].controller_token_sha256.empty() &&
            c.regions[i].controller_token_sha256 == c.regions[j].controller_token_sha256) {
          r.Fail(Idx("regions", i) + ".controller_token_sha256",
                 absl::StrCat("the same as '", c.regions[j].name,
                              "''s: every controller needs a token of its own"));
        }
      }
      if (!r.ok()) break;
    }
  }

  YAML::Node geo = root["geo"];
  if (geo && !geo.IsNull()) {
    if (!geo.IsSequence()) {
      r.Fail("geo", "must be a list of meridian-geo base URLs");
    } else if (geo.size() == 0) {
      // Written out empty, it reads as a list someone forgot to fill: this controller would never
      // move DNS. Without GeoDNS, geo is left out.
      r.Fail("geo", "an empty list: give meridian-geo base URLs, or leave geo out (no GeoDNS)");
    } else {
      for (size_t i = 0; i < geo.size() && r.ok(); ++i) {
        const std::string p = Idx("geo", i);
        if (!geo[i].IsScalar()) {
          r.Fail(p, "must be a URL string");
          break;
        }
        const std::string u = geo[i].Scalar();
        if (!common::ValidHttpUrl(u)) {
          r.Fail(p, absl::StrCat(kUrlRule, ", got '", u, "'"));
          break;
        }
        c.geo.push_back(TrimSlash(u));
      }
    }
  }

  c.probe_interval_ms =
      r.Integer<int>(root, "probe_interval_ms", "probe_interval_ms", 500, 50, 60000);
  const int default_timeout = std::min(400, c.probe_interval_ms * 4 / 5);
  c.probe_timeout_ms =
      r.Integer<int>(root, "probe_timeout_ms", "probe_timeout_ms", default_timeout, 10, 60000);
  if (r.ok() && c.probe_timeout_ms >= c.probe_interval_ms) {
    r.Fail("probe_timeout_ms", absl::StrCat("must be below probe_interval_ms (",
                                            c.probe_interval_ms, "), got ", c.probe_timeout_ms));
  }
  c.lost_after_checks =
      r.Integer<uint32_t>(root, "lost_after_checks", "lost_after_checks", 3, 1, 100);
  c.recover_after_checks =
      r.Integer<uint32_t>(root, "recover_after_checks", "recover_after_checks", 10, 1, 1000);
  c.observation_ttl_ms = r.Integer<int64_t>(root, "observation_ttl_ms", "observation_ttl_ms",
                                            3 * int64_t{c.probe_interval_ms}, 1, 3600000);
  if (r.ok() && c.observation_ttl_ms <= c.probe_interval_ms) {
    r.Fail("observation_ttl_ms",
           absl::StrCat("must be above probe_interval_ms (", c.probe_interval_ms,
                        "): a peer's observations arrive once per interval, got ",
                        c.observation_ttl_ms));
  }
  YAML::Node cu = r.Map(root, "catch_up", "catch_up", false);
  r.OnlyKeys(cu, "catch_up", {"max_apply_lag_ms", "max_backlog_records"});
  c.catch_up.max_apply_lag_ms =
      r.Number(cu, "max_apply_lag_ms", "catch_up.max_apply_lag_ms", 1000, 1, 3600000);
  c.catch_up.max_backlog_records =
      r.Number(cu, "max_backlog_records", "catch_up.max_backlog_records", 1000, 0, 1e12);
  c.handback_timeout_ms =
      r.Integer<int64_t>(root, "handback_timeout_ms", "handback_timeout_ms", 60000, 1000, 3600000);
  c.geo_reconcile_interval_ms = r.Integer<int64_t>(root, "geo_reconcile_interval_ms",
                                                   "geo_reconcile_interval_ms", 5000, 100, 3600000);
  c.audit_file =
      common::ResolveConfigPath(base_dir, r.String(root, "audit_file", "audit_file", false));

  c.operator_token = TokenField(r, root, "operator_token", base_dir, true);
  c.controller_token = TokenField(r, root, "controller_token", base_dir, c.regions.size() > 1);
  if (r.ok() && !c.controller_token.empty()) {
    if (common::TokenEquals(c.controller_token, c.operator_token)) {
      r.Fail("controller_token",
             "must differ from the operator token (every operator holds that one; this one "
             "proves to the peers that an observation is this controller's)");
    }
    const RegionEndpoints* self = c.Find(c.region);
    if (r.ok()) {
      if (const RegionEndpoints* peer = c.PeerControllerOfToken(c.controller_token)) {
        r.Fail("controller_token",
               absl::StrCat("its SHA-256 is regions[].controller_token_sha256 of '", peer->name,
                            "': this controller could speak as that one"));
      }
    }
    if (r.ok() && self != nullptr && !self->controller_token_sha256.empty() &&
        self->controller_token_sha256 != TokenSha256Hex(c.controller_token)) {
      r.Fail("controller_token",
             absl::StrCat("its SHA-256 is not regions[].controller_token_sha256 of '", c.region,
                          "' (the peers would refuse this controller's observations)"));
    }
  }
  if (!r.ok()) return r.status();
  return c;
}

}  // namespace

absl::StatusOr<FailoverConfig> ParseConfig(std::string_view yaml, std::string_view source,
                                           std::string_view base_dir) {
  return CatchYamlErrors(source, [&] { return ParseUnguarded(yaml, source, base_dir); });
}

absl::StatusOr<FailoverConfig> LoadConfigFile(const std::string& path) {
  auto text = common::ReadRegularFile(path, "config file");
  if (!text.ok()) return text.status();
  return ParseConfig(*text, path, common::ConfigDir(path));
}

}  // namespace meridian::failover
