#include "replication/rights.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <set>

#include "absl/strings/str_cat.h"

namespace meridian::replication {
namespace {

constexpr double kLn2 = 0.69314718055994530942;
constexpr size_t kMaxSkuBytes = 256;
// A grant decided here may take this long to show in the view (the host executes it).
constexpr int64_t kPendingGrantMs = 1000;

uint64_t Lookup(const std::map<RegionId, uint64_t>& m, RegionId k) {
  auto it = m.find(k);
  return it == m.end() ? 0 : it->second;
}

}  // namespace

absl::Status RightsConfig::Validate() const {
  auto bad = [](const char* field, const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("rights.", field, ": ", why));
  };
  if (gossip_interval_ms < 10 || gossip_interval_ms > 60000) {
    return bad("gossip_interval_ms", "must be 10..60000");
  }
  if (demand_half_life_ms < 100) return bad("demand_half_life_ms", "must be >= 100");
  if (lead_ms < 0 || lead_ms > 600000) return bad("lead_ms", "must be 0..600000");
  if (horizon_ms < 100 || horizon_ms > 3600000) return bad("horizon_ms", "must be 100..3600000");
  if (!(tte_ratio >= 1 && tte_ratio <= 100)) return bad("tte_ratio", "must be 1..100");
  if (grant_cooldown_ms < 0) return bad("grant_cooldown_ms", "must be >= 0");
  if (request_cooldown_ms < 0) return bad("request_cooldown_ms", "must be >= 0");
  if (info_ttl_ms < 2 * gossip_interval_ms) {
    return bad("info_ttl_ms", "must be at least twice gossip_interval_ms");
  }
  if (active_window_ms < info_ttl_ms) return bad("active_window_ms", "must be >= info_ttl_ms");
  if (max_skus_per_gossip < 1 || max_skus_per_gossip > 100000) {
    return bad("max_skus_per_gossip", "must be 1..100000");
  }
  return absl::OkStatus();
}

RightsManager::RightsManager(RegionId self, std::vector<RegionId> peers, RightsConfig config,
                             const Clock* clock, SendFn send, ViewFn view)
    : self_(self),
      peers_(std::move(peers)),
      config_(config),
      clock_(clock),
      send_(std::move(send)),
      view_(std::move(view)) {
  assert(config_.Validate().ok());
  std::sort(peers_.begin(), peers_.end());
}

double RightsManager::Rate(const Demand& d, int64_t now) const {
  if (d.decayed <= 0) return 0;
  const double hl = static_cast<double>(config_.demand_half_life_ms);
  const double age = static_cast<double>(std::max<int64_t>(0, now - d.at_ms));
  return d.decayed * std::exp2(-age / hl) * kLn2 / hl * 1000.0;
}

double RightsManager::DemandPerS(const std::string& sku) const {
  auto it = local_.find(sku);
  return it == local_.end() ? 0 : Rate(it->second.demand, clock_->NowMs());
}

void RightsManager::RecordDemand(const std::string& sku, uint64_t units) {
  const int64_t now = clock_->NowMs();
  Local& l = local_[sku];
  const double hl = static_cast<double>(config_.demand_half_life_ms);
  const double age = static_cast<double>(std::max<int64_t>(0, now - l.demand.at_ms));
  l.demand.decayed = l.demand.decayed * std::exp2(-age / hl) + static_cast<double>(units);
  l.demand.at_ms = now;
  l.touched_ms = now;
}

void RightsManager::SetWaiting(const std::string& sku, uint64_t units) {
  const int64_t now = clock_->NowMs();
  Local& l = local_[sku];
  // Re-ask while waiting goes on: a request can be lost, and peers' rights change.
  const uint64_t before =
      now - l.last_request_ms >= 4 * config_.request_cooldown_ms ? 0 : l.waiting;
  l.waiting = units;
  l.touched_ms = now;
  if (units > before && now - l.last_request_ms >= config_.request_cooldown_ms) {
    l.last_request_ms = now;
    for (RegionId p : peers_) send_(p, RightsRequest{sku, units});
  }
}

void RightsManager::SetAway(std::set<RegionId> away) { away_ = std::move(away); }

