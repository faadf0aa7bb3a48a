#pragma once

// A local multi-region cluster of real processes for end-to-end tests and benchmarks: per region
// one PostgreSQL server (databases global, shard0, shard1), one Redis, a meridian-region and a
// meridian-replicator process; between each pair of regions a meridian-netem-proxy with the
// pair's one-way delay, which also partitions on demand. Every port is a free loopback port;
// every process dies with the test. Certificates come from deploy/make-certs.sh.
//
// One thread drives a Cluster (spawn from the thread that lives as long as the processes).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/support/postgres_server.h"
#include "tests/support/process.h"
#include "tests/support/redis_server.h"

namespace meridian::test_support {

struct RegionSpec {
  std::string name;
  std::string jurisdiction;
  uint32_t replica_id = 0;
};

struct ClusterOptions {
  std::string name = "cluster";
  std::vector<RegionSpec> regions = {
      {"us-east", "us", 1}, {"eu-west", "eu", 2}, {"ap-south", "ap", 3}};
  // One-way delay per pair, by "a/b" with a's replica id lower; missing pairs get 0.
  std::map<std::string, double> delay_ms = {};
  std::string operator_token = "operator-token-for-tests";
  std::string token_secret = "a-test-secret-shared-by-all-regions!!";
  // Each region's limits.login_attempts_per_account (password checks per account, one more a
  // minute): no limit to speak of unless a test is about it, as tests log in again and again.
  int login_attempts_per_account = 1000000;
  // Extra YAML appended to every region's config (e.g. "durability: sync-peer\n").
  std::string region_yaml_extra = "";
  // Replicator shipping settings (YAML mapping body, e.g. "{heartbeat_ms: 200}").
  std::string shipping_yaml = "{heartbeat_ms: 200, peer_timeout_ms: 1500, backoff_max_ms: 1000}";
  int pool_size = 6;
  // Connections each pool opens at the start (postgres.open_at_start): 1 for the tests, whose
  // regions mostly use one and would pay 3 x 3 x pool_size backend starts at every cluster start;
  // 0 for all of them, the product's default, which the benchmarks use so that no connection is
  // opened under their load (each a backend start in the middle of a measured apply).
  int pool_open_at_start = 1;
  // Issue 5: leases, rights and forwarding between the regions and their replicators.
  bool coordination = false;
  // YAML mapping body appended to the replicator's coordination section (e.g.
  // "leases: {ttl_ms: 3000, renew_interval_ms: 500}").
  std::string coordination_yaml = "";
  int rights_wait_ms = 200;
  // Every region's limits.reservation_ttl_s and limits.sweep_interval_s; 0: the defaults.
  int reservation_ttl_s = 0;
  int sweep_interval_s = 0;
  // A meridian-witness (the third lease vote of a two-region deployment), replica id 250.
  bool witness = false;
  // Each replicator keeps its recent keys in a state_dir of its own (false: in memory only).
  bool replicator_state_dir = true;
};

class Cluster {
 public:
  // Starts every region and link and waits until every region answers /readyz.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Cluster>> Start(ClusterOptions options);
  ~Cluster();

  [[nodiscard]] size_t size() const { return regions_.size(); }
  [[nodiscard]] const RegionSpec& spec(size_t i) const { return regions_[i]->spec; }
  [[nodiscard]] uint16_t http_port(size_t i) const { return regions_[i]->http_port; }
  [[nodiscard]] uint16_t grpc_port(size_t i) const { return regions_[i]->grpc_port; }
  [[nodiscard]] uint16_t replication_port(size_t i) const { return regions_[i]->repl_port; }
  [[nodiscard]] uint16_t metrics_port(size_t i) const { return regions_[i]->metrics_port; }
  // With coordination: the replicator's operator HTTP API and local control port.
  [[nodiscard]] uint16_t admin_port(size_t i) const { return regions_[i]->admin_port; }
  [[nodiscard]] uint16_t control_port(size_t i) const { return regions_[i]->control_port; }
  // libpq connection string of a region's database: "global", "shard0", "shard1".
  [[nodiscard]] std::string Dsn(size_t i, const std::string& db) const;
  [[nodiscard]] const std::string& cert_dir() const { return cert_dir_; }
  [[nodiscard]] const std::string& dir() const { return dir_; }
  [[nodiscard]] const ClusterOptions& options() const { return options_; }

