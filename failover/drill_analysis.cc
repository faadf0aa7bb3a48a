#include "failover/drill_analysis.h"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace meridian::failover::drill {
namespace {

using Json = nlohmann::json;

// Splits into non-empty lines; a last line without its newline is dropped (a file still being
// written).
std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string_view::npos) break;  // cut short: written after our read began
    std::string_view line = text.substr(start, nl - start);
    if (!line.empty()) out.push_back(line);
    start = nl + 1;
  }
  return out;
}

absl::Status BadLine(const char* what, size_t index, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(what, " line ", index + 1, ": ", std::string(why)));
}

int64_t Int(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<int64_t>() : 0;
}
double Num(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0.0;
}
std::string Str(const Json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

std::string Seconds(int64_t ms) {
  return absl::StrFormat("%.1f s", static_cast<double>(ms) / 1000.0);
}

}  // namespace

absl::StatusOr<std::vector<TimelineSecond>> ParseTimeline(std::string_view jsonl) {
  std::vector<TimelineSecond> out;
  auto lines = Lines(jsonl);
  for (size_t i = 0; i < lines.size(); ++i) {
    Json j = Json::parse(lines[i], nullptr, false);
    if (j.is_discarded() || !j.is_object()) return BadLine("timeline", i, "not a JSON object");
    if (!j.contains("start_unix_ms") || !j["start_unix_ms"].is_number_integer() ||
        !j.contains("arrivals") || !j["arrivals"].is_number_integer()) {
      return BadLine("timeline", i, "no start_unix_ms/arrivals");
    }
    TimelineSecond s;
    s.start_unix_ms = Int(j, "start_unix_ms");
    s.arrivals = Int(j, "arrivals");
    s.errors = Int(j, "errors");
    s.error_rate = Num(j, "error_rate");
    s.acked = Int(j, "acked_orders");
    if (j.contains("latency_ms") && j["latency_ms"].is_object()) {
      s.p50_ms = Num(j["latency_ms"], "p50");
      s.p99_ms = Num(j["latency_ms"], "p99");
    }
    if (j.contains("errors_by_class") && j["errors_by_class"].is_object()) {
      for (const auto& [k, v] : j["errors_by_class"].items()) {
        if (v.is_number_integer()) s.errors_by_class[k] = v.get<int64_t>();
      }
    }
    if (j.contains("regions") && j["regions"].is_object()) {
      for (const auto& [k, v] : j["regions"].items()) {
        if (v.is_object()) s.regions[k] = {Int(v, "arrivals"), Int(v, "errors")};
      }
    }
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const TimelineSecond& a, const TimelineSecond& b) {
    return a.start_unix_ms < b.start_unix_ms;
  });
  return out;
}

absl::StatusOr<std::vector<Ack>> ParseAcks(std::string_view jsonl) {
  std::vector<Ack> out;
  auto lines = Lines(jsonl);
  for (size_t i = 0; i < lines.size(); ++i) {
    Json j = Json::parse(lines[i], nullptr, false);
    if (j.is_discarded() || !j.is_object()) return BadLine("acks", i, "not a JSON object");
    Ack a;
    a.order_id = Str(j, "order_id");
    a.acked_unix_ms = Int(j, "acked_unix_ms");
    a.region = Str(j, "region");
    a.durability = Str(j, "durability");
    a.customer = Str(j, "customer");
    if (a.order_id.empty() || a.region.empty() || a.acked_unix_ms <= 0) {
      return BadLine("acks", i, "needs order_id, region and acked_unix_ms");
    }
    if (j.contains("items") && j["items"].is_array()) {
      for (const Json& item : j["items"]) {
        if (item.is_object()) a.items.emplace_back(Str(item, "sku"), Int(item, "quantity"));
      }
    }
    out.push_back(std::move(a));
  }
  return out;
}

std::map<std::string, OrderRow> MergeOrders(const std::vector<OrderRow>& rows) {
  std::map<std::string, OrderRow> out;
  for (const OrderRow& r : rows) {
    auto [it, inserted] = out.emplace(r.order_id, r);
    if (inserted) continue;
    OrderRow& have = it->second;
    if (std::pair(r.epoch, r.version) > std::pair(have.epoch, have.version)) {
      std::vector<std::pair<std::string, int64_t>> items = have.items;
      have = r;
      if (have.items.empty()) have.items = std::move(items);  // items never change
    } else if (have.items.empty()) {
      have.items = r.items;
    }
  }
  return out;
}

