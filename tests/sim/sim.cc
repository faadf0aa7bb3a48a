#include "tests/sim/sim.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <set>
#include <sstream>
#include <variant>

#include "common/quorum.h"
#include "crdt/cart.h"
#include "crdt/inventory.h"
#include "replication/clock.h"
#include "replication/lease.h"
#include "replication/rights.h"
#include "services/orders.h"

namespace meridian::sim {
namespace {

using replication::LeaseManager;
using replication::LeaseMessage;
using replication::RegionId;
using replication::RightsManager;
using replication::RightsMessage;

constexpr int64_t kTickMs = 25;
constexpr int64_t kCheckoutWaitMs = 200;   // the region's default bounded wait for rights
constexpr int64_t kSyncPeerWaitMs = 2000;  // a sync-peer checkout waits this long for a peer
constexpr int64_t kResendAfterMs = 400;    // no ack progress: resend from the last ack
constexpr int64_t kHeartbeatMs = 100;      // an empty batch when there is nothing to ship
constexpr int64_t kSyncAskEveryMs = 300;   // a takeover's sync request is repeated this often
constexpr size_t kBatchRecords = 64;
const char* const kJurisdictions[] = {"us", "eu", "ap", "eu", "us"};

class SimClock final : public replication::Clock {
 public:
  SimClock(const int64_t* global_ms, double rate, int64_t offset_ms)
      : global_ms_(global_ms), rate_(rate), offset_ms_(offset_ms) {}
  int64_t NowMs() const override {
    return offset_ms_ + static_cast<int64_t>(std::floor(static_cast<double>(*global_ms_) * rate_));
  }

 private:
  const int64_t* global_ms_;
  double rate_;
  int64_t offset_ms_;
};

class MemLeaseStore final : public replication::LeaseStore {
 public:
  std::map<RegionId, replication::AcceptorRecord> Load() override { return records; }
  absl::Status Save(RegionId g, const replication::AcceptorRecord& r) override {
    records[g] = r;
    return absl::OkStatus();
  }
  std::map<RegionId, replication::AcceptorRecord> records;
};

// --- what regions store and exchange ---------------------------------------------------------
using Payload =
    std::variant<crdt::Cart, crdt::Inventory, services::OrderEvent, services::OrderState>;
struct Record {
  uint64_t seq = 0;
  std::string key;
  std::string residency;  // "any" or a jurisdiction
  Payload payload;
};

// How far a region's state reflects each origin's outbox: `any` for the records every region may
// hold, `pinned` for those pinned to the region's own jurisdiction. A stream's applied mark moves
// both; a peer's state (a sync reply) moves `any`, and `pinned` only if the peer has the same
// jurisdiction (another one never had what is pinned to us).
struct Knowledge {
  std::map<RegionId, uint64_t> any, pinned;
};

struct Batch {
  RegionId origin = 0;
  uint64_t first = 0;  // records cover seqs [first, last]; absent ones were not for the receiver
  uint64_t last = 0;
  std::vector<Record> records;
  Knowledge known;  // how far the sender's state reflects each origin's stream
};
struct Ack {
  RegionId origin = 0;
  uint64_t seq = 0;
};
// A state pull: after a lease takeover (group, epoch set: the new owner syncs the group's orders
// before acting) or to catch up on a silent origin's stream from a peer that got further (group
// 0). The reply is the peer's whole state, readable by the asker, with the peer's marks: it
// reflects every origin's records through those marks, so the asker may move its own marks there.
struct SyncRequest {
  RegionId group = 0;
  uint64_t epoch = 0;
};
struct SyncReply {
  RegionId group = 0;
  uint64_t epoch = 0;
  Knowledge known;
  std::vector<services::OrderState> orders;
  std::vector<std::pair<std::string, crdt::Cart>> carts;
  crdt::Inventory inventory;
};
struct Forward {
  std::string order_id;
  services::OrderStatus to = services::OrderStatus::kPaid;
};
using Message =
    std::variant<Batch, Ack, LeaseMessage, RightsMessage, SyncRequest, SyncReply, Forward>;

struct User {
  std::string id;
  std::string residency;
};

struct Region {
  RegionId id = 0;
  std::string jurisdiction;
  std::unique_ptr<SimClock> clock;
  bool up = true;
  bool lost = false;
  uint64_t incarnation = 0;
  // durable (survives a crash)
  crdt::Inventory inv;
  std::map<std::string, crdt::Cart> carts;
  std::map<std::string, services::OrderState> orders;
  std::vector<Record> outbox;  // seq = index + 1
  std::map<RegionId, uint64_t> applied;
  MemLeaseStore lease_store;
  // volatile
  std::unique_ptr<LeaseManager> lm;
  std::unique_ptr<RightsManager> rm;
  struct PeerSend {
    uint64_t acked = 0;
    uint64_t next = 1;
    int64_t progress_at = 0;
    int64_t last_sent_at = -1000000;
  };
  std::map<RegionId, PeerSend> send;
  struct Waiter {
    std::string user, sku;
    int64_t qty = 0;
    int64_t deadline = 0;  // region clock
  };
  std::deque<Waiter> waiters;
  struct SyncWait {
    uint64_t seq = 0;
    std::string order_id;
    RegionId group = 0;
    int64_t deadline = 0;
  };
  std::vector<SyncWait> sync_waits;
  struct GroupSync {
    uint64_t epoch = 0;
    std::set<RegionId> replied;
    bool done = false;
    int64_t next_ask = 0;
  };
  std::map<RegionId, GroupSync> syncs;
  Knowledge known;                           // durable, with the state
  std::map<RegionId, Knowledge> peer_known;  // from their batches
  std::map<RegionId, int64_t> next_pull;     // per silent origin
  // (origin, peer): how far that peer's state reflected the origin when we last joined it
  std::map<std::pair<RegionId, RegionId>, std::pair<uint64_t, uint64_t>> pulled_at;

