#pragma once

// Region health as a pure state machine: probe results with thresholds and hysteresis, operator
// (or failover controller) overrides, and the effective health that routing uses. Time is a
// number passed in by the caller (milliseconds on a monotonic clock), so tests drive it exactly.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::geo {

enum class Health { kUp, kDown };
enum class Override { kAuto, kUp, kDown };

[[nodiscard]] std::string_view HealthName(Health h);      // "up", "down"
[[nodiscard]] std::string_view OverrideName(Override o);  // "auto", "up", "down"
[[nodiscard]] std::optional<Override> ParseOverride(std::string_view text);

struct HealthPolicy {
  int fall = 3;                  // consecutive failed probes that take an up region down; >= 1
  int rise = 5;                  // consecutive good probes that bring a down region up; >= 1
  Health initial = Health::kUp;  // probe state before the first probes
};

// Everything known about one region's health. Value type.
struct RegionHealth {
  Health probe_state = Health::kUp;
  int consecutive_failures = 0;   // counts towards `fall` while probe_state is up
  int consecutive_successes = 0;  // counts towards `rise` while probe_state is down
  Override override_state = Override::kAuto;
  std::string override_reason;    // of the last SetOverride, "auto" included
  int64_t override_since_ms = 0;  // when override_state last changed (or the start)
  int64_t probe_state_since_ms = 0;
  int64_t effective_since_ms = 0;
  int64_t last_probe_ms = -1;    // -1: never probed
  std::string last_probe_error;  // empty after a good probe
  uint64_t probes_total = 0;
  uint64_t probe_failures_total = 0;

  // The override when one is set, else the probe state.
  [[nodiscard]] Health effective() const;
};

// What one call changed. `probe_changed` and `effective_changed` are independent: a probe state
// change under an override leaves the effective health alone, and setting an override may change
// the effective health without any probe.
struct HealthTransition {
  bool probe_changed = false;
  bool effective_changed = false;
  Health probe_state = Health::kUp;
  Health effective = Health::kUp;
  std::string reason;  // why, for the log line: "3 consecutive probe failures: HTTP 503"
};

// Hysteresis: an up region goes down only after `fall` consecutive failures, a down region comes
// back only after `rise` consecutive successes; a result of the other kind resets the count.
// An override (kUp/kDown) decides the effective health until it is set back to kAuto; probes go
// on meanwhile, so clearing the override returns to a current probe state.
//
// Not thread-safe: the owner serializes calls (GeoService holds a mutex).
class HealthTracker {
 public:
  // REQUIRES: policy.fall >= 1, policy.rise >= 1.
  HealthTracker(size_t region_count, HealthPolicy policy, int64_t now_ms);

  // REQUIRES: region < size(). `error` describes a failure (ignored for a success).
  HealthTransition RecordProbe(size_t region, bool ok, std::string_view error, int64_t now_ms);
  HealthTransition SetOverride(size_t region, Override o, std::string_view reason, int64_t now_ms);

  [[nodiscard]] size_t size() const { return regions_.size(); }
  [[nodiscard]] const RegionHealth& region(size_t i) const { return regions_[i]; }
  [[nodiscard]] const HealthPolicy& policy() const { return policy_; }

 private:
  HealthPolicy policy_;
  std::vector<RegionHealth> regions_;
};

}  // namespace meridian::geo
