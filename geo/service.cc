#include "geo/service.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/config_files.h"
#include "common/json_text.h"
#include "geo/health.h"
#include "geo/locator.h"
#include "geo/remote_backend.h"
#include "region/http/http_server.h"
#include "region/http/router.h"

namespace meridian::geo {
namespace {

using nlohmann::json;
using region::http::HttpRequest;
using region::http::HttpResponse;
using region::http::HttpServer;
using region::http::Router;

constexpr size_t kReasonBytesMax = 256;
constexpr size_t kHookBodyBytesMax = 4096;
// pdns keeps its backend connections open between queries; closing them often only costs a
// reconnect, but there is no reason to.
constexpr int kIdleTimeoutMs = 300000;

// For log values: double quotes, with quotes, backslashes and control characters escaped, so a
// reason from the network cannot forge key=value pairs or lines.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out.push_back('?');
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

class GeoService::Impl : public BackendObserver {
 public:
  Impl(GeoConfig config, Options options)
      : config_(std::move(config)),
        owned_clock_(options.clock ? nullptr : std::make_unique<SteadyClock>()),
        clock_(options.clock ? *options.clock : *owned_clock_),
        owned_probe_client_(options.probe_client ? nullptr : std::make_unique<CurlProbeClient>()),
        probe_client_(options.probe_client ? *options.probe_client : *owned_probe_client_),
        locator_(config_, std::move(options.geoip)),
        tracker_(config_.regions.size(), config_.health, clock_.NowMs()),
        backend_(
            config_, locator_, [this] { return HealthySnapshot(); }, this) {
    SetupMetrics();
    for (size_t i = 0; i < config_.regions.size(); ++i) {
      if (!config_.regions[i].readyz_url.empty()) {
        probe_regions_.push_back(i);
        probe_urls_.push_back(config_.regions[i].readyz_url);
      }
      PublishLocked(i);
    }
    probe_loop_ = std::make_unique<ProbeLoop>(
        probe_urls_, config_.probe_interval_ms, config_.probe_timeout_ms, probe_client_,
        [this](size_t target, const ProbeResult& r) { OnProbe(probe_regions_[target], r); });
    SetupRoutes();
  }

  ~Impl() override { Stop(); }

  absl::Status Start() {
    HttpServer::Options o;
    o.address = config_.listen.host;
    o.port = config_.listen.port;
    o.threads = config_.http_threads;
    o.max_body_bytes = RemoteBackend::kMaxBodyBytes;
    o.idle_timeout_ms = kIdleTimeoutMs;
    server_ = std::make_unique<HttpServer>(o, [this](HttpRequest& r) { return Handle(r); });
    if (absl::Status st = server_->Start(); !st.ok()) return st;
    probe_loop_->Start();
    spdlog::info(
        "event=geo_started listen={}:{} dns_path={} zone={} service={} regions={} probed={} "
        "probe_interval_ms={} probe_timeout_ms={} fall={} rise={} answer_ttl_s={} "
        "last_resort={} locations={} geoip={}",
        config_.listen.host, server_->port(), config_.dns_path, config_.zone.name,
        config_.zone.service_name, config_.regions.size(), probe_urls_.size(),
        config_.probe_interval_ms, config_.probe_timeout_ms, config_.health.fall,
        config_.health.rise, config_.answer_ttl_s, LastResortText(), config_.locations.size(),
        config_.maxmind_db.empty() ? "none" : config_.maxmind_db);
    return absl::OkStatus();
  }

  void Stop() {
    if (probe_loop_) probe_loop_->Stop();
    if (server_) server_->Stop();
  }

  uint16_t port() const { return server_ ? server_->port() : 0; }

  HttpResponse Handle(HttpRequest& request) { return router_.Handle(request); }

  void ProbeOnce() { probe_loop_->RunOnce(); }

  // BackendObserver
  void OnRequest(std::string_view method) override {
    auto it = requests_.find(std::string(method));
    if (it != requests_.end()) it->second->Increment();
  }
  void OnAnswer(const Decision& decision, const ClientLocation& where) override {
    for (size_t r : decision.regions) {
      (decision.last_resort ? last_resort_answers_ : answers_)[r]->Increment();
    }
    by_source_[static_cast<size_t>(where.source)]->Increment();
  }
  void OnBadRequest(std::string_view why) override {
    bad_requests_->Increment();
    spdlog::warn("event=geo_bad_backend_request why={}", Quote(why));
  }
  void OnGeoIpError(std::string_view what) override {
    geoip_errors_->Increment();
    spdlog::warn("event=geo_geoip_error error={}", Quote(what));
  }

