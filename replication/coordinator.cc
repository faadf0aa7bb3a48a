#include "replication/coordinator.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/config_files.h"
#include "common/grpc_auth.h"
#include "common/quorum.h"
#include "crdt/bounded_counter.h"
#include "region/http/http_server.h"
#include "region/http/router.h"
#include "replication/account_questions.h"
#include "replication/accounts.h"
#include "replication/clock.h"
#include "replication/lease.h"
#include "replication/lease_frames.h"
#include "replication/page_cursor.h"
#include "replication/rights.h"
#include "services/auth.h"
#include "services/domain.h"

namespace meridian::replication {
namespace {

namespace rpb = ::meridian::region::v1;
using Json = nlohmann::json;
using region::http::HttpRequest;
using region::http::HttpResponse;

// SKUs per GetRightsViews call (the region takes at most 10,000): asked-about ones, then cached.
constexpr size_t kRefreshWanted = 5000;
constexpr size_t kRefreshViews = 2000;
constexpr int kSyncPage = 500;
// Write-offs a peer asked for that the region could not do yet, kept to retry.
constexpr size_t kMaxPendingRetires = 1000;
// How long a survivor keeps asking a new owner for a dead region's orders.
constexpr auto kCatchUpMax = std::chrono::minutes(2);

std::unique_ptr<grpc::ClientContext> Ctx(int timeout_ms) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  return ctx;
}

// --- frames <-> the logic's messages ------------------------------------------------------------
pb::Frame ToFrame(const LeaseMessage& m) {
  pb::Frame f;
  *f.mutable_lease() = ToLeaseFrame(m);
  return f;
}

pb::Frame ToFrame(const RightsMessage& m) {
  pb::Frame f;
  pb::RightsFrame* r = f.mutable_rights();
  if (const auto* g = std::get_if<RightsGossip>(&m)) {
    auto* out = r->mutable_gossip();
    for (const auto& e : g->entries) {
      auto* x = out->add_entries();
      x->set_sku(e.sku);
      x->set_rights(e.rights);
      x->set_demand_per_s(e.demand_per_s);
      x->set_waiting(e.waiting);
      for (const auto& [replica, units] : e.received) {
        auto* rf = x->add_received();
        rf->set_replica(replica);
        rf->set_units(units);
      }
    }
  } else {
    const auto& q = std::get<RightsRequest>(m);
    r->mutable_request()->set_sku(q.sku);
    r->mutable_request()->set_units(q.units);
  }
  return f;
}

// A declaration as the region that stores it takes it (RegionControl.RetireRights): an id, a
// declarer, and items of distinct SKUs, each well formed (services::ValidReclaimedItem). Checked
// up front, so that a frame carrying several (a takeover sync's reply) is refused before any is
// written off, not after the first few. In that reply its declarer may be any region (the replier's
// records of others'); in a write-off or a declaration frame it must be the sender (CheckFrame).
bool WellFormed(const pb::RightsRetire& r) {
  if (r.declaration_id().empty() || r.declaration_id().size() > 64 || r.declared_by() == 0 ||
      r.declared_by() > 255 || r.items_size() > 100000) {
    return false;
  }
  std::set<std::string_view> skus;
  for (const auto& i : r.items()) {
    if (!services::ValidReclaimedItem(i.sku(), i.units(), i.received()) ||
        (i.has_restocked() && i.restocked() > i.units()) || !skus.insert(i.sku()).second) {
      return false;
    }
  }
  return true;
}

// A peer's gossip or request, checked whole: a frame with one entry out of range is refused (and
// counted), not used in part. The ranges are RightsManager::OnMessage's, which still drops
// such entries of any other caller. `max_entries`: twice the gossip size this region sends;
// `regions`: the deployment's replica ids, the only ones an entry's `received` may name (before,
// any id 1..255 was taken, so a frame could hold 255 map nodes per entry: the adversarial review
// of 2026-12-04 counted about 50 MB of memory kept for an 8 MB frame).
absl::StatusOr<RightsMessage> FromFrame(const pb::RightsFrame& r, size_t max_entries,
                                        const std::set<uint32_t>& regions) {
  constexpr uint64_t kMaxUnits = uint64_t{1} << 40;  // a request, a wait (as OnMessage)
  if (r.has_gossip()) {
    if (static_cast<size_t>(r.gossip().entries_size()) > max_entries) {
      return absl::InvalidArgumentError(
          absl::StrCat("rights gossip: more than ", max_entries, " entries"));
    }
    RightsGossip g;
    for (const auto& x : r.gossip().entries()) {
      if (!services::ValidateSku(x.sku()).ok() || !std::isfinite(x.demand_per_s()) ||
          x.demand_per_s() < 0 || x.demand_per_s() > 1e9 || x.rights() < -(int64_t{1} << 41) ||
          x.rights() > (int64_t{1} << 41) || x.waiting() > kMaxUnits || x.received_size() > 255) {
        return absl::InvalidArgumentError("rights gossip: malformed entry");
      }
      RightsGossip::Entry e;
      e.sku = x.sku();
      e.rights = x.rights();
      e.demand_per_s = x.demand_per_s();
      e.waiting = x.waiting();
      for (const auto& rf : x.received()) {
        if (!regions.contains(rf.replica()) || rf.units() > (uint64_t{1} << 50)) {
          return absl::InvalidArgumentError(
              "rights gossip: received rights of a region not in the deployment, or out of range");
        }
        if (!e.received.emplace(rf.replica(), rf.units()).second) {
          return absl::InvalidArgumentError("rights gossip: received rights named twice");
        }
      }
      g.entries.push_back(std::move(e));
    }
    return RightsMessage(std::move(g));
  }
  if (r.has_request()) {
    if (!services::ValidateSku(r.request().sku()).ok() || r.request().units() > kMaxUnits) {
      return absl::InvalidArgumentError("rights request: malformed SKU or units above 2^40");
    }
    return RightsMessage(RightsRequest{r.request().sku(), r.request().units()});
  }
  return absl::InvalidArgumentError("rights frame without a kind");
}

// The acceptor's records in the region's global database.
class RegionLeaseStore final : public LeaseStore {
 public:
  explicit RegionLeaseStore(rpb::RegionControl::Stub* stub) : stub_(stub) {}
  std::map<RegionId, AcceptorRecord> Load() override { return loaded_; }
  absl::Status Save(RegionId group, const AcceptorRecord& record) override {
    rpb::SaveLeaseRecordRequest req;
    req.mutable_record()->set_group(group);
    req.mutable_record()->set_epoch(record.epoch);
    req.mutable_record()->set_owner(record.owner);
    rpb::SaveLeaseRecordResponse resp;
    auto ctx = Ctx(2000);
    grpc::Status s = stub_->SaveLeaseRecord(ctx.get(), req, &resp);
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return absl::OkStatus();
  }
  absl::Status Preload() {
    rpb::LoadLeaseRecordsResponse resp;
    auto ctx = Ctx(5000);
    grpc::Status s = stub_->LoadLeaseRecords(ctx.get(), rpb::LoadLeaseRecordsRequest(), &resp);
    if (!s.ok()) {
      return absl::UnavailableError(absl::StrCat("region LoadLeaseRecords: ", s.error_message()));
    }
    for (const auto& r : resp.records()) loaded_[r.group()] = AcceptorRecord{r.epoch(), r.owner()};
    return absl::OkStatus();
  }

 private:
  rpb::RegionControl::Stub* stub_;
  std::map<RegionId, AcceptorRecord> loaded_;
};

}  // namespace

struct Coordinator::Impl {
  ReplicatorConfig config;
  std::unique_ptr<rpb::RegionControl::Stub> region;
  Tls tls;
  SendFn send;
  SteadyClock clock;
  std::unique_ptr<RegionLeaseStore> store;

  std::mutex mu;  // the logic and its caches
  std::unique_ptr<LeaseManager> lm;
  std::unique_ptr<RightsManager> rm;
  std::map<std::string, SkuRights> views;  // this region's rights, refreshed every tick
  std::set<std::string> wanted;            // SKUs the rights manager asked about, not cached yet
  struct Sync {
    uint64_t epoch = 0;
    std::set<RegionId> done;
    std::map<RegionId, PageCursor> pages;  // per peer: the page asked of it, when
    bool usable = false;
    bool held_for_retires = false;  // quorum answered; waits for this region's write-offs
  };
  std::map<RegionId, Sync> syncs;  // per group being synced after a win
  struct CatchUp {
    uint64_t epoch = 0;
    RegionId owner = 0;  // the group's new owner, asked for its orders
    PageCursor page;     // the page asked of it, when
    std::chrono::steady_clock::time_point started;
    int64_t orders = 0;  // received so far
    bool done = false;   // kept, so a resent sync request of the same epoch starts no second one
  };
  std::map<RegionId, CatchUp> catchups;  // per dead region's group taken over by a peer
  std::function<void(RegionId)> on_taken_over;
  // The survivors whose exchange about a lost region is not done here (Replicator: owe_marks).
  std::function<std::vector<RegionId>(RegionId lost)> exchange_pending;
  // Groups taken over and not yet handed to on_taken_over: kept until the tick's call returns, so
  // that a declare-lost in between sees the exchange the takeover starts as not done.
  std::vector<RegionId> taken_over;
  std::map<RegionId, uint64_t> takeover_epochs;  // the latest takeover noted per group
  std::set<RegionId> streams_down;  // peers whose stream ended and has not come up again

  // Notes (under mu) that `group`, a peer region's, is held away from its home at `epoch`: the
  // tick hands it to on_taken_over once per epoch, however many of the ways below saw it first
  // (our win, the new owner's sync request, its lease renewals).
  void NoteTakeover(RegionId group, uint64_t epoch) {
    if (group == config.replica_id) return;
    uint64_t& noted = takeover_epochs[group];
    if (epoch <= noted) return;
    noted = epoch;
    taken_over.push_back(group);
  }

  std::mutex acks_mu;
  std::map<std::pair<std::string, RegionId>, int64_t> acks;  // not yet reported to the region
  std::set<RegionId> peers_up;  // streams that came up: tell them of declarations (under acks_mu)
  // Peers asked to settle our declarations against them (RightsRetire.settle): asked again at
  // this time while any is still awaiting (an answer lost with a stream, a database error there).
  std::map<RegionId, std::chrono::steady_clock::time_point> settle_retry;
  // Declarations against this region whose write-off failed (the region unreachable, a database
  // error): tried again every tick until it succeeds, since until then the region still counts
  // the reclaimed units as its own rights (under acks_mu).
  std::map<std::string, pb::RightsRetire> pending_retires;
  // Our declarations whose declare-lost call waits: the peers that recorded each so far
  // (DeclarationRecorded), under acks_mu.
  std::map<std::string, std::set<RegionId>> recorded_by;
  std::condition_variable recorded_cv;
  std::mutex declare_mu;  // one declare-lost call at a time (they share recorded_by's entries)

