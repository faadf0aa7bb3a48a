#include "tests/load/timeline.h"

#include <cassert>

namespace meridian::load {

bool IsCustomerError(std::string_view error_class) {
  if (error_class.empty()) return false;
  if (error_class.substr(0, 4) == "4xx:") return error_class == "4xx:429";
  return true;  // connect, connection, timeout, protocol, drain_abort, 5xx, shed, http:N
}

Timeline::Timeline(int64_t t0_unix_ms, std::vector<std::string> regions)
    : t0_unix_ms_(t0_unix_ms), regions_(std::move(regions)) {}

Timeline::Bucket& Timeline::At(int64_t second) {
  Bucket& b = buckets_[second];
  if (b.regions.empty()) b.regions.resize(regions_.size());
  return b;
}

void Timeline::Arrival(int64_t second, int region, bool checkout) {
  assert(second >= 0 && region >= 0 && static_cast<size_t>(region) < regions_.size());
  Bucket& b = At(second);
  ++b.arrivals;
  ++b.regions[static_cast<size_t>(region)].arrivals;
  if (checkout) ++b.checkouts;
}

void Timeline::Done(int64_t second, int region, bool checkout, std::string_view error_class,
                    int64_t latency_us) {
  Bucket& b = At(second);
  ++b.completed;
  if (latency_us >= 0) b.latency_us.Record(latency_us);
  if (IsCustomerError(error_class)) {
    ++b.errors;
    ++b.error_classes[std::string(error_class)];
    ++b.regions[static_cast<size_t>(region)].errors;
    if (checkout) ++b.checkout_errors;
  } else if (!error_class.empty()) {
    ++b.client_4xx;
  }
}

void Timeline::Acked(int64_t second) { ++At(second).acked; }

nlohmann::ordered_json Timeline::ToJson(int64_t second, const Bucket& b) const {
  auto ms = [](int64_t us) { return static_cast<double>(us) / 1000.0; };
  nlohmann::ordered_json regions = nlohmann::ordered_json::object();
  for (size_t i = 0; i < regions_.size(); ++i) {
    regions[regions_[i]] = {{"arrivals", b.regions[i].arrivals}, {"errors", b.regions[i].errors}};
  }
  return {{"second", second},
          {"start_unix_ms", t0_unix_ms_ + 1000 * second},
          {"arrivals", b.arrivals},
          {"completed", b.completed},
          {"errors", b.errors},
          {"error_rate",
           b.arrivals > 0 ? static_cast<double>(b.errors) / static_cast<double>(b.arrivals) : 0.0},
          {"errors_by_class", b.error_classes},
          {"client_4xx", b.client_4xx},
          {"checkouts", b.checkouts},
          {"checkout_errors", b.checkout_errors},
          {"acked_orders", b.acked},
          {"latency_ms",
           {{"p50", ms(b.latency_us.ValueAtQuantile(0.5))},
            {"p99", ms(b.latency_us.ValueAtQuantile(0.99))},
            {"max", ms(b.latency_us.max())},
            {"samples", b.latency_us.count()}}},
          {"regions", regions}};
}

std::vector<nlohmann::ordered_json> Timeline::TakeFinished(int64_t now_second, bool all) {
  std::vector<nlohmann::ordered_json> out;
  while (!buckets_.empty()) {
    auto it = buckets_.begin();
    bool finished = it->first < now_second && it->second.completed >= it->second.arrivals;
    if (!finished && !all) break;
    out.push_back(ToJson(it->first, it->second));
    buckets_.erase(it);
  }
  return out;
}

}  // namespace meridian::load
