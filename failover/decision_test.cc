// The decision state machine, driven step by step with explicit time: unit cases, then RapidCheck
// properties over random rounds of checks and random delivery of observations between
// controllers.

#include "failover/decision.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <set>

namespace meridian::failover {
namespace {

const std::vector<std::string> kThree = {"us-east", "eu-west", "ap-south"};

DeciderConfig Config(const std::string& self, std::vector<std::string> regions = kThree) {
  DeciderConfig c;
  c.regions = std::move(regions);
  c.self = self;
  c.lost_after_checks = 3;
  c.recover_after_checks = 10;
  c.observation_ttl_ms = 1500;
  return c;
}

RegionReport Good() { return RegionReport{true, true, 0, 0, ""}; }
RegionReport Bad() { return RegionReport{false, false, 0, 0, "readyz: connection refused"}; }
RegionReport Healthy() { return RegionReport{true, false, 0, 0, "catching up"}; }

std::map<std::string, RegionReport> All(const std::vector<std::string>& regions,
                                        const std::string& bad = "",
                                        RegionReport bad_report = Bad()) {
  std::map<std::string, RegionReport> m;
  for (const auto& r : regions) m[r] = r == bad ? bad_report : Good();
  return m;
}

// A peer controller: a Decider of its own, whose observation we deliver.
struct Peer {
  explicit Peer(const std::string& self, std::vector<std::string> regions = kThree)
      : d(Config(self, std::move(regions))) {
    d.set_incarnation(7);
  }
  Decider d;
};

TEST(DecisionTest, ConfigValidation) {
  EXPECT_TRUE(Config("us-east").Validate().ok());
  DeciderConfig c = Config("nowhere");
  EXPECT_NE(c.Validate().message().find("region"), std::string::npos);
  c = Config("us-east", {"us-east", "us-east"});
  EXPECT_NE(c.Validate().message().find("twice"), std::string::npos);
  c = Config("us-east");
  c.lost_after_checks = 0;
  EXPECT_NE(c.Validate().message().find("lost_after_checks"), std::string::npos);
  c = Config("us-east");
  c.recover_after_checks = 0;
  EXPECT_NE(c.Validate().message().find("recover_after_checks"), std::string::npos);
}

TEST(DecisionTest, LostOnlyWhenAQuorumSawNConsecutiveBadChecks) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  int64_t t = 0;
  for (int round = 1; round <= 5; ++round, t += 500) {
    us.RecordOwnChecks(t, All(kThree, "eu-west"));
    std::vector<Decision> d = us.Evaluate(t);
    EXPECT_TRUE(d.empty()) << "round " << round << ": our view alone must not decide";
  }
  EXPECT_EQ(us.own().regions.at("eu-west").fail_streak, 5u);
  // ap-south has seen two bad checks: not yet.
  ap.d.RecordOwnChecks(t, All(kThree, "eu-west"));
  ap.d.RecordOwnChecks(t, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(t, ap.d.own()).ok());
  EXPECT_TRUE(us.Evaluate(t).empty());
  // Its third: the quorum (2 of 3, eu-west's own controller not counted) is there.
  ap.d.RecordOwnChecks(t, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(t + 10, ap.d.own()).ok());
  std::vector<Decision> d = us.Evaluate(t + 10);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].region, "eu-west");
  EXPECT_EQ(d[0].decision, "lost");
  EXPECT_EQ(d[0].from, RegionState::kUp);
  EXPECT_EQ(d[0].to, RegionState::kLost);
  EXPECT_EQ(d[0].needed, 2u);
  EXPECT_EQ(d[0].voters, (std::vector<std::string>{"us-east", "ap-south"}));
  EXPECT_NE(d[0].reason.find("connection refused"), std::string::npos);
  EXPECT_EQ(us.state("eu-west"), RegionState::kLost);
  EXPECT_EQ(us.state_since_ms("eu-west"), t + 10);
  EXPECT_EQ(us.own_fail_since_ms("eu-west"), 0);
  // Deciding again changes nothing.
  EXPECT_TRUE(us.Evaluate(t + 20).empty());
}