  Knowledge KnownNow() const {
    Knowledge k = known;
    k.any[id] = k.pinned[id] = outbox.size();
    return k;
  }

  int64_t Now() const { return clock->NowMs(); }
};

struct OrderFacts {
  RegionId region = 0;
  std::string residency;
  bool sync_acked = false;
  bool async_acked = false;
  std::set<RegionId> persisted_at;  // the allowed peers that had applied it when it was acked
};

class World {
 public:
  explicit World(const SimOptions& o) : opt_(o), rng_(o.seed) {}

  SimResult Run() {
    Setup();
    ScheduleWorkload();
    ScheduleFaults();
    At(opt_.workload_ms, [this] { EndFaults(); });
    const int64_t end = opt_.workload_ms + opt_.settle_ms;
    while (!q_.empty() && result_.ok) {
      Event e = q_.top();
      q_.pop();
      if (e.at > end) break;
      now_ = e.at;
      e.fn();
      if (result_.ok) CheckAlways();
    }
    if (result_.ok) CheckFinal();
    result_.stats.regions = static_cast<int>(regions_.size());
    return result_;
  }

 private:
  struct Event {
    int64_t at;
    uint64_t seq;
    std::function<void()> fn;
    bool operator>(const Event& o) const { return std::tie(at, seq) > std::tie(o.at, o.seq); }
  };

  // --- plumbing ----------------------------------------------------------------------------
  void At(int64_t t, std::function<void()> fn) { q_.push(Event{t, seq_++, std::move(fn)}); }
  int64_t Uniform(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng_);
  }
  double Unit() { return std::uniform_real_distribution<double>(0, 1)(rng_); }
  void Trace(const std::string& s) {
    if (opt_.trace) std::printf("[%7lld ms] %s\n", static_cast<long long>(now_), s.c_str());
  }
  void Fail(const std::string& why) {
    if (!result_.ok) return;
    result_.ok = false;
    std::ostringstream os;
    os << "t=" << now_ << " ms: " << why;
    result_.failure = os.str();
  }
  Region& R(RegionId id) { return regions_[id - 1]; }
  static bool Allowed(const Region& r, const std::string& residency) {
    return residency == "any" || residency == r.jurisdiction;
  }
  std::pair<RegionId, RegionId> Pair(RegionId a, RegionId b) {
    return {std::min(a, b), std::max(a, b)};
  }
  size_t Majority() const { return regions_.size() / 2 + 1; }

  void Send(RegionId from, RegionId to, Message m) {
    ++result_.stats.messages;
    if (trace_leases_) {
      if (const auto* lm = std::get_if<LeaseMessage>(&m)) {
        std::visit(
            [&](const auto& x) {
              using T = std::decay_t<decltype(x)>;
              std::string what;
              if constexpr (std::is_same_v<T, replication::LeaseRequest>) {
                what = "request e" + std::to_string(x.epoch) + (x.renewal ? " renew" : "");
              } else if constexpr (std::is_same_v<T, replication::LeaseReply>) {
                what = "reply e" + std::to_string(x.epoch) + (x.granted ? " GRANT" : " refuse") +
                       " rec e" + std::to_string(x.known_epoch) + "/r" +
                       std::to_string(x.known_owner);
              } else if constexpr (std::is_same_v<T, replication::LeaseRelease>) {
                what = "release e" + std::to_string(x.epoch);
              } else {
                what = "handback e" + std::to_string(x.epoch);
              }
              Trace("lease r" + std::to_string(from) + "->r" + std::to_string(to) + " g" +
                    std::to_string(x.group) + " " + what);
            },
            *lm);
      }
    }
    if (cut_.count(Pair(from, to))) return;
    if (Unit() < loss_) return;
    const int64_t base = delay_.at(Pair(from, to));
    int64_t d = base + Uniform(0, std::max<int64_t>(1, base / 2));
    At(now_ + d, [this, from, to, m] { Deliver(from, to, m); });
    if (Unit() < dup_) {
      At(now_ + d + Uniform(1, 50), [this, from, to, m] { Deliver(from, to, m); });
    }
  }

  void Deliver(RegionId from, RegionId to, const Message& m) {
    Region& r = R(to);
    if (!r.up || cut_.count(Pair(from, to))) return;
    r.lm->Heard(from);
    std::visit(
        [&](const auto& msg) {
          using T = std::decay_t<decltype(msg)>;
          if constexpr (std::is_same_v<T, Batch>) {
            OnBatch(r, from, msg);
          } else if constexpr (std::is_same_v<T, Ack>) {
            OnAck(r, from, msg);
          } else if constexpr (std::is_same_v<T, LeaseMessage>) {
            r.lm->OnMessage(from, msg);
          } else if constexpr (std::is_same_v<T, RightsMessage>) {
            r.rm->OnMessage(from, msg);
            Grants(r);  // an urgent request is answered at once
          } else if constexpr (std::is_same_v<T, SyncRequest>) {
            OnSyncRequest(r, from, msg);
          } else if constexpr (std::is_same_v<T, SyncReply>) {
            OnSyncReply(r, from, msg);
          } else {
            ChangeOrder(r, msg.order_id, msg.to, /*forwarded=*/true);
          }
        },
        m);
  }

