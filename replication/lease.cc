#include "replication/lease.h"

#include <algorithm>
#include <cassert>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace meridian::replication {

absl::Status LeaseConfig::Validate() const {
  auto bad = [](const char* field, const char* why) {
    return absl::InvalidArgumentError(absl::StrCat("leases.", field, ": ", why));
  };
  if (ttl_ms < kLeaseTtlMsMin || ttl_ms > kLeaseTtlMsMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("leases.ttl_ms: must be ", kLeaseTtlMsMin, "..", kLeaseTtlMsMax));
  }
  if (max_drift < 0 || max_drift > 0.1) return bad("max_drift", "must be 0..0.1");
  if (margin_ms < 0) return bad("margin_ms", "must be >= 0");
  if (HolderValidityMs() <= 0) return bad("margin_ms", "leaves no lease time (ttl_ms too short)");
  if (renew_interval_ms < 10 || renew_interval_ms * 2 > HolderValidityMs()) {
    return bad("renew_interval_ms",
               "must be >= 10 and at most half of the holder's validity "
               "(ttl_ms * (1 - 2 * max_drift) - margin_ms), so one lost round does not lapse it");
  }
  if (retry_interval_ms < 10 || retry_interval_ms > ttl_ms) {
    return bad("retry_interval_ms", "must be 10..ttl_ms");
  }
  if (round_timeout_ms < 10 || round_timeout_ms >= HolderValidityMs()) {
    return bad("round_timeout_ms", "must be >= 10 and below the holder's validity");
  }
  if (alive_timeout_ms < 2 * renew_interval_ms) {
    return bad("alive_timeout_ms", "must be at least twice renew_interval_ms");
  }
  if (handback_after_ms < 0) return bad("handback_after_ms", "must be >= 0 (0: never automatic)");
  return absl::OkStatus();
}

int64_t LeaseConfig::HolderValidityMs() const {
  return static_cast<int64_t>(static_cast<double>(ttl_ms) * (1.0 - 2.0 * max_drift)) - margin_ms;
}

