#pragma once

// The routing decision, as a pure function: given where the client is and which regions are
// healthy, which region(s) to answer with and for how long. No I/O, no clock, no randomness:
// the same inputs always give the same answer.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace meridian::geo {

// A point on the globe in degrees. REQUIRES (checked by the config loader): -90 <= lat_deg <= 90,
// -180 <= lon_deg <= 180.
struct GeoPoint {
  double lat_deg = 0;
  double lon_deg = 0;
};

// Great-circle distance in km on a sphere of the Earth's mean radius (haversine formula).
// Symmetric, >= 0, 0 for equal points, at most half the circumference (~20015 km).
[[nodiscard]] double GreatCircleKm(GeoPoint a, GeoPoint b);

// What Decide needs to know about one region.
struct RegionView {
  GeoPoint location;
  bool healthy = false;
};

// The nearest healthy region to `client`, or nullopt when none is healthy. Ties (equal distance)
// go to the lower index, so the choice is deterministic.
[[nodiscard]] std::optional<size_t> NearestHealthy(GeoPoint client,
                                                   const std::vector<RegionView>& regions);

enum class LastResort {
  kAllRegions,   // answer with every region's addresses
  kFixedRegion,  // answer with one configured region
};

struct DecisionPolicy {
  uint32_t ttl_s = 5;
  LastResort last_resort = LastResort::kAllRegions;
  size_t last_resort_region = 0;  // kFixedRegion only; REQUIRES: < regions.size()
  uint32_t last_resort_ttl_s = 1;
};

struct Decision {
  // Indexes into the regions, ascending. Never empty when there is at least one region.
  std::vector<size_t> regions;
  uint32_t ttl_s = 0;
  bool last_resort = false;  // true when no region was healthy
};

// Invariants (property-tested):
// - if any region is healthy: exactly one region, healthy, and none healthy is nearer; ttl =
//   policy.ttl_s; last_resort false;
// - if none is healthy: the policy's last resort (all regions, or the fixed one) with
//   policy.last_resort_ttl_s; last_resort true.
[[nodiscard]] Decision Decide(GeoPoint client, const std::vector<RegionView>& regions,
                              const DecisionPolicy& policy);

}  // namespace meridian::geo
