#pragma once

// Order-ownership leases with fencing epochs.
//
// Every order belongs to a lease *group*: the region that created it (its home). A group is owned
// by one region at a time under a lease with an epoch (the fencing token). Each region runs one
// LeaseManager, which plays two roles:
//   - acceptor, for every group: it promises a holder not to grant the group to anyone else for
//     `ttl_ms` of its own clock after it received the holder's request, and it remembers, durably,
//     the highest epoch it granted and to whom;
//   - holder/candidate: it renews the groups it owns through a majority of acceptors, takes over a
//     silent owner's group at epoch + 1 when it is that group's designated successor, and hands a
//     group back to its home region once that region is healthy again.
//
// Safety (never two regions able to mutate one group at the same instant): a holder that started
// a round at t0 on its clock and got grants from a majority considers itself owner until
//   t0 + ttl_ms * (1 - 2 * max_drift) - margin_ms.
// Each granting acceptor received the request after t0 and will not grant a higher epoch for ttl_ms
// of its own clock, so, as long as clock *rates* differ by less than max_drift (offsets do not
// matter: only durations are used), every granting acceptor's promise outlives the holder's
// belief. A takeover needs a majority too, and two majorities share an acceptor; that acceptor
// grants the higher epoch only after its promise has run out. An acceptor grants one owner per
// epoch, so two candidates cannot both win the same epoch. A restarted acceptor (its promises
// were in memory) grants nothing new for ttl_ms. Epochs are saved before a grant is sent, so they
// never go back; a region that lost its store entirely is safe as long as it is a minority.
//
// Liveness: a group whose owner is silent (no message for alive_timeout_ms) is taken over, once
// the acceptors' promises to the old owner have run out, by the first region that is alive in the
// group's preference order: its home first, then the regions of the home's jurisdiction, then the
// others, each part by ascending id after the home, wrapping around (a pinned customer's orders
// stay workable after a failover wherever a second region of their jurisdiction exists). Every
// acquisition asks for a fresh epoch: above the highest epoch known won, and above the records a
// majority of acceptors reported in the last round (the majority-th smallest of them: enough to
// win, and no single acceptor's record can push it up), so candidates never deadlock on a
// contested epoch; an acceptor grants a higher epoch at once to the region it already promised
// (nobody else can hold a promise from it). An epoch above 1 becomes
// usable only after the host reports that it synced the group's orders from its peers (SyncDone):
// the new owner does not work on a stale copy.
//
// Claims and wins: an acceptor's record is a *claim* (the candidate may not have won). This region
// keeps the highest epoch its own acceptor granted (claimed_epoch, for operators) apart from the
// highest epoch it knows was *won*: only a won epoch moves the region's fence and makes a holder
// step down. It knows an epoch was
// won from its own wins, or from a peer saying so (a renewal, a winner's sync request — Learn() —
// or a handback) once that is *vouched for*: its own acceptor granted that epoch to that peer, or
// a majority of acceptors' records, asked for with a LeaseQuery, show it (records only grow, and
// an acceptor grants one owner per epoch: a majority holding it granted it). A peer's word alone
// (a bug, or a stolen certificate) moves nothing: a region that named an epoch nobody granted it
// cannot fence a group's rightful owner out. While another region's renewal is being checked,
// this region does not compete for that group. Each peer's claims are checked apart from every
// other peer's, so no peer's stream of claims keeps a real win from being checked.
//
// Epoch jumps: a request more than kMaxEpochJump above the group's *jump base* is refused: the
// highest epoch known won, or the acceptor's record as it was at Start (what it granted before),
// neither of which a peer's word moves. So one peer can move an acceptor's record at most that far
// while no majority wins, however many frames it sends, and never to kMaxEpoch; and no peer's
// word (a reply's record, an unchecked renewal) moves the epochs this region asks for: before,
// two such frames each raised them by the jump, past what every other acceptor would grant, and
// the group was never taken over again. A reply's record beyond the jump is checked with a query
// (a region rebuilt from nothing catches up so).
//
// Threading: not thread-safe; the host serializes calls (the replicator under one mutex, the
// simulator on one thread). No I/O: messages leave through the `send` callback, durable state
// through LeaseStore, time comes from Clock.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "replication/clock.h"

