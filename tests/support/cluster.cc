#include "tests/support/cluster.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/support/ports.h"
#include "tests/support/temp_dir.h"

namespace meridian::test_support {
namespace {

namespace fs = std::filesystem;

// A minimal HTTP GET on loopback: the status code and body ("" and 0 when unreachable).
std::pair<int, std::string> HttpGet(uint16_t port, const std::string& path) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return {0, ""};
  }
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  (void)::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string raw;
  char buf[16384];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (raw.size() < 12) return {0, ""};
  int status = std::atoi(raw.substr(9, 3).c_str());
  auto body = raw.find("\r\n\r\n");
  return {status, body == std::string::npos ? "" : raw.substr(body + 4)};
}

// Waits up to 15 s for `path` on `port` to answer 200 while `process` runs.
absl::Status AwaitHttp(Process& process, uint16_t port, const std::string& path,
                       const std::string& what) {
  for (int k = 0; k < 300; ++k) {
    if (HttpGet(port, path).first == 200) return absl::OkStatus();
    if (!process.Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::UnavailableError(
      absl::StrCat(what, " did not become ready: ", FileTail(process.log_path())));
}

// Whether something accepts TCP connections on loopback `port`.
bool Listening(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// Waits up to 15 s for `port` to accept connections while `process` runs.
absl::Status AwaitListening(Process& process, uint16_t port, const std::string& what) {
  for (int k = 0; k < 300; ++k) {
    if (Listening(port)) return absl::OkStatus();
    if (!process.Running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::UnavailableError(
      absl::StrCat(what, " never listened on ", port, ": ", FileTail(process.log_path())));
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string RegionBinary() { return MERIDIAN_REGION_BIN; }
std::string ReplicatorBinary() { return MERIDIAN_REPLICATOR_BIN; }
std::string WitnessBinary() { return MERIDIAN_WITNESS_BIN; }
std::string NetemProxyBinary() { return MERIDIAN_NETEM_PROXY_BIN; }
std::string SourceDir() { return MERIDIAN_SOURCE_DIR; }

namespace {

// deploy/make-certs.sh's CA and certificates for `names` in `to`. The script runs 11 openssl
// processes for three regions (0.35 s here), so within a ctest run they are made once per set of
// names, beside the run's PostgreSQL template, and each cluster gets a copy of its own.
absl::Status MakeCerts(const std::vector<std::string>& names, const std::string& to,
                       const std::string& log_path) {
  auto make = [&](const std::string& dir) {
    std::vector<std::string> argv = {"bash", SourceDir() + "/deploy/make-certs.sh", dir};
    argv.insert(argv.end(), names.begin(), names.end());
    return Process::Run({.argv = argv, .log_path = log_path}, absl::Seconds(60));
  };
  const std::optional<std::string> run_dir = PostgresServer::SharedRunDirectory();
  if (!run_dir.has_value()) return make(to);
  const fs::path cached = fs::path(*run_dir) / ("certs-" + absl::StrJoin(names, "+"));
  std::error_code ec;
  if (!fs::is_regular_file(cached / "ca.pem", ec)) {
    // Made aside and renamed into place, so that a reader never sees half of it.
    const fs::path fresh = fs::path(*run_dir) / absl::StrCat("certs-making-", getpid());
    fs::remove_all(fresh, ec);
    if (absl::Status st = make(fresh.string()); !st.ok()) return st;
    fs::rename(fresh, cached, ec);
    if (ec) fs::remove_all(fresh, ec);  // another process put its own in place first
  }
  if (!fs::is_regular_file(cached / "ca.pem", ec)) return make(to);
  fs::create_directories(to, ec);
  fs::copy(cached, to, fs::copy_options::overwrite_existing | fs::copy_options::recursive, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("copying the certificates from ", cached.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(ClusterOptions options) {
  std::unique_ptr<Cluster> c(new Cluster(std::move(options)));
  if (auto st = c->Build(); !st.ok()) return st;
  return c;
}

Cluster::~Cluster() {
  // Replicators and servers first (they hold connections to the databases): every one is sent
  // SIGKILL before any is waited for, so that they exit side by side.
  for (auto& r : regions_) {
    for (Process* p : {r->replicator.get(), r->server.get()}) {
      if (p != nullptr) (void)p->Signal(SIGKILL);
    }
  }
  for (Link& l : links_) {
    if (l.proxy) (void)l.proxy->Signal(SIGKILL);
  }
  if (witness_) (void)witness_->Signal(SIGKILL);
  for (auto& r : regions_) {
    r->replicator.reset();
    r->server.reset();
  }
  witness_.reset();
  links_.clear();
  regions_.clear();
  if (!dir_.empty()) RemoveTempDir(dir_);
}

std::string Cluster::Dsn(size_t i, const std::string& db) const {
  return regions_[i]->pg->ConnectionString(db);
}

absl::Status Cluster::Build() {
  auto dir = MakeTempDir(options_.name, "");
  if (!dir.ok()) return dir.status();
  dir_ = *dir;
  cert_dir_ = dir_ + "/certs";
  std::vector<std::string> names;
  for (const RegionSpec& s : options_.regions) names.push_back(s.name);
  if (options_.witness) names.push_back("witness");
  if (auto st = MakeCerts(names, cert_dir_, dir_ + "/certs.log"); !st.ok()) return st;
  // The regions' PostgreSQL servers start side by side.
  std::vector<PostgresServer::Options> pg_options;
  for (const RegionSpec& s : options_.regions) {
    pg_options.push_back({.name = s.name, .max_connections = 120});
  }
  auto pgs = PostgresServer::StartAll(std::move(pg_options));
  if (!pgs.ok()) return pgs.status();
  for (size_t i = 0; i < options_.regions.size(); ++i) {
    const RegionSpec& s = options_.regions[i];
    auto r = std::make_unique<Region>();
    r->spec = s;
    r->pg = std::move((*pgs)[i]);
    auto redis = RedisServer::Start({.name = s.name});
    if (!redis.ok()) return redis.status();
    r->redis = *std::move(redis);
    r->http_port = FreeTcpPort();
    r->grpc_port = FreeTcpPort();
    r->repl_port = FreeTcpPort();
    r->metrics_port = FreeTcpPort();
    r->admin_port = FreeTcpPort();
    r->control_port = FreeTcpPort();
    for (uint16_t p : {r->http_port, r->grpc_port, r->repl_port, r->metrics_port, r->admin_port,
                       r->control_port}) {
      if (p == 0) return absl::UnavailableError("FreeTcpPort: no free loopback port");
    }
    regions_.push_back(std::move(r));
  }
  // Each region's databases, the regions side by side (CREATE DATABASE copies template1 and
  // waits on the disk; no process is spawned here, so other threads may do it).
  {
    std::vector<absl::Status> created(regions_.size());
    std::vector<std::thread> creators;
    for (size_t i = 0; i < regions_.size(); ++i) {
      creators.emplace_back([this, i, &created] {
        for (const char* db : {"global", "shard0", "shard1"}) {
          created[i] = regions_[i]->pg->CreateDatabase(db);
          if (!created[i].ok()) return;
        }
      });
    }
    for (std::thread& t : creators) t.join();
    for (const absl::Status& st : created) {
      if (!st.ok()) return st;
    }
  }
  // Links: the lower replica id dials, through a delaying proxy in front of the higher one.
  for (size_t a = 0; a < regions_.size(); ++a) {
    for (size_t b = 0; b < regions_.size(); ++b) {
      if (regions_[a]->spec.replica_id >= regions_[b]->spec.replica_id) continue;
      Link l{a, b, nullptr, 0, ""};
      std::string key = absl::StrCat(regions_[a]->spec.name, "/", regions_[b]->spec.name);
      double delay = options_.delay_ms.count(key) ? options_.delay_ms.at(key) : 0.0;
      std::string port_file =
          absl::StrCat(dir_, "/link-", key.replace(key.find('/'), 1, "-"), ".port");
      l.stats_file = port_file + ".stats";
      auto proxy = Process::Spawn(
          {.argv = {NetemProxyBinary(), "--listen", "127.0.0.1:0", "--target",
                    absl::StrCat("127.0.0.1:", regions_[b]->repl_port), "--delay-ms",
                    absl::StrCat(delay), "--port-file", port_file, "--stats-file", l.stats_file},
           .log_path = port_file + ".log"});
      if (!proxy.ok()) return proxy.status();
      l.proxy = *std::move(proxy);
      for (int i = 0; i < 100 && l.port == 0; ++i) {
        std::string p = ReadAll(port_file);
        if (!p.empty()) l.port = static_cast<uint16_t>(std::atoi(p.c_str()));
        if (l.port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (l.port == 0) return absl::UnavailableError("the link proxy did not start: " + key);
      links_.push_back(std::move(l));
    }
  }
  // How many connections each pool opens at the start: ClusterOptions::pool_open_at_start.
  const int open_at_start =
      options_.pool_open_at_start > 0 ? options_.pool_open_at_start : options_.pool_size;
  for (size_t i = 0; i < regions_.size(); ++i) {
    Region& r = *regions_[i];
    std::string y = absl::StrCat(
        "region: {name: ", r.spec.name, ", jurisdiction: ", r.spec.jurisdiction,
        ", replica_id: ", r.spec.replica_id, "}\n", "listen: {http: \"127.0.0.1:", r.http_port,
        "\", grpc: \"127.0.0.1:", r.grpc_port, "\"}\n", "postgres:\n  global: \"",
        r.pg->ConnectionString("global"), "\"\n  shards:\n    - \"",
        r.pg->ConnectionString("shard0"), "\"\n    - \"", r.pg->ConnectionString("shard1"),
        "\"\n  pool_size: ", options_.pool_size, "\n  open_at_start: ", open_at_start, "\n",
        "redis: {address: \"127.0.0.1:", r.redis->port(), "\"}\n", "security: {token_secret: \"",
        options_.token_secret, "\", operator_token: \"", options_.operator_token, "\"}\n",
        "limits: {rate_limit_per_s: 1000000, rate_limit_burst: 1000000, "
        "login_attempts_per_account: ",
        options_.login_attempts_per_account,
        options_.reservation_ttl_s > 0
            ? absl::StrCat(", reservation_ttl_s: ", options_.reservation_ttl_s)
            : "",
        options_.sweep_interval_s > 0
            ? absl::StrCat(", sweep_interval_s: ", options_.sweep_interval_s)
            : "",
        "}\n", "peers:\n");
    for (size_t j = 0; j < regions_.size(); ++j) {
      if (j == i) continue;
      absl::StrAppend(&y, "  - {name: ", regions_[j]->spec.name,
                      ", jurisdiction: ", regions_[j]->spec.jurisdiction,
                      ", replica_id: ", regions_[j]->spec.replica_id,
                      ", url: \"http://127.0.0.1:", regions_[j]->http_port, "\"}\n");
    }
    if (options_.coordination) {
      absl::StrAppend(&y, "replication: {replicator: \"127.0.0.1:", r.control_port,
                      "\", rights_wait_ms: ", options_.rights_wait_ms, "}\n");
    }
    y += options_.region_yaml_extra;
    r.region_yaml = absl::StrCat(dir_, "/", r.spec.name, "-region.yaml");
    if (auto st = WriteFile(r.region_yaml, y); !st.ok()) return st;

    std::string ry = absl::StrCat(
        "region: ", r.spec.name, "\njurisdiction: ", r.spec.jurisdiction,
        "\nreplica_id: ", r.spec.replica_id, "\nregion_grpc: \"127.0.0.1:", r.grpc_port,
        "\"\nlisten: \"127.0.0.1:", r.repl_port, "\"\nmetrics: \"127.0.0.1:", r.metrics_port,
        "\"\ntls: {ca: \"", cert_dir_, "/ca.pem\", cert: \"", cert_dir_, "/", r.spec.name,
        ".pem\", key: \"", cert_dir_, "/", r.spec.name,
        ".key\"}\nshipping: ", options_.shipping_yaml, "\n",
        options_.replicator_state_dir
            ? absl::StrCat("state_dir: \"", dir_, "/", r.spec.name, "-replicator-state\"\n")
            : "",
        "peers:\n");
    for (size_t j = 0; j < regions_.size(); ++j) {
      if (j == i) continue;
      uint16_t port = regions_[j]->repl_port;
      for (const Link& l : links_)
        if (l.a == i && l.b == j) port = l.port;
      absl::StrAppend(&ry, "  - {name: ", regions_[j]->spec.name,
                      ", jurisdiction: ", regions_[j]->spec.jurisdiction,
                      ", replica_id: ", regions_[j]->spec.replica_id,
                      ", address: \"127.0.0.1:", port, "\"}\n");
    }
    if (options_.coordination) {
      const std::string token_file = absl::StrCat(dir_, "/operator_token");
      if (auto st = WriteFile(token_file, options_.operator_token + "\n"); !st.ok()) return st;
      absl::StrAppend(&ry, "coordination:\n  control: \"127.0.0.1:", r.control_port,
                      "\"\n  admin: \"127.0.0.1:", r.admin_port, "\"\n  operator_token_file: \"",
                      token_file, "\"\n");
      for (const auto& line : absl::StrSplit(options_.coordination_yaml, '\n')) {
        if (!line.empty()) absl::StrAppend(&ry, "  ", line, "\n");
      }
      if (options_.witness) {
        if (witness_port_ == 0) witness_port_ = FreeTcpPort();
        absl::StrAppend(&ry, "  witness: {name: witness, replica_id: 250, address: \"127.0.0.1:",
                        witness_port_, "\"}\n");
      }
    }
    r.replicator_yaml = absl::StrCat(dir_, "/", r.spec.name, "-replicator.yaml");
    if (auto st = WriteFile(r.replicator_yaml, ry); !st.ok()) return st;
  }
  if (options_.witness) {
    std::string wy = absl::StrCat(
        "name: witness\nreplica_id: 250\nlisten: \"127.0.0.1:", witness_port_, "\"\ntls: {ca: \"",
        cert_dir_, "/ca.pem\", cert: \"", cert_dir_, "/witness.pem\", key: \"", cert_dir_,
        "/witness.key\"}\nstore: \"", dir_, "/witness-leases.json\"\n", "regions:\n");
    for (const auto& r : regions_) {
      absl::StrAppend(&wy, "  - {name: ", r->spec.name, ", replica_id: ", r->spec.replica_id,
                      "}\n");
    }
    // The regions' lease ttl (the witness promises for as long as they expect).
    for (const auto& line : absl::StrSplit(options_.coordination_yaml, '\n')) {
      std::string l(line);
      if (l.rfind("leases:", 0) == 0 && l.find("ttl_ms:") != std::string::npos) {
        size_t p = l.find("ttl_ms:") + 7;
        absl::StrAppend(&wy, "leases: {ttl_ms: ", std::atoi(l.c_str() + p), "}\n");
      }
    }
    witness_yaml_ = dir_ + "/witness.yaml";
    if (auto st = WriteFile(witness_yaml_, wy); !st.ok()) return st;
    if (auto st = StartWitness(); !st.ok()) return st;
  }
  // The regions start side by side: every process is spawned before any is waited for (from
  // this thread, which the processes' lifetime is tied to; see Process).
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (auto st = SpawnRegionServer(i); !st.ok()) return st;
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (auto st = AwaitRegionServer(i); !st.ok()) return st;
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (auto st = SpawnReplicator(i); !st.ok()) return st;
  }
  for (size_t i = 0; i < regions_.size(); ++i) {
    if (auto st = AwaitReplicator(i, /*await_streams=*/true); !st.ok()) return st;
  }
  // New databases: each region takes cart and stock changes once its replicator has heard from
  // the peers (they could hold records of an earlier life of it).
  for (size_t i = 0; i < regions_.size(); ++i) {
    bool released = false;
    for (int k = 0; k < 600 && !released; ++k) {
      auto held =
          Sample(HttpGet(regions_[i]->http_port, "/metrics").second, "meridian_local_writes_held");
      released = held.ok() && *held == 0;
      if (!released) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!released) {
      return absl::DeadlineExceededError(absl::StrCat(
          regions_[i]->spec.name, " still holds its local writes 30 s after the start: ",
          FileTail(regions_[i]->replicator ? regions_[i]->replicator->log_path() : "")));
    }
  }
  return absl::OkStatus();
}

absl::Status Cluster::KillRegionServer(size_t i) {
  Region& r = *regions_[i];
  if (!r.server) return absl::OkStatus();
  auto st = r.server->Terminate(SIGKILL, absl::Seconds(5));
  r.server.reset();
  return st.ok() ? absl::OkStatus() : st.status();
}

absl::StatusOr<int> Cluster::AwaitRegionServerExit(size_t i, absl::Duration timeout) {
  Region& r = *regions_[i];
  if (!r.server) return absl::FailedPreconditionError("the region server is not running");
  absl::StatusOr<int> status = r.server->Wait(timeout);
  if (status.ok()) r.server.reset();
  return status;
}

absl::Status Cluster::StartRegionServer(size_t i) {
  if (absl::Status st = SpawnRegionServer(i); !st.ok()) return st;
  return AwaitRegionServer(i);
}

absl::Status Cluster::SpawnRegionServer(size_t i) {
  Region& r = *regions_[i];
  auto p =
      Process::Spawn({.argv = {RegionBinary(), "--config", r.region_yaml, "--log-level", "warn"},
                      .log_path = absl::StrCat(dir_, "/", r.spec.name, "-region.log")});
  if (!p.ok()) return p.status();
  r.server = *std::move(p);
  return absl::OkStatus();
}

absl::Status Cluster::AwaitRegionServer(size_t i) {
  Region& r = *regions_[i];
  return AwaitHttp(*r.server, r.http_port, "/readyz", "meridian-region " + r.spec.name);
}

absl::Status Cluster::KillReplicator(size_t i) {
  Region& r = *regions_[i];
  if (!r.replicator) return absl::OkStatus();
  auto st = r.replicator->Terminate(SIGKILL, absl::Seconds(5));
  r.replicator.reset();
  return st.ok() ? absl::OkStatus() : st.status();
}

absl::Status Cluster::StartReplicator(size_t i, bool await_streams) {
  if (absl::Status st = SpawnReplicator(i); !st.ok()) return st;
  return AwaitReplicator(i, await_streams);
}

absl::Status Cluster::SpawnReplicator(size_t i) {
  Region& r = *regions_[i];
  const char* level = std::getenv("MERIDIAN_REPLICATOR_LOG_LEVEL");
  auto p = Process::Spawn({.argv = {ReplicatorBinary(), "--config", r.replicator_yaml,
                                    "--log-level", level ? level : "info"},
                           .log_path = replicator_log(i)});
  if (!p.ok()) return p.status();
  r.replicator = *std::move(p);
  return absl::OkStatus();
}

absl::Status Cluster::AwaitReplicator(size_t i, bool await_streams) {
  Region& r = *regions_[i];
  const std::string what = "meridian-replicator " + r.spec.name;
  if (absl::Status st = AwaitHttp(*r.replicator, r.metrics_port, "/metrics", what); !st.ok()) {
    return st;
  }
  // Its stream service listens once its coordinator has loaded the lease records.
  return await_streams ? AwaitListening(*r.replicator, r.repl_port, what) : absl::OkStatus();
}

absl::Status Cluster::StartWitness() {
  auto p = Process::Spawn(
      {.argv = {WitnessBinary(), "--config", witness_yaml_}, .log_path = dir_ + "/witness.log"});
  if (!p.ok()) return p.status();
  witness_ = *std::move(p);
  return AwaitListening(*witness_, witness_port_, "meridian-witness");
}

absl::Status Cluster::KillWitness() {
  if (!witness_) return absl::OkStatus();
  auto st = witness_->Terminate(SIGKILL, absl::Seconds(5));
  witness_.reset();
  return st.ok() ? absl::OkStatus() : st.status();
}

namespace {

// Sends `signal` to the proxy of every link for which `selected` holds (SIGUSR1 cuts a link,
// SIGUSR2 restores it).
template <typename Links, typename Pred>
absl::Status SignalLinks(Links& links, Pred selected, int signal) {
  for (auto& l : links) {
    if (!selected(l)) continue;
    if (auto st = l.proxy->Signal(signal); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Cluster::Partition(size_t i) {
  return SignalLinks(
      links_, [i](const Link& l) { return l.a == i || l.b == i; }, SIGUSR1);
}

absl::Status Cluster::Heal(size_t i) {
  return SignalLinks(
      links_, [i](const Link& l) { return l.a == i || l.b == i; }, SIGUSR2);
}

absl::Status Cluster::PartitionPair(size_t i, size_t j) {
  return SignalLinks(
      links_, [i, j](const Link& l) { return (l.a == i && l.b == j) || (l.a == j && l.b == i); },
      SIGUSR1);
}

absl::Status Cluster::HealPair(size_t i, size_t j) {
  return SignalLinks(
      links_, [i, j](const Link& l) { return (l.a == i && l.b == j) || (l.a == j && l.b == i); },
      SIGUSR2);
}

uint64_t Cluster::LinkBytes() const {
  uint64_t total = 0;
  for (const Link& l : links_) {
    std::string s = ReadAll(l.stats_file);
    for (const char* key : {"\"bytes_forward\": ", "\"bytes_backward\": "}) {
      auto p = s.find(key);
      if (p != std::string::npos) total += std::stoull(s.substr(p + std::strlen(key)));
    }
  }
  return total;
}

absl::StatusOr<std::string> Cluster::Metrics(size_t i) const {
  auto [status, body] = HttpGet(regions_[i]->metrics_port, "/metrics");
  if (status != 200) return absl::UnavailableError("replicator metrics unreachable");
  return body;
}

std::string Cluster::replicator_log(size_t i) const {
  return absl::StrCat(dir_, "/", regions_[i]->spec.name, "-replicator.log");
}

absl::StatusOr<double> Cluster::Metric(size_t i, const std::string& name_and_labels) const {
  auto page = Metrics(i);
  if (!page.ok()) return page.status();
  return Sample(*page, name_and_labels);
}

absl::StatusOr<double> Cluster::Sample(const std::string& page,
                                       const std::string& name_and_labels) {
  const size_t at = ("\n" + page).find("\n" + name_and_labels + " ");
  if (at == std::string::npos) return absl::NotFoundError(name_and_labels + " is not on the page");
  return std::atof(page.c_str() + at + name_and_labels.size() + 1);
}

}  // namespace meridian::test_support
