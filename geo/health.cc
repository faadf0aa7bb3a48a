#include "geo/health.h"

#include <cassert>

#include "absl/strings/str_cat.h"
#include "common/strings.h"

namespace meridian::geo {

std::string_view HealthName(Health h) { return h == Health::kUp ? "up" : "down"; }

std::string_view OverrideName(Override o) {
  switch (o) {
    case Override::kAuto:
      return "auto";
    case Override::kUp:
      return "up";
    case Override::kDown:
      return "down";
  }
  return "auto";
}

std::optional<Override> ParseOverride(std::string_view text) {
  if (text == "auto") return Override::kAuto;
  if (text == "up") return Override::kUp;
  if (text == "down") return Override::kDown;
  return std::nullopt;
}

Health RegionHealth::effective() const {
  switch (override_state) {
    case Override::kUp:
      return Health::kUp;
    case Override::kDown:
      return Health::kDown;
    case Override::kAuto:
      break;
  }
  return probe_state;
}

HealthTracker::HealthTracker(size_t region_count, HealthPolicy policy, int64_t now_ms)
    : policy_(policy), regions_(region_count) {
  assert(policy.fall >= 1 && policy.rise >= 1);
  for (RegionHealth& r : regions_) {
    r.probe_state = policy.initial;
    r.probe_state_since_ms = now_ms;
    r.override_since_ms = now_ms;  // "auto" since the start
    r.effective_since_ms = now_ms;
  }
}

HealthTransition HealthTracker::RecordProbe(size_t region, bool ok, std::string_view error,
                                            int64_t now_ms) {
  RegionHealth& r = regions_.at(region);
  const Health effective_before = r.effective();
  HealthTransition t;
  ++r.probes_total;
  r.last_probe_ms = now_ms;
  if (ok) {
    r.last_probe_error.clear();
    r.consecutive_failures = 0;
    if (r.probe_state == Health::kDown && ++r.consecutive_successes >= policy_.rise) {
      r.probe_state = Health::kUp;
      r.consecutive_successes = 0;
      r.probe_state_since_ms = now_ms;
      t.probe_changed = true;
      t.reason = absl::StrCat(policy_.rise, " consecutive good probes");
    }
  } else {
    ++r.probe_failures_total;
    r.last_probe_error = std::string(error);
    r.consecutive_successes = 0;
    if (r.probe_state == Health::kUp && ++r.consecutive_failures >= policy_.fall) {
      r.probe_state = Health::kDown;
      r.consecutive_failures = 0;
      r.probe_state_since_ms = now_ms;
      t.probe_changed = true;
      t.reason = absl::StrCat(policy_.fall, " consecutive probe failures: ", AbslView(error));
    }
  }
  t.probe_state = r.probe_state;
  t.effective = r.effective();
  if (t.effective != effective_before) {
    t.effective_changed = true;
    r.effective_since_ms = now_ms;
  }
  return t;
}

HealthTransition HealthTracker::SetOverride(size_t region, Override o, std::string_view reason,
                                            int64_t now_ms) {
  RegionHealth& r = regions_.at(region);
  const Health effective_before = r.effective();
  HealthTransition t;
  if (o != r.override_state) r.override_since_ms = now_ms;
  r.override_state = o;
  // Kept for "auto" too: who cleared an override, and why, is what a failover controller asks
  // (did a peer's recovery lift the "down" it would put back?) and what an operator reads.
  r.override_reason = std::string(reason);
  t.probe_state = r.probe_state;
  t.effective = r.effective();
  t.reason = o == Override::kAuto
                 ? absl::StrCat("override cleared (", AbslView(reason), "); probes say ",
                                AbslView(HealthName(r.probe_state)))
                 : absl::StrCat("override ", AbslView(OverrideName(o)), ": ", AbslView(reason));
  if (t.effective != effective_before) {
    t.effective_changed = true;
    r.effective_since_ms = now_ms;
  }
  return t;
}

}  // namespace meridian::geo