namespace meridian::replication {

using RegionId = uint32_t;  // a region's replica id, 1..255; 0 is "none"
inline constexpr RegionId kNoRegion = 0;

// The highest epoch anyone may name (the wire form refuses higher): 2^53, far beyond any lease's
// lifetime of takeovers, so that epoch + 1 never wraps, and exact in JSON (order events carry
// epochs). A LeaseManager never asks for a higher one: once a peer has named it (only a buggy or
// hostile one would), that group is not acquired again rather than asked for at an epoch every
// peer refuses.
inline constexpr uint64_t kMaxEpoch = uint64_t{1} << 53;

// How far above a group's jump base (the highest epoch known won, or the acceptor's record at its
// start) a request may ask, and a candidate may bid. Honest epochs grow by one per acquisition
// round (at most one every retry_interval_ms): 2^20 is days of failed rounds this region did not
// see.
inline constexpr uint64_t kMaxEpochJump = uint64_t{1} << 20;

// ttl_ms's range; within it, the other timings set the real minimum (LeaseConfig::MinTtlMs).
inline constexpr int64_t kLeaseTtlMsMin = 100;
inline constexpr int64_t kLeaseTtlMsMax = 600000;

struct LeaseConfig {
  int64_t ttl_ms = 6000;             // how long an acceptor's promise lasts
  int64_t renew_interval_ms = 1000;  // a holder starts a renewal round this often
  int64_t retry_interval_ms = 250;   // how often an acquisition (takeover, handback) is retried
  int64_t round_timeout_ms = 1500;   // a round without a majority by then is abandoned
  int64_t alive_timeout_ms = 2500;   // a peer unheard of this long is presumed down
  double max_drift = 0.01;           // bound on clock-rate differences (1%: very generous)
  int64_t margin_ms = 100;           // a holder stops this much before its computed expiry
  int64_t handback_after_ms = 5000;  // hand a group home once home was alive this long; 0: never
                                     // automatically (only HandBack())