TEST(DecisionTest, TheLostRegionsOwnControllerDoesNotCount) {
  // eu-west's own controller agrees that eu-west is down: still only one vote that counts.
  Decider us(Config("us-east"));
  Peer eu("eu-west");
  for (int i = 0; i < 3; ++i) {
    us.RecordOwnChecks(i * 500, All(kThree, "eu-west"));
    eu.d.RecordOwnChecks(i * 500, All(kThree, "eu-west"));
  }
  ASSERT_TRUE(us.AcceptPeerObservation(1000, eu.d.own()).ok());
  EXPECT_TRUE(us.Evaluate(1000).empty());
  Tally t = us.Count(1000, "eu-west");
  EXPECT_EQ(t.lost, (std::vector<std::string>{"us-east"}));
  EXPECT_EQ(t.silent, (std::vector<std::string>{"ap-south"}));
}

TEST(DecisionTest, StaleObservationsDoNotVote) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  for (int i = 0; i < 3; ++i) ap.d.RecordOwnChecks(0, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(0, ap.d.own()).ok());
  for (int i = 0; i < 3; ++i) us.RecordOwnChecks(1000 + i * 200, All(kThree, "eu-west"));
  // At 1500 the peer's observation (received at 0) is 1500 ms old: ttl reached, not counted.
  EXPECT_TRUE(us.Evaluate(1500).empty());
  EXPECT_EQ(us.Count(1500, "eu-west").silent, (std::vector<std::string>{"ap-south"}));
  // Had we decided at 1499 it would have counted.
  Decider us2(Config("us-east"));
  ASSERT_TRUE(us2.AcceptPeerObservation(0, ap.d.own()).ok());
  for (int i = 0; i < 3; ++i) us2.RecordOwnChecks(1000 + i * 100, All(kThree, "eu-west"));
  EXPECT_EQ(us2.Evaluate(1499).size(), 1u);
}

TEST(DecisionTest, OwnObservationGoesStaleToo) {
  // A controller whose own rounds stopped (stuck probes) stops voting.
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  for (int i = 0; i < 3; ++i) us.RecordOwnChecks(0, All(kThree, "eu-west"));
  for (int i = 0; i < 3; ++i) ap.d.RecordOwnChecks(2000, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(2000, ap.d.own()).ok());
  EXPECT_TRUE(us.Evaluate(2000).empty());
}

TEST(DecisionTest, AnyGoodCheckResetsTheStreak) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  int64_t t = 0;
  for (auto bad : {true, true, false, true, true}) {
    us.RecordOwnChecks(t, bad ? All(kThree, "eu-west") : All(kThree));
    ap.d.RecordOwnChecks(t, bad ? All(kThree, "eu-west") : All(kThree));
    ASSERT_TRUE(us.AcceptPeerObservation(t, ap.d.own()).ok());
    EXPECT_TRUE(us.Evaluate(t).empty()) << t;
    t += 500;
  }
  us.RecordOwnChecks(t, All(kThree, "eu-west"));
  ap.d.RecordOwnChecks(t, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(t, ap.d.own()).ok());
  EXPECT_EQ(us.Evaluate(t).size(), 1u);
}

TEST(DecisionTest, RecoveryWaitsForMCaughtUpChecksAtAQuorum) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  int64_t t = 0;
  auto round = [&](const std::map<std::string, RegionReport>& checks) {
    us.RecordOwnChecks(t, checks);
    ap.d.RecordOwnChecks(t, checks);
    EXPECT_TRUE(us.AcceptPeerObservation(t, ap.d.own()).ok());
    std::vector<Decision> d = us.Evaluate(t);
    t += 500;
    return d;
  };
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(round(All(kThree, "eu-west")).empty());
  ASSERT_EQ(round(All(kThree, "eu-west"))[0].decision, "lost");
  // Healthy but catching up: recovering, not recovered.
  std::vector<Decision> d = round(All(kThree, "eu-west", Healthy()));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].decision, "recovering");
  EXPECT_EQ(us.state("eu-west"), RegionState::kRecovering);
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(round(All(kThree, "eu-west", Healthy())).empty());
  // Caught up: recovered on the 10th consecutive caught-up check, not before.
  for (int i = 1; i < 10; ++i) EXPECT_TRUE(round(All(kThree)).empty()) << i;
  d = round(All(kThree));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].decision, "recovered");
  EXPECT_EQ(d[0].to, RegionState::kUp);
  EXPECT_EQ(us.state("eu-west"), RegionState::kUp);
}