bool HoldsStock(std::string_view status) { return status == "pending_payment" || status == "paid"; }

std::vector<StockFigures> ComputeStock(const std::map<std::string, OrderRow>& orders,
                                       const std::map<std::string, int64_t>& restocked) {
  std::map<std::string, StockFigures> by_sku;
  for (const auto& [sku, units] : restocked) {
    by_sku[sku].sku = sku;
    by_sku[sku].restocked = units;
  }
  for (const auto& [id, order] : orders) {
    if (!HoldsStock(order.status)) continue;
    for (const auto& [sku, qty] : order.items) {
      auto it = by_sku.find(sku);
      if (it == by_sku.end()) continue;  // not a SKU the drill accounts for
      it->second.sold += qty;
      ++it->second.orders;
    }
  }
  std::vector<StockFigures> out;
  for (auto& [sku, f] : by_sku) {
    f.oversold = std::max<int64_t>(0, f.sold - f.restocked);
    out.push_back(f);
  }
  return out;
}

RpoFigures ComputeRpo(const std::vector<Ack>& acks, const std::string& lost_region,
                      const std::set<std::string>& present, int64_t kill_unix_ms,
                      int64_t checked_unix_ms, double lag_p99_ms) {
  RpoFigures f;
  f.lag_p99_ms = lag_p99_ms;
  const int64_t window_start = kill_unix_ms - static_cast<int64_t>(lag_p99_ms + 0.5);
  for (const Ack& a : acks) {
    if (a.region != lost_region || a.acked_unix_ms > checked_unix_ms) continue;
    ++f.acked_by_lost;
    const bool sync = a.durability == "sync-peer";
    ++(sync ? f.acked_sync_peer : f.acked_async);
    const bool in_window = a.acked_unix_ms >= window_start;
    if (in_window) ++f.async_window_orders;
    if (present.count(a.order_id)) continue;
    ++(sync ? f.missing_sync_peer : f.missing_async);
    if (!in_window) ++f.missing_before_window;
    if (f.missing_examples.size() < 10) f.missing_examples.push_back(a.order_id);
  }
  return f;
}

ErrorFigures AnalyzeErrors(const std::vector<TimelineSecond>& seconds, int64_t kill_unix_ms,
                           int64_t return_unix_ms, double threshold) {
  ErrorFigures f;
  int64_t base_arrivals = 0, base_errors = 0;
  auto over = [&](const TimelineSecond& s) { return s.arrivals > 0 && s.error_rate >= threshold; };
  // A second belongs to the outage when it ends after the kill and starts before the return.
  for (const TimelineSecond& s : seconds) {
    const int64_t end = s.start_unix_ms + 1000;
    if (end <= kill_unix_ms) {
      base_arrivals += s.arrivals;
      base_errors += s.errors;
      f.baseline_p99_ms = std::max(f.baseline_p99_ms, s.p99_ms);
      continue;
    }
    f.peak_error_rate = std::max(f.peak_error_rate, s.error_rate);
    f.peak_p99_ms = std::max(f.peak_p99_ms, s.p99_ms);
    if (over(s)) ++f.seconds_over_threshold;
    if (s.start_unix_ms < return_unix_ms) {
      f.errors_in_outage += s.errors;
      f.arrivals_in_outage += s.arrivals;
    } else {
      f.failback_peak_error_rate = std::max(f.failback_peak_error_rate, s.error_rate);
    }
  }
  f.baseline_error_rate =
      base_arrivals > 0 ? static_cast<double>(base_errors) / static_cast<double>(base_arrivals) : 0;
  // Walk back from the return: the earliest second after the kill from which all are under.
  std::optional<int64_t> ok_from;
  bool seen_outage = false;
  for (auto it = seconds.rbegin(); it != seconds.rend(); ++it) {
    const TimelineSecond& s = *it;
    if (s.start_unix_ms >= return_unix_ms) continue;
    if (s.start_unix_ms + 1000 <= kill_unix_ms) break;
    seen_outage = true;
    if (over(s)) break;
    ok_from = s.start_unix_ms;
  }
  if (seen_outage) f.outage_ok_unix_ms = ok_from;
  // After the return, the same from the end.
  std::optional<int64_t> back_from;
  bool seen_after = false;
  for (auto it = seconds.rbegin(); it != seconds.rend(); ++it) {
    const TimelineSecond& s = *it;
    if (s.start_unix_ms < return_unix_ms) break;
    seen_after = true;
    if (over(s)) break;
    back_from = s.start_unix_ms;
  }
  if (seen_after) f.failback_ok_unix_ms = back_from;
  return f;
}

