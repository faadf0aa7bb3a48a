#pragma once

// meridianctl's logic, apart from flag parsing (ctl_main.cc): where the cluster's endpoints are,
// and each command as a function of the HTTP answers it gets, rendered as a human table or JSON.
// Everything goes through HttpClient, so tests feed canned API responses.
//
// Exit codes: 0 done / everything checked out; 1 the command ran and found a problem (a residency
// violation, an unreachable region in an audit, a refused operator action); 2 bad usage or the
// cluster cannot be found.

#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "failover/http_client.h"

namespace meridian::failover {

struct ClusterRegion {
  std::string name;
  std::string url;         // region base URL
  std::string replicator;  // replicator operator API base URL ("" in a one-region cluster)
  std::string metrics;     // replicator /metrics URL ("" when unknown)
  std::string controller;  // meridian-failover base URL ("" when none runs)
};

struct ClusterEndpoints {
  std::vector<ClusterRegion> regions;
  std::vector<std::string> geo;  // meridian-geo base URLs
  std::string dns;               // pdns_server "host:port" (shown by status), may be empty
  std::string token;             // operator token
  std::string audit_file;        // where operator decisions are appended ("" = stderr only)
};

// deploy/meridian's data folder: cluster.env, <region>/url, <region>/ports.env (ADMIN_PORT,
// METRICS_PORT, FAILOVER_PORT), geo/ports.env (GEO_PORT, DNS_PORT), operator_token. Operator
// decisions are appended to DIR/operator-audit.log. NotFound / InvalidArgument naming the file.
[[nodiscard]] absl::StatusOr<ClusterEndpoints> LoadClusterFromDataDir(const std::string& dir);

// Reads KEY=VALUE lines (shell env files; comments and blank lines skipped, quotes stripped).
[[nodiscard]] absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ReadEnvFile(
    const std::string& path);

struct CtlResult {
  int exit_code = 0;
  std::string out;  // for stdout
  std::string err;  // for stderr
};

class Ctl {
 public:
  // `http` must outlive the Ctl. `json`: --output json.
  Ctl(ClusterEndpoints cluster, HttpClient* http, bool json, int timeout_ms = 3000)
      : c_(std::move(cluster)), http_(http), json_(json), timeout_ms_(timeout_ms) {}

  // Regions (ready, health as geo sees it, failover state, replication lag per peer, own lease),
  // every lease group, and the rights of `sku` when not empty.
  [[nodiscard]] CtlResult Status(const std::string& sku);
  // Every lease group: holder, epoch, and each replicator's view (disagreements flagged).
  [[nodiscard]] CtlResult Leases();
  // One SKU's rights per region as each region sees them, and the units frozen in lost regions.
  [[nodiscard]] CtlResult Rights(const std::string& sku);
  // Every region's GET /v1/admin/residency, checked: exit 1 on any violation or unreachable
  // region. A record a region lists as unverified (tagged "any", no profile of its owner there)
  // is checked against every region's profile of its owner (POST /v1/admin/residency/profiles):
  // a violation if the owner is pinned (anywhere: under "any" the record could ship everywhere),
  // unproven (exit 1) if no region holds the profile, its owner id is malformed, or a region did
  // not answer.
  [[nodiscard]] CtlResult ResidencyAudit();
  // POST /v1/leases/{region}/handback at the replicator holding the region's group (or `from`);
  // then waits up to wait_s for the region to hold it again.
  [[nodiscard]] CtlResult Handback(const std::string& region, const std::string& from, int wait_s);
  // Operator decision: reclaims a lost region's inventory rights into `into` (default: the holder
  // of its lease group). Refused without `yes`; unless `force`, refused when fewer than a
  // majority of all regions' controllers (regions / 2 + 1) report the region's state as "lost"
  // ("recovering", an empty or missing state, no answer do not count). Says how many agree.
  // Logged to stderr and the audit file.
  [[nodiscard]] CtlResult DeclareLost(const std::string& region, const std::string& into, bool yes,
                                      bool force);
  // How long DeclareLost asks again while the replicator answers that the survivors' exchange is
  // not done (default 30 s, a second between tries; tests shorten them).
  void SetDeclareLostRetry(std::chrono::milliseconds window, std::chrono::milliseconds pause) {
    declare_retry_window_ = window;
    declare_retry_pause_ = pause;
  }

 private:
  const ClusterRegion* Find(const std::string& name) const;
  std::vector<HttpResult> Get(const std::vector<std::string>& urls, bool auth);
  struct OwnerProfiles {
    // owner id -> (region, the residency of its profile there)
    std::map<std::string, std::vector<std::pair<std::string, std::string>>> held;
    std::vector<std::string> unanswered;  // regions that did not answer every request
  };
  OwnerProfiles ProfilesOf(const std::vector<nlohmann::json>& answers);
  static nlohmann::json CheckUnverified(const nlohmann::json& u, const OwnerProfiles& profiles,
                                        const std::string& name, const std::string& jur,
                                        std::vector<std::string>* problems);

  ClusterEndpoints c_;
  HttpClient* http_;
  bool json_;
  int timeout_ms_;
  std::chrono::milliseconds declare_retry_window_{30000};
  std::chrono::milliseconds declare_retry_pause_{1000};
};

// A plain-text table: columns padded to their widest cell, two spaces apart.
[[nodiscard]] std::string RenderTable(const std::vector<std::string>& header,
                                      const std::vector<std::vector<std::string>>& rows);

}  // namespace meridian::failover