int64_t LeaseConfig::MinTtlMs() const {
  // Every condition of Validate that involves ttl_ms only gets easier as it grows, so the
  // smallest valid ttl_ms is found by bisection over Validate itself (integer truncation
  // included) rather than by a second copy of its arithmetic.
  LeaseConfig l = *this;
  auto valid = [&](int64_t ttl) {
    l.ttl_ms = ttl;
    return l.Validate().ok();
  };
  int64_t lo = kLeaseTtlMsMin, hi = kLeaseTtlMsMax;
  if (!valid(hi)) return hi + 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (valid(mid)) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

std::string_view LeaseEventName(LeaseEvent::Kind kind) {
  switch (kind) {
    case LeaseEvent::Kind::kAcquired:
      return "lease_acquired";
    case LeaseEvent::Kind::kActive:
      return "lease_active";
    case LeaseEvent::Kind::kLost:
      return "lease_lost";
    case LeaseEvent::Kind::kLearned:
      return "lease_learned";
    case LeaseEvent::Kind::kReleased:
      return "lease_released";
    case LeaseEvent::Kind::kStaleRefused:
      return "lease_stale_refused";
  }
  return "lease_unknown";
}

LeaseManager::LeaseManager(RegionId self, std::vector<RegionId> regions,
                           std::vector<RegionId> witnesses, LeaseConfig config, LeaseStore* store,
                           const Clock* clock, SendFn send, EventFn on_event, SyncFn on_sync)
    : self_(self),
      regions_(std::move(regions)),
      witnesses_(std::move(witnesses)),
      config_(config),
      store_(store),
      clock_(clock),
      send_(std::move(send)),
      on_event_(std::move(on_event)),
      on_sync_(std::move(on_sync)) {
  std::sort(regions_.begin(), regions_.end());
  std::sort(witnesses_.begin(), witnesses_.end());
  assert(config_.Validate().ok());
  assert(store_ != nullptr && clock_ != nullptr);
}

absl::Status LeaseManager::Start() {
  if (started_) return absl::FailedPreconditionError("lease manager already started");
  const int64_t now = clock_->NowMs();
  std::map<RegionId, AcceptorRecord> saved = store_->Load();
  for (RegionId g : regions_) {
    Acceptor& a = acceptors_[g];
    if (auto it = saved.find(g); it != saved.end()) a.record = it->second;
    a.start_epoch = a.record.epoch;
    claimed_[g] = a.record.epoch;
    won_[g];
    holdings_[g];
  }
  // Promises made before a restart were in memory: grant no new epoch to anyone else for one
  // ttl. A first start (nothing saved) has made no promises.
  if (!saved.empty()) {
    quarantine_until_ms_ = now + config_.ttl_ms;
    listen_until_ms_ = now + 2 * config_.renew_interval_ms;
  }
  for (RegionId r : regions_) last_heard_ms_[r] = now;
  for (RegionId r : witnesses_) last_heard_ms_[r] = now;
  started_ = true;
  return absl::OkStatus();
}

bool LeaseManager::IsHolder() const {
  return std::binary_search(regions_.begin(), regions_.end(), self_);
}

void LeaseManager::SetJurisdictions(std::map<RegionId, std::string> jurisdictions) {
  assert(!started_);
  jurisdictions_ = std::move(jurisdictions);
}

std::vector<RegionId> LeaseManager::Preference(RegionId group) const {
  auto jurisdiction = [&](RegionId r) -> std::string_view {
    auto it = jurisdictions_.find(r);
    return it == jurisdictions_.end() ? std::string_view() : std::string_view(it->second);
  };
  const std::string_view home = jurisdiction(group);
  std::vector<RegionId> out;
  auto it = std::lower_bound(regions_.begin(), regions_.end(), group);
  for (size_t i = 0; i < regions_.size(); ++i) {
    size_t idx = (static_cast<size_t>(it - regions_.begin()) + i) % regions_.size();
    out.push_back(regions_[idx]);
  }
  // The home (first when it is a region) and its jurisdiction's regions ahead of the rest; the
  // stable partition keeps each part in wrap-around order.
  if (!home.empty()) {
    std::stable_partition(out.begin(), out.end(),
                          [&](RegionId r) { return r == group || jurisdiction(r) == home; });
  }
  return out;
}

bool LeaseManager::Alive(RegionId peer) const {
  if (peer == self_) return true;
  auto it = last_heard_ms_.find(peer);
  return it != last_heard_ms_.end() && clock_->NowMs() - it->second < config_.alive_timeout_ms;
}

void LeaseManager::Heard(RegionId peer) {
  if (peer == self_) return;
  auto it = last_heard_ms_.find(peer);
  if (it == last_heard_ms_.end()) return;  // not a member: ignore
  it->second = clock_->NowMs();
}

bool LeaseManager::Designated(RegionId group) const {
  for (RegionId r : Preference(group))
    if (Alive(r)) return r == self_;
  return false;
}

bool LeaseManager::WantsToAcquire(RegionId group, const Holding& h) const {
  const Won& w = won_.at(group);
  if (w.owner == self_ && h.released_epoch != 0 && h.released_epoch == w.epoch) {
    // Handed back and not yet taken: take it again only if its home has gone quiet.
    return !Alive(group) && Designated(group);
  }
  if (group == self_ && h.handback_offer_epoch != 0 && h.handback_offer_epoch >= w.epoch) {
    return true;  // the holder handed it back
  }
  // While another region renews it, leave it alone. Otherwise (ours but lapsed, or its owner has
  // stopped renewing) the designated region, the first alive in the preference order, takes it.
  // Only one region trying keeps two candidates from splitting the votes forever (each one's own
  // acceptor keeps promising itself).
  if (w.owner != self_ && w.owner != kNoRegion) {
    auto r = last_renewal_.find(group);
    if (r != last_renewal_.end() && r->second.from == w.owner && r->second.epoch == w.epoch &&
        clock_->NowMs() - r->second.at_ms < config_.alive_timeout_ms) {
      return false;
    }
  }
  // Nor while another region's renewal of it is being checked: a region just back hears the new
  // owner's renewals before it knows the win, and competing would only burn epochs.
  if (Checking(group)) return false;
  return Designated(group);
}

void LeaseManager::Tick() {
  assert(started_);
  if (!IsHolder()) return;
  const int64_t now = clock_->NowMs();
  // Checks of claims: ask again whoever has not answered; drop one whose claim went quiet.
  for (auto it = checks_.begin(); it != checks_.end();) {
    Check& c = it->second;
    if (now - c.claimed_ms >= config_.alive_timeout_ms) {
      it = checks_.erase(it);
      continue;
    }
    if (!Refuted(c) && now - c.sent_ms >= config_.retry_interval_ms) {
      AskRecords(it->first.first, c, now);
    }
    ++it;
  }
  for (RegionId g : regions_) {
    Holding& h = holdings_[g];
    if (h.round_open && now - h.round_start_ms >= config_.round_timeout_ms) {
      h.round_open = false;
      if (h.state == Holding::State::kAcquiring) h.state = Holding::State::kIdle;
    }
    if (h.round_open && now - h.round_sent_ms >= config_.retry_interval_ms) {
      // Ask again whoever has not answered: a lost request or reply must not cost the round.
      // Acceptors answer a repeat exactly as the first time (a renewed promise only runs later).
      h.round_sent_ms = now;
      const LeaseRequest req{g, h.epoch, h.round, Held(h)};
      for (RegionId r : regions_)
        if (r != self_ && !h.grants.count(r) && !h.refusals.count(r)) Deliver(r, req);
      for (RegionId w : witnesses_)
        if (w != self_ && !h.grants.count(w) && !h.refusals.count(w)) Deliver(w, req);
    }
    if (Held(h) && now >= h.valid_until_ms) StepDown(g, h, LeaseEvent::Kind::kLost);
    // A successor hands the group home once home has been reachable for a while.
    if (Held(h) && g != self_ && config_.handback_after_ms > 0) {
      if (Alive(g)) {
        if (h.home_alive_since_ms < 0) h.home_alive_since_ms = now;
        if (h.state == Holding::State::kActive &&
            now - h.home_alive_since_ms >= config_.handback_after_ms) {
          Release(g, h);
          continue;
        }
      } else {
        h.home_alive_since_ms = -1;
      }
    }
    const Won& w = won_.at(g);
    if (!Held(h) && h.released_epoch != 0 && w.owner == self_ && w.epoch == h.released_epoch &&
        Alive(g)) {
      // The offer may have been lost: repeat it until home takes the group.
      if (now >= h.next_round_ms) {
        Deliver(g, LeaseHandback{g, h.released_epoch});
        h.next_round_ms = now + config_.retry_interval_ms;
      }
      continue;
    }
    if (h.round_open || now < h.next_round_ms) continue;
    if (Held(h)) {
      StartRound(g, h, h.epoch, now);
      h.next_round_ms = now + config_.renew_interval_ms;
    } else if (now >= listen_until_ms_ && WantsToAcquire(g, h)) {
      const uint64_t next = NextEpoch(g, h);
      if (next > kMaxEpoch) continue;  // see kMaxEpoch
      h.state = Holding::State::kAcquiring;
      StartRound(g, h, next, now);
      h.next_round_ms = now + config_.retry_interval_ms;
    }
  }
}

void LeaseManager::StartRound(RegionId group, Holding& h, uint64_t epoch, int64_t now) {
  h.epoch = epoch;
  h.round = next_round_id_++;
  h.round_start_ms = now;
  h.round_sent_ms = now;
  h.round_open = true;
  h.grants.clear();
  h.refusals.clear();
  h.records.clear();
  const LeaseRequest req{group, epoch, h.round, Held(h)};
  // Ask ourselves first: our own acceptor is the cheapest vote.
  Deliver(self_, req);
  for (RegionId r : regions_)
    if (r != self_) Deliver(r, req);
  for (RegionId w : witnesses_)
    if (w != self_) Deliver(w, req);
}

void LeaseManager::Deliver(RegionId to, const LeaseMessage& m) {
  if (to == self_) {
    OnMessage(self_, m);
  } else {
    send_(to, m);
  }
}

void LeaseManager::OnMessage(RegionId from, const LeaseMessage& message) {
  assert(started_);
  Heard(from);
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        // A group we do not know is a peer's configuration error: ignore it, do not crash.
        if (!claimed_.count(m.group)) return;
        if constexpr (std::is_same_v<T, LeaseRequest>) {
          OnRequest(from, m);
        } else if constexpr (std::is_same_v<T, LeaseReply>) {
          OnReply(from, m);
        } else if constexpr (std::is_same_v<T, LeaseRelease>) {
          OnRelease(from, m);
        } else if constexpr (std::is_same_v<T, LeaseHandback>) {
          OnHandback(from, m);
        } else if constexpr (std::is_same_v<T, LeaseQuery>) {
          OnQuery(from, m);
        } else {
          OnRecordAnswer(from, m);
        }
      },
      message);
}

