#include "failover/controller.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <system_error>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config_files.h"
#include "common/strings.h"
#include "failover/decision.h"
#include "failover/probe.h"
#include "failover/wire.h"
#include "region/http/http_server.h"
#include "region/http/router.h"

namespace meridian::failover {

using region::http::HttpRequest;
using region::http::HttpResponse;
using Json = nlohmann::json;

namespace {

constexpr size_t kMaxAuditEntries = 200;
// A handback is retried this long after the previous request finished.
constexpr int64_t kHandbackRetryMs = 1000;
// A push to a peer that keeps failing the same way is warned about at most this often.
constexpr int64_t kPushWarnEveryMs = 60000;
// Each HTTP call of an action (geo hooks and reads, handback requests) waits at most this long.
constexpr int kActionTimeoutMs = 2000;
constexpr size_t kMaxDeclarationBytes = 4 << 20;
// Declarations of one lost region a controller keeps (an operator makes one per loss; each adds
// at most 2^40 units per SKU to the reclaimed totals).
constexpr size_t kMaxDeclarationsPerRegion = 10000;

std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Every JSON this controller serves or sends carries text from elsewhere (a region's reason, a
// reply body): strict dumping would throw on one invalid byte, so invalid UTF-8 is replaced.
std::string JsonBody(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

double StateValue(RegionState s) {
  switch (s) {
    case RegionState::kUp:
      return 0;
    case RegionState::kLost:
      return 1;
    case RegionState::kRecovering:
      return 2;
  }
  return -1;
}

// `j[key]` when it is a string, else "": j.value(key, "") throws on a field of another type,
// and these are other daemons' replies, read on the controller's own threads.
std::string StringOr(const Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool ValidSku(std::string_view sku) {
  if (sku.empty() || sku.size() > 64) return false;
  for (char c : sku) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      return false;
  }
  return true;
}

// Who holds a region's lease group, as the replicators report it.
struct Holder {
  std::string region;
  uint64_t epoch = 0;
};

}  // namespace

class Controller::Impl {
  // The kinds of periodic work; at most one of each per region is queued or running at a time.
  enum class Periodic { kGeoDown, kGeoNotDown, kHandback };

 public:
  Impl(FailoverConfig config, Options options)
      : config_(std::move(config)), decider_(config_.decider_config()) {
    if (options.clock == nullptr) {
      owned_clock_ = std::make_unique<SteadyClock>();
      clock_ = owned_clock_.get();
    } else {
      clock_ = options.clock;
    }
    if (options.http == nullptr) {
      owned_http_ = MakeCurlHttpClient();
      http_ = owned_http_.get();
    } else {
      http_ = options.http;
    }
    uint64_t inc = options.incarnation;
    while (inc == 0) inc = std::random_device{}() * uint64_t{0x100000001} ^ std::random_device{}();
    decider_.set_incarnation(inc);
    for (const auto& r : config_.regions) names_.push_back(r.name);
    for (const auto& n : names_) geo_write_mu_.try_emplace(n, config_.geo.size());
    InitMetrics();
    InitRoutes();
  }

  absl::Status OpenAudit() {
    if (config_.audit_file.empty()) return absl::OkStatus();
    errno = 0;
    audit_.open(config_.audit_file, std::ios::app);
    if (!audit_) {
      return absl::UnavailableError(absl::StrCat("audit_file: cannot open '", config_.audit_file,
                                                 "' for appending (",
                                                 errno ? std::strerror(errno) : "unknown", ")"));
    }
    return absl::OkStatus();
  }

  // ---------------------------------------------------------------------------------- lifecycle
  absl::Status Start() {
    region::http::HttpServer::Options o;
    o.address = config_.listen.host;
    o.port = config_.listen.port;
    o.threads = config_.http_threads;
    o.max_body_bytes = kMaxDeclarationBytes;  // observations are checked to 64 KiB on their own
    server_ = std::make_unique<region::http::HttpServer>(
        o, [this](HttpRequest& r) { return router_.Handle(r); });
    if (absl::Status st = server_->Start(); !st.ok()) return st;
    probe_thread_ = std::thread([this] { ProbeLoop(); });
    push_thread_ = std::thread([this] { PushLoop(); });
    action_thread_ = std::thread([this] { ActionLoop(); });
    geo_update_thread_ = std::thread([this] { GeoUpdateLoop(); });
    spdlog::info(
        "event=failover_started region={} listen={}:{} regions={} probe_interval_ms={} "
        "lost_after_checks={} recover_after_checks={} quorum={} geo={} audit_file={}",
        config_.region, config_.listen.host, server_->port(), absl::StrJoin(names_, ","),
        config_.probe_interval_ms, config_.lost_after_checks, config_.recover_after_checks,
        decider_.quorum(), config_.geo.size(), LogValue(config_.audit_file));
    return absl::OkStatus();
  }

  uint16_t port() const { return server_ ? server_->port() : 0; }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(wake_mu_);
      if (stopping_) return;
      stopping_ = true;
    }
    // Queued actions are dropped, not drained: with a geo instance that hangs, draining took
    // 2 s per action. The other controllers act on the same decisions, and the reconciles of a
    // restarted controller put back whatever is missing. An action already running finishes its
    // current HTTP call (at most kActionTimeoutMs) and makes no further ones.
    size_t dropped = 0;
    {
      std::lock_guard<std::mutex> l(actions_mu_);
      actions_stopping_ = true;
      dropped = geo_updates_.size() + periodic_.size();
      geo_updates_.clear();
      periodic_.clear();
    }
    wake_cv_.notify_all();
    actions_cv_.notify_all();
    if (probe_thread_.joinable()) probe_thread_.join();
    if (push_thread_.joinable()) push_thread_.join();
    if (action_thread_.joinable()) action_thread_.join();
    if (geo_update_thread_.joinable()) geo_update_thread_.join();
    if (dropped > 0) spdlog::info("event=failover_actions_dropped count={}", dropped);
    if (server_) server_->Stop();
  }

  HttpResponse Handle(HttpRequest& r) { return router_.Handle(r); }

  // --------------------------------------------------------------------------------- the round
  void RunRound() {
    const int64_t started = clock_->NowMs();
    std::vector<HttpCall> calls;
    for (const auto& r : config_.regions) {
      calls.push_back(HttpCall{"GET", r.url + "/readyz", "", ""});
      calls.push_back(HttpCall{"GET", r.replicator + "/v1/status", "", config_.operator_token});
      calls.push_back(HttpCall{"GET", r.metrics, "", ""});
    }
    std::vector<HttpResult> results = http_->Run(calls, config_.probe_timeout_ms);
    std::map<std::string, RegionProbe> probes;
    for (size_t i = 0; i < config_.regions.size(); ++i) {
      RegionProbe& p = probes[config_.regions[i].name];
      p.readyz = std::move(results[3 * i]);
      p.status = std::move(results[3 * i + 1]);
      p.metrics = std::move(results[3 * i + 2]);
      const std::string& name = config_.regions[i].name;
      if (!p.readyz.ok()) m_probe_failures_.at({name, "readyz"})->Increment();
      if (!p.status.ok()) m_probe_failures_.at({name, "status"})->Increment();
      if (!p.metrics.ok()) m_probe_failures_.at({name, "metrics"})->Increment();
    }
    const int64_t now = clock_->NowMs();
    std::lock_guard<std::mutex> l(mu_);
    // Regions decided lost do not hold back another region's catch-up (probe.h): one that
    // returns while another is still gone fails back.
    std::set<std::string> lost;
    for (const auto& n : names_)
      if (decider_.state(n) == RegionState::kLost) lost.insert(n);
    std::map<std::string, RegionCheck> checks =
        ComputeChecks(names_, probes, prev_metrics_, config_.catch_up, lost);
    std::map<std::string, RegionReport> reports;
    for (auto& [name, c] : checks) {
      // Without metrics this round, the next one has no interval to measure lag over.
      if (c.metrics) {
        prev_metrics_[name] = *c.metrics;
      } else {
        prev_metrics_.erase(name);
      }
      RegionReport rep;
      rep.healthy = c.healthy;
      rep.caught_up = c.caught_up;
      rep.reason = Utf8Prefix(c.reason, kMaxReasonBytes);
      reports[name] = rep;
      m_healthy_.at(name)->Set(c.healthy ? 1 : 0);
      m_caught_up_.at(name)->Set(c.caught_up ? 1 : 0);
    }
    last_checks_ = std::move(checks);
    decider_.RecordOwnChecks(now, reports);
    EvaluateLocked(now);
    FollowUpsLocked(now);
    m_rounds_->Increment();
    m_round_ms_->Set(static_cast<double>(now - started));
  }

