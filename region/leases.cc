#include "region/leases.h"

#include <algorithm>

namespace meridian::region {

void LeaseTable::Update(const std::vector<LeaseGrant>& grants) {
  const Clock::time_point now = Clock::now();
  std::lock_guard<std::mutex> lock(mu_);
  for (const LeaseGrant& g : grants) {
    Entry& e = entries_[g.group];
    // Epochs never go back, even if pushes arrive out of order.
    if (g.epoch < e.grant.epoch) continue;
    e.grant = g;
    e.updated = now;
    // The replicator measured valid_for_ms when it sent the push; the push took a little time to
    // arrive, so count from now minus a margin that covers it.
    const int64_t ms = g.usable ? std::max<int64_t>(0, g.valid_for_ms - margin_ms_) : 0;
    e.usable_until = now + std::chrono::milliseconds(ms);
  }
}

LeaseTable::Decision LeaseTable::ForGroup(uint32_t group) const {
  if (!managed_) {
    if (group == self_ || group == 0) return Decision{true, 1, self_};
    return Decision{false, 1, group};
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(group);
  if (it == entries_.end()) return Decision{false, 0, 0};
  const Entry& e = it->second;
  const bool mine = e.grant.usable && Clock::now() < e.usable_until;
  return Decision{mine, e.grant.epoch, mine ? self_ : e.grant.owner};
}

bool LeaseTable::HeldElsewhere(uint32_t group, std::chrono::milliseconds fresh) const {
  if (!managed_) return false;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(group);
  if (it == entries_.end()) return false;
  const Entry& e = it->second;
  return e.grant.owner != 0 && e.grant.owner != self_ && Clock::now() - e.updated < fresh;
}

uint64_t LeaseTable::Fence(uint32_t group) const {
  if (!managed_) return 1;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(group);
  return it == entries_.end() ? 0 : it->second.grant.epoch;
}

std::map<uint32_t, LeaseTable::Entry> LeaseTable::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_;
}

}  // namespace meridian::region