void LeaseManager::OnRequest(RegionId from, const LeaseRequest& m) {
  Acceptor& a = acceptors_[m.group];
  const int64_t now = clock_->NowMs();
  bool grant = false;
  if (m.epoch == 0 || from == kNoRegion) {
    grant = false;  // malformed: refuse
  } else if (m.epoch < a.record.epoch) {
    Emit(LeaseEvent::Kind::kStaleRefused, m.group, m.epoch, from);
  } else if (m.epoch == a.record.epoch) {
    grant = a.record.owner == from;  // one owner per epoch
  } else if (m.epoch > JumpBase(m.group) + kMaxEpochJump) {
    // Far above anything known won: not on one peer's word (a renewal is checked below).
    grant = false;
  } else if (from == a.record.owner ||
             (now >= a.promised_until_ms && now >= quarantine_until_ms_)) {
    // Only a.record.owner can hold a promise from us, so it may move to a higher epoch at once.
    AcceptorRecord next{m.epoch, from};
    if (store_->Save(m.group, next).ok()) {
      a.record = next;
      grant = true;
    }
  }
  if (grant) a.promised_until_ms = std::max(a.promised_until_ms, now + config_.ttl_ms);
  Claim(m.group, a.record.epoch);
  // A renewal says its sender won the epoch: taken once vouched for (granted here above, or a
  // majority's records). Until then it moves nothing (fresh epochs go above it once the acceptors
  // report it in their records). A witness holds no fence and takes no group: it only answers.
  if (m.renewal && from != self_ && IsHolder()) {
    last_renewal_[m.group] = Renewal{from, m.epoch, now};
    (void)Vouched(m.group, m.epoch, from, from, /*renewal=*/true);
  } else if (m.renewal && from != self_ && a.record == AcceptorRecord{m.epoch, from}) {
    // A witness checks no claims, but a renewal it granted itself is a win it knows: its jump
    // base follows the deployment's epochs, not only its record at its start.
    LearnWon(m.group, m.epoch, from);
  }
  Deliver(from, LeaseReply{m.group, m.epoch, m.round, grant, a.record.epoch, a.record.owner});
}

