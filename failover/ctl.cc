#include "failover/ctl.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/config_files.h"
#include "failover/probe.h"
#include "failover/wire.h"
#include "services/auth.h"

namespace meridian::failover {

using Json = nlohmann::json;

namespace {

const char* kRegionNames[] = {"us-east", "eu-west", "ap-south"};

std::string ReadFile(const std::string& path, bool* ok) {
  std::ifstream in(path);
  *ok = static_cast<bool>(in);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::string Get(const std::vector<std::pair<std::string, std::string>>& env,
                const std::string& key) {
  std::string v;
  for (const auto& [k, val] : env)
    if (k == key) v = val;  // the last assignment wins, as in the shell
  return v;
}

// "http://10.77.0.2:4100" -> "10.77.0.2"
std::string HostOf(const std::string& url) {
  std::string rest = url.substr(url.find("://") == std::string::npos ? 0 : url.find("://") + 3);
  rest = rest.substr(0, rest.find('/'));
  return rest.substr(0, rest.rfind(':'));
}

Json ParseJson(const HttpResult& r) {
  if (!r.ok()) return Json();
  Json j = Json::parse(r.body, nullptr, false);
  return j.is_discarded() ? Json() : j;
}

std::string Str(const Json& j, const char* key, const std::string& def = "") {
  if (!j.is_object() || !j.contains(key) || !j[key].is_string()) return def;
  return j[key].get<std::string>();
}

std::string Ms(double v) { return absl::StrFormat("%.0fms", v); }

std::string Now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Lease groups as the replicators report them.
struct GroupView {
  std::string from;
  LeaseInfo lease;
};
struct Group {
  std::string region;
  std::string holder;  // the replicator that holds it usable (highest epoch); "" if none
  uint64_t epoch = 0;
  std::vector<GroupView> views;
  std::vector<std::string> problems;
};

std::vector<Group> Groups(const std::vector<ClusterRegion>& regions,
                          const std::vector<std::optional<ReplicatorStatus>>& statuses) {
  std::vector<Group> out;
  for (const auto& g : regions) {
    Group grp;
    grp.region = g.name;
    std::set<std::string> holders;
    for (size_t i = 0; i < regions.size(); ++i) {
      if (!statuses[i]) continue;
      for (const LeaseInfo& l : statuses[i]->leases) {
        if (l.group_region != g.name) continue;
        grp.views.push_back({regions[i].name, l});
        if (l.held_here && l.usable) {
          holders.insert(regions[i].name);
          if (l.epoch >= grp.epoch) {
            grp.epoch = l.epoch;
            grp.holder = regions[i].name;
          }
        }
      }
    }
    if (holders.size() > 1) {
      grp.problems.push_back(absl::StrCat("held usable by ", holders.size(),
                                          " replicators at once: ", absl::StrJoin(holders, ",")));
    }
    std::map<uint64_t, std::set<std::string>> owners_by_epoch;
    for (const auto& v : grp.views)
      if (!v.lease.owner.empty()) owners_by_epoch[v.lease.epoch].insert(v.lease.owner);
    for (const auto& [epoch, owners] : owners_by_epoch) {
      if (owners.size() > 1) {
        grp.problems.push_back(
            absl::StrCat("epoch ", epoch, " has different owners: ", absl::StrJoin(owners, ",")));
      }
    }
    out.push_back(std::move(grp));
  }
  return out;
}

Json GroupsJson(const std::vector<Group>& groups) {
  Json arr = Json::array();
  for (const auto& g : groups) {
    Json views = Json::array();
    for (const auto& v : g.views) {
      views.push_back(Json{{"from", v.from},
                           {"epoch", v.lease.epoch},
                           {"owner", v.lease.owner},
                           {"held_here", v.lease.held_here},
                           {"usable", v.lease.usable},
                           {"syncing", v.lease.syncing}});
    }
    arr.push_back(Json{{"group_region", g.region},
                       {"holder", g.holder.empty() ? Json() : Json(g.holder)},
                       {"epoch", g.epoch},
                       {"home", !g.holder.empty() && g.holder == g.region},
                       {"views", views},
                       {"problems", g.problems}});
  }
  return arr;
}

std::string GroupsTable(const std::vector<Group>& groups) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : groups) {
    std::vector<std::string> views;
    for (const auto& v : g.views) {
      views.push_back(absl::StrCat(v.from, ":e", v.lease.epoch, "/",
                                   v.lease.owner.empty() ? "-" : v.lease.owner,
                                   v.lease.held_here ? (v.lease.usable ? "*" : "(syncing)") : ""));
    }
    rows.push_back(
        {g.region, g.holder.empty() ? "(none usable)" : g.holder,
         g.holder.empty() ? "-" : absl::StrCat(g.epoch),
         g.holder.empty() ? "no" : (g.holder == g.region ? "yes" : "no"),
         views.empty() ? "-" : absl::StrJoin(views, " "),
         g.problems.empty() ? "" : absl::StrCat("PROBLEM: ", absl::StrJoin(g.problems, "; "))});
  }
  return RenderTable(
      {"GROUP", "HOLDER", "EPOCH", "HOME", "VIEWS (replicator:epoch/owner, *=held)", ""}, rows);
}

std::string Dump(const Json& j) {
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace

std::string RenderTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size(), 0);
  auto measure = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  };
  measure(header);
  for (const auto& r : rows) measure(r);
  std::string out;
  auto line = [&](const std::vector<std::string>& r) {
    std::string l;
    for (size_t i = 0; i < width.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      l += cell;
      if (i + 1 < width.size()) l += std::string(width[i] - cell.size() + 2, ' ');
    }
    while (!l.empty() && l.back() == ' ') l.pop_back();
    out += l + "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
  return out;
}

absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadEnvFile(
    const std::string& path) {
  bool ok = false;
  std::string text = ReadFile(path, &ok);
  if (!ok) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    line = Trim(line);
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind("export ", 0) == 0) line = Trim(line.substr(7));
    auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": not KEY=VALUE"));
    }
    std::string v = line.substr(eq + 1);
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
      v = v.substr(1, v.size() - 2);
    out.emplace_back(line.substr(0, eq), v);
  }
  return out;
}

namespace {

// A region's url file, checked as the --region flag is: a damaged one would otherwise show up as
// an unreachable region, in a table that looks like an outage.
absl::StatusOr<std::string> ReadRegionUrl(const std::string& path) {
  bool ok = false;
  std::string url = Trim(ReadFile(path, &ok));
  if (!ok || url.empty()) return absl::NotFoundError(absl::StrCat(path, ": cannot read"));
  if (!common::ValidHttpUrl(url)) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": '", url, "' is not an http://HOST:PORT URL (damaged; deploy/meridian ",
        "up writes it again)"));
  }
  return url;
}

