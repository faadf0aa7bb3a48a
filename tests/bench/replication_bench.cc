// Replication lag and bytes on the wire, three regions on this machine (not a pass/fail test).
//
// Starts a local three-region cluster of real processes (tests/support/cluster.h: PostgreSQL,
// Redis, meridian-region, meridian-replicator per region; a link proxy per pair holding bytes for
// the pair's one-way delay: us-east/eu-west 38 ms, us-east/ap-south 100 ms, eu-west/ap-south
// 60 ms), then drives --rate cart changes per second into every region at once, the way the
// region commits them (the cart row and its delta in the outbox, one transaction per change, same
// customers in every region), open loop, for --seconds. Then it waits until every region holds
// the same carts and reports, per directed pair, p50 and p99 of the lag from the origin's commit
// to the apply at the peer (the replicators' meridian_replication_lag_ms summaries), and the
// bytes the links carried per shipped cart change against the encoded delta's size.
//
//   replication_bench [--seconds 30] [--rate 2000] [--changes-per-tx 10] [--users 20000]
//                     [--baseline] [--out results/replication.json]
// --changes-per-tx groups changes of distinct customers in one commit, as a busy region's group
// commit would: this machine (2 cores for three regions' PostgreSQL, servers and replicators)
// sustains about 1,850 single-change commits/s per region with replication off (--baseline
// --changes-per-tx 1), so 2,000 changes/s per region needs them grouped.

#include <unistd.h>
#include <pqxx/pqxx>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "common/cli.h"
#include "common/files.h"
#include "crdt/codec.h"
#include "region/documents.h"
#include "services/auth.h"
#include "services/domain.h"
#include "tests/support/cluster.h"

