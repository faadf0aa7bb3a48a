#include "tests/load/report.h"

#include <cstdio>

namespace meridian::load {
namespace {

double Ms(int64_t us) { return static_cast<double>(us) / 1000.0; }

nlohmann::ordered_json LatencyJson(const LatencyHistogram& h) {
  return {{"p50", Ms(h.ValueAtQuantile(0.50))},
          {"p90", Ms(h.ValueAtQuantile(0.90))},
          {"p99", Ms(h.ValueAtQuantile(0.99))},
          {"p999", Ms(h.ValueAtQuantile(0.999))},
          {"max", Ms(h.max())},
          {"mean", h.mean() / 1000.0},
          {"min", Ms(h.min())},
          {"samples", h.count()}};
}

std::string Format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

}  // namespace

void RunReport::Finalize() {
  int64_t responses = 0;
  errors_total = shed;
  for (const OpReport& op : ops) {
    responses += op.responses_in_window;
    for (const auto& [cls, n] : op.errors) errors_total += n;
  }
  achieved_rate_per_s = window_s > 0 ? static_cast<double>(responses) / window_s : 0;
  double target_in_window = window_s > 0 ? static_cast<double>(arrivals_measured) / window_s : 0;
  unsustained_reasons.clear();
  if (window_s <= 0 || arrivals_measured == 0) {
    unsustained_reasons.push_back("no arrival fell in the measured window");
  }
  if (achieved_rate_per_s < 0.95 * target_in_window) {
    unsustained_reasons.push_back(Format("achieved %.1f/s is under 95%% of the scheduled %.1f/s",
                                         achieved_rate_per_s, target_in_window));
  }
  double lag_p99_ms = Ms(lag_us.ValueAtQuantile(0.99));
  if (lag_p99_ms > max_lag_ms) {
    unsustained_reasons.push_back(
        Format("send lag p99 %.1f ms is over %.1f ms", lag_p99_ms, max_lag_ms));
  }
  if (shed > 0) {
    unsustained_reasons.push_back(
        Format("%lld arrivals shed (backlog full)", static_cast<long long>(shed)));
  }
  sustained = unsustained_reasons.empty();
}

nlohmann::ordered_json RunReport::ToJson() const {
  nlohmann::ordered_json j;
  j["command_line"] = command_line;
  j["start_time_utc"] = start_time_utc;
  j["target"] = target_url;
  j["target_rate_per_s"] = target_rate_per_s;
  j["duration_s"] = duration_s;
  j["warmup_s"] = warmup_s;
  j["measured_window_s"] = window_s;
  j["arrivals"] = arrivals;
  j["connections"] = connections;
  j["customers"] = customers;
  j["catalog_products"] = catalog_products;
  j["seeded_catalog"] = seeded;
  j["mix"] = mix;
  j["declined_fraction"] = declined_fraction;
  j["replay_fraction"] = replay_fraction;
  j["zipf_s"] = zipf_s;
  j["seed"] = seed;
  j["setup_s"] = setup_s;
  j["method"] =
      "open loop: arrivals on a fixed timeline; latency from the scheduled send time (no "
      "coordinated omission); achieved rate = HTTP responses inside the measured window / window";
  j["sustained"] = sustained;
  j["unsustained_reasons"] = unsustained_reasons;
  j["achieved_rate_per_s"] = achieved_rate_per_s;
  j["totals"] = {{"arrivals", arrivals_total},
                 {"arrivals_measured", arrivals_measured},
                 {"http_requests", http_requests},
                 {"errors", errors_total},
                 {"error_fraction",
                  arrivals_measured > 0
                      ? static_cast<double>(errors_total) / static_cast<double>(arrivals_measured)
                      : 0.0},
                 {"shed", shed},
                 {"backlog_max", backlog_max},
                 {"connects", connects},
                 {"stale_keepalive_resends", stale_retries},
                 {"cart_fallbacks_to_add", cart_fallbacks}};
  j["schedule_lag_ms"] = {{"p50", Ms(lag_us.ValueAtQuantile(0.5))},
                          {"p99", Ms(lag_us.ValueAtQuantile(0.99))},
                          {"max", Ms(lag_us.max())},
                          {"limit_p99", max_lag_ms}};
  nlohmann::ordered_json ops_json = nlohmann::ordered_json::object();
  LatencyHistogram all;
  for (size_t i = 0; i < kOpKinds; ++i) {
    const OpReport& op = ops[i];
    if (op.count == 0 && op.responses_in_window == 0) continue;
    all.Merge(op.latency_us);
    nlohmann::ordered_json statuses = nlohmann::ordered_json::object();
    for (const auto& [code, n] : op.statuses) statuses[std::to_string(code)] = n;
    nlohmann::ordered_json o = {
        {"count", op.count},
        {"achieved_per_s",
         window_s > 0 ? static_cast<double>(op.responses_in_window) / window_s : 0.0},
        {"latency_ms", LatencyJson(op.latency_us)},
        {"statuses", statuses},
        {"errors", op.errors}};
    if (!op.error_examples.empty()) o["error_examples"] = op.error_examples;
    if (op.expected_declines > 0) o["expected_declines_402"] = op.expected_declines;
    if (static_cast<OpKind>(i) == OpKind::kCheckout) o["prefill_adds"] = op.prefill_adds;
    ops_json[std::string(OpName(static_cast<OpKind>(i)))] = o;
  }
  j["operations"] = ops_json;
  j["stopped_by_signal"] = stopped_by_signal;
  j["acked_orders"] = acked_orders;
  if (dns.enabled) {
    nlohmann::ordered_json switches = nlohmann::ordered_json::array();
    for (const DnsSwitch& s : dns.switches) {
      switches.push_back(
          {{"at_unix_ms", s.at_unix_ms}, {"subnet", s.subnet}, {"from", s.from}, {"to", s.to}});
    }
    j["dns"] = {{"queries", dns.queries},
                {"timeouts", dns.timeouts},
                {"failures", dns.failures},
                {"switches", switches}};
  }
  j["all_operations_latency_ms"] = LatencyJson(all);
  return j;
}

std::string RunReport::ToTable() const {
  std::string out;
  out += Format("%-16s %8s %9s %9s %9s %9s %9s %9s  %s\n", "operation", "count", "achieved/s",
                "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors");
  LatencyHistogram all;
  int64_t all_count = 0;
  int64_t all_responses = 0;
  auto row = [&](const std::string& name, int64_t count, int64_t responses,
                 const LatencyHistogram& h, const std::string& errors) {
    out +=
        Format("%-16s %8lld %9.1f %9.2f %9.2f %9.2f %9.2f %9.2f  %s\n", name.c_str(),
               static_cast<long long>(count),
               window_s > 0 ? static_cast<double>(responses) / window_s : 0.0,
               Ms(h.ValueAtQuantile(0.5)), Ms(h.ValueAtQuantile(0.9)), Ms(h.ValueAtQuantile(0.99)),
               Ms(h.ValueAtQuantile(0.999)), Ms(h.max()), errors.c_str());
  };
  for (size_t i = 0; i < kOpKinds; ++i) {
    const OpReport& op = ops[i];
    if (op.count == 0 && op.responses_in_window == 0) continue;
    std::string errors;
    for (const auto& [cls, n] : op.errors) {
      errors += (errors.empty() ? "" : " ") + cls + "=" + std::to_string(n);
    }
    if (op.expected_declines > 0) {
      errors += (errors.empty() ? "" : " ") + std::string("(declined=") +
                std::to_string(op.expected_declines) + ")";
    }
    if (static_cast<OpKind>(i) == OpKind::kCheckout && op.prefill_adds > 0) {
      errors += (errors.empty() ? "" : " ") + std::string("(prefill_adds=") +
                std::to_string(op.prefill_adds) + ")";
    }
    if (errors.empty()) errors = "-";
    row(std::string(OpName(static_cast<OpKind>(i))), op.count, op.responses_in_window,
        op.latency_us, errors);
    all.Merge(op.latency_us);
    all_count += op.count;
    all_responses += op.responses_in_window;
  }
  row("all", all_count, all_responses, all,
      Format("errors=%lld", static_cast<long long>(errors_total)));
  out += Format(
      "\ntarget %.1f/s  achieved %.1f/s  window %.1f s  arrivals %lld (measured %lld)  http "
      "requests %lld  shed %lld  backlog max %lld\n",
      target_rate_per_s, achieved_rate_per_s, window_s, static_cast<long long>(arrivals_total),
      static_cast<long long>(arrivals_measured), static_cast<long long>(http_requests),
      static_cast<long long>(shed), static_cast<long long>(backlog_max));
  if (dns.enabled) {
    out += Format("dns: %lld queries, %lld timeouts, %lld failures, %zu region switches\n",
                  static_cast<long long>(dns.queries), static_cast<long long>(dns.timeouts),
                  static_cast<long long>(dns.failures), dns.switches.size());
  }
  out += Format("send lag ms: p50 %.2f  p99 %.2f  max %.2f (limit p99 %.0f)\n",
                Ms(lag_us.ValueAtQuantile(0.5)), Ms(lag_us.ValueAtQuantile(0.99)), Ms(lag_us.max()),
                max_lag_ms);
  bool header = false;
  for (size_t i = 0; i < kOpKinds; ++i) {
    for (const auto& [cls, example] : ops[i].error_examples) {
      if (!header) out += "error examples:\n";
      header = true;
      out += "  " + std::string(OpName(static_cast<OpKind>(i))) + " " + cls + ": " +
             example.substr(0, 160) + "\n";
    }
  }
  out += std::string("sustained: ") + (sustained ? "true" : "false");
  for (const std::string& r : unsustained_reasons) out += "\n  - " + r;
  out += "\n";
  return out;
}

}  // namespace meridian::load