  // --- setup ----------------------------------------------------------------------------------
  void Setup() {
    const int n = opt_.regions ? opt_.regions : static_cast<int>(Uniform(3, 5));
    regions_.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      Region& r = regions_[static_cast<size_t>(i)];
      r.id = static_cast<RegionId>(i + 1);
      r.jurisdiction = kJurisdictions[i];
      r.inv = crdt::Inventory(r.id);
      // Clocks: any offset (skew), rates within the lease protocol's drift bound.
      const double rate = 1.0 + (Unit() - 0.5) * lease_cfg_.max_drift;
      r.clock = std::make_unique<SimClock>(&now_, rate, Uniform(0, 1000000));
    }
    for (int a = 1; a <= n; ++a)
      for (int b = a + 1; b <= n; ++b)
        delay_[{static_cast<RegionId>(a), static_cast<RegionId>(b)}] = Uniform(1, 80);
    for (auto& r : regions_) Boot(r);
    users_.clear();
    for (int i = 0; i < 12; ++i) {
      std::string res = "any";
      if (Unit() < 0.3) res = kJurisdictions[Uniform(0, n - 1)];
      users_.push_back(User{"u" + std::to_string(i), res});
    }
    for (int i = 0; i < 3; ++i) scarce_.push_back("scarce-" + std::to_string(i));
    for (int i = 0; i < 6; ++i) cart_skus_.push_back("item-" + std::to_string(i));
    // Initial stock: each scarce SKU restocked at one or more regions (their rights).
    for (const auto& sku : scarce_) {
      const int parts = static_cast<int>(Uniform(1, n));
      for (int p = 0; p < parts; ++p)
        Restock(R(static_cast<RegionId>(Uniform(1, n))), sku, Uniform(5, 40));
    }
  }

  void Boot(Region& r) {
    std::vector<RegionId> ids;
    for (const auto& o : regions_) ids.push_back(o.id);
    std::vector<RegionId> peers;
    for (RegionId id : ids)
      if (id != r.id) peers.push_back(id);
    const RegionId self = r.id;
    const uint64_t inc = ++r.incarnation;
    r.lm = std::make_unique<LeaseManager>(
        self, ids, std::vector<RegionId>{}, lease_cfg_, &r.lease_store, r.clock.get(),
        [this, self](RegionId to, const LeaseMessage& m) { Send(self, to, m); },
        [this, self](const replication::LeaseEvent& e) { OnLeaseEvent(R(self), e); },
        [this, self](RegionId g, uint64_t e) { StartSync(R(self), g, e); });
    if (!r.lm->Start().ok()) Fail("lease manager did not start");
    r.rm = std::make_unique<RightsManager>(
        self, peers, rights_cfg_, r.clock.get(),
        [this, self](RegionId to, const RightsMessage& m) { Send(self, to, m); },
        [this, self](const std::string& sku) { return View(R(self), sku); });
    r.send.clear();
    for (RegionId p : peers) {
      Region::PeerSend ps;
      ps.progress_at = now_;
      // Resume from what the peer acknowledged before (it re-acks on the first batch anyway).
      r.send[p] = ps;
    }
    r.waiters.clear();
    r.sync_waits.clear();
    r.syncs.clear();
    r.up = true;
    const int64_t phase = Uniform(0, kTickMs - 1);
    At(now_ + phase, [this, self, inc] { Tick(self, inc); });
  }

  std::optional<replication::SkuRights> View(const Region& r, const std::string& sku) {
    const crdt::BoundedCounter* bc = r.inv.Find(sku);
    if (!bc) return std::nullopt;
    replication::SkuRights v;
    v.rights = bc->Rights(r.id);
    for (const auto& t : bc->transfers()) {
      if (t.from == r.id && t.to != r.id) v.given[t.to] = t.units;
      if (t.to == r.id && t.from != r.id) v.received[t.from] = t.units;
    }
    return v;
  }

  // --- the region's periodic work
  // -----------------------------------------------------------------
  void Tick(RegionId id, uint64_t inc) {
    Region& r = R(id);
    if (!r.up || r.incarnation != inc) return;
    r.lm->Tick();
    Grants(r);
    TryWaiters(r);
    CheckSyncWaits(r);
    PullSilentOrigins(r);
    for (auto& [g, s] : r.syncs) {
      if (r.Now() < s.next_ask) continue;
      s.next_ask = r.Now() + kSyncAskEveryMs;
      for (const auto& o : regions_)
        if (o.id != r.id && !s.replied.count(o.id)) Send(r.id, o.id, SyncRequest{g, s.epoch});
    }
    Ship(r);
    At(now_ + kTickMs, [this, id, inc] { Tick(id, inc); });
  }

  void Grants(Region& r) {
    for (const auto& g : r.rm->Tick()) {
      auto delta = r.inv.Transfer(g.sku, g.to, g.units);
      if (!delta.ok()) continue;  // sold meanwhile: harmless
      Append(r, g.sku, "any", *std::move(delta));
      ++result_.stats.grants;
      result_.stats.units_granted += static_cast<int>(g.units);
      Trace("r" + std::to_string(r.id) + " grants " + std::to_string(g.units) + " " + g.sku +
            " to r" + std::to_string(g.to) + (g.urgent ? " (urgent)" : ""));
    }
  }

  void Append(Region& r, const std::string& key, const std::string& residency, Payload p) {
    Record rec;
    rec.seq = r.outbox.size() + 1;
    rec.key = key;
    rec.residency = residency;
    rec.payload = std::move(p);
    r.outbox.push_back(std::move(rec));
  }

