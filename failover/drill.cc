// The region-loss drill (see drill.h and failover/DRILL.md).
//
// One process, three threads while the region is away: the main thread runs the phases (baseline,
// removal, outage, return, recovery, checks); a monitor thread polls every 100 ms the APIs that
// say what the system decided (controllers' audit, geo, every replicator's lease view, the lost
// region's readiness, replication metrics); a DNS thread runs dig every 150 ms with the lost
// region's customers' client subnets. Each records the FIRST time it saw an event, on this
// machine's wall clock, which the loadgen and the controllers share.

#include "failover/drill.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/files.h"
#include "failover/drill_analysis.h"
#include "failover/drill_cluster.h"
#include "failover/drill_db.h"
#include "failover/http_client.h"
#include "failover/report.h"

extern char** environ;

namespace meridian::failover {
namespace {

using Json = nlohmann::json;
using drill::DrillCluster;
using drill::DrillRegion;
using drill::DrillReport;
using drill::Event;

constexpr const char* kCustomerPrefix = "drill";
constexpr double kErrorThreshold = 0.01;
constexpr int kPollMs = 100;
constexpr int kDigMs = 150;
// Replication is caught up when every outbox between the returned region and the others has at
// most this many records not yet acknowledged (under load a few are always in flight).
constexpr int64_t kCaughtUpSeq = 200;

std::atomic<bool> g_interrupted{false};
extern "C" void OnInterrupt(int) { g_interrupted = true; }

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string UtcStamp(int64_t unix_ms, const char* format) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[48];
  std::strftime(buf, sizeof buf, format, &tm);
  return buf;
}

void Say(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Say(const char* format, ...) {
  char buf[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  std::fprintf(stderr, "drill: [%s] %s\n", UtcStamp(NowMs(), "%H:%M:%S").c_str(), buf);
}

// Sleeps up to `ms`, waking early on an interrupt. False when interrupted.
bool SleepMs(int64_t ms) {
  const int64_t until = NowMs() + ms;
  while (!g_interrupted) {
    int64_t left = until - NowMs();
    if (left <= 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(left, 50)));
  }
  return false;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ---- child processes ----------------------------------------------------------------------

// Starts argv[0] (a path) with stdout and stderr appended to `log`, in a process group of its own
// when `own_group` (its pid is the group's id). -1 on failure.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& log, bool own_group = false) {
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (own_group) {
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
  }
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

// The exit status of `pid` (a child), waiting up to timeout_ms; -1 on timeout (still running).
int WaitChild(pid_t pid, int64_t timeout_ms) {
  const int64_t until = NowMs() + timeout_ms;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -2;
    if (NowMs() >= until) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Runs a command to completion (bounded); its output goes to `log`. One that overruns gets a
// SIGTERM (deploy/meridian passes it on to its run, which stops what it started), 30 s to end,
// then, still running, a SIGKILL to its whole process group: before, only its first process was
// killed, and the run under it (flock, the locked run, what it started) went on behind the drill.
int RunCommand(const std::vector<std::string>& argv, const std::string& log, int64_t timeout_ms) {
  pid_t pid = Spawn(argv, log, /*own_group=*/true);
  if (pid < 0) return -3;
  int rc = WaitChild(pid, timeout_ms);
  if (rc == -1) {
    kill(pid, SIGTERM);
    if (WaitChild(pid, 30'000) == -1) {
      kill(-pid, SIGKILL);
      WaitChild(pid, 2000);
    }
  }
  return rc;
}

// Runs a command and returns its stdout (bounded by timeout_ms; stderr discarded).
std::string Capture(const std::vector<std::string>& argv, int timeout_ms) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return "";
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  std::string out;
  if (rc == 0) {
    const int64_t until = NowMs() + timeout_ms;
    char buf[4096];
    for (;;) {
      int64_t left = until - NowMs();
      if (left <= 0) break;
      pollfd p{fds[0], POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left)) <= 0) break;
      ssize_t n = read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
      if (out.size() > (1 << 20)) break;
    }
    if (WaitChild(pid, 200) == -1) {
      kill(pid, SIGKILL);
      WaitChild(pid, 1000);
    }
  }
  close(fds[0]);
  return out;
}

bool Alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] != 'Z';
}

// deploy/meridian is run as `bash PATH ...`: it must be a regular file we can read.
absl::Status CheckReadableScript(const std::string& what, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec) || access(path.c_str(), R_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, "='", path, "': not a readable file (nothing was removed)"));
  }
  return absl::OkStatus();
}

std::string ExeDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// ---- small parsers --------------------------------------------------------------------------

Json ParseBody(const HttpResult& r) {
  if (!r.ok()) return Json();
  Json j = Json::parse(r.body, nullptr, false);
  return j.is_discarded() ? Json() : j;
}

// The lease entry for `group_region` in a replicator's /v1/status, or null.
Json LeaseOf(const Json& status, const std::string& group_region) {
  if (!status.is_object() || !status.contains("leases") || !status["leases"].is_array()) {
    return Json();
  }
  for (const Json& l : status["leases"]) {
    if (l.is_object() && l.value("group_region", std::string()) == group_region) return l;
  }
  return Json();
}

bool HeldUsable(const Json& lease) {
  return lease.is_object() && lease.value("held_here", false) && lease.value("usable", false);
}

// `name{peer="P"...} value` lines of a Prometheus text page: value per peer (first match).
std::map<std::string, double> MetricByPeer(const std::string& text, const std::string& name,
                                           const std::string& extra_label = "") {
  std::map<std::string, double> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "{", 0) != 0) continue;
    if (!extra_label.empty() && line.find(extra_label) == std::string::npos) continue;
    size_t p = line.find("peer=\"");
    if (p == std::string::npos) continue;
    size_t q = line.find('"', p + 6);
    size_t sp = line.rfind(' ');
    if (q == std::string::npos || sp == std::string::npos) continue;
    std::string peer = line.substr(p + 6, q - p - 6);
    if (!out.count(peer)) out[peer] = std::atof(line.c_str() + sp + 1);
  }
  return out;
}

std::vector<std::string> DigAddresses(const std::string& out) {
  std::vector<std::string> addrs;
  for (const std::string& line :
       std::vector<std::string>(absl::StrSplit(out, '\n', absl::SkipEmpty()))) {
    if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) {
      addrs.push_back(line);
    }
  }
  return addrs;
}

bool Contains(const std::vector<std::string>& answer, const std::vector<std::string>& any_of) {
  for (const std::string& a : answer)
    if (std::find(any_of.begin(), any_of.end(), a) != any_of.end()) return true;
  return false;
}

// ---- the drill -------------------------------------------------------------------------------

enum class Phase { kBaseline, kOutage, kReturned };