TEST(DecisionTest, RecoveringRelapsesToLost) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  int64_t t = 0;
  auto round = [&](const std::map<std::string, RegionReport>& checks) {
    us.RecordOwnChecks(t, checks);
    ap.d.RecordOwnChecks(t, checks);
    EXPECT_TRUE(us.AcceptPeerObservation(t, ap.d.own()).ok());
    std::vector<Decision> d = us.Evaluate(t);
    t += 500;
    return d;
  };
  for (int i = 0; i < 3; ++i) (void)round(All(kThree, "eu-west"));
  ASSERT_EQ(us.state("eu-west"), RegionState::kLost);
  EXPECT_EQ(round(All(kThree))[0].decision, "recovering");
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(round(All(kThree)).empty());
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(round(All(kThree, "eu-west")).empty());
  std::vector<Decision> d = round(All(kThree, "eu-west"));
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].decision, "lost");
  EXPECT_EQ(d[0].from, RegionState::kRecovering);
  EXPECT_NE(d[0].reason.find("relapsed"), std::string::npos);
}

TEST(DecisionTest, OneStepFromLostToUpWhenAlreadyCaughtUp) {
  // Observations that arrive together may carry a region from lost straight to up.
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  for (int i = 0; i < 3; ++i) {
    us.RecordOwnChecks(i, All(kThree, "eu-west"));
    ap.d.RecordOwnChecks(i, All(kThree, "eu-west"));
  }
  ASSERT_TRUE(us.AcceptPeerObservation(3, ap.d.own()).ok());
  ASSERT_EQ(us.Evaluate(3).size(), 1u);
  for (int i = 0; i < 10; ++i) {
    us.RecordOwnChecks(10 + i, All(kThree));
    ap.d.RecordOwnChecks(10 + i, All(kThree));
  }
  ASSERT_TRUE(us.AcceptPeerObservation(20, ap.d.own()).ok());
  std::vector<Decision> d = us.Evaluate(20);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].decision, "recovering");
  EXPECT_EQ(d[1].decision, "recovered");
}

TEST(DecisionTest, PeerObservationValidation) {
  Decider us(Config("us-east"));
  Peer ap("ap-south");
  ap.d.RecordOwnChecks(0, All(kThree));
  Observation o = ap.d.own();
  o.from = "us-east";
  EXPECT_TRUE(absl::IsInvalidArgument(us.AcceptPeerObservation(0, o)));
  o.from = "mars";
  EXPECT_NE(us.AcceptPeerObservation(0, o).message().find("unknown region"), std::string::npos);
  o = ap.d.own();
  o.regions["mars"] = Good();
  EXPECT_NE(us.AcceptPeerObservation(0, o).message().find("mars"), std::string::npos);
  o = ap.d.own();
  o.regions.erase("eu-west");
  EXPECT_NE(us.AcceptPeerObservation(0, o).message().find("missing"), std::string::npos);
  EXPECT_FALSE(us.peer("ap-south").has_value()) << "nothing changed";
  // In order: accepted; replayed or older: refused, the newer one kept.
  ASSERT_TRUE(us.AcceptPeerObservation(0, ap.d.own()).ok());
  Observation old = ap.d.own();
  ap.d.RecordOwnChecks(1, All(kThree, "eu-west"));
  ASSERT_TRUE(us.AcceptPeerObservation(1, ap.d.own()).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(us.AcceptPeerObservation(2, old)));
  EXPECT_EQ(us.peer("ap-south")->observation.seq, 2u);
  EXPECT_EQ(us.peer("ap-south")->received_ms, 1);
  // A restarted peer (new incarnation) starts its seq over and is accepted.
  Peer restarted("ap-south");
  restarted.d.set_incarnation(8);
  restarted.d.RecordOwnChecks(5, All(kThree));
  EXPECT_TRUE(us.AcceptPeerObservation(5, restarted.d.own()).ok());
  // A push of the incarnation the restart superseded (delayed across the restart, or replayed)
  // is refused, even with a higher seq, and the restarted peer's observation is kept.
  ap.d.RecordOwnChecks(6, All(kThree, "eu-west"));
  const absl::Status stale = us.AcceptPeerObservation(6, ap.d.own());
  EXPECT_TRUE(absl::IsFailedPrecondition(stale)) << stale;
  EXPECT_NE(stale.message().find("superseded"), std::string::npos) << stale;
  EXPECT_EQ(us.peer("ap-south")->observation.incarnation, 8u);
  EXPECT_TRUE(us.peer("ap-south")->observation.regions.at("eu-west").healthy);
  // The restarted one goes on; a second restart supersedes it too.
  restarted.d.RecordOwnChecks(7, All(kThree));
  EXPECT_TRUE(us.AcceptPeerObservation(7, restarted.d.own()).ok());
  Peer again("ap-south");
  again.d.set_incarnation(9);
  again.d.RecordOwnChecks(8, All(kThree));
  EXPECT_TRUE(us.AcceptPeerObservation(8, again.d.own()).ok());
  restarted.d.RecordOwnChecks(9, All(kThree));
  EXPECT_TRUE(absl::IsFailedPrecondition(us.AcceptPeerObservation(9, restarted.d.own())));
  EXPECT_TRUE(absl::IsFailedPrecondition(us.AcceptPeerObservation(9, ap.d.own())));
}