// KEY's value in the env file at `path`: "" when absent, else a port 1..65535.
absl::StatusOr<std::string> PortValue(const std::string& path,
                                      const std::vector<std::pair<std::string, std::string>>& env,
                                      const std::string& key) {
  const std::string v = Get(env, key);
  if (v.empty()) return v;
  const bool digits = v.size() <= 5 && v.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || v[0] == '0' || std::stoi(v) > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", key, "='", v, "' is not a port 1..65535 (damaged)"));
  }
  return v;
}

}  // namespace

absl::StatusOr<ClusterEndpoints> LoadClusterFromDataDir(const std::string& dir) {
  ClusterEndpoints c;
  auto token = common::ReadOperatorTokenFile(dir + "/operator_token");
  if (absl::IsNotFound(token.status())) {
    return absl::NotFoundError(
        absl::StrCat(dir, "/operator_token: cannot read (is ", dir,
                     " a deploy/meridian data folder? run deploy/meridian up)"));
  }
  if (!token.ok()) return token.status();
  c.token = *std::move(token);
  c.audit_file = dir + "/operator-audit.log";
  int n = 1;
  auto cluster = ReadEnvFile(dir + "/cluster.env");
  // Missing: a one-region folder from before cluster.env. Present but not KEY=VALUE lines: damaged,
  // not a reason to take the folder for one region.
  if (absl::IsInvalidArgument(cluster.status())) return cluster.status();
  if (cluster.ok()) {
    const std::string v = Get(*cluster, "CLUSTER_REGIONS");
    if (v != "1" && v != "2" && v != "3") {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, "/cluster.env: CLUSTER_REGIONS must be 1, 2 or 3, got '", v, "'"));
    }
    n = v[0] - '0';
  }
  if (n == 1) {
    ClusterRegion r;
    r.name = "local";
    auto url = ReadRegionUrl(dir + "/url");
    if (!url.ok()) return url.status();
    r.url = *std::move(url);
    c.regions.push_back(std::move(r));
    return c;
  }
  for (int i = 0; i < n; ++i) {
    ClusterRegion r;
    r.name = kRegionNames[i];
    const std::string rdir = absl::StrCat(dir, "/", r.name);
    auto url = ReadRegionUrl(rdir + "/url");
    if (!url.ok()) return url.status();
    r.url = *std::move(url);
    const std::string ports_path = rdir + "/ports.env";
    auto ports = ReadEnvFile(ports_path);
    if (!ports.ok()) return ports.status();
    const std::string host = HostOf(r.url);
    std::string admin, metrics, failover;
    for (auto [key, out] : {std::pair<const char*, std::string*>{"ADMIN_PORT", &admin},
                            {"METRICS_PORT", &metrics},
                            {"FAILOVER_PORT", &failover}}) {
      auto v = PortValue(ports_path, *ports, key);
      if (!v.ok()) return v.status();
      *out = *std::move(v);
    }
    if (!admin.empty()) r.replicator = absl::StrCat("http://", host, ":", admin);
    if (!metrics.empty()) r.metrics = absl::StrCat("http://", host, ":", metrics, "/metrics");
    // Controllers run in the root namespace, on loopback.
    if (!failover.empty()) r.controller = absl::StrCat("http://127.0.0.1:", failover);
    c.regions.push_back(std::move(r));
  }
  const std::string geo_path = dir + "/geo/ports.env";
  auto geo = ReadEnvFile(geo_path);
  if (geo.ok()) {
    auto geo_port = PortValue(geo_path, *geo, "GEO_PORT");
    if (!geo_port.ok()) return geo_port.status();
    auto dns_port = PortValue(geo_path, *geo, "DNS_PORT");
    if (!dns_port.ok()) return dns_port.status();
    if (!geo_port->empty()) c.geo.push_back(absl::StrCat("http://127.0.0.1:", *geo_port));
    if (!dns_port->empty()) c.dns = absl::StrCat("127.0.0.1:", *dns_port);
  }
  return c;
}

const ClusterRegion* Ctl::Find(const std::string& name) const {
  for (const auto& r : c_.regions)
    if (r.name == name) return &r;
  return nullptr;
}

std::vector<HttpResult> Ctl::Get(const std::vector<std::string>& urls, bool auth) {
  std::vector<HttpCall> calls;
  std::vector<size_t> index;
  std::vector<HttpResult> out(urls.size());
  for (size_t i = 0; i < urls.size(); ++i) {
    if (urls[i].empty()) {
      out[i].error = "not configured";
      continue;
    }
    calls.push_back(HttpCall{"GET", urls[i], "", auth ? c_.token : ""});
    index.push_back(i);
  }
  std::vector<HttpResult> res = http_->Run(calls, timeout_ms_);
  for (size_t k = 0; k < res.size(); ++k) out[index[k]] = std::move(res[k]);
  return out;
}