  std::atomic<bool> stopping{false};
  std::mutex wake_mu;
  std::condition_variable wake_cv;
  bool wake = false;
  std::vector<std::thread> threads;

  // The slow half of each tick (region calls of up to seconds each: write-offs, grants, view
  // refreshes) runs on a thread of its own (WorkLoop), so that lease rounds never wait for it:
  // before, a tick that waited out a slow region (a 10 s write-off retry per pending
  // declaration, grants, views) held the next renewal back, and the region's own lease could
  // lapse (adversarial review, 2026-12-04). A tick hands over its latest grants and SKUs to
  // refresh; grants the worker had not started yet are replaced (the rights manager takes an
  // unexecuted grant as one the views will correct).
  std::mutex push_mu;  // one lease push at a time (PushLeases); taken before mu
  std::mutex work_mu;
  std::condition_variable work_cv;
  bool work_ready = false;
  std::vector<RightsManager::Grant> work_grants;
  std::set<std::string> work_want;

  std::map<RegionId, std::unique_ptr<pb::Replication::Stub>> peer_stubs;
  std::unique_ptr<grpc::Server> control_server;
  std::unique_ptr<rpb::OrderForwarder::Service> forwarder;
  int control_port = 0;
  std::unique_ptr<region::http::HttpServer> admin;
  region::http::Router router;

  const Peer* PeerById(RegionId id) const {
    for (const auto& p : config.peers)
      if (p.replica_id == id) return &p;
    return nullptr;
  }
  std::string Name(RegionId id) const {
    if (id == config.replica_id) return config.region;
    if (const Peer* p = PeerById(id)) return p->name;
    return id == 0 ? std::string("none") : absl::StrCat("replica-", id);
  }

  void Wake() {
    {
      std::lock_guard<std::mutex> l(wake_mu);
      wake = true;
    }
    wake_cv.notify_all();
  }
  bool Sleep(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> l(wake_mu);
    wake_cv.wait_for(l, d, [&] { return wake || stopping.load(); });
    wake = false;
    return !stopping;
  }

  void SendLease(RegionId to, const LeaseMessage& m) {
    if (config.witness && to == config.witness->replica_id) {
      {
        std::lock_guard<std::mutex> l(witness_mu);
        if (witness_queue.size() < 256) witness_queue.push_back(ToLeaseFrame(m));
      }
      witness_cv.notify_all();
      return;
    }
    (void)send(to, ToFrame(m));
  }

  // The witness is called, one request at a time, from its own thread; its reply goes to the
  // lease manager like any acceptor's.
  void WitnessLoop() {
    while (!stopping) {
      pb::LeaseFrame f;
      {
        std::unique_lock<std::mutex> l(witness_mu);
        witness_cv.wait_for(l, std::chrono::milliseconds(200),
                            [&] { return !witness_queue.empty() || stopping.load(); });
        if (witness_queue.empty()) continue;
        f = std::move(witness_queue.front());
        witness_queue.pop_front();
      }
      pb::LeaseFrame reply;
      auto ctx = Ctx(1000);
      grpc::Status s = witness_stub->Lease(ctx.get(), f, &reply);
      if (!s.ok()) continue;  // lost: the lease round asks again
      const RegionId w = config.witness->replica_id;
      std::lock_guard<std::mutex> l(mu);
      lm->Heard(w);
      if (reply.kind_case() == pb::LeaseFrame::KIND_NOT_SET) continue;
      auto m = FromLeaseFrame(reply);
      if (m.ok()) lm->OnMessage(w, *m);
    }
  }
  std::mutex witness_mu;
  std::condition_variable witness_cv;
  std::deque<pb::LeaseFrame> witness_queue;
  std::unique_ptr<pb::LeaseWitness::Stub> witness_stub;
  void SendRights(RegionId to, const RightsMessage& m) { (void)send(to, ToFrame(m)); }
  // The peers rights must not be given to (under mu): those without a stream, and those whose
  // group another region holds (lost). A region that died has gossiped its demand until its last
  // moment, and that gossip stays fresh for info_ttl_ms: without this, a survivor that restocked
  // (a declaration's reclaimed units) within that time gave them all to the dead region.
  std::set<RegionId> Away(const std::vector<GroupView>& leases) const {
    std::set<RegionId> away = streams_down;
    for (const GroupView& v : leases) {
      if (v.group != config.replica_id && v.owner != kNoRegion && v.owner != v.group) {
        away.insert(v.group);
      }
    }
    return away;
  }

  // --- the tick: leases, grants, rights views, the region's lease table, syncs -------------------
  void TickLoop() {
    while (Sleep(std::chrono::milliseconds(50))) Tick();
  }

  void Tick() {
    std::vector<RightsManager::Grant> grants;
    std::vector<GroupView> leases;
    std::set<std::string> want;
    std::vector<std::pair<RegionId, pb::Frame>> sync_asks;
    std::vector<RegionId> taken;
    {
      std::lock_guard<std::mutex> l(mu);
      lm->Tick();
      taken = taken_over;
      leases = lm->Views();
      rm->SetAway(Away(leases));
      grants = rm->Tick();
      // Rights are spent (sold or given) only under this region's own lease, usable only once its
      // write-offs are done (MaybeFinishSync): a returning region's rights may include units
      // reclaimed from it. The manager takes an unexecuted grant as one the view will correct.
      if (!grants.empty() && !lm->CanMutate(config.replica_id)) {
        spdlog::debug("event=rights_grants_held count={} (no usable lease of our own)",
                      grants.size());
        grants.clear();
      }
      // The region reads at most 10,000 SKUs a call: what was asked about first, in slices, then
      // the cached views to refresh.
      for (const auto& sku : wanted) {
        if (want.size() >= kRefreshWanted) break;
        want.insert(sku);
      }
      for (const auto& [sku, v] : views) {
        if (want.size() >= kRefreshWanted + kRefreshViews) break;
        want.insert(sku);
      }
      const auto now = std::chrono::steady_clock::now();
      const int64_t now_ms = clock.NowMs();
      // Syncs: ask each peer for its first page, then again for the page outstanding (never the
      // first again) when it has been quiet for a second (a frame lost with a stream, or a round
      // slower than that: its reply to the page asked before is still taken, a duplicate dropped).
      for (auto& [group, s] : syncs) {
        for (const auto& p : config.peers) {
          if (s.done.count(p.replica_id)) continue;
          if (std::optional<std::string> key = s.pages[p.replica_id].Reask(now_ms)) {
            sync_asks.emplace_back(p.replica_id, SyncRequest(group, s.epoch, *key));
          }
        }
      }
      // Catch-ups: ask again for the page outstanding when unanswered for a second; give up after
      // kCatchUpMax (the owner gone too: the next owner's sync starts a new one).
      for (auto it = catchups.begin(); it != catchups.end();) {
        CatchUp& c = it->second;
        if (c.done) {
          ++it;
          continue;
        }
        if (now - c.started > kCatchUpMax) {
          spdlog::warn("event=lease_catchup_abandoned group={} epoch={} from={} orders={}",
                       Name(it->first), c.epoch, Name(c.owner), c.orders);
          c.done = true;
        } else if (c.page.Reask(now_ms)) {
          sync_asks.emplace_back(c.owner, CatchUpRequest(it->first, c));
        }
        ++it;
      }
    }
    // The leases first: the region counts a lease's validity from when the push arrives, so
    // everything between taking the views and pushing them (grants and view refreshes are RPCs of
    // up to seconds) would be time the region believes it holds a lease the manager may no
    // longer hold.
    PushLeases();
    for (auto& [peer, f] : sync_asks) (void)send(peer, std::move(f));
    if (!taken.empty()) {
      if (on_taken_over) {
        for (RegionId g : taken) on_taken_over(g);
      }
      std::lock_guard<std::mutex> l(mu);  // NoteTakeover only appends
      taken_over.erase(taken_over.begin(),
                       taken_over.begin() + static_cast<std::ptrdiff_t>(taken.size()));
    }
    {
      std::lock_guard<std::mutex> l(work_mu);
      work_grants = std::move(grants);
      work_want = std::move(want);
      work_ready = true;
    }
    work_cv.notify_one();
  }

  void WorkLoop() {
    while (true) {
      std::vector<RightsManager::Grant> grants;
      std::set<std::string> want;
      {
        std::unique_lock<std::mutex> l(work_mu);
        work_cv.wait(l, [&] { return work_ready || stopping.load(); });
        if (stopping) return;
        work_ready = false;
        grants.swap(work_grants);
        want.swap(work_want);
      }
      AnnounceDeclarations();
      RetryRetires();
      {
        std::lock_guard<std::mutex> l(mu);
        AdvanceSync(config.replica_id);  // a home sync held for write-offs that are done now
      }
      // The write-offs and announcements above can take seconds: a region that went away since
      // the grants were decided (its group taken over, maybe declared lost) gets none of them.
      std::set<RegionId> away;
      {
        std::lock_guard<std::mutex> l(mu);
        away = Away(lm->Views());
      }
      for (const auto& g : grants) {
        if (away.count(g.to) > 0) {
          spdlog::info("event=rights_grant_dropped sku={} to={} units={} (it went away since)",
                       g.sku, Name(g.to), g.units);
          continue;
        }
        ExecuteGrant(g);
      }
      RefreshViews(want);
    }
  }

  void ExecuteGrant(const RightsManager::Grant& g) {
    rpb::TransferRightsRequest req;
    req.set_sku(g.sku);
    req.set_to(g.to);
    req.set_units(g.units);
    rpb::TransferRightsResponse resp;
    auto ctx = Ctx(2000);
    grpc::Status s = region->TransferRights(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("event=rights_grant_failed sku={} to={} units={} error=\"{}\"", g.sku,
                   Name(g.to), g.units, s.error_message());
      return;
    }
    spdlog::debug("event=rights_granted sku={} to={} units={} moved={} urgent={}", g.sku,
                  Name(g.to), g.units, resp.moved(), g.urgent);
  }

  void RefreshViews(const std::set<std::string>& skus) {
    if (skus.empty()) return;
    rpb::GetRightsViewsRequest req;
    for (const auto& s : skus) req.add_skus(s);
    rpb::GetRightsViewsResponse resp;
    auto ctx = Ctx(2000);
    if (!region->GetRightsViews(ctx.get(), req, &resp).ok()) return;
    std::lock_guard<std::mutex> l(mu);
    for (const auto& v : resp.views()) {
      wanted.erase(v.sku());
      if (!v.exists()) {
        views.erase(v.sku());
        continue;
      }
      SkuRights r;
      r.rights = v.rights();
      for (const auto& g : v.given()) r.given[g.replica()] = g.units();
      for (const auto& g : v.received()) r.received[g.replica()] = g.units();
      views[v.sku()] = std::move(r);
    }
  }