  void Ship(Region& r) {
    const int64_t now = r.Now();
    for (auto& [peer, ps] : r.send) {
      if (now - ps.progress_at > kResendAfterMs && ps.next > ps.acked + 1) {
        ps.next = ps.acked + 1;  // as a reconnect would: resume from the last ack
        ps.progress_at = now;
      }
      const uint64_t top = r.outbox.size();
      if (ps.next > top && now - ps.last_sent_at < kHeartbeatMs) continue;
      Batch b;
      b.origin = r.id;
      b.first = ps.next;
      b.last = std::min<uint64_t>(top, ps.next + kBatchRecords - 1);
      const Region& to = R(peer);
      for (uint64_t s = b.first; s <= b.last; ++s) {
        const Record& rec = r.outbox[s - 1];
        if (Allowed(to, rec.residency)) b.records.push_back(rec);
      }
      if (b.last >= b.first) ps.next = b.last + 1;
      b.known = r.KnownNow();
      ps.last_sent_at = now;
      Send(r.id, peer, std::move(b));
    }
  }

  void OnBatch(Region& r, RegionId from, const Batch& b) {
    r.peer_known[from] = b.known;
    uint64_t& mark = r.applied[from];
    if (b.first > mark + 1) {
      Send(r.id, from, Ack{from, mark});  // a gap: the sender resends from here
      return;
    }
    bool stock_changed = false;
    for (const Record& rec : b.records) {
      if (rec.seq <= mark) continue;  // a duplicate
      if (!Allowed(r, rec.residency)) {
        Fail("region " + std::to_string(r.id) + " received " + rec.key + " pinned to " +
             rec.residency);
        return;
      }
      stock_changed |= std::holds_alternative<crdt::Inventory>(rec.payload);
      Apply(r, rec);
    }
    if (b.last > mark) mark = b.last;
    r.known.any[from] = std::max(r.known.any[from], mark);
    r.known.pinned[from] = std::max(r.known.pinned[from], mark);
    Send(r.id, from, Ack{from, mark});
    if (stock_changed) TryWaiters(r);
  }

  void Apply(Region& r, const Record& rec) {
    if (const auto* c = std::get_if<crdt::Cart>(&rec.payload)) {
      r.carts.try_emplace(rec.key, crdt::Cart(r.id)).first->second.Merge(*c);
    } else if (const auto* i = std::get_if<crdt::Inventory>(&rec.payload)) {
      r.inv.Merge(*i);
    } else if (const auto* e = std::get_if<services::OrderEvent>(&rec.payload)) {
      auto out = services::ApplyOrderEvent(r.orders[rec.key], *e);
      if (!out.ok())
        Fail("order event rejected as malformed: " + std::string(out.status().message()));
      if (out.ok() && *out == services::ApplyOutcome::kStale) ++result_.stats.stale_rejected;
    } else {
      services::JoinOrder(r.orders[rec.key], std::get<services::OrderState>(rec.payload));
    }
  }

  void OnAck(Region& r, RegionId from, const Ack& a) {
    if (a.origin != r.id) return;
    auto& ps = r.send[from];
    if (a.seq > ps.acked) {
      ps.acked = a.seq;
      ps.progress_at = r.Now();
    }
    if (ps.next <= ps.acked) ps.next = ps.acked + 1;
    CheckSyncWaits(r);
  }

  // --- leases and the takeover sync ----------------------------------------------------------
  void OnLeaseEvent(Region& r, const replication::LeaseEvent& e) {
    using K = replication::LeaseEvent::Kind;
    if (e.kind == K::kAcquired && e.group != r.id) ++result_.stats.takeovers;
    if (e.kind == K::kReleased) ++result_.stats.handbacks;
    if (e.kind == K::kActive) {
      // A new owner acts only with every order of the group that was acknowledged as sync-peer
      // durable (and may live here) and that one of the regions it synced from held: otherwise
      // a customer's acknowledged order would be unknown to the region that now decides about
      // it. (It syncs from a majority; a peer outside it that holds an order is synced later.)
      std::set<RegionId> synced{r.id};
      if (auto it = r.syncs.find(e.group); it != r.syncs.end() && it->second.epoch == e.epoch) {
        synced.insert(it->second.replied.begin(), it->second.replied.end());
      }
      for (const auto& [id, f] : orders_) {
        if (!f.sync_acked || f.region != e.group || !Allowed(r, f.residency)) continue;
        bool reachable = synced.count(f.region) > 0;
        for (RegionId p : f.persisted_at) reachable = reachable || synced.count(p) > 0;
        if (!reachable) continue;
        auto it = r.orders.find(id);
        if (it == r.orders.end() || !it->second.created) {
          Fail("region " + std::to_string(r.id) + " became owner of group " +
               std::to_string(e.group) + " at epoch " + std::to_string(e.epoch) +
               " without sync-peer acknowledged order " + id);
          return;
        }
      }
    }
    Trace("r" + std::to_string(r.id) + " " + std::string(replication::LeaseEventName(e.kind)) +
          " group " + std::to_string(e.group) + " epoch " + std::to_string(e.epoch) + " owner r" +
          std::to_string(e.owner));
  }

  void StartSync(Region& r, RegionId group, uint64_t epoch) {
    Region::GroupSync& s = r.syncs[group];
    if (s.epoch == epoch) return;  // already under way (a re-win asks again)
    s = Region::GroupSync{epoch, {r.id}, false, r.Now()};
    // Sent on the next tick, and repeated until every peer answered once.
  }

  // An origin that has gone silent may have shipped more to some peers than to us, or they may
  // have its state through a sync: pull the state of a peer whose knowledge of it is ahead of
  // ours (nobody relays another region's stream).
  void PullSilentOrigins(Region& r) {
    const int64_t now = r.Now();
    for (const auto& x : regions_) {
      if (x.id == r.id || r.lm->Alive(x.id)) continue;
      int64_t& next = r.next_pull[x.id];
      if (now < next) continue;
      for (const auto& [peer, k] : r.peer_known) {
        if (peer == x.id || !r.lm->Alive(peer)) continue;
        const bool same = R(peer).jurisdiction == r.jurisdiction;
        auto get = [&](const std::map<RegionId, uint64_t>& m) {
          auto it = m.find(x.id);
          return it == m.end() ? uint64_t{0} : it->second;
        };
        const uint64_t any = get(k.any), pinned = same ? get(k.pinned) : 0;
        const auto& done = r.pulled_at[{x.id, peer}];
        const bool ahead = (any > get(r.known.any) && any > done.first) ||
                           (same && pinned > get(r.known.pinned) && pinned > done.second);
        if (!ahead) continue;
        Send(r.id, peer, SyncRequest{0, 0});
        next = now + 1000;
        break;
      }
    }
  }