class Drill {
 public:
  Drill(DrillOptions o, DrillCluster c) : opt_(std::move(o)), c_(std::move(c)) {}
  int Run();

 private:
  // Events: the first time each is seen (later sightings are ignored).
  void Note(const std::string& name, int64_t unix_ms, const std::string& source) {
    std::lock_guard<std::mutex> l(mu_);
    if (events_.count(name)) return;
    events_[name] = Event{name, unix_ms, source};
    if (name != "kill" && name != "return") {
      Say("event: %s after %.1f s (%s)", name.c_str(),
          kill_ms_ > 0 ? static_cast<double>(unix_ms - kill_ms_) / 1000.0 : 0.0, source.c_str());
    }
  }
  std::optional<Event> Seen(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = events_.find(name);
    if (it == events_.end()) return std::nullopt;
    return it->second;
  }

  absl::Status Preflight();
  absl::Status StartLoad();
  void StopLoad();
  std::vector<drill::TimelineSecond> ReadTimeline();
  void MonitorLoop();
  void DigLoop();
  double BaselineLagP99();
  // Each survivor's counts of the survivors' exchange after a loss, per survivor peer:
  // (survivor, peer) -> {documents_sent exchanges, skipped exchanges, state records sent}.
  using ExchangeCounts = std::map<std::pair<std::string, std::string>, std::array<double, 3>>;
  ExchangeCounts SurvivorExchanges();
  // What the survivors' exchange did since `before` (a note for the report).
  std::string SurvivorExchangeNote(const ExchangeCounts& before);
  absl::Status RemoveRegion();
  absl::Status BringBack();
  void CheckRpo(DrillReport* report);
  bool WaitForRecovery();
  void CheckCarts(DrillReport* report);
  void CheckStockAndOrders(DrillReport* report);
  std::vector<std::string> DigOnce(const std::string& subnet);

  DrillOptions opt_;
  DrillCluster c_;
  std::unique_ptr<HttpClient> http_ = MakeCurlHttpClient();
  const DrillRegion* lost_ = nullptr;
  std::vector<const DrillRegion*> survivors_;
  std::string id_, report_dir_, work_dir_, meridian_, loadgen_, scarce_prefix_;
  pid_t loadgen_pid_ = -1;
  std::string loadgen_command_;

  std::mutex mu_;
  std::map<std::string, Event> events_;
  std::atomic<Phase> phase_{Phase::kBaseline};
  std::atomic<bool> stop_threads_{false};
  // Read by the watcher threads while the drill thread sets them.
  std::atomic<int64_t> removal_started_ms_{0};  // just before the removal command or signals
  std::atomic<int64_t> kill_ms_{0};
  std::atomic<int64_t> return_ms_{0};
  int dns_ttl_s_ = 0;
  // Latest state for the recovery wait (guarded by mu_).
  bool ready_ = false, lease_home_ = false, dns_back_ = false, caught_up_ = false;
  std::vector<std::string> notes_;
  double lag_p99_ms_ = 0;
};

// --region names one of the cluster's regions.
absl::Status CheckRegion(const DrillCluster& c, const std::string& region) {
  if (c.Find(region) != nullptr) return absl::OkStatus();
  std::vector<std::string> names;
  for (const DrillRegion& r : c.regions) names.push_back(r.name);
  return absl::InvalidArgumentError(absl::StrCat("--region: no region '", region,
                                                 "' (regions: ", absl::StrJoin(names, ", "), ")"));
}