  // Pushes the lease views to the region, taken now. One push at a time, each with views taken
  // after the one before it was sent: the region counts a lease's validity from a push's arrival
  // and keeps the last one, so a view taken earlier must never arrive later (before, a sync
  // request's push could land after the tick's newer one and mark a lapsed lease usable again
  // until the next tick: adversarial review, 2026-12-04).
  void PushLeases() {
    std::lock_guard<std::mutex> push(push_mu);
    std::vector<GroupView> leases;
    {
      std::lock_guard<std::mutex> l(mu);
      leases = lm->Views();
    }
    rpb::SetLeasesRequest req;
    for (const GroupView& v : leases) {
      auto* g = req.add_groups();
      g->set_group(v.group);
      g->set_epoch(v.epoch);
      g->set_owner(v.owner);
      g->set_usable(v.usable);
      g->set_valid_for_ms(v.usable ? v.valid_for_ms : 0);
      g->set_claimed_epoch(v.claimed_epoch);
      g->set_syncing(v.syncing);
    }
    rpb::SetLeasesResponse resp;
    auto ctx = Ctx(1000);
    grpc::Status s = region->SetLeases(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::debug("event=set_leases_failed error=\"{}\"", s.error_message());
    }
  }

  // --- checkouts' demand, from the region -------------------------------------------------------
  void DemandLoop() {
    while (!stopping) {
      rpb::WaitRightsDemandRequest req;
      req.set_wait_ms(500);
      rpb::WaitRightsDemandResponse resp;
      auto ctx = Ctx(3000);
      grpc::Status s = region->WaitRightsDemand(ctx.get(), req, &resp);
      if (!s.ok()) {
        if (!Sleep(std::chrono::milliseconds(200))) return;
        continue;
      }
      bool urgent = false;
      {
        std::lock_guard<std::mutex> l(mu);
        for (const auto& d : resp.demand()) rm->RecordDemand(d.sku(), d.units());
        for (const auto& w : resp.waiting()) {
          rm->SetWaiting(w.sku(), w.units());
          urgent = urgent || w.units() > 0;
        }
      }
      if (urgent) Wake();
    }
  }

  // --- peers' acks, to the region (sync-peer checkouts) ------------------------------------------
  void AcksLoop() {
    while (!stopping) {
      std::map<std::pair<std::string, RegionId>, int64_t> batch;
      {
        std::unique_lock<std::mutex> l(acks_mu);
        acks_cv.wait_for(l, std::chrono::milliseconds(200),
                         [&] { return !acks.empty() || stopping.load(); });
        batch.swap(acks);
      }
      if (batch.empty()) continue;
      rpb::ReportPeerAcksRequest req;
      for (const auto& [k, seq] : batch) {
        auto* a = req.add_acks();
        a->set_database(k.first);
        a->set_peer(k.second);
        a->set_seq(seq);
      }
      rpb::ReportPeerAcksResponse resp;
      auto ctx = Ctx(2000);
      (void)region->ReportPeerAcks(ctx.get(), req, &resp);
    }
  }
  std::condition_variable acks_cv;

  // --- takeover sync
  // --- takeover sync -------------------------------------------------------------------------
  // How many regions (this one included) must have answered a takeover sync (common/quorum.h).
  size_t SyncQuorum() const { return common::TakeoverSyncQuorum(config.peers.size() + 1); }

  // Called by the lease manager (under mu) after a win.
  void StartSync(RegionId group, uint64_t epoch) {
    Sync& s = syncs[group];
    if (s.epoch == epoch) return;
    s = Sync{epoch, {}, {}, false};
    NoteTakeover(group, epoch);
    spdlog::info("event=lease_sync_started group={} epoch={}", Name(group), epoch);
    if (SyncQuorum() <= 1) MaybeFinishSync(group, s);  // the peers are still asked anyway
    Wake();
  }

  // Makes a won lease usable once a quorum has answered its sync (under mu). This region's own
  // group also waits for every write-off of rights reclaimed from it (pending_retires): until
  // they commit, its rights still count units other regions now hold, and a usable lease would
  // let it sell them.
  void MaybeFinishSync(RegionId group, Sync& s) {
    if (s.usable || s.done.size() + 1 < SyncQuorum()) return;
    if (group == config.replica_id) {
      std::lock_guard<std::mutex> l(acks_mu);
      if (!pending_retires.empty()) {
        if (!s.held_for_retires) {
          spdlog::warn(
              "event=lease_held_for_write_off group={} epoch={} pending={} (usable once the "
              "rights reclaimed from this region are written off)",
              Name(group), s.epoch, pending_retires.size());
        }
        s.held_for_retires = true;
        return;
      }
    }
    s.usable = true;
    spdlog::info("event=lease_sync_done group={} epoch={} peers_synced={}", Name(group), s.epoch,
                 s.done.size());
    lm->SyncDone(group, s.epoch);
    Wake();  // the tick tells the region at once that it may act on the group
  }

  // MaybeFinishSync for `group`'s sync, if any, which is dropped once usable and answered by
  // every peer (under mu).
  void AdvanceSync(RegionId group) {
    auto it = syncs.find(group);
    if (it == syncs.end()) return;
    MaybeFinishSync(group, it->second);
    if (it->second.usable && it->second.done.size() == config.peers.size()) syncs.erase(it);
  }

  absl::Status OnSyncRequest(RegionId from, const pb::GroupSyncRequest& m) {
    const Peer* p = PeerById(from);
    if (!m.catch_up()) {
      {
        std::lock_guard<std::mutex> l(mu);
        // Nothing of the fence moves, and no order is read, on the asker's word alone: until its
        // win is vouched for (lease.h) the request goes unanswered, and the asker asks again. (A
        // group that is no region here has no lease to vouch for, and no orders: answered.)
        const bool region_group = m.group() == config.replica_id || PeerById(m.group());
        if (!lm->Learn(m.group(), m.epoch(), from) && region_group) {
          spdlog::info("event=lease_sync_claim_checking group={} epoch={} from={}", Name(m.group()),
                       m.epoch(), Name(from));
          return absl::OkStatus();
        }
      }
      // The region learns the new owner now, not at the next tick: before the group's orders
      // reach it by the catch-up below, so it forwards their changes to the right region. Once
      // per sync round (its first page, or a resent first page), not for every page.
      if (m.after_key().empty()) PushLeases();
    }
    rpb::ReadGroupOrdersRequest req;
    req.set_group(m.group());
    req.set_epoch(m.epoch());
    // A catch-up asker is not taking the group over: nothing of the fence moves for it.
    req.set_owner(m.catch_up() ? config.replica_id : from);
    req.set_read_only(m.catch_up());
    req.set_jurisdiction(p->jurisdiction);
    req.set_after_key(m.after_key());
    req.set_limit(kSyncPage);
    rpb::ReadGroupOrdersResponse resp;
    auto ctx = Ctx(10000);
    grpc::Status s = region->ReadGroupOrders(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("event=lease_sync_read_failed group={} for={} catch_up={} error=\"{}\"",
                   Name(m.group()), Name(from), m.catch_up(), s.error_message());
      return absl::OkStatus();  // the asker asks again
    }
    pb::Frame f;
    pb::GroupSyncReply* r = f.mutable_sync_reply();
    r->set_group(m.group());
    r->set_epoch(m.epoch());
    r->set_catch_up(m.catch_up());
    r->set_after_key(m.after_key());  // which page this answers: the asker drops any other
    r->set_last_key(resp.last_key());
    r->set_done(resp.done());
    if (resp.done() && !m.catch_up()) {
      // Every declaration against the group's home region known here, whoever made it: if the
      // home region is the one taking the group back, it writes them off before it sells. It is
      // back, so it is told now (announced): our pending declarations await its answer from the
      // same transaction on, which a restock of one serializes with (restocked and sent, or left
      // to the region's answer: AnnounceDeclarations asks it to settle them).
      const bool home = from == m.group();
      std::vector<rpb::LostDeclaration> known;
      if (!ListDeclarations(m.group(), home, &known)) return absl::OkStatus();  // asked again
      for (const auto& d : known)
        if (!d.voided() && !d.awaiting()) ToRetire(d, r->add_declarations());
    }
    for (const auto& o : resp.orders()) {
      pb::SyncedOrder* x = r->add_orders();
      x->set_order_id(o.order_id());
      x->set_user_id(o.user_id());
      x->set_total_cents(o.total_cents());
      x->set_currency(o.currency());
      x->set_residency(o.residency());
      x->set_epoch(o.epoch());
      x->set_version(o.version());
      x->set_status(o.status());
      x->set_payment_ref(o.payment_ref());
      x->set_created_at_ms(o.created_at_ms());
      *x->mutable_stock_takes() = o.stock_takes();
      for (const auto& i : o.items()) {
        auto* line = x->add_items();
        line->set_sku(i.sku());
        line->set_quantity(i.quantity());
        line->set_price_cents(i.price_cents());
      }
    }
    (void)send(from, std::move(f));
    // A region taking over another one's group (not the home taking it back): the dead region
    // may have shipped some of its orders to the new owner only. Ask the new owner for what it
    // holds, so every survivor can serve (and forward) every order the survivors know of.
    if (!m.catch_up() && from != m.group() && m.group() != config.replica_id) {
      StartCatchUp(m.group(), m.epoch(), from);
    }
    return absl::OkStatus();
  }

  // The request a sync reply answers, as the replier echoes it (absent: a replier built before
  // the echo; PageCursor::Answers).
  static std::optional<std::string> Echoed(const pb::GroupSyncReply& m) {
    if (!m.has_after_key()) return std::nullopt;
    return m.after_key();
  }

  static pb::Frame SyncRequest(RegionId group, uint64_t epoch, const std::string& after_key) {
    pb::Frame f;
    f.mutable_sync_request()->set_group(group);
    f.mutable_sync_request()->set_epoch(epoch);
    f.mutable_sync_request()->set_after_key(after_key);
    return f;
  }

  // Under mu: the page cursor of the sync this reply answers (this group, this epoch, the page
  // outstanding at `from`), or null.
  PageCursor* SyncPage(RegionId from, const pb::GroupSyncReply& m) {
    auto it = syncs.find(m.group());
    if (it == syncs.end() || it->second.epoch != m.epoch() || it->second.done.count(from)) {
      return nullptr;
    }
    PageCursor& page = it->second.pages[from];
    return page.Answers(Echoed(m)) ? &page : nullptr;
  }

