#include "replication/lease.h"

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <tuple>
#include <vector>

namespace meridian::replication {
namespace {

// A node's clock: global time scaled by its rate, plus an offset (skew). Rates stay within the
// configured drift bound.
class TestClock final : public Clock {
 public:
  TestClock(const int64_t* global_ms, double rate, int64_t offset_ms)
      : global_ms_(global_ms), rate_(rate), offset_ms_(offset_ms) {}
  int64_t NowMs() const override {
    return offset_ms_ + static_cast<int64_t>(std::floor(static_cast<double>(*global_ms_) * rate_));
  }

 private:
  const int64_t* global_ms_;
  double rate_;
  int64_t offset_ms_;
};

class MemStore final : public LeaseStore {
 public:
  std::map<RegionId, AcceptorRecord> Load() override { return records; }
  absl::Status Save(RegionId g, const AcceptorRecord& r) override {
    if (fail) return absl::UnavailableError("store down");
    records[g] = r;
    return absl::OkStatus();
  }
  std::map<RegionId, AcceptorRecord> records;
  bool fail = false;
};

LeaseConfig FastConfig() {
  LeaseConfig c;
  c.ttl_ms = 600;
  c.renew_interval_ms = 100;
  c.retry_interval_ms = 50;
  c.round_timeout_ms = 200;
  c.alive_timeout_ms = 250;
  c.max_drift = 0.01;
  c.margin_ms = 20;
  c.handback_after_ms = 500;
  return c;
}

// Region 2 of {1, 2, 3} on its own, on a clock the test moves: every message it sends is kept
// (Sent<T>() lists those of one kind), and nothing reaches it unless the test delivers it.
struct LoneRegion {
  MemStore store;
  int64_t now = 10000;
  TestClock clock{&now, 1.0, 0};
  std::vector<std::pair<RegionId, LeaseMessage>> sent;
  LeaseManager lm{
      2, {1, 2, 3}, {}, FastConfig(), &store, &clock, [this](RegionId to, const LeaseMessage& m) {
        sent.emplace_back(to, m);
      }};

  template <class T>
  std::vector<T> Sent() const {
    std::vector<T> out;
    for (const auto& [to, m] : sent)
      if (const T* x = std::get_if<T>(&m)) out.push_back(*x);
    return out;
  }
  // Ticks every 10 ms for `ms`.
  void Run(int64_t ms) {
    for (int64_t t = 0; t < ms; t += 10) {
      now += 10;
      lm.Tick();
    }
  }
};

// N regions on a simulated network: delays, loss, partitions, crashes; every 1 ms each live node
// may tick. Checks after every step that no group is mutable at two regions.
struct Cluster {
  struct Msg {
    int64_t at;
    uint64_t seq;
    RegionId from, to;
    LeaseMessage m;
    bool operator>(const Msg& o) const { return std::tie(at, seq) > std::tie(o.at, o.seq); }
  };
  struct Node {
    std::unique_ptr<TestClock> clock;
    MemStore store;
    std::unique_ptr<LeaseManager> lm;
    bool up = true;
    int64_t next_tick = 0;
    std::vector<LeaseEvent> events;
  };

  // `jurisdictions`: region i + 1's is jurisdictions[i] (empty: none given to the managers).
  Cluster(int n, LeaseConfig cfg, uint64_t seed, bool drift = false,
          std::vector<std::string> jurisdictions = {})
      : config(cfg), rng(seed) {
    for (size_t i = 0; i < jurisdictions.size(); ++i) {
      regions_jurisdiction[static_cast<RegionId>(i + 1)] = jurisdictions[i];
    }
    for (int i = 1; i <= n; ++i) ids.push_back(static_cast<RegionId>(i));
    for (RegionId id : ids) {
      double rate = 1.0;
      if (drift) {
        std::uniform_real_distribution<double> d(-cfg.max_drift / 2, cfg.max_drift / 2);
        rate += d(rng);
      }
      std::uniform_int_distribution<int64_t> off(0, 100000);
      nodes[id].clock = std::make_unique<TestClock>(&now, rate, drift ? off(rng) : 0);
      Boot(id);
    }
  }

  void Boot(RegionId id) {
    Node& n = nodes[id];
    n.lm = std::make_unique<LeaseManager>(
        id, ids, std::vector<RegionId>{}, config, &n.store, n.clock.get(),
        [this, id](RegionId to, const LeaseMessage& m) { Send(id, to, m); },
        [&n](const LeaseEvent& e) { n.events.push_back(e); },
        [this, id](RegionId g, uint64_t e) { pending_syncs.emplace_back(id, g, e); });
    if (!regions_jurisdiction.empty()) n.lm->SetJurisdictions(regions_jurisdiction);
    ASSERT_TRUE(n.lm->Start().ok());
    n.up = true;
  }