  // kill -9 and restart of one region's processes. Start* wait for readiness (region: /readyz;
  // replicator: /metrics, then its stream service listening, which it does once its coordinator
  // has loaded the lease records; await_streams false returns after /metrics, for a test that
  // holds that load up).
  absl::Status KillRegionServer(size_t i);
  // Waits up to `timeout` for region i's server to exit on its own; its wait status.
  absl::StatusOr<int> AwaitRegionServerExit(size_t i, absl::Duration timeout);
  absl::Status StartRegionServer(size_t i);
  absl::Status KillReplicator(size_t i);
  absl::Status StartReplicator(size_t i, bool await_streams = true);
  // The witness process (options.witness): kill -9 and restart.
  absl::Status KillWitness();
  absl::Status StartWitness();
  // Cuts (or restores) every link between region i and the others.
  absl::Status Partition(size_t i);
  absl::Status Heal(size_t i);
  // Cuts (or restores) the one link between regions i and j.
  absl::Status PartitionPair(size_t i, size_t j);
  absl::Status HealPair(size_t i, size_t j);
  // Bytes the links carried so far (both directions, all pairs), from the proxies' counters.
  [[nodiscard]] uint64_t LinkBytes() const;

  // Where a region's replicator logs (kept across its restarts: each start appends).
  [[nodiscard]] std::string replicator_log(size_t i) const;
  // A region server's config file, read at each start (a test may edit it in between).
  [[nodiscard]] std::string region_config(size_t i) const { return regions_[i]->region_yaml; }
  // A replicator's config file, read at each start (a test may edit it in between).
  [[nodiscard]] std::string replicator_config(size_t i) const {
    return regions_[i]->replicator_yaml;
  }
  [[nodiscard]] uint16_t redis_port(size_t i) const { return regions_[i]->redis->port(); }
  // A region's PostgreSQL server (all its databases).
  [[nodiscard]] PostgresServer& postgres(size_t i) const { return *regions_[i]->pg; }
  // The Prometheus text of a region's replicator.
  [[nodiscard]] absl::StatusOr<std::string> Metrics(size_t i) const;
  // One sample of it, named with its labels as the page prints them
  // (`meridian_replication_connected{peer="eu-west"}`); NotFound when the page lacks it.
  [[nodiscard]] absl::StatusOr<double> Metric(size_t i, const std::string& name_and_labels) const;
  // The same from any Prometheus text page (a region's /metrics, say).
  [[nodiscard]] static absl::StatusOr<double> Sample(const std::string& page,
                                                     const std::string& name_and_labels);

 private:
  struct Region {
    RegionSpec spec;
    std::unique_ptr<PostgresServer> pg;
    std::unique_ptr<RedisServer> redis;
    std::unique_ptr<Process> server, replicator;
    uint16_t http_port = 0, grpc_port = 0, repl_port = 0, metrics_port = 0;
    uint16_t admin_port = 0, control_port = 0;
    std::string region_yaml, replicator_yaml;
  };
  struct Link {
    size_t a, b;  // a dials b through the proxy
    std::unique_ptr<Process> proxy;
    uint16_t port = 0;
    std::string stats_file;
  };

  explicit Cluster(ClusterOptions options) : options_(std::move(options)) {}
  absl::Status Build();
  // The halves of StartRegionServer and StartReplicator, so that Build starts regions side by side.
  absl::Status SpawnRegionServer(size_t i);
  absl::Status AwaitRegionServer(size_t i);
  absl::Status SpawnReplicator(size_t i);
  absl::Status AwaitReplicator(size_t i, bool await_streams);

  ClusterOptions options_;
  std::string dir_, cert_dir_;
  std::unique_ptr<Process> witness_;
  uint16_t witness_port_ = 0;
  std::string witness_yaml_;
  std::vector<std::unique_ptr<Region>> regions_;
  std::vector<Link> links_;
};

// Where the project's binaries are (set at build time).
std::string RegionBinary();
std::string ReplicatorBinary();
std::string WitnessBinary();
std::string NetemProxyBinary();
std::string SourceDir();

}  // namespace meridian::test_support