  void OnSyncRequest(Region& r, RegionId from, const SyncRequest& m) {
    // A takeover sync is answered only once the asker's win is vouched for (it asks again).
    if (m.group != 0 && !r.lm->Learn(m.group, m.epoch, from)) return;
    const Region& to = R(from);
    SyncReply reply;
    reply.group = m.group;
    reply.epoch = m.epoch;
    reply.known = r.KnownNow();
    for (const auto& [id, o] : r.orders)
      if (Allowed(to, order_residency_[id])) reply.orders.push_back(o);
    for (const auto& [user, cart] : r.carts)
      if (Allowed(to, ResidencyOf(user))) reply.carts.emplace_back(user, cart);
    reply.inventory = r.inv;
    Send(r.id, from, std::move(reply));
  }

  void OnSyncReply(Region& r, RegionId from, const SyncReply& m) {
    for (const auto& o : m.orders) services::JoinOrder(r.orders[o.order_id], o);
    for (const auto& [user, cart] : m.carts) {
      r.carts.try_emplace(user, crdt::Cart(r.id)).first->second.Merge(cart);
    }
    r.inv.Merge(m.inventory);
    // The peer's state reflects each origin's records through its knowledge marks; ours move
    // there (pinned only with a peer of our jurisdiction), and so may the stream's applied mark:
    // an origin resuming later ships from it, and what lies before it is in the join.
    const bool same = R(from).jurisdiction == r.jurisdiction;
    for (const auto& [origin, seq] : m.known.any) {
      auto& done = r.pulled_at[{origin, from}];
      done.first = std::max(done.first, seq);
      if (origin != r.id) r.known.any[origin] = std::max(r.known.any[origin], seq);
    }
    for (const auto& [origin, seq] : m.known.pinned) {
      if (!same) break;
      auto& done = r.pulled_at[{origin, from}];
      done.second = std::max(done.second, seq);
      if (origin != r.id) r.known.pinned[origin] = std::max(r.known.pinned[origin], seq);
    }
    for (const auto& [origin, any] : r.known.any) {
      if (origin == r.id) continue;
      const uint64_t both = std::min(any, r.known.pinned[origin]);
      uint64_t& mark = r.applied[origin];
      if (both > mark) mark = both;
    }
    TryWaiters(r);
    auto it = r.syncs.find(m.group);
    if (it == r.syncs.end() || it->second.epoch != m.epoch) return;
    it->second.replied.insert(from);
    if (!it->second.done && it->second.replied.size() >= Majority()) {
      it->second.done = true;
      r.lm->SyncDone(m.group, m.epoch);
    }
    if (it->second.replied.size() == regions_.size()) r.syncs.erase(it);
  }

  const std::string& ResidencyOf(const std::string& user) {
    for (const auto& u : users_)
      if (u.id == user) return u.residency;
    static const std::string kAny = "any";
    return kAny;
  }

  // --- customer operations ----------------------------------------------------------------------
  void ScheduleWorkload() {
    for (int i = 0; i < opt_.ops; ++i) {
      const int64_t t = Uniform(0, opt_.workload_ms - 1);
      const double kind = Unit();
      const User user =
          users_[static_cast<size_t>(Uniform(0, static_cast<int64_t>(users_.size()) - 1))];
      const auto region = static_cast<RegionId>(Uniform(1, static_cast<int64_t>(regions_.size())));
      if (kind < 0.35) {
        const std::string sku = cart_skus_[static_cast<size_t>(Uniform(0, 5))];
        const bool remove = Unit() < 0.3;
        const int64_t qty = Uniform(1, 3);
        At(t,
           [this, user, region, sku, remove, qty] { CartEdit(R(region), user, sku, remove, qty); });
      } else if (kind < 0.75) {
        const std::string sku = scarce_[static_cast<size_t>(Uniform(0, 2))];
        const int64_t qty = Uniform(1, 3);
        At(t, [this, user, region, sku, qty] { Checkout(R(region), user, sku, qty); });
      } else if (kind < 0.95) {
        const auto pick = static_cast<size_t>(Uniform(0, 1 << 20));
        const auto to = std::vector<services::OrderStatus>{
            services::OrderStatus::kPaid, services::OrderStatus::kCancelled,
            services::OrderStatus::kRefunded,
            services::OrderStatus::kExpired}[static_cast<size_t>(Uniform(0, 3))];
        At(t, [this, region, pick, to] {
          if (order_ids_.empty()) return;
          ChangeOrder(R(region), order_ids_[pick % order_ids_.size()], to, false);
        });
      } else {
        const std::string sku = scarce_[static_cast<size_t>(Uniform(0, 2))];
        const int64_t units = Uniform(5, 30);
        At(t, [this, region, sku, units] {
          if (R(region).up) Restock(R(region), sku, units);
        });
      }
    }
  }

  void Restock(Region& r, const std::string& sku, int64_t units) {
    auto d = r.inv.Restock(sku, static_cast<uint64_t>(units));
    if (!d.ok()) return;
    restocked_[sku] += units;
    Append(r, sku, "any", *std::move(d));
    TryWaiters(r);
  }

