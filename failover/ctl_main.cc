// meridianctl: the operator CLI. Parses flags (CLI11 subcommands), finds the cluster (--data or
// explicit URLs) and runs one command from ctl.h (or the drill from drill.h).

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "common/cli.h"
#include "common/config_files.h"
#include "failover/ctl.h"
#include "failover/drill.h"
#include "failover/http_client.h"

namespace {

using meridian::failover::ClusterEndpoints;
using meridian::failover::ClusterRegion;

// "name=url" -> (name, url); false when malformed.
bool SplitAssignment(const std::string& s, std::string* name, std::string* url) {
  auto eq = s.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) return false;
  *name = s.substr(0, eq);
  *url = s.substr(eq + 1);
  while (!url->empty() && url->back() == '/') url->pop_back();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "meridianctl: operate a Meridian cluster (status, leases, rights, residency audit, "
      "handback, declare-lost, drills)"};
  app.require_subcommand(1);
  // Global flags also after the subcommand (`meridianctl status --data X`), as deploy/meridian
  // and netns.sh take flags in any position; subcommands created below inherit this.
  app.fallthrough();
  std::string data = ".meridian";
  std::string output = "table";
  int timeout_ms = 3000;
  std::vector<std::string> region_urls, replicator_urls, metrics_urls, failover_urls, geo_urls;
  std::string token, token_file;
  app.add_option("--data", data, "deploy/meridian's data folder (default .meridian)");
  app.add_option("-o,--output", output, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));
  app.add_option("--timeout-ms", timeout_ms, "per request (default 3000)")
      ->check(CLI::Range(10, 600000));
  app.add_option("--region", region_urls, "explicit cluster: NAME=REGION_URL (repeat per region)");
  app.add_option("--replicator", replicator_urls, "NAME=REPLICATOR_ADMIN_URL");
  app.add_option("--metrics", metrics_urls, "NAME=REPLICATOR_METRICS_URL (…/metrics)");
  app.add_option("--failover", failover_urls, "NAME=FAILOVER_CONTROLLER_URL");
  app.add_option("--geo", geo_urls, "meridian-geo base URL (repeatable)");
  app.add_option("--token", token, "operator token (explicit cluster)");
  app.add_option("--token-file", token_file, "file holding the operator token")
      ->check(CLI::ExistingFile);

  auto* status =
      app.add_subcommand("status",
                         "regions, readiness, geo health, failover state, lag, leases (exit 1: a "
                         "region not ready or a part not answering)");
  std::string status_sku;
  status->add_option("--sku", status_sku, "also summarize this SKU's rights");
  auto* leases = app.add_subcommand("leases", "every order-lease group: holder, epoch, views");
  auto* rights =
      app.add_subcommand("rights", "one SKU's inventory rights per region, frozen units");
  std::string rights_sku;
  rights->add_option("sku", rights_sku, "the SKU")->required();
  auto* residency = app.add_subcommand("residency", "data residency");
  residency->require_subcommand(1);
  auto* audit = residency->add_subcommand(
      "audit", "prove no pinned record sits outside its allowed regions (exit 1 otherwise)");
  auto* handback = app.add_subcommand("handback", "hand a region's order lease back to it");
  std::string handback_region, handback_from;
  int handback_wait = 10;
  handback->add_option("region", handback_region, "the lease group's home region")->required();
  handback->add_option("--from", handback_from, "the holder (default: whoever holds it)");
  handback
      ->add_option("--wait", handback_wait,
                   "seconds to wait for the region to hold it (default 10)")
      ->check(CLI::Range(0, 600));
  auto* declare = app.add_subcommand("declare-lost",
                                     "operator decision: reclaim a lost region's inventory rights");
  std::string declare_region, declare_into;
  bool declare_yes = false, declare_force = false;
  declare->add_option("region", declare_region, "the lost region")->required();
  declare->add_option("--into", declare_into,
                      "the region that takes the rights (default: the "
                      "holder of the lost region's lease group)");
  declare->add_flag("--yes", declare_yes, "confirm the decision");
  declare->add_flag("--force", declare_force, "even if no failover controller considers it lost");
  auto* drill = app.add_subcommand("drill", "operator drills");
  drill->require_subcommand(1);
  auto* region_loss =
      drill->add_subcommand("region-loss", "remove a region and measure the failover");
  meridian::failover::DrillOptions drill_options;
  region_loss->add_option("--region", drill_options.region, "the region to remove")->required();
  region_loss->add_option("--mode", drill_options.mode, "kill (default) or partition")
      ->check(CLI::IsMember({"kill", "partition"}));
  region_loss->add_option("--duration", drill_options.duration_s, "seconds the region stays away")
      ->check(CLI::Range(1, 3600));
  region_loss->add_option("--output-dir", drill_options.output_dir,
                          "report folder (default drills)");

  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
  const bool json = output == "json";

  if (region_loss->parsed()) {
    // The drill runs the cluster of --data (it kills and restarts its processes): flags naming
    // another cluster would be ignored without a word, so they are refused.
    for (const char* flag : {"--region", "--replicator", "--metrics", "--failover", "--geo",
                             "--token", "--token-file", "--timeout-ms"}) {
      if (app.count(flag) > 0) {
        std::fprintf(stderr,
                     "meridianctl: %s: drill region-loss runs the cluster of --data (default "
                     ".meridian) and takes no explicit cluster flags\n",
                     flag);
        return 2;
      }
    }
    drill_options.data_dir = data;
    drill_options.json = json;
#ifdef MERIDIAN_HAVE_DRILL
    return meridian::failover::RunDrillCommand(drill_options);
#else
    std::fprintf(stderr,
                 "meridianctl: the region-loss drill is not available in this build "
                 "(failover/drill.cc is not there yet)\n");
    return 2;
#endif
  }

  // Every URL a flag gives is an http(s) base URL with a host: anything else would only fail
  // later as an unreachable region, in a table that looks like an outage.
  const auto bad_url = [](const char* flag, const std::string& url) {
    const bool ok = meridian::common::ValidHttpUrl(url);
    if (!ok) {
      std::fprintf(stderr, "meridianctl: %s: '%s' is not an http:// or https:// URL with a host\n",
                   flag, url.c_str());
    }
    return !ok;
  };
  if (!token.empty() && !token_file.empty()) {
    std::fprintf(stderr, "meridianctl: give --token or --token-file, not both\n");
    return 2;
  }
  // --region names the cluster explicitly, and then --data would be ignored without a word.
  if (!region_urls.empty() && app.count("--data") > 0) {
    std::fprintf(stderr,
                 "meridianctl: give --data (a deploy/meridian cluster) or --region (an explicit "
                 "cluster), not both\n");
    return 2;
  }
  if (!token.empty()) {
    if (absl::Status st = meridian::common::CheckOperatorToken(token); !st.ok()) {
      std::fprintf(stderr, "meridianctl: --token: %s\n", std::string(st.message()).c_str());
      return 2;
    }
  }
  for (auto& g : geo_urls) {
    if (bad_url("--geo", g)) return 2;
    while (g.back() == '/') g.pop_back();  // bad_url made sure a host follows the scheme
  }
  ClusterEndpoints cluster;
  if (!region_urls.empty()) {
    for (const auto& s : region_urls) {
      ClusterRegion r;
      if (!SplitAssignment(s, &r.name, &r.url)) {
        std::fprintf(stderr, "meridianctl: --region must be NAME=URL, got '%s'\n", s.c_str());
        return 2;
      }
      if (bad_url("--region", r.url)) return 2;
      for (const auto& other : cluster.regions) {
        if (other.name == r.name) {
          std::fprintf(stderr, "meridianctl: --region names '%s' twice\n", r.name.c_str());
          return 2;
        }
      }
      cluster.regions.push_back(r);
    }
    struct Extra {
      std::vector<std::string>* list;
      const char* flag;
      std::string ClusterRegion::*field;
    };
    for (const Extra& e : {Extra{&replicator_urls, "--replicator", &ClusterRegion::replicator},
                           Extra{&metrics_urls, "--metrics", &ClusterRegion::metrics},
                           Extra{&failover_urls, "--failover", &ClusterRegion::controller}}) {
      for (const auto& s : *e.list) {
        std::string name, url;
        if (!SplitAssignment(s, &name, &url)) {
          std::fprintf(stderr, "meridianctl: %s must be NAME=URL, got '%s'\n", e.flag, s.c_str());
          return 2;
        }
        if (bad_url(e.flag, url)) return 2;
        bool found = false;
        for (auto& r : cluster.regions) {
          if (r.name == name) {
            r.*(e.field) = url;
            found = true;
          }
        }
        if (!found) {
          std::fprintf(stderr, "meridianctl: %s names '%s', which no --region names\n", e.flag,
                       name.c_str());
          return 2;
        }
      }
    }
    // Every call but /readyz and /metrics needs the cluster's operator token: without one, each
    // would answer 401 and the tables would read as an outage.
    if (token.empty() && token_file.empty()) {
      std::fprintf(stderr,
                   "meridianctl: --region needs --token or --token-file (the cluster's operator "
                   "token)\n");
      return 2;
    }
    cluster.geo = geo_urls;
    cluster.token = token;
  } else {
    if (!replicator_urls.empty() || !metrics_urls.empty() || !failover_urls.empty()) {
      std::fprintf(stderr, "meridianctl: --replicator/--metrics/--failover need --region\n");
      return 2;
    }
    auto c = meridian::failover::LoadClusterFromDataDir(data);
    if (!c.ok()) {
      std::fprintf(stderr, "meridianctl: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    cluster = *std::move(c);
    if (!geo_urls.empty()) cluster.geo = geo_urls;
    if (!token.empty()) cluster.token = token;
  }
  if (!token_file.empty()) {
    auto t = meridian::common::ReadOperatorTokenFile(token_file);
    if (!t.ok()) {
      std::fprintf(stderr, "meridianctl: --token-file: %s\n",
                   std::string(t.status().message()).c_str());
      return meridian::common::kUsageExitCode;
    }
    cluster.token = *std::move(t);
  }

  auto http = meridian::failover::MakeCurlHttpClient();
  meridian::failover::Ctl ctl(std::move(cluster), http.get(), json, timeout_ms);
  meridian::failover::CtlResult r;
  if (status->parsed()) {
    r = ctl.Status(status_sku);
  } else if (leases->parsed()) {
    r = ctl.Leases();
  } else if (rights->parsed()) {
    r = ctl.Rights(rights_sku);
  } else if (audit->parsed()) {
    r = ctl.ResidencyAudit();
  } else if (handback->parsed()) {
    r = ctl.Handback(handback_region, handback_from, handback_wait);
  } else if (declare->parsed()) {
    r = ctl.DeclareLost(declare_region, declare_into, declare_yes, declare_force);
  }
  std::fputs(r.out.c_str(), stdout);
  std::fputs(r.err.c_str(), stderr);
  return r.exit_code;
}
