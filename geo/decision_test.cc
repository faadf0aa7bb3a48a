#include "geo/decision.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>

namespace meridian::geo {
namespace {

constexpr GeoPoint kNewYork{40.7128, -74.0060};
constexpr GeoPoint kLondon{51.5074, -0.1278};
constexpr GeoPoint kFrankfurt{50.1109, 8.6821};
constexpr GeoPoint kSingapore{1.3521, 103.8198};

TEST(GreatCircle, KnownDistances) {
  // Reference values from the haversine formula on a 6371 km sphere, to 0.5 %.
  EXPECT_NEAR(GreatCircleKm(kNewYork, kLondon), 5570, 30);
  EXPECT_NEAR(GreatCircleKm(kLondon, kFrankfurt), 637, 5);
  EXPECT_NEAR(GreatCircleKm(kLondon, kSingapore), 10870, 60);
  EXPECT_DOUBLE_EQ(GreatCircleKm(kLondon, kLondon), 0);
  // Antipodes: half the circumference, no NaN from rounding.
  EXPECT_NEAR(GreatCircleKm({0, 0}, {0, 180}), std::numbers::pi * 6371.0088, 0.01);
  // Across the antimeridian is short.
  EXPECT_NEAR(GreatCircleKm({0, 179.5}, {0, -179.5}), 111.2, 0.5);
}

TEST(Decide, NearestHealthyThenNextNearestThenLastResort) {
  std::vector<RegionView> regions = {{kNewYork, true}, {kLondon, true}, {kSingapore, true}};
  DecisionPolicy policy;
  Decision d = Decide(kFrankfurt, regions, policy);
  EXPECT_EQ(d.regions, std::vector<size_t>{1});
  EXPECT_EQ(d.ttl_s, 5u);
  EXPECT_FALSE(d.last_resort);

  regions[1].healthy = false;  // London down: Frankfurt's clients go to New York (6200 km)
  d = Decide(kFrankfurt, regions, policy);
  EXPECT_EQ(d.regions, std::vector<size_t>{0});

  regions[0].healthy = false;
  regions[2].healthy = false;
  d = Decide(kFrankfurt, regions, policy);
  EXPECT_TRUE(d.last_resort);
  EXPECT_EQ(d.regions, (std::vector<size_t>{0, 1, 2}));
  EXPECT_EQ(d.ttl_s, 1u);

  policy.last_resort = LastResort::kFixedRegion;
  policy.last_resort_region = 2;
  policy.last_resort_ttl_s = 3;
  d = Decide(kFrankfurt, regions, policy);
  EXPECT_EQ(d.regions, std::vector<size_t>{2});
  EXPECT_EQ(d.ttl_s, 3u);
}

TEST(Decide, TiesGoToTheLowerIndex) {
  std::vector<RegionView> regions = {{kLondon, true}, {kLondon, true}};
  EXPECT_EQ(Decide(kLondon, regions, {}).regions, std::vector<size_t>{0});
  regions[0].healthy = false;
  EXPECT_EQ(Decide(kLondon, regions, {}).regions, std::vector<size_t>{1});
}

rc::Gen<GeoPoint> Points() {
  return rc::gen::apply(
      [](int lat_milli, int lon_milli) {
        return GeoPoint{lat_milli / 1000.0, lon_milli / 1000.0};
      },
      rc::gen::inRange(-90000, 90001), rc::gen::inRange(-180000, 180001));
}

RC_GTEST_PROP(Decide, AnswerIsAlwaysTheNearestHealthyRegionWhenAnyIsHealthy, ()) {
  const GeoPoint client = *Points();
  const auto regions =
      *rc::gen::nonEmpty(rc::gen::container<std::vector<RegionView>>(rc::gen::apply(
          [](GeoPoint p, bool h) {
            return RegionView{p, h};
          },
          Points(), rc::gen::arbitrary<bool>())));
  DecisionPolicy policy;
  policy.last_resort = *rc::gen::element(LastResort::kAllRegions, LastResort::kFixedRegion);
  policy.last_resort_region = *rc::gen::inRange<size_t>(0, regions.size());
  const Decision d = Decide(client, regions, policy);
  const bool any_healthy =
      std::any_of(regions.begin(), regions.end(), [](const RegionView& r) { return r.healthy; });
  RC_ASSERT(!d.regions.empty());
  if (any_healthy) {
    RC_ASSERT(d.regions.size() == 1u);
    RC_ASSERT(!d.last_resort);
    RC_ASSERT(d.ttl_s == policy.ttl_s);
    const RegionView& chosen = regions[d.regions[0]];
    RC_ASSERT(chosen.healthy);
    const double km = GreatCircleKm(client, chosen.location);
    for (const RegionView& r : regions) {
      if (r.healthy) RC_ASSERT(km <= GreatCircleKm(client, r.location));
    }
  } else {
    RC_ASSERT(d.last_resort);
    RC_ASSERT(d.ttl_s == policy.last_resort_ttl_s);
    if (policy.last_resort == LastResort::kAllRegions) {
      RC_ASSERT(d.regions.size() == regions.size());
    } else {
      RC_ASSERT(d.regions == std::vector<size_t>{policy.last_resort_region});
    }
  }
}

RC_GTEST_PROP(GreatCircle, IsAMetricOnTheSphere, ()) {
  const GeoPoint a = *Points(), b = *Points(), c = *Points();
  const double ab = GreatCircleKm(a, b);
  RC_ASSERT(std::isfinite(ab));
  RC_ASSERT(ab >= 0);
  RC_ASSERT(ab <= std::numbers::pi * 6371.0088 + 1e-6);
  RC_ASSERT(std::fabs(ab - GreatCircleKm(b, a)) < 1e-6);
  RC_ASSERT(GreatCircleKm(a, c) <= ab + GreatCircleKm(b, c) + 1e-6);
}

}  // namespace
}  // namespace meridian::geo