// ------------------------------------------------------------------------------------- status
CtlResult Ctl::Status(const std::string& sku) {
  const size_t n = c_.regions.size();
  std::vector<std::string> readyz, status, metrics, controllers;
  for (const auto& r : c_.regions) {
    readyz.push_back(r.url + "/readyz");
    status.push_back(r.replicator.empty() ? "" : r.replicator + "/v1/status");
    metrics.push_back(r.metrics);
    controllers.push_back(r.controller.empty() ? "" : r.controller + "/v1/regions");
  }
  std::vector<std::string> all;
  for (auto* v : {&readyz, &status, &metrics, &controllers})
    all.insert(all.end(), v->begin(), v->end());
  for (const auto& g : c_.geo) all.push_back(g + "/v1/regions");
  std::vector<HttpResult> res = Get(all, true);
  auto at = [&](size_t block, size_t i) -> const HttpResult& { return res[block * n + i]; };

  std::vector<std::optional<ReplicatorStatus>> statuses(n);
  Json errors = Json::array();
  for (size_t i = 0; i < n; ++i) {
    if (c_.regions[i].replicator.empty()) continue;
    if (at(1, i).ok()) {
      auto s = ParseReplicatorStatus(at(1, i).body);
      if (s.ok())
        statuses[i] = *std::move(s);
      else
        errors.push_back(absl::StrCat(c_.regions[i].name, " replicator: ", s.status().message()));
    } else {
      errors.push_back(absl::StrCat(c_.regions[i].name, " replicator: ", at(1, i).Describe()));
    }
  }
  // Geo: the first instance that answers.
  Json geo_regions;
  std::string geo_error = c_.geo.empty() ? "no meridian-geo configured" : "";
  bool last_resort = false;
  for (size_t g = 0; g < c_.geo.size(); ++g) {
    Json j = ParseJson(res[4 * n + g]);
    if (j.is_object() && j.contains("regions") && j["regions"].is_array()) {
      geo_regions = j["regions"];
      // value() throws on a key of another type (and nothing catches it): check the type.
      last_resort = j.contains("last_resort_active") && j["last_resort_active"].is_boolean() &&
                    j["last_resort_active"].get<bool>();
      geo_error.clear();
      break;
    }
    geo_error = absl::StrCat(c_.geo[g], ": ", res[4 * n + g].Describe());
  }
  if (!geo_error.empty() && !c_.geo.empty()) errors.push_back(absl::StrCat("geo: ", geo_error));
  // Controllers' views: region -> controller -> state.
  std::map<std::string, std::map<std::string, std::string>> views;
  std::map<std::string, Json> controller_detail;  // region -> its own controller's entry for it
  for (size_t i = 0; i < n; ++i) {
    if (c_.regions[i].controller.empty()) continue;
    Json j = ParseJson(at(3, i));
    if (!j.is_object() || !j.contains("regions") || !j["regions"].is_array()) {
      errors.push_back(absl::StrCat(c_.regions[i].name, " failover: ", at(3, i).Describe()));
      continue;
    }
    for (const Json& e : j["regions"]) views[Str(e, "name")][c_.regions[i].name] = Str(e, "state");
  }
  const std::vector<Group> groups = Groups(c_.regions, statuses);

  Json regions = Json::array();
  std::vector<std::vector<std::string>> rows;
  bool all_ready = true;
  for (size_t i = 0; i < n; ++i) {
    const ClusterRegion& r = c_.regions[i];
    Json geo = nullptr;
    std::string geo_cell = c_.geo.empty() ? "-" : "?";
    if (geo_regions.is_array()) {
      for (const Json& g : geo_regions) {
        if (Str(g, "name") != r.name) continue;
        Json ov = g.contains("override") ? g["override"] : Json();
        const std::string ov_state = ov.is_object() ? Str(ov, "state") : "";
        const std::string probe =
            g.contains("probe") && g["probe"].is_object() ? Str(g["probe"], "state") : "";
        geo = Json{{"effective", Str(g, "effective")},
                   {"probe", probe},
                   {"override", ov_state.empty() || ov_state == "auto" ? Json() : Json(ov_state)}};
        geo_cell = Str(g, "effective");
        if (!ov_state.empty() && ov_state != "auto")
          absl::StrAppend(&geo_cell, " (override ", ov_state, ")");
      }
    }
    // Failover: what the controllers say (all agree, or each view).
    Json fo = nullptr;
    std::string fo_cell = "-";
    if (auto v = views.find(r.name); v != views.end()) {
      std::set<std::string> distinct;
      Json per = Json::object();
      for (const auto& [ctrl, st] : v->second) {
        distinct.insert(st);
        per[ctrl] = st;
      }
      const std::string agreed = distinct.size() == 1 ? *distinct.begin() : "mixed";
      fo = Json{{"state", agreed}, {"views", per}};
      fo_cell = absl::StrCat(agreed, " (", v->second.size(), " controllers)");
      if (agreed == "mixed") {
        std::vector<std::string> parts;
        for (const auto& [ctrl, st] : v->second) parts.push_back(ctrl + ":" + st);
        fo_cell = absl::StrCat("mixed ", absl::StrJoin(parts, ","));
      }
    }
    // Replication, from the replicator's status and metrics.
    Json peers = Json::array();
    std::vector<std::string> repl_cells;
    std::optional<ReplicationMetrics> m;
    if (at(2, i).ok()) {
      auto pm = ParseReplicationMetrics(at(2, i).body);
      if (pm.ok()) m = *std::move(pm);
    }
    if (statuses[i]) {
      for (const auto& [peer, alive] : statuses[i]->peers_alive) {
        Json e{{"peer", peer}, {"alive", alive}};
        std::string cell = absl::StrCat(peer, " ", alive ? "" : "DOWN ");
        if (m) {
          auto it = m->peers.find(peer);
          if (it != m->peers.end()) {
            e["lag_p99_ms"] = it->second.lag_p99_ms ? Json(*it->second.lag_p99_ms) : Json();
            e["backlog_records"] =
                it->second.backlog_records ? Json(*it->second.backlog_records) : Json();
            e["connected"] = it->second.connected ? Json(*it->second.connected) : Json();
            absl::StrAppend(&cell, "p99 ", it->second.lag_p99_ms ? Ms(*it->second.lag_p99_ms) : "-",
                            " backlog ",
                            it->second.backlog_records
                                ? absl::StrFormat("%.0f", *it->second.backlog_records)
                                : "-");
          }
        }
        peers.push_back(e);
        repl_cells.push_back(Trim(cell));
      }
    }
    const Group& g = groups[i];
    std::string lease_cell =
        g.holder.empty() ? "(none usable)"
                         : (g.holder == r.name ? absl::StrCat("home e", g.epoch)
                                               : absl::StrCat("held by ", g.holder, " e", g.epoch));
    if (r.replicator.empty()) lease_cell = "-";
    const bool ready = at(0, i).ok();
    all_ready = all_ready && ready;
    regions.push_back(
        Json{{"name", r.name},
             {"url", r.url},
             {"ready", ready},
             {"ready_error", ready ? Json() : Json(at(0, i).Describe())},
             {"geo", geo},
             {"failover", fo},
             {"replication", Json{{"reachable", statuses[i].has_value()}, {"peers", peers}}},
             {"lease",
              g.holder.empty()
                  ? Json()
                  : Json{{"holder", g.holder}, {"epoch", g.epoch}, {"home", g.holder == r.name}}}});
    rows.push_back(
        {r.name, ready ? "yes" : absl::StrCat("no (", at(0, i).Describe(), ")"), geo_cell, fo_cell,
         r.replicator.empty() ? "-"
         : statuses[i]        ? (repl_cells.empty() ? "no peers" : absl::StrJoin(repl_cells, "; "))
                              : "replicator unreachable",
         lease_cell});
  }
  Json out{{"regions", regions},
           {"leases", GroupsJson(groups)},
           {"geo", Json{{"urls", c_.geo},
                        {"reachable", geo_regions.is_array()},
                        {"last_resort_active", last_resort}}},
           {"dns", c_.dns.empty() ? Json() : Json(c_.dns)},
           {"errors", errors}};
  std::string text = RenderTable(
      {"REGION", "READY", "GEO", "FAILOVER", "REPLICATION (per peer)", "OWN ORDER LEASE"}, rows);
  if (!c_.regions.empty() && !c_.regions[0].replicator.empty()) {
    text += "\n" + GroupsTable(groups);
  }
  text += absl::StrCat("\ngeo: ", c_.geo.empty() ? "none" : absl::StrJoin(c_.geo, ","),
                       geo_regions.is_array() ? (last_resort ? " (LAST RESORT ACTIVE)" : " ok")
                                              : (c_.geo.empty() ? "" : " UNREACHABLE"),
                       c_.dns.empty() ? "" : absl::StrCat("; dns: ", c_.dns), "\n");
  if (!sku.empty()) {
    CtlResult rights = Rights(sku);
    if (rights.exit_code == 2) return rights;  // a bad --sku is bad usage, as for `rights`
    if (json_) {
      Json rj = Json::parse(rights.out, nullptr, false);
      out["rights"] = rj.is_discarded() ? Json() : rj;
    } else {
      text += "\n" + rights.out;
    }
    if (!rights.err.empty()) errors.push_back(Trim(rights.err));
    out["errors"] = errors;
  }
  CtlResult result;
  if (json_) {
    result.out = Dump(out);
  } else {
    result.out = text;
    for (const auto& e : errors)
      result.err += absl::StrCat("warning: ", e.get<std::string>(), "\n");
  }
  // A region not ready or a part that did not answer is a problem found (exit 1), as the other
  // commands report theirs: a script can tell a healthy cluster from the exit status alone.
  if (!all_ready || !errors.empty()) result.exit_code = 1;
  return result;
}

