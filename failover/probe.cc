#include "failover/probe.h"

#include <cmath>
#include <cstdlib>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace meridian::failover {

using Json = nlohmann::json;

absl::StatusOr<ReplicatorStatus> ParseReplicatorStatus(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (!j.is_object()) return absl::InvalidArgumentError("replicator status: not a JSON object");
  ReplicatorStatus s;
  if (!j.contains("region") || !j["region"].is_string())
    return absl::InvalidArgumentError("replicator status: no region");
  s.region = j["region"].get<std::string>();
  if (!j.contains("peers") || !j["peers"].is_array())
    return absl::InvalidArgumentError("replicator status: no peers array");
  for (const Json& p : j["peers"]) {
    if (!p.is_object() || !p.contains("name") || !p["name"].is_string() || !p.contains("alive") ||
        !p["alive"].is_boolean()) {
      return absl::InvalidArgumentError("replicator status: a peer without name/alive");
    }
    s.peers_alive[p["name"].get<std::string>()] = p["alive"].get<bool>();
  }
  if (j.contains("leases")) {
    if (!j["leases"].is_array())
      return absl::InvalidArgumentError("replicator status: leases is not an array");
    for (const Json& l : j["leases"]) {
      if (!l.is_object() || !l.contains("group_region") || !l["group_region"].is_string()) {
        return absl::InvalidArgumentError("replicator status: a lease without group_region");
      }
      LeaseInfo li;
      li.group_region = l["group_region"].get<std::string>();
      if (l.contains("epoch") && l["epoch"].is_number_unsigned())
        li.epoch = l["epoch"].get<uint64_t>();
      if (l.contains("owner") && l["owner"].is_string()) li.owner = l["owner"].get<std::string>();
      // value() would throw on a field of another type (`"held_here": 1`), on the probe thread.
      auto flag = [&](const char* key) {
        return l.contains(key) && l[key].is_boolean() && l[key].get<bool>();
      };
      li.held_here = flag("held_here");
      li.usable = flag("usable");
      li.syncing = flag("syncing");
      if (l.contains("valid_for_ms") && l["valid_for_ms"].is_number_integer())
        li.valid_for_ms = l["valid_for_ms"].get<int64_t>();
      s.leases.push_back(std::move(li));
    }
  }
  return s;
}

bool ParsePromLine(std::string_view line, PromSample* out) {
  size_t i = 0;
  auto skip_ws = [&] {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  };
  skip_ws();
  if (i >= line.size() || line[i] == '#') return false;
  const size_t name_start = i;
  while (i < line.size() &&
         (std::isalnum(static_cast<unsigned char>(line[i])) || line[i] == '_' || line[i] == ':')) {
    ++i;
  }
  if (i == name_start) return false;
  PromSample s;
  s.name = std::string(line.substr(name_start, i - name_start));
  if (i < line.size() && line[i] == '{') {
    ++i;
    for (;;) {
      skip_ws();
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      const size_t k0 = i;
      while (i < line.size() &&
             (std::isalnum(static_cast<unsigned char>(line[i])) || line[i] == '_'))
        ++i;
      if (i == k0 || i >= line.size() || line[i] != '=') return false;
      std::string key(line.substr(k0, i - k0));
      ++i;
      if (i >= line.size() || line[i] != '"') return false;
      ++i;
      std::string value;
      for (;;) {
        if (i >= line.size()) return false;
        char c = line[i++];
        if (c == '"') break;
        if (c == '\\') {
          if (i >= line.size()) return false;
          char e = line[i++];
          value.push_back(e == 'n' ? '\n' : e);
        } else {
          value.push_back(c);
        }
      }
      s.labels[key] = std::move(value);
      skip_ws();
      if (i < line.size() && line[i] == ',') {
        ++i;
        continue;
      }
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      return false;
    }
  }
  if (i >= line.size() || (line[i] != ' ' && line[i] != '\t')) return false;
  skip_ws();
  size_t v0 = i;
  while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
  std::string v(line.substr(v0, i - v0));
  if (v.empty()) return false;
  char* end = nullptr;
  s.value = std::strtod(v.c_str(), &end);
  if (end != v.c_str() + v.size()) return false;
  *out = std::move(s);
  return true;
}