  // InvalidArgument naming the field when a value is out of range or the timings contradict
  // each other (e.g. renew_interval_ms must leave a renewal room before expiry).
  [[nodiscard]] absl::Status Validate() const;
  // How long a holder may act on a round that started at t0: t0 + HolderValidityMs().
  [[nodiscard]] int64_t HolderValidityMs() const;
  // The smallest ttl_ms with which this config (its other fields as they are) passes Validate:
  // 2143 for the defaults (two renewals must fit in ttl_ms * (1 - 2 * max_drift) - margin_ms).
  // kLeaseTtlMsMax + 1 when no ttl_ms does (another field is out of range).
  [[nodiscard]] int64_t MinTtlMs() const;
};

// --- messages (plain values: the replicator maps them to protobuf, the simulator passes them) --
// A candidate asks for `group` at `epoch` (renewal: the epoch it holds; acquisition: a new one).
struct LeaseRequest {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  uint64_t round = 0;  // echoed in the reply, to match replies to the round that asked
  // A renewal: the sender won `epoch` (receivers learn who holds the group from it).
  bool renewal = false;
  friend bool operator==(const LeaseRequest&, const LeaseRequest&) = default;
};
// An acceptor's answer. `known_epoch`/`known_owner` are its record, so a refused candidate learns
// who holds the group now.
struct LeaseReply {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  uint64_t round = 0;
  bool granted = false;
  uint64_t known_epoch = 0;
  RegionId known_owner = kNoRegion;
  friend bool operator==(const LeaseReply&, const LeaseReply&) = default;
};
// A holder gives up `epoch` of `group` (it has stopped acting on it): acceptors drop their promise.
struct LeaseRelease {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  friend bool operator==(const LeaseRelease&, const LeaseRelease&) = default;
};
// From the holder to the group's home: "I released `epoch`; take epoch + 1".
struct LeaseHandback {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  friend bool operator==(const LeaseHandback&, const LeaseHandback&) = default;
};
// "What is your record for `group`?", asked to check that `epoch` was won (query: matches answers).
struct LeaseQuery {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  uint64_t query = 0;
  friend bool operator==(const LeaseQuery&, const LeaseQuery&) = default;
};
// An acceptor's answer to a LeaseQuery: its record for the group (0/kNoRegion: none).
struct LeaseRecordAnswer {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;  // the queried epoch, echoed
  uint64_t query = 0;
  uint64_t record_epoch = 0;
  RegionId record_owner = kNoRegion;
  friend bool operator==(const LeaseRecordAnswer&, const LeaseRecordAnswer&) = default;
};
using LeaseMessage = std::variant<LeaseRequest, LeaseReply, LeaseRelease, LeaseHandback, LeaseQuery,
                                  LeaseRecordAnswer>;

// An acceptor's durable record for one group.
struct AcceptorRecord {
  uint64_t epoch = 0;
  RegionId owner = kNoRegion;
  friend bool operator==(const AcceptorRecord&, const AcceptorRecord&) = default;
};

class LeaseStore {
 public:
  virtual ~LeaseStore() = default;
  // Every group's record as last saved; empty on a first start.
  [[nodiscard]] virtual std::map<RegionId, AcceptorRecord> Load() = 0;
  // Durable when it returns OK; on an error the grant is refused.
  [[nodiscard]] virtual absl::Status Save(RegionId group, const AcceptorRecord& record) = 0;
};

// What the host may want to log, count or act on (fences, syncs, DNS).
struct LeaseEvent {
  enum class Kind {
    kAcquired,      // won `epoch` of `group` (usable after SyncDone if sync was requested)
    kActive,        // the group became usable at `epoch`
    kLost,          // held `epoch` but a round failed to renew it before expiry, or refused
    kLearned,       // learned a higher epoch: `owner` holds `group` at `epoch` (raise the fence)
    kReleased,      // handed `group` back at `epoch`
    kStaleRefused,  // as acceptor, refused a request for an epoch below its record
  };
  Kind kind;
  RegionId group = kNoRegion;
  uint64_t epoch = 0;
  RegionId owner = kNoRegion;
};
std::string_view LeaseEventName(LeaseEvent::Kind kind);

// This region's view of one group, for the region (fences, forwarding) and for operators.
struct GroupView {
  RegionId group = kNoRegion;
  uint64_t epoch = 0;          // highest epoch known to have been won (the fence); 0: none
  RegionId owner = kNoRegion;  // who won it
  uint64_t claimed_epoch = 0;  // highest epoch granted by this acceptor or known won
  bool held = false;           // this region holds it (usable or syncing)
  bool usable = false;         // this region may mutate the group's orders now
  int64_t valid_for_ms = 0;    // when usable: how much longer (by this region's clock)
  bool syncing = false;        // won, waiting for SyncDone
};

class LeaseManager {
 public:
  using SendFn = std::function<void(RegionId to, const LeaseMessage& message)>;
  using EventFn = std::function<void(const LeaseEvent& event)>;
  // Called after winning a new epoch; the host syncs the group's orders from its peers, raising
  // their fences to `epoch` first, and then calls SyncDone(group, epoch).
  using SyncFn = std::function<void(RegionId group, uint64_t epoch)>;

  // `regions`: every region id (the groups, and the acceptors); `witnesses`: acceptor-only
  // members (a two-region deployment's third vote); `self` is in `regions` or `witnesses`.
  // REQUIRES: config.Validate().ok(); ids non-zero and distinct.
  LeaseManager(RegionId self, std::vector<RegionId> regions, std::vector<RegionId> witnesses,
               LeaseConfig config, LeaseStore* store, const Clock* clock, SendFn send,
               EventFn on_event = {}, SyncFn on_sync = {});