// ------------------------------------------------------------------------------------- leases
CtlResult Ctl::Leases() {
  std::vector<std::string> urls;
  for (const auto& r : c_.regions)
    urls.push_back(r.replicator.empty() ? "" : r.replicator + "/v1/status");
  std::vector<HttpResult> res = Get(urls, true);
  std::vector<std::optional<ReplicatorStatus>> statuses(c_.regions.size());
  Json unreachable = Json::array();
  for (size_t i = 0; i < res.size(); ++i) {
    auto s = res[i].ok()
                 ? ParseReplicatorStatus(res[i].body)
                 : absl::StatusOr<ReplicatorStatus>(absl::UnavailableError(res[i].Describe()));
    if (s.ok()) {
      statuses[i] = *std::move(s);
    } else {
      unreachable.push_back(Json{{"region", c_.regions[i].name}, {"error", s.status().message()}});
    }
  }
  const std::vector<Group> groups = Groups(c_.regions, statuses);
  CtlResult r;
  // A replicator that did not answer is a problem, as for `status`: nothing was checked there
  // (a script looking for split brain must not read "ok" from an unanswered question).
  bool problems = !unreachable.empty();
  for (const auto& g : groups) problems = problems || !g.problems.empty();
  r.exit_code = problems ? 1 : 0;
  if (json_) {
    r.out = Dump(Json{{"groups", GroupsJson(groups)}, {"unreachable", unreachable}});
  } else {
    r.out = GroupsTable(groups);
    for (const auto& u : unreachable)
      r.err += absl::StrCat("warning: ", u["region"].get<std::string>(),
                            " replicator: ", u["error"].get<std::string>(), "\n");
  }
  return r;
}

