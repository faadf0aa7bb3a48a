#include "geo/decision.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace meridian::geo {
namespace {

constexpr double kEarthMeanRadiusKm = 6371.0088;  // IUGG mean radius

double Radians(double degrees) { return degrees * std::numbers::pi / 180.0; }

}  // namespace

double GreatCircleKm(GeoPoint a, GeoPoint b) {
  const double lat1 = Radians(a.lat_deg);
  const double lat2 = Radians(b.lat_deg);
  const double dlat = lat2 - lat1;
  const double dlon = Radians(b.lon_deg - a.lon_deg);
  const double s = std::sin(dlat / 2) * std::sin(dlat / 2) +
                   std::cos(lat1) * std::cos(lat2) * std::sin(dlon / 2) * std::sin(dlon / 2);
  // Rounding can push s a hair outside [0, 1] for antipodal or equal points.
  const double clamped = std::clamp(s, 0.0, 1.0);
  return 2 * kEarthMeanRadiusKm * std::asin(std::sqrt(clamped));
}

std::optional<size_t> NearestHealthy(GeoPoint client, const std::vector<RegionView>& regions) {
  std::optional<size_t> best;
  double best_km = 0;
  for (size_t i = 0; i < regions.size(); ++i) {
    if (!regions[i].healthy) continue;
    const double km = GreatCircleKm(client, regions[i].location);
    if (!best || km < best_km) {
      best = i;
      best_km = km;
    }
  }
  return best;
}

Decision Decide(GeoPoint client, const std::vector<RegionView>& regions,
                const DecisionPolicy& policy) {
  Decision d;
  if (std::optional<size_t> nearest = NearestHealthy(client, regions)) {
    d.regions = {*nearest};
    d.ttl_s = policy.ttl_s;
    return d;
  }
  d.last_resort = true;
  d.ttl_s = policy.last_resort_ttl_s;
  if (regions.empty()) return d;
  if (policy.last_resort == LastResort::kFixedRegion &&
      policy.last_resort_region < regions.size()) {
    d.regions = {policy.last_resort_region};
  } else {
    d.regions.resize(regions.size());
    for (size_t i = 0; i < regions.size(); ++i) d.regions[i] = i;
  }
  return d;
}

}  // namespace meridian::geo