  // Each region's jurisdiction, for the preference order (regions missing here share none).
  // Every region must be given the same map, as it must the same `regions`. Call before Start().
  void SetJurisdictions(std::map<RegionId, std::string> jurisdictions);

  // Loads the acceptor records and starts the restart quarantine. Call once, before anything else.
  [[nodiscard]] absl::Status Start();

  // Drives renewals, takeovers, handbacks and round timeouts. Call every ~50 ms (or at every
  // simulated step); it sends at most one round per group per call.
  void Tick();
  // A message from `from`. Also counts as a sign of life from `from`.
  void OnMessage(RegionId from, const LeaseMessage& message);
  // Any other sign of life from a peer (a replication frame, a heartbeat).
  void Heard(RegionId peer);
  // The host finished syncing `group` for `epoch`: the group becomes usable (if still held).
  void SyncDone(RegionId group, uint64_t epoch);
  // Another region told us it won `group` at `epoch` (its sync request). True when that is known
  // here (vouched for, see above; or a later epoch is): it is remembered, and a holder of an older
  // epoch steps down. False while it is being checked with the acceptors (the host acts on none
  // of it; the peer asks again) or when it cannot be (a malformed claim).
  [[nodiscard]] bool Learn(RegionId group, uint64_t epoch, RegionId owner);
  // Operator or failover controller: hand `group` back to its home now (if held and not home).
  [[nodiscard]] absl::Status HandBack(RegionId group);

  [[nodiscard]] bool CanMutate(RegionId group) const;
  [[nodiscard]] GroupView View(RegionId group) const;
  [[nodiscard]] std::vector<GroupView> Views() const;
  [[nodiscard]] bool Alive(RegionId peer) const;
  [[nodiscard]] RegionId self() const { return self_; }
  // The group's successors in preference order: home first, then the regions of its jurisdiction.
  [[nodiscard]] std::vector<RegionId> Preference(RegionId group) const;

 private:
  struct Acceptor {
    AcceptorRecord record;
    int64_t promised_until_ms = 0;
    uint64_t start_epoch = 0;  // the record's epoch at Start (part of the jump base)
  };
  struct Holding {
    enum class State { kIdle, kAcquiring, kSyncing, kActive };
    State state = State::kIdle;
    uint64_t epoch = 0;  // the epoch held or being acquired
    int64_t valid_until_ms = 0;
    // the round in flight
    uint64_t round = 0;
    int64_t round_start_ms = 0;
    int64_t round_sent_ms = 0;
    bool round_open = false;
    std::set<RegionId> grants;
    std::set<RegionId> refusals;
    // The records the acceptors reported in replies to the last round (the next bid's basis).
    std::map<RegionId, uint64_t> records;
    int64_t next_round_ms = 0;
    // handbacks
    uint64_t released_epoch = 0;        // this region released this epoch (don't reacquire it)
    uint64_t handback_offer_epoch = 0;  // home side: the holder released this epoch for us
    int64_t home_alive_since_ms = -1;   // holder side: since when home has been alive again
  };
  struct Won {
    uint64_t epoch = 0;
    RegionId owner = kNoRegion;
  };
  // A claim being checked: which acceptors' records show `owner` holding `epoch`. It stays open
  // while the claim is repeated (a holder renews every renew_interval_ms), and the acceptors that
  // have not answered are asked again every retry_interval_ms (a query lost with a stream that
  // was not up yet must not hold the answer back for long).
  struct Check {
    uint64_t epoch = 0;
    RegionId owner = kNoRegion;
    uint64_t query = 0;
    int64_t started_ms = 0;
    int64_t sent_ms = 0;
    int64_t claimed_ms = 0;       // when the claim was last heard
    int64_t renewed_ms = -1;      // when it was last heard as a renewal (-1: never)
    std::set<RegionId> answered;  // this region counts as having answered from the start
    std::set<RegionId> backers;   // answered with exactly (epoch, owner)
  };
  // A renewal heard: who renewed which epoch, when. It makes this region leave the group alone
  // only once that epoch is known won by that renewer.
  struct Renewal {
    RegionId from = kNoRegion;
    uint64_t epoch = 0;
    int64_t at_ms = 0;
  };

