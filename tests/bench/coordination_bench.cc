// Issue 5 benchmarks on three regions of real processes (not a pass/fail test):
//
//   coordination_bench --mode rights    [--units 1000] [--rate 120] [--skew 60,30,10]
//   coordination_bench --mode sync-peer [--checkouts 400] [--rate 20]
//
// Both start a local cluster (tests/support/cluster.h: PostgreSQL, Redis, meridian-region and
// meridian-replicator per region, leases and rights on) with the emulated one-way delays
// us-east/eu-west 38 ms, us-east/ap-south 100 ms, eu-west/ap-south 60 ms.
//
// rights: one SKU with --units units, its rights split evenly over the three regions; customers in
//   every region check out one unit at a time, open loop, --rate attempts/s in all, split by
//   --skew; until the SKU is sold out. Reports units sold (must be --units), checkouts refused for
//   lack of rights, and how many of those were refused while another region held rights (each
//   region's own rights are sampled every 25 ms through its admin API; a refusal counts when, at
//   the sample before it, some other region held at least one unit), and the units stranded in any
//   region's rights when the SKU sold out (must be 0).
// sync-peer: checkouts at us-east, whose nearest peer is eu-west (38 ms one way), first with
//   durability async, then with sync-peer, one at a time at --rate per second; reports p50/p90/p99
//   of each and the target: sync-peer p99 <= async p99 + RTT to the nearest peer (76 ms) + 20 ms.
// Figures go to stdout and to --out (JSON).

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "common/cli.h"
#include "common/files.h"
#include "tests/integration/http_client.h"
#include "tests/support/cluster.h"
#include "tests/support/eventually.h"