void LeaseManager::OnReply(RegionId from, const LeaseReply& m) {
  if (m.known_epoch > JumpBase(m.group) + kMaxEpochJump && IsMember(from)) {
    // A record far ahead of everything known: counted once a majority's records show it (a region
    // rebuilt from nothing catches up so), never on one acceptor's word.
    (void)Vouched(m.group, m.known_epoch, m.known_owner, from);
  }
  Holding& h = holdings_[m.group];
  if (!h.round_open || m.round != h.round || m.epoch != h.epoch) return;  // a stale reply
  // The acceptor's record, for the next round's bid (one reply per acceptor and round counts).
  if (IsMember(from)) h.records.emplace(from, m.known_epoch);
  if (!m.granted) {
    // A renewal goes on whatever: the lease stays valid until it expires. An acquisition that can
    // no longer reach a majority ends now and is retried, at a fresh epoch, on the next retry.
    h.refusals.insert(from);
    const size_t members = regions_.size() + witnesses_.size();
    if (h.state == Holding::State::kAcquiring && members - h.refusals.size() < Majority()) {
      h.round_open = false;
      h.state = Holding::State::kIdle;
    }
    return;
  }
  h.grants.insert(from);
  if (h.grants.size() < Majority()) return;
  h.round_open = false;
  const int64_t until = h.round_start_ms + config_.HolderValidityMs();
  if (Held(h)) {
    h.valid_until_ms = std::max(h.valid_until_ms, until);
    return;
  }
  // Won this epoch.
  h.valid_until_ms = until;
  h.released_epoch = 0;
  h.handback_offer_epoch = 0;
  h.home_alive_since_ms = -1;
  LearnWon(m.group, h.epoch, self_);
  Emit(LeaseEvent::Kind::kAcquired, m.group, h.epoch, self_);
  // Epoch 1 is the first anyone held; any later epoch may follow someone else's changes, so it
  // is usable only once the host has synced the group (asked again after every fresh win until
  // it is done; the host drops duplicates).
  if (h.epoch > 1 && synced_epoch_[m.group] < h.epoch) {
    h.state = Holding::State::kSyncing;
    if (on_sync_) {
      on_sync_(m.group, h.epoch);
    } else {
      SyncDone(m.group, h.epoch);
    }
  } else {
    h.state = Holding::State::kActive;
    Emit(LeaseEvent::Kind::kActive, m.group, h.epoch, self_);
  }
}