TEST(DecisionTest, TwoRegionsNeedBothControllers) {
  // With two regions the quorum is 2 and only one controller may vote on the other: a two-region
  // deployment can never declare a loss by itself (it needs a witness, as ARCHITECTURE.md says).
  const std::vector<std::string> two = {"us-east", "eu-west"};
  Decider us(Config("us-east", two));
  for (int i = 0; i < 10; ++i) us.RecordOwnChecks(i * 500, All(two, "eu-west"));
  EXPECT_TRUE(us.Evaluate(5000).empty());
  EXPECT_EQ(us.quorum(), 2u);
}

// ------------------------------------------------------------------------ properties (RapidCheck)

// A simulated run: n controllers (each a Decider), rounds of random checks, random delivery of
// observations to controller 0 (the one under test), random time steps.
struct Sim {
  std::vector<std::string> regions;
  std::vector<std::unique_ptr<Decider>> deciders;
  int64_t now = 0;
  // What controller 0 should be holding, kept independently of the Decider (the model).
  std::map<std::string, std::pair<Observation, int64_t>> delivered;
  std::pair<Observation, int64_t> own{{}, -1};

  explicit Sim(size_t n, uint32_t lost_after, uint32_t recover_after) {
    for (size_t i = 0; i < n; ++i) regions.push_back("r" + std::to_string(i));
    for (size_t i = 0; i < n; ++i) {
      DeciderConfig c;
      c.regions = regions;
      c.self = regions[i];
      c.lost_after_checks = lost_after;
      c.recover_after_checks = recover_after;
      c.observation_ttl_ms = 1500;
      deciders.push_back(std::make_unique<Decider>(c));
      deciders.back()->set_incarnation(i + 1);
    }
  }
  Decider& d0() { return *deciders[0]; }
  size_t quorum() const { return regions.size() / 2 + 1; }

  // Model recount: controllers != region with a fresh report satisfying `pred`.
  template <class Pred>
  size_t Votes(const std::string& region, Pred pred) const {
    size_t v = 0;
    for (size_t c = 0; c < regions.size(); ++c) {
      if (regions[c] == region) continue;
      const std::pair<Observation, int64_t>* held = nullptr;
      if (c == 0) {
        held = &own;
      } else if (auto it = delivered.find(regions[c]); it != delivered.end()) {
        held = &it->second;
      }
      if (held == nullptr || held->second < 0 || now - held->second >= 1500) continue;
      if (pred(held->first.regions.at(region))) ++v;
    }
    return v;
  }
};