namespace {

using meridian::test_support::Cluster;
using meridian::testing::Request;
using meridian::testing::Response;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* kLeases = "leases: {ttl_ms: 6000, renew_interval_ms: 1000, handback_after_ms: 10000}";

std::unique_ptr<Cluster> StartCluster(const std::string& name, const std::string& region_extra) {
  meridian::test_support::ClusterOptions o;
  o.pool_open_at_start = 0;  // every connection at the start, as a region opens them by default
  o.name = name;
  o.delay_ms = {{"us-east/eu-west", 38}, {"us-east/ap-south", 100}, {"eu-west/ap-south", 60}};
  o.coordination = true;
  o.coordination_yaml = kLeases;
  o.region_yaml_extra = region_extra;
  o.pool_size = 8;
  auto c = Cluster::Start(o);
  if (!c.ok()) {
    std::fprintf(stderr, "coordination_bench: cluster: %s\n",
                 std::string(c.status().message()).c_str());
    std::exit(1);
  }
  return *std::move(c);
}

std::string Op(const Cluster& c) { return "Bearer " + c.options().operator_token; }

// The cart holds exactly one unit of `sku` (a refused checkout leaves the cart as it was).
void OneInCart(const Cluster& c, size_t region, const std::string& auth, const std::string& sku) {
  if (Request(c.http_port(region), "PUT", "/v1/cart/items/" + sku, Json{{"quantity", 1}}.dump(),
              {{"Authorization", auth}})
          .status == 404) {
    Request(c.http_port(region), "POST", "/v1/cart/items",
            Json{{"sku", sku}, {"quantity", 1}}.dump(), {{"Authorization", auth}});
  }
}

using meridian::test_support::Eventually;

void WaitForLeases(const Cluster& c) {
  for (size_t i = 0; i < c.size(); ++i) {
    bool ok = Eventually(
        [&] {
          Response r =
              Request(c.http_port(i), "GET", "/v1/admin/leases", "", {{"Authorization", Op(c)}});
          Json j = Json::parse(r.body, nullptr, false);
          if (!j.is_object()) return false;
          for (const auto& g : j["groups"])
            if (g.value("group_region", "") == c.spec(i).name) return g.value("held_here", false);
          return false;
        },
        30);
    if (!ok) {
      std::fprintf(stderr, "coordination_bench: %s never got its lease\n", c.spec(i).name.c_str());
      std::exit(1);
    }
  }
}

void Product(const Cluster& c, const std::string& sku) {
  Request(c.http_port(0), "PUT", "/v1/admin/products/" + sku,
          Json{{"name", "Item " + sku}, {"price_cents", 1000}}.dump(), {{"Authorization", Op(c)}});
  for (size_t i = 0; i < c.size(); ++i) {
    Eventually([&] { return Request(c.http_port(i), "GET", "/v1/products/" + sku).status == 200; },
               30);
  }
}

std::string Customer(const Cluster& c, size_t region, const std::string& email) {
  Request(c.http_port(region), "POST", "/v1/users",
          Json{{"email", email}, {"password", "long-password"}, {"residency", "any"}}.dump());
  Response s = Request(c.http_port(region), "POST", "/v1/sessions",
                       Json{{"email", email}, {"password", "long-password"}}.dump());
  return "Bearer " + Json::parse(s.body, nullptr, false).value("token", "");
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

// This region's own rights for `sku`, as its admin API shows them (-1 if unreadable).
int64_t OwnRights(const Cluster& c, size_t region, const std::string& sku) {
  Response r = Request(c.http_port(region), "GET", "/v1/admin/rights/" + sku, "",
                       {{"Authorization", Op(c)}});
  Json j = Json::parse(r.body, nullptr, false);
  if (!j.is_object()) return -1;
  for (const auto& x : j["regions"]) {
    if (x.value("region", "") == c.spec(region).name) return x.value("rights", int64_t{0});
  }
  return 0;
}

Json RunRights(int units, double rate, std::vector<double> skew, double max_seconds) {
  auto c = StartCluster("rights", "");
  WaitForLeases(*c);
  const std::string sku = "scarce-1";
  Product(*c, sku);
  const int base = units / 3;
  for (size_t i = 0; i < 3; ++i) {
    int n = i == 2 ? units - 2 * base : base;
    Request(c->http_port(i), "POST", "/v1/admin/inventory/" + sku + "/restock",
            Json{{"units", n}}.dump(), {{"Authorization", Op(*c)}});
  }
  // Let every region see every restock (the rights split) before demand starts.
  for (size_t i = 0; i < 3; ++i) {
    Eventually(
        [&] {
          Response r = Request(c->http_port(i), "GET", "/v1/inventory/" + sku);
          return Json::parse(r.body, nullptr, false).value("available", 0) == units;
        },
        30);
  }
  // Rights samples: region -> (time, own rights).
  std::mutex samples_mu;
  std::vector<std::vector<std::pair<Clock::time_point, int64_t>>> samples(3);
  std::atomic<bool> stop{false};
  std::thread sampler([&] {
    while (!stop) {
      for (size_t i = 0; i < 3; ++i) {
        int64_t r = OwnRights(*c, i, sku);
        std::lock_guard<std::mutex> l(samples_mu);
        samples[i].emplace_back(Clock::now(), r);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  });
  std::atomic<int> sold{0};
  std::atomic<int> attempts{0};
  std::mutex refusals_mu;
  std::vector<std::pair<size_t, Clock::time_point>> refusals;
  std::map<int, int> errors;
  Clock::time_point sold_out_at{};
  std::vector<std::thread> clients;
  const auto start = Clock::now();
  double total_skew = 0;
  for (double s : skew) total_skew += s;
  for (size_t region = 0; region < 3; ++region) {
    const double region_rate = rate * skew[region] / total_skew;
    const int threads = std::max(1, static_cast<int>(std::ceil(region_rate / 15.0)));
    for (int t = 0; t < threads; ++t) {
      clients.emplace_back([&, region, t, region_rate, threads] {
        const std::string auth = Customer(
            *c, region, "b" + std::to_string(region) + "-" + std::to_string(t) + "@example.com");
        const auto period = std::chrono::duration<double>(threads / region_rate);
        auto next = Clock::now();
        while (!stop) {
          next += std::chrono::duration_cast<Clock::duration>(period);
          std::this_thread::sleep_until(next);
          if (stop) break;
          OneInCart(*c, region, auth, sku);
          ++attempts;
          Response r = Request(c->http_port(region), "POST", "/v1/checkout", "{}",
                               {{"Authorization", auth}});
          if (r.status == 201) {
            if (++sold >= units) {
              std::lock_guard<std::mutex> l(refusals_mu);
              sold_out_at = Clock::now();
              stop = true;
            }
          } else {
            std::lock_guard<std::mutex> l(refusals_mu);
            if (r.status == 409) {
              refusals.emplace_back(region, Clock::now());
            } else {
              ++errors[r.status];
            }
          }
          if (std::chrono::duration<double>(Clock::now() - start).count() > max_seconds)
            stop = true;
        }
      });
    }
  }
  for (auto& t : clients) t.join();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  // Stranded: what any region still holds once the SKU is sold out (after deltas settle).
  std::this_thread::sleep_for(std::chrono::seconds(2));
  stop = true;
  sampler.join();
  int64_t stranded = 0;
  for (size_t i = 0; i < 3; ++i) stranded += std::max<int64_t>(0, OwnRights(*c, i, sku));
  // Refusals while another region held rights (the last sample at or before the refusal).
  // Each refusal in detail: when (ms before the sell-out; negative after it), and what every
  // region held at the sample before it.
  int avoidable = 0;
  std::vector<int> refused_by(3, 0);
  Json detail = Json::array();
  const Clock::time_point end = sold_out_at == Clock::time_point{} ? Clock::now() : sold_out_at;
  for (const auto& [region, t] : refusals) {
    ++refused_by[region];
    bool spare = false;
    Json held_by = Json::array();
    for (size_t o = 0; o < 3; ++o) {
      int64_t held = 0;
      for (const auto& [st, r] : samples[o]) {
        if (st > t) break;
        held = r;
      }
      held_by.push_back(held);
      if (o != region && held >= 1) spare = true;
    }
    if (spare) ++avoidable;
    detail.push_back(Json{{"region", c->spec(region).name},
                          {"ms_before_sellout",
                           std::chrono::duration_cast<std::chrono::milliseconds>(end - t).count()},
                          {"rights_held", held_by},
                          {"another_held_rights", spare}});
  }
  Json out{{"mode", "rights"},
           {"units", units},
           {"sold", sold.load()},
           {"attempts", attempts.load()},
           {"refused_for_rights", refusals.size()},
           {"refused_while_another_region_held_rights", avoidable},
           {"refused_while_spare_pct", attempts.load() ? 100.0 * avoidable / attempts.load() : 0.0},
           {"refused_by_region", refused_by},
           {"stranded_units_at_sellout", stranded},
           {"other_errors", errors.size()},
           {"seconds", seconds},
           {"rate_per_s", rate},
           {"skew", skew},
           {"refusals", detail}};
  std::printf(
      "rights: %d of %d units sold in %.1f s (%d checkouts); refused for rights %zu (%d while "
      "another region held rights = %.2f%% of checkouts; target <= 1%%); stranded at sellout %lld "
      "(target 0)\n",
      sold.load(), units, seconds, attempts.load(), refusals.size(), avoidable,
      out["refused_while_spare_pct"].get<double>(), static_cast<long long>(stranded));
  return out;
}

std::vector<double> Checkouts(const Cluster& c, int n, double rate, const char* label) {
  const std::string sku = "mug-1";
  const std::string auth = Customer(c, 0, std::string(label) + "@example.com");
  std::vector<double> ms;
  const auto period = std::chrono::duration<double>(1.0 / rate);
  auto next = Clock::now();
  int durable = 0;
  for (int i = 0; i < n; ++i) {
    next += std::chrono::duration_cast<Clock::duration>(period);
    std::this_thread::sleep_until(next);
    OneInCart(c, 0, auth, sku);
    auto t0 = Clock::now();
    Response r = Request(c.http_port(0), "POST", "/v1/checkout", "{}", {{"Authorization", auth}});
    double d = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (r.status != 201) continue;
    if (Json::parse(r.body, nullptr, false).value("durability", "") == "sync-peer") ++durable;
    ms.push_back(d);
  }
  std::printf("%s: %zu checkouts, %d acknowledged sync-peer\n", label, ms.size(), durable);
  return ms;
}

Json RunSyncPeer(int n, double rate) {
  Json out{{"mode", "sync-peer"}, {"checkouts", n}, {"rate_per_s", rate}};
  for (const char* mode : {"async", "sync-peer"}) {
    auto c = StartCluster(std::string("sync-") + mode, std::string("durability: ") + mode + "\n");
    WaitForLeases(*c);
    Product(*c, "mug-1");
    Request(c->http_port(0), "POST", "/v1/admin/inventory/mug-1/restock",
            Json{{"units", n + 100}}.dump(), {{"Authorization", Op(*c)}});
    (void)Checkouts(*c, 20, rate, (std::string(mode) + "-warmup").c_str());
    std::vector<double> ms = Checkouts(*c, n, rate, mode);
    out[mode] = Json{{"p50_ms", Percentile(ms, 0.5)},
                     {"p90_ms", Percentile(ms, 0.9)},
                     {"p99_ms", Percentile(ms, 0.99)},
                     {"n", ms.size()}};
    std::printf("%s checkout: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms\n", mode, Percentile(ms, 0.5),
                Percentile(ms, 0.9), Percentile(ms, 0.99));
  }
  const double target = out["async"]["p99_ms"].get<double>() + 76.0 + 20.0;
  out["target_p99_ms"] = target;
  out["met"] = out["sync-peer"]["p99_ms"].get<double>() <= target;
  std::printf(
      "sync-peer p99 %.1f ms vs target %.1f ms (async p99 + 76 ms RTT to eu-west + 20): %s\n",
      out["sync-peer"]["p99_ms"].get<double>(), target, out["met"].get<bool>() ? "met" : "NOT met");
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"coordination_bench: inventory rights under skewed demand, sync-peer latency"};
  std::string mode = "rights";
  int units = 1000;
  double rate = 120;
  std::string skew_s = "60,30,10";
  int checkouts = 400;
  double sync_rate = 20;
  double max_seconds = 300;
  std::string out_path = "results/coordination.json";
  app.add_option("--mode", mode, "rights or sync-peer")
      ->check(CLI::IsMember({"rights", "sync-peer"}));
  app.add_option("--units", units, "rights: units of the SKU")->check(CLI::Range(3, 1000000));
  app.add_option("--rate", rate, "rights: checkout attempts per second, all regions")
      ->check(meridian::common::FiniteRange(1.0, 5000.0));
  app.add_option("--skew", skew_s, "rights: demand split us-east,eu-west,ap-south");
  app.add_option("--max-seconds", max_seconds, "rights: give up after this long")
      ->check(meridian::common::FiniteRange(10.0, 3600.0));
  app.add_option("--checkouts", checkouts, "sync-peer: checkouts per mode")
      ->check(CLI::Range(10, 100000));
  app.add_option("--sync-rate", sync_rate, "sync-peer: checkouts per second")
      ->check(meridian::common::FiniteRange(1.0, 500.0));
  app.add_option("--out", out_path, "JSON results file");
  if (auto rc = meridian::common::ParseFlags(app, argc, argv)) return *rc;
  if (absl::Status st = meridian::common::CheckWritableFile("--out", out_path); !st.ok()) {
    std::fprintf(stderr, "coordination_bench: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  std::vector<double> skew;
  std::stringstream ss(skew_s);
  for (std::string part; std::getline(ss, part, ',');) skew.push_back(std::atof(part.c_str()));
  if (skew.size() != 3 || *std::min_element(skew.begin(), skew.end()) <= 0) {
    std::fprintf(stderr, "coordination_bench: --skew needs three positive numbers\n");
    return 2;
  }
  Json result = mode == "rights" ? RunRights(units, rate, skew, max_seconds)
                                 : RunSyncPeer(checkouts, sync_rate);
  Json all = Json::object();
  {
    std::ifstream in(out_path);
    if (in) all = Json::parse(in, nullptr, false);
    if (!all.is_object()) all = Json::object();
  }
  all[mode] = result;
  if (absl::Status st = meridian::common::WriteTextFile(out_path, all.dump(2) + "\n"); !st.ok()) {
    std::fprintf(stderr, "coordination_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::printf("written to %s\n", out_path.c_str());
  return 0;
}