void LeaseManager::SyncDone(RegionId group, uint64_t epoch) {
  if (!holdings_.count(group)) return;
  synced_epoch_[group] = std::max(synced_epoch_[group], epoch);
  Holding& h = holdings_[group];
  if (h.state == Holding::State::kSyncing && h.epoch <= epoch) {
    h.state = Holding::State::kActive;
    Emit(LeaseEvent::Kind::kActive, group, h.epoch, self_);
  }
}

void LeaseManager::OnRelease(RegionId from, const LeaseRelease& m) {
  Acceptor& a = acceptors_[m.group];
  if (a.record.epoch == m.epoch && a.record.owner == from) a.promised_until_ms = 0;
}

void LeaseManager::OnHandback(RegionId from, const LeaseHandback& m) {
  if (m.group != self_ || m.epoch == 0) return;        // only a group's home takes it back
  if (!Vouched(m.group, m.epoch, from, from)) return;  // checking: the holder repeats its offer
  Holding& h = holdings_[m.group];
  if (m.epoch >= won_.at(m.group).epoch && m.epoch > h.handback_offer_epoch) {
    h.handback_offer_epoch = m.epoch;
  }
}

bool LeaseManager::Learn(RegionId group, uint64_t epoch, RegionId owner) {
  if (!won_.count(group) || epoch == 0 || owner == kNoRegion) return false;
  return Vouched(group, epoch, owner, owner);
}

bool LeaseManager::IsMember(RegionId from) const {
  return from != kNoRegion && (std::binary_search(regions_.begin(), regions_.end(), from) ||
                               std::binary_search(witnesses_.begin(), witnesses_.end(), from));
}