  void OnRequest(RegionId from, const LeaseRequest& m);
  void OnReply(RegionId from, const LeaseReply& m);
  void OnRelease(RegionId from, const LeaseRelease& m);
  void OnHandback(RegionId from, const LeaseHandback& m);
  void OnQuery(RegionId from, const LeaseQuery& m);
  void OnRecordAnswer(RegionId from, const LeaseRecordAnswer& m);
  // True when `owner` is known to have won `epoch` of `group` (or a later epoch is known won);
  // otherwise starts (or keeps open) a check of it with the acceptors and returns false.
  // `from`: the peer whose word it is (its claims share one check); `renewal`: the claim is a
  // holder's renewal (a live holder repeats it).
  bool Vouched(RegionId group, uint64_t epoch, RegionId owner, RegionId from, bool renewal = false);
  void AskRecords(RegionId group, Check& c, int64_t now);
  // Whether the answers so far leave `c` no way to a majority.
  bool Refuted(const Check& c) const;
  // Whether another region's renewal of `group` is being checked (this region then waits for the
  // answer rather than compete for the group). Only renewals count: they stop when their holder
  // steps down, while a sync request is asked again until answered.
  bool Checking(RegionId group) const;
  // Whether `from` is an acceptor of this deployment (a region or a witness).
  bool IsMember(RegionId from) const;
  void Deliver(RegionId to, const LeaseMessage& m);
  void StartRound(RegionId group, Holding& h, uint64_t epoch, int64_t now);
  void StepDown(RegionId group, Holding& h, LeaseEvent::Kind why);
  void Claim(RegionId group, uint64_t epoch);
  // See kMaxEpochJump.
  uint64_t JumpBase(RegionId group) const;
  // The epoch the next acquisition round of `group` asks for (may exceed kMaxEpoch: not asked).
  uint64_t NextEpoch(RegionId group, const Holding& h) const;
  void LearnWon(RegionId group, uint64_t epoch, RegionId owner);
  void Release(RegionId group, Holding& h);
  bool WantsToAcquire(RegionId group, const Holding& h) const;
  bool Designated(RegionId group) const;
  void Emit(LeaseEvent::Kind kind, RegionId group, uint64_t epoch, RegionId owner);
  size_t Majority() const { return (regions_.size() + witnesses_.size()) / 2 + 1; }
  bool IsHolder() const;
  static bool Held(const Holding& h) {
    return h.state == Holding::State::kActive || h.state == Holding::State::kSyncing;
  }

  RegionId self_;
  std::vector<RegionId> regions_;    // sorted
  std::vector<RegionId> witnesses_;  // sorted
  std::map<RegionId, std::string> jurisdictions_;
  LeaseConfig config_;
  LeaseStore* store_;
  const Clock* clock_;
  SendFn send_;
  EventFn on_event_;
  SyncFn on_sync_;
  bool started_ = false;
  int64_t quarantine_until_ms_ = 0;
  int64_t listen_until_ms_ = 0;  // after a restart: hear the holders' renewals before competing
  uint64_t next_round_id_ = 1;
  std::map<RegionId, Acceptor> acceptors_;
  std::map<RegionId, Holding> holdings_;
  std::map<RegionId, uint64_t> claimed_;  // highest epoch granted here or known won
  std::map<RegionId, Won> won_;           // highest epoch known won
  // the last renewal request heard for each group: from whom, when (its holder is active)
  std::map<RegionId, Renewal> last_renewal_;
  std::map<RegionId, int64_t> last_heard_ms_;
  std::map<RegionId, uint64_t> synced_epoch_;  // SyncDone received for this epoch
  // Claims being checked, by (group, the peer whose word it is): one per peer and group at a time.
  std::map<std::pair<RegionId, RegionId>, Check> checks_;
  uint64_t next_query_id_ = 1;
};

}  // namespace meridian::replication