  // The page of `m` could not be applied: asked again once the peer is quiet for a second.
  void SyncPageNotApplied(RegionId from, const pb::GroupSyncReply& m) {
    std::lock_guard<std::mutex> l(mu);
    if (PageCursor* page = SyncPage(from, m)) page->NotApplied(clock.NowMs());
  }

  absl::Status OnSyncReply(RegionId from, const pb::GroupSyncReply& m) {
    if (m.catch_up()) return OnCatchUpReply(from, m);
    {
      std::lock_guard<std::mutex> l(mu);
      PageCursor* page = SyncPage(from, m);
      if (!page) {
        // An old epoch's, or a page not outstanding any more (a re-ask's duplicate): taking it
        // would move the cursor back and start a second chain of pages.
        spdlog::debug("event=lease_sync_reply_dropped group={} epoch={} from={} after_key=\"{}\"",
                      Name(m.group()), m.epoch(), Name(from), m.after_key());
        return absl::OkStatus();
      }
      page->Applying(clock.NowMs());  // may take over a second: no re-ask meanwhile
    }
    // Taking our own group back: what was reclaimed from us while we were away is written off
    // before the peer counts towards the quorum (a failed write-off waits in pending_retires,
    // which holds the lease back: MaybeFinishSync).
    if (m.done() && m.group() == config.replica_id) {
      for (pb::RightsRetire d : m.declarations()) {
        // What was restocked only its declarer can say (a replier's record of another region's
        // declaration does not know, and a debt follows from it).
        if (d.declared_by() != from) {
          for (auto& i : *d.mutable_items()) i.clear_restocked();
        }
        if (absl::Status st = OnRetire(d); !st.ok()) {
          SyncPageNotApplied(from, m);
          return st;
        }
      }
    } else if (m.done()) {
      // Taking over a lost region's group: the declarations against it that the peer holds are
      // recorded here before the peer counts towards the quorum, so that declaring the region
      // lost here reclaims only what no declaration took yet. A declarer that died before it
      // reached us (its stream to us was down) would otherwise have its units reclaimed and
      // restocked a second time (DeclaredParts counts the declarations recorded here).
      for (const auto& d : m.declarations()) {
        if (d.declared_by() == config.replica_id || d.declared_by() == m.group() ||
            d.items_size() == 0) {
          continue;  // ours, or one that reclaims nothing
        }
        grpc::Status s = RecordDeclaration(d, m.group());
        if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
          SyncPageNotApplied(from, m);
          return absl::InvalidArgumentError(
              absl::StrCat("sync reply: declaration: ", s.error_message()));
        }
        if (!s.ok() && s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
          SyncPageNotApplied(from, m);
          return absl::OkStatus();
        }
      }
    }
    if (absl::Status st = ApplySyncedOrders(m); !st.ok()) {
      SyncPageNotApplied(from, m);
      return st.code() == absl::StatusCode::kInvalidArgument ? st : absl::OkStatus();
    }
    pb::Frame f;
    {
      std::lock_guard<std::mutex> l(mu);
      // Checked again: the sync may have moved on while the page was applied (a newer epoch, or
      // the same page's duplicate applied first on another session).
      PageCursor* page = SyncPage(from, m);
      if (!page) return absl::OkStatus();
      std::optional<std::string> next = page->Advance(m.last_key(), m.done(), clock.NowMs());
      if (!next) {
        syncs[m.group()].done.insert(from);
        AdvanceSync(m.group());
        return absl::OkStatus();
      }
      f = SyncRequest(m.group(), m.epoch(), *next);
    }
    (void)send(from, std::move(f));
    return absl::OkStatus();
  }

  // Joins the orders of a sync reply into the region (order states: the larger (epoch, version)
  // wins). INVALID_ARGUMENT: the frame breaks the rules (malformed, or pinned elsewhere) and ends
  // the stream; any other error: the region could not apply it now, the page is asked again.
  absl::Status ApplySyncedOrders(const pb::GroupSyncReply& m) {
    if (m.orders_size() == 0) return absl::OkStatus();
    rpb::ApplyOrderStatesRequest req;
    for (const auto& o : m.orders()) {
      rpb::OrderState* s = req.add_orders();
      s->set_order_id(o.order_id());
      s->set_group(m.group());
      s->set_created(true);
      s->set_user_id(o.user_id());
      s->set_total_cents(o.total_cents());
      s->set_currency(o.currency());
      s->set_residency(o.residency());
      s->set_epoch(o.epoch());
      s->set_version(o.version());
      s->set_status(o.status());
      s->set_payment_ref(o.payment_ref());
      s->set_created_at_ms(o.created_at_ms());
      *s->mutable_stock_takes() = o.stock_takes();
      for (const auto& i : o.items()) {
        auto* line = s->add_items();
        line->set_sku(i.sku());
        line->set_quantity(i.quantity());
        line->set_price_cents(i.price_cents());
      }
    }
    rpb::ApplyOrderStatesResponse resp;
    auto ctx = Ctx(10000);
    grpc::Status s = region->ApplyOrderStates(ctx.get(), req, &resp);
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
        s.error_code() == grpc::StatusCode::PERMISSION_DENIED) {
      return absl::InvalidArgumentError(absl::StrCat("sync reply: ", s.error_message()));
    }
    if (!s.ok()) return absl::UnavailableError(s.error_message());
    return absl::OkStatus();
  }

  // --- catch-up: a survivor pulls a dead region's orders from its new owner -------------------
  void StartCatchUp(RegionId group, uint64_t epoch, RegionId owner) {
    pb::Frame f;
    {
      std::lock_guard<std::mutex> l(mu);
      CatchUp& c = catchups[group];
      if (c.epoch >= epoch) return;  // already pulling from this owner (or a later one)
      const auto now = std::chrono::steady_clock::now();
      c = CatchUp{epoch, owner, {}, now, 0, false};
      (void)c.page.Reask(clock.NowMs());  // the first page, asked now
      f = CatchUpRequest(group, c);
      NoteTakeover(group, epoch);
    }
    spdlog::info("event=lease_catchup_started group={} epoch={} from={}", Name(group), epoch,
                 Name(owner));
    (void)send(owner, std::move(f));
  }

  // Under mu.
  static pb::Frame CatchUpRequest(RegionId group, const CatchUp& c) {
    pb::Frame f;
    f.mutable_sync_request()->set_group(group);
    f.mutable_sync_request()->set_epoch(c.epoch);
    f.mutable_sync_request()->set_after_key(c.page.after_key());
    f.mutable_sync_request()->set_catch_up(true);
    return f;
  }

  // Under mu: the catch-up this reply answers (this owner, this epoch, still pulling, the page
  // outstanding), or null.
  CatchUp* Answered(RegionId from, const pb::GroupSyncReply& m) {
    auto it = catchups.find(m.group());
    if (it == catchups.end() || it->second.done || it->second.epoch != m.epoch() ||
        it->second.owner != from || !it->second.page.Answers(Echoed(m))) {
      return nullptr;
    }
    return &it->second;
  }

  absl::Status OnCatchUpReply(RegionId from, const pb::GroupSyncReply& m) {
    {
      std::lock_guard<std::mutex> l(mu);
      CatchUp* c = Answered(from, m);
      if (!c) {
        // Not what we asked (any more): a duplicate of a page already applied would move the
        // cursor back and start a second chain of pages.
        spdlog::debug(
            "event=lease_catchup_reply_dropped group={} epoch={} from={} after_key=\"{}\"",
            Name(m.group()), m.epoch(), Name(from), m.after_key());
        return absl::OkStatus();
      }
      c->page.Applying(clock.NowMs());  // may take over a second: no re-ask meanwhile
    }
    if (absl::Status st = ApplySyncedOrders(m); !st.ok()) {
      std::lock_guard<std::mutex> l(mu);
      if (CatchUp* c = Answered(from, m)) c->page.NotApplied(clock.NowMs());
      return st.code() == absl::StatusCode::kInvalidArgument ? st : absl::OkStatus();
    }
    pb::Frame f;
    {
      std::lock_guard<std::mutex> l(mu);
      CatchUp* found = Answered(from, m);
      if (!found) return absl::OkStatus();
      CatchUp& c = *found;
      c.orders += m.orders_size();
      if (!c.page.Advance(m.last_key(), m.done(), clock.NowMs())) {
        spdlog::info("event=lease_catchup_done group={} epoch={} from={} orders={}",
                     Name(m.group()), m.epoch(), Name(from), c.orders);
        c.done = true;
        return absl::OkStatus();
      }
      f = CatchUpRequest(m.group(), c);
    }
    (void)send(from, std::move(f));
    return absl::OkStatus();
  }

  // --- regions declared lost --------------------------------------------------------------------
  // A peer whose stream just came up may have been declared lost here: send it what we reclaimed
  // from it, so it writes those rights off (idempotently) and nothing is counted twice.
  void AnnounceDeclarations() {
    std::set<RegionId> up, retry;
    {
      std::lock_guard<std::mutex> l(acks_mu);
      up.swap(peers_up);
      const auto now = std::chrono::steady_clock::now();
      for (auto it = settle_retry.begin(); it != settle_retry.end();) {
        if (it->second > now || up.contains(it->first)) {
          ++it;
          continue;
        }
        retry.insert(it->first);
        it = settle_retry.erase(it);
      }
    }
    for (RegionId peer : up) {
      std::vector<rpb::LostDeclaration> against;
      if (!ListDeclarations(peer, true, &against)) {
        std::lock_guard<std::mutex> l(acks_mu);
        peers_up.insert(peer);  // try again next tick
        continue;
      }
      // Others' declarations recorded here reach it in its takeover sync (OnSyncRequest). Ours
      // that it refused are void; ours that no majority was known to record before it came back
      // await its answer (settle): restocked by what it wrote off, or void.
      SendOwnDeclarations(peer, against, false);
      // And our declarations against the others, for the peer to record (again: idempotent).
      for (const auto& other : config.peers) {
        if (other.replica_id != peer) SendDeclarations(other.replica_id, peer);
      }
    }
    // Settle requests not answered yet: asked again, without marking anything announced (the
    // region may be gone again, and a declaration made since must restock by a majority).
    for (RegionId peer : retry) {
      std::vector<rpb::LostDeclaration> against;
      if (ListDeclarations(peer, false, &against)) {
        SendOwnDeclarations(peer, against, true);
      } else {
        std::lock_guard<std::mutex> l(acks_mu);
        settle_retry.emplace(peer, std::chrono::steady_clock::now() + std::chrono::seconds(10));
      }
    }
  }

  // Sends `peer` our declarations against it: the restocked ones to write off (unless
  // `awaiting_only`), the awaiting ones to settle; asks again in 10 s while any awaits.
  void SendOwnDeclarations(RegionId peer, const std::vector<rpb::LostDeclaration>& against,
                           bool awaiting_only) {
    bool asked = false;
    for (const auto& d : against) {
      if (d.declared_by() != config.replica_id || d.voided() || d.pending()) continue;
      if (awaiting_only && !d.awaiting()) continue;
      pb::Frame f;
      ToRetire(d, f.mutable_rights()->mutable_retire());
      f.mutable_rights()->mutable_retire()->set_settle(d.awaiting());
      asked = asked || d.awaiting();
      (void)send(peer, std::move(f));
    }
    if (asked) {
      std::lock_guard<std::mutex> l(acks_mu);
      settle_retry[peer] = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    }
  }

  static void ToRetire(const rpb::LostDeclaration& d, pb::RightsRetire* r) {
    r->set_declaration_id(d.id());
    r->set_declared_by(d.declared_by());
    r->set_declared_unix_ms(d.declared_unix_ms());
    for (const auto& i : d.items()) {
      auto* x = r->add_items();
      x->set_sku(i.sku());
      x->set_units(i.units());
      x->set_received(i.received());
      if (i.has_restocked()) x->set_restocked(i.restocked());
    }
  }

  // The inverse: the declaration `r` against `lost`, as the region takes it.
  static void FromRetire(const pb::RightsRetire& r, RegionId lost, rpb::LostDeclaration* d) {
    d->set_id(r.declaration_id());
    d->set_region(lost);
    d->set_declared_by(r.declared_by());
    d->set_declared_unix_ms(r.declared_unix_ms());
    for (const auto& i : r.items()) {
      auto* x = d->add_items();
      x->set_sku(i.sku());
      x->set_units(i.units());
      x->set_received(i.received());
      if (i.has_restocked()) x->set_restocked(i.restocked());
    }
  }

  // The declarations recorded here against `lost`, from every declarer.
  bool ListDeclarations(RegionId lost, bool mark_announced,
                        std::vector<rpb::LostDeclaration>* out) {
    rpb::ListLostDeclarationsRequest req;
    req.set_region(lost);
    req.set_mark_announced(mark_announced);
    rpb::ListLostDeclarationsResponse resp;
    auto ctx = Ctx(2000);
    grpc::Status s = region->ListLostDeclarations(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("event=lost_declarations_read_failed region={} error=\"{}\"", Name(lost),
                   s.error_message());
      return false;
    }
    out->assign(resp.declarations().begin(), resp.declarations().end());
    return true;
  }

  // Sends our declarations against `lost` to `to` (every peer but `lost` when 0), to record.
  void SendDeclarations(RegionId lost, RegionId to = 0) {
    std::vector<rpb::LostDeclaration> known;
    if (ListDeclarations(lost, false, &known)) SendDeclarations(lost, known, to);
  }
  // The same, from the declarations already read.
  void SendDeclarations(RegionId lost, const std::vector<rpb::LostDeclaration>& known,
                        RegionId to = 0) {
    for (const auto& d : known) {
      // Not ours, or settled by the region's own answer (awaiting it, or void).
      if (d.declared_by() != config.replica_id || d.voided() || d.awaiting()) continue;
      for (const auto& p : config.peers) {
        if (p.replica_id == lost || (to != 0 && p.replica_id != to)) continue;
        pb::Frame f;
        pb::LostRegionDeclared* x = f.mutable_rights()->mutable_declared();
        x->set_region(lost);
        ToRetire(d, x->mutable_declaration());
        (void)send(p.replica_id, std::move(f));
      }
    }
  }

  // Records another region's declaration against `lost` in this region. OK: recorded (or held
  // already); RESOURCE_EXHAUSTED: refused for good (logged); INVALID_ARGUMENT: malformed; any
  // other error: not recorded now (logged), to be sent again.
  grpc::Status RecordDeclaration(const pb::RightsRetire& r, RegionId lost) {
    rpb::RecordLostDeclarationRequest req;
    FromRetire(r, lost, req.mutable_declaration());
    rpb::RecordLostDeclarationResponse resp;
    auto ctx = Ctx(10000);
    grpc::Status s = region->RecordLostDeclaration(ctx.get(), req, &resp);
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      spdlog::error(
          "event=lost_declaration_refused declared_by={} region={} id={} error=\"{}\" (not "
          "recorded: the declarer's restock waits for a majority that does not count us)",
          Name(r.declared_by()), Name(lost), r.declaration_id(), s.error_message());
    } else if (!s.ok() && s.error_code() != grpc::StatusCode::INVALID_ARGUMENT) {
      spdlog::warn(
          "event=lost_declaration_record_failed declared_by={} region={} id={} error=\"{}\" "
          "(recorded when it comes again: the declarer's next declare, a new stream, or the "
          "takeover sync's next ask)",
          Name(r.declared_by()), Name(lost), r.declaration_id(), s.error_message());
    }
    return s;
  }

  // A peer's declaration against a third region: recorded here, then acknowledged.
  absl::Status OnDeclared(RegionId from, const pb::LostRegionDeclared& m) {
    const pb::RightsRetire& r = m.declaration();
    grpc::Status s = RecordDeclaration(r, m.region());
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return absl::InvalidArgumentError(absl::StrCat("lost region declared: ", s.error_message()));
    }
    if (!s.ok()) return absl::OkStatus();
    pb::Frame f;
    f.mutable_rights()->mutable_recorded()->set_declaration_id(r.declaration_id());
    (void)send(from, std::move(f));
    return absl::OkStatus();
  }

  void OnRecorded(RegionId from, const pb::DeclarationRecorded& m) {
    {
      std::lock_guard<std::mutex> l(acks_mu);
      auto it = recorded_by.find(m.declaration_id());
      if (it == recorded_by.end()) return;  // not awaited (any more)
      it->second.insert(from);
    }
    recorded_cv.notify_all();
  }

  // A declaration against this region (`r` passed CheckFrame: from a write-off frame, declared
  // by its sender; from a takeover sync's reply, by any region): written off once. Its declarer
  // asking to settle it (`r.settle()`) writes nothing off: it is answered with what was written
  // off before, or the declaration is refused for good.
  absl::Status OnRetire(const pb::RightsRetire& r) {
    rpb::RetireRightsRequest req;
    FromRetire(r, config.replica_id, req.mutable_declaration());
    req.set_settle(r.settle());
    rpb::RetireRightsResponse resp;
    auto ctx = Ctx(10000);
    grpc::Status s = region->RetireRights(ctx.get(), req, &resp);
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return absl::InvalidArgumentError(absl::StrCat("rights retire: ", s.error_message()));
    }
    if (r.settle()) {
      if (!s.ok()) {
        spdlog::warn(
            "event=declaration_settle_failed declared_by={} declaration={} error=\"{}\" (the "
            "declarer asks again)",
            Name(r.declared_by()), r.declaration_id(), s.error_message());
        return absl::OkStatus();
      }
      pb::Frame f;
      pb::DeclarationSettled* x = f.mutable_rights()->mutable_settled();
      x->set_declaration_id(r.declaration_id());
      x->set_refused(resp.refused());
      for (const auto& i : resp.items()) {
        auto* w = x->add_written_off();
        w->set_sku(i.sku());
        w->set_units(i.units());
      }
      (void)send(r.declared_by(), std::move(f));
      return absl::OkStatus();
    }
    if (!s.ok()) {
      spdlog::warn(
          "event=rights_retire_failed declared_by={} declaration={} error=\"{}\" "
          "(tried again next tick)",
          Name(r.declared_by()), r.declaration_id(), s.error_message());
      std::lock_guard<std::mutex> l(acks_mu);
      // Bounded: each is retried every tick with a region call, and a peer's frames fill it.
      // One left out comes back with its declarer's next announcement (a new stream).
      if (pending_retires.size() < kMaxPendingRetires ||
          pending_retires.count(r.declaration_id())) {
        pending_retires.emplace(r.declaration_id(), r);
      } else {
        spdlog::warn("event=rights_retire_not_kept declaration={} pending={}", r.declaration_id(),
                     pending_retires.size());
      }
      return absl::OkStatus();
    }
    {
      std::lock_guard<std::mutex> l(acks_mu);
      pending_retires.erase(r.declaration_id());
    }
    if (!resp.already()) {
      spdlog::warn("event=rights_written_off declared_by={} declaration={} units={}",
                   Name(r.declared_by()), r.declaration_id(), resp.units());
    }
    return absl::OkStatus();
  }

  // The region a declaration of ours named answered how it settled it: restocked by exactly what
  // it wrote off, or void.
  absl::Status OnSettled(RegionId from, const pb::DeclarationSettled& m) {
    rpb::SettleLostDeclarationRequest req;
    req.set_id(m.declaration_id());
    req.set_region(from);
    req.set_refused(m.refused());
    for (const auto& w : m.written_off()) {
      auto* i = req.add_written_off();
      i->set_sku(w.sku());
      i->set_units(w.units());
    }
    rpb::SettleLostDeclarationResponse resp;
    auto ctx = Ctx(10000);
    grpc::Status s = region->SettleLostDeclaration(ctx.get(), req, &resp);
    if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
      return absl::InvalidArgumentError(absl::StrCat("declaration settled: ", s.error_message()));
    }
    if (!s.ok()) {
      spdlog::warn(
          "event=declaration_settle_failed region={} declaration={} error=\"{}\" (asked again)",
          Name(from), m.declaration_id(), s.error_message());
    }
    return absl::OkStatus();
  }

  // A failed write-off stays in pending_retires, holding our lease back, until a retry commits
  // it (OnRetire erases it then): emptied for the retry's duration, a sync finishing meanwhile
  // would make the lease usable while the region still counts the reclaimed units as its own.
  void RetryRetires() {
    std::map<std::string, pb::RightsRetire> again;
    {
      std::lock_guard<std::mutex> l(acks_mu);
      again = pending_retires;
    }
    for (const auto& [id, r] : again) (void)OnRetire(r);
  }

  // The survivors still exchanging with us what each holds of region `lost` (its records that
  // reached one survivor and not another); a takeover of its group not yet handed to the
  // replicator counts as every survivor. `seen_alive` collects those heard from lately: the others
  // cannot exchange now. Under mu throughout: the takeover is looked at before the exchanges (the
  // tick's hand-off starts the exchange, then drops the takeover, both seen here in one piece),
  // and mu before PeerState::mu is the order SendLease takes them in.
  std::vector<RegionId> SurvivorsStillExchanging(const Peer& lost, std::set<RegionId>& seen_alive) {
    std::lock_guard<std::mutex> l(mu);
    std::vector<RegionId> pending;
    if (std::find(taken_over.begin(), taken_over.end(), lost.replica_id) != taken_over.end()) {
      for (const auto& p : config.peers)
        if (p.replica_id != lost.replica_id) pending.push_back(p.replica_id);
    }
    if (exchange_pending) {
      for (RegionId p : exchange_pending(lost.replica_id)) pending.push_back(p);
    }
    for (RegionId p : pending)
      if (lm->Alive(p)) seen_alive.insert(p);
    std::erase_if(pending, [&](RegionId p) { return !seen_alive.contains(p); });
    std::sort(pending.begin(), pending.end());
    pending.erase(std::unique(pending.begin(), pending.end()), pending.end());
    return pending;
  }

  // A declaration reclaims the lost region's rights as this region has seen them. A grant it made
  // to another survivor that never reached us is counted in that survivor's rights and, unseen
  // here, in the lost region's too: reclaimed, it would be on sale twice. The survivors' exchange
  // after the takeover brings every such record, so the declaration waits for it (up to
  // kExchangeWait) with every survivor heard from at any time of the wait (a session that drops
  // and comes back does not end the wait). One not heard from all along cannot exchange, and is
  // not waited for. A 503 when it is not done: nothing is declared.
  std::optional<HttpResponse> AwaitSurvivorsExchange(const Peer& lost) {
    constexpr auto kExchangeWait = std::chrono::milliseconds(2500);
    const auto until = std::chrono::steady_clock::now() + kExchangeWait;
    std::set<RegionId> seen_alive;
    std::vector<RegionId> pending = SurvivorsStillExchanging(lost, seen_alive);
    while (!pending.empty() && std::chrono::steady_clock::now() < until && !stopping.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      pending = SurvivorsStillExchanging(lost, seen_alive);
    }
    if (pending.empty()) return std::nullopt;
    std::vector<std::string> names;
    for (RegionId p : pending) names.push_back(Name(p));
    spdlog::warn("event=declare_lost_waits_for_exchange region={} survivors=\"{}\"", lost.name,
                 absl::StrJoin(names, ","));
    // `awaiting_exchange` names them for a client to tell this refusal from the others.
    Json answer{{"type", "about:blank"},
                {"title", "Service Unavailable"},
                {"status", 503},
                {"region", lost.name},
                {"awaiting_exchange", names},
                {"detail", absl::StrCat("the survivors' exchange about ", lost.name, " with ",
                                        absl::StrJoin(names, ", "),
                                        " is not done: they may hold rights grants of ", lost.name,
                                        " this region has not seen, which a declaration now "
                                        "would reclaim a second time. Nothing was declared; run "
                                        "declare-lost again shortly")}};
    HttpResponse r = HttpResponse::Json(503, answer.dump());
    r.content_type = "application/problem+json";
    return r;
  }

  HttpResponse DeclareLost(HttpRequest& req) {
    if (!Authorized(req))
      return HttpResponse::Problem(401, "Unauthorized", "operator token required");
    const std::string name = req.params["region"];
    const Peer* lost = nullptr;
    for (const auto& p : config.peers)
      if (p.name == name) lost = &p;
    if (lost == nullptr) {
      return HttpResponse::Problem(404, "Not Found", "no peer region named " + name);
    }
    // Whether `lost` may be declared lost here now: a refusal, or nullopt.
    auto refusal = [&]() -> std::optional<HttpResponse> {
      std::lock_guard<std::mutex> l(mu);
      if (lm->Alive(lost->replica_id)) {
        return HttpResponse::Problem(409, "Conflict",
                                     name +
                                         " is alive (heard from recently); it cannot be "
                                         "declared lost");
      }
      if (!lm->CanMutate(lost->replica_id)) {
        return HttpResponse::Problem(
            409, "Conflict",
            "this region does not hold " + name +
                "'s order lease; declare it lost at the region that took it over (see "
                "GET /v1/status), once its lease has expired");
      }
      return std::nullopt;
    };
    if (auto no = refusal()) return *no;
    if (auto no = AwaitSurvivorsExchange(*lost)) return *no;
    if (auto no = refusal()) return *no;  // again: the wait may have taken seconds
    std::lock_guard<std::mutex> one_at_a_time(declare_mu);
    rpb::DeclareLostRequest dreq;
    dreq.set_region(lost->replica_id);
    rpb::DeclareLostResponse dresp;
    auto ctx = Ctx(30000);
    grpc::Status s = region->DeclareLost(ctx.get(), dreq, &dresp);
    if (s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      return HttpResponse::Problem(409, "Conflict", s.error_message());  // the limit: final
    }
    if (!s.ok()) return HttpResponse::Problem(503, "Service Unavailable", s.error_message());
    const std::string id = dresp.declaration().id();
    // The region recorded it pending: nothing is restocked until a majority of regions holds it,
    // so that it outlives us (a declarer that died with the only copy would leave the lost region
    // to sell, on its return, units we had restocked). It goes to every other peer to record,
    // with our earlier ones against the same region that are still pending (no majority recorded
    // them in their call) or done (in case a peer missed them); we wait a little for a majority
    // of each pending one, then restock those.
    std::vector<rpb::LostDeclaration> known;
    if (!ListDeclarations(lost->replica_id, false, &known)) {
      return HttpResponse::Problem(503, "Service Unavailable",
                                   "the region's declarations could not be read (declaration " +
                                       id + " stays pending: run declare-lost again)");
    }
    std::vector<const rpb::LostDeclaration*> pending;
    for (const auto& d : known)
      if (d.pending()) pending.push_back(&d);
    {
      std::lock_guard<std::mutex> l(acks_mu);
      for (const auto* d : pending) recorded_by[d->id()];  // awaited: OnRecorded notes only these
    }
    SendDeclarations(lost->replica_id, known);
    std::vector<bool> majority(pending.size(), false);
    std::set<RegionId> by_all;  // peers that recorded every pending declaration
    {
      std::unique_lock<std::mutex> l(acks_mu);
      auto held = [&](const rpb::LostDeclaration* d) {
        return recorded_by[d->id()].size() + 1 >= SyncQuorum();
      };
      recorded_cv.wait_for(l, std::chrono::seconds(5),
                           [&] { return std::all_of(pending.begin(), pending.end(), held); });
      for (size_t i = 0; i < pending.size(); ++i) {
        majority[i] = held(pending[i]);
        const std::set<RegionId>& by = recorded_by[pending[i]->id()];
        if (i == 0) {
          by_all = by;
        } else {
          std::erase_if(by_all, [&](RegionId p) { return !by.contains(p); });
        }
      }
      for (const auto* d : pending) recorded_by.erase(d->id());
    }
    Json recorded = Json::array();
    for (RegionId p : by_all) recorded.push_back(Name(p));
    // Restocked only while we still may: a lost region back meanwhile settles our pending
    // declarations itself once it is told of them, a lease lost meanwhile has a new holder.
    if (auto no = refusal()) return *no;
    Json items = Json::array();
    uint64_t units = 0, still_pending = 0, short_units = 0, awaiting_units = 0;
    std::string restock_error;
    for (size_t i = 0; i < pending.size(); ++i) {
      uint64_t n = 0;
      for (const auto& it : pending[i]->items()) n += it.units();
      if (!majority[i]) {
        still_pending += n;
        continue;
      }
      rpb::RestockLostDeclarationRequest rreq;
      rreq.set_id(pending[i]->id());
      rpb::RestockLostDeclarationResponse rresp;
      auto rctx = Ctx(30000);
      grpc::Status rs = region->RestockLostDeclaration(rctx.get(), rreq, &rresp);
      if (!rs.ok()) {
        still_pending += n;
        restock_error = rs.error_message();
        continue;
      }
      // The region came back meanwhile: its answer settles it (AnnounceDeclarations).
      if (rresp.already()) awaiting_units += n;
      for (const auto& it : rresp.items()) {
        items.push_back(Json{{"sku", it.sku()}, {"units", it.units()}});
        units += it.units();
      }
      short_units += rresp.short_units();
    }
    spdlog::warn(
        "event=region_declared_lost region={} by=operator reclaimed_units={} pending_units={} "
        "id={}",
        name, units, still_pending, id);
    Json answer{{"region", name},
                {"declared_by", config.region},
                {"declaration_id", id},
                {"reclaimed", items},
                {"reclaimed_units", units},
                {"already_reclaimed_units", dresp.already_reclaimed_units()},
                {"pending_units", still_pending},
                {"recorded_by", recorded},
                {"recorded_by_majority", still_pending == 0}};
    if (short_units > 0) answer["short_units"] = short_units;  // others reclaimed them first
    // It came back: restocked by what it wrote off, or void (it keeps them).
    if (awaiting_units > 0) answer["awaiting_region_units"] = awaiting_units;
    if (still_pending == 0) {
      answer["note"] =
          "units the lost region sold but never shipped are reclaimed too; if it returns, it "
          "writes its reclaimed rights off and logs any shortfall";
      return HttpResponse::Json(200, answer.dump());
    }
    answer["type"] = "about:blank";
    answer["title"] = "Service Unavailable";
    answer["status"] = 503;
    answer["detail"] =
        restock_error.empty()
            ? absl::StrCat("not recorded by a majority of regions within 5 s: ", still_pending,
                           " units stay pending and nothing of them was restocked (a declaration "
                           "only this region held could be missed by a region that outlives it). "
                           "Run declare-lost again once a majority of regions is reachable; "
                           "nothing is reclaimed twice")
            : absl::StrCat("the restock failed: ", restock_error, "; ", still_pending,
                           " units stay pending: run declare-lost again");
    HttpResponse r = HttpResponse::Json(503, answer.dump());
    r.content_type = "application/problem+json";
    return r;
  }

  // Called by the lease manager (under mu).
  void OnLeaseEvent(const LeaseEvent& e) {
    spdlog::info("event={} group={} epoch={} owner={}", LeaseEventName(e.kind), Name(e.group),
                 e.epoch, Name(e.owner));
    // A group won by a region other than its home is a takeover, seen here however it was learned.
    // After a restart (nothing in memory) the holder's first renewal tells it, so a replicator
    // that restarted in the middle of the survivors' exchange takes it up again.
    if (e.kind == LeaseEvent::Kind::kLearned && e.owner != e.group) NoteTakeover(e.group, e.epoch);
  }

  // --- forwarding --------------------------------------------------------------------------------
  pb::Replication::Stub* PeerStub(RegionId id) {
    auto it = peer_stubs.find(id);
    return it == peer_stubs.end() ? nullptr : it->second.get();
  }

  // --- accounts ----------------------------------------------------------------------------------
  // Asks every peer heard from lately, all at once, whether it holds the account; peers not heard
  // from are reported unanswered at once (a partitioned peer would hold every login for the
  // deadline). The answer is the holder ChooseAccountHolder ranks first (replication/accounts.h).
  void LocateAccount(const std::string& user_id, const std::string& password,
                     rpb::LocateAccountResponse* out) {
    std::vector<AccountPeer> asked;
    std::vector<AccountAnswer> answers;
    {
      std::lock_guard<std::mutex> l(mu);
      for (const auto& p : config.peers) {
        pb::Replication::Stub* stub = PeerStub(p.replica_id);
        if (stub == nullptr || !lm->Alive(p.replica_id)) {
          answers.push_back({.peer = p.replica_id,
                             .jurisdiction = p.jurisdiction,
                             .answered = false,
                             .found = false,
                             .residency = ""});
          continue;
        }
        asked.push_back({.peer = p.replica_id, .jurisdiction = p.jurisdiction, .stub = stub});
      }
    }
    std::sort(asked.begin(), asked.end(),
              [](const auto& a, const auto& b) { return a.peer < b.peer; });
    // Every peer is asked without the id (account_questions.h): most of them do not hold the
    // account, and some are in jurisdictions its data may not go to.
    for (const AccountQuestion& q : AskWhoHoldsAccount(
             asked, user_id, config.account_questions_named, std::chrono::milliseconds(1500))) {
      if (q.named) {
        spdlog::warn(
            "event=account_question_named peer={} code={} (a replicator from before blind "
            "questions, asked with the id: coordination.account_questions is blind-or-named)",
            Name(q.answer.peer), static_cast<int>(q.status.error_code()));
      }
      if (!q.status.ok()) {
        spdlog::info("event=account_find_unanswered peer={} code={} error=\"{}\"",
                     Name(q.answer.peer), static_cast<int>(q.status.error_code()),
                     q.status.error_message());
      }
      answers.push_back(q.answer);
    }
    for (const AccountAnswer& a : answers) {
      if (!a.answered) out->add_unanswered(a.peer);
    }
    std::optional<AccountHolder> holder = ChooseAccountHolder(answers, config.jurisdiction);
    if (!holder) return;
    out->set_found(true);
    out->set_region(holder->peer);
    out->set_residency(holder->residency);
    if (password.empty()) return;
    if (!holder->may_check_password) {
      // The account the customer means may be the one an unanswered peer of this jurisdiction
      // holds: their password does not go abroad to be checked against another account of the
      // same e-mail. The lookup is incomplete (those peers are listed unanswered).
      spdlog::info(
          "event=account_password_held holder={} reason=\"a peer of jurisdiction {} did "
          "not answer\"",
          Name(holder->peer), config.jurisdiction);
      out->set_found(false);
      out->set_region(0);
      out->clear_residency();
      return;
    }
    // A login: the id and its password go to that region only, which holds the account and
    // checks it.
    pb::FindAccountRequest named;
    named.set_user_id(user_id);
    named.set_password(password);
    pb::FindAccountResponse checked;
    auto ctx = Ctx(1500);
    ctx->set_wait_for_ready(true);
    grpc::Status s = PeerStub(out->region())->FindAccount(ctx.get(), named, &checked);
    if (!s.ok() || !checked.found()) {
      spdlog::info("event=account_password_unchecked peer={} code={} error=\"{}\"",
                   Name(out->region()), static_cast<int>(s.error_code()), s.error_message());
      out->add_unanswered(out->region());
      out->set_found(false);
      out->set_region(0);
      out->clear_residency();
      return;
    }
    out->set_password_ok(checked.password_ok());
    out->set_attempts_exhausted(checked.attempts_exhausted());
  }

  // --- operators
  // ------------------------------------------------------------------------------------
  bool Authorized(const HttpRequest& req) const {
    auto h = req.Header("authorization");
    std::optional<std::string_view> bearer = h ? common::BearerToken(*h) : std::nullopt;
    return bearer && common::TokenEquals(*bearer, config.operator_token);
  }

  HttpResponse Status(HttpRequest& req) {
    if (!Authorized(req))
      return HttpResponse::Problem(401, "Unauthorized", "operator token required");
    Json peers = Json::array();
    Json leases = Json::array();
    {
      std::lock_guard<std::mutex> l(mu);
      for (const auto& p : config.peers) {
        peers.push_back(Json{{"name", p.name},
                             {"replica_id", p.replica_id},
                             {"jurisdiction", p.jurisdiction},
                             {"alive", lm->Alive(p.replica_id)}});
      }
      for (const GroupView& v : lm->Views()) {
        leases.push_back(Json{{"group", v.group},
                              {"group_region", Name(v.group)},
                              {"epoch", v.epoch},
                              {"owner", Name(v.owner)},
                              {"held_here", v.held},
                              {"usable", v.usable},
                              {"syncing", v.syncing},
                              {"valid_for_ms", v.valid_for_ms},
                              {"claimed_epoch", v.claimed_epoch}});
      }
    }
    return HttpResponse::Json(200, Json{{"region", config.region},
                                        {"replica_id", config.replica_id},
                                        {"jurisdiction", config.jurisdiction},
                                        {"peers", peers},
                                        {"leases", leases}}
                                       .dump());
  }

  HttpResponse Handback(HttpRequest& req) {
    if (!Authorized(req))
      return HttpResponse::Problem(401, "Unauthorized", "operator token required");
    const std::string name = req.params["region"];
    RegionId group = 0;
    if (name == config.region) group = config.replica_id;
    for (const auto& p : config.peers)
      if (p.name == name) group = p.replica_id;
    if (group == 0) return HttpResponse::Problem(404, "Not Found", "no such region: " + name);
    absl::Status st;
    {
      std::lock_guard<std::mutex> l(mu);
      st = lm->HandBack(group);
    }
    if (!st.ok()) return HttpResponse::Problem(409, "Conflict", std::string(st.message()));
    spdlog::info("event=lease_handback_requested group={} by=operator", name);
    return HttpResponse::Json(200, Json{{"group_region", name}, {"released", true}}.dump());
  }
};