  void Send(RegionId from, RegionId to, const LeaseMessage& m) {
    if (cut.count({std::min(from, to), std::max(from, to)})) return;
    if (loss > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < loss) return;
    int64_t d = delay_ms;
    if (jitter_ms > 0) d += std::uniform_int_distribution<int64_t>(0, jitter_ms)(rng);
    q.push(Msg{now + d, seq++, from, to, m});
  }

  void Step() {
    ++now;
    while (!q.empty() && q.top().at <= now) {
      Msg m = q.top();
      q.pop();
      Node& n = nodes[m.to];
      if (n.up && !cut.count({std::min(m.from, m.to), std::max(m.from, m.to)})) {
        n.lm->OnMessage(m.from, m.m);
      }
    }
    for (RegionId id : ids) {
      Node& n = nodes[id];
      if (n.up && now >= n.next_tick) {
        n.lm->Tick();
        n.next_tick = now + 10;
      }
    }
    // Syncs complete after one step (the simulator in tests/sim models them fully).
    auto syncs = std::move(pending_syncs);
    pending_syncs.clear();
    for (auto [id, g, e] : syncs)
      if (nodes[id].up) nodes[id].lm->SyncDone(g, e);
    CheckSafety();
  }

  void Run(int64_t ms) {
    for (int64_t i = 0; i < ms; ++i) Step();
  }

  void CheckSafety() {
    for (RegionId g : ids) {
      std::vector<RegionId> mutable_at;
      for (RegionId id : ids)
        if (nodes[id].up && nodes[id].lm->CanMutate(g)) mutable_at.push_back(id);
      if (mutable_at.size() > 1) {
        violations++;
        ADD_FAILURE() << "group " << g << " mutable at " << mutable_at.size()
                      << " regions at t=" << now;
      }
    }
  }

  RegionId Holder(RegionId g) {
    for (RegionId id : ids)
      if (nodes[id].up && nodes[id].lm->CanMutate(g)) return id;
    return kNoRegion;
  }

  void Crash(RegionId id) { nodes[id].up = false; }
  void Restart(RegionId id) { Boot(id); }
  void Partition(RegionId id) {
    for (RegionId o : ids)
      if (o != id) cut.insert({std::min(id, o), std::max(id, o)});
  }
  void Heal() { cut.clear(); }