 private:
  std::string LastResortText() const {
    return config_.last_resort == LastResort::kAllRegions
               ? std::string("all")
               : "region:" + config_.regions[config_.last_resort_region].name;
  }

  std::vector<bool> HealthySnapshot() const {
    const uint64_t bits = healthy_bits_.load(std::memory_order_acquire);
    std::vector<bool> out(config_.regions.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = (bits >> i) & 1;
    return out;
  }

  // Copies region i's state into the lock-free snapshot and the gauges. REQUIRES: mu_ held (or
  // construction).
  void PublishLocked(size_t i) {
    const RegionHealth& h = tracker_.region(i);
    const uint64_t bit = uint64_t{1} << i;
    if (h.effective() == Health::kUp) {
      healthy_bits_.fetch_or(bit, std::memory_order_release);
    } else {
      healthy_bits_.fetch_and(~bit, std::memory_order_release);
    }
    healthy_gauge_[i]->Set(h.effective() == Health::kUp ? 1 : 0);
    probe_up_gauge_[i]->Set(h.probe_state == Health::kUp ? 1 : 0);
    override_gauge_[i]->Set(h.override_state == Override::kAuto ? 0 : 1);
  }

  // Logs and counts what a tracker call changed. REQUIRES: mu_ held.
  void ReportLocked(size_t i, const HealthTransition& t, std::string_view source,
                    size_t healthy_before) {
    const std::string& name = config_.regions[i].name;
    if (t.probe_changed) {
      spdlog::info("event=geo_region_probe_state region={} state={} reason={}", name,
                   HealthName(t.probe_state), Quote(t.reason));
    }
    if (t.effective_changed) {
      health_changes_[i]->Increment();
      spdlog::warn("event=geo_region_health region={} state={} source={} reason={}", name,
                   HealthName(t.effective), source, Quote(t.reason));
    }
    PublishLocked(i);
    const size_t healthy_after = HealthyCountLocked();
    if (healthy_before > 0 && healthy_after == 0) {
      spdlog::error("event=geo_last_resort_active mode={} ttl_s={}", LastResortText(),
                    config_.last_resort_ttl_s);
    } else if (healthy_before == 0 && healthy_after > 0) {
      spdlog::warn("event=geo_last_resort_cleared healthy_regions={}", healthy_after);
    }
  }

  size_t HealthyCountLocked() const {
    size_t n = 0;
    for (size_t i = 0; i < tracker_.size(); ++i) n += tracker_.region(i).effective() == Health::kUp;
    return n;
  }

  void OnProbe(size_t region, const ProbeResult& result) {
    probes_[region]->Increment();
    if (!result.ok) probe_failures_[region]->Increment();
    std::lock_guard<std::mutex> lock(mu_);
    const size_t before = HealthyCountLocked();
    const HealthTransition t =
        tracker_.RecordProbe(region, result.ok, result.error, clock_.NowMs());
    ReportLocked(region, t, "probe", before);
  }

  json RegionJsonLocked(size_t i, int64_t now_ms) const {
    const RegionConfig& rc = config_.regions[i];
    const RegionHealth& h = tracker_.region(i);
    json addresses = json::array();
    for (const IpAddress& a : rc.addresses) addresses.push_back(a.ToString());
    json probe = {{"enabled", !rc.readyz_url.empty()},
                  {"state", HealthName(h.probe_state)},
                  {"consecutive_failures", h.consecutive_failures},
                  {"consecutive_successes", h.consecutive_successes},
                  {"since_ms_ago", now_ms - h.probe_state_since_ms},
                  {"probes_total", h.probes_total},
                  {"failures_total", h.probe_failures_total}};
    probe["last_probe_ms_ago"] =
        h.last_probe_ms < 0 ? json(nullptr) : json(now_ms - h.last_probe_ms);
    probe["last_error"] = h.last_probe_error.empty() ? json(nullptr) : json(h.last_probe_error);
    json override_json = {{"state", OverrideName(h.override_state)},
                          {"since_ms_ago", now_ms - h.override_since_ms}};
    override_json["reason"] = h.override_reason.empty() ? json(nullptr) : json(h.override_reason);
    return json{{"name", rc.name},
                {"addresses", addresses},
                {"lat", rc.location.lat_deg},
                {"lon", rc.location.lon_deg},
                {"readyz", rc.readyz_url.empty() ? json(nullptr) : json(rc.readyz_url)},
                {"probe", probe},
                {"override", override_json},
                {"effective", HealthName(h.effective())},
                {"effective_since_ms_ago", now_ms - h.effective_since_ms}};
  }

  std::optional<size_t> RegionIndex(const std::string& name) const {
    for (size_t i = 0; i < config_.regions.size(); ++i) {
      if (config_.regions[i].name == name) return i;
    }
    return std::nullopt;
  }

  void SetupRoutes() {
    router_.Add("POST", config_.dns_path, [this](HttpRequest& r) {
      const BackendReply reply = backend_.Handle(r.body);
      return HttpResponse::Json(reply.http_status, reply.body);
    });
    router_.Add("GET", "/healthz",
                [](HttpRequest&) { return HttpResponse::Json(200, R"({"status":"ok"})"); });
    router_.Add("GET", "/metrics", [this](HttpRequest&) {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4";
      r.body = prometheus::TextSerializer().Serialize(registry_->Collect());
      return r;
    });
    router_.Add("GET", "/v1/regions", [this](HttpRequest&) {
      std::lock_guard<std::mutex> lock(mu_);
      const int64_t now = clock_.NowMs();
      json regions = json::array();
      for (size_t i = 0; i < tracker_.size(); ++i) regions.push_back(RegionJsonLocked(i, now));
      const size_t healthy = HealthyCountLocked();
      return HttpResponse::Json(200, Dump(json{{"regions", regions},
                                               {"healthy_regions", healthy},
                                               {"last_resort_active", healthy == 0},
                                               {"last_resort", LastResortText()},
                                               {"last_resort_ttl_s", config_.last_resort_ttl_s},
                                               {"answer_ttl_s", config_.answer_ttl_s}}));
    });
    router_.Add("GET", "/v1/regions/{name}", [this](HttpRequest& r) {
      const std::optional<size_t> i = RegionIndex(r.params["name"]);
      if (!i) return NoSuchRegion(r.params["name"]);
      std::lock_guard<std::mutex> lock(mu_);
      return HttpResponse::Json(200, Dump(RegionJsonLocked(*i, clock_.NowMs())));
    });
    router_.Add("POST", "/v1/regions/{name}/health",
                [this](HttpRequest& r) { return SetHealth(r); });
    router_.Add("GET", "/v1/route", [this](HttpRequest& r) { return Route(r); });
  }

  static HttpResponse NoSuchRegion(const std::string& name) {
    return HttpResponse::Problem(404, "Not Found", absl::StrCat("no region named '", name, "'"));
  }

  HttpResponse SetHealth(HttpRequest& r) {
    const std::optional<std::string_view> header = r.Header("authorization");
    const std::optional<std::string_view> auth =
        header ? common::BearerToken(*header) : std::nullopt;
    if (!auth) {
      hook_requests_unauthorized_->Increment();
      HttpResponse resp = HttpResponse::Problem(
          401, "Unauthorized", "this endpoint needs Authorization: Bearer <operator token>");
      resp.headers.emplace_back("WWW-Authenticate", "Bearer");
      return resp;
    }
    if (!common::TokenEquals(*auth, config_.operator_token)) {
      hook_requests_unauthorized_->Increment();
      spdlog::warn("event=geo_hook_rejected reason=bad_token remote={}", r.remote_address);
      return HttpResponse::Problem(403, "Forbidden", "the bearer token is not the operator token");
    }
    const std::string& name = r.params["name"];
    const std::optional<size_t> region = RegionIndex(name);
    if (!region) {
      hook_requests_bad_->Increment();
      return NoSuchRegion(name);
    }
    const auto bad = [&](const std::string& detail) {
      hook_requests_bad_->Increment();
      return HttpResponse::Problem(400, "Bad Request", detail);
    };
    if (r.body.size() > kHookBodyBytesMax) return bad("body over 4096 bytes");
    const json body = common::ParseJsonText<json>(r.body);
    if (body.is_discarded() || !body.is_object()) {
      return bad(R"(body must be a JSON object {"state":"down"|"up"|"auto","reason":"..."})");
    }
    for (const auto& [key, value] : body.items()) {
      if (key != "state" && key != "reason") return bad(absl::StrCat("unknown field '", key, "'"));
    }
    auto state_it = body.find("state");
    if (state_it == body.end() || !state_it->is_string()) {
      return bad(R"("state" must be "down", "up" or "auto")");
    }
    const std::optional<Override> state = ParseOverride(state_it->get<std::string>());
    if (!state) return bad(R"("state" must be "down", "up" or "auto")");
    std::string reason;
    if (auto it = body.find("reason"); it != body.end()) {
      if (!it->is_string()) return bad(R"("reason" must be a string)");
      reason = it->get<std::string>();
      if (reason.size() > kReasonBytesMax) return bad("\"reason\" is over 256 bytes");
    }
    if (reason.empty()) reason = "no reason given";

    hook_requests_ok_->Increment();
    std::lock_guard<std::mutex> lock(mu_);
    const size_t before = HealthyCountLocked();
    const HealthTransition t = tracker_.SetOverride(*region, *state, reason, clock_.NowMs());
    spdlog::info("event=geo_region_override region={} override={} reason={} remote={}", name,
                 OverrideName(*state), Quote(reason), r.remote_address);
    ReportLocked(*region, t, "override", before);
    return HttpResponse::Json(200, Dump(RegionJsonLocked(*region, clock_.NowMs())));
  }

  HttpResponse Route(HttpRequest& r) {
    const std::optional<std::string> client = r.QueryParam("client");
    if (!client) return HttpResponse::Problem(400, "Bad Request", "needs ?client=<ip>[/<len>]");
    absl::StatusOr<Cidr> cidr = ParseCidr(*client, /*strict_host_bits=*/false);
    if (!cidr.ok())
      return HttpResponse::Problem(400, "Bad Request", std::string(cidr.status().message()));
    absl::Status geoip_error;
    const ClientLocation where = locator_.Locate(*cidr, &geoip_error);
    const std::vector<bool> healthy = HealthySnapshot();
    std::vector<RegionView> views(config_.regions.size());
    json distances = json::object();
    for (size_t i = 0; i < views.size(); ++i) {
      views[i] = {config_.regions[i].location, healthy[i]};
      distances[config_.regions[i].name] = GreatCircleKm(where.point, views[i].location);
    }
    const Decision d = Decide(where.point, views, config_.decision_policy());
    json regions = json::array();
    for (size_t i : d.regions) regions.push_back(config_.regions[i].name);
    json out = {{"client", cidr->ToString()},
                {"location", {{"lat", where.point.lat_deg}, {"lon", where.point.lon_deg}}},
                {"source", LocationSourceName(where.source)},
                {"scope_prefix_len", d.last_resort ? 0 : where.scope_prefix_len},
                {"regions", regions},
                {"ttl_s", d.ttl_s},
                {"last_resort", d.last_resort},
                {"distance_km", distances}};
    if (!geoip_error.ok()) {
      // The reader's own text names the database file: logged, not sent (this route is open).
      spdlog::warn("event=geoip_lookup_failed client={} error=\"{}\"", cidr->ToString(),
                   geoip_error.ToString());
      out["geoip_error"] = absl::IsNotFound(geoip_error)
                               ? "the client's address is not in the GeoIP database"
                               : "the GeoIP lookup failed (meridian-geo's log says why)";
    }
    return HttpResponse::Json(200, Dump(out));
  }

  void SetupMetrics() {
    registry_ = std::make_shared<prometheus::Registry>();
    auto& answers = prometheus::BuildCounter()
                        .Name("meridian_geo_answers_total")
                        .Help(
                            "Lookups of the service name answered, per region and kind "
                            "(nearest healthy, or last resort when none was healthy)")
                        .Register(*registry_);
    auto& healthy = prometheus::BuildGauge()
                        .Name("meridian_geo_region_healthy")
                        .Help("Effective health used for answers: 1 up, 0 down")
                        .Register(*registry_);
    auto& probe_up = prometheus::BuildGauge()
                         .Name("meridian_geo_region_probe_up")
                         .Help("Probe state after thresholds: 1 up, 0 down")
                         .Register(*registry_);
    auto& overridden = prometheus::BuildGauge()
                           .Name("meridian_geo_region_override_active")
                           .Help("1 while a health hook override (up or down) is in force")
                           .Register(*registry_);
    auto& probes = prometheus::BuildCounter()
                       .Name("meridian_geo_probes_total")
                       .Help("readyz probes sent")
                       .Register(*registry_);
    auto& probe_failures = prometheus::BuildCounter()
                               .Name("meridian_geo_probe_failures_total")
                               .Help("readyz probes that failed (non-2xx, refused, timeout)")
                               .Register(*registry_);
    auto& changes = prometheus::BuildCounter()
                        .Name("meridian_geo_health_changes_total")
                        .Help("Changes of a region's effective health")
                        .Register(*registry_);
    for (const RegionConfig& rc : config_.regions) {
      answers_.push_back(&answers.Add({{"region", rc.name}, {"kind", "nearest"}}));
      last_resort_answers_.push_back(&answers.Add({{"region", rc.name}, {"kind", "last_resort"}}));
      healthy_gauge_.push_back(&healthy.Add({{"region", rc.name}}));
      probe_up_gauge_.push_back(&probe_up.Add({{"region", rc.name}}));
      override_gauge_.push_back(&overridden.Add({{"region", rc.name}}));
      probes_.push_back(&probes.Add({{"region", rc.name}}));
      probe_failures_.push_back(&probe_failures.Add({{"region", rc.name}}));
      health_changes_.push_back(&changes.Add({{"region", rc.name}}));
    }
    auto& by_source = prometheus::BuildCounter()
                          .Name("meridian_geo_client_locations_total")
                          .Help("How answered clients were located")
                          .Register(*registry_);
    for (LocationSource s :
         {LocationSource::kGeoIp, LocationSource::kCidrTable, LocationSource::kDefault}) {
      by_source_.push_back(&by_source.Add({{"source", std::string(LocationSourceName(s))}}));
    }
    auto& requests = prometheus::BuildCounter()
                         .Name("meridian_geo_backend_requests_total")
                         .Help("PowerDNS remote backend requests by method")
                         .Register(*registry_);
    for (const char* m : {"initialize", "lookup", "getalldomains", "getdomaininfo",
                          "getalldomainmetadata", "getdomainmetadata", "other"}) {
      requests_[m] = &requests.Add({{"method", m}});
    }
    bad_requests_ = &prometheus::BuildCounter()
                         .Name("meridian_geo_backend_bad_requests_total")
                         .Help("Backend requests rejected as malformed")
                         .Register(*registry_)
                         .Add({});
    geoip_errors_ = &prometheus::BuildCounter()
                         .Name("meridian_geo_geoip_errors_total")
                         .Help("GeoIP database lookups that failed (the CIDR table was used)")
                         .Register(*registry_)
                         .Add({});
    auto& hooks = prometheus::BuildCounter()
                      .Name("meridian_geo_health_hook_requests_total")
                      .Help("POST /v1/regions/{name}/health by result")
                      .Register(*registry_);
    hook_requests_ok_ = &hooks.Add({{"result", "ok"}});
    hook_requests_unauthorized_ = &hooks.Add({{"result", "unauthorized"}});
    hook_requests_bad_ = &hooks.Add({{"result", "bad_request"}});
  }

  const GeoConfig config_;
  std::unique_ptr<Clock> owned_clock_;
  Clock& clock_;
  std::unique_ptr<ProbeClient> owned_probe_client_;
  ProbeClient& probe_client_;

  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<prometheus::Counter*> answers_, last_resort_answers_, probes_, probe_failures_,
      health_changes_, by_source_;
  std::vector<prometheus::Gauge*> healthy_gauge_, probe_up_gauge_, override_gauge_;
  std::map<std::string, prometheus::Counter*> requests_;
  prometheus::Counter* bad_requests_ = nullptr;
  prometheus::Counter* geoip_errors_ = nullptr;
  prometheus::Counter* hook_requests_ok_ = nullptr;
  prometheus::Counter* hook_requests_unauthorized_ = nullptr;
  prometheus::Counter* hook_requests_bad_ = nullptr;

  const ClientLocator locator_;
  std::mutex mu_;
  HealthTracker tracker_;  // guarded by mu_
  // Bit i set = region i effectively up. Written under mu_, read lock-free by lookups.
  std::atomic<uint64_t> healthy_bits_{0};
  const RemoteBackend backend_;

  std::vector<size_t> probe_regions_;  // probe target -> region index
  std::vector<std::string> probe_urls_;
  std::unique_ptr<ProbeLoop> probe_loop_;
  Router router_;
  std::unique_ptr<HttpServer> server_;
};

GeoService::GeoService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GeoService::~GeoService() { impl_->Stop(); }

absl::StatusOr<std::unique_ptr<GeoService>> GeoService::Create(GeoConfig config, Options options) {
  static_assert(kRegionsMax <= 64, "healthy_bits_ holds one bit per region");
  if (config.regions.empty() || config.regions.size() > kRegionsMax) {
    return absl::InvalidArgumentError("GeoService: 1..64 regions are required");
  }
  if (!options.geoip && !config.maxmind_db.empty()) {
    absl::StatusOr<std::unique_ptr<MaxMindDatabase>> db = MaxMindDatabase::Open(config.maxmind_db);
    if (!db.ok()) return db.status();
    options.geoip = *std::move(db);
  }
  return std::unique_ptr<GeoService>(
      new GeoService(std::make_unique<Impl>(std::move(config), std::move(options))));
}

absl::Status GeoService::Start() { return impl_->Start(); }
uint16_t GeoService::port() const { return impl_->port(); }
void GeoService::Stop() { impl_->Stop(); }
HttpResponse GeoService::Handle(HttpRequest& request) { return impl_->Handle(request); }
void GeoService::ProbeOnce() { impl_->ProbeOnce(); }

}  // namespace meridian::geo