absl::StatusOr<ReplicationMetrics> ParseReplicationMetrics(std::string_view text) {
  ReplicationMetrics m;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line =
        text.substr(pos, nl == std::string_view::npos ? text.size() - pos : nl - pos);
    pos = nl == std::string_view::npos ? text.size() + 1 : nl + 1;
    ++line_no;
    if (line.rfind("meridian_replication_", 0) != 0) continue;
    PromSample s;
    if (!ParsePromLine(line, &s)) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line ", line_no, ": cannot parse"));
    }
    auto peer_it = s.labels.find("peer");
    if (peer_it == s.labels.end()) continue;
    PeerReplication& p = m.peers[peer_it->second];
    if (s.name == "meridian_replication_lag_ms") {
      auto q = s.labels.find("quantile");
      if (q != s.labels.end() && q->second == "0.99" && std::isfinite(s.value))
        p.lag_p99_ms = s.value;
    } else if (s.name == "meridian_replication_queue_lag_ms_sum") {
      p.queue_lag_sum_ms = s.value;
      p.queue_lag_seen = true;
    } else if (s.name == "meridian_replication_queue_lag_ms_count") {
      p.queue_lag_count = s.value;
    } else if (s.name == "meridian_replication_lag_ms_sum") {
      p.lag_sum_ms = s.value;
    } else if (s.name == "meridian_replication_lag_ms_count") {
      p.lag_count = s.value;
    } else if (s.name == "meridian_replication_lag_seq") {
      p.backlog_records = s.value;
    } else if (s.name == "meridian_replication_connected") {
      p.connected = s.value == 1;
    }
  }
  return m;
}