namespace {

using meridian::test_support::Cluster;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct DriverStats {
  std::atomic<int64_t> ops{0}, errors{0}, delta_bytes{0}, late{0};
  std::mutex mu;
  std::map<std::string, std::map<std::string, int64_t>> committed;  // user -> sku -> units
};

// One region's load: `threads` connections per shard, each paced to its share of `rate`.
// The rows of one commit are written as the region writes them (region/cart_api.cc: the cart
// row, then its delta into the outbox), in two multi-row statements, or with --per-change-sql in
// the region's own two statements per change (SaveCartSql).
void Drive(const Cluster& c, size_t region, double rate, int threads, int per_tx, int users,
           int nskus, double seconds, bool per_change_sql, DriverStats& stats) {
  const uint32_t replica = c.spec(region).replica_id;
  // The customers, with ids as the region makes them (a peer refuses a cart keyed otherwise).
  std::vector<std::string> ids;
  for (int u = 0; u < users; ++u) {
    ids.push_back(
        meridian::services::UserIdForEmail("bench-user-" + std::to_string(u) + "@example.com"));
  }
  std::vector<std::thread> pool;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<std::unique_ptr<pqxx::connection>> shards;
      std::vector<uint32_t> actors;  // each shard's cart actor, as the region takes it
      for (const char* db : {"shard0", "shard1"}) {
        shards.push_back(std::make_unique<pqxx::connection>(c.Dsn(region, db)));
        pqxx::nontransaction q(*shards.back());
        actors.push_back(meridian::region::CartActor(
            replica, q.exec1("SELECT id FROM outbox_stream LIMIT 1")[0].as<std::string>()));
      }
      std::mt19937_64 rng(region * 1000 + t);
      const double per_thread = rate / threads / per_tx;
      for (int64_t i = 0;; ++i) {
        auto due = start + std::chrono::microseconds(static_cast<int64_t>(i * 1e6 / per_thread));
        if (due - start > std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6))) break;
        auto now = Clock::now();
        if (due > now) {
          std::this_thread::sleep_until(due);
        } else if (now - due > std::chrono::milliseconds(100)) {
          ++stats.late;
        }
        // `per_tx` changes of distinct customers of one shard in one transaction.
        int shard = static_cast<int>(rng() % 2);
        std::vector<std::string> batch;
        while (static_cast<int>(batch.size()) < per_tx) {
          const std::string& user = ids[rng() % ids.size()];
          if (meridian::services::ShardForUser(user, 2) != shard) continue;
          if (std::find(batch.begin(), batch.end(), user) == batch.end()) batch.push_back(user);
        }
        std::sort(batch.begin(), batch.end());  // lock order
        try {
          pqxx::work tx(*shards[shard]);
          // The region's read-merge-write of each cart (region/cart_api.cc: the document's
          // advisory lock, then the row), for the whole group at once: the locks in key order
          // and the rows in one round trip, then every cart row and outbox delta in one.
          std::string read = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(";
          std::string in;
          for (const std::string& user : batch) {
            read += (in.empty() ? "ARRAY[" : ", ") + tx.quote("cart:" + user);
            in += (in.empty() ? "" : ", ") + tx.quote(user);
          }
          read += "]::text[]) AS k; SELECT user_id, state, version FROM carts WHERE user_id IN (" +
                  in + ") FOR UPDATE";
          std::map<std::string, std::pair<meridian::crdt::Cart, int64_t>> rows;
          for (const auto& r : tx.exec(read)) {
            pqxx::binarystring b(r[1]);
            auto decoded =
                meridian::crdt::DecodeCart(std::string_view(b.get(), b.size()), actors[shard]);
            if (!decoded.ok()) throw std::runtime_error("undecodable cart");
            rows.emplace(r[0].as<std::string>(),
                         std::make_pair(*std::move(decoded), r[2].as<int64_t>()));
          }
          std::string writes, cart_rows, outbox_rows;
          int64_t bytes = 0;
          std::vector<std::string> skus;
          for (const std::string& user : batch) {
            std::string sku = "sku-" + std::to_string(rng() % nskus);
            skus.push_back(sku);
            auto it = rows.find(user);
            meridian::crdt::Cart cart = it == rows.end() ? meridian::crdt::Cart(actors[shard])
                                                         : std::move(it->second.first);
            const int64_t version = it == rows.end() ? 0 : it->second.second;
            meridian::crdt::Cart delta = cart.Add(sku, 1);
            const std::string d = meridian::crdt::Encode(delta);
            bytes += static_cast<int64_t>(d.size());
            if (per_change_sql) {
              writes +=
                  meridian::region::SaveCartSql(tx, user, "any", cart, delta, version + 1, replica);
              continue;
            }
            const std::string state = meridian::crdt::Encode(cart);
            auto raw = [&](const std::string& b) {
              return tx.quote_raw(reinterpret_cast<const unsigned char*>(b.data()), b.size());
            };
            cart_rows += (cart_rows.empty() ? "(" : ", (") + tx.quote(user) + ", " + raw(state) +
                         ", 'any', " + tx.quote(version + 1) + ")";
            outbox_rows += (outbox_rows.empty() ? "(" : ", (") + tx.quote(replica) + ", 'cart', " +
                           tx.quote(user) + ", " + raw(d) + ", 'any')";
          }
          if (!per_change_sql) {
            writes = "INSERT INTO carts (user_id, state, residency, version) VALUES " + cart_rows +
                     meridian::region::kCartUpsertConflictSql +
                     "; INSERT INTO outbox (origin, kind, key, payload, residency) VALUES " +
                     outbox_rows + ";";
          }
          tx.exec(writes);
          tx.commit();
          {
            std::lock_guard<std::mutex> l(stats.mu);
            for (size_t k = 0; k < batch.size(); ++k) stats.committed[batch[k]][skus[k]] += 1;
          }
          stats.delta_bytes += bytes;
          stats.ops += per_tx;
        } catch (const std::exception& e) {
          ++stats.errors;
        }
      }
    });
  }
  for (auto& t : pool) t.join();
}

// Every cart of one region (both shards) as its lines, to tell when the regions agree. (The
// stored bytes may differ between replicas of the same state: each region's copy carries its
// own compaction of the causal context.)
std::map<std::string, std::vector<std::pair<std::string, int64_t>>> Carts(const Cluster& c,
                                                                          size_t region) {
  std::map<std::string, std::vector<std::pair<std::string, int64_t>>> out;
  for (const char* db : {"shard0", "shard1"}) {
    pqxx::connection conn(c.Dsn(region, db));
    pqxx::work tx(conn);
    for (const auto& r : tx.exec("SELECT user_id, state FROM carts")) {
      pqxx::binarystring b(r[1]);
      auto cart = meridian::crdt::DecodeCart(std::string_view(b.get(), b.size()), 99);
      if (cart.ok()) out[r[0].as<std::string>()] = cart->Lines();
    }
  }
  return out;
}