  void PushObservation() {
    std::string body;
    {
      std::lock_guard<std::mutex> l(mu_);
      body = ObservationToJson(decider_.own());
    }
    std::vector<HttpCall> calls;
    std::vector<std::string> to;
    for (const auto& r : config_.regions) {
      if (r.name == config_.region || r.controller.empty()) continue;
      calls.push_back(
          HttpCall{"POST", r.controller + "/v1/observations", body, config_.controller_token});
      to.push_back(r.name);
    }
    std::vector<HttpResult> res = http_->Run(calls, config_.probe_timeout_ms);
    const int64_t now = clock_->NowMs();
    for (size_t i = 0; i < res.size(); ++i) {
      PushLog& log = push_log_[to[i]];
      // 409: the peer already holds a newer one from us (a reordered push); not a failure.
      if (res[i].ok() || res[i].status == 409) {
        if (!log.error.empty()) {
          spdlog::info("event=failover_push_ok to={} after_error={}", to[i], LogValue(log.error));
          log.error.clear();
        }
        continue;
      }
      m_push_failures_.at(to[i])->Increment();
      // Warned when it starts or changes and once a minute while it lasts (a push goes out
      // every probe interval). A peer that refuses (4xx) does not count this controller's
      // votes, so a quorum may be out of reach: that must not be at debug level only.
      std::string why = res[i].Describe();
      const bool refused = res[i].status >= 400 && res[i].status < 500;
      if (refused) {
        const Json body = Json::parse(res[i].body, nullptr, false);
        // The peer's own words, cut short: a peer's text is not ours to log at any length.
        if (body.is_object()) absl::StrAppend(&why, ": ", StringOr(body, "detail").substr(0, 200));
      }
      if (why == log.error && now - log.warned_ms < kPushWarnEveryMs) continue;
      spdlog::warn("event=failover_push_failed to={} error={}{}", to[i], LogValue(why),
                   refused ? " hint=\"the peer refuses this controller's observations and does "
                             "not count its votes: check that both configs list the same "
                             "regions and that it holds this controller's token digest\""
                           : "");
      log.error = std::move(why);
      log.warned_ms = now;
    }
  }
  // Per peer: the failure the last push met ("" after a success), and when it was last warned.
  // Only PushObservation touches it (the push thread; a test's direct call).
  struct PushLog {
    std::string error;
    int64_t warned_ms = 0;
  };
  std::map<std::string, PushLog> push_log_;

  // The decisions' geo updates first (once started they have a thread of their own, so they never
  // wait behind periodic work), then the periodic work.
  void RunPendingActions() {
    for (;;) {
      if (std::function<void()> a = NextGeoUpdate(false)) {
        a();
      } else if (std::function<void()> b = NextPeriodic(false)) {
        b();
      } else {
        return;
      }
    }
  }

 private:
  // ----------------------------------------------------------------------------------- threads
  bool WaitUntil(std::chrono::steady_clock::time_point t) {
    std::unique_lock<std::mutex> l(wake_mu_);
    wake_cv_.wait_until(l, t, [this] { return stopping_; });
    return !stopping_;
  }

  void ProbeLoop() {
    auto next = std::chrono::steady_clock::now();
    const auto interval = std::chrono::milliseconds(config_.probe_interval_ms);
    while (true) {
      RunRound();
      {
        std::lock_guard<std::mutex> l(wake_mu_);
        push_due_ = true;
      }
      wake_cv_.notify_all();
      next += interval;
      const auto now = std::chrono::steady_clock::now();
      if (next < now) next = now;  // a slow round: skip ticks rather than bunch them up
      if (!WaitUntil(next)) return;
    }
  }