// Random checks for one controller's round: each region healthy / caught up / down, biased so
// that streaks long enough to matter happen.
std::map<std::string, RegionReport> RandomChecks(const std::vector<std::string>& regions) {
  std::map<std::string, RegionReport> m;
  for (const auto& r : regions) {
    const int k = *rc::gen::inRange(0, 10);
    m[r] = k < 4 ? Bad() : (k < 6 ? Healthy() : Good());
  }
  return m;
}

// Steps the simulation: every controller runs a round; controller 0 receives the observations of
// the controllers in `reachable` (each delivered with probability ~2/3); returns controller 0's
// decisions, after checking each against the model recount.
std::vector<Decision> Step(Sim& s, const std::set<size_t>& reachable, bool sticky_region_down,
                           const std::string& down) {
  s.now += *rc::gen::inRange(100, 900);
  for (size_t c = 0; c < s.regions.size(); ++c) {
    auto checks = RandomChecks(s.regions);
    if (sticky_region_down) checks[down] = Bad();
    s.deciders[c]->RecordOwnChecks(s.now, checks);
  }
  s.own = {s.d0().own(), s.now};
  for (size_t c = 1; c < s.regions.size(); ++c) {
    if (!reachable.count(c) || *rc::gen::inRange(0, 3) == 0) continue;
    RC_ASSERT(s.d0().AcceptPeerObservation(s.now, s.deciders[c]->own()).ok());
    s.delivered[s.regions[c]] = {s.deciders[c]->own(), s.now};
  }
  std::vector<Decision> ds = s.d0().Evaluate(s.now);
  for (const Decision& d : ds) {
    const uint32_t n = s.d0().config().lost_after_checks;
    const uint32_t m = s.d0().config().recover_after_checks;
    if (d.decision == "lost") {
      RC_ASSERT(s.Votes(d.region, [n](const RegionReport& r) { return r.fail_streak >= n; }) >=
                s.quorum());
    } else if (d.decision == "recovering") {
      RC_ASSERT(s.Votes(d.region, [](const RegionReport& r) { return r.healthy; }) >= s.quorum());
    } else if (d.decision == "recovered") {
      RC_ASSERT(s.Votes(d.region, [m](const RegionReport& r) { return r.ok_streak >= m; }) >=
                s.quorum());
    }
    RC_ASSERT(d.voters.size() >= s.quorum());
    RC_ASSERT(std::find(d.voters.begin(), d.voters.end(), d.region) == d.voters.end());
  }
  return ds;
}

RC_GTEST_PROP(DecisionProperty, NoSingleControllersViewDeclaresARegionLost, ()) {
  const size_t n = *rc::gen::inRange<size_t>(3, 8);
  Sim s(n, *rc::gen::inRange<uint32_t>(1, 4), *rc::gen::inRange<uint32_t>(1, 5));
  const std::string down = s.regions[*rc::gen::inRange<size_t>(0, n)];
  const int rounds = *rc::gen::inRange(1, 40);
  for (int i = 0; i < rounds; ++i) {
    // Controller 0 hears nobody: whatever it sees, nothing is decided.
    RC_ASSERT(Step(s, {}, true, down).empty());
  }
  for (const auto& r : s.regions) RC_ASSERT(s.d0().state(r) == RegionState::kUp);
}

RC_GTEST_PROP(DecisionProperty, APartitionedMinorityNeverDeclaresTheMajorityLost, ()) {
  const size_t n = *rc::gen::inRange<size_t>(3, 8);
  Sim s(n, *rc::gen::inRange<uint32_t>(1, 4), *rc::gen::inRange<uint32_t>(1, 5));
  // Controller 0 and at most quorum - 2 others form the minority side; the rest are cut off.
  const size_t extra = *rc::gen::inRange<size_t>(0, s.quorum() - 1);
  std::set<size_t> minority;
  for (size_t c = 1; c <= extra; ++c) minority.insert(c);
  const int rounds = *rc::gen::inRange(1, 40);
  for (int i = 0; i < rounds; ++i) {
    // The last region (majority side) looks dead to everyone on the minority side, and the
    // others' checks are random: still no quorum can form.
    std::vector<Decision> ds = Step(s, minority, true, s.regions[n - 1]);
    for (const Decision& d : ds) RC_ASSERT(d.decision != "lost");
  }
  for (const auto& r : s.regions) RC_ASSERT(s.d0().state(r) == RegionState::kUp);
}