void RightsManager::OnMessage(RegionId from, const RightsMessage& message) {
  if (!std::binary_search(peers_.begin(), peers_.end(), from)) return;  // not a peer
  const int64_t now = clock_->NowMs();
  if (const auto* g = std::get_if<RightsGossip>(&message)) {
    // Never trust a peer: a malformed entry is dropped, the rest is used.
    size_t n = 0;
    for (const RightsGossip::Entry& e : g->entries) {
      if (++n > 2 * config_.max_skus_per_gossip) break;
      if (e.sku.empty() || e.sku.size() > kMaxSkuBytes) continue;
      if (!std::isfinite(e.demand_per_s) || e.demand_per_s < 0 || e.demand_per_s > 1e9) continue;
      if (e.rights < -(int64_t{1} << 41) || e.rights > (int64_t{1} << 41)) continue;
      // Units are used as int64 in the arithmetic of grants: bound them like a request's.
      if (e.waiting > (uint64_t{1} << 40)) continue;
      if (std::any_of(e.received.begin(), e.received.end(),
                      [](const auto& r) { return r.second > (uint64_t{1} << 50); })) {
        continue;
      }
      PeerInfo& p = peers_info_[e.sku][from];
      p.entry = e;
      p.at_ms = now;
    }
  } else {
    const auto& r = std::get<RightsRequest>(message);
    if (r.sku.empty() || r.sku.size() > kMaxSkuBytes || r.units > (uint64_t{1} << 40)) return;
    PeerInfo& p = peers_info_[r.sku][from];
    p.urgent_units = r.units;
    p.urgent_at_ms = now;
  }
}

void RightsManager::Gossip(int64_t now) {
  std::set<std::string> skus;
  for (auto it = local_.begin(); it != local_.end();) {
    if (now - it->second.touched_ms > config_.active_window_ms && it->second.waiting == 0) {
      it = local_.erase(it);
      continue;
    }
    skus.insert(it->first);
    ++it;
  }
  for (auto it = peers_info_.begin(); it != peers_info_.end();) {
    bool any = false;
    for (auto p = it->second.begin(); p != it->second.end();) {
      if (!Fresh(std::max(p->second.at_ms, p->second.urgent_at_ms), now)) {
        p = it->second.erase(p);
      } else {
        any = true;
        ++p;
      }
    }
    if (!any) {
      it = peers_info_.erase(it);
      continue;
    }
    skus.insert(it->first);
    ++it;
  }
  RightsGossip g;
  for (const std::string& sku : skus) {
    std::optional<SkuRights> v = view_(sku);
    RightsGossip::Entry e;
    e.sku = sku;
    e.rights = v ? v->rights : 0;
    if (v) e.received = v->received;
    auto l = local_.find(sku);
    if (l != local_.end()) {
      e.demand_per_s = Rate(l->second.demand, now);
      e.waiting = l->second.waiting;
    }
    g.entries.push_back(std::move(e));
  }
  if (g.entries.size() > config_.max_skus_per_gossip) {
    // Keep what matters most: waiting checkouts, then demand.
    std::stable_sort(g.entries.begin(), g.entries.end(), [](const auto& a, const auto& b) {
      if (a.waiting != b.waiting) return a.waiting > b.waiting;
      return a.demand_per_s > b.demand_per_s;
    });
    g.entries.resize(config_.max_skus_per_gossip);
  }
  if (g.entries.empty()) return;
  for (RegionId p : peers_) send_(p, g);
}

std::vector<RightsManager::Grant> RightsManager::Tick() {
  const int64_t now = clock_->NowMs();
  if (now >= next_gossip_ms_) {
    Gossip(now);
    next_gossip_ms_ = now + config_.gossip_interval_ms;
  }
  std::vector<Grant> out;
  for (const auto& [sku, info] : peers_info_) Decide(sku, now, out);
  return out;
}

