#include "failover/decision.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace meridian::failover {

const char* RegionStateName(RegionState s) {
  switch (s) {
    case RegionState::kUp:
      return "up";
    case RegionState::kLost:
      return "lost";
    case RegionState::kRecovering:
      return "recovering";
  }
  return "?";
}

absl::Status DeciderConfig::Validate() const {
  if (regions.empty()) return absl::InvalidArgumentError("regions: at least one is required");
  std::set<std::string> seen;
  for (const auto& r : regions) {
    if (r.empty()) return absl::InvalidArgumentError("regions: a name is empty");
    if (!seen.insert(r).second)
      return absl::InvalidArgumentError(absl::StrCat("regions: '", r, "' appears twice"));
  }
  if (!seen.count(self))
    return absl::InvalidArgumentError(absl::StrCat("region: '", self, "' is not in regions"));
  if (lost_after_checks < 1 || lost_after_checks > 100)
    return absl::InvalidArgumentError("lost_after_checks: must be between 1 and 100");
  if (recover_after_checks < 1 || recover_after_checks > 1000)
    return absl::InvalidArgumentError("recover_after_checks: must be between 1 and 1000");
  if (observation_ttl_ms < 1)
    return absl::InvalidArgumentError("observation_ttl_ms: must be at least 1");
  return absl::OkStatus();
}

Decider::Decider(DeciderConfig config) : config_(std::move(config)) {
  own_.from = config_.self;
  for (const auto& r : config_.regions) {
    state_[r] = RegionState::kUp;
    since_ms_[r] = 0;
    own_.regions[r] = RegionReport{};
  }
}

void Decider::RecordOwnChecks(int64_t now_ms, const std::map<std::string, RegionReport>& checks) {
  ++own_.seq;
  own_recorded_ms_ = now_ms;
  for (const auto& r : config_.regions) {
    RegionReport& rep = own_.regions[r];
    auto it = checks.find(r);
    const bool healthy = it != checks.end() && it->second.healthy;
    const bool caught_up = healthy && it->second.caught_up;
    rep.healthy = healthy;
    rep.caught_up = caught_up;
    rep.reason = it == checks.end() ? "not checked" : it->second.reason;
    if (healthy) {
      rep.fail_streak = 0;
      fail_since_ms_.erase(r);
    } else {
      if (rep.fail_streak == 0) fail_since_ms_[r] = now_ms;
      rep.fail_streak = rep.fail_streak < UINT32_MAX ? rep.fail_streak + 1 : rep.fail_streak;
    }
    rep.ok_streak =
        caught_up ? (rep.ok_streak < UINT32_MAX ? rep.ok_streak + 1 : rep.ok_streak) : 0;
  }
}

absl::Status Decider::AcceptPeerObservation(int64_t now_ms, const Observation& o) {
  if (o.from == config_.self)
    return absl::InvalidArgumentError("from: an observation from this controller itself");
  if (std::find(config_.regions.begin(), config_.regions.end(), o.from) == config_.regions.end())
    return absl::InvalidArgumentError(absl::StrCat("from: unknown region '", o.from, "'"));
  for (const auto& [r, rep] : o.regions) {
    (void)rep;
    if (std::find(config_.regions.begin(), config_.regions.end(), r) == config_.regions.end())
      return absl::InvalidArgumentError(absl::StrCat("regions: unknown region '", r, "'"));
  }
  for (const auto& r : config_.regions) {
    if (!o.regions.count(r))
      return absl::InvalidArgumentError(absl::StrCat("regions: '", r, "' is missing"));
  }
  std::deque<uint64_t>& old = superseded_[o.from];
  if (std::find(old.begin(), old.end(), o.incarnation) != old.end()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "incarnation %016x of '%s' was superseded by a restart", o.incarnation, o.from));
  }
  auto it = peers_.find(o.from);
  if (it != peers_.end() && it->second.observation.incarnation == o.incarnation &&
      o.seq <= it->second.observation.seq) {
    return absl::FailedPreconditionError(
        absl::StrCat("seq ", o.seq, " is not newer than ", it->second.observation.seq));
  }
  if (it != peers_.end() && it->second.observation.incarnation != o.incarnation) {
    old.push_back(it->second.observation.incarnation);  // a restart: the old one is done
    if (old.size() > kSupersededKept) old.pop_front();
  }
  peers_[o.from] = Held{o, now_ms};
  return absl::OkStatus();
}