RC_GTEST_PROP(DecisionProperty, EveryDecisionIsBackedByAFreshQuorum, ()) {
  // Step() checks each decision against an independent recount; here with everyone reachable.
  const size_t n = *rc::gen::inRange<size_t>(3, 8);
  Sim s(n, *rc::gen::inRange<uint32_t>(1, 4), *rc::gen::inRange<uint32_t>(1, 4));
  std::set<size_t> all;
  for (size_t c = 1; c < n; ++c) all.insert(c);
  const std::string down = s.regions[*rc::gen::inRange<size_t>(0, n)];
  const int rounds = *rc::gen::inRange(1, 80);
  for (int i = 0; i < rounds; ++i) (void)Step(s, all, *rc::gen::arbitrary<bool>(), down);
}

RC_GTEST_PROP(DecisionProperty, DecisionsAreAFunctionOfTheInputs, ()) {
  // Two controllers fed the same checks, observations and times decide the same things.
  const size_t n = *rc::gen::inRange<size_t>(3, 6);
  std::vector<std::string> regions;
  for (size_t i = 0; i < n; ++i) regions.push_back("r" + std::to_string(i));
  DeciderConfig c;
  c.regions = regions;
  c.self = regions[0];
  c.lost_after_checks = 2;
  c.recover_after_checks = 2;
  Decider a(c), b(c);
  std::vector<std::unique_ptr<Decider>> peers;
  for (size_t i = 1; i < n; ++i) {
    DeciderConfig pc = c;
    pc.self = regions[i];
    peers.push_back(std::make_unique<Decider>(pc));
    peers.back()->set_incarnation(i);
  }
  int64_t now = 0;
  const int rounds = *rc::gen::inRange(1, 40);
  for (int i = 0; i < rounds; ++i) {
    now += *rc::gen::inRange(1, 1000);
    auto checks = RandomChecks(regions);
    a.RecordOwnChecks(now, checks);
    b.RecordOwnChecks(now, checks);
    for (auto& p : peers) {
      p->RecordOwnChecks(now, RandomChecks(regions));
      if (*rc::gen::arbitrary<bool>()) {
        RC_ASSERT(a.AcceptPeerObservation(now, p->own()).ok());
        RC_ASSERT(b.AcceptPeerObservation(now, p->own()).ok());
      }
    }
    RC_ASSERT(a.Evaluate(now) == b.Evaluate(now));
  }
}

RC_GTEST_PROP(DecisionProperty, ARegionDownEverywhereIsLostAfterNRounds, ()) {
  // Liveness: every controller sees the region down and every observation arrives at once: the
  // region is lost exactly at round N (and not before).
  const size_t n = *rc::gen::inRange<size_t>(3, 8);
  const uint32_t lost_after = *rc::gen::inRange<uint32_t>(1, 6);
  Sim s(n, lost_after, 3);
  const std::string down = s.regions[*rc::gen::inRange<size_t>(0, n)];
  for (uint32_t round = 1; round <= lost_after; ++round) {
    s.now += 500;
    std::map<std::string, RegionReport> checks;
    for (const auto& r : s.regions) checks[r] = r == down ? Bad() : Good();
    for (auto& d : s.deciders) d->RecordOwnChecks(s.now, checks);
    for (size_t c = 1; c < n; ++c)
      RC_ASSERT(s.d0().AcceptPeerObservation(s.now, s.deciders[c]->own()).ok());
    std::vector<Decision> ds = s.d0().Evaluate(s.now);
    if (round < lost_after) {
      RC_ASSERT(ds.empty());
    } else {
      RC_ASSERT(ds.size() == 1u);
      RC_ASSERT(ds[0].region == down);
      RC_ASSERT(ds[0].decision == std::string("lost"));
    }
  }
}

}  // namespace
}  // namespace meridian::failover