void RightsManager::Decide(const std::string& sku, int64_t now, std::vector<Grant>& out) {
  std::optional<SkuRights> v = view_(sku);
  if (!v || v->rights <= 0) return;
  auto pi = peers_info_.find(sku);
  if (pi == peers_info_.end()) return;
  int64_t mine = v->rights;
  double my_rate = 0;
  uint64_t my_waiting = 0;
  if (auto l = local_.find(sku); l != local_.end()) {
    my_rate = Rate(l->second.demand, now);
    my_waiting = l->second.waiting;
  }
  struct Peer {
    RegionId id;
    double rights = 0;  // as gossiped, plus what we sent that it had not yet seen
    double rate = 0;
    uint64_t waiting = 0;  // waiting units not yet covered by grants in flight
  };
  std::vector<Peer> peers;
  for (const auto& [id, p] : pi->second) {
    if (away_.count(id)) continue;
    const bool gossip_fresh = Fresh(p.at_ms, now);
    const bool urgent_fresh =
        p.urgent_units > 0 && Fresh(p.urgent_at_ms, now) && p.urgent_at_ms >= p.at_ms;
    if (!gossip_fresh && !urgent_fresh) continue;
    const uint64_t given = Lookup(v->given, id);
    const uint64_t seen = gossip_fresh ? Lookup(p.entry.received, self_) : given;
    uint64_t in_flight = given > seen ? given - seen : 0;
    if (auto pg = pending_.find({sku, id}); pg != pending_.end()) {
      if (given >= pg->second.expected_given || now - pg->second.at_ms > kPendingGrantMs) {
        pending_.erase(pg);
      } else {
        in_flight += pg->second.expected_given - given;
      }
    }
    Peer q{id};
    q.rights =
        static_cast<double>(gossip_fresh ? p.entry.rights : 0) + static_cast<double>(in_flight);
    q.rate = gossip_fresh ? p.entry.demand_per_s : 0;
    const uint64_t waiting = urgent_fresh ? p.urgent_units : (gossip_fresh ? p.entry.waiting : 0);
    q.waiting = waiting > in_flight ? waiting - in_flight : 0;
    peers.push_back(q);
  }
  auto cooled = [&](RegionId to) {
    auto it = last_grant_ms_.find({sku, to});
    return it == last_grant_ms_.end() || now - it->second >= config_.grant_cooldown_ms;
  };
  auto give = [&](Peer& p, int64_t units, bool urgent) {
    out.push_back(Grant{sku, p.id, static_cast<uint64_t>(units), urgent});
    mine -= units;
    p.rights += static_cast<double>(units);
    if (urgent) p.waiting -= std::min<uint64_t>(p.waiting, static_cast<uint64_t>(units));
    last_grant_ms_[{sku, p.id}] = now;
    Pending& pg = pending_[{sku, p.id}];
    pg.expected_given =
        std::max(pg.expected_given, Lookup(v->given, p.id)) + static_cast<uint64_t>(units);
    pg.at_ms = now;
  };

  // Our own waiting checkouts come first: give nothing away while they wait.
  if (my_waiting > 0) return;
  // Units a demand rate sells over lead_ms.
  auto over_lead = [&](double rate) {
    return static_cast<int64_t>(std::ceil(rate * static_cast<double>(config_.lead_ms) / 1000.0));
  };
  const int64_t reserve = over_lead(my_rate);

  // 1. Checkouts waiting elsewhere. They are sales now, where our reserve is sales we expect in
  //    the next lead_ms: the waiting units come from anything we hold, and from what we hold
  //    above our reserve a top-up of the peer's own expected demand over lead_ms, so that its
  //    next checkouts do not wait for another round trip. (Answering only from above the reserve
  //    refused checkouts near a sell-out while peers kept their reserves: 23 of 31 refusals.)
  std::sort(peers.begin(), peers.end(),
            [](const Peer& a, const Peer& b) { return a.waiting > b.waiting; });
  for (Peer& p : peers) {
    if (mine <= 0) break;
    if (p.waiting == 0 || !cooled(p.id)) continue;
    const int64_t now_units = std::min<int64_t>(mine, static_cast<int64_t>(p.waiting));
    const int64_t top_up =
        std::clamp<int64_t>(mine - now_units - reserve, 0, std::max<int64_t>(0, over_lead(p.rate)));
    give(p, now_units + top_up, true);
  }

  // 2. Ahead of demand: toward the peer that will run out first, if much sooner than we will.
  if (mine - reserve <= 0) return;
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const double my_tte = my_rate > 1e-9 ? static_cast<double>(mine) / my_rate : kInf;
  Peer* soonest = nullptr;
  double soonest_tte = kInf;
  for (Peer& p : peers) {
    if (p.rate <= 1e-9 || !cooled(p.id)) continue;
    const double tte = std::max(0.0, p.rights) / p.rate;
    if (tte < soonest_tte) {
      soonest_tte = tte;
      soonest = &p;
    }
  }
  if (soonest == nullptr) return;
  if (soonest_tte * 1000.0 > static_cast<double>(config_.horizon_ms)) return;
  if (my_tte < kInf && soonest_tte * config_.tte_ratio > my_tte) return;
  // Equalize: (mine - x) / my_rate == (theirs + x) / their_rate.
  const double theirs = std::max(0.0, soonest->rights);
  double x = my_rate > 1e-9 ? (static_cast<double>(mine) * soonest->rate - theirs * my_rate) /
                                  (soonest->rate + my_rate)
                            : static_cast<double>(mine);
  const int64_t units = std::min<int64_t>(static_cast<int64_t>(std::floor(x)), mine - reserve);
  if (units >= 1) give(*soonest, units, false);
}

std::vector<RightsManager::RegionView> RightsManager::Views(const std::string& sku) {
  const int64_t now = clock_->NowMs();
  std::vector<RegionView> out;
  RegionView me{self_};
  if (std::optional<SkuRights> v = view_(sku)) me.rights = v->rights;
  if (auto l = local_.find(sku); l != local_.end()) {
    me.demand_per_s = Rate(l->second.demand, now);
    me.waiting = l->second.waiting;
  }
  out.push_back(me);
  if (auto pi = peers_info_.find(sku); pi != peers_info_.end()) {
    for (const auto& [id, p] : pi->second) {
      out.push_back(RegionView{id, p.entry.rights, p.entry.demand_per_s,
                               std::max(p.entry.waiting, p.urgent_units), now - p.at_ms});
    }
  }
  return out;
}

}  // namespace meridian::replication