bool LeaseManager::Vouched(RegionId group, uint64_t epoch, RegionId owner, RegionId from,
                           bool renewal) {
  const Won& w = won_.at(group);
  if (w.epoch > epoch || (w.epoch == epoch && w.owner == owner)) return true;
  // Only a region holds a group.
  if (epoch == 0 || !std::binary_search(regions_.begin(), regions_.end(), owner)) return false;
  const AcceptorRecord& own = acceptors_.at(group).record;
  if (own.epoch == epoch && own.owner == owner) {
    LearnWon(group, epoch, owner);
    return true;
  }
  // Ask every acceptor for its record. One check per group and peer at a time: a repeat of the
  // claim keeps its check open (asked again once refuted, after round_timeout_ms: records move),
  // and another claim of the same peer replaces it only after retry_interval_ms, so a peer's
  // stream of claims does not multiply into queries, nor hold up the check of another's claim.
  const int64_t now = clock_->NowMs();
  const auto key = std::make_pair(group, from);
  if (auto it = checks_.find(key); it != checks_.end()) {
    Check& c = it->second;
    const int64_t age = now - c.started_ms;
    if (c.epoch == epoch && c.owner == owner) {
      c.claimed_ms = now;
      if (renewal) c.renewed_ms = now;
      if (!Refuted(c) || age < config_.round_timeout_ms) return false;
    } else if (age < config_.retry_interval_ms) {
      return false;
    }
  }
  Check& c = checks_[key];
  c = Check{epoch, owner, next_query_id_++, now, now, now, renewal ? now : -1, {self_}, {}};
  AskRecords(group, c, now);
  return false;
}

void LeaseManager::AskRecords(RegionId group, Check& c, int64_t now) {
  c.sent_ms = now;
  const LeaseQuery q{group, c.epoch, c.query};
  for (RegionId r : regions_)
    if (!c.answered.count(r)) Deliver(r, q);
  for (RegionId r : witnesses_)
    if (!c.answered.count(r)) Deliver(r, q);
}

bool LeaseManager::Refuted(const Check& c) const {
  const size_t members = regions_.size() + witnesses_.size();
  return c.answered.size() - c.backers.size() > members - Majority();
}

bool LeaseManager::Checking(RegionId group) const {
  for (auto it = checks_.lower_bound({group, kNoRegion});
       it != checks_.end() && it->first.first == group; ++it) {
    const Check& c = it->second;
    if (c.owner != self_ && !Refuted(c) && c.renewed_ms >= 0 &&
        clock_->NowMs() - c.renewed_ms < config_.alive_timeout_ms) {
      return true;
    }
  }
  return false;
}

void LeaseManager::OnQuery(RegionId from, const LeaseQuery& m) {
  if (!IsMember(from) || from == self_) return;
  const AcceptorRecord& r = acceptors_.at(m.group).record;
  Deliver(from, LeaseRecordAnswer{m.group, m.epoch, m.query, r.epoch, r.owner});
}

void LeaseManager::OnRecordAnswer(RegionId from, const LeaseRecordAnswer& m) {
  if (!IsMember(from) || from == self_) return;
  auto it = checks_.lower_bound({m.group, kNoRegion});
  while (it != checks_.end() && it->first.first == m.group && it->second.query != m.query) ++it;
  if (it == checks_.end() || it->first.first != m.group) return;
  Check& c = it->second;
  c.answered.insert(from);
  if (m.record_epoch == c.epoch && m.record_owner == c.owner) c.backers.insert(from);
  // Our own record counts as it stands now (it may have granted the claim since the check began).
  const AcceptorRecord& own = acceptors_.at(m.group).record;
  if (own.epoch == c.epoch && own.owner == c.owner) c.backers.insert(self_);
  if (c.backers.size() < Majority()) return;
  const Won won{c.epoch, c.owner};
  checks_.erase(it);
  LearnWon(m.group, won.epoch, won.owner);
}

uint64_t LeaseManager::JumpBase(RegionId group) const {
  return std::max(won_.at(group).epoch, acceptors_.at(group).start_epoch);
}

uint64_t LeaseManager::NextEpoch(RegionId group, const Holding& h) const {
  // Enough to win: above the records of a majority, the majority-th smallest of those reported
  // (with our own acceptor's record as it stands). An acceptor above it is not needed, so no
  // single acceptor's record, true or not, pushes the bid up; fewer reports than a majority (the
  // first round, or peers silent) count as what they are.
  std::vector<uint64_t> records;
  for (const auto& [from, epoch] : h.records)
    if (from != self_) records.push_back(epoch);
  records.push_back(acceptors_.at(group).record.epoch);
  std::sort(records.begin(), records.end());
  const uint64_t enough = records[std::min(records.size(), Majority()) - 1];
  const uint64_t base = JumpBase(group);
  // Never past what the acceptors grant (the jump), and always above the epoch known won.
  return std::max(std::min(std::max(base, enough), base + kMaxEpochJump - 1),
                  won_.at(group).epoch) +
         1;
}