absl::Status Drill::Preflight() {
  if (absl::Status st = CheckRegion(c_, opt_.region); !st.ok()) return st;
  lost_ = c_.Find(opt_.region);
  for (const DrillRegion& r : c_.regions)
    if (&r != lost_) survivors_.push_back(&r);

  // Tools.
  namespace fs = std::filesystem;
  const std::string exe = ExeDir();
  loadgen_ = opt_.loadgen;
  if (loadgen_.empty()) {
    for (const std::string& candidate :
         {exe + "/../tests/load/meridian-loadgen",
          std::string(getenv("MERIDIAN_BUILD") ? getenv("MERIDIAN_BUILD") : "") +
              "/tests/load/meridian-loadgen"}) {
      if (access(candidate.c_str(), X_OK) == 0) {
        loadgen_ = fs::weakly_canonical(candidate).string();
        break;
      }
    }
  }
  if (loadgen_.empty() || access(loadgen_.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        "meridian-loadgen not found (build it: cmake --build BUILD --target meridian-loadgen; it "
        "is looked for beside meridianctl in BUILD/tests/load, or set MERIDIAN_DRILL_LOADGEN)");
  }
  meridian_ = opt_.meridian_script;
  if (meridian_.empty()) {
    for (const std::string& candidate :
         {exe + "/../../deploy/meridian", std::string("deploy/meridian")}) {
      if (access(candidate.c_str(), R_OK) == 0) {
        meridian_ = fs::weakly_canonical(candidate).string();
        break;
      }
    }
  }
  if (meridian_.empty()) {
    return absl::FailedPreconditionError(
        "deploy/meridian not found (run from the repository, or set MERIDIAN_DRILL_MERIDIAN)");
  }
  // Also for a path given in DrillOptions directly: it is needed after the removal.
  if (absl::Status st = CheckReadableScript("deploy/meridian", meridian_); !st.ok()) return st;
  // deploy/meridian builds into $MERIDIAN_BUILD (default ROOT/build): point it at our build.
  if (getenv("MERIDIAN_BUILD") == nullptr) {
    setenv("MERIDIAN_BUILD", fs::weakly_canonical(exe + "/..").c_str(), 1);
  }
  if (Capture({"dig", "-v"}, 2000).empty() && Capture({"which", "dig"}, 2000).empty()) {
    return absl::FailedPreconditionError("dig not found (apt-get install dnsutils)");
  }

  // The cluster must be whole before anything is removed: every region ready, each holding its
  // own lease, and DNS sending the region's customers to it. Waits a little (a previous drill's
  // handback may still be under way).
  Say("preflight: waiting for every region to be ready and to hold its own lease (up to 90 s)");
  const int64_t until = NowMs() + 90'000;
  std::string problem;
  while (!g_interrupted) {
    problem.clear();
    std::vector<HttpCall> calls;
    for (const DrillRegion& r : c_.regions) calls.push_back({"GET", r.url + "/readyz", "", ""});
    for (const DrillRegion& r : c_.regions)
      calls.push_back({"GET", r.replicator + "/v1/status", "", c_.token});
    auto res = http_->Run(calls, 2000);
    for (size_t i = 0; i < c_.regions.size() && problem.empty(); ++i) {
      const DrillRegion& r = c_.regions[i];
      if (!res[i].ok()) problem = absl::StrCat(r.name, " not ready: ", res[i].Describe());
      Json lease = LeaseOf(ParseBody(res[c_.regions.size() + i]), r.name);
      if (problem.empty() && !HeldUsable(lease)) {
        problem = absl::StrCat(r.name, " does not hold its own lease yet");
      }
    }
    if (problem.empty()) {
      auto answer = DigOnce(lost_->subnets.front());
      if (!Contains(answer, lost_->dns_addresses)) {
        problem =
            absl::StrCat("DNS does not answer ", lost_->name, " for its subnet ",
                         lost_->subnets.front(), " (answered [", absl::StrJoin(answer, ", "), "])");
      }
    }
    if (problem.empty() || NowMs() > until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  if (!problem.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the cluster is not ready for a drill: ", problem, " ('deploy/meridian status --data ",
        c_.data_dir, "' and 'meridianctl status' say more)"));
  }
  bool controllers = std::all_of(c_.regions.begin(), c_.regions.end(),
                                 [](const DrillRegion& r) { return !r.controller.empty(); });
  if (!controllers) {
    notes_.push_back(
        "no meridian-failover controller in this cluster: detection is when meridian-geo marks "
        "the region down from its own probes");
  }
  // The DNS TTL customers get.
  std::string answer =
      Capture({"dig", "@" + c_.dns_host, "-p", std::to_string(c_.dns_port), c_.service_name, "A",
               "+subnet=" + lost_->subnets.front(), "+noall", "+answer", "+time=1", "+tries=1"},
              3000);
  std::vector<std::string> fields =
      absl::StrSplit(answer, absl::ByAnyChar(" \t"), absl::SkipEmpty());
  if (fields.size() >= 2) dns_ttl_s_ = std::atoi(fields[1].c_str());
  return absl::OkStatus();
}

std::vector<std::string> Drill::DigOnce(const std::string& subnet) {
  return DigAddresses(
      Capture({"dig", "@" + c_.dns_host, "-p", std::to_string(c_.dns_port), c_.service_name, "A",
               "+subnet=" + subnet, "+short", "+time=1", "+tries=1"},
              2500));
}

absl::Status Drill::StartLoad() {
  std::vector<std::string> argv = {loadgen_};
  for (const DrillRegion& r : c_.regions) {
    argv.push_back("--region");
    argv.push_back(r.name + "=" + r.url);
    for (const std::string& a : r.dns_addresses) {
      argv.push_back("--region-address");
      argv.push_back(r.name + "=" + a);
    }
  }
  argv.insert(argv.end(), {"--dns", absl::StrCat(c_.dns_host, ":", c_.dns_port), "--dns-name",
                           c_.service_name});
  for (const DrillRegion& r : c_.regions) {
    argv.push_back("--client-subnet");
    argv.push_back(r.subnets.front());
  }
  argv.insert(argv.end(), {"--residency",
                           "any",
                           "--customer-prefix",
                           kCustomerPrefix,
                           "--customers",
                           std::to_string(opt_.customers),
                           "--operator-token-file",
                           c_.data_dir + "/operator_token",
                           "--rate",
                           absl::StrFormat("%g", opt_.rate_per_s),
                           "--duration-s",
                           "3600",
                           "--warmup-s",
                           "0",
                           "--connections",
                           "8",
                           "--timeout-ms",
                           "3000",
                           "--seed-products",
                           "50",
                           "--scarce-products",
                           std::to_string(opt_.scarce_products),
                           "--scarce-stock",
                           std::to_string(opt_.scarce_stock_per_region),
                           "--scarce-fraction",
                           "0.3",
                           "--scarce-prefix",
                           scarce_prefix_,
                           "--timeline-out",
                           work_dir_ + "/timeline.jsonl",
                           "--acks-out",
                           work_dir_ + "/acks.jsonl",
                           "--out",
                           work_dir_ + "/loadgen.json"});
  loadgen_command_ = absl::StrJoin(argv, " ");
  Say("load: starting meridian-loadgen (%g requests/s, %d customers, log %s/loadgen.log)",
      opt_.rate_per_s, opt_.customers, work_dir_.c_str());
  loadgen_pid_ = Spawn(argv, work_dir_ + "/loadgen.log");
  if (loadgen_pid_ < 0) return absl::InternalError("cannot start " + loadgen_);
  // Setup (seeding, customers) first; the timeline's first line means the run is going.
  const int64_t until = NowMs() + 180'000;
  while (!g_interrupted && NowMs() < until) {
    if (WaitChild(loadgen_pid_, 0) != -1) {
      loadgen_pid_ = -1;
      return absl::FailedPreconditionError(
          absl::StrCat("meridian-loadgen exited during setup; see ", work_dir_, "/loadgen.log"));
    }
    if (!ReadTimeline().empty()) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::DeadlineExceededError("meridian-loadgen did not start its run within 180 s");
}

void Drill::StopLoad() {
  if (loadgen_pid_ < 0) return;
  kill(loadgen_pid_, SIGTERM);
  // It drains what is in flight (at most a request timeout) and writes its files.
  int rc = WaitChild(loadgen_pid_, 20'000);
  if (rc == -1) {
    kill(loadgen_pid_, SIGKILL);
    WaitChild(loadgen_pid_, 2000);
    notes_.push_back("meridian-loadgen did not stop within 20 s of SIGTERM and was killed");
  } else if (rc != 0) {
    notes_.push_back(absl::StrCat("meridian-loadgen exited with status ", rc));
  }
  loadgen_pid_ = -1;
}

std::vector<drill::TimelineSecond> Drill::ReadTimeline() {
  auto t = drill::ParseTimeline(ReadAll(work_dir_ + "/timeline.jsonl"));
  return t.ok() ? *t : std::vector<drill::TimelineSecond>();
}

void Drill::MonitorLoop() {
  int tick = 0;
  while (!stop_threads_) {
    const int64_t started = NowMs();
    const Phase phase = phase_;
    std::vector<HttpCall> calls;
    enum Kind { kGeo, kSurvivorStatus, kLostStatus, kLostReady, kDecisions, kMetrics };
    std::vector<std::pair<Kind, const DrillRegion*>> kinds;
    auto add = [&](Kind k, const DrillRegion* r, HttpCall call) {
      kinds.emplace_back(k, r);
      calls.push_back(std::move(call));
    };
    add(kGeo, lost_, {"GET", c_.geo + "/v1/regions/" + lost_->name, "", ""});
    for (const DrillRegion* s : survivors_)
      add(kSurvivorStatus, s, {"GET", s->replicator + "/v1/status", "", c_.token});
    if (phase == Phase::kReturned) {
      add(kLostStatus, lost_, {"GET", lost_->replicator + "/v1/status", "", c_.token});
      add(kLostReady, lost_, {"GET", lost_->url + "/readyz", "", ""});
      if (tick % 5 == 0) {
        for (const DrillRegion& r : c_.regions)
          if (!r.metrics.empty()) add(kMetrics, &r, {"GET", r.metrics, "", ""});
      }
    }
    if (phase != Phase::kBaseline && tick % 3 == 0) {
      for (const DrillRegion& r : c_.regions)
        if (!r.controller.empty())
          add(kDecisions, &r, {"GET", r.controller + "/v1/decisions", "", ""});
    }
    std::vector<HttpResult> res = http_->Run(calls, 800);
    const int64_t seen = NowMs();
    std::map<std::string, std::map<std::string, double>> lag_seq, connected;
    for (size_t i = 0; i < res.size(); ++i) {
      const auto& [kind, region] = kinds[i];
      switch (kind) {
        case kGeo: {
          Json j = ParseBody(res[i]);
          if (phase == Phase::kOutage && j.is_object() && j.value("effective", "") == "down") {
            Note("geo marks down", seen, "meridian-geo /v1/regions (effective health)");
          }
          break;
        }
        case kSurvivorStatus: {
          Json lease = LeaseOf(ParseBody(res[i]), lost_->name);
          if (phase == Phase::kOutage && HeldUsable(lease)) {
            Note("takeover", seen,
                 absl::StrCat("replicator ", region->name, " /v1/status (group ", lost_->name,
                              " held and usable, epoch ", lease.value("epoch", 0), ")"));
          }
          break;
        }
        case kLostStatus: {
          bool home = HeldUsable(LeaseOf(ParseBody(res[i]), lost_->name));
          if (home)
            Note("lease home", seen, absl::StrCat("replicator ", lost_->name, " /v1/status"));
          std::lock_guard<std::mutex> l(mu_);
          lease_home_ = home;
          break;
        }
        case kLostReady: {
          if (res[i].ok()) Note("region ready", seen, absl::StrCat(lost_->name, " /readyz"));
          std::lock_guard<std::mutex> l(mu_);
          ready_ = res[i].ok();
          break;
        }
        case kDecisions: {
          Json j = ParseBody(res[i]);
          if (!j.is_object() || !j.contains("entries") || !j["entries"].is_array()) break;
          for (const Json& e : j["entries"]) {
            if (!e.is_object() || e.value("region", "") != lost_->name) continue;
            const std::string decision = e.value("decision", "");
            const int64_t at = e.value("unix_ms", int64_t{0});
            // Only decisions of this drill (a previous drill's "lost" stays in the audit list;
            // a partition's t = 0 is when its command returned, so count from its start).
            const int64_t since = removal_started_ms_;
            if (decision == "lost" && since > 0 && at >= since) {
              // The earliest controller wins: Note keeps the first one noted, so compare.
              std::lock_guard<std::mutex> l(mu_);
              auto it = events_.find("detection");
              if (it == events_.end() || at < it->second.unix_ms) {
                events_["detection"] = Event{
                    "detection", at,
                    absl::StrCat("meridian-failover ", region->name, " decision=lost (audit)")};
              }
            }
            if (decision == "recovered" && return_ms_ > 0 && at >= return_ms_) {
              Note("controllers: recovered", at,
                   absl::StrCat("meridian-failover ", region->name, " decision=recovered"));
            }
          }
          break;
        }
        case kMetrics: {
          lag_seq[region->name] = MetricByPeer(res[i].body, "meridian_replication_lag_seq");
          connected[region->name] = MetricByPeer(res[i].body, "meridian_replication_connected");
          if (!res[i].ok()) lag_seq[region->name]["?"] = 1e18;
          break;
        }
      }
    }
    if (!lag_seq.empty() && lag_seq.size() == c_.regions.size()) {
      // Caught up: the returned region and every survivor connected both ways, and neither
      // side has more than kCaughtUpSeq records unacknowledged by the other.
      bool ok = true;
      for (const DrillRegion* s : survivors_) {
        ok = ok && connected[lost_->name][s->name] == 1 && connected[s->name][lost_->name] == 1;
        ok = ok && lag_seq[lost_->name].count(s->name) &&
             lag_seq[lost_->name][s->name] <= kCaughtUpSeq;
        ok = ok && lag_seq[s->name].count(lost_->name) &&
             lag_seq[s->name][lost_->name] <= kCaughtUpSeq;
      }
      if (ok) Note("caught up", seen, "replicators' /metrics (connected, lag_seq both ways)");
      std::lock_guard<std::mutex> l(mu_);
      caught_up_ = ok;
    }
    ++tick;
    const int64_t spent = NowMs() - started;
    if (spent < kPollMs) std::this_thread::sleep_for(std::chrono::milliseconds(kPollMs - spent));
  }
}

void Drill::DigLoop() {
  while (!stop_threads_) {
    const int64_t started = NowMs();
    const Phase phase = phase_;
    for (const std::string& subnet : lost_->subnets) {
      auto answer = DigOnce(subnet);
      const int64_t seen = NowMs();
      const bool has_lost = Contains(answer, lost_->dns_addresses);
      if (phase == Phase::kOutage && !answer.empty() && !has_lost) {
        Note("dns switch", seen,
             absl::StrCat("dig +subnet=", subnet, " answered ", absl::StrJoin(answer, ",")));
      }
      if (phase == Phase::kReturned) {
        if (has_lost) Note("dns back", seen, absl::StrCat("dig +subnet=", subnet));
        std::lock_guard<std::mutex> l(mu_);
        dns_back_ = has_lost;
      }
    }
    const int64_t spent = NowMs() - started;
    if (spent < kDigMs) std::this_thread::sleep_for(std::chrono::milliseconds(kDigMs - spent));
  }
}

// The replication lag p99 of the lost region's changes at the survivors (their summary over the
// last 30 s), the largest of them: the window of committed orders async mode may lose.
double Drill::BaselineLagP99() {
  std::vector<HttpCall> calls;
  for (const DrillRegion* s : survivors_) calls.push_back({"GET", s->metrics, "", ""});
  double worst = 0;
  for (const HttpResult& r : http_->Run(calls, 2000)) {
    auto lag = MetricByPeer(r.body, "meridian_replication_lag_ms", "quantile=\"0.99\"");
    if (lag.count(lost_->name)) worst = std::max(worst, lag[lost_->name]);
  }
  return worst;
}

Drill::ExchangeCounts Drill::SurvivorExchanges() {
  std::vector<HttpCall> calls;
  for (const DrillRegion* s : survivors_) calls.push_back({"GET", s->metrics, "", ""});
  ExchangeCounts out;
  const std::vector<HttpResult> res = http_->Run(calls, 2000);
  for (size_t i = 0; i < res.size() && i < survivors_.size(); ++i) {
    if (!res[i].ok()) continue;
    const std::map<std::string, double> counts[3] = {
        MetricByPeer(res[i].body, "meridian_replication_survivor_exchanges_total",
                     "outcome=\"documents_sent\""),
        MetricByPeer(res[i].body, "meridian_replication_survivor_exchanges_total",
                     "outcome=\"skipped\""),
        MetricByPeer(res[i].body, "meridian_replication_survivor_state_records_total")};
    for (const DrillRegion* peer : survivors_) {
      if (peer == survivors_[i]) continue;
      auto& row = out[{survivors_[i]->name, peer->name}];
      for (int k = 0; k < 3; ++k) {
        auto it = counts[k].find(peer->name);
        row[k] = it == counts[k].end() ? 0 : it->second;
      }
    }
  }
  return out;
}

std::string Drill::SurvivorExchangeNote(const ExchangeCounts& before) {
  std::string text;
  for (const auto& [pair, now] : SurvivorExchanges()) {
    auto b = before.find(pair);
    std::array<double, 3> d = now;
    for (int k = 0; k < 3 && b != before.end(); ++k) d[k] -= b->second[k];
    std::string what = d[0] > 0   ? absl::StrCat("sent ", d[2], " state records")
                       : d[1] > 0 ? std::string("had nothing the peer lacked: sent none")
                                  : std::string("no exchange seen");
    absl::StrAppend(&text, text.empty() ? "" : "; ", pair.first, " -> ", pair.second, ": ", what);
  }
  return absl::StrCat(
      "survivors' exchange after the loss (marks compared, then only the documents a peer lacks; "
      "replication/README): ",
      text.empty() ? std::string("survivors' metrics unreachable") : text);
}

absl::Status Drill::RemoveRegion() {
  if (opt_.mode == "partition") {
    Say("removing %s: deploy/meridian partition %s", lost_->name.c_str(), lost_->name.c_str());
    const int64_t before = NowMs();
    int rc = RunCommand({"/bin/bash", meridian_, "partition", lost_->name, "--data", c_.data_dir},
                        work_dir_ + "/meridian.log", 60'000);
    if (rc != 0) {
      return absl::InternalError(absl::StrCat("deploy/meridian partition exited ", rc, "; see ",
                                              work_dir_, "/meridian.log"));
    }
    kill_ms_ = NowMs();
    Note("kill", kill_ms_,
         absl::StrCat("partition in place (the command took ", kill_ms_ - before, " ms)"));
    return absl::OkStatus();
  }
  std::vector<pid_t> pids;
  for (const char* file : {"/region.pid", "/replicator.pid"}) {
    std::string text = ReadAll(lost_->dir + file);
    pid_t pid = static_cast<pid_t>(std::atol(text.c_str()));
    if (pid <= 1 || !Alive(pid)) {
      return absl::FailedPreconditionError(
          absl::StrCat(lost_->dir, file, ": no running process (pid '", text, "')"));
    }
    pids.push_back(pid);
  }
  Say("removing %s: kill -9 meridian-region (pid %d) and meridian-replicator (pid %d)",
      lost_->name.c_str(), pids[0], pids[1]);
  kill_ms_ = NowMs();
  for (pid_t pid : pids) kill(pid, SIGKILL);
  Note("kill", kill_ms_, absl::StrCat("kill -9 ", pids[0], " ", pids[1]));
  for (int i = 0; i < 100; ++i) {
    if (!Alive(pids[0]) && !Alive(pids[1])) return absl::OkStatus();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::InternalError("the killed processes are still alive after 2 s");
}

absl::Status Drill::BringBack() {
  return_ms_ = NowMs();
  phase_ = Phase::kReturned;
  if (opt_.mode == "partition") {
    Say("bringing %s back: deploy/meridian heal %s", lost_->name.c_str(), lost_->name.c_str());
    Note("return", return_ms_, "deploy/meridian heal");
    int rc = RunCommand({"/bin/bash", meridian_, "heal", lost_->name, "--data", c_.data_dir},
                        work_dir_ + "/meridian.log", 60'000);
    if (rc != 0) return absl::InternalError(absl::StrCat("deploy/meridian heal exited ", rc));
    return absl::OkStatus();
  }
  Say("bringing %s back: deploy/meridian up (starts the killed processes)", lost_->name.c_str());
  Note("return", return_ms_, "deploy/meridian up (restart)");
  int rc = RunCommand({"/bin/bash", meridian_, "up", "--data", c_.data_dir},
                      work_dir_ + "/meridian.log", 180'000);
  if (rc != 0) {
    return absl::InternalError(
        absl::StrCat("deploy/meridian up exited ", rc, "; see ", work_dir_, "/meridian.log"));
  }
  return absl::OkStatus();
}

void Drill::CheckRpo(DrillReport* report) {
  // Acknowledgements reach acks.jsonl within a second (the loadgen flushes every second): count
  // those up to 2 s before the check, so none is counted before it could be read.
  const int64_t check_ms = NowMs();
  auto acks = drill::ParseAcks(ReadAll(work_dir_ + "/acks.jsonl"));
  if (!acks.ok()) {
    notes_.push_back(absl::StrCat("RPO not checked: ", acks.status().message()));
    return;
  }
  std::vector<std::string> ids;
  for (const drill::Ack& a : *acks)
    if (a.region == lost_->name) ids.push_back(a.order_id);
  std::vector<std::string> dsns;
  for (const DrillRegion* s : survivors_) dsns.insert(dsns.end(), s->dsns.begin(), s->dsns.end());
  auto present = drill::OrdersPresent(dsns, ids);
  if (!present.ok()) {
    notes_.push_back(absl::StrCat("RPO not checked: ", present.status().message()));
    return;
  }
  report->rpo_checked_unix_ms = check_ms - 2000;
  report->rpo =
      drill::ComputeRpo(*acks, lost_->name, *present, kill_ms_, check_ms - 2000, lag_p99_ms_);
  Say("RPO: %lld orders acknowledged by %s; missing at every survivor: %lld sync-peer, %lld async",
      static_cast<long long>(report->rpo.acked_by_lost), lost_->name.c_str(),
      static_cast<long long>(report->rpo.missing_sync_peer),
      static_cast<long long>(report->rpo.missing_async));
}

bool Drill::WaitForRecovery() {
  Say("waiting for full recovery: region ready, caught up, lease and DNS back home, customer "
      "errors under 1%% (up to %d s)",
      opt_.recovery_timeout_s);
  const int64_t until = NowMs() + 1000LL * opt_.recovery_timeout_s;
  int64_t last_report = 0;
  while (!g_interrupted && NowMs() < until) {
    bool ready, home, dns, caught;
    {
      std::lock_guard<std::mutex> l(mu_);
      ready = ready_;
      home = lease_home_;
      dns = dns_back_;
      caught = caught_up_;
    }
    // The error rate over the last three finished seconds that started after the return.
    auto timeline = ReadTimeline();
    int good = 0;
    for (auto it = timeline.rbegin(); it != timeline.rend() && good < 3; ++it) {
      if (it->start_unix_ms < return_ms_) break;
      if (it->arrivals > 0 && it->error_rate >= kErrorThreshold) break;
      ++good;
    }
    const bool errors_ok = good >= 3;
    if (ready && home && dns && caught && errors_ok) return true;
    if (NowMs() - last_report > 5000) {
      last_report = NowMs();
      Say("  ready %s, caught up %s, lease home %s, DNS back %s, errors under 1%% %s",
          ready ? "yes" : "no", caught ? "yes" : "no", home ? "yes" : "no", dns ? "yes" : "no",
          errors_ok ? "yes" : "no");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

void Drill::CheckCarts(DrillReport* report) {
  // A sample of customers, half of them the lost region's (they moved and came back).
  const size_t nregions = c_.regions.size();
  size_t lost_index = 0;
  for (size_t i = 0; i < nregions; ++i)
    if (&c_.regions[i] == lost_) lost_index = i;
  std::vector<int> sample;
  for (int i = 0; i < opt_.customers && static_cast<int>(sample.size()) < opt_.cart_sample / 2;
       ++i) {
    if (static_cast<size_t>(i) % nregions == lost_index) sample.push_back(i);
  }
  for (int i = 0; i < opt_.customers && static_cast<int>(sample.size()) < opt_.cart_sample; ++i) {
    if (static_cast<size_t>(i) % nregions != lost_index) sample.push_back(i);
  }
  const std::string password = absl::StrCat("loadgen-", kCustomerPrefix, "-password");
  // Sign in once per customer (tokens are valid in every region: one shared secret).
  std::vector<HttpCall> logins;
  for (int i : sample) {
    Json body = {{"email", absl::StrCat(kCustomerPrefix, "-", i, "@loadgen.example.com")},
                 {"password", password}};
    logins.push_back({"POST", c_.regions[static_cast<size_t>(i) % nregions].url + "/v1/sessions",
                      body.dump(), ""});
  }
  std::vector<std::string> tokens;
  for (const HttpResult& r : http_->Run(logins, 10'000)) {
    Json j = ParseBody(r);
    tokens.push_back(j.is_object() ? j.value("token", "") : "");
  }
  const int64_t start = NowMs();
  report->carts.customers = static_cast<int64_t>(sample.size());
  for (int attempt = 0;; ++attempt) {
    std::vector<HttpCall> calls;
    for (size_t k = 0; k < sample.size(); ++k)
      for (const DrillRegion& r : c_.regions)
        calls.push_back({"GET", r.url + "/v1/cart", "", tokens[k]});
    auto res = http_->Run(calls, 5000);
    int64_t identical = 0;
    std::vector<std::string> differing;
    for (size_t k = 0; k < sample.size(); ++k) {
      std::vector<std::string> views;
      for (size_t ri = 0; ri < nregions; ++ri) {
        const HttpResult& r = res[k * nregions + ri];
        Json j = ParseBody(r);
        std::vector<std::string> lines;
        if (j.is_object() && j.contains("lines") && j["lines"].is_array()) {
          for (const Json& l : j["lines"]) {
            if (l.is_object()) {
              lines.push_back(absl::StrCat(l.value("sku", ""), "x", l.value("quantity", 0)));
            }
          }
        } else {
          lines.push_back(absl::StrCat("<", r.Describe(), ">"));
        }
        std::sort(lines.begin(), lines.end());
        views.push_back(absl::StrJoin(lines, " "));
      }
      if (std::all_of(views.begin(), views.end(),
                      [&](const std::string& v) { return v == views[0]; })) {
        ++identical;
      } else {
        std::string d = absl::StrCat(kCustomerPrefix, "-", sample[k], ":");
        for (size_t ri = 0; ri < nregions; ++ri)
          absl::StrAppend(&d, " ", c_.regions[ri].name, " {", views[ri], "}");
        differing.push_back(d);
      }
    }
    report->carts.identical = identical;
    report->carts.differing = differing;
    if (identical == report->carts.customers) {
      report->carts.converged_after_ms = NowMs() - start;
      break;
    }
    if (NowMs() - start > 30'000 || g_interrupted) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  Say("carts: %lld of %lld sampled customers identical in every region",
      static_cast<long long>(report->carts.identical),
      static_cast<long long>(report->carts.customers));
}

void Drill::CheckStockAndOrders(DrillReport* report) {
  std::vector<std::string> all_dsns;
  for (const DrillRegion& r : c_.regions)
    all_dsns.insert(all_dsns.end(), r.dsns.begin(), r.dsns.end());
  auto rows = drill::OrdersWithSkuPrefix(all_dsns, scarce_prefix_ + "-");
  std::map<std::string, int64_t> restocked;
  for (int i = 1; i <= opt_.scarce_products; ++i) {
    restocked[absl::StrFormat("%s-%05d", scarce_prefix_, i)] =
        static_cast<int64_t>(opt_.scarce_stock_per_region) *
        static_cast<int64_t>(c_.regions.size());
  }
  if (!rows.ok()) {
    notes_.push_back(absl::StrCat("stock not checked: ", rows.status().message()));
  } else {
    auto merged = drill::MergeOrders(*rows);
    report->orders_seen = static_cast<int64_t>(merged.size());
    report->stock = drill::ComputeStock(merged, restocked);
  }
  // What the regions still see as available (from one survivor's view of the rights).
  std::vector<HttpCall> calls;
  for (const auto& [sku, units] : restocked)
    calls.push_back({"GET", survivors_.front()->url + "/v1/admin/rights/" + sku, "", c_.token});
  int64_t available = 0;
  bool all = true;
  for (const HttpResult& r : http_->Run(calls, 5000)) {
    Json j = ParseBody(r);
    if (j.is_object() && j.contains("available") && j["available"].is_number_integer()) {
      available += j["available"].get<int64_t>();
    } else {
      all = false;
    }
  }
  report->stock_available_after = all ? available : -1;

  // Every acknowledged order of the run, in every region (all customers may be anywhere).
  auto acks = drill::ParseAcks(ReadAll(work_dir_ + "/acks.jsonl"));
  if (!acks.ok()) return;
  std::vector<std::string> ids;
  for (const drill::Ack& a : *acks) ids.push_back(a.order_id);
  report->acked_total = static_cast<int64_t>(ids.size());
  int64_t missing = 0;
  for (const DrillRegion& r : c_.regions) {
    auto present = drill::OrdersPresent(r.dsns, ids);
    if (!present.ok()) {
      notes_.push_back(absl::StrCat("acknowledged orders not checked in ", r.name, ": ",
                                    present.status().message()));
      return;
    }
    missing = std::max<int64_t>(missing, static_cast<int64_t>(ids.size() - present->size()));
  }
  report->acked_missing_after_recovery = missing;
}

int Drill::Run() {
  absl::Status st = Preflight();
  if (!st.ok()) {
    std::fprintf(stderr, "meridianctl drill: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  const int64_t started = NowMs();
  id_ = absl::StrCat(UtcStamp(started, "%Y%m%dT%H%M%SZ"), "-", lost_->name, "-", opt_.mode);
  report_dir_ = opt_.output_dir + "/" + id_;
  work_dir_ = c_.data_dir + "/drills/" + id_;
  std::error_code ec;
  std::filesystem::create_directories(work_dir_, ec);
  if (ec) {
    std::fprintf(stderr, "meridianctl drill: cannot create %s: %s\n", work_dir_.c_str(),
                 ec.message().c_str());
    return 2;
  }
  scarce_prefix_ = absl::AsciiStrToLower(absl::StrCat("scarce-", UtcStamp(started, "%m%d%H%M%S")));

  DrillReport report;
  report.id = id_;
  report.region = lost_->name;
  report.mode = opt_.mode;
  report.duration_s = opt_.duration_s;
  report.started_utc = UtcStamp(started, "%Y-%m-%d %H:%M:%S UTC");
  report.data_dir = c_.data_dir;
  report.links = c_.links;
  report.durability = c_.durability;
  report.lease_ttl_ms = c_.lease_ttl_ms;
  report.dns_ttl_s = dns_ttl_s_;
  report.lost_subnets = lost_->subnets;
  report.command =
      absl::StrCat("meridianctl --data ", c_.data_dir, " drill region-loss --region ", lost_->name,
                   " --mode ", opt_.mode, " --duration ", opt_.duration_s);
  report.load = absl::StrFormat(
      "meridian-loadgen, %g requests/s open loop over %d customers (a third per region, routed by "
      "GeoDNS with their client subnet, TTL honoured), default mix (15%% checkouts), %d scarce "
      "SKUs with %d units per region",
      opt_.rate_per_s, opt_.customers, opt_.scarce_products, opt_.scarce_stock_per_region);
  Say("drill %s: %s %s for %d s; report in %s", id_.c_str(), opt_.mode.c_str(), lost_->name.c_str(),
      opt_.duration_s, report_dir_.c_str());

  st = StartLoad();
  if (!st.ok()) {
    StopLoad();
    std::fprintf(stderr, "meridianctl drill: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  std::thread monitor([this] { MonitorLoop(); });
  std::thread digger([this] { DigLoop(); });
  auto stop_threads = [&] {
    stop_threads_ = true;
    if (monitor.joinable()) monitor.join();
    if (digger.joinable()) digger.join();
  };

  Say("baseline: %d s of load with every region up", opt_.baseline_s);
  SleepMs(1000LL * opt_.baseline_s);
  lag_p99_ms_ = BaselineLagP99();
  const auto exchanges_before = SurvivorExchanges();
  bool removed = false;
  if (!g_interrupted) {
    removal_started_ms_ = NowMs();
    phase_ = Phase::kOutage;
    st = RemoveRegion();
    removed = st.ok() || kill_ms_ > 0;
    if (!st.ok()) notes_.push_back(absl::StrCat("removing the region: ", st.message()));
  }
  if (removed) {
    Say("outage: %s stays away for %d s", lost_->name.c_str(), opt_.duration_s);
    SleepMs(1000LL * opt_.duration_s);
    CheckRpo(&report);
    notes_.push_back(SurvivorExchangeNote(exchanges_before));
    st = BringBack();
    if (!st.ok()) notes_.push_back(absl::StrCat("bringing the region back: ", st.message()));
    bool recovered = WaitForRecovery();
    if (recovered) {
      Say("recovered; %d s more load to see the error rate stay low", opt_.settle_s);
      SleepMs(1000LL * opt_.settle_s);
    } else {
      notes_.push_back(absl::StrCat("full recovery not seen within ", opt_.recovery_timeout_s,
                                    " s of the return"));
    }
  }
  stop_threads();
  Say("stopping the load");
  StopLoad();
  if (!removed) {
    std::fprintf(stderr, "meridianctl drill: the region was not removed (%s)\n",
                 g_interrupted ? "interrupted" : std::string(st.message()).c_str());
    return 2;
  }

  Say("checking carts, stock and orders");
  CheckCarts(&report);
  CheckStockAndOrders(&report);

  // Figures.
  report.timeline = ReadTimeline();
  report.errors = drill::AnalyzeErrors(report.timeline, kill_ms_, return_ms_, kErrorThreshold);
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [name, e] : events_) report.events.push_back(e);
  }
  drill::Observed& o = report.observed;
  o.mode = opt_.mode;
  o.durability = c_.durability;
  o.lease_ttl_ms = c_.lease_ttl_ms;
  auto since_kill = [&](const std::string& name) -> std::optional<int64_t> {
    const Event* e = report.Find(name);
    if (e == nullptr) return std::nullopt;
    return e->unix_ms - kill_ms_;
  };
  o.detection_ms = since_kill("detection");
  if (!o.detection_ms) {
    o.detection_ms = since_kill("geo marks down");
    if (o.detection_ms) {
      notes_.push_back(
          "detection taken from meridian-geo marking the region down (no controller "
          "decision seen)");
    }
  }
  o.dns_switch_ms = since_kill("dns switch");
  o.takeover_ms = since_kill("takeover");
  if (report.errors.outage_ok_unix_ms) {
    o.errors_ok_ms = std::max<int64_t>(0, *report.errors.outage_ok_unix_ms - kill_ms_);
  }
  // Full recovery: the last of its parts after the return.
  std::vector<std::string> parts = {"region ready", "caught up", "lease home", "dns back"};
  std::optional<int64_t> recovery = report.errors.failback_ok_unix_ms;
  bool all_parts = true;
  for (const std::string& p : parts) {
    const Event* e = report.Find(p);
    if (e == nullptr) {
      all_parts = false;
      continue;
    }
    recovery = std::max(recovery.value_or(0), e->unix_ms);
  }
  o.region_back = all_parts && report.Find("region ready") != nullptr;
  if (all_parts && recovery && report.errors.failback_ok_unix_ms) {
    recovery = std::max<int64_t>(*recovery, return_ms_);
    report.events.push_back(Event{"recovery", *recovery,
                                  "the last of: ready, caught up, lease home, DNS back, errors "
                                  "under 1%"});
    o.full_recovery_ms = *recovery - return_ms_;
  }
  o.rpo = report.rpo;
  o.rpo_checked = report.rpo_checked_unix_ms != 0;
  o.stock = report.stock;
  o.acked_total = report.acked_total;
  o.acked_missing_after_recovery = report.acked_missing_after_recovery;
  o.carts_compared = report.carts.customers;
  o.carts_converged =
      report.carts.customers > 0 && report.carts.identical == report.carts.customers;
  report.targets = drill::JudgeTargets(o);
  report.loadgen_command = loadgen_command_;
  if (g_interrupted) {
    notes_.insert(notes_.begin(),
                  "INTERRUPTED by the operator (SIGINT/SIGTERM): the drill stopped waiting, "
                  "brought the region back and stopped the load; what it had not seen yet is "
                  "missing from the figures");
  }
  report.notes = notes_;
  report.notes.push_back(
      absl::StrCat("raw load files (per-second timeline, acknowledged orders, "
                   "loadgen log): ",
                   work_dir_));
  report.notes.push_back(
      "this machine: 2 cores shared by three regions (PostgreSQL with fsync=off, a dev cluster), "
      "geo, pdns, the controllers and the load generator: timings include that contention");
  report.Sort();

  st = drill::WriteReportFiles(report, report_dir_);
  if (!st.ok()) {
    // The folder was checked before the region was removed (PrepareDrillOptions), so this is a
    // failure of the run, not of its options: exit 1, and the figures still go to stdout.
    std::fprintf(stderr, "meridianctl drill: the drill ran but its report was not written: %s\n",
                 std::string(st.message()).c_str());
    std::printf("%s\n",
                opt_.json ? report.ToJson().dump(2).c_str() : report.SummaryTable().c_str());
    return 1;
  }
  if (opt_.json) {
    std::printf("%s\n", report.ToJson().dump(2).c_str());
  } else {
    std::printf("\n%s\n", report.SummaryTable().c_str());
    std::printf("report: %s/report.md (also report.json, timeline.svg)\n", report_dir_.c_str());
  }
  Say("%s", report.AllPass() ? "every target met"
                             : (report.InvariantsHold() ? "invariants held; a timing target missed"
                                                        : "an invariant FAILED"));
  return report.AllPass() ? 0 : 1;
}

// MERIDIAN_DRILL_<NAME> overrides for the tuning fields (CI and the demo use them).
absl::Status ApplyEnvironment(DrillOptions* o) {
  auto integer = [](const char* name, int* field, int lo, int hi) -> absl::Status {
    const char* v = getenv(name);
    if (v == nullptr || *v == '\0') return absl::OkStatus();
    char* end = nullptr;
    long x = std::strtol(v, &end, 10);
    if (*end != '\0' || x < lo || x > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "='", v, "': an integer ", lo, "..", hi));
    }
    *field = static_cast<int>(x);
    return absl::OkStatus();
  };
  for (absl::Status st :
       {integer("MERIDIAN_DRILL_BASELINE_S", &o->baseline_s, 1, 3600),
        integer("MERIDIAN_DRILL_CUSTOMERS", &o->customers, 3, 10000),
        integer("MERIDIAN_DRILL_RECOVERY_TIMEOUT_S", &o->recovery_timeout_s, 10, 3600),
        integer("MERIDIAN_DRILL_SETTLE_S", &o->settle_s, 0, 600),
        integer("MERIDIAN_DRILL_CART_SAMPLE", &o->cart_sample, 1, 1000),
        integer("MERIDIAN_DRILL_SCARCE_PRODUCTS", &o->scarce_products, 1, 100),
        integer("MERIDIAN_DRILL_SCARCE_STOCK", &o->scarce_stock_per_region, 1, 1000000)}) {
    if (!st.ok()) return st;
  }
  if (const char* v = getenv("MERIDIAN_DRILL_RATE"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    double x = std::strtod(v, &end);
    // strtod reads "nan" and "inf", and NaN fails no comparison: refuse anything not finite.
    if (*end != '\0' || !std::isfinite(x) || x < 1 || x > 10000) {
      return absl::InvalidArgumentError(absl::StrCat("MERIDIAN_DRILL_RATE='", v, "': 1..10000"));
    }
    o->rate_per_s = x;
  }
  if (const char* v = getenv("MERIDIAN_DRILL_LOADGEN"); v != nullptr && *v != '\0') o->loadgen = v;
  if (const char* v = getenv("MERIDIAN_DRILL_MERIDIAN"); v != nullptr && *v != '\0') {
    // In kill mode the script is needed only to bring the region back, after the kill: a path
    // that cannot be read must be refused now, or the drill leaves the region down.
    if (absl::Status st = CheckReadableScript("MERIDIAN_DRILL_MERIDIAN", v); !st.ok()) return st;
    o->meridian_script = v;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PrepareDrillOptions(DrillOptions* o) {
  if (absl::Status st = ApplyEnvironment(o); !st.ok()) return st;
  if (o->mode != "kill" && o->mode != "partition") {
    return absl::InvalidArgumentError("--mode must be kill or partition");
  }
  if (o->duration_s < 1 || o->duration_s > 3600) {
    return absl::InvalidArgumentError("--duration must be 1..3600 seconds");
  }
  // The report is written after the outage; a folder that cannot take it must be found now,
  // before anything is removed. Made only when the report is written: a drill refused before
  // (its cluster not ready) leaves no folder.
  return common::CheckDirCanBeMade("--output-dir", o->output_dir);
}

std::string DataDirAsDeploySpellsIt(const std::string& data_dir) {
  std::error_code ec;
  std::filesystem::path spelled = std::filesystem::absolute(data_dir, ec).lexically_normal();
  if (ec) return data_dir;
  if (!spelled.has_filename() && spelled != spelled.root_path()) spelled = spelled.parent_path();
  return spelled.string();
}

int RunDrillCommand(const DrillOptions& options) {
  DrillOptions o = options;
  // The cluster first (it only reads): a drill refused for its --data creates no output folder.
  const std::string data = DataDirAsDeploySpellsIt(o.data_dir);
  auto cluster = drill::LoadDrillCluster(data);
  if (!cluster.ok()) {
    std::fprintf(stderr, "meridianctl drill: %s\n",
                 std::string(cluster.status().message()).c_str());
    return 2;
  }
  // Then --region, also before PrepareDrillOptions makes the output folder (a typo left one).
  absl::Status st = CheckRegion(*cluster, o.region);
  if (st.ok()) st = PrepareDrillOptions(&o);
  if (!st.ok()) {
    std::fprintf(stderr, "meridianctl drill: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  // Ctrl-C: stop waiting, bring the region back, stop the load, report what was seen.
  struct sigaction sa {
  }, old_int{}, old_term{};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  Drill drill(o, *std::move(cluster));
  int rc = drill.Run();
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  return rc;
}

}  // namespace meridian::failover