  void PushLoop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> l(wake_mu_);
        wake_cv_.wait(l, [this] { return stopping_ || push_due_; });
        if (stopping_) return;
        push_due_ = false;
      }
      PushObservation();
    }
  }

  // Periodic work: geo reconciles and handback requests.
  void ActionLoop() {
    while (std::function<void()> a = NextPeriodic(true)) a();
  }

  // The geo updates that decisions make (lost: "down", recovered: "auto").
  void GeoUpdateLoop() {
    while (std::function<void()> a = NextGeoUpdate(true)) a();
  }

  // The next action of a lane; empty once stopping, or (wait false) when none is queued.
  std::function<void()> NextGeoUpdate(bool wait) {
    return NextOf(geo_updates_, wait, [](auto& e) { return std::move(e.second); });
  }
  std::function<void()> NextPeriodic(bool wait) {
    return NextOf(periodic_, wait, [](auto& e) { return std::move(e); });
  }
  template <class Lane, class Take>
  std::function<void()> NextOf(Lane& lane, bool wait, Take take) {
    std::unique_lock<std::mutex> l(actions_mu_);
    if (wait) actions_cv_.wait(l, [&] { return actions_stopping_ || !lane.empty(); });
    if (actions_stopping_ || lane.empty()) return nullptr;
    std::function<void()> a = take(lane.front());
    lane.pop_front();
    return a;
  }

  bool ActionsStopping() {
    std::lock_guard<std::mutex> l(actions_mu_);
    return actions_stopping_;
  }

  // A decision's geo update of `region`. At most one is pending per region: a newer decision's
  // replaces it in place (only the latest state matters; geo updates are idempotent).
  void EnqueueGeoUpdate(const std::string& region, std::function<void()> action) {
    {
      std::lock_guard<std::mutex> l(actions_mu_);
      if (actions_stopping_) return;
      auto it = std::find_if(geo_updates_.begin(), geo_updates_.end(),
                             [&](const auto& e) { return e.first == region; });
      if (it != geo_updates_.end()) {
        it->second = std::move(action);
      } else {
        geo_updates_.emplace_back(region, std::move(action));
      }
    }
    actions_cv_.notify_all();
  }

  // Periodic work of `kind` for `region`, unless one is already queued or running: with a geo
  // instance that hangs, each reconcile takes kActionTimeoutMs, and without this the queue grew
  // without bound. False when not queued.
  bool EnqueuePeriodic(const std::string& region, Periodic kind, std::function<void()> action) {
    {
      std::lock_guard<std::mutex> l(actions_mu_);
      if (actions_stopping_ || !periodic_busy_.insert({region, kind}).second) return false;
      periodic_.push_back([this, region, kind, a = std::move(action)] {
        a();
        std::lock_guard<std::mutex> done(actions_mu_);
        periodic_busy_.erase({region, kind});
      });
    }
    actions_cv_.notify_all();
    return true;
  }

  // -------------------------------------------------------------------------------- decisions
  struct Progress {
    int64_t lost_at_ms = -1;
    bool takeover_seen = false;
    bool handback_pending = false;
    int64_t handback_started_ms = 0;
    int64_t handback_last_try_ms = -1;
    int64_t handback_gave_up_ms = -1;
    int handback_retries = 0;  // handbacks started again after a give-up, this run and state
    int64_t geo_checked_ms = 0;
    std::optional<int64_t> detected_after_ms;
    std::string handback_state;  // "", "pending", "done", "gave_up"
    Json takeover;               // null until seen
    // Operator declarations (meridianctl declare-lost) while lost: id -> the replicator's answer;
    // and the units reclaimed per SKU. Cleared on recovery (the region writes them off then).
    std::map<std::string, Json> declarations;
    std::map<std::string, int64_t> reclaimed_units;
  };

  void Audit(const std::string& event, const std::string& region, const std::string& what,
             const std::string& fields, const std::string& reason, Json entry) {
    std::string line = absl::StrCat("event=", event, " controller=", config_.region,
                                    " region=", LogValue(region), " ", what);
    if (!fields.empty()) absl::StrAppend(&line, " ", fields);
    absl::StrAppend(&line, " reason=", LogValue(reason));
    spdlog::info("{}", line);
    std::lock_guard<std::mutex> l(audit_mu_);
    if (audit_.is_open()) {
      audit_ << UtcNow() << " " << line << "\n";
      audit_.flush();
    }
    entry["event"] = event;
    entry["region"] = region;
    entry["reason"] = reason;
    entry["unix_ms"] = UnixMs();
    entry["line"] = line;
    audit_entries_.push_back(std::move(entry));
    while (audit_entries_.size() > kMaxAuditEntries) audit_entries_.pop_front();
  }

  // A decision of the Decider, or an observed consequence ("lease_taken_over", "lease_home").
  void AuditDecision(const std::string& region, const std::string& decision,
                     const std::string& fields, const std::string& reason, Json entry = {}) {
    if (entry.is_null()) entry = Json::object();
    entry["decision"] = decision;
    Audit("failover_decision", region, absl::StrCat("decision=", decision), fields, reason,
          std::move(entry));
    m_decisions_.at(region)->Add({{"region", region}, {"decision", decision}}).Increment();
  }

  void EvaluateLocked(int64_t now) {
    for (const Decision& d : decider_.Evaluate(now)) {
      Progress& p = progress_[d.region];
      std::string fields =
          absl::StrCat("from=", RegionStateName(d.from), " to=", RegionStateName(d.to),
                       " votes=", d.voters.size(), " needed=", d.needed, " of=", names_.size(),
                       " voters=", LogValue(absl::StrJoin(d.voters, ",")));
      Json entry{{"from", RegionStateName(d.from)},
                 {"to", RegionStateName(d.to)},
                 {"voters", d.voters},
                 {"needed", d.needed}};
      if (d.decision == "lost") {
        p.lost_at_ms = now;
        p.takeover_seen = false;
        p.takeover = nullptr;
        p.handback_pending = false;
        p.handback_state.clear();
        p.handback_retries = 0;
        p.geo_checked_ms = now;
        // Detection as this controller saw it: from its first failed check in the streak.
        if (auto since = decider_.own_fail_since_ms(d.region); since) {
          p.detected_after_ms = now - *since;
          absl::StrAppend(&fields, " first_failed_check_ms_ago=", *p.detected_after_ms);
          entry["first_failed_check_ms_ago"] = *p.detected_after_ms;
          m_detection_ms_.at(d.region)->Set(static_cast<double>(*p.detected_after_ms));
        }
      }
      AuditDecision(d.region, d.decision, fields, d.reason, entry);
      m_state_.at(d.region)->Set(StateValue(d.to));
      if (d.decision == "lost" && d.from == RegionState::kUp) {
        SetGeo(d.region, "down",
               absl::StrCat("meridian-failover ", config_.region, ": region lost (",
                            d.voters.size(), "/", names_.size(), " controllers)"));
        AuditDecision(d.region, "rights_frozen", "",
                      absl::StrCat("only ", d.region,
                                   " can spend its inventory rights: they stay unusable until it "
                                   "returns or an operator declares it lost (meridianctl "
                                   "declare-lost ",
                                   d.region, ")"));
      }
      if (d.decision == "recovered") {
        SetGeo(d.region, "auto",
               absl::StrCat("meridian-failover ", config_.region, ": region recovered"));
        p.handback_pending = true;
        p.handback_state = "pending";
        p.handback_started_ms = now;
        p.handback_last_try_ms = -1;
        AuditDecision(
            d.region, "rights_usable",
            p.declarations.empty() ? "" : absl::StrCat("declarations=", p.declarations.size()),
            p.declarations.empty()
                ? absl::StrCat(d.region, " is back: its inventory rights are its own again")
                : absl::StrCat(d.region,
                               " is back: it writes off the rights reclaimed from it and "
                               "keeps the rest"));
        p.declarations.clear();
        p.reclaimed_units.clear();
      }
    }
    for (const auto& r : names_) {
      const Tally t = decider_.Count(now, r);
      m_lost_votes_.at(r)->Set(static_cast<double>(t.lost.size()));
    }
  }

  // Who holds each group and whether it can use it, from this round's replicator statuses.
  std::map<std::string, Holder> HoldersLocked() const {
    std::map<std::string, Holder> out;
    for (const auto& [name, c] : last_checks_) {
      if (!c.status) continue;
      for (const LeaseInfo& l : c.status->leases) {
        if (l.held_here && l.usable) {
          auto it = out.find(l.group_region);
          if (it == out.end() || l.epoch > it->second.epoch) out[l.group_region] = {name, l.epoch};
        }
      }
    }
    return out;
  }

  // Whether the controllers still back a "down" override of `region` at now: a quorum of them
  // heard from (this one included) and no quorum that sees it recovered. A controller cut off
  // from its peers keeps its last decision (lost) but does not put geo's override back on its
  // own view: the others may have recovered the region and lifted it, and it would flap the region
  // in and out of DNS every reconcile interval against them.
  bool DownStillBackedLocked(int64_t now, const std::string& region) const {
    const Tally t = decider_.Count(now, region);
    const size_t voters = decider_.config().regions.size() - 1;  // a region's own does not vote
    return voters - t.silent.size() >= t.needed && t.recovered.size() < t.needed;
  }

  void FollowUpsLocked(int64_t now) {
    const std::map<std::string, Holder> holders = HoldersLocked();
    for (const auto& r : names_) {
      Progress& p = progress_[r];
      const RegionState s = decider_.state(r);
      auto h = holders.find(r);
      if (s != RegionState::kUp) {
        // (b) takeover runs by itself in the replicators after the lease expires: observe it.
        if (!p.takeover_seen && h != holders.end() && h->second.region != r) {
          p.takeover_seen = true;
          const int64_t after = p.lost_at_ms >= 0 ? now - p.lost_at_ms : 0;
          p.takeover = Json{
              {"owner", h->second.region}, {"epoch", h->second.epoch}, {"after_lost_ms", after}};
          AuditDecision(
              r, "lease_taken_over",
              absl::StrCat("owner=", h->second.region, " epoch=", h->second.epoch,
                           " after_lost_ms=", after),
              absl::StrCat(h->second.region, "'s replicator holds ", r, "'s order lease (usable)"),
              p.takeover);
        }
        if (!config_.geo.empty() && now - p.geo_checked_ms >= config_.geo_reconcile_interval_ms &&
            DownStillBackedLocked(now, r) &&
            EnqueuePeriodic(r, Periodic::kGeoDown, [this, r] { EnsureGeoDown(r); })) {
          p.geo_checked_ms = now;
        }
        continue;
      }
      // A "down" override of ours left behind (e.g. by a controller restarted while the region was
      // lost) is lifted once a quorum sees the region healthy and caught up for M checks: the
      // same evidence a recovery needs, so a controller cut off from the others cannot do it.
      if (!config_.geo.empty() && now - p.geo_checked_ms >= config_.geo_reconcile_interval_ms &&
          decider_.Count(now, r).recovered.size() >= decider_.quorum() &&
          EnqueuePeriodic(r, Periodic::kGeoNotDown, [this, r] { EnsureGeoNotDownByUs(r); })) {
        p.geo_checked_ms = now;
      }
      // Progress is not persisted: a controller restarted while a region was lost (or before its
      // handback finished) never saw the "recovered" that starts one. So a region that is up,
      // with the same evidence a recovery needs (a quorum of RECOVERED votes), whose order lease
      // another region holds usable, gets the same handback as after "recovered". Once per run
      // of this controller and region state, not again after "done" (a "lost" clears it, and
      // the next "recovered" starts its own). After "gave_up", again once the timeout has passed
      // once more: a region without its lease takes no orders and meridian-geo keeps it out of
      // DNS (it probes /readyz?require=order_lease), so a holder that refused for a while (its
      // region store unreachable, say) must be asked again, not left holding it for good.
      const bool retry = p.handback_state == "gave_up" &&
                         now - p.handback_gave_up_ms >= config_.handback_timeout_ms;
      if (!p.handback_pending && (p.handback_state.empty() || retry) && h != holders.end() &&
          h->second.region != r && decider_.Count(now, r).recovered.size() >= decider_.quorum()) {
        p.handback_pending = true;
        p.handback_state = "pending";
        p.handback_started_ms = now;
        p.handback_last_try_ms = -1;
        if (retry) ++p.handback_retries;
        AuditDecision(
            r, "handback_started",
            absl::StrCat("holder=", h->second.region, " epoch=", h->second.epoch,
                         retry ? absl::StrCat(" retry=", p.handback_retries) : ""),
            retry ? absl::StrCat(h->second.region, " still holds ", r,
                                 "'s order lease after a handback was given up: asking "
                                 "again")
                  : absl::StrCat(r, " is up and caught up at a quorum, but ", h->second.region,
                                 " holds its order lease: asking for it back, as after "
                                 "\"recovered\""));
      }
      if (!p.handback_pending) continue;
      if (h != holders.end() && h->second.region == r) {
        p.handback_pending = false;
        p.handback_state = "done";
        AuditDecision(r, "lease_home",
                      absl::StrCat("epoch=", h->second.epoch,
                                   " after_recovered_ms=", now - p.handback_started_ms),
                      absl::StrCat(r, " holds its own order lease again"));
        continue;
      }
      if (now - p.handback_started_ms > config_.handback_timeout_ms) {
        p.handback_pending = false;
        p.handback_state = "gave_up";
        p.handback_gave_up_ms = now;
        AuditDecision(
            r, "handback_gave_up", "",
            absl::StrCat(r, " did not get its lease back within ", config_.handback_timeout_ms,
                         " ms; asking again in ", config_.handback_timeout_ms,
                         " ms (the replicators' automatic handback may do it first)"));
        continue;
      }
      // The next request kHandbackRetryMs after the previous one finished (RequestHandback
      // records when), and never a second one while one is queued or running.
      if (h != holders.end() &&
          (p.handback_last_try_ms < 0 || now - p.handback_last_try_ms >= kHandbackRetryMs)) {
        const std::string holder = h->second.region;
        (void)EnqueuePeriodic(r, Periodic::kHandback,
                              [this, r, holder] { RequestHandback(r, holder); });
      }
    }
  }

  // ------------------------------------------------------------------------------------ actions
  // The override geo's GET /v1/regions/{r} reports: state ("down", "up", "auto"; "" if none or
  // unreadable) and reason.
  struct GeoOverride {
    std::string state;
    std::string reason;
    int64_t since_ms_ago = -1;  // -1: not given
  };
  static GeoOverride OverrideOf(const HttpResult& r) {
    GeoOverride o;
    if (!r.ok()) return o;
    const Json j = Json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("override") && j["override"].is_object()) {
      const Json& ov = j["override"];
      o.state = StringOr(ov, "state");
      o.reason = StringOr(ov, "reason");
      if (ov.contains("since_ms_ago") && ov["since_ms_ago"].is_number_integer() &&
          ov["since_ms_ago"].get<int64_t>() >= 0) {
        o.since_ms_ago = ov["since_ms_ago"].get<int64_t>();
      }
    }
    return o;
  }
  HttpResult ReadGeo(const std::string& geo, const std::string& region) {
    return http_->Do(HttpCall{"GET", absl::StrCat(geo, "/v1/regions/", region), "", ""},
                     kActionTimeoutMs);
  }

  // Whether an override's reason is one a meridian-failover wrote (any controller's).
  static bool ByFailover(const std::string& reason) {
    return reason.rfind("meridian-failover", 0) == 0;
  }

  // Whether `o` is an "auto" a controller set after this one decided `region` lost: a peer saw a
  // quorum of RECOVERED votes and failed the region back. This controller, still "recovering"
  // (its own caught-up streak reset by one slow check, say) or "lost", would otherwise put "down"
  // back every reconcile interval, and the region would leave DNS again until its own streak
  // reached M (review of the failover controller, finding 4). An "auto" of geo's start (no
  // reason: a restarted geo), an operator's, or one older than this controller's "lost" still
  // gets the "down" back. A relapse is a new "lost" at the peers, which sends "down" itself.
  bool LiftedByARecoveryLocked(const std::string& region, const GeoOverride& o) const {
    auto p = progress_.find(region);
    const int64_t lost_at = p == progress_.end() ? -1 : p->second.lost_at_ms;
    if (o.state != "auto" || !ByFailover(o.reason) || o.since_ms_ago < 0 || lost_at < 0)
      return false;
    if (o.since_ms_ago >= clock_->NowMs() - lost_at) return false;
    spdlog::debug("event=failover_reconcile_skipped region={} override=auto reason={}", region,
                  LogValue(Utf8Prefix(o.reason, 256)));
    return true;
  }

  // A decision's geo update, on its own lane (EnqueueGeoUpdate): "down" when the region is lost,
  // "auto" when it recovered.
  //
  // An operator's override is left alone. geo keeps one override per region, and posting "down"
  // on a loss used to replace an operator's "down" (say, a drain for maintenance) and its reason,
  // so the "auto" of the recovery then lifted the operator's drain and sent customers to a region
  // still under maintenance. So each geo instance is read first:
  //   - lost: an operator's "down" (a reason not written by a meridian-failover) already takes
  //     the region out; it is kept, reason and all. That kept override is how the operator's
  //     intent is remembered: geo holds it, across restarts of the controllers too.
  //   - recovered: "auto" is sent only when the override there is ours or none; an operator's
  //     "down" or "up" stays until the operator lifts it. When geo cannot be read, nothing is
  //     sent: the reconcile (EnsureGeoNotDownByUs) lifts a "down" of ours once it can read it.
  // A read that fails on a loss does not hold the "down" back. Reading and posting are two calls,
  // so an operator's override set in between can still be replaced; the window is one round trip.
  void SetGeo(const std::string& region, const std::string& state, const std::string& reason) {
    if (config_.geo.empty()) return;
    EnqueueGeoUpdate(region, [this, region, state, reason] {
      const std::string body = JsonBody(Json{{"state", state}, {"reason", reason}});
      ForEachGeo([&](size_t i) {
        const std::string& g = config_.geo[i];
        const HttpResult read = ReadGeo(g, region);
        const GeoOverride o = OverrideOf(read);
        const bool operators = (o.state == "down" || o.state == "up") && !ByFailover(o.reason);
        if (operators && (state == "auto" || o.state == "down")) {
          KeptOperatorsOverride(region, g, state, o);
          return;
        }
        if (state == "auto" && o.state.empty()) {
          HttpResult unread = read;
          if (unread.ok()) unread.error = "no override in geo's answer";
          Action("geo_health", region, absl::StrCat("state=auto geo=", LogValue(g), " read=1"),
                 unread);
          return;
        }
        if (ActionsStopping()) return;
        // Ordered against a reconcile of the same region (see geo_write_mu_).
        std::lock_guard<std::mutex> w(geo_write_mu_.at(region)[i]);
        HttpResult post =
            http_->Do(HttpCall{"POST", absl::StrCat(g, "/v1/regions/", region, "/health"), body,
                               config_.operator_token},
                      kActionTimeoutMs);
        Action("geo_health", region, absl::StrCat("state=", state, " geo=", LogValue(g)), post);
      });
    });
  }

  void KeptOperatorsOverride(const std::string& region, const std::string& geo,
                             const std::string& state, const GeoOverride& o) {
    m_actions_->Add({{"action", "geo_health"}, {"result", "kept"}}).Increment();
    Audit("failover_action", region, "action=geo_health result=kept",
          absl::StrCat("state=", state, " geo=", LogValue(geo), " override=", o.state),
          absl::StrCat("an operator's override (", o.state, ": ", Utf8Prefix(o.reason, 256),
                       ") stays until the operator lifts it"),
          Json{{"action", "geo_health"}, {"result", "kept"}});
  }

  // Runs step(i) for every configured geo instance i, each on a thread of its own when there are
  // several, so that one instance that hangs (each call waits up to kActionTimeoutMs) delays
  // neither the others nor the decision's update of them.
  void ForEachGeo(const std::function<void(size_t)>& step) {
    std::vector<std::thread> threads;
    for (size_t i = 1; i < config_.geo.size(); ++i) {
      try {
        threads.emplace_back(step, i);
      } catch (const std::system_error& e) {  // no thread to be had: in turn, then
        spdlog::warn("event=failover_thread_failed error={}", LogValue(e.what()));
        step(i);
      }
    }
    if (!config_.geo.empty()) step(0);
    for (std::thread& t : threads) t.join();
  }

  // A reconcile of `region` finished: the next one is due geo_reconcile_interval_ms from now.
  void ReconcileDone(const std::string& region) {
    std::lock_guard<std::mutex> l(mu_);
    progress_[region].geo_checked_ms = clock_->NowMs();
  }

  void EnsureGeoDown(const std::string& region) {
    ForEachGeo([&](size_t i) {
      const std::string& g = config_.geo[i];
      HttpResult r = ReadGeo(g, region);
      if (!r.ok() || ActionsStopping()) return;
      const GeoOverride o = OverrideOf(r);
      if (o.state == "down") return;
      std::lock_guard<std::mutex> w(geo_write_mu_.at(region)[i]);
      {
        std::lock_guard<std::mutex> l(mu_);
        if (decider_.state(region) == RegionState::kUp) return;       // recovered meanwhile
        if (!DownStillBackedLocked(clock_->NowMs(), region)) return;  // cut off meanwhile
        if (LiftedByARecoveryLocked(region, o)) return;
      }
      ReconcileGeo(g, region, "down", "region lost (override restored)");
    });
    ReconcileDone(region);
  }

  // Puts an override back (or lifts ours) at one geo, found otherwise by a reconcile pass.
  // REQUIRES: geo_write_mu_ of `region` held.
  void ReconcileGeo(const std::string& geo, const std::string& region, const char* state,
                    const char* why) {
    HttpResult post = http_->Do(
        HttpCall{"POST", absl::StrCat(geo, "/v1/regions/", region, "/health"),
                 JsonBody(Json{
                     {"state", state},
                     {"reason", absl::StrCat("meridian-failover ", config_.region, ": ", why)}}),
                 config_.operator_token},
        kActionTimeoutMs);
    Action("geo_health", region,
           absl::StrCat("state=", state, " geo=", LogValue(geo), " reconcile=1"), post);
  }

  void EnsureGeoNotDownByUs(const std::string& region) {
    ForEachGeo([&](size_t i) {
      const std::string& g = config_.geo[i];
      HttpResult r = ReadGeo(g, region);
      if (!r.ok() || ActionsStopping()) return;
      const GeoOverride o = OverrideOf(r);
      // Only our own kind of override: an operator's "down" stays until the operator lifts it.
      if (o.state != "down" || !ByFailover(o.reason)) return;
      std::lock_guard<std::mutex> w(geo_write_mu_.at(region)[i]);
      {
        // Queued with a quorum of RECOVERED votes, but the lane may run it seconds later (behind
        // a hung geo): by then this controller may be cut off from peers that declared the
        // region lost, and an "auto" of ours would undo their "down" (a newer "auto" of a
        // controller reads as a recovery to them). So the evidence is checked again.
        std::lock_guard<std::mutex> l(mu_);
        if (decider_.state(region) != RegionState::kUp ||
            decider_.Count(clock_->NowMs(), region).recovered.size() < decider_.quorum()) {
          return;
        }
      }
      ReconcileGeo(g, region, "auto", "region up (a stale override lifted)");
    });
    ReconcileDone(region);
  }

  // Queued earlier, so checked again now: the region may have been lost again (its lease must
  // then stay with the survivor), or the lease may have moved (home already, or another holder).
  void RequestHandback(const std::string& region, const std::string& holder) {
    const RegionEndpoints* h = config_.Find(holder);
    std::string stale;
    {
      std::lock_guard<std::mutex> l(mu_);
      const std::map<std::string, Holder> holders = HoldersLocked();
      auto now_held = holders.find(region);
      if (decider_.state(region) != RegionState::kUp) {
        stale = absl::StrCat(region, " is ", RegionStateName(decider_.state(region)));
      } else if (!progress_[region].handback_pending) {
        stale = "no handback pending";
      } else if (now_held == holders.end() || now_held->second.region != holder) {
        stale = absl::StrCat(holder, " no longer holds the lease");
      }
    }
    if (h == nullptr || ActionsStopping()) return;
    if (!stale.empty()) {
      Audit("failover_action", region, "action=lease_handback result=skipped",
            absl::StrCat("holder=", holder), absl::StrCat("queued, and since then ", stale),
            Json{{"action", "lease_handback"}, {"result", "skipped"}});
      return;
    }
    HttpResult r =
        http_->Do(HttpCall{"POST", absl::StrCat(h->replicator, "/v1/leases/", region, "/handback"),
                           "{}", config_.operator_token},
                  kActionTimeoutMs);
    Action("lease_handback", region, absl::StrCat("holder=", holder), r);
    std::lock_guard<std::mutex> l(mu_);
    progress_[region].handback_last_try_ms = clock_->NowMs();
  }

  void Action(const std::string& action, const std::string& region, const std::string& fields,
              const HttpResult& r) {
    const std::string result = r.ok() ? "ok" : "error";
    m_actions_->Add({{"action", action}, {"result", result}}).Increment();
    Json entry{{"action", action}, {"result", result}, {"status", r.status}};
    std::string detail = r.ok() ? "" : Utf8Prefix(r.error.empty() ? r.body : r.error, 300);
    Audit("failover_action", region, absl::StrCat("action=", action, " result=", result),
          absl::StrCat(fields, " status=", r.status), detail, std::move(entry));
  }

  // ---------------------------------------------------------------------------------- HTTP API
  // The bearer token of a request: Unauthenticated(`missing`) without an Authorization header,
  // PermissionDenied(`wrong`) when it is not a bearer one.
  static absl::StatusOr<std::string_view> BearerOf(const HttpRequest& r, const char* missing,
                                                   const char* wrong) {
    auto h = r.Header("authorization");
    if (!h) return absl::UnauthenticatedError(missing);
    std::optional<std::string_view> bearer = common::BearerToken(*h);
    if (!bearer) return absl::PermissionDeniedError(wrong);
    return *bearer;
  }
  absl::Status Authorized(const HttpRequest& r) const {
    auto token = BearerOf(r, "operator token required", "wrong operator token");
    if (!token.ok()) return token.status();
    if (!common::TokenEquals(*token, config_.operator_token))
      return absl::PermissionDeniedError("wrong operator token");
    return absl::OkStatus();
  }
  static HttpResponse AuthProblem(const absl::Status& st) {
    return HttpResponse::Problem(
        st.code() == absl::StatusCode::kUnauthenticated ? 401 : 403,
        st.code() == absl::StatusCode::kUnauthenticated ? "Unauthorized" : "Forbidden",
        std::string(st.message()));
  }

  void InitRoutes() {
    router_.Add("GET", "/healthz",
                [](HttpRequest&) { return HttpResponse::Json(200, R"({"ok":true})"); });
    router_.Add("GET", "/metrics", [this](HttpRequest&) {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = prometheus::TextSerializer().Serialize(registry_->Collect());
      return r;
    });
    router_.Add("GET", "/v1/observations", [this](HttpRequest&) { return GetObservations(); });
    router_.Add("POST", "/v1/observations", [this](HttpRequest& r) { return PostObservation(r); });
    router_.Add("GET", "/v1/regions", [this](HttpRequest&) { return GetRegions(); });
    router_.Add("GET", "/v1/decisions", [this](HttpRequest&) {
      std::lock_guard<std::mutex> l(audit_mu_);
      Json list = Json::array();
      for (const auto& e : audit_entries_) list.push_back(e);
      return HttpResponse::Json(200,
                                JsonBody(Json{{"controller", config_.region}, {"entries", list}}));
    });
    router_.Add("GET", "/v1/admin/rights/{sku}", [this](HttpRequest& r) { return GetRights(r); });
    router_.Add("POST", "/v1/regions/{region}/declared-lost",
                [this](HttpRequest& r) { return PostDeclaredLost(r); });
  }

  HttpResponse GetObservations() {
    const int64_t now = clock_->NowMs();
    std::lock_guard<std::mutex> l(mu_);
    Json peers = Json::object();
    for (const auto& name : names_) {
      if (name == config_.region) continue;
      auto held = decider_.peer(name);
      if (!held) {
        peers[name] = nullptr;
        continue;
      }
      peers[name] = Json{{"observation", Json::parse(ObservationToJson(held->observation))},
                         {"received_ms_ago", now - held->received_ms},
                         {"fresh", now - held->received_ms < config_.observation_ttl_ms}};
    }
    return HttpResponse::Json(200,
                              JsonBody(Json{{"controller", config_.region},
                                            {"own", Json::parse(ObservationToJson(decider_.own()))},
                                            {"peers", peers}}));
  }

  // The peer controller whose own token (controller_token) the request carries. Not the operator
  // token: an operator, or anyone holding that token, cannot speak for a controller.
  absl::StatusOr<const RegionEndpoints*> PeerController(const HttpRequest& r) const {
    auto bearer = BearerOf(r, "the sending controller's token required", "wrong token");
    if (!bearer.ok()) return bearer.status();
    const std::string_view token = *bearer;
    if (const RegionEndpoints* peer = config_.PeerControllerOfToken(token)) return peer;
    if (common::TokenEquals(token, config_.operator_token)) {
      return absl::PermissionDeniedError(
          "observations are taken with the sending controller's own token (controller_token), "
          "not the operator token");
    }
    return absl::PermissionDeniedError("not the token of any peer controller");
  }

  HttpResponse PostObservation(HttpRequest& r) {
    auto sender = PeerController(r);
    if (!sender.ok()) {
      m_observations_->Add({{"from", "?"}, {"result", "rejected"}}).Increment();
      return AuthProblem(sender.status());
    }
    const std::string& from = (*sender)->name;
    auto o = ObservationFromJson(r.body);
    if (!o.ok()) {
      m_observations_->Add({{"from", from}, {"result", "rejected"}}).Increment();
      return HttpResponse::Problem(400, "Bad Request", std::string(o.status().message()));
    }
    if (o->from != from) {
      // A controller speaks only for itself: a forged `from` (or `seq`, which could silence the
      // real sender's observations until it restarted) needs that controller's token.
      m_observations_->Add({{"from", from}, {"result", "rejected"}}).Increment();
      spdlog::warn("event=failover_observation_forged sender={} from={}", from, LogValue(o->from));
      return HttpResponse::Problem(
          403, "Forbidden",
          absl::StrCat("from: '", o->from, "', but the token is the controller of '", from, "'"));
    }
    const int64_t now = clock_->NowMs();
    std::lock_guard<std::mutex> l(mu_);
    absl::Status st = decider_.AcceptPeerObservation(now, *o);
    if (absl::IsFailedPrecondition(st)) {
      m_observations_->Add({{"from", from}, {"result", "stale"}}).Increment();
      return HttpResponse::Problem(409, "Conflict", std::string(st.message()));
    }
    if (!st.ok()) {
      m_observations_->Add({{"from", from}, {"result", "rejected"}}).Increment();
      return HttpResponse::Problem(400, "Bad Request", std::string(st.message()));
    }
    m_observations_->Add({{"from", from}, {"result", "accepted"}}).Increment();
    // Decide at once: the quorum may have just been reached (detection must not wait a tick).
    EvaluateLocked(now);
    return HttpResponse::Json(200, R"({"accepted":true})");
  }

  Json CheckJson(const std::string& name) const {
    auto it = last_checks_.find(name);
    if (it == last_checks_.end()) return nullptr;
    const RegionCheck& c = it->second;
    const RegionReport& own = decider_.own().regions.at(name);
    Json peers_alive = Json::object();
    if (c.status)
      for (const auto& [p, a] : c.status->peers_alive) peers_alive[p] = a;
    Json repl = Json::object();
    if (c.metrics) {
      for (const auto& [p, m] : c.metrics->peers) {
        Json e{{"lag_p99_ms", m.lag_p99_ms ? Json(*m.lag_p99_ms) : Json()},
               {"own_backlog_records", m.backlog_records ? Json(*m.backlog_records) : Json()},
               {"connected", m.connected ? Json(*m.connected) : Json()}};
        if (auto a = c.queue_lag_ms.find(p); a != c.queue_lag_ms.end())
          e["queue_lag_ms"] = a->second;
        if (auto b = c.backlog_records.find(p); b != c.backlog_records.end())
          e["peer_backlog_records"] = b->second;
        repl[p] = e;
      }
    }
    return Json{{"healthy", c.healthy},
                {"caught_up", c.caught_up},
                {"ready", c.ready},
                {"fail_streak", own.fail_streak},
                {"ok_streak", own.ok_streak},
                {"reason", c.reason},
                {"replicator_reachable", c.status.has_value()},
                {"peers_alive", peers_alive},
                {"replication", repl}};
  }

  HttpResponse GetRegions() {
    const int64_t now = clock_->NowMs();
    std::lock_guard<std::mutex> l(mu_);
    const std::map<std::string, Holder> holders = HoldersLocked();
    Json regions = Json::array();
    for (const auto& name : names_) {
      const Tally t = decider_.Count(now, name);
      const RegionState s = decider_.state(name);
      const Progress& p = progress_[name];
      Json lease = nullptr;
      if (auto h = holders.find(name); h != holders.end()) {
        lease = Json{{"holder", h->second.region},
                     {"epoch", h->second.epoch},
                     {"home", h->second.region == name}};
      }
      regions.push_back(Json{
          {"name", name},
          {"state", RegionStateName(s)},
          {"state_since_ms_ago", now - decider_.state_since_ms(name)},
          {"votes", Json{{"lost", t.lost},
                         {"healthy", t.healthy},
                         {"recovered", t.recovered},
                         {"silent", t.silent},
                         {"needed", t.needed}}},
          {"check", CheckJson(name)},
          {"lease", lease},
          {"rights",
           s == RegionState::kUp ? "usable" : (p.declarations.empty() ? "frozen" : "reclaimed")},
          {"declarations", DeclarationsJson(p)},
          {"takeover", p.takeover},
          {"handback", p.handback_state.empty() ? Json() : Json(p.handback_state)},
          {"detected_after_ms", p.detected_after_ms ? Json(*p.detected_after_ms) : Json()}});
    }
    return HttpResponse::Json(200,
                              JsonBody(Json{{"controller", config_.region},
                                            {"quorum", decider_.quorum()},
                                            {"lost_after_checks", config_.lost_after_checks},
                                            {"recover_after_checks", config_.recover_after_checks},
                                            {"probe_interval_ms", config_.probe_interval_ms},
                                            {"regions", regions}}));
  }

  // A region's GET /v1/admin/rights/{sku} body as GetRights reads it: an object whose `regions`
  // are objects with a string `region` and, if any, integer `rights`; `as_seen_by` a string and
  // `available` an integer, if given.
  static bool WellFormedRights(const Json& j) {
    if (!j.is_object() || !j.contains("regions") || !j["regions"].is_array()) return false;
    if (j.contains("as_seen_by") && !j["as_seen_by"].is_string()) return false;
    if (j.contains("available") && !j["available"].is_number_integer()) return false;
    for (const Json& row : j["regions"]) {
      if (!row.is_object() || !row.contains("region") || !row["region"].is_string()) return false;
      if (row.contains("rights") &&
          (!row["rights"].is_number_integer() ||
           (row["rights"].is_number_unsigned() &&
            row["rights"].get<uint64_t>() > uint64_t{std::numeric_limits<int64_t>::max()}))) {
        return false;
      }
    }
    return true;
  }

  HttpResponse GetRights(HttpRequest& r) {
    if (auto st = Authorized(r); !st.ok()) return AuthProblem(st);
    const std::string sku = r.params["sku"];
    if (!ValidSku(sku)) {
      return HttpResponse::Problem(400, "Bad Request",
                                   "sku: 1..64 characters of [A-Za-z0-9._-] expected");
    }
    // Ask our own region first, then every other region that is not lost.
    std::vector<const RegionEndpoints*> order;
    std::map<std::string, RegionState> states;
    std::map<std::string, int64_t> reclaimed;  // region -> units of this SKU reclaimed from it
    {
      std::lock_guard<std::mutex> l(mu_);
      for (const auto& n : names_) {
        states[n] = decider_.state(n);
        const Progress& p = progress_[n];
        if (auto it = p.reclaimed_units.find(sku); it != p.reclaimed_units.end())
          reclaimed[n] = it->second;
      }
    }
    if (states[config_.region] == RegionState::kUp) order.push_back(config_.Find(config_.region));
    for (const auto& e : config_.regions) {
      if (e.name != config_.region && states[e.name] == RegionState::kUp) order.push_back(&e);
    }
    std::string errors;
    for (const RegionEndpoints* e : order) {
      HttpResult res = http_->Do(HttpCall{"GET", absl::StrCat(e->url, "/v1/admin/rights/", sku), "",
                                          config_.operator_token},
                                 2000);
      if (res.status == 400 || res.status == 404) {
        return HttpResponse{res.status, "application/problem+json", {}, res.body};
      }
      Json j = res.ok() ? Json::parse(res.body, nullptr, false) : Json();
      if (!WellFormedRights(j)) {
        // A body of another shape (a field of the wrong type, rights that are not an integer)
        // is that region's fault: the next one is asked (before, it answered 500).
        absl::StrAppend(&errors, errors.empty() ? "" : "; ", e->name, ": ",
                        res.ok() ? "bad body" : res.Describe());
        continue;
      }
      int64_t frozen = 0;
      Json frozen_regions = Json::array();
      Json rows = Json::array();
      for (const Json& row : j["regions"]) {
        const std::string name = row["region"].get<std::string>();
        const int64_t units = row.contains("rights") ? row["rights"].get<int64_t>() : 0;
        auto st = states.find(name);
        const bool lost = st != states.end() && st->second != RegionState::kUp;
        // Rights an operator reclaimed (declare-lost) still show in the counter until the
        // region returns and writes them off: they are not frozen, they were moved.
        const int64_t moved = lost && reclaimed.count(name) ? reclaimed[name] : 0;
        const int64_t frozen_here = lost ? std::max<int64_t>(0, units - moved) : 0;
        if (frozen_here > 0) {
          frozen += frozen_here;
          frozen_regions.push_back(name);
        }
        Json out = row;
        out["state"] = st != states.end() ? Json(RegionStateName(st->second)) : Json();
        out["frozen"] = frozen_here > 0;
        out["frozen_units"] = frozen_here;
        out["reclaimed_units"] = moved;
        rows.push_back(out);
      }
      return HttpResponse::Json(200, JsonBody(Json{{"sku", sku},
                                                   {"controller", config_.region},
                                                   {"as_seen_by", j.value("as_seen_by", e->name)},
                                                   {"available", j.value("available", Json())},
                                                   {"regions", rows},
                                                   {"frozen_regions", frozen_regions},
                                                   {"frozen_units", frozen}}));
    }
    return HttpResponse::Problem(503, "Service Unavailable",
                                 absl::StrCat("no live region answered: ", errors));
  }

  static Json DeclarationsJson(const Progress& p) {
    Json list = Json::array();
    for (const auto& [id, d] : p.declarations) list.push_back(d);
    return list;
  }

  // meridianctl reports an operator's declare-lost (the replicator's answer), so the rights
  // reports stop counting the reclaimed units as frozen. Only for a region this controller
  // considers lost; idempotent by declaration id.
  HttpResponse PostDeclaredLost(HttpRequest& r) {
    if (auto st = Authorized(r); !st.ok()) return AuthProblem(st);
    const std::string region = r.params["region"];
    if (config_.Find(region) == nullptr)
      return HttpResponse::Problem(404, "Not Found", "no such region: " + region);
    if (r.body.size() > kMaxDeclarationBytes)
      return HttpResponse::Problem(400, "Bad Request", "body: too large");
    Json j = Json::parse(r.body, nullptr, false);
    if (!j.is_object()) return HttpResponse::Problem(400, "Bad Request", "body: not a JSON object");
    if (!j.contains("region") || !j["region"].is_string() || j["region"] != region)
      return HttpResponse::Problem(400, "Bad Request", "region: must name the region in the path");
    const std::string id = j.contains("declaration_id") && j["declaration_id"].is_string()
                               ? j["declaration_id"].get<std::string>()
                               : "";
    if (id.empty() || !ValidSku(id))  // ValidSku: 1..64 of [A-Za-z0-9._-]
      return HttpResponse::Problem(400, "Bad Request", "declaration_id: 1..64 of [A-Za-z0-9._-]");
    if (!j.contains("reclaimed") || !j["reclaimed"].is_array() || j["reclaimed"].size() > 100000)
      return HttpResponse::Problem(400, "Bad Request", "reclaimed: an array of {sku, units}");
    std::map<std::string, int64_t> units;
    int64_t total = 0;
    for (const Json& e : j["reclaimed"]) {
      if (!e.is_object() || !e.contains("sku") || !e["sku"].is_string() ||
          !ValidSku(e["sku"].get<std::string>()) || !e.contains("units") ||
          !e["units"].is_number_unsigned() || e["units"].get<uint64_t>() > (uint64_t{1} << 40)) {
        return HttpResponse::Problem(400, "Bad Request",
                                     "reclaimed[]: each needs a valid sku and units 0..2^40");
      }
      int64_t& n = units[e["sku"].get<std::string>()];
      n += e["units"].get<int64_t>();
      total += e["units"].get<int64_t>();
      if (n > (int64_t{1} << 40)) {  // no SKU's stock holds more (crdt::BoundedCounter)
        return HttpResponse::Problem(400, "Bad Request",
                                     "reclaimed[]: more than 2^40 units of one sku");
      }
    }
    if (j.contains("declared_by") &&
        (!j["declared_by"].is_string() || j["declared_by"].get<std::string>().empty() ||
         j["declared_by"].get<std::string>().size() > 64)) {
      // Kept with the declaration and in the audit trail: a name, not a document (the probe
      // stored 3 MB of it twice).
      return HttpResponse::Problem(400, "Bad Request", "declared_by: 1..64 characters expected");
    }
    const std::string by = j.contains("declared_by") ? j["declared_by"].get<std::string>() : "?";
    std::lock_guard<std::mutex> l(mu_);
    if (decider_.state(region) == RegionState::kUp) {
      return HttpResponse::Problem(409, "Conflict",
                                   region + " is not lost for this controller: nothing recorded");
    }
    Progress& p = progress_[region];
    if (p.declarations.count(id)) {
      return HttpResponse::Json(200, JsonBody(Json{{"recorded", false}, {"already", true}}));
    }
    if (p.declarations.size() >= kMaxDeclarationsPerRegion) {
      return HttpResponse::Problem(
          409, "Conflict",
          absl::StrCat(region, " already has ", p.declarations.size(),
                       " declarations recorded here, the most this controller keeps"));
    }
    p.declarations[id] = Json{{"declaration_id", id},
                              {"declared_by", by},
                              {"reclaimed_units", total},
                              {"skus", units.size()}};
    // Bounded: each declaration adds at most 2^40 per SKU, and at most
    // kMaxDeclarationsPerRegion are kept, so the sums stay far below 2^63.
    for (const auto& [sku, n] : units) p.reclaimed_units[sku] += n;
    AuditDecision(region, "rights_reclaimed",
                  absl::StrCat("declaration=", LogValue(id), " declared_by=", LogValue(by),
                               " units=", total, " skus=", units.size()),
                  "an operator declared the region lost (meridianctl declare-lost): its rights "
                  "were reclaimed; it writes them off if it returns");
    return HttpResponse::Json(200, JsonBody(Json{{"recorded", true}}));
  }

  // ---------------------------------------------------------------------------------- metrics
  void InitMetrics() {
    registry_ = std::make_shared<prometheus::Registry>();
    auto& state = prometheus::BuildGauge()
                      .Name("meridian_failover_region_state")
                      .Help("Decided state of each region: 0 up, 1 lost, 2 recovering")
                      .Register(*registry_);
    auto& healthy = prometheus::BuildGauge()
                        .Name("meridian_failover_region_check_healthy")
                        .Help("1 when this controller's last check found the region healthy")
                        .Register(*registry_);
    auto& caught_up = prometheus::BuildGauge()
                          .Name("meridian_failover_region_check_caught_up")
                          .Help("1 when this controller's last check found the region caught up")
                          .Register(*registry_);
    auto& votes = prometheus::BuildGauge()
                      .Name("meridian_failover_lost_votes")
                      .Help("Controllers whose fresh observation says the region is lost")
                      .Register(*registry_);
    auto& detection = prometheus::BuildGauge()
                          .Name("meridian_failover_detection_ms")
                          .Help(
                              "At the last lost decision: ms since this controller's first "
                              "failed check of the streak")
                          .Register(*registry_);
    auto& decisions = prometheus::BuildCounter()
                          .Name("meridian_failover_decisions_total")
                          .Help("Failover decisions and observed consequences, per region")
                          .Register(*registry_);
    auto& failures = prometheus::BuildCounter()
                         .Name("meridian_failover_probe_failures_total")
                         .Help("Failed probes per region and probe (readyz, status, metrics)")
                         .Register(*registry_);
    auto& push = prometheus::BuildCounter()
                     .Name("meridian_failover_observation_push_failures_total")
                     .Help("Observations not delivered to a peer controller")
                     .Register(*registry_);
    for (const auto& n : names_) {
      m_state_[n] = &state.Add({{"region", n}});
      m_healthy_[n] = &healthy.Add({{"region", n}});
      m_caught_up_[n] = &caught_up.Add({{"region", n}});
      m_lost_votes_[n] = &votes.Add({{"region", n}});
      m_detection_ms_[n] = &detection.Add({{"region", n}});
      m_decisions_[n] = &decisions;
      for (const char* p : {"readyz", "status", "metrics"})
        m_probe_failures_[{n, p}] = &failures.Add({{"region", n}, {"probe", p}});
      if (n != config_.region) m_push_failures_[n] = &push.Add({{"to", n}});
    }
    m_rounds_ = &prometheus::BuildCounter()
                     .Name("meridian_failover_rounds_total")
                     .Help("Probe rounds run")
                     .Register(*registry_)
                     .Add({});
    m_round_ms_ = &prometheus::BuildGauge()
                       .Name("meridian_failover_round_duration_ms")
                       .Help("Duration of the last probe round")
                       .Register(*registry_)
                       .Add({});
    m_actions_ = &prometheus::BuildCounter()
                      .Name("meridian_failover_actions_total")
                      .Help("Actions taken (geo_health, lease_handback) by result")
                      .Register(*registry_);
    m_observations_ = &prometheus::BuildCounter()
                           .Name("meridian_failover_observations_received_total")
                           .Help("Peer observations by result (accepted, stale, rejected)")
                           .Register(*registry_);
  }

  FailoverConfig config_;
  std::vector<std::string> names_;
  std::unique_ptr<Clock> owned_clock_;
  const Clock* clock_;
  std::unique_ptr<HttpClient> owned_http_;
  HttpClient* http_;
  region::http::Router router_;
  std::unique_ptr<region::http::HttpServer> server_;

  std::mutex mu_;  // the decider and everything derived from rounds
  Decider decider_;
  std::map<std::string, RegionCheck> last_checks_;
  std::map<std::string, ReplicationMetrics> prev_metrics_;
  std::map<std::string, Progress> progress_;

  std::mutex audit_mu_;
  std::ofstream audit_;
  std::deque<Json> audit_entries_;

  // Two lanes of actions, each run by a thread of its own (after Start): the decisions' geo
  // updates (at most one pending per region), and periodic work (at most one queued or running
  // per region and kind). Lock order: mu_ before actions_mu_; an action takes neither while it
  // waits for the network.
  std::mutex actions_mu_;
  std::condition_variable actions_cv_;
  bool actions_stopping_ = false;
  std::deque<std::pair<std::string, std::function<void()>>> geo_updates_;
  std::deque<std::function<void()>> periodic_;
  std::set<std::pair<std::string, Periodic>> periodic_busy_;
  // Per region and geo instance: held across a reconcile's recheck of the decided state and its
  // POST, and across a decision's POST, so a reconcile that checked before a decision cannot land
  // after it. Built in the constructor, never resized.
  std::map<std::string, std::deque<std::mutex>> geo_write_mu_;

  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool stopping_ = false;
  bool push_due_ = false;
  std::thread probe_thread_, push_thread_, action_thread_, geo_update_thread_;

  std::shared_ptr<prometheus::Registry> registry_;
  std::map<std::string, prometheus::Gauge*> m_state_, m_healthy_, m_caught_up_, m_lost_votes_,
      m_detection_ms_;
  std::map<std::string, prometheus::Family<prometheus::Counter>*> m_decisions_;
  std::map<std::pair<std::string, std::string>, prometheus::Counter*> m_probe_failures_;
  std::map<std::string, prometheus::Counter*> m_push_failures_;
  prometheus::Counter* m_rounds_ = nullptr;
  prometheus::Gauge* m_round_ms_ = nullptr;
  prometheus::Family<prometheus::Counter>* m_actions_ = nullptr;
  prometheus::Family<prometheus::Counter>* m_observations_ = nullptr;
};

absl::StatusOr<std::unique_ptr<Controller>> Controller::Create(FailoverConfig config,
                                                               Options options) {
  auto impl = std::make_unique<Impl>(std::move(config), options);
  if (absl::Status st = impl->OpenAudit(); !st.ok()) return st;
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Controller::~Controller() { Stop(); }
absl::Status Controller::Start() { return impl_->Start(); }
uint16_t Controller::port() const { return impl_->port(); }
void Controller::Stop() { impl_->Stop(); }
HttpResponse Controller::Handle(HttpRequest& r) { return impl_->Handle(r); }
void Controller::RunRound() { impl_->RunRound(); }
void Controller::RunPendingActions() { impl_->RunPendingActions(); }
void Controller::PushObservation() { impl_->PushObservation(); }

}  // namespace meridian::failover