const RegionReport* Decider::Fresh(int64_t now_ms, const std::string& controller,
                                   const std::string& region) const {
  const Observation* o = nullptr;
  int64_t at = 0;
  if (controller == config_.self) {
    if (own_recorded_ms_ < 0) return nullptr;
    o = &own_;
    at = own_recorded_ms_;
  } else {
    auto it = peers_.find(controller);
    if (it == peers_.end()) return nullptr;
    o = &it->second.observation;
    at = it->second.received_ms;
  }
  if (now_ms - at >= config_.observation_ttl_ms) return nullptr;
  auto r = o->regions.find(region);
  return r == o->regions.end() ? nullptr : &r->second;
}

Tally Decider::Count(int64_t now_ms, const std::string& region) const {
  Tally t;
  t.needed = quorum();
  for (const auto& c : config_.regions) {
    if (c == region) continue;  // a region's own controller does not vote on it
    const RegionReport* rep = Fresh(now_ms, c, region);
    if (rep == nullptr) {
      t.silent.push_back(c);
      continue;
    }
    if (rep->fail_streak >= config_.lost_after_checks) t.lost.push_back(c);
    if (rep->healthy) t.healthy.push_back(c);
    if (rep->ok_streak >= config_.recover_after_checks) t.recovered.push_back(c);
  }
  return t;
}

std::vector<Decision> Decider::Evaluate(int64_t now_ms) {
  std::vector<Decision> out;
  for (const auto& r : config_.regions) {
    const Tally t = Count(now_ms, r);
    auto reasons = [&](const std::vector<std::string>& voters) {
      std::vector<std::string> parts;
      for (const auto& c : voters) {
        const RegionReport* rep = Fresh(now_ms, c, r);
        parts.push_back(absl::StrCat(c, ": ", rep != nullptr ? rep->reason : "?"));
      }
      return absl::StrJoin(parts, "; ");
    };
    auto move = [&](RegionState to, const char* decision, const std::vector<std::string>& voters,
                    std::string reason) {
      Decision d;
      d.region = r;
      d.from = state_[r];
      d.to = to;
      d.decision = decision;
      d.voters = voters;
      d.needed = t.needed;
      d.reason = std::move(reason);
      d.at_ms = now_ms;
      state_[r] = to;
      since_ms_[r] = now_ms;
      out.push_back(std::move(d));
    };
    const uint32_t needed = t.needed;
    if (state_[r] == RegionState::kUp && t.lost.size() >= needed) {
      move(RegionState::kLost, "lost", t.lost,
           absl::StrCat("unhealthy for >= ", config_.lost_after_checks, " checks at ",
                        t.lost.size(), " controllers (", reasons(t.lost), ")"));
    }
    if (state_[r] == RegionState::kRecovering && t.lost.size() >= needed) {
      move(RegionState::kLost, "lost", t.lost,
           absl::StrCat("relapsed while recovering: unhealthy for >= ", config_.lost_after_checks,
                        " checks at ", t.lost.size(), " controllers (", reasons(t.lost), ")"));
    }
    if (state_[r] == RegionState::kLost && t.healthy.size() >= needed) {
      move(RegionState::kRecovering, "recovering", t.healthy,
           absl::StrCat("healthy again at ", t.healthy.size(),
                        " controllers; failback waits for catch-up over ",
                        config_.recover_after_checks, " checks"));
    }
    if (state_[r] == RegionState::kRecovering && t.recovered.size() >= needed) {
      move(RegionState::kUp, "recovered", t.recovered,
           absl::StrCat("healthy and caught up for >= ", config_.recover_after_checks,
                        " checks at ", t.recovered.size(), " controllers"));
    }
  }
  return out;
}

RegionState Decider::state(const std::string& region) const {
  auto it = state_.find(region);
  return it == state_.end() ? RegionState::kUp : it->second;
}

int64_t Decider::state_since_ms(const std::string& region) const {
  auto it = since_ms_.find(region);
  return it == since_ms_.end() ? 0 : it->second;
}

std::optional<Decider::Held> Decider::peer(const std::string& controller) const {
  auto it = peers_.find(controller);
  if (it == peers_.end()) return std::nullopt;
  return it->second;
}

std::optional<int64_t> Decider::own_fail_since_ms(const std::string& region) const {
  auto it = fail_since_ms_.find(region);
  if (it == fail_since_ms_.end()) return std::nullopt;
  return it->second;
}

}  // namespace meridian::failover