  LeaseConfig config;
  std::mt19937_64 rng;
  int64_t now = 0;
  uint64_t seq = 0;
  int64_t delay_ms = 5;
  int64_t jitter_ms = 0;
  double loss = 0;
  std::vector<RegionId> ids;
  std::map<RegionId, std::string> regions_jurisdiction;
  std::map<RegionId, Node> nodes;
  std::priority_queue<Msg, std::vector<Msg>, std::greater<Msg>> q;
  std::set<std::pair<RegionId, RegionId>> cut;
  std::vector<std::tuple<RegionId, RegionId, uint64_t>> pending_syncs;
  int violations = 0;
};

TEST(LeaseConfig, ValidatesFields) {
  EXPECT_TRUE(LeaseConfig{}.Validate().ok());
  LeaseConfig c;
  c.ttl_ms = 50;
  EXPECT_NE(c.Validate().message().find("ttl_ms"), std::string::npos);
  c = LeaseConfig{};
  c.renew_interval_ms = 4000;  // > half of 6000 * 0.98 - 100
  EXPECT_NE(c.Validate().message().find("renew_interval_ms"), std::string::npos);
  c = LeaseConfig{};
  c.alive_timeout_ms = 1000;
  EXPECT_NE(c.Validate().message().find("alive_timeout_ms"), std::string::npos);
  c = LeaseConfig{};
  c.max_drift = 0.5;
  EXPECT_NE(c.Validate().message().find("max_drift"), std::string::npos);
  EXPECT_EQ(LeaseConfig{}.HolderValidityMs(), 6000 * 98 / 100 - 100);
}

TEST(Lease, EveryHomeHoldsItsGroupAtEpochOne) {
  Cluster c(3, FastConfig(), 1);
  c.Run(50);
  for (RegionId g : c.ids) {
    EXPECT_EQ(c.Holder(g), g);
    EXPECT_EQ(c.nodes[g].lm->View(g).epoch, 1u);
  }
  c.Run(5000);  // renewals keep it
  for (RegionId g : c.ids) EXPECT_EQ(c.Holder(g), g);
  EXPECT_EQ(c.violations, 0);
}

TEST(Lease, SuccessorTakesOverAfterExpiryOnlyAndHomeGetsItBack) {
  Cluster c(3, FastConfig(), 2);
  c.Run(700);  // past the start quarantine
  ASSERT_EQ(c.Holder(1), 1u);
  c.Crash(1);
  const int64_t crashed_at = c.now;
  while (c.Holder(1) == kNoRegion && c.now - crashed_at < 5000) c.Step();
  const int64_t took = c.now - crashed_at;
  EXPECT_EQ(c.Holder(1), 2u) << "the next region after home is the designated successor";
  EXPECT_GE(took, c.config.HolderValidityMs() - 100) << "no takeover before the old lease ends";
  EXPECT_LE(took, c.config.ttl_ms + 400);
  EXPECT_EQ(c.nodes[2].lm->View(1).epoch, 2u);

  // Home returns: it learns epoch 2, does not act, and gets its group back after the hysteresis.
  c.Restart(1);
  c.Run(60);
  EXPECT_FALSE(c.nodes[1].lm->CanMutate(1));
  c.Run(3000);
  EXPECT_EQ(c.Holder(1), 1u);
  EXPECT_EQ(c.nodes[1].lm->View(1).epoch, 3u);
  EXPECT_EQ(c.violations, 0);
}

TEST(Lease, PreferencePutsTheHomesJurisdictionFirst) {
  MemStore store;
  int64_t now = 0;
  TestClock clock(&now, 1.0, 0);
  LeaseManager lm(1, {1, 2, 3, 4, 5}, {}, FastConfig(), &store, &clock,
                  [](RegionId, const LeaseMessage&) {});
  using Order = std::vector<RegionId>;
  EXPECT_EQ(lm.Preference(2), (Order{2, 3, 4, 5, 1})) << "no jurisdictions: by id after home";
  lm.SetJurisdictions({{1, "us"}, {2, "eu"}, {3, "ap"}, {4, "eu"}, {5, "eu"}});
  EXPECT_EQ(lm.Preference(2), (Order{2, 4, 5, 3, 1}));
  EXPECT_EQ(lm.Preference(4), (Order{4, 5, 2, 1, 3})) << "wrapping around within the jurisdiction";
  EXPECT_EQ(lm.Preference(1), (Order{1, 2, 3, 4, 5})) << "alone in its jurisdiction";
  EXPECT_EQ(lm.Preference(3), (Order{3, 4, 5, 1, 2}));
}

// A pinned customer's orders can be worked on only inside their jurisdiction: with a second
// region there, it, not the next region by id, takes a silent region's group.
TEST(Lease, ASilentRegionsGroupGoesToARegionOfItsJurisdiction) {
  for (bool with_jurisdictions : {false, true}) {
    SCOPED_TRACE(with_jurisdictions ? "with jurisdictions" : "without");
    Cluster c(4, FastConfig(), 11, false,
              with_jurisdictions ? std::vector<std::string>{"us", "eu", "ap", "eu"}
                                 : std::vector<std::string>{});
    c.Run(700);
    ASSERT_EQ(c.Holder(2), 2u);
    c.Crash(2);
    c.Run(c.config.ttl_ms + 1000);
    EXPECT_EQ(c.Holder(2), with_jurisdictions ? 4u : 3u);
    // The others keep their own groups.
    for (RegionId g : {1u, 3u, 4u}) EXPECT_EQ(c.Holder(g), g);
    // Home returns and gets it back, whoever held it.
    c.Restart(2);
    c.Run(4000);
    EXPECT_EQ(c.Holder(2), 2u);
    EXPECT_EQ(c.violations, 0);
  }
}

TEST(Lease, IsolatedHolderStopsBeforeTheMajorityTakesOver) {
  Cluster c(5, FastConfig(), 3);
  c.Run(700);
  c.Partition(3);
  bool seen_gap = false;
  for (int i = 0; i < 3000; ++i) {
    c.Step();
    if (!c.nodes[3].lm->CanMutate(3) && c.Holder(3) == kNoRegion) seen_gap = true;
  }
  EXPECT_TRUE(seen_gap);
  EXPECT_EQ(c.Holder(3), 4u);
  c.Heal();
  c.Run(3000);
  EXPECT_EQ(c.Holder(3), 3u);
  EXPECT_EQ(c.violations, 0);
}

TEST(Lease, StaleRequestIsRefusedAndReported) {
  Cluster c(3, FastConfig(), 4);
  c.Run(700);
  c.Crash(1);
  c.Run(2000);
  ASSERT_EQ(c.Holder(1), 2u);
  // Region 3's acceptor refuses an epoch-1 request from a zombie of region 1.
  std::vector<LeaseEvent> before = c.nodes[3].events;
  c.nodes[3].lm->OnMessage(1, LeaseRequest{1, 1, 999});
  bool refused = false;
  for (size_t i = before.size(); i < c.nodes[3].events.size(); ++i) {
    refused |= c.nodes[3].events[i].kind == LeaseEvent::Kind::kStaleRefused;
  }
  EXPECT_TRUE(refused);
}

TEST(Lease, RestartedAcceptorGrantsNoNewEpochForOneTtl) {
  MemStore store;
  store.records[1] = AcceptorRecord{1, 1};  // it has granted before: a restart, not a first start
  int64_t now = 1000;
  TestClock clock(&now, 1.0, 0);
  std::vector<std::pair<RegionId, LeaseMessage>> sent;
  LeaseManager lm(2, {1, 2, 3}, {}, FastConfig(), &store, &clock,
                  [&](RegionId to, const LeaseMessage& m) { sent.emplace_back(to, m); });
  ASSERT_TRUE(lm.Start().ok());
  lm.OnMessage(3, LeaseRequest{1, 2, 7});
  ASSERT_FALSE(sent.empty());
  EXPECT_FALSE(std::get<LeaseReply>(sent.back().second).granted);
  now += 700;
  lm.OnMessage(3, LeaseRequest{1, 2, 8});
  const auto& reply = std::get<LeaseReply>(sent.back().second);
  EXPECT_TRUE(reply.granted);
  EXPECT_EQ(store.records.at(1), (AcceptorRecord{2, 3}));
  // One owner per epoch.
  lm.OnMessage(1, LeaseRequest{1, 2, 9});
  EXPECT_FALSE(std::get<LeaseReply>(sent.back().second).granted);
}

TEST(Lease, StoreFailureRefusesTheGrant) {
  MemStore store;
  store.fail = true;
  int64_t now = 10000;
  TestClock clock(&now, 1.0, 0);
  std::vector<LeaseMessage> sent;
  LeaseManager lm(2, {1, 2, 3}, {}, FastConfig(), &store, &clock,
                  [&](RegionId, const LeaseMessage& m) { sent.push_back(m); });
  ASSERT_TRUE(lm.Start().ok());
  now += 1000;
  lm.OnMessage(3, LeaseRequest{1, 2, 1});
  EXPECT_FALSE(std::get<LeaseReply>(sent.back()).granted);
}

// A claim near the last epoch there is (kMaxEpoch), once a majority's records show it, does not
// make this region ask for one past it, which every peer would refuse, ending the stream each time.
TEST(Lease, NoEpochPastTheLastIsAskedFor) {
  LoneRegion r2;
  LeaseManager& lm = r2.lm;
  ASSERT_TRUE(lm.Start().ok());
  lm.OnMessage(3, LeaseReply{1, 1, 99, false, kMaxEpoch - 1, 3});  // a record one below the last
  const auto queries = r2.Sent<LeaseQuery>();
  ASSERT_FALSE(queries.empty()) << "a record that far ahead is checked with the acceptors";
  for (RegionId from : {1u, 3u})
    lm.OnMessage(from, LeaseRecordAnswer{1, kMaxEpoch - 1, queries.back().query, kMaxEpoch - 1, 3});
  ASSERT_EQ(lm.View(1).epoch, kMaxEpoch - 1);
  r2.Run(2000);  // regions 1 and 3 silent: region 2, the successor, takes group 1
  std::vector<LeaseRequest> asked = r2.Sent<LeaseRequest>();
  bool asked_last = false;
  for (const LeaseRequest& r : asked) {
    EXPECT_LE(r.epoch, kMaxEpoch);
    asked_last = asked_last || (r.group == 1 && r.epoch == kMaxEpoch);
  }
  EXPECT_TRUE(asked_last) << "the takeover should still use the last epoch";
  lm.OnMessage(3, LeaseReply{1, 1, 99, false, kMaxEpoch, 3});  // now the last one is claimed
  const size_t before = asked.size();
  r2.Run(2000);
  asked = r2.Sent<LeaseRequest>();
  for (size_t i = before; i < asked.size(); ++i) {
    EXPECT_LE(asked[i].epoch, kMaxEpoch) << "group " << asked[i].group;
  }
}

// One acceptor's record far ahead is not taken at its word: the takeover keeps to the epochs this
// region has seen (before, a hostile reply naming kMaxEpoch stopped the group's takeovers for
// good).
TEST(Lease, ARecordFarAheadIsNotClaimedOnOneAcceptorsWord) {
  LoneRegion r2;
  LeaseManager& lm = r2.lm;
  ASSERT_TRUE(lm.Start().ok());
  lm.OnMessage(3, LeaseReply{1, 1, 99, false, kMaxEpoch, 3});
  lm.OnMessage(3, LeaseRecordAnswer{1, kMaxEpoch, 1, kMaxEpoch, 3});  // only one acceptor says so
  EXPECT_EQ(lm.View(1).claimed_epoch, 0u);
  r2.Run(2000);
  bool asked_group1 = false;
  for (const LeaseRequest& r : r2.Sent<LeaseRequest>()) {
    if (r.group != 1) continue;
    asked_group1 = true;
    EXPECT_LE(r.epoch, kMaxEpochJump) << "asked for an epoch only a lone acceptor named";
  }
  EXPECT_TRUE(asked_group1);
  // Nor within the jump: a reply's record counts only toward the bid of the round it answers.
  const uint64_t granted_here = lm.View(1).claimed_epoch;  // its own acceptor's record
  lm.OnMessage(3, LeaseReply{1, 1, 99, false, 5000, 3});
  EXPECT_EQ(lm.View(1).claimed_epoch, granted_here);
}

// A request far above anything this acceptor has seen claimed is refused: no peer pushes a group
// to the last epoch in one step.
TEST(Lease, ARequestBeyondTheEpochJumpIsRefused) {
  LoneRegion r2;
  ASSERT_TRUE(r2.lm.Start().ok());
  r2.lm.OnMessage(3, LeaseRequest{1, kMaxEpochJump + 1, 7});
  std::vector<LeaseReply> replies = r2.Sent<LeaseReply>();
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_FALSE(replies.back().granted);
  EXPECT_TRUE(r2.store.records.empty());
  r2.lm.OnMessage(3, LeaseRequest{1, kMaxEpochJump, 8});
  replies = r2.Sent<LeaseReply>();
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_TRUE(replies.back().granted);
  EXPECT_EQ(r2.store.records.at(1), (AcceptorRecord{kMaxEpochJump, 3}));
}

// A peer's word that it won an epoch (a renewal, a sync request, a handback) moves nothing here
// until this acceptor granted it that epoch or a majority's records show it. Before, a renewal
// naming an epoch nobody granted raised the group's fence at once, fencing its rightful owner out.
TEST(Lease, AClaimedWinIsLearntOnlyWhenVouchedFor) {
  Cluster c(3, FastConfig(), 11);
  c.Run(700);
  ASSERT_EQ(c.Holder(1), 1u);
  const GroupView before = c.nodes[2].lm->View(1);
  // Region 3 says, falsely, that it won group 1 at epoch 40 and then at the last epoch there is.
  for (uint64_t epoch : {uint64_t{40}, kMaxEpoch}) {
    c.nodes[2].lm->OnMessage(3, LeaseRequest{1, epoch, 99, true});
    EXPECT_FALSE(c.nodes[2].lm->Learn(1, epoch, 3));
    c.Run(300);  // the acceptors answer the check: their records say region 1 holds epoch 1
    EXPECT_FALSE(c.nodes[2].lm->Learn(1, epoch, 3));
    c.Run(300);
    const GroupView v = c.nodes[2].lm->View(1);
    EXPECT_EQ(v.epoch, before.epoch);
    EXPECT_EQ(v.owner, 1u);
    EXPECT_LT(v.claimed_epoch, kMaxEpoch)
        << "fresh epochs may go above a claim, never past the last";
  }
  // Nor does a handback of a group nobody granted its sender: its home keeps it as it is.
  c.nodes[1].lm->OnMessage(3, LeaseHandback{1, 77});
  c.Run(300);
  EXPECT_EQ(c.nodes[1].lm->View(1).epoch, before.epoch);
  EXPECT_EQ(c.Holder(1), 1u);
  EXPECT_EQ(c.violations, 0);
}

// A region back from a crash hears the new owner of its group renew before it can vouch for the
// win: its first queries are lost (the link to the third region is not up yet). It asks again
// until answered and, meanwhile, does not compete for the group. Before, it competed as soon as
// its listening time was up, its own acceptor granting it epoch after epoch, and took its group
// back, at the handback, epochs later than the successor's (11 instead of 3 in a demo drill).
TEST(Lease, ARegionBackWaitsForTheCheckOfItsSuccessorsWinInsteadOfCompeting) {
  LeaseConfig cfg = FastConfig();
  cfg.handback_after_ms = 1500;  // time to see the win learnt before the group goes home
  Cluster c(3, cfg, 12);
  c.Run(700);
  c.Crash(1);
  c.Run(2000);
  ASSERT_EQ(c.Holder(1), 2u);
  ASSERT_EQ(c.nodes[2].lm->View(1).epoch, 2u);
  c.nodes[1].events.clear();
  c.Restart(1);
  c.cut.insert({1, 3});
  c.Run(600);  // the region's listening time (200 ms) and more pass with its check unanswered
  for (const LeaseEvent& e : c.nodes[1].events) {
    EXPECT_FALSE(e.kind == LeaseEvent::Kind::kAcquired && e.group == 1)
        << "competed for its group at epoch " << e.epoch;
  }
  EXPECT_LT(c.nodes[1].lm->View(1).epoch, 2u) << "learnt a win one acceptor's record shows";
  c.cut.clear();
  c.Run(100);
  EXPECT_EQ(c.nodes[1].lm->View(1).epoch, 2u) << "the check was not asked again";
  EXPECT_EQ(c.nodes[1].lm->View(1).owner, 2u);
  c.Run(2000);  // home alive for handback_after_ms: the successor hands the group back
  EXPECT_EQ(c.Holder(1), 1u);
  EXPECT_EQ(c.nodes[1].lm->View(1).epoch, 3u);
  EXPECT_EQ(c.violations, 0);
}

// A win this acceptor did not grant (it was away) is learnt from a majority's records.
TEST(Lease, AWinThisAcceptorMissedIsLearntFromAMajoritysRecords) {
  LoneRegion r2;
  LeaseManager& lm = r2.lm;
  ASSERT_TRUE(lm.Start().ok());
  EXPECT_FALSE(lm.Learn(1, 5, 3));
  ASSERT_EQ(r2.Sent<LeaseQuery>().size(), 2u) << "every other acceptor is asked";
  EXPECT_FALSE(lm.Learn(1, 5, 3));
  EXPECT_EQ(r2.Sent<LeaseQuery>().size(), 2u) << "a repeat of the claim waits for the answers";
  const uint64_t q = r2.Sent<LeaseQuery>().back().query;
  lm.OnMessage(1, LeaseRecordAnswer{1, 5, q + 1, 5, 3});  // another check's answer
  lm.OnMessage(1, LeaseRecordAnswer{1, 5, q, 4, 3});      // another record
  lm.OnMessage(9, LeaseRecordAnswer{1, 5, q, 5, 3});      // not a member
  EXPECT_EQ(lm.View(1).epoch, 0u);
  lm.OnMessage(3, LeaseRecordAnswer{1, 5, q, 5, 3});  // one of the two needed
  EXPECT_EQ(lm.View(1).epoch, 0u);
  lm.OnMessage(1, LeaseRecordAnswer{1, 5, q, 5, 3});  // the majority
  EXPECT_EQ(lm.View(1).epoch, 5u);
  EXPECT_EQ(lm.View(1).owner, 3u);
  EXPECT_TRUE(lm.Learn(1, 5, 3));
  EXPECT_TRUE(lm.Learn(1, 4, 1)) << "an older epoch is superseded, nothing to check";
  // A claim this acceptor granted itself needs no check.
  r2.sent.clear();
  r2.now += 1000;
  lm.OnMessage(1, LeaseRequest{1, 6, 3});
  EXPECT_TRUE(lm.Learn(1, 6, 1));
  EXPECT_TRUE(r2.Sent<LeaseQuery>().empty());
  EXPECT_EQ(lm.View(1).epoch, 6u);
}

// A peer's frames cannot push the epochs a designated successor asks for beyond what the other
// acceptors grant (found by the adversarial review of 2026-12-04). Before, each unsolicited reply
// naming a record kMaxEpochJump above this region's highest claim, and each renewal that far
// above, raised that claim by the jump; after two such frames the successor asked for epochs every
// other acceptor refused, its own acceptor saved them, and the group was never taken over again,
// across restarts too.
void PushEpochs(Cluster& c, RegionId victim, RegionId attacker, RegionId group, bool renewals) {
  for (int i = 1; i <= 2; ++i) {
    const uint64_t far = c.nodes[victim].lm->View(group).claimed_epoch + i * kMaxEpochJump;
    if (renewals) {
      c.nodes[victim].lm->OnMessage(attacker, LeaseRequest{group, far, 424242, true});
    } else {
      c.nodes[victim].lm->OnMessage(attacker, LeaseReply{group, 1, 424242, false, far, attacker});
    }
  }
}

TEST(Lease, APeersRepliesDoNotPushTheSuccessorsEpochsOutOfReach) {
  Cluster c(3, FastConfig(), 7);
  c.Run(700);
  ASSERT_EQ(c.Holder(1), 1u);
  PushEpochs(c, /*victim=*/2, /*attacker=*/3, /*group=*/1, /*renewals=*/false);
  c.Crash(1);
  c.Run(5000);
  EXPECT_EQ(c.Holder(1), 2u) << "the designated successor did not take the group over";
  EXPECT_LT(c.nodes[2].lm->View(1).epoch, 10u);
  c.Crash(2);  // and nothing durable was left behind
  c.Restart(2);
  c.Run(5000);
  EXPECT_NE(c.Holder(1), 0u);
  EXPECT_EQ(c.violations, 0);
}

TEST(Lease, APeersRenewalsDoNotPushTheSuccessorsEpochsOutOfReach) {
  Cluster c(5, FastConfig(), 9);
  c.Run(700);
  ASSERT_EQ(c.Holder(1), 1u);
  PushEpochs(c, /*victim=*/2, /*attacker=*/5, /*group=*/1, /*renewals=*/true);
  c.Crash(1);
  c.Run(5000);
  EXPECT_EQ(c.Holder(1), 2u) << "the designated successor did not take the group over";
  EXPECT_EQ(c.violations, 0);
}

// Requests are bounded by what is known won, not by this acceptor's own record, which a peer's
// requests move: however many it sends while the group is free, the record stays within one jump.
TEST(Lease, APeersRequestsMoveThisAcceptorsRecordAtMostOneJump) {
  LoneRegion r2;
  ASSERT_TRUE(r2.lm.Start().ok());
  for (int i = 0; i < 1000; ++i) {
    const uint64_t record = r2.store.records.count(1) ? r2.store.records.at(1).epoch : 0;
    r2.lm.OnMessage(3, LeaseRequest{1, record + kMaxEpochJump, static_cast<uint64_t>(i)});
  }
  EXPECT_EQ(r2.store.records.at(1), (AcceptorRecord{kMaxEpochJump, 3}));
  for (int i = 0; i < 1000; ++i) {
    r2.lm.OnMessage(3, LeaseReply{1, 1, 1, false, r2.lm.View(1).claimed_epoch + kMaxEpochJump, 3});
  }
  EXPECT_EQ(r2.lm.View(1).claimed_epoch, kMaxEpochJump) << "no reply moves it";
}

// One peer's stream of claims, each replacing the last, does not keep another peer's real win
// from being checked: each peer's claims have their own check. Before, the group's one check was
// the attacker's whenever the real renewal came, and the win was never learnt.
TEST(Lease, APeersClaimsDoNotStarveTheCheckOfAnothersWin) {
  LoneRegion r2;
  // Region 2's acceptor voted for the losing candidate of epoch 5 (region 1); region 3 won it
  // (acceptors 1 and 3 hold (5, 3)), so a majority's records show the win.
  r2.store.records[1] = AcceptorRecord{5, 1};
  ASSERT_TRUE(r2.lm.Start().ok());
  bool learnt = false;
  for (int t = 0; t < 3000 && !learnt; t += 10) {
    r2.now += 10;
    if (t % 50 == 0) {  // region 1: a record far ahead, alternating, every 50 ms
      const uint64_t far = r2.lm.View(1).claimed_epoch + kMaxEpochJump + 1 + (t / 50) % 2;
      r2.lm.OnMessage(1, LeaseReply{1, 1, 1, false, far, 1});
    }
    if (t % 100 == 30) r2.lm.OnMessage(3, LeaseRequest{1, 5, 77, true});  // the real renewal
    std::vector<std::pair<RegionId, LeaseMessage>> sent;
    sent.swap(r2.sent);
    for (const auto& [to, m] : sent) {
      if (const auto* q = std::get_if<LeaseQuery>(&m)) {
        r2.lm.OnMessage(to, LeaseRecordAnswer{1, q->epoch, q->query, 5, 3});
      }
    }
    r2.lm.Tick();
    learnt = r2.lm.View(1).epoch == 5;
  }
  EXPECT_TRUE(learnt) << "the real win was never checked";
}

// A witness checks no claims, yet its jump base must follow the deployment's epochs: a renewal of
// an epoch it granted is a win it knows. Without that, its base stayed its record at its start,
// and a deployment 2^20 epochs further on would be refused by it.
TEST(Lease, AWitnessLearnsTheWinsItGrantedFromTheirRenewals) {
  MemStore store;
  int64_t now = 10000;
  TestClock clock{&now, 1.0, 0};
  std::vector<LeaseMessage> sent;
  LeaseManager witness(9, {1, 2}, {9}, FastConfig(), &store, &clock,
                       [&](RegionId, const LeaseMessage& m) { sent.push_back(m); });
  ASSERT_TRUE(witness.Start().ok());
  witness.OnMessage(1, LeaseRequest{1, kMaxEpochJump, 1, false});
  ASSERT_TRUE(std::get<LeaseReply>(sent.back()).granted);
  EXPECT_EQ(witness.View(1).epoch, 0u) << "a grant is not a win";
  witness.OnMessage(1, LeaseRequest{1, kMaxEpochJump, 2, true});  // region 1 won: it renews
  EXPECT_EQ(witness.View(1).epoch, kMaxEpochJump);
  EXPECT_EQ(witness.View(1).owner, 1u);
  now += FastConfig().ttl_ms + 1;  // region 1's promise runs out
  witness.OnMessage(2, LeaseRequest{1, 2 * kMaxEpochJump, 3, false});
  EXPECT_TRUE(std::get<LeaseReply>(sent.back()).granted) << "within a jump of the win it knows";
  // A renewal of an epoch it did not grant that owner teaches it nothing.
  witness.OnMessage(1, LeaseRequest{1, 2 * kMaxEpochJump, 4, true});
  EXPECT_EQ(witness.View(1).epoch, kMaxEpochJump);
}

TEST(Lease, UnknownGroupFromAPeerIsIgnored) {
  Cluster c(3, FastConfig(), 5);
  c.nodes[1].lm->OnMessage(2, LeaseRequest{77, 5, 1});
  c.nodes[1].lm->OnMessage(2, LeaseReply{77, 5, 1, true, 5, 2});
  c.Run(100);
  EXPECT_EQ(c.Holder(1), 1u);
}

TEST(Lease, ExplicitHandBack) {
  LeaseConfig cfg = FastConfig();
  cfg.handback_after_ms = 0;  // only on request
  Cluster c(3, cfg, 6);
  c.Run(700);
  c.Crash(1);
  c.Run(2000);
  ASSERT_EQ(c.Holder(1), 2u);
  c.Restart(1);
  c.Run(3000);
  EXPECT_EQ(c.Holder(1), 2u) << "no automatic handback";
  EXPECT_FALSE(c.nodes[2].lm->HandBack(2).ok()) << "own group";
  EXPECT_FALSE(c.nodes[3].lm->HandBack(1).ok()) << "not held here";
  ASSERT_TRUE(c.nodes[2].lm->HandBack(1).ok());
  c.Run(200);
  EXPECT_EQ(c.Holder(1), 1u);
  EXPECT_EQ(c.violations, 0);
}

// Any schedule of crashes, restarts, partitions, loss, delay and clock drift: never two regions
// able to mutate one group at the same instant.
RC_GTEST_PROP(LeaseProperty, NeverTwoHolders, ()) {
  const auto seed = *rc::gen::arbitrary<uint64_t>();
  const int n = *rc::gen::inRange(3, 6);
  Cluster c(n, FastConfig(), seed, /*drift=*/true);
  c.delay_ms = *rc::gen::inRange(1, 60);
  c.jitter_ms = *rc::gen::inRange(0, 60);
  c.loss = *rc::gen::element(0.0, 0.05, 0.3);
  const auto faults = *rc::gen::container<std::vector<std::pair<int, int>>>(
      rc::gen::pair(rc::gen::inRange(0, 5), rc::gen::inRange(1, n + 1)));
  std::ostringstream log;
  for (auto [kind, who] : faults) {
    log << "fault " << kind << " " << who << " at " << c.now << "\n";
    RegionId id = static_cast<RegionId>(who);
    switch (kind) {
      case 0:
        c.Crash(id);
        break;
      case 1:
        if (!c.nodes[id].up) c.Restart(id);
        break;
      case 2:
        c.Partition(id);
        break;
      case 3:
        c.Heal();
        break;
      default:
        break;
    }
    c.Run(*rc::gen::inRange(50, 1500));
    RC_ASSERT(c.violations == 0);
  }
  // Heal and restart everything: every group ends with exactly one holder.
  c.Heal();
  c.loss = 0;
  for (RegionId id : c.ids)
    if (!c.nodes[id].up) c.Restart(id);
  c.Run(6000);
  RC_ASSERT(c.violations == 0);
  for (RegionId g : c.ids) {
    if (c.Holder(g) == kNoRegion) {
      for (RegionId id : c.ids) {
        auto v = c.nodes[id].lm->View(g);
        log << "g=" << g << " at=" << id << " epoch=" << v.epoch << " owner=" << v.owner
            << " held=" << v.held << " syncing=" << v.syncing << " up=" << c.nodes[id].up << "\n";
        for (auto& e : c.nodes[id].events)
          if (e.group == g)
            log << "  n" << id << " " << LeaseEventName(e.kind) << " e=" << e.epoch
                << " o=" << e.owner << "\n";
      }
    }
    if (c.Holder(g) == kNoRegion) fprintf(stderr, "%s", log.str().c_str());
    RC_ASSERT(c.Holder(g) != kNoRegion);
  }
}

}  // namespace
}  // namespace meridian::replication