namespace {

class ForwarderService final : public rpb::OrderForwarder::Service {
 public:
  explicit ForwarderService(Coordinator::Impl& c) : c_(c) {}
  // The region's calls carry region_token_file's token (common/grpc_auth.h) when one is set.
  grpc::Status Authorize(const grpc::ServerContext* ctx) const {
    return common::CheckBearerToken(*ctx, c_.config.region_token, "region_token_file");
  }
  grpc::Status ForwardOrder(grpc::ServerContext* ctx, const rpb::MutateOrderRequest* req,
                            rpb::MutateOrderResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    pb::Replication::Stub* stub = c_.PeerStub(req->owner());
    if (stub == nullptr) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("no peer region with replica id ", req->owner()));
    }
    pb::ForwardOrderRequest f;
    f.set_order_id(req->order_id());
    f.set_user_id(req->user_id());
    f.set_action(static_cast<pb::OrderAction>(req->action()));
    f.set_card_number(req->card_number());
    f.set_from_region(c_.config.replica_id);
    pb::ForwardOrderResponse resp;
    auto peer_ctx = Ctx(4000);
    grpc::Status s = stub->ForwardOrder(peer_ctx.get(), f, &resp);
    if (!s.ok()) return s;
    out->set_http_status(resp.http_status());
    out->set_body(resp.body());
    return grpc::Status::OK;
  }

  grpc::Status LocateAccount(grpc::ServerContext* ctx, const rpb::LocateAccountRequest* req,
                             rpb::LocateAccountResponse* out) override {
    if (grpc::Status denied = Authorize(ctx); !denied.ok()) return denied;
    if (absl::Status st = services::ValidateAccountQuery(req->user_id(), req->password());
        !st.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("LocateAccount: ", st.message()));
    }
    c_.LocateAccount(req->user_id(), req->password(), out);
    return grpc::Status::OK;
  }

 private:
  Coordinator::Impl& c_;
};

}  // namespace