std::vector<Target> JudgeTargets(const Observed& o) {
  std::vector<Target> t;
  auto timing = [&](std::string name, std::string goal, const std::optional<int64_t>& ms,
                    int64_t limit_ms) {
    Target row{std::move(name), std::move(goal), ms ? Seconds(*ms) : "never seen", false, false};
    row.pass = ms.has_value() && *ms <= limit_ms;
    t.push_back(std::move(row));
  };
  timing("detection", "region declared lost <= 3 s after the kill", o.detection_ms, 3000);
  timing("dns switch", "DNS no longer returns the region <= 10 s after the kill", o.dns_switch_ms,
         10000);
  timing("lease takeover",
         absl::StrCat("its orders owned by a survivor <= lease TTL + 3 s (",
                      Seconds(o.lease_ttl_ms + 3000), ")"),
         o.takeover_ms, o.lease_ttl_ms + 3000);
  timing("customer errors", "error rate back under 1% <= 15 s after the kill", o.errors_ok_ms,
         15000);

  const RpoFigures& r = o.rpo;
  const std::string window_goal =
      absl::StrFormat("counted; <= orders in the p99-lag window (%.0f ms)", r.lag_p99_ms);
  // The RPO targets need the check to have run and the lost region to have acknowledged orders.
  const bool rpo_seen = o.rpo_checked && r.acked_by_lost > 0;
  auto rpo_measured = [&](const std::string& figures) {
    if (!o.rpo_checked) return std::string("not checked (see the notes)");
    if (r.acked_by_lost == 0)
      return std::string("no order acknowledged by the region: nothing to check");
    return figures;
  };
  if (o.durability == "sync-peer") {
    t.push_back(
        Target{"RPO (sync-peer)", "0 sync-peer acknowledged orders missing at survivors",
               rpo_measured(absl::StrCat(r.missing_sync_peer, " missing of ", r.acked_sync_peer)),
               rpo_seen && r.missing_sync_peer == 0, true});
    if (r.acked_async > 0) {
      // Acknowledged as async in sync-peer mode: no peer confirmed in time (the answer said so).
      t.push_back(
          Target{"RPO (answered async)", window_goal,
                 absl::StrCat(r.missing_async, " missing of ", r.acked_async, " (window: ",
                              r.async_window_orders, ", older: ", r.missing_before_window, ")"),
                 r.missing_async <= r.async_window_orders && r.missing_before_window == 0, false});
    }
  } else {
    const int64_t missing = r.missing_async + r.missing_sync_peer;
    t.push_back(Target{"RPO (async)", window_goal,
                       rpo_measured(absl::StrCat(missing, " missing of ", r.acked_by_lost,
                                                 " (window: ", r.async_window_orders,
                                                 ", older: ", r.missing_before_window, ")")),
                       rpo_seen && missing <= r.async_window_orders && r.missing_before_window == 0,
                       false});
  }
  int64_t oversold = 0, sold = 0, restocked = 0;
  for (const StockFigures& s : o.stock) {
    oversold += s.oversold;
    sold += s.sold;
    restocked += s.restocked;
  }
  t.push_back(Target{"oversell", "0 units sold beyond stock (and some units sold)",
                     absl::StrCat(oversold, " (sold ", sold, " of ", restocked, " units, ",
                                  o.stock.size(), " SKUs)"),
                     oversold == 0 && !o.stock.empty() && sold > 0, true});
  t.push_back(Target{
      "acknowledged orders", "every order acknowledged in the run is in every region at the end",
      o.acked_missing_after_recovery < 0
          ? std::string("not checked (see the notes)")
          : absl::StrCat(o.acked_missing_after_recovery, " missing of ", o.acked_total),
      o.acked_missing_after_recovery == 0 && o.acked_total > 0, true});
  t.push_back(
      Target{"region back", "the region returns, catches up and gets its lease and DNS back",
             o.full_recovery_ms
                 ? absl::StrCat("full recovery ", Seconds(*o.full_recovery_ms), " after the return")
                 : std::string("not recovered"),
             o.region_back && o.full_recovery_ms.has_value(), true});
  t.push_back(Target{"carts converged", "sampled carts identical in every region after failback",
                     absl::StrCat(o.carts_converged ? "identical" : "DIFFERENT", " (",
                                  o.carts_compared, " customers)"),
                     o.carts_converged && o.carts_compared > 0, true});
  return t;
}

}  // namespace meridian::failover::drill