// A summary quantile from Prometheus text: name{peer="P",quantile="Q"} V.
double Quantile(const std::string& text, const std::string& peer, const std::string& q) {
  std::string key = "meridian_replication_lag_ms{peer=\"" + peer + "\",quantile=\"" + q + "\"} ";
  auto p = text.find(key);
  if (p == std::string::npos) return -1;
  return std::stod(text.substr(p + key.size()));
}

// CPU time of every process on the machine (user + system, seconds), and the machine's busy and
// total time (/proc/stat), to tell where the cores went during the load.
struct ProcCpu {
  int ppid = 0;
  std::string cmd;
  double cpu_s = 0;
};
struct CpuSnapshot {
  std::map<int, ProcCpu> procs;
  double busy_s = 0, total_s = 0;  // all cores
};

CpuSnapshot TakeCpuSnapshot() {
  CpuSnapshot snap;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    std::vector<std::string> f;
    while (rest >> field) f.push_back(field);
    if (f.size() < 13) continue;
    ProcCpu p;
    p.ppid = std::atoi(f[1].c_str());
    p.cpu_s = (std::atof(f[11].c_str()) + std::atof(f[12].c_str())) / tick;
    std::ifstream cmdline(entry.path() / "cmdline");
    std::getline(cmdline, p.cmd);
    std::replace(p.cmd.begin(), p.cmd.end(), '\0', ' ');
    if (p.cmd.empty())
      p.cmd = "[" + line.substr(line.find('(') + 1, close - line.find('(') - 1) + "]";
    snap.procs[std::stoi(name)] = std::move(p);
  }
  std::ifstream stat("/proc/stat");
  std::string cpu;
  stat >> cpu;
  std::vector<double> t;
  for (double v; t.size() < 8 && stat >> v;) t.push_back(v / tick);
  for (size_t i = 0; i < t.size(); ++i) {
    snap.total_s += t[i];
    if (i != 3 && i != 4) snap.busy_s += t[i];  // idle, iowait
  }
  return snap;
}

