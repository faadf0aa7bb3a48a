#include "geo/health.h"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

namespace meridian::geo {
namespace {

TEST(HealthTracker, GoesDownAfterFallFailuresAndUpAfterRiseSuccesses) {
  HealthTracker t(2, HealthPolicy{.fall = 3, .rise = 5, .initial = Health::kUp}, 1000);
  EXPECT_EQ(t.region(0).effective(), Health::kUp);
  int64_t now = 1000;
  // Two failures and a success: the count starts over (hysteresis against flapping).
  EXPECT_FALSE(t.RecordProbe(0, false, "HTTP 503", now += 500).effective_changed);
  EXPECT_FALSE(t.RecordProbe(0, false, "HTTP 503", now += 500).effective_changed);
  EXPECT_FALSE(t.RecordProbe(0, true, "", now += 500).effective_changed);
  EXPECT_FALSE(t.RecordProbe(0, false, "timeout", now += 500).effective_changed);
  EXPECT_FALSE(t.RecordProbe(0, false, "timeout", now += 500).effective_changed);
  HealthTransition down = t.RecordProbe(0, false, "connection refused", now += 500);
  EXPECT_TRUE(down.effective_changed);
  EXPECT_TRUE(down.probe_changed);
  EXPECT_EQ(down.effective, Health::kDown);
  EXPECT_EQ(down.reason, "3 consecutive probe failures: connection refused");
  EXPECT_EQ(t.region(0).effective_since_ms, now);
  EXPECT_EQ(t.region(0).last_probe_error, "connection refused");
  EXPECT_EQ(t.region(1).effective(), Health::kUp);  // regions are independent

  for (int i = 0; i < 4; ++i)
    EXPECT_FALSE(t.RecordProbe(0, true, "", now += 500).effective_changed);
  EXPECT_FALSE(t.RecordProbe(0, false, "blip", now += 500).effective_changed);  // resets rise
  for (int i = 0; i < 4; ++i)
    EXPECT_FALSE(t.RecordProbe(0, true, "", now += 500).effective_changed);
  HealthTransition up = t.RecordProbe(0, true, "", now += 500);
  EXPECT_TRUE(up.effective_changed);
  EXPECT_EQ(up.effective, Health::kUp);
  EXPECT_EQ(up.reason, "5 consecutive good probes");
  EXPECT_EQ(t.region(0).probes_total, 16u);         // 6 + 4 + 1 + 4 + 1
  EXPECT_EQ(t.region(0).probe_failures_total, 6u);  // 5 before going down + the blip
  EXPECT_TRUE(t.region(0).last_probe_error.empty());
}

TEST(HealthTracker, InitialDownNeedsRiseSuccesses) {
  HealthTracker t(1, HealthPolicy{.fall = 1, .rise = 2, .initial = Health::kDown}, 0);
  EXPECT_EQ(t.region(0).effective(), Health::kDown);
  EXPECT_FALSE(t.RecordProbe(0, true, "", 1).effective_changed);
  EXPECT_TRUE(t.RecordProbe(0, true, "", 2).effective_changed);
  EXPECT_TRUE(t.RecordProbe(0, false, "x", 3).effective_changed);  // fall = 1
}

TEST(HealthTracker, OverrideWinsUntilAutoAndProbesGoOnUnderneath) {
  HealthTracker t(1, HealthPolicy{.fall = 2, .rise = 2, .initial = Health::kUp}, 0);
  HealthTransition forced = t.SetOverride(0, Override::kDown, "drill 7", 10);
  EXPECT_TRUE(forced.effective_changed);
  EXPECT_EQ(forced.effective, Health::kDown);
  EXPECT_EQ(forced.reason, "override down: drill 7");
  EXPECT_EQ(t.region(0).override_reason, "drill 7");
  // Setting the same override again changes nothing.
  EXPECT_FALSE(t.SetOverride(0, Override::kDown, "again", 11).effective_changed);

  // Probes fail underneath: the probe state moves, the effective health does not.
  EXPECT_FALSE(t.RecordProbe(0, false, "HTTP 500", 20).probe_changed);
  HealthTransition p = t.RecordProbe(0, false, "HTTP 500", 30);
  EXPECT_TRUE(p.probe_changed);
  EXPECT_FALSE(p.effective_changed);
  EXPECT_EQ(t.region(0).probe_state, Health::kDown);

  // Forcing up beats the failing probes.
  EXPECT_TRUE(t.SetOverride(0, Override::kUp, "operator knows better", 40).effective_changed);
  EXPECT_EQ(t.region(0).effective(), Health::kUp);

  // Back to auto: the current probe state (down) decides at once.
  HealthTransition cleared = t.SetOverride(0, Override::kAuto, "drill over", 50);
  EXPECT_TRUE(cleared.effective_changed);
  EXPECT_EQ(cleared.effective, Health::kDown);
  EXPECT_EQ(cleared.reason, "override cleared (drill over); probes say down");
  EXPECT_EQ(t.region(0).override_reason, "drill over");  // who cleared it, and why
}

TEST(HealthNames, RoundTrip) {
  for (Override o : {Override::kAuto, Override::kUp, Override::kDown}) {
    EXPECT_EQ(ParseOverride(OverrideName(o)), o);
  }
  EXPECT_FALSE(ParseOverride("DOWN"));
  EXPECT_FALSE(ParseOverride(""));
}

// Against a simple model: the probe state flips exactly when the last `fall` (or `rise`) results
// since the previous flip were all failures (or successes); overrides decide the effective state.
RC_GTEST_PROP(HealthTracker, FollowsTheHysteresisModel, ()) {
  const int fall = *rc::gen::inRange(1, 6);
  const int rise = *rc::gen::inRange(1, 6);
  const Health initial = *rc::gen::element(Health::kUp, Health::kDown);
  HealthTracker t(1, HealthPolicy{fall, rise, initial}, 0);
  Health model = initial;
  int run = 0;  // consecutive results against the current model state
  Override ov = Override::kAuto;
  const int steps = *rc::gen::inRange(1, 200);
  for (int step = 1; step <= steps; ++step) {
    const Health before = t.region(0).effective();
    HealthTransition tr;
    if (*rc::gen::inRange(0, 10) == 0) {
      ov = *rc::gen::element(Override::kAuto, Override::kUp, Override::kDown);
      tr = t.SetOverride(0, ov, "r", step);
    } else {
      const bool ok = *rc::gen::arbitrary<bool>();
      tr = t.RecordProbe(0, ok, "e", step);
      const bool against = (model == Health::kUp) != ok;
      run = against ? run + 1 : 0;
      if (model == Health::kUp && run >= fall) {
        model = Health::kDown;
        run = 0;
        RC_ASSERT(tr.probe_changed);
      } else if (model == Health::kDown && run >= rise) {
        model = Health::kUp;
        run = 0;
        RC_ASSERT(tr.probe_changed);
      } else {
        RC_ASSERT(!tr.probe_changed);
      }
    }
    RC_ASSERT(t.region(0).probe_state == model);
    const Health expected = ov == Override::kAuto ? model
                            : ov == Override::kUp ? Health::kUp
                                                  : Health::kDown;
    RC_ASSERT(t.region(0).effective() == expected);
    RC_ASSERT(tr.effective == expected);
    RC_ASSERT(tr.effective_changed == (before != expected));
  }
}

}  // namespace
}  // namespace meridian::geo