  void CartEdit(Region& r, const User& u, const std::string& sku, bool remove, int64_t qty) {
    if (!r.up || !Allowed(r, u.residency)) return;  // the customer is sent elsewhere (307)
    crdt::Cart& cart = r.carts.try_emplace(u.id, crdt::Cart(r.id)).first->second;
    crdt::Cart delta = remove ? cart.Remove(sku) : cart.Add(sku, qty);
    cart_deltas_.push_back({u.id, r.id, delta});
    Append(r, u.id, u.residency, std::move(delta));
  }

  void Checkout(Region& r, const User& u, const std::string& sku, int64_t qty) {
    if (!r.up || !Allowed(r, u.residency)) return;
    if (!r.lm->CanMutate(r.id)) {
      ++result_.stats.checkouts_refused_no_lease;
      return;
    }
    r.rm->RecordDemand(sku, static_cast<uint64_t>(qty));
    if (r.inv.Rights(sku, r.id) >= qty) {
      Complete(r, u.id, sku, qty);
      return;
    }
    r.waiters.push_back(Region::Waiter{u.id, sku, qty, r.Now() + kCheckoutWaitMs});
    UpdateWaiting(r, sku);
  }

  void UpdateWaiting(Region& r, const std::string& sku) {
    int64_t need = 0;
    for (const auto& w : r.waiters)
      if (w.sku == sku) need += w.qty;
    const int64_t have = std::max<int64_t>(0, r.inv.Rights(sku, r.id));
    r.rm->SetWaiting(sku, static_cast<uint64_t>(std::max<int64_t>(0, need - have)));
  }

  void TryWaiters(Region& r) {
    if (!r.up || r.waiters.empty()) return;
    std::set<std::string> skus;
    std::deque<Region::Waiter> rest;
    while (!r.waiters.empty()) {
      Region::Waiter w = r.waiters.front();
      r.waiters.pop_front();
      skus.insert(w.sku);
      if (r.inv.Rights(w.sku, r.id) >= w.qty) {
        Complete(r, w.user, w.sku, w.qty);
      } else if (r.Now() >= w.deadline) {
        ++result_.stats.checkouts_refused_no_rights;
        // Was the refusal avoidable: did another live region hold enough spare rights?
        for (const auto& o : regions_) {
          if (o.id == r.id || !o.up) continue;
          if (o.inv.Rights(w.sku, o.id) >= w.qty) {
            ++result_.stats.refused_while_spare_elsewhere;
            break;
          }
        }
        Trace("r" + std::to_string(r.id) + " refuses " + w.sku + " x" + std::to_string(w.qty));
      } else {
        rest.push_back(w);
      }
    }
    r.waiters = std::move(rest);
    for (const auto& sku : skus) UpdateWaiting(r, sku);
  }

  void Complete(Region& r, const std::string& user, const std::string& sku, int64_t qty) {
    if (!r.lm->CanMutate(r.id)) {
      ++result_.stats.checkouts_refused_no_lease;
      return;
    }
    auto take = r.inv.Take(sku, static_cast<uint64_t>(qty));
    if (!take.ok()) {
      Fail("take failed after the rights check: " + std::string(take.status().message()));
      return;
    }
    sold_[sku] += qty;
    Append(r, sku, "any", *std::move(take));
    const std::string id = "o" + std::to_string(++order_counter_);
    const std::string& residency = ResidencyOf(user);
    order_residency_[id] = residency;
    const uint64_t epoch = r.lm->View(r.id).epoch;
    services::OrderEvent created =
        services::MakeOrderCreated(id, r.id, epoch, user, qty * 100, {{sku, qty, 100}});
    (void)services::ApplyOrderEvent(r.orders[id], created);
    Append(r, id, residency, created);
    order_ids_.push_back(id);
    order_skus_[id] = {sku, qty};
    OrderFacts& f = orders_[id];
    f.region = r.id;
    f.residency = residency;
    ++result_.stats.checkouts_ok;
    if (opt_.durability == Durability::kAsync) {
      f.async_acked = true;
    } else {
      r.sync_waits.push_back(
          Region::SyncWait{r.outbox.size(), id, r.id, r.Now() + kSyncPeerWaitMs});
      CheckSyncWaits(r);
    }
  }

  // A sync-peer checkout is acknowledged once enough peers have applied its order event that
  // every takeover quorum holds one, and only while this region still holds the lease: a
  // takeover after that syncs from one of those peers.
  void CheckSyncWaits(Region& r) {
    std::vector<Region::SyncWait> rest;
    for (const auto& w : r.sync_waits) {
      std::set<RegionId> persisted;
      for (const auto& [peer, ps] : r.send)
        if (ps.acked >= w.seq && Allowed(R(peer), orders_[w.order_id].residency)) {
          persisted.insert(peer);
        }
      // As the region's AwaitPeer: enough peers that every takeover quorum holds one of them.
      if (persisted.size() >= common::PeersForSurvival(regions_.size()) &&
          r.lm->CanMutate(w.group)) {
        orders_[w.order_id].sync_acked = true;
        orders_[w.order_id].persisted_at = persisted;
        ++result_.stats.orders_sync_acked;
      } else if (r.Now() >= w.deadline || !r.lm->CanMutate(w.group)) {
        orders_[w.order_id].async_acked = true;  // answered, saying durability was async
        ++result_.stats.orders_degraded;
      } else {
        rest.push_back(w);
      }
    }
    r.sync_waits = std::move(rest);
  }

