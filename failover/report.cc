#include "failover/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace meridian::failover::drill {
namespace {

using OJson = nlohmann::ordered_json;

std::string Sec(std::optional<int64_t> ms) {
  return ms ? absl::StrFormat("%.1f s", static_cast<double>(*ms) / 1000.0) : "—";
}

std::string Pct(double rate) { return absl::StrFormat("%.2f%%", 100.0 * rate); }

std::string UtcMs(int64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, static_cast<int>(unix_ms % 1000));
}

std::string Xml(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A round axis maximum at or above v: 1, 2, 2.5, 5 times a power of ten.
double NiceCeil(double v) {
  if (v <= 0) return 1;
  double p = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * p >= v) return m * p;
  }
  return 10 * p;
}

const char* EventColor(const std::string& name) {
  if (name == "kill" || name == "partition") return "#c0392b";
  if (name == "detection") return "#d35400";
  if (name == "dns switch") return "#8e44ad";
  if (name == "takeover") return "#16a085";
  if (name == "return") return "#2c3e50";
  if (name == "recovery") return "#27ae60";
  return "#7f8c8d";
}

OJson OptMs(const std::optional<int64_t>& v) { return v ? OJson(*v) : OJson(); }

}  // namespace

const Event* DrillReport::Find(const std::string& name) const {
  for (const Event& e : events) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::optional<int64_t> DrillReport::After(const std::string& event, const std::string& from) const {
  const Event* a = Find(from);
  const Event* b = Find(event);
  if (a == nullptr || b == nullptr) return std::nullopt;
  return b->unix_ms - a->unix_ms;
}

void DrillReport::Sort() {
  std::stable_sort(events.begin(), events.end(),
                   [](const Event& a, const Event& b) { return a.unix_ms < b.unix_ms; });
}

bool DrillReport::AllPass() const {
  return !targets.empty() &&
         std::all_of(targets.begin(), targets.end(), [](const Target& t) { return t.pass; });
}

bool DrillReport::InvariantsHold() const {
  return std::all_of(targets.begin(), targets.end(),
                     [](const Target& t) { return !t.invariant || t.pass; });
}

OJson DrillReport::ToJson() const {
  OJson j;
  j["id"] = id;
  j["region"] = region;
  j["mode"] = mode;
  j["duration_s"] = duration_s;
  j["started_utc"] = started_utc;
  j["links"] = links;
  j["durability"] = durability;
  j["lease_ttl_ms"] = lease_ttl_ms;
  j["dns_ttl_s"] = dns_ttl_s;
  j["lost_region_subnets"] = lost_subnets;
  j["load"] = load;
  j["command"] = command;
  j["all_pass"] = AllPass();
  j["invariants_hold"] = InvariantsHold();
  OJson targets_json = OJson::array();
  for (const Target& t : targets) {
    targets_json.push_back({{"name", t.name},
                            {"goal", t.goal},
                            {"measured", t.measured},
                            {"pass", t.pass},
                            {"invariant", t.invariant}});
  }
  j["targets"] = targets_json;
  const Event* kill = Find("kill");
  OJson events_json = OJson::array();
  for (const Event& e : events) {
    OJson ej = {{"name", e.name}, {"unix_ms", e.unix_ms}, {"source", e.source}};
    if (kill) ej["after_kill_ms"] = e.unix_ms - kill->unix_ms;
    events_json.push_back(ej);
  }
  j["events"] = events_json;
  j["figures_ms"] = {{"detection", OptMs(observed.detection_ms)},
                     {"dns_switch", OptMs(observed.dns_switch_ms)},
                     {"takeover", OptMs(observed.takeover_ms)},
                     {"errors_under_1pct", OptMs(observed.errors_ok_ms)},
                     {"full_recovery_after_return", OptMs(observed.full_recovery_ms)}};
  j["customer_errors"] = {{"baseline_error_rate", errors.baseline_error_rate},
                          {"baseline_p99_ms", errors.baseline_p99_ms},
                          {"peak_error_rate", errors.peak_error_rate},
                          {"peak_p99_ms", errors.peak_p99_ms},
                          {"errors_in_outage", errors.errors_in_outage},
                          {"arrivals_in_outage", errors.arrivals_in_outage},
                          {"seconds_over_1pct", errors.seconds_over_threshold},
                          {"failback_peak_error_rate", errors.failback_peak_error_rate},
                          {"failback_ok_unix_ms", OptMs(errors.failback_ok_unix_ms)}};
  j["rpo"] = {{"checked_unix_ms", rpo_checked_unix_ms},
              {"acked_by_lost_region", rpo.acked_by_lost},
              {"acked_sync_peer", rpo.acked_sync_peer},
              {"acked_async", rpo.acked_async},
              {"missing_sync_peer", rpo.missing_sync_peer},
              {"missing_async", rpo.missing_async},
              {"missing_examples", rpo.missing_examples},
              {"lag_p99_ms", rpo.lag_p99_ms},
              {"orders_in_lag_window", rpo.async_window_orders},
              {"missing_before_window", rpo.missing_before_window},
              {"acked_total", acked_total},
              {"acked_missing_somewhere_after_recovery", acked_missing_after_recovery}};
  OJson stock_json = OJson::array();
  for (const StockFigures& s : stock) {
    stock_json.push_back({{"sku", s.sku},
                          {"restocked", s.restocked},
                          {"sold", s.sold},
                          {"orders", s.orders},
                          {"oversold", s.oversold}});
  }
  j["stock"] = stock_json;
  j["stock_available_after"] = stock_available_after;
  {
    int64_t sold = 0, restocked = 0;
    for (const StockFigures& s : stock) {
      sold += s.sold;
      restocked += s.restocked;
    }
    j["stock_accounted"] = stock_available_after >= 0 && sold + stock_available_after == restocked;
  }
  j["orders_seen"] = orders_seen;
  j["carts"] = {{"customers", carts.customers},
                {"identical", carts.identical},
                {"converged_after_ms", OptMs(carts.converged_after_ms)},
                {"differing", carts.differing}};
  OJson seconds = OJson::array();
  for (const TimelineSecond& s : timeline) {
    OJson regions_json = OJson::object();
    for (const auto& [name, ae] : s.regions) regions_json[name] = {ae.first, ae.second};
    seconds.push_back({{"t_ms", kill ? s.start_unix_ms - kill->unix_ms : s.start_unix_ms},
                       {"arrivals", s.arrivals},
                       {"errors", s.errors},
                       {"error_rate", s.error_rate},
                       {"p50_ms", s.p50_ms},
                       {"p99_ms", s.p99_ms},
                       {"acked", s.acked},
                       {"errors_by_class", s.errors_by_class},
                       {"regions_arrivals_errors", regions_json}});
  }
  j["timeline"] = seconds;
  j["notes"] = notes;
  return j;
}

std::string DrillReport::SummaryTable() const {
  std::string out = absl::StrFormat("%-22s %-58s %-36s %s\n", "target", "goal", "measured", "");
  for (const Target& t : targets) {
    absl::StrAppendFormat(&out, "%-22s %-58s %-36s %s%s\n", t.name, t.goal, t.measured,
                          t.pass ? "PASS" : "FAIL", t.invariant ? " (invariant)" : "");
  }
  return out;
}

std::string DrillReport::ToMarkdown() const {
  std::string md;
  absl::StrAppend(&md, "# Region-loss drill: ", region, " (", mode, ")\n\n");
  absl::StrAppend(&md, "Run `", id, "`, started ", started_utc, ". The region was ",
                  mode == "kill" ? "killed (kill -9 of meridian-region and meridian-replicator)"
                                 : "partitioned from the other regions (iptables DROP)",
                  " for ", duration_s, " s under customer load, then brought back.\n\n");
  absl::StrAppend(&md, "- Cluster: three regions, links ", links, ", durability ", durability,
                  ", lease TTL ", lease_ttl_ms, " ms, DNS TTL ", dns_ttl_s, " s\n");
  absl::StrAppend(&md, "- Load: ", load, "\n");
  absl::StrAppend(&md, "- The lost region's customers (client subnets): ",
                  absl::StrJoin(lost_subnets, ", "), "\n");
  absl::StrAppend(&md, "- Result: ",
                  AllPass() ? "**every target met**"
                            : (InvariantsHold() ? "**invariants held; a timing target missed**"
                                                : "**an invariant FAILED**"),
                  "\n\n");

  md += "## Targets\n\n";
  if (mode != "kill") {
    md +=
        "The issue's timing targets are set for kill mode; in partition mode the region stays "
        "reachable from customers and geo's probes, so detection rests on the controllers "
        "alone. They are judged the same way here, for comparison.\n\n";
  }
  md += "| target | goal | measured | result |\n|---|---|---|---|\n";
  for (const Target& t : targets) {
    absl::StrAppend(&md, "| ", t.name, t.invariant ? " (invariant)" : "", " | ", t.goal, " | ",
                    t.measured, " | ", t.pass ? "PASS" : "**FAIL**", " |\n");
  }

  md +=
      "\n## Events\n\nTimes from one clock (this machine's wall clock), relative to the kill.\n\n";
  md += "| event | after kill | at (UTC) | seen by |\n|---|---|---|---|\n";
  const Event* kill = Find("kill");
  for (const Event& e : events) {
    absl::StrAppend(&md, "| ", e.name, " | ",
                    kill ? Sec(e.unix_ms - kill->unix_ms) : std::string("—"), " | ",
                    UtcMs(e.unix_ms), " | ", e.source, " |\n");
  }

  md += "\n## What customers saw\n\n![timeline](timeline.svg)\n\n";
  absl::StrAppend(&md, "- Baseline: error rate ", Pct(errors.baseline_error_rate), ", worst p99 ",
                  absl::StrFormat("%.0f", errors.baseline_p99_ms), " ms\n");
  absl::StrAppend(&md, "- Outage (kill to return): ", errors.errors_in_outage,
                  " customer errors of ", errors.arrivals_in_outage, " requests; peak ",
                  Pct(errors.peak_error_rate), " in one second; ", errors.seconds_over_threshold,
                  " seconds at or over 1%; peak p99 ", absl::StrFormat("%.0f", errors.peak_p99_ms),
                  " ms\n");
  absl::StrAppend(&md, "- Error rate under 1% (and staying there) ", Sec(observed.errors_ok_ms),
                  " after the kill; after the return the worst second had ",
                  Pct(errors.failback_peak_error_rate), "\n");
  md +=
      "- Customer errors are connection failures, timeouts, 5xx (503 while a region cannot take "
      "orders), 429 and shed requests; 409 out of stock and other 4xx answers are not errors.\n";
  md +=
      "\nSeconds with errors (t: when the second starts, from the kill):\n\n| t (s) | requests | "
      "errors | rate | p99 ms | error classes |\n"
      "|---|---|---|---|---|---|\n";
  int shown = 0;
  for (const TimelineSecond& s : timeline) {
    if (s.errors == 0) continue;
    if (++shown > 40) {
      md += "| … | | | | | (more in report.json) |\n";
      break;
    }
    std::vector<std::string> classes;
    for (const auto& [c, n] : s.errors_by_class) classes.push_back(absl::StrCat(c, "=", n));
    absl::StrAppend(&md, "| ",
                    kill ? absl::StrFormat("%+.2f", (s.start_unix_ms - kill->unix_ms) / 1000.0)
                         : std::string("?"),
                    " | ", s.arrivals, " | ", s.errors, " | ", Pct(s.error_rate), " | ",
                    absl::StrFormat("%.0f", s.p99_ms), " | ", absl::StrJoin(classes, " "), " |\n");
  }
  if (shown == 0) md += "| — | | | | | none |\n";

  md += "\n## Orders (RPO)\n\n";
  absl::StrAppend(&md, "Orders acknowledged up to ",
                  Sec(rpo_checked_unix_ms - (kill ? kill->unix_ms : 0)),
                  " after the kill, looked up in every survivor's databases while the region was "
                  "still away:\n\n");
  absl::StrAppend(&md, "- acknowledged by ", region, " before the check: ", rpo.acked_by_lost, " (",
                  rpo.acked_sync_peer, " sync-peer, ", rpo.acked_async, " async)\n");
  absl::StrAppend(&md, "- missing at every survivor: ", rpo.missing_sync_peer, " sync-peer, ",
                  rpo.missing_async, " async",
                  rpo.missing_examples.empty()
                      ? std::string()
                      : absl::StrCat(" (e.g. ", absl::StrJoin(rpo.missing_examples, ", "), ")"),
                  "\n");
  absl::StrAppend(&md, "- replication lag p99 from ", region,
                  " before the kill: ", absl::StrFormat("%.0f", rpo.lag_p99_ms),
                  " ms; orders it acknowledged from that long before the kill on (what async "
                  "replication may lose): ",
                  rpo.async_window_orders,
                  "; missing ones older than that: ", rpo.missing_before_window, "\n");
  absl::StrAppend(&md, "- after recovery: ", acked_total, " orders acknowledged in the whole run, ",
                  acked_missing_after_recovery, " missing from some region\n");

  md +=
      "\n## Stock (oversell)\n\nScarce SKUs restocked in every region, sold under load across "
      "the kill. Sold = units in orders holding stock (pending payment or paid), each order once, "
      "from every region's databases after recovery.\n\n| SKU | restocked | sold | orders | "
      "oversold |\n|---|---|---|---|---|\n";
  for (const StockFigures& s : stock) {
    absl::StrAppend(&md, "| ", s.sku, " | ", s.restocked, " | ", s.sold, " | ", s.orders, " | ",
                    s.oversold, " |\n");
  }
  if (stock_available_after >= 0) {
    absl::StrAppend(&md,
                    "\nUnits still available after recovery (rights, as the regions see "
                    "them): ",
                    stock_available_after, ".\n");
  }

  md += "\n## Carts after failback\n\n";
  absl::StrAppend(&md, carts.identical, " of ", carts.customers,
                  " sampled customers have identical carts in every region",
                  carts.converged_after_ms ? absl::StrCat(" (", Sec(carts.converged_after_ms),
                                                          " after the load stopped)")
                                           : std::string(),
                  ".\n");
  for (const std::string& d : carts.differing) absl::StrAppend(&md, "- ", d, "\n");

  md += "\n## Run it again\n\n```\n" + command + "\n```\n";
  if (!loadgen_command.empty())
    md += "\nLoad (started by the drill):\n\n```\n" + loadgen_command + "\n```\n";
  if (!notes.empty()) {
    md += "\n## Notes\n\n";
    for (const std::string& n : notes) absl::StrAppend(&md, "- ", n, "\n");
  }
  return md;
}

std::string DrillReport::ToSvg() const {
  constexpr size_t kLabelRows = 5;
  constexpr double kW = 960, kH = 460, kL = 64, kR = 74, kT = 48 + 12.0 * kLabelRows, kB = 48;
  const double pw = kW - kL - kR, ph = kH - kT - kB;
  const Event* kill = Find("kill");
  const int64_t origin =
      kill ? kill->unix_ms : (timeline.empty() ? 0 : timeline.front().start_unix_ms);
  double x0 = 0, x1 = 1;
  if (!timeline.empty()) {
    x0 = (timeline.front().start_unix_ms - origin) / 1000.0;
    x1 = (timeline.back().start_unix_ms + 1000 - origin) / 1000.0;
  }
  for (const Event& e : events) {
    x0 = std::min(x0, (e.unix_ms - origin) / 1000.0);
    x1 = std::max(x1, (e.unix_ms - origin) / 1000.0);
  }
  x0 = std::floor(x0);
  x1 = std::ceil(x1);
  if (x1 <= x0) x1 = x0 + 1;
  double peak_rate = 0, peak_p99 = 0;
  for (const TimelineSecond& s : timeline) {
    peak_rate = std::max(peak_rate, s.error_rate);
    peak_p99 = std::max(peak_p99, s.p99_ms);
  }
  const double rate_max = std::min(1.0, std::max(0.05, NiceCeil(peak_rate * 1.1 * 100) / 100));
  const double p99_max = NiceCeil(std::max(10.0, peak_p99 * 1.1));
  auto X = [&](double t_s) { return kL + (t_s - x0) / (x1 - x0) * pw; };
  auto YRate = [&](double r) { return kT + ph - std::min(r, rate_max) / rate_max * ph; };
  auto YP99 = [&](double ms) { return kT + ph - std::min(ms, p99_max) / p99_max * ph; };

  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 "
      "%.0f %.0f\" font-family=\"sans-serif\" font-size=\"11\">\n",
      kW, kH, kW, kH);
  absl::StrAppendFormat(&svg, "<rect width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n", kW, kH);
  absl::StrAppendFormat(
      &svg, "<text x=\"%.0f\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", kL,
      Xml(absl::StrCat("Region-loss drill: ", region, " (", mode, ", ", duration_s, " s) — ",
                       started_utc)));
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.0f\" y=\"34\" fill=\"#555\">customer error rate (red, left "
                        "axis) and p99 latency (blue, right axis) per second; seconds from the "
                        "kill</text>\n",
                        kL);
  // Grid and axes.
  for (int i = 0; i <= 4; ++i) {
    double y = kT + ph * i / 4.0;
    absl::StrAppendFormat(
        &svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", kL, y,
        kL + pw, y);
    absl::StrAppendFormat(
        &svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#c0392b\">%s</text>\n",
        kL - 6, y + 4, absl::StrFormat("%g%%", 100 * rate_max * (4 - i) / 4.0));
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" fill=\"#2471a3\">%s</text>\n",
                          kL + pw + 6, y + 4, absl::StrFormat("%g ms", p99_max * (4 - i) / 4.0));
  }
  double step = NiceCeil((x1 - x0) / 12);
  for (double t = std::ceil(x0 / step) * step; t <= x1; t += step) {
    absl::StrAppendFormat(
        &svg, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", X(t), kT,
        X(t), kT + ph);
    absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                          X(t), kT + ph + 16, t);
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#555\">seconds "
                        "after the kill</text>\n",
                        kL + pw / 2, kH - 10);
  absl::StrAppendFormat(&svg,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                        "stroke=\"#999\"/>\n",
                        kL, kT, pw, ph);
  // The 1% line.
  if (rate_max > 0.01) {
    absl::StrAppendFormat(
        &svg,
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#c0392b\" "
        "stroke-dasharray=\"4 3\" stroke-width=\"0.8\"/><text x=\"%.1f\" "
        "y=\"%.1f\" fill=\"#c0392b\" font-size=\"10\">1%%</text>\n",
        kL, YRate(0.01), kL + pw, YRate(0.01), kL + 3, YRate(0.01) - 3);
  }
  // Error rate: a step area, one step per second.
  if (!timeline.empty()) {
    std::string path = absl::StrFormat(
        "M %.1f %.1f", X((timeline.front().start_unix_ms - origin) / 1000.0), YRate(0));
    for (const TimelineSecond& s : timeline) {
      double a = (s.start_unix_ms - origin) / 1000.0;
      absl::StrAppendFormat(&path, " L %.1f %.1f L %.1f %.1f", X(a), YRate(s.error_rate), X(a + 1),
                            YRate(s.error_rate));
    }
    absl::StrAppendFormat(&path, " L %.1f %.1f Z",
                          X((timeline.back().start_unix_ms - origin) / 1000.0 + 1), YRate(0));
    absl::StrAppendFormat(
        &svg,
        "<path d=\"%s\" fill=\"#e74c3c\" fill-opacity=\"0.35\" stroke=\"#c0392b\" "
        "stroke-width=\"1\"/>\n",
        path);
    std::string line;
    for (const TimelineSecond& s : timeline) {
      if (s.arrivals == 0) continue;
      double mid = (s.start_unix_ms - origin) / 1000.0 + 0.5;
      absl::StrAppendFormat(&line, "%s%.1f,%.1f", line.empty() ? "" : " ", X(mid), YP99(s.p99_ms));
    }
    absl::StrAppendFormat(&svg,
                          "<polyline points=\"%s\" fill=\"none\" stroke=\"#2471a3\" "
                          "stroke-width=\"1.6\"/>\n",
                          line);
  }
  // Events: a vertical line each; labels packed into rows above the plot, each label in the
  // first row where it does not overlap the previous one (about 5.6 px per character).
  std::vector<double> row_end(kLabelRows, -1e9);
  for (const Event& e : events) {
    double x = X((e.unix_ms - origin) / 1000.0);
    std::string label =
        kill ? absl::StrFormat("%s %+.1fs", e.name, (e.unix_ms - kill->unix_ms) / 1000.0) : e.name;
    const double width = 5.6 * static_cast<double>(label.size()) + 6;
    size_t row = 0;
    while (row + 1 < row_end.size() && row_end[row] > x) ++row;
    row_end[row] = x + width;
    const char* color = EventColor(e.name);
    const double top = kT - 6 - 12.0 * static_cast<double>(kLabelRows - row);
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                          "stroke-width=\"1.4\" stroke-dasharray=\"5 2\"/>\n",
                          x, top + 2, x, kT + ph, color);
    absl::StrAppendFormat(&svg,
                          "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\" font-size=\"10\">%s</text>\n",
                          x + 2, top + 9, color, Xml(label));
  }
  svg += "</svg>\n";
  return svg;
}

absl::Status WriteReportFiles(const DrillReport& report, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  auto write = [&](const std::string& name, const std::string& text) -> absl::Status {
    std::ofstream out(dir + "/" + name, std::ios::trunc);
    out << text;
    out.close();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", dir, "/", name));
    return absl::OkStatus();
  };
  if (absl::Status st = write("report.md", report.ToMarkdown()); !st.ok()) return st;
  if (absl::Status st = write("report.json", report.ToJson().dump(2) + "\n"); !st.ok()) return st;
  return write("timeline.svg", report.ToSvg());
}

}  // namespace meridian::failover::drill