// ------------------------------------------------------------------------------------- rights
CtlResult Ctl::Rights(const std::string& sku) {
  CtlResult r;
  bool valid = !sku.empty() && sku.size() <= 64;
  for (char ch : sku)
    valid = valid &&
            (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.');
  if (!valid) {
    r.exit_code = 2;
    r.err = "meridianctl: SKU must be 1..64 characters of [A-Za-z0-9._-]\n";
    return r;
  }
  std::vector<std::string> urls;
  for (const auto& reg : c_.regions) urls.push_back(reg.url + "/v1/admin/rights/" + sku);
  for (const auto& reg : c_.regions)
    urls.push_back(reg.controller.empty() ? "" : reg.controller + "/v1/regions");
  std::vector<HttpResult> res = Get(urls, true);
  const size_t n = c_.regions.size();
  // Failover states (any controller that answers; a region lost for any of them is shown lost).
  std::map<std::string, std::string> state;
  std::set<std::string> reclaimed;  // lost regions whose rights an operator reclaimed
  for (size_t i = 0; i < n; ++i) {
    Json j = ParseJson(res[n + i]);
    if (!j.is_object() || !j.contains("regions") || !j["regions"].is_array()) continue;
    for (const Json& e : j["regions"]) {
      std::string& s = state[Str(e, "name")];
      const std::string v = Str(e, "state");
      if (s.empty() || s == "up") s = v;
      if (Str(e, "rights") == "reclaimed") reclaimed.insert(Str(e, "name"));
    }
  }
  Json views = Json::array();
  std::vector<std::vector<std::string>> rows;
  std::map<std::string, int64_t> frozen;  // from the first live view
  bool frozen_done = false;
  int answered = 0, no_stock = 0;
  for (size_t i = 0; i < n; ++i) {
    Json j = ParseJson(res[i]);
    if (res[i].status == 404) {
      ++no_stock;  // it answered: it has no stock record of this SKU
      views.push_back(Json{{"as_seen_by", c_.regions[i].name}, {"error", "no stock for this SKU"}});
      rows.push_back({c_.regions[i].name, "no stock for this SKU"});
      continue;
    }
    if (!j.is_object() || !j.contains("regions") || !j["regions"].is_array()) {
      views.push_back(Json{{"as_seen_by", c_.regions[i].name}, {"error", res[i].Describe()}});
      rows.push_back({c_.regions[i].name, absl::StrCat("unreachable (", res[i].Describe(), ")")});
      continue;
    }
    ++answered;
    // Frozen units come from the first view of a live region (a lost region's view is stale).
    auto st_of = [&state](const std::string& name) {
      auto it = state.find(name);
      return it == state.end() ? std::string() : it->second;
    };
    const std::string seen_by_state = st_of(c_.regions[i].name);
    const bool live_view = seen_by_state.empty() || seen_by_state == "up";
    std::vector<std::string> cells;
    for (const Json& row : j["regions"]) {
      const std::string name = Str(row, "region");
      const int64_t units =
          row.contains("rights") && row["rights"].is_number() ? row["rights"].get<int64_t>() : 0;
      const std::string st = st_of(name);
      const bool lost = !st.empty() && st != "up";
      const bool is_frozen = lost && !reclaimed.count(name);
      cells.push_back(absl::StrCat(
          name, " ", units,
          is_frozen ? " (FROZEN)" : (lost ? " (RECLAIMED: written off if it returns)" : "")));
      if (!frozen_done && live_view && is_frozen) frozen[name] = units;
    }
    if (live_view) frozen_done = true;
    Json v = j;
    views.push_back(v);
    rows.push_back({c_.regions[i].name, absl::StrJoin(cells, ", "),
                    j.contains("available") ? j["available"].dump() : "-",
                    j.contains("waiting_here") ? j["waiting_here"].dump() : "-"});
  }
  Json frozen_json = Json::array();
  int64_t frozen_total = 0;
  for (const auto& [name, units] : frozen) {
    frozen_json.push_back(Json{{"region", name}, {"units", units}});
    frozen_total += units;
  }
  r.exit_code = answered > 0 ? 0 : 1;
  if (json_) {
    r.out = Dump(Json{{"sku", sku},
                      {"views", views},
                      {"failover_states", state},
                      {"reclaimed_regions", reclaimed},
                      {"frozen", frozen_json},
                      {"frozen_units", frozen_total}});
  } else {
    r.out = absl::StrCat(
        "rights of ", sku, " (units each region may still sell, as each region sees them)\n",
        RenderTable({"AS SEEN BY", "RIGHTS PER REGION", "AVAILABLE", "WAITING"}, rows));
    if (frozen_total > 0 || !frozen.empty()) {
      std::vector<std::string> parts;
      for (const auto& [name, units] : frozen) parts.push_back(absl::StrCat(name, " ", units));
      absl::StrAppend(&r.out, "frozen (lost regions; reclaim with meridianctl declare-lost): ",
                      absl::StrJoin(parts, ", "), " = ", frozen_total, " units\n");
    }
    if (answered == 0 && no_stock == static_cast<int>(n)) {
      r.err = absl::StrCat("meridianctl: no region stocks ", sku, "\n");
    } else if (answered == 0 && no_stock > 0) {
      r.err = absl::StrCat("meridianctl: no region answered with rights for ", sku, " (", no_stock,
                           " of ", n, " have no stock of it, the others did not answer)\n");
    } else if (answered == 0) {
      r.err = "meridianctl: no region answered\n";
    }
  }
  return r;
}

// ---------------------------------------------------------------------------- residency audit
// Who holds a profile of each owner the regions listed as unverified (a cart or order tagged
// "any" where its owner has no profile): every region is asked for all of them, 1000 at a time.
// Ids that are not user ids are not sent (a region refuses a request with one whole); the
// records they name stay unproven. A region that does not answer every request is listed in
// `unanswered`: it may hold a profile that would make a record a violation.
Ctl::OwnerProfiles Ctl::ProfilesOf(const std::vector<Json>& answers) {
  std::set<std::string> ids;
  for (const Json& j : answers) {
    if (!j.is_object() || !j.contains("unverified") || !j["unverified"].is_array()) continue;
    for (const Json& u : j["unverified"]) {
      const std::string id = Str(u, "user_id");
      if (services::IsUserId(id)) ids.insert(id);
    }
  }
  OwnerProfiles out;
  if (ids.empty()) return out;
  std::vector<std::vector<std::string>> chunks;
  for (const auto& id : ids) {
    if (chunks.empty() || chunks.back().size() == 1000) chunks.emplace_back();
    chunks.back().push_back(id);
  }
  std::vector<HttpCall> calls;
  std::vector<size_t> region_of;
  for (size_t i = 0; i < c_.regions.size(); ++i) {
    for (const auto& chunk : chunks) {
      calls.push_back(HttpCall{"POST", c_.regions[i].url + "/v1/admin/residency/profiles",
                               Json{{"user_ids", chunk}}.dump(), c_.token});
      region_of.push_back(i);
    }
  }
  std::vector<HttpResult> res = http_->Run(calls, timeout_ms_);
  std::set<size_t> unanswered;
  for (size_t k = 0; k < res.size(); ++k) {
    Json j = ParseJson(res[k]);
    if (!j.is_object() || !j.contains("profiles") || !j["profiles"].is_object()) {
      unanswered.insert(region_of[k]);
      continue;
    }
    for (auto it = j["profiles"].begin(); it != j["profiles"].end(); ++it) {
      if (ids.count(it.key()) && it.value().is_string()) {
        out.held[it.key()].emplace_back(c_.regions[region_of[k]].name,
                                        it.value().get<std::string>());
      }
    }
  }
  for (size_t i : unanswered) out.unanswered.push_back(c_.regions[i].name);
  return out;
}

// One record `name` (jurisdiction `jur`) listed as unverified, against its owner's profiles
// elsewhere: its entry for the JSON output ("ok", "violation" or "unproven"); a problem for the
// latter two.
Json Ctl::CheckUnverified(const Json& u, const OwnerProfiles& profiles, const std::string& name,
                          const std::string& jur, std::vector<std::string>* problems) {
  const std::string what = absl::StrCat(Str(u, "table"), " ", Str(u, "key"));
  const std::string owner = Str(u, "user_id");
  Json c{{"table", Str(u, "table")}, {"key", Str(u, "key")}, {"user_id", owner}};
  std::vector<std::string> pinned, holders;
  if (auto it = profiles.held.find(owner); it != profiles.held.end()) {
    for (const auto& [holder, residency] : it->second) {
      holders.push_back(absl::StrCat(holder, ":", residency));
      // Pinned anywhere, even to this jurisdiction: under "any" the record could be shipped
      // everywhere (the region's own differs_from_profile rule).
      if (residency != "any")
        pinned.push_back(absl::StrCat(residency, " (profile at ", holder, ")"));
    }
  }
  c["profiles"] = holders;
  if (!pinned.empty()) {
    problems->push_back(absl::StrCat(what, " is tagged 'any' in ", name, " (", jur,
                                     "), but its owner is pinned to ",
                                     absl::StrJoin(pinned, ", ")));
    c["result"] = "violation";
    return c;
  }
  std::string unproven;
  if (!services::IsUserId(owner)) {
    unproven = absl::StrCat("its owner id '", owner.substr(0, 40), "' is not a user id");
  } else if (!profiles.unanswered.empty()) {
    unproven = absl::StrCat(absl::StrJoin(profiles.unanswered, ", "),
                            " did not answer for its owner's profile");
  } else if (holders.empty()) {
    unproven = "no region holds its owner's profile";
  }
  if (unproven.empty()) {
    c["result"] = "ok";
  } else {
    problems->push_back(absl::StrCat(what, " is tagged 'any' in ", name, ", and ", unproven,
                                     ": its residency cannot be proven"));
    c["result"] = "unproven";
  }
  return c;
}

CtlResult Ctl::ResidencyAudit() {
  std::vector<std::string> urls;
  for (const auto& reg : c_.regions) urls.push_back(reg.url + "/v1/admin/residency");
  std::vector<HttpResult> res = Get(urls, true);
  std::vector<Json> answers;
  for (const auto& r : res) answers.push_back(ParseJson(r));
  const auto profiles = ProfilesOf(answers);
  Json regions = Json::array();
  size_t failures = 0, records = 0;
  std::string text;
  for (size_t i = 0; i < res.size(); ++i) {
    const std::string& name = c_.regions[i].name;
    const Json& j = answers[i];
    Json entry{{"region", name}};
    std::vector<std::string> problems;
    if (!j.is_object() || !j.contains("tables") || !j["tables"].is_object() ||
        !j.contains("jurisdiction") || !j["jurisdiction"].is_string()) {
      problems.push_back(absl::StrCat("unreachable or malformed answer (", res[i].Describe(),
                                      "): cannot prove anything about this region"));
      entry["reachable"] = false;
    } else {
      entry["reachable"] = true;
      const std::string jur = j["jurisdiction"].get<std::string>();
      entry["jurisdiction"] = jur;
      entry["tables"] = j["tables"];
      entry["checked_at"] = j.value("checked_at", Json());
      // The region's own listing of offending records...
      const int64_t vc = j.contains("violation_count") && j["violation_count"].is_number()
                             ? j["violation_count"].get<int64_t>()
                             : -1;
      entry["violation_count"] = vc;
      entry["violations"] = j.contains("violations") ? j["violations"] : Json::array();
      if (vc != 0) {
        problems.push_back(vc < 0 ? "no violation_count in the answer"
                                  : absl::StrCat(vc, " record(s) pinned outside their residency"));
      }
      if (j.contains("violations") && j["violations"].is_array()) {
        for (const Json& v : j["violations"]) {
          problems.push_back(absl::StrCat(Str(v, "table"), " ", Str(v, "key"), " has residency ",
                                          Str(v, "residency"), " but sits in ", name, " (", jur,
                                          ", database ", Str(v, "database"), ")"));
        }
      }
      // ...and, independently, the per-residency counts: anything but "any" and this region's
      // jurisdiction must be zero.
      std::vector<std::string> table_cells;
      for (auto it = j["tables"].begin(); it != j["tables"].end(); ++it) {
        std::vector<std::string> parts;
        if (!it.value().is_object()) {
          problems.push_back(absl::StrCat("table ", it.key(), ": counts are not an object"));
          continue;
        }
        for (auto c = it.value().begin(); c != it.value().end(); ++c) {
          const int64_t count = c.value().is_number() ? c.value().get<int64_t>() : -1;
          parts.push_back(absl::StrCat(c.key(), "=", count));
          if (count > 0) records += static_cast<size_t>(count);
          if (c.key() != "any" && c.key() != jur && count != 0) {
            problems.push_back(absl::StrCat(it.key(), ": ", count, " record(s) with residency '",
                                            c.key(), "' in a ", jur, " region"));
          }
        }
        table_cells.push_back(absl::StrCat(it.key(), " {", absl::StrJoin(parts, " "), "}"));
      }
      absl::StrAppend(&text, name, " (jurisdiction ", jur, "): ", absl::StrJoin(table_cells, " "),
                      "; violations listed: ", vc, "\n");
      // Records tagged "any" whose owner has no profile here: checked against the profile the
      // other regions hold.
      const Json none = Json::array();
      const Json& unverified =
          j.contains("unverified") && j["unverified"].is_array() ? j["unverified"] : none;
      const bool counted = j.contains("unverified_count") && j["unverified_count"].is_number();
      const int64_t uc = counted ? j["unverified_count"].get<int64_t>() : 0;
      if (!counted) {
        problems.push_back(
            "no unverified_count in the answer: its records tagged 'any' were not checked");
      }
      Json checked = Json::array();
      for (const Json& u : unverified)
        checked.push_back(CheckUnverified(u, profiles, name, jur, &problems));
      if (uc > static_cast<int64_t>(unverified.size())) {
        problems.push_back(absl::StrCat(uc - static_cast<int64_t>(unverified.size()),
                                        " more record(s) tagged 'any' without their owner's "
                                        "profile here were not listed: not proven"));
      }
      entry["unverified"] = checked;
      entry["unverified_count"] = uc;
      if (uc > 0) {
        absl::StrAppend(&text, "  ", uc,
                        " record(s) tagged 'any' without their owner's profile "
                        "here, checked against the other regions' profiles\n");
      }
    }
    entry["problems"] = problems;
    entry["ok"] = problems.empty();
    if (!problems.empty()) {
      ++failures;
      for (const auto& p : problems) absl::StrAppend(&text, "  VIOLATION ", name, ": ", p, "\n");
    } else {
      absl::StrAppend(&text, "  ok: every record here is residency 'any' or '",
                      entry.value("jurisdiction", ""), "'\n");
    }
    regions.push_back(entry);
  }
  CtlResult r;
  r.exit_code = failures == 0 && !res.empty() ? 0 : 1;
  const std::string verdict =
      r.exit_code == 0 ? absl::StrCat("PASS: no pinned record sits outside its allowed regions (",
                                      res.size(), " regions, ", records, " records counted)")
                       : absl::StrCat("FAIL: ", failures, " of ", res.size(),
                                      " regions have violations or could not be checked");
  if (json_) {
    r.out = Dump(Json{{"result", r.exit_code == 0 ? "pass" : "fail"},
                      {"summary", verdict},
                      {"regions", regions}});
  } else {
    r.out = text + verdict + "\n";
  }
  return r;
}

// ------------------------------------------------------------------------------------ handback
CtlResult Ctl::Handback(const std::string& region, const std::string& from, int wait_s) {
  CtlResult r;
  const ClusterRegion* home = Find(region);
  if (home == nullptr || home->replicator.empty()) {
    r.exit_code = 2;
    r.err =
        absl::StrCat("meridianctl: no region '", region, "' with a replicator in this cluster\n");
    return r;
  }
  if (from == region) {  // "already home" would be said without looking
    r.exit_code = 2;
    r.err = absl::StrCat("meridianctl: --from ", from, ": the region that holds ", region,
                         "'s lease now, not the region itself (leave --from out to find it)\n");
    return r;
  }
  auto statuses = [&] {
    std::vector<std::string> urls;
    for (const auto& reg : c_.regions)
      urls.push_back(reg.replicator.empty() ? "" : reg.replicator + "/v1/status");
    std::vector<HttpResult> res = Get(urls, true);
    std::vector<std::optional<ReplicatorStatus>> out(res.size());
    for (size_t i = 0; i < res.size(); ++i) {
      if (!res[i].ok()) continue;
      auto s = ParseReplicatorStatus(res[i].body);
      if (s.ok()) out[i] = *std::move(s);
    }
    return out;
  };
  auto group_of = [&](const std::vector<std::optional<ReplicatorStatus>>& st) {
    for (const Group& g : Groups(c_.regions, st))
      if (g.region == region) return g;
    return Group{};
  };
  Group g = group_of(statuses());
  std::string holder = from;
  if (holder.empty()) holder = g.holder;
  Json out{{"region", region}};
  if (holder.empty()) {
    r.exit_code = 1;
    r.err = absl::StrCat("meridianctl: no replicator holds ", region,
                         "'s lease group usable right now (expired, or being taken over)\n");
    return r;
  }
  if (holder == region) {
    out["result"] = "already_home";
    out["epoch"] = g.epoch;
    r.out = json_ ? Dump(out)
                  : absl::StrCat(region, " already holds its own lease (epoch ", g.epoch, ")\n");
    return r;
  }
  const ClusterRegion* h = Find(holder);
  if (h == nullptr || h->replicator.empty()) {
    r.exit_code = 2;
    r.err = absl::StrCat("meridianctl: --from: no region '", holder, "' with a replicator\n");
    return r;
  }
  HttpResult res =
      http_->Do(HttpCall{"POST", absl::StrCat(h->replicator, "/v1/leases/", region, "/handback"),
                         "{}", c_.token},
                timeout_ms_);
  out["holder"] = holder;
  out["status"] = res.status;
  out["response"] = ParseJson(res);
  if (!res.ok()) {
    r.exit_code = 1;
    out["result"] = "refused";
    r.err = absl::StrCat("meridianctl: handback of ", region, " at ", holder,
                         " failed: ", res.Describe(), res.body.empty() ? "" : " " + res.body, "\n");
    if (json_) r.out = Dump(out);
    return r;
  }
  out["result"] = "released";
  const auto start = std::chrono::steady_clock::now();
  bool home_again = false;
  uint64_t epoch = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(wait_s)) {
    Group now = group_of(statuses());
    if (now.holder == region) {
      home_again = true;
      epoch = now.epoch;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const int64_t waited = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count();
  out["home"] = home_again;
  if (home_again) {
    out["epoch"] = epoch;
    out["after_ms"] = waited;
  }
  if (json_) {
    r.out = Dump(out);
  } else {
    r.out =
        absl::StrCat(holder, " released ", region, "'s lease group (was epoch ", g.epoch, ")\n");
    if (home_again) {
      absl::StrAppend(&r.out, region, " holds it again at epoch ", epoch, " after ", waited,
                      " ms\n");
    } else if (wait_s > 0) {
      absl::StrAppend(&r.out, region, " does not hold it yet after ", wait_s,
                      " s (it may still be syncing; see meridianctl leases)\n");
    }
  }
  if (!home_again && wait_s > 0) r.exit_code = 1;
  return r;
}

// -------------------------------------------------------------------------------- declare-lost
CtlResult Ctl::DeclareLost(const std::string& region, const std::string& into, bool yes,
                           bool force) {
  CtlResult r;
  if (Find(region) == nullptr) {
    r.exit_code = 2;
    r.err = absl::StrCat("meridianctl: no region '", region, "' in this cluster\n");
    return r;
  }
  // --into before the quorum query: a bad one must not be met only after following its advice.
  if (!into.empty()) {
    const ClusterRegion* t = Find(into);
    if (into == region || t == nullptr || t->replicator.empty()) {
      r.exit_code = 2;
      r.err = absl::StrCat("meridianctl: --into ", into,
                           into == region ? ": the region declared lost cannot take its own rights"
                           : t == nullptr ? ": not a region of this cluster"
                                          : ": that region runs no replicator",
                           "\n");
      return r;
    }
  }
  if (!yes) {
    r.exit_code = 2;
    r.err = absl::StrCat(
        "meridianctl: declare-lost is an operator decision: it reclaims ", region,
        "'s inventory rights for the other regions, and they are not given back if it returns. "
        "Re-run with --yes to confirm.\n");
    return r;
  }
  // What the controllers think, and who holds the region's lease group.
  std::vector<std::string> urls;
  for (const auto& reg : c_.regions)
    urls.push_back(reg.controller.empty() ? "" : reg.controller + "/v1/regions");
  for (const auto& reg : c_.regions)
    urls.push_back(reg.replicator.empty() ? "" : reg.replicator + "/v1/status");
  std::vector<HttpResult> res = Get(urls, true);
  const size_t n = c_.regions.size();
  // Only a controller whose state for the region is "lost" agrees: "recovering" means a quorum
  // sees it healthy again, and an empty or unknown state says nothing. Without --force a majority
  // of all regions' controllers must agree, the quorum of their own decision: a single
  // controller cut off from the others keeps "lost" (DownStillBackedLocked in controller.cc).
  const size_t quorum = n / 2 + 1;
  std::vector<std::string> lost_by, up_by, recovering_by, other_by, silent;
  for (size_t i = 0; i < n; ++i) {
    Json j = ParseJson(res[i]);
    if (!j.is_object() || !j.contains("regions") || !j["regions"].is_array()) {
      silent.push_back(c_.regions[i].name);
      continue;
    }
    bool listed = false;
    for (const Json& e : j["regions"]) {
      if (!e.is_object() || Str(e, "name") != region) continue;
      listed = true;
      const std::string state = Str(e, "state");
      if (state == "lost") {
        lost_by.push_back(c_.regions[i].name);
      } else if (state == "up") {
        up_by.push_back(c_.regions[i].name);
      } else if (state == "recovering") {
        recovering_by.push_back(c_.regions[i].name);
      } else {
        other_by.push_back(c_.regions[i].name);
      }
      break;
    }
    if (!listed) other_by.push_back(c_.regions[i].name);
  }
  const bool agreed = lost_by.size() >= quorum;
  std::string others;
  for (const auto& [what, who] :
       {std::pair<const char*, const std::vector<std::string>*>{"up at ", &up_by},
        {"recovering at ", &recovering_by},
        {"no state at ", &other_by},
        {"no answer from ", &silent}}) {
    if (who->empty()) continue;
    absl::StrAppend(&others, others.empty() ? "" : "; ", what, absl::StrJoin(*who, ","));
  }
  const std::string agree =
      absl::StrCat(lost_by.size(), " of ", n, " failover controllers consider ", region, " lost",
                   lost_by.empty() ? "" : absl::StrCat(" (", absl::StrJoin(lost_by, ","), ")"));
  std::vector<std::optional<ReplicatorStatus>> statuses(n);
  for (size_t i = 0; i < n; ++i) {
    if (!res[n + i].ok()) continue;
    auto s = ParseReplicatorStatus(res[n + i].body);
    if (s.ok()) statuses[i] = *std::move(s);
  }
  if (!agreed && !force) {
    r.exit_code = 1;
    r.err = absl::StrCat(
        "meridianctl: ",
        lost_by.empty() ? absl::StrCat("no failover controller considers ", region, " lost")
                        : absl::StrCat("only ", agree),
        others.empty() ? "" : absl::StrCat(" (", others, ")"), "; ", quorum, " of ", n,
        " must (a majority, as for their own decision); refusing. Use --force to declare it "
        "lost anyway.\n");
    return r;
  }
  r.err += absl::StrCat(agree, agreed ? "" : absl::StrCat(", fewer than ", quorum, " (--force)"),
                        others.empty() ? "" : absl::StrCat("; ", others), "\n");
  std::string target = into;
  if (target.empty()) {
    for (const Group& g : Groups(c_.regions, statuses))
      if (g.region == region && g.holder != region) target = g.holder;
  }
  if (target.empty()) {
    for (size_t i = 0; i < n; ++i)
      if (c_.regions[i].name != region && statuses[i]) {
        target = c_.regions[i].name;
        break;
      }
  }
  const ClusterRegion* t = Find(target);
  if (target == region || t == nullptr || t->replicator.empty()) {
    // A given --into was checked at the start: only a target chosen here can be missing.
    r.exit_code = 2;
    r.err = absl::StrCat("meridianctl: no live region to reclaim ", region,
                         "'s rights into (use --into REGION)\n");
    return r;
  }
  const std::string url = absl::StrCat(t->replicator, "/v1/regions/", region, "/declare-lost");
  // The replicator waits up to 2.5 s for the survivors' exchange, then up to 5 s for a majority
  // to record the declaration, around the region's calls: --timeout-ms (3 s by default) would
  // give up on a declaration that then goes through, its controllers never told.
  constexpr int kDeclareLostTimeoutMs = 45000;
  // Right after a takeover the replicator may refuse for a while: the survivors' exchange about
  // the region is not done (503, nothing declared). Asked again until declare_retry_window_.
  auto exchange_not_done = [](const HttpResult& res) {
    if (res.status != 503) return false;
    const Json answer = Json::parse(res.body, nullptr, false);
    return answer.is_object() && answer.contains("awaiting_exchange");
  };
  const auto retry_until = std::chrono::steady_clock::now() + declare_retry_window_;
  HttpResult res2;
  for (int attempt = 1;; ++attempt) {
    res2 = http_->Do(HttpCall{"POST", url, "{}", c_.token},
                     std::max(timeout_ms_, kDeclareLostTimeoutMs));
    if (!exchange_not_done(res2) || std::chrono::steady_clock::now() >= retry_until) break;
    r.err += absl::StrCat(Now(), " ", target, ": the survivors' exchange about ", region,
                          " is not done yet (try ", attempt, "; nothing declared); asking again\n");
    std::this_thread::sleep_for(declare_retry_pause_);
  }
  const char* user = std::getenv("USER");
  const std::string result = res2.ok() ? "ok" : (res2.status == 409 ? "refused" : "error");
  const std::string line = absl::StrCat(
      "event=operator_decision decision=declare_lost region=", LogValue(region),
      " into=", LogValue(target), " by=", LogValue(user != nullptr ? user : "?"),
      " controllers_lost=", LogValue(absl::StrJoin(lost_by, ",")),
      " controllers_agree=", lost_by.size(), "/", n, " forced=", force && !agreed ? 1 : 0,
      " result=", result, " status=", res2.status, " detail=",
      LogValue(res2.ok() ? "" : (res2.error.empty() ? res2.body.substr(0, 300) : res2.error)));
  r.err += absl::StrCat(Now(), " ", line, "\n");
  // The record of an operator decision must not be lost in silence: a failure to write it is a
  // warning and exit 1, whatever the replicator answered.
  bool audit_lost = false;
  if (!c_.audit_file.empty()) {
    std::ofstream audit(c_.audit_file, std::ios::app);
    if (audit) audit << Now() << " " << line << "\n" << std::flush;
    if (!audit) {
      audit_lost = true;
      r.err += absl::StrCat("warning: the decision could not be written to ", c_.audit_file,
                            " (the line above is its only record; keep it)\n");
    }
  }
  Json out{{"region", region},
           {"into", target},
           {"status", res2.status},
           {"result", result},
           {"controllers_lost", lost_by},
           {"controllers", n},
           {"controllers_needed", quorum},
           {"response", ParseJson(res2)}};
  if (res2.ok()) {
    // Tell the controllers, so their rights reports count the reclaimed units as moved.
    std::vector<HttpCall> tell;
    std::vector<std::string> told_names;
    for (const auto& reg : c_.regions) {
      if (reg.controller.empty()) continue;
      tell.push_back(
          HttpCall{"POST", absl::StrCat(reg.controller, "/v1/regions/", region, "/declared-lost"),
                   res2.body, c_.token});
      told_names.push_back(reg.name);
    }
    std::vector<HttpResult> told = http_->Run(tell, timeout_ms_);
    Json recorded = Json::array();
    for (size_t i = 0; i < told.size(); ++i) {
      if (told[i].ok()) {
        recorded.push_back(told_names[i]);
      } else {
        r.err += absl::StrCat("warning: controller ", told_names[i],
                              " did not record it: ", told[i].Describe(), "\n");
      }
    }
    out["controllers_recorded"] = recorded;
    r.out = json_ ? Dump(out)
                  : absl::StrCat(
                        region, " declared lost; its inventory rights were reclaimed into ", target,
                        " (recorded by ", recorded.size(), " controllers):\n", res2.body, "\n");
    if (audit_lost) r.exit_code = 1;
    return r;
  }
  r.exit_code = 1;
  if (res2.status == 404 || res2.status == 405) {
    r.err +=
        absl::StrCat("meridianctl: the replicator at ", t->replicator,
                     " does not offer POST /v1/regions/{region}/declare-lost (HTTP ", res2.status,
                     "): this build's replicator predates it, or the region name is unknown "
                     "to it. Nothing was changed. Response: ",
                     res2.body, "\n");
  } else if (res2.status == 409) {
    r.err += absl::StrCat("meridianctl: ", target, " refused: ", res2.body,
                          " (a region that still holds its own lease cannot be declared lost)\n");
  } else if (const Json answer = Json::parse(res2.body, nullptr, false);
             res2.status == 503 && answer.is_object() && answer.contains("pending_units")) {
    // Recorded, not restocked: a majority of regions has not recorded the declaration yet.
    std::string by = target;
    if (answer.contains("recorded_by") && answer["recorded_by"].is_array()) {
      for (const auto& peer : answer["recorded_by"])
        if (peer.is_string()) absl::StrAppend(&by, ", ", peer.get<std::string>());
    }
    r.err += absl::StrCat(
        "meridianctl: ", region, " is declared lost at ", target, ", but only ", by,
        " recorded the declaration, not a majority of regions: ",
        answer.contains("pending_units") && answer["pending_units"].is_number_unsigned()
            ? answer["pending_units"].get<uint64_t>()
            : 0,
        " units stay pending and none of them was restocked (if ", target,
        " were lost with the only copy, the region could sell them again on its return). Run "
        "declare-lost again once a majority of regions is reachable; nothing is reclaimed "
        "twice.\n");
  } else {
    r.err += absl::StrCat("meridianctl: declare-lost at ", target, " failed: ", res2.Describe(),
                          " ", res2.body, "\n");
  }
  if (json_) r.out = Dump(out);
  return r;
}

}  // namespace meridian::failover