  void ChangeOrder(Region& r, const std::string& id, services::OrderStatus to, bool forwarded) {
    if (!r.up) return;
    auto it = r.orders.find(id);
    if (it == r.orders.end() || !it->second.created) return;  // not here (yet): 404
    const RegionId group = it->second.group;
    if (!r.lm->CanMutate(group)) {
      if (forwarded) return;  // the owner moved on: the customer gets an error and retries
      const RegionId owner = r.lm->View(group).owner;
      if (owner != replication::kNoRegion && owner != r.id) {
        ++result_.stats.forwarded;
        Send(r.id, owner, Forward{id, to});
      }
      return;
    }
    auto e = services::MakeOrderChange(it->second, to, r.lm->View(group).epoch);
    if (!e.ok()) return;  // not allowed from its status: a 409 for the customer
    (void)services::ApplyOrderEvent(it->second, *e);
    Append(r, id, order_residency_[id], *e);
    ++result_.stats.order_changes;
    if (to != services::OrderStatus::kPaid) {
      // Cancelled, expired or refunded: the units return to this region's rights.
      const auto& [sku, qty] = order_skus_[id];
      Restock(r, sku, qty);
    }
  }

  // --- faults -----------------------------------------------------------------------------------
  void ScheduleFaults() {
    const int n = static_cast<int>(regions_.size());
    loss_ = std::vector<double>{0.0, 0.01, 0.05, 0.2}[static_cast<size_t>(Uniform(0, 3))];
    dup_ = std::vector<double>{0.0, 0.02, 0.1}[static_cast<size_t>(Uniform(0, 2))];
    const int faults = static_cast<int>(Uniform(0, 10));
    for (int i = 0; i < faults; ++i) {
      const int64_t t = Uniform(0, opt_.workload_ms - 1);
      const auto who = static_cast<RegionId>(Uniform(1, n));
      const int64_t dur = Uniform(200, 8000);
      switch (Uniform(0, 3)) {
        case 0:  // isolate a region
          At(t, [this, who, dur] {
            Trace("partition r" + std::to_string(who));
            ++result_.stats.partitions;
            for (const auto& o : regions_)
              if (o.id != who) cut_.insert(Pair(who, o.id));
            At(now_ + dur, [this, who] {
              Trace("heal r" + std::to_string(who));
              for (const auto& o : regions_)
                if (o.id != who) cut_.erase(Pair(who, o.id));
            });
          });
          break;
        case 1: {  // cut one pair
          auto other = static_cast<RegionId>(Uniform(1, n));
          if (other == who) break;
          At(t, [this, who, other, dur] {
            Trace("cut r" + std::to_string(who) + "-r" + std::to_string(other));
            cut_.insert(Pair(who, other));
            At(now_ + dur, [this, who, other] { cut_.erase(Pair(who, other)); });
          });
          break;
        }
        case 2:  // crash, restart later
          At(t, [this, who, dur] {
            Region& r = R(who);
            if (!r.up || r.lost) return;
            Trace("crash r" + std::to_string(who));
            ++result_.stats.crashes;
            Crash(r);
            At(now_ + dur, [this, who] {
              Region& rr = R(who);
              if (rr.up || rr.lost || ended_) return;
              Trace("restart r" + std::to_string(who));
              Boot(rr);
            });
          });
          break;
        default:  // slow links for a while
          At(t, [this, dur] {
            const double before = loss_;
            loss_ = std::min(0.3, loss_ + 0.1);
            At(now_ + dur, [this, before] {
              if (!ended_) loss_ = before;
            });
          });
          break;
      }
    }
    if (opt_.lose_region && Unit() < 0.5) {
      const auto who = static_cast<RegionId>(Uniform(1, n));
      At(Uniform(opt_.workload_ms / 4, opt_.workload_ms - 1), [this, who] {
        Region& r = R(who);
        if (r.lost) return;
        Trace("LOSE r" + std::to_string(who) + " for good");
        Crash(r);
        r.lost = true;
        result_.stats.lost_region = static_cast<int>(who);
      });
    }
  }

  void Crash(Region& r) {
    r.up = false;
    r.lm.reset();
    r.rm.reset();
    r.waiters.clear();  // those customers get an error: nothing was taken or acknowledged
    for (const auto& w : r.sync_waits) {
      // The process died before answering: the customer saw an error, but the order exists.
      (void)w;
    }
    r.sync_waits.clear();
    r.syncs.clear();
  }

  void EndFaults() {
    ended_ = true;
    Trace("end of workload: heal everything, restart crashed regions");
    cut_.clear();
    loss_ = 0;
    dup_ = 0;
    for (auto& r : regions_)
      if (!r.up && !r.lost) Boot(r);
  }

  // --- invariants -------------------------------------------------------------------------------
  void CheckAlways() {
    for (const auto& [sku, n] : sold_) {
      if (n > restocked_[sku]) {
        Fail("oversold " + sku + ": " + std::to_string(n) + " sold of " +
             std::to_string(restocked_[sku]));
        return;
      }
    }
    for (const auto& g : regions_) {
      int holders = 0;
      for (const auto& r : regions_)
        if (r.up && r.lm->CanMutate(g.id)) ++holders;
      if (holders > 1) {
        Fail("lease group " + std::to_string(g.id) + " mutable at " + std::to_string(holders) +
             " regions at once");
        return;
      }
    }
    for (const auto& r : regions_) {
      if (!r.up) continue;
      for (const auto& [sku, bc] : r.inv.items()) {
        if (bc.Rights(r.id) < 0) {
          Fail("region " + std::to_string(r.id) + " has negative rights for " + sku);
          return;
        }
      }
    }
  }