void LeaseManager::Claim(RegionId group, uint64_t epoch) {
  uint64_t& c = claimed_.at(group);
  c = std::max(c, epoch);
}

void LeaseManager::LearnWon(RegionId group, uint64_t epoch, RegionId owner) {
  Claim(group, epoch);
  Won& w = won_.at(group);
  if (epoch <= w.epoch) return;
  w = Won{epoch, owner};
  if (owner == self_) return;
  Emit(LeaseEvent::Kind::kLearned, group, epoch, owner);
  Holding& h = holdings_[group];
  if (Held(h) && h.epoch < epoch) StepDown(group, h, LeaseEvent::Kind::kLost);
  if (h.state == Holding::State::kAcquiring && h.epoch <= epoch) {
    h.round_open = false;
    h.state = Holding::State::kIdle;
  }
}

void LeaseManager::StepDown(RegionId group, Holding& h, LeaseEvent::Kind why) {
  h.state = Holding::State::kIdle;
  h.valid_until_ms = 0;
  h.round_open = false;
  h.home_alive_since_ms = -1;
  Emit(why, group, h.epoch, self_);
}

void LeaseManager::Release(RegionId group, Holding& h) {
  const uint64_t epoch = h.epoch;
  h.state = Holding::State::kIdle;
  h.valid_until_ms = 0;
  h.round_open = false;
  h.released_epoch = epoch;
  h.home_alive_since_ms = -1;
  h.next_round_ms = clock_->NowMs() + config_.retry_interval_ms;
  Emit(LeaseEvent::Kind::kReleased, group, epoch, self_);
  const LeaseRelease rel{group, epoch};
  Deliver(self_, rel);
  for (RegionId r : regions_)
    if (r != self_) Deliver(r, rel);
  for (RegionId w : witnesses_)
    if (w != self_) Deliver(w, rel);
  Deliver(group, LeaseHandback{group, epoch});
}

absl::Status LeaseManager::HandBack(RegionId group) {
  auto it = holdings_.find(group);
  if (it == holdings_.end()) return absl::NotFoundError(absl::StrCat("no lease group ", group));
  if (group == self_) {
    return absl::FailedPreconditionError("a region's own group is already home");
  }
  if (it->second.state != Holding::State::kActive) {
    return absl::FailedPreconditionError(
        absl::StrCat("group ", group, " is not held (usable) by this region"));
  }
  Release(group, it->second);
  return absl::OkStatus();
}

bool LeaseManager::CanMutate(RegionId group) const {
  auto it = holdings_.find(group);
  if (it == holdings_.end()) return false;
  const Holding& h = it->second;
  return h.state == Holding::State::kActive && clock_->NowMs() < h.valid_until_ms;
}

GroupView LeaseManager::View(RegionId group) const {
  GroupView v;
  v.group = group;
  auto w = won_.find(group);
  if (w == won_.end()) return v;
  v.epoch = w->second.epoch;
  v.owner = w->second.owner;
  v.claimed_epoch = claimed_.at(group);
  const Holding& h = holdings_.at(group);
  v.held = Held(h);
  v.syncing = h.state == Holding::State::kSyncing;
  v.usable = CanMutate(group);
  v.valid_for_ms = v.usable ? h.valid_until_ms - clock_->NowMs() : 0;
  return v;
}

std::vector<GroupView> LeaseManager::Views() const {
  std::vector<GroupView> out;
  for (RegionId g : regions_) out.push_back(View(g));
  return out;
}

void LeaseManager::Emit(LeaseEvent::Kind kind, RegionId group, uint64_t epoch, RegionId owner) {
  if (on_event_) on_event_(LeaseEvent{kind, group, epoch, owner});
}

}  // namespace meridian::replication