Coordinator::Coordinator(const ReplicatorConfig& config, std::shared_ptr<grpc::Channel> region,
                         Tls tls, SendFn send)
    : impl_(std::make_unique<Impl>()) {
  impl_->config = config;
  impl_->region = rpb::RegionControl::NewStub(region);
  impl_->tls = std::move(tls);
  impl_->send = std::move(send);
}

Coordinator::~Coordinator() { Stop(); }

absl::Status Coordinator::Start() {
  Impl& c = *impl_;
  c.store = std::make_unique<RegionLeaseStore>(c.region.get());
  // The records must be read: starting without them would forget promises and epochs.
  absl::Status st;
  for (int attempt = 0; attempt < 50; ++attempt) {
    st = c.store->Preload();
    if (st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (!st.ok()) return st;
  std::vector<RegionId> ids{c.config.replica_id};
  std::vector<RegionId> peers;
  std::map<RegionId, std::string> jurisdictions{{c.config.replica_id, c.config.jurisdiction}};
  for (const auto& p : c.config.peers) {
    ids.push_back(p.replica_id);
    peers.push_back(p.replica_id);
    jurisdictions.emplace(p.replica_id, p.jurisdiction);
  }
  std::vector<RegionId> witnesses;
  if (c.config.witness) witnesses.push_back(c.config.witness->replica_id);
  c.lm = std::make_unique<LeaseManager>(
      c.config.replica_id, ids, witnesses, c.config.leases, c.store.get(), &c.clock,
      [&c](RegionId to, const LeaseMessage& m) { c.SendLease(to, m); },
      [&c](const LeaseEvent& e) { c.OnLeaseEvent(e); },
      [&c](RegionId g, uint64_t e) { c.StartSync(g, e); });
  // Peers' jurisdictions are checked against their hellos, so every region orders successors
  // alike.
  c.lm->SetJurisdictions(std::move(jurisdictions));
  if (st = c.lm->Start(); !st.ok()) return st;
  c.rm = std::make_unique<RightsManager>(
      c.config.replica_id, peers, c.config.rights, &c.clock,
      [&c](RegionId to, const RightsMessage& m) { c.SendRights(to, m); },
      [&c](const std::string& sku) -> std::optional<SkuRights> {
        // Called under c.mu: a cached view, refreshed by the tick.
        auto it = c.views.find(sku);
        if (it != c.views.end()) return it->second;
        c.wanted.insert(sku);
        return std::nullopt;
      });

  // Channels to every peer for forwarded order changes (mutual TLS, as the streams).
  for (const auto& p : c.config.peers) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = c.tls.ca;
    tls.pem_private_key = c.tls.key;
    tls.pem_cert_chain = c.tls.cert;
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(p.name);
    // A peer that was down is tried again within a second of its return (gRPC's default backoff
    // grows to two minutes), and the channel connects now: an account lookup (a login) should
    // not pay for the handshake.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto channel = grpc::CreateCustomChannel(absl::StrCat(p.address.host, ":", p.address.port),
                                             grpc::SslCredentials(tls), args);
    channel->GetState(true);
    c.peer_stubs[p.replica_id] = pb::Replication::NewStub(channel);
  }
  if (c.config.witness) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = c.tls.ca;
    tls.pem_private_key = c.tls.key;
    tls.pem_cert_chain = c.tls.cert;
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(c.config.witness->name);
    c.witness_stub = pb::LeaseWitness::NewStub(grpc::CreateCustomChannel(
        absl::StrCat(c.config.witness->address.host, ":", c.config.witness->address.port),
        grpc::SslCredentials(tls), args));
    c.threads.emplace_back([&c] { c.WitnessLoop(); });
  }
  if (!c.config.control.host.empty()) {
    c.forwarder = std::make_unique<ForwarderService>(c);
    grpc::ServerBuilder b;
    b.AddListeningPort(absl::StrCat(c.config.control.host, ":", c.config.control.port),
                       grpc::InsecureServerCredentials(), &c.control_port);
    b.RegisterService(c.forwarder.get());
    c.control_server = b.BuildAndStart();
    if (!c.control_server || c.control_port == 0) {
      return absl::UnavailableError(absl::StrCat("coordination.control: cannot listen on ",
                                                 c.config.control.host, ":",
                                                 c.config.control.port));
    }
  }
  if (!c.config.admin.host.empty()) {
    c.router.Add("GET", "/v1/status", [&c](HttpRequest& r) { return c.Status(r); });
    c.router.Add("POST", "/v1/leases/{region}/handback",
                 [&c](HttpRequest& r) { return c.Handback(r); });
    c.router.Add("POST", "/v1/regions/{region}/declare-lost",
                 [&c](HttpRequest& r) { return c.DeclareLost(r); });
    region::http::HttpServer::Options o;
    o.address = c.config.admin.host;
    o.port = c.config.admin.port;
    o.threads = 2;
    c.admin = std::make_unique<region::http::HttpServer>(
        o, [&c](HttpRequest& r) { return c.router.Handle(r); });
    if (st = c.admin->Start(); !st.ok()) return st;
  }
  c.threads.emplace_back([&c] { c.TickLoop(); });
  c.threads.emplace_back([&c] { c.WorkLoop(); });
  c.threads.emplace_back([&c] { c.DemandLoop(); });
  c.threads.emplace_back([&c] { c.AcksLoop(); });
  spdlog::info("event=coordination_started region={} lease_ttl_ms={} control_port={} admin_port={}",
               c.config.region, c.config.leases.ttl_ms, c.control_port,
               c.admin ? c.admin->port() : 0);
  return absl::OkStatus();
}