std::map<std::string, RegionCheck> ComputeChecks(
    const std::vector<std::string>& regions, const std::map<std::string, RegionProbe>& probes,
    const std::map<std::string, ReplicationMetrics>& previous, const CatchUpPolicy& policy,
    const std::set<std::string>& lost) {
  const size_t majority = regions.size() / 2 + 1;
  std::map<std::string, RegionCheck> out;
  // Every replicator's metrics first: a region's catch-up needs its peers' backlogs toward it.
  std::map<std::string, ReplicationMetrics> metrics;
  std::map<std::string, std::string> metrics_error;
  for (const std::string& r : regions) {
    auto it = probes.find(r);
    if (it == probes.end()) continue;
    if (!it->second.metrics.ok()) {
      metrics_error[r] = it->second.metrics.Describe();
      continue;
    }
    auto m = ParseReplicationMetrics(it->second.metrics.body);
    if (m.ok()) {
      metrics[r] = *std::move(m);
    } else {
      metrics_error[r] = std::string(m.status().message());
    }
  }
  for (const std::string& r : regions) {
    RegionCheck c;
    auto it = probes.find(r);
    if (it == probes.end()) {
      c.reason = "not probed";
      out[r] = std::move(c);
      continue;
    }
    const RegionProbe& p = it->second;
    c.ready = p.readyz.ok();
    std::string why;
    if (p.status.ok()) {
      auto s = ParseReplicatorStatus(p.status.body);
      if (s.ok()) {
        c.status = *std::move(s);
      } else {
        why = absl::StrCat("replicator: ", s.status().message());
      }
    } else {
      why = absl::StrCat("replicator: ", p.status.Describe());
    }
    if (auto m = metrics.find(r); m != metrics.end()) c.metrics = m->second;
    size_t alive = 0;
    if (c.status) {
      for (const auto& [peer, a] : c.status->peers_alive) alive += a ? 1 : 0;
    }
    if (!c.ready) {
      c.reason = absl::StrCat("readyz: ", p.readyz.Describe());
    } else if (!c.status) {
      c.reason = why;
    } else if (alive + 1 < majority) {
      c.reason = absl::StrCat("replicator sees ", alive, " of ", c.status->peers_alive.size(),
                              " peers alive (cut off from a majority)");
    } else {
      c.healthy = true;
    }
    if (c.healthy) {
      // Catch-up: every peer alive, recent queue lag and peers' backlogs under the limits; peers
      // decided lost are left out (see probe.h).
      std::string lagging;
      for (const auto& [peer, a] : c.status->peers_alive) {
        if (!a && !lost.contains(peer)) {
          lagging = absl::StrCat("peer ", peer, " not alive");
          break;
        }
      }
      if (lagging.empty() && !c.metrics) {
        lagging = absl::StrCat("metrics: ", metrics_error[r]);
      }
      if (lagging.empty()) {
        // Every peer is evaluated (operators see all figures); the first failure is the reason.
        auto fail = [&lagging](std::string why) {
          if (lagging.empty()) lagging = std::move(why);
        };
        auto prev = previous.find(r);
        for (const auto& [peer, a] : c.status->peers_alive) {
          (void)a;
          if (lost.contains(peer)) continue;
          const auto now_it = c.metrics->peers.find(peer);
          if (now_it == c.metrics->peers.end()) {
            fail(absl::StrCat("no replication metrics for peer ", peer));
            continue;
          }
          const PeerReplication& now = now_it->second;
          const PeerReplication* before = nullptr;
          if (prev != previous.end()) {
            auto b = prev->second.peers.find(peer);
            if (b != prev->second.peers.end()) before = &b->second;
          }
          if (before == nullptr) {
            fail("no previous metrics sample yet");
          } else {
            // A replicator from before the queue lag (a rolling upgrade) exports only the
            // commit-to-apply lag: that is read then, skew and all, rather than no lag at all.
            const bool queue = now.queue_lag_seen && before->queue_lag_seen;
            // (count, sum) of the summary the rule reads.
            auto series = [queue](const PeerReplication& r) {
              return queue ? std::pair{r.queue_lag_count, r.queue_lag_sum_ms}
                           : std::pair{r.lag_count, r.lag_sum_ms};
            };
            const auto [n_now, s_now] = series(now);
            const auto [n_before, s_before] = series(*before);
            double dn = n_now - n_before;
            double ds = s_now - s_before;
            if (dn < 0) {  // the replicator restarted: everything since is this interval's
              dn = n_now;
              ds = s_now;
            }
            const double lag = dn > 0 ? ds / dn : 0;
            c.queue_lag_ms[peer] = lag;
            if (lag > policy.max_apply_lag_ms) {
              fail(absl::StrFormat("%s from %s %.0f ms > %.0f ms",
                                   queue ? "queue lag" : "apply lag", peer, lag,
                                   policy.max_apply_lag_ms));
            }
          }
          auto pm = metrics.find(peer);
          if (pm == metrics.end()) {
            fail(absl::StrCat("backlog of ", peer, " unknown (", metrics_error[peer], ")"));
            continue;
          }
          auto back = pm->second.peers.find(r);
          if (back == pm->second.peers.end() || !back->second.backlog_records) {
            fail(absl::StrCat("backlog of ", peer, " unknown (no lag_seq for ", r, ")"));
            continue;
          }
          c.backlog_records[peer] = *back->second.backlog_records;
          if (*back->second.backlog_records > policy.max_backlog_records) {
            fail(absl::StrFormat("%s has %.0f records not yet acked (> %.0f)", peer,
                                 *back->second.backlog_records, policy.max_backlog_records));
          }
        }
      }
      c.caught_up = lagging.empty();
      if (!c.caught_up) c.reason = absl::StrCat("catching up: ", lagging);
    }
    out[r] = std::move(c);
  }
  return out;
}

}  // namespace meridian::failover