  void CheckFinal() {
    std::vector<const Region*> live;
    for (const auto& r : regions_)
      if (r.up && !r.lost) live.push_back(&r);
    if (live.empty()) return;
    for (const Region* r : live) {
      if (!r->waiters.empty()) Fail("checkouts still waiting at the end");
      if (!(r->inv == live[0]->inv)) {
        std::string detail;
        auto describe = [](const crdt::Inventory& inv) {
          std::string d;
          for (const auto& [sku, bc] : inv.items()) {
            d += " " + sku + "{";
            for (const auto& t : bc.transfers())
              d += "P" + std::to_string(t.from) + std::to_string(t.to) + "=" +
                   std::to_string(t.units) + "@" + std::to_string(t.seq) + " ";
            for (const auto& u : bc.spent())
              d += "U" + std::to_string(u.replica) + "=" + std::to_string(u.units) + "@" +
                   std::to_string(u.seq) + " ";
            d += "}";
          }
          return d;
        };
        detail = "\n  r" + std::to_string(live[0]->id) + ":" + describe(live[0]->inv) + "\n  r" +
                 std::to_string(r->id) + ":" + describe(r->inv);
        Fail("stock differs between regions " + std::to_string(live[0]->id) + " and " +
             std::to_string(r->id) + detail);
        return;
      }
    }
    // Carts: identical wherever the customer's data may live, and nothing a surviving region
    // accepted is missing.
    for (const auto& u : users_) {
      const crdt::Cart* first = nullptr;
      for (const Region* r : live) {
        if (!Allowed(*r, u.residency)) {
          if (r->carts.count(u.id)) Fail("cart of " + u.id + " found outside its residency");
          continue;
        }
        auto it = r->carts.find(u.id);
        static const crdt::Cart kEmpty;
        const crdt::Cart& c = it == r->carts.end() ? kEmpty : it->second;
        if (!first) {
          first = &c;
        } else if (!(c == *first)) {
          Fail("carts of " + u.id + " differ at region " + std::to_string(r->id));
          return;
        }
      }
      if (!first) continue;
      for (const auto& d : cart_deltas_) {
        if (d.user != u.id || R(d.region).lost) continue;
        crdt::Cart joined = *first;
        joined.Merge(d.delta);
        if (!(joined == *first)) {
          Fail("a cart change of " + u.id + " made at region " + std::to_string(d.region) +
               " was lost");
          return;
        }
      }
    }
    // Orders: identical where allowed; sync-peer acknowledged orders survive a lost region.
    for (const auto& [id, f] : orders_) {
      const services::OrderState* first = nullptr;
      int present = 0;
      for (const Region* r : live) {
        if (!Allowed(*r, f.residency)) continue;
        auto it = r->orders.find(id);
        if (it != r->orders.end() && it->second.created) ++present;
        static const services::OrderState kNone;
        const services::OrderState& s = it == r->orders.end() ? kNone : it->second;
        if (!first) {
          first = &s;
        } else if (!(s == *first)) {
          std::string detail;
          for (const Region* x : live) {
            auto o = x->orders.find(id);
            detail += " r" + std::to_string(x->id) + "=";
            detail +=
                o == x->orders.end()
                    ? std::string("none")
                    : (std::to_string(o->second.epoch) + "/" + std::to_string(o->second.version) +
                       "/" + std::string(services::OrderStatusName(o->second.status)) +
                       (o->second.created ? "" : "/no-facts"));
          }
          Fail("order " + id + " differs at region " + std::to_string(r->id) + ":" + detail);
          return;
        }
      }
      bool any_allowed = false;
      for (const Region* r : live) any_allowed |= Allowed(*r, f.residency);
      if (!any_allowed) continue;
      if (present == 0) {
        if (f.sync_acked) {
          Fail("order " + id + " acknowledged as sync-peer durable is lost");
          return;
        }
        if (f.async_acked && !R(f.region).lost) {
          Fail("order " + id + " lost although its region survived");
          return;
        }
        if (f.async_acked) ++result_.stats.orders_lost_async;
      }
    }
    // Leases: one usable holder per group.
    for (const auto& g : regions_) {
      int holders = 0;
      for (const Region* r : live)
        if (r->lm->CanMutate(g.id)) ++holders;
      if (holders != 1) {
        Fail("lease group " + std::to_string(g.id) + " has " + std::to_string(holders) +
             " usable holders at the end");
        return;
      }
    }
  }

  SimOptions opt_;
  std::mt19937_64 rng_;
  SimResult result_;
  int64_t now_ = 0;
  uint64_t seq_ = 0;
  bool ended_ = false;
  bool trace_leases_ = std::getenv("MERIDIAN_SIM_TRACE_LEASES") != nullptr;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> q_;
  std::vector<Region> regions_;
  std::map<std::pair<RegionId, RegionId>, int64_t> delay_;
  std::set<std::pair<RegionId, RegionId>> cut_;
  double loss_ = 0;
  double dup_ = 0;
  std::vector<User> users_;
  std::vector<std::string> scarce_;
  std::vector<std::string> cart_skus_;
  // the oracle
  std::map<std::string, int64_t> restocked_;
  std::map<std::string, int64_t> sold_;
  struct CartDelta {
    std::string user;
    RegionId region;
    crdt::Cart delta;
  };
  std::vector<CartDelta> cart_deltas_;
  std::map<std::string, OrderFacts> orders_;
  std::map<std::string, std::string> order_residency_;
  std::map<std::string, std::pair<std::string, int64_t>> order_skus_;
  std::vector<std::string> order_ids_;
  uint64_t order_counter_ = 0;
  replication::LeaseConfig lease_cfg_ = [] {
    replication::LeaseConfig c;
    c.ttl_ms = 2000;
    c.renew_interval_ms = 300;
    c.retry_interval_ms = 100;
    c.round_timeout_ms = 500;
    c.alive_timeout_ms = 800;
    c.margin_ms = 50;
    c.handback_after_ms = 2000;
    return c;
  }();
  replication::RightsConfig rights_cfg_;
};

}  // namespace

SimResult RunSimulation(const SimOptions& options) {
  World w(options);
  return w.Run();
}

}  // namespace meridian::sim