void Coordinator::Stop() {
  Impl& c = *impl_;
  if (c.stopping.exchange(true)) return;
  c.Wake();
  { std::lock_guard<std::mutex> l(c.work_mu); }  // a worker between its check and its wait
  c.work_cv.notify_all();
  c.acks_cv.notify_all();
  c.witness_cv.notify_all();
  for (auto& t : c.threads) t.join();
  c.threads.clear();
  if (c.admin) c.admin->Stop();
  if (c.control_server) c.control_server->Shutdown();
}

void Coordinator::Heard(RegionId peer) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (impl_->lm) impl_->lm->Heard(peer);
}

absl::Status Coordinator::CheckFrame(RegionId peer, const pb::Frame& frame) {
  switch (frame.body_case()) {
    case pb::Frame::kSyncRequest: {
      const pb::GroupSyncRequest& m = frame.sync_request();
      if (m.group() == 0 || m.group() > 255 || m.epoch() == 0 || m.epoch() > kMaxEpoch ||
          m.after_key().size() > 64) {
        return absl::InvalidArgumentError("sync request: group, epoch or key out of range");
      }
      return absl::OkStatus();
    }
    case pb::Frame::kSyncReply: {
      const pb::GroupSyncReply& m = frame.sync_reply();
      if (m.group() == 0 || m.group() > 255 || m.orders_size() > 5000 ||
          m.declarations_size() > 10000 || m.after_key().size() > 64) {
        return absl::InvalidArgumentError("sync reply: group or size out of range");
      }
      for (const auto& d : m.declarations()) {
        if (!WellFormed(d) || d.settle()) {
          return absl::InvalidArgumentError("sync reply: malformed declaration");
        }
      }
      return absl::OkStatus();
    }
    case pb::Frame::kRights: {
      const pb::RightsFrame& rf = frame.rights();
      if (rf.has_retire() && (!WellFormed(rf.retire()) || rf.retire().declared_by() != peer)) {
        return absl::InvalidArgumentError("rights retire: malformed declaration");
      }
      // A peer's own declaration, against a third region (the region refuses one against us).
      if (rf.has_declared() &&
          (!WellFormed(rf.declared().declaration()) ||
           rf.declared().declaration().declared_by() != peer || rf.declared().region() == 0 ||
           rf.declared().region() > 255 || rf.declared().region() == peer)) {
        return absl::InvalidArgumentError("lost region declared: malformed declaration");
      }
      if (rf.has_recorded() &&
          (rf.recorded().declaration_id().empty() || rf.recorded().declaration_id().size() > 64)) {
        return absl::InvalidArgumentError("declaration recorded: malformed id");
      }
      // The region a declaration named, answering its declarer (the region checks the rest: the
      // declaration is ours, against the sender, and the units within what it reclaimed).
      if (rf.has_settled() &&
          (rf.settled().declaration_id().empty() || rf.settled().declaration_id().size() > 64 ||
           rf.settled().written_off_size() > 100000 ||
           (rf.settled().refused() && rf.settled().written_off_size() > 0))) {
        return absl::InvalidArgumentError("declaration settled: malformed answer");
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

absl::Status Coordinator::OnFrame(RegionId peer, const pb::Frame& frame) {
  Impl& c = *impl_;
  if (absl::Status st = CheckFrame(peer, frame); !st.ok()) return st;
  switch (frame.body_case()) {
    case pb::Frame::kLease: {
      auto m = FromLeaseFrame(frame.lease());
      if (!m.ok()) return m.status();
      std::lock_guard<std::mutex> l(c.mu);
      c.lm->OnMessage(peer, *m);
      return absl::OkStatus();
    }
    case pb::Frame::kRights: {
      if (frame.rights().has_retire()) return c.OnRetire(frame.rights().retire());
      if (frame.rights().has_declared()) return c.OnDeclared(peer, frame.rights().declared());
      if (frame.rights().has_recorded()) {
        c.OnRecorded(peer, frame.rights().recorded());
        return absl::OkStatus();
      }
      if (frame.rights().has_settled()) return c.OnSettled(peer, frame.rights().settled());
      std::set<uint32_t> regions{c.config.replica_id};
      for (const auto& peer : c.config.peers) regions.insert(peer.replica_id);
      auto m = FromFrame(frame.rights(), 2 * c.config.rights.max_skus_per_gossip, regions);
      if (!m.ok()) return m.status();
      {
        std::lock_guard<std::mutex> l(c.mu);
        c.rm->OnMessage(peer, *m);
      }
      if (std::holds_alternative<RightsRequest>(*m)) c.Wake();  // answer waiting checkouts now
      return absl::OkStatus();
    }
    case pb::Frame::kSyncRequest:
      return c.OnSyncRequest(peer, frame.sync_request());
    case pb::Frame::kSyncReply:
      return c.OnSyncReply(peer, frame.sync_reply());
    default:
      return absl::InvalidArgumentError("not a coordination frame");
  }
}

void Coordinator::OnPeerUp(RegionId peer) {
  {
    std::lock_guard<std::mutex> l(impl_->acks_mu);
    impl_->peers_up.insert(peer);
  }
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->streams_down.erase(peer);
  }
  impl_->Wake();
}

void Coordinator::OnPeerDown(RegionId peer) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->streams_down.insert(peer);
}

void Coordinator::OnRegionTakenOver(std::function<void(RegionId group)> fn) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->on_taken_over = std::move(fn);
}

void Coordinator::SurvivorsExchangePending(std::function<std::vector<RegionId>(RegionId lost)> fn) {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->exchange_pending = std::move(fn);
}

void Coordinator::OnAck(RegionId peer, const std::string& stream, int64_t seq) {
  {
    std::lock_guard<std::mutex> l(impl_->acks_mu);
    int64_t& s = impl_->acks[{stream, peer}];
    s = std::max(s, seq);
  }
  impl_->acks_cv.notify_all();
}

grpc::Status Coordinator::ForwardIncoming(RegionId from, const pb::ForwardOrderRequest& req,
                                          pb::ForwardOrderResponse* out) {
  rpb::MutateOrderRequest m;
  m.set_order_id(req.order_id());
  m.set_user_id(req.user_id());
  m.set_action(static_cast<rpb::OrderAction>(req.action()));
  m.set_card_number(req.card_number());
  m.set_from_region(from);
  m.set_owner(impl_->config.replica_id);
  rpb::MutateOrderResponse resp;
  auto ctx = Ctx(4000);
  grpc::Status s = impl_->region->MutateOrder(ctx.get(), m, &resp);
  if (!s.ok()) return s;
  out->set_http_status(resp.http_status());
  out->set_body(resp.body());
  return grpc::Status::OK;
}

grpc::Status Coordinator::FindAccountIncoming(const pb::FindAccountRequest& req,
                                              pb::FindAccountResponse* out) {
  rpb::FindAccountRequest q;
  q.set_user_id(req.user_id());
  q.set_password(req.password());
  q.set_id_prefix(req.id_prefix());
  q.set_key(req.key());
  q.set_blinded_id(req.blinded_id());
  rpb::FindAccountResponse resp;
  auto ctx = Ctx(1000);
  grpc::Status s = impl_->region->FindAccount(ctx.get(), q, &resp);
  if (!s.ok()) return s;
  out->set_found(resp.found());
  out->set_residency(resp.residency());
  out->set_password_ok(resp.password_ok());
  out->set_attempts_exhausted(resp.attempts_exhausted());
  return grpc::Status::OK;
}

uint16_t Coordinator::control_port() const { return static_cast<uint16_t>(impl_->control_port); }
uint16_t Coordinator::admin_port() const { return impl_->admin ? impl_->admin->port() : 0; }

}  // namespace meridian::replication
