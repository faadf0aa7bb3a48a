// The comparison point for Meridian's replication (not a pass/fail test): the same concurrent
// cart workload on two PostgreSQL nodes replicating both ways through pglogical (Debian's
// postgresql-15-pglogical) with last_update_wins conflict resolution, the way a team would
// run active-active carts without CRDTs. Each node's subscription reaches the other through a
// meridian-netem-proxy with the pair's one-way delay (us-east/eu-west, 38 ms).
//
// Each node takes --rate cart changes per second ("add one unit of SKU s to user u's cart":
// an upsert that increments the line) on a shared set of hot lines, for --seconds. After both
// nodes agree, every unit that was committed but is not in the final quantity is a lost update.
// Lag: a trigger that also fires for replicated rows logs when each row version arrived;
// the lag is that minus the origin's commit-time stamp in the row.
//
//   pglogical_bench [--seconds 20] [--rate 500] [--lines 2000] [--delay-ms 38] [--out FILE]

#include <pqxx/pqxx>

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
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/cli.h"
#include "common/files.h"
#include "tests/support/cluster.h"
#include "tests/support/postgres_server.h"
#include "tests/support/process.h"

namespace {

using meridian::test_support::PostgresServer;
using meridian::test_support::Process;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE cart_lines (
  user_id  text NOT NULL,
  sku      text NOT NULL,
  quantity bigint NOT NULL,
  written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  origin   text NOT NULL,
  PRIMARY KEY (user_id, sku)
);
CREATE TABLE arrivals (origin text, written_at timestamptz, arrived_at timestamptz);
CREATE FUNCTION log_arrival() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO arrivals VALUES (NEW.origin, NEW.written_at, clock_timestamp());
  RETURN NEW;
END $$;
CREATE TRIGGER arrival AFTER INSERT OR UPDATE ON cart_lines
  FOR EACH ROW EXECUTE FUNCTION log_arrival();
-- Fire for rows the pglogical apply worker writes too (replica session role).
ALTER TABLE cart_lines ENABLE ALWAYS TRIGGER arrival;
)sql";

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"pglogical_bench: two-node pglogical (last update wins) under a cart workload"};
  double seconds = 20, rate = 500, delay_ms = 38;
  int lines = 2000, threads = 4;
  std::string out_path = "results/pglogical.json";
  cli.add_option("--seconds", seconds, "load duration")
      ->check(meridian::common::FiniteRange(2.0, 3600.0));
  cli.add_option("--rate", rate, "cart changes per second per node")
      ->check(meridian::common::FiniteRange(1.0, 100000.0));
  cli.add_option("--lines", lines, "distinct (user, sku) lines both nodes change")
      ->check(CLI::Range(1, 10000000));
  cli.add_option("--delay-ms", delay_ms, "one-way delay between the nodes")
      ->check(meridian::common::FiniteRange(0.0, 10000.0));
  cli.add_option("--threads", threads, "connections per node")->check(CLI::Range(1, 64));
  cli.add_option("--out", out_path, "results file (JSON)");
  if (auto rc = meridian::common::ParseFlags(cli, argc, argv)) return *rc;
  if (absl::Status st = meridian::common::CheckWritableFile("--out", out_path); !st.ok()) {
    std::fprintf(stderr, "pglogical_bench: %s\n", std::string(st.message()).c_str());
    return 2;
  }

  std::fprintf(stderr, "starting two PostgreSQL nodes with pglogical...\n");
  std::vector<std::unique_ptr<PostgresServer>> nodes;
  for (const char* name : {"pgl-a", "pgl-b"}) {
    auto pg = PostgresServer::Start(
        {.name = name,
         .extra_settings = {{"wal_level", "logical"},
                            {"shared_preload_libraries", "pglogical"},
                            {"track_commit_timestamp", "on"},
                            {"max_replication_slots", "10"},
                            {"max_wal_senders", "10"},
                            {"max_worker_processes", "16"},
                            {"pglogical.conflict_resolution", "last_update_wins"}}});
    if (!pg.ok()) {
      std::fprintf(stderr, "pglogical_bench: %s\n", std::string(pg.status().message()).c_str());
      return 1;
    }
    if (auto st = (*pg)->CreateDatabase("bench"); !st.ok()) {
      std::fprintf(stderr, "pglogical_bench: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    nodes.push_back(*std::move(pg));
  }
  // A delaying link in front of each node, for the other node's subscription.
  std::vector<std::unique_ptr<Process>> links;
  std::vector<uint16_t> link_ports;
  for (size_t i = 0; i < 2; ++i) {
    std::string port_file = absl::StrCat("/tmp/pglogical-bench-link-", getpid(), "-", i);
    auto p = Process::Spawn(
        {.argv = {meridian::test_support::NetemProxyBinary(), "--listen", "127.0.0.1:0", "--target",
                  absl::StrCat("127.0.0.1:", nodes[i]->port()), "--delay-ms",
                  absl::StrCat(delay_ms), "--port-file", port_file}});
    if (!p.ok()) return 1;
    links.push_back(*std::move(p));
    uint16_t port = 0;
    for (int k = 0; k < 200 && port == 0; ++k) {
      std::ifstream in(port_file);
      int v = 0;
      if (in >> v) port = static_cast<uint16_t>(v);
      if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::remove(port_file.c_str());
    link_ports.push_back(port);
  }
  try {
    const char* names[] = {"node_a", "node_b"};
    for (size_t i = 0; i < 2; ++i) {
      pqxx::connection c(nodes[i]->ConnectionString("bench"));
      pqxx::nontransaction tx(c);
      tx.exec("CREATE EXTENSION pglogical");
      tx.exec(kSchema);
      tx.exec("SELECT pglogical.create_node(node_name := " + tx.quote(names[i]) +
              ", dsn := " + tx.quote(nodes[i]->ConnectionString("bench")) + ")");
      tx.exec("SELECT pglogical.replication_set_add_table('default', 'cart_lines')");
    }
    for (size_t i = 0; i < 2; ++i) {
      size_t other = 1 - i;
      pqxx::connection c(nodes[i]->ConnectionString("bench"));
      pqxx::nontransaction tx(c);
      std::string provider =
          absl::StrCat("host=127.0.0.1 port=", link_ports[other], " user=postgres dbname=bench");
      tx.exec("SELECT pglogical.create_subscription(subscription_name := " +
              tx.quote(absl::StrCat("from_", names[other])) + ", provider_dsn := " +
              tx.quote(provider) + ", forward_origins := '{}', synchronize_data := false)");
    }
    // Wait until both subscriptions replicate.
    for (size_t i = 0; i < 2; ++i) {
      pqxx::connection c(nodes[i]->ConnectionString("bench"));
      bool up = false;
      for (int k = 0; k < 300 && !up; ++k) {
        pqxx::nontransaction tx(c);
        up = tx.exec1(
                   "SELECT count(*) FROM pglogical.show_subscription_status() WHERE status = "
                   "'replicating'")[0]
                 .as<int>() == 1;
        if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (!up) {
        std::fprintf(stderr, "pglogical_bench: the subscriptions did not start replicating\n");
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pglogical_bench: setup: %s\n", e.what());
    return 1;
  }

  std::fprintf(stderr, "driving %.0f cart changes/s into each node for %.0f s...\n", rate, seconds);
  std::atomic<int64_t> committed{0}, errors{0};
  std::mutex mu;
  std::map<std::pair<int, int>, int64_t> want;  // (user, sku) -> units committed anywhere
  std::vector<std::thread> pool;
  const auto start = Clock::now();
  for (size_t node = 0; node < 2; ++node) {
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, node, t] {
        pqxx::connection c(nodes[node]->ConnectionString("bench"));
        std::mt19937_64 rng(node * 100 + t);
        const double per_thread = rate / threads;
        for (int64_t i = 0;; ++i) {
          auto due = start + std::chrono::microseconds(static_cast<int64_t>(i * 1e6 / per_thread));
          if (due - start > std::chrono::microseconds(static_cast<int64_t>(seconds * 1e6))) break;
          std::this_thread::sleep_until(due);
          int line = static_cast<int>(rng() % lines);
          int user = line / 10, sku = line % 10;
          try {
            pqxx::work tx(c);
            tx.exec0("INSERT INTO cart_lines (user_id, sku, quantity, origin) VALUES (" +
                     tx.quote("u" + std::to_string(user)) + ", " +
                     tx.quote("sku-" + std::to_string(sku)) + ", 1, " +
                     tx.quote(node == 0 ? "a" : "b") +
                     ") ON CONFLICT (user_id, sku) DO UPDATE SET quantity = cart_lines.quantity "
                     "+ 1, written_at = clock_timestamp(), origin = EXCLUDED.origin");
            tx.commit();
            ++committed;
            std::lock_guard<std::mutex> l(mu);
            want[{user, sku}] += 1;
          } catch (const std::exception&) {
            ++errors;
          }
        }
      });
    }
  }
  for (auto& t : pool) t.join();
  const double load_s = std::chrono::duration<double>(Clock::now() - start).count();

  // Wait until both nodes hold the same lines.
  auto snapshot = [&](size_t i) {
    std::map<std::string, int64_t> m;
    pqxx::connection c(nodes[i]->ConnectionString("bench"));
    pqxx::nontransaction tx(c);
    for (const auto& r : tx.exec("SELECT user_id || '/' || sku, quantity FROM cart_lines"))
      m[r[0].as<std::string>()] = r[1].as<int64_t>();
    return m;
  };
  double agree_s = -1;
  const auto load_end = Clock::now();
  std::map<std::string, int64_t> final_a;
  for (int k = 0; k < 600; ++k) {
    final_a = snapshot(0);
    if (final_a == snapshot(1)) {
      agree_s = std::chrono::duration<double>(Clock::now() - load_end).count();
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  int64_t lost = 0, lines_short = 0;
  for (const auto& [line, units] : want) {
    auto it =
        final_a.find("u" + std::to_string(line.first) + "/sku-" + std::to_string(line.second));
    int64_t have = it == final_a.end() ? 0 : it->second;
    if (have < units) {
      lost += units - have;
      ++lines_short;
    }
  }
  // Lag of replicated row versions: arrival at the other node minus the origin's write time.
  std::vector<double> lag;
  for (size_t i = 0; i < 2; ++i) {
    pqxx::connection c(nodes[i]->ConnectionString("bench"));
    pqxx::nontransaction tx(c);
    for (const auto& r :
         tx.exec("SELECT extract(epoch from (arrived_at - written_at)) * 1000 FROM arrivals "
                 "WHERE origin <> " +
                 tx.quote(i == 0 ? "a" : "b"))) {
      lag.push_back(r[0].as<double>());
    }
  }
  const double p50 = Percentile(lag, 0.5), p99 = Percentile(lag, 0.99);
  std::printf("\npglogical, 2 nodes both ways, last_update_wins, one-way %.0f ms\n", delay_ms);
  std::printf("cart changes committed: %lld in %.1f s (%.0f/s per node), errors %lld\n",
              static_cast<long long>(committed.load()), load_s, committed / load_s / 2,
              static_cast<long long>(errors.load()));
  std::printf("nodes agreed: %s (%.1f s after the load)\n", agree_s >= 0 ? "yes" : "NO", agree_s);
  std::printf("lost updates: %lld units on %lld of %zu lines (%.2f%% of committed changes)\n",
              static_cast<long long>(lost), static_cast<long long>(lines_short), want.size(),
              committed ? 100.0 * lost / committed : 0.0);
  std::printf("replication lag of row versions: p50 %.1f ms, p99 %.1f ms (%zu arrivals)\n", p50,
              p99, lag.size());
  Json result = {{"bench", "pglogical"},
                 {"conflict_resolution", "last_update_wins"},
                 {"one_way_ms", delay_ms},
                 {"offered_per_node_per_s", rate},
                 {"seconds", seconds},
                 {"lines", lines},
                 {"committed", committed.load()},
                 {"errors", errors.load()},
                 {"agreed", agree_s >= 0},
                 {"lost_units", lost},
                 {"lines_with_lost_units", lines_short},
                 {"lost_percent", committed ? 100.0 * lost / committed : 0.0},
                 {"lag_p50_ms", p50},
                 {"lag_p99_ms", p99},
                 {"postgres", "fsync=off (test servers)"}};
  if (absl::Status st = meridian::common::WriteTextFile(out_path, result.dump(2) + "\n");
      !st.ok()) {
    std::fprintf(stderr, "pglogical_bench: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  std::printf("wrote %s\n", out_path.c_str());
  return 0;
}