// CPU between two snapshots as a percentage of one core, per process group: each region's
// PostgreSQL (the server and its backends, the load driver's included), server, replicator and
// Redis, the link proxies, this driver, and everything else on the machine.
std::map<std::string, double> CpuByGroup(const Cluster& c, const CpuSnapshot& a,
                                         const CpuSnapshot& b, double seconds) {
  std::map<int, std::string> postmasters;  // pid -> region
  for (const auto& [pid, p] : b.procs) {
    for (size_t r = 0; r < c.size(); ++r) {
      const std::string dsn = c.Dsn(r, "global");
      auto at = dsn.find("port=");
      std::string port = dsn.substr(at + 5, dsn.find(' ', at) - at - 5);
      if (p.cmd.find("/postgres ") != std::string::npos &&
          p.cmd.find("-p " + port + " ") != std::string::npos) {
        postmasters[pid] = c.spec(r).name;
      }
    }
  }
  const int self = getpid();
  std::map<std::string, double> out;
  for (const auto& [pid, p] : b.procs) {
    auto before = a.procs.find(pid);
    const double used = p.cpu_s - (before != a.procs.end() ? before->second.cpu_s : 0.0);
    if (used <= 0) continue;
    std::string group = "other (not this benchmark)";
    if (pid == self) {
      group = "replication_bench (load driver)";
    } else if (postmasters.count(pid)) {
      group = "postgres " + postmasters[pid];
    } else if (postmasters.count(p.ppid)) {
      group = "postgres " + postmasters[p.ppid];
    } else if (p.ppid == self) {
      for (size_t r = 0; r < c.size(); ++r) {
        const std::string& n = c.spec(r).name;
        if (p.cmd.find(n + "-region.yaml") != std::string::npos) group = "region " + n;
        if (p.cmd.find(n + "-replicator.yaml") != std::string::npos) group = "replicator " + n;
      }
      if (p.cmd.find("redis-server") != std::string::npos) group = "redis (all regions)";
      if (p.cmd.find("netem-proxy") != std::string::npos) group = "link proxies";
    }
    out[group] += used;
  }
  for (auto& [group, used] : out) used = 100.0 * used / seconds;
  out["machine busy (all processes, of " +
      std::to_string(std::thread::hardware_concurrency() * 100) + ")"] =
      100.0 * (b.busy_s - a.busy_s) / seconds;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"replication_bench: lag and wire bytes of three replicating regions"};
  double seconds = 30, rate = 2000;
  int users = 20000, threads = 4, per_tx = 10, skus = 50, regions = 3;
  std::string out_path = "results/replication.json";
  cli.add_option("--seconds", seconds, "load duration")
      ->check(meridian::common::FiniteRange(5.0, 3600.0));
  cli.add_option("--rate", rate, "cart changes per second per region")
      ->check(meridian::common::FiniteRange(1.0, 100000.0));
  cli.add_option("--users", users, "distinct customers (shared by all regions)")
      ->check(CLI::Range(1, 10000000));
  cli.add_option("--threads", threads, "connections per region")->check(CLI::Range(1, 64));
  cli.add_option("--skus", skus, "distinct SKUs")->check(CLI::Range(1, 100000));
  cli.add_option("--regions", regions, "2 (us-east, eu-west) or 3")->check(CLI::Range(2, 3));
  cli.add_option("--changes-per-tx", per_tx,
                 "cart changes (of distinct customers) committed per transaction")
      ->check(CLI::Range(1, 1000));
  cli.add_option("--out", out_path, "results file (JSON)");
  bool baseline = false, per_change_sql = false, memory_keys = false;
  cli.add_flag("--per-change-sql", per_change_sql,
               "write each change with the region's own two statements (SaveCartSql) instead of "
               "two multi-row statements per commit");
  cli.add_flag("--baseline", baseline,
               "stop the replicators first: the machine's capacity for the local writes alone");
  cli.add_flag("--memory-keys", memory_keys,
               "run the replicators without a state_dir: the keys of applied records in memory "
               "only, as before 2026-12-02 (what persisting them costs the lag)");
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  if (absl::Status st = meridian::common::CheckWritableFile("--out", out_path); !st.ok()) {
    std::fprintf(stderr, "replication_bench: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  meridian::test_support::ClusterOptions o;
  o.pool_open_at_start = 0;  // every connection at the start, as a region opens them by default
  o.replicator_state_dir = !memory_keys;
  o.name = "replbench";
  o.delay_ms = {{"us-east/eu-west", 38}, {"us-east/ap-south", 100}, {"eu-west/ap-south", 60}};
  o.regions.resize(regions);
  o.shipping_yaml =
      std::getenv("MERIDIAN_BENCH_SHIPPING") ? std::getenv("MERIDIAN_BENCH_SHIPPING") : "{}";
  std::fprintf(stderr,
               "starting %d regions (PostgreSQL fsync=off, Redis, region, "
               "replicator each; link proxies)...\n",
               regions);
  auto cluster = Cluster::Start(o);
  if (!cluster.ok()) {
    std::fprintf(stderr, "replication_bench: %s\n",
                 std::string(cluster.status().message()).c_str());
    return 1;
  }
  Cluster& c = **cluster;
  std::this_thread::sleep_for(std::chrono::seconds(2));  // streams up (TLS through the links)
  if (baseline) {
    for (size_t r = 0; r < c.size(); ++r) (void)c.KillReplicator(r);
  }
  const uint64_t bytes_before = c.LinkBytes();
  std::fprintf(stderr, "driving %.0f cart changes/s into each region for %.0f s...\n", rate,
               seconds);
  std::vector<DriverStats> stats(c.size());
  std::vector<std::thread> drivers;
  for (size_t r = 0; r < c.size(); ++r) {
    drivers.emplace_back([&, r] {
      Drive(c, r, rate, threads, per_tx, users, skus, seconds, per_change_sql, stats[r]);
    });
  }
  const auto load_start = Clock::now();
  // CPU per process over the load's middle (the driver's connections end with the load).
  std::map<std::string, double> cpu;
  std::thread cpu_probe([&] {
    std::this_thread::sleep_until(load_start + std::chrono::seconds(2));
    CpuSnapshot a = TakeCpuSnapshot();
    const auto t0 = Clock::now();
    std::this_thread::sleep_until(
        load_start + std::chrono::milliseconds(static_cast<int64_t>((seconds - 1) * 1000)));
    CpuSnapshot b = TakeCpuSnapshot();
    cpu = CpuByGroup(c, a, b, std::chrono::duration<double>(Clock::now() - t0).count());
  });
  for (auto& d : drivers) d.join();
  cpu_probe.join();
  const auto load_end = Clock::now();
  const double load_s = std::chrono::duration<double>(load_end - load_start).count();
  // Scrape the lag summaries now: their window is the load (30 s, sliding).
  std::vector<std::string> metrics(c.size());
  for (size_t r = 0; r < c.size(); ++r) {
    auto m = c.Metrics(r);
    metrics[r] = m.ok() ? *m : "";
  }
  std::fprintf(stderr, "waiting for the regions to agree...\n");
  double converge_s = -1;
  for (int i = 0; i < 120; ++i) {
    auto first = Carts(c, 0);
    bool same = true;
    for (size_t r = 1; r < c.size() && same; ++r) same = Carts(c, r) == first;
    if (same) {
      converge_s = std::chrono::duration<double>(Clock::now() - load_end).count();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  // Units committed somewhere that are not in the agreed carts: lost updates (0 for a join).
  int64_t lost_units = 0;
  {
    std::map<std::string, std::map<std::string, int64_t>> want;
    for (size_t r = 0; r < c.size(); ++r)
      for (const auto& [u, lines] : stats[r].committed)
        for (const auto& [sku, q] : lines) want[u][sku] += q;
    auto have = Carts(c, 0);
    for (const auto& [u, lines] : want) {
      std::map<std::string, int64_t> got;
      for (const auto& [sku, q] : have[u]) got[sku] = q;
      for (const auto& [sku, q] : lines) lost_units += std::max<int64_t>(0, q - got[sku]);
    }
  }
  if (converge_s < 0) {  // say where they differ, and whose changes each region misses
    std::map<std::string, std::map<std::string, int64_t>> want;
    for (size_t r = 0; r < c.size(); ++r)
      for (const auto& [u, lines] : stats[r].committed)
        for (const auto& [sku, q] : lines) want[u][sku] += q;
    for (size_t r = 0; r < c.size(); ++r) {
      auto have = Carts(c, r);
      std::map<std::string, int> missing_from;  // origin region -> changes missing here
      int bad = 0;
      for (const auto& [u, lines] : want) {
        std::map<std::string, int64_t> got;
        for (const auto& [sku, q] : have[u]) got[sku] = q;
        if (got == lines) continue;
        ++bad;
        for (size_t o = 0; o < c.size(); ++o) {
          auto it = stats[o].committed.find(u);
          if (it == stats[o].committed.end()) continue;
          for (const auto& [sku, q] : it->second)
            if (got[sku] < lines.at(sku)) missing_from[c.spec(o).name]++;
        }
      }
      std::string m;
      for (const auto& [o, n] : missing_from) m += o + ":" + std::to_string(n) + " ";
      std::fprintf(stderr, "%s: %d carts not as committed; lines short, by origin: %s\n",
                   c.spec(r).name.c_str(), bad, m.c_str());
    }
    auto first = Carts(c, 0);
    for (size_t r = 1; r < c.size(); ++r) {
      auto other = Carts(c, r);
      int shown = 0, differ = 0;
      for (const auto& [user, lines] : first) {
        auto it = other.find(user);
        if (it != other.end() && it->second == lines) continue;
        ++differ;
        if (shown++ < 3) {
          std::string a, b;
          for (const auto& [sku, q] : lines) a += sku + "=" + std::to_string(q) + " ";
          if (it != other.end())
            for (const auto& [sku, q] : it->second) b += sku + "=" + std::to_string(q) + " ";
          std::fprintf(stderr, "  %s: %s has [%s], %s has [%s]\n", user.c_str(),
                       c.spec(0).name.c_str(), a.c_str(), c.spec(r).name.c_str(), b.c_str());
        }
      }
      std::fprintf(stderr, "%s and %s differ on %d of %zu carts (%zu there)\n",
                   c.spec(0).name.c_str(), c.spec(r).name.c_str(), differ, first.size(),
                   other.size());
    }
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the last acks
  const uint64_t wire = c.LinkBytes() - bytes_before;

  int64_t ops = 0, errors = 0, delta_bytes = 0, late = 0;
  Json per_region = Json::object();
  for (size_t r = 0; r < c.size(); ++r) {
    ops += stats[r].ops;
    errors += stats[r].errors;
    delta_bytes += stats[r].delta_bytes;
    late += stats[r].late;
    per_region[c.spec(r).name] = {{"ops", stats[r].ops.load()},
                                  {"achieved_per_s", stats[r].ops.load() / seconds},
                                  {"errors", stats[r].errors.load()}};
  }
  std::printf(
      "\nReplication, %zu regions, %.0f cart changes/s offered per region (%d per "
      "transaction), %.0f s\n",
      c.size(), rate, per_tx, seconds);
  std::printf("%-22s %9s %9s %9s %11s %s\n", "pair (origin -> peer)", "one-way", "p50 ms", "p99 ms",
              "p99 target", "met");
  Json pairs = Json::array();
  bool all_met = true;
  for (size_t to = 0; to < c.size(); ++to) {
    for (size_t from = 0; from < c.size(); ++from) {
      if (from == to) continue;
      std::string a = c.spec(std::min(from, to)).name, b = c.spec(std::max(from, to)).name;
      double one_way = o.delay_ms.at(a + "/" + b);
      double p50 = Quantile(metrics[to], c.spec(from).name, "0.5");
      double p99 = Quantile(metrics[to], c.spec(from).name, "0.99");
      bool met = p99 >= 0 && p99 <= one_way + 25;
      all_met = all_met && met;
      std::string name = c.spec(from).name + " -> " + c.spec(to).name;
      std::printf("%-22s %9.0f %9.1f %9.1f %11.0f %s\n", name.c_str(), one_way, p50, p99,
                  one_way + 25, met ? "yes" : "NO");
      pairs.push_back({{"from", c.spec(from).name},
                       {"to", c.spec(to).name},
                       {"one_way_ms", one_way},
                       {"p50_ms", p50},
                       {"p99_ms", p99},
                       {"p99_target_ms", one_way + 25},
                       {"met", met}});
    }
  }
  const double shipped = static_cast<double>(ops) * static_cast<double>(c.size() - 1);
  const double wire_per_op = shipped > 0 ? wire / shipped : 0;
  const double delta_avg = ops > 0 ? static_cast<double>(delta_bytes) / ops : 0;
  std::printf(
      "\ncart changes committed: %lld in %.1f s (%.0f/s per region), errors %lld, late "
      "starts (>100 ms behind schedule) %lld\n",
      static_cast<long long>(ops), load_s, ops / load_s / c.size(), static_cast<long long>(errors),
      static_cast<long long>(late));
  std::printf(
      "encoded delta: %.1f B avg; on the links (TLS, HTTP/2, acks, heartbeats "
      "included): %.1f B per shipped change = %.2fx (target <= 1.5x)\n",
      delta_avg, wire_per_op, delta_avg > 0 ? wire_per_op / delta_avg : 0);
  std::printf("regions agreed %.1f s after the load stopped; lost updates: %lld units\n",
              converge_s, static_cast<long long>(lost_units));
  Json result = {
      {"bench", "replication"},
      {"regions", c.size()},
      {"offered_per_region_per_s", rate},
      {"seconds", seconds},
      {"users", users},
      {"changes_per_transaction", per_tx},
      {"per_change_sql", per_change_sql},
      {"recent_keys_persisted", !memory_keys},
      {"committed", ops},
      {"load_wall_s", load_s},
      {"achieved_per_region_per_s", ops / load_s / c.size()},
      {"errors", errors},
      {"late_starts", late},
      {"per_region", per_region},
      {"pairs", pairs},
      {"lag_targets_met", all_met},
      {"delta_bytes_avg", delta_avg},
      {"wire_bytes_per_shipped_change", wire_per_op},
      {"wire_ratio", delta_avg > 0 ? wire_per_op / delta_avg : 0},
      {"wire_ratio_target", 1.5},
      {"converged_after_s", converge_s},
      {"lost_units", lost_units},
      {"postgres", "fsync=off (test servers)"},
      {"cpu_percent_of_one_core", cpu},
  };
  std::printf("\nCPU during the load (%% of one core; the machine has %u):\n",
              std::thread::hardware_concurrency());
  std::vector<std::pair<double, std::string>> by_use;
  for (const auto& [group, pct] : cpu) by_use.emplace_back(pct, group);
  std::sort(by_use.rbegin(), by_use.rend());
  for (const auto& [pct, group] : by_use) std::printf("  %-44s %6.1f%%\n", group.c_str(), pct);
  if (absl::Status st = meridian::common::WriteTextFile(out_path, result.dump(2) + "\n");
      !st.ok()) {
    std::fprintf(stderr, "replication_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
