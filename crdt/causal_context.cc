#include "crdt/causal_context.h"

#include <algorithm>
#include <cassert>
#include <limits>

namespace meridian::crdt {

uint64_t* CausalContext::Slot(ReplicaId replica) {
  auto it = std::lower_bound(vv_.begin(), vv_.end(), replica,
                             [](const auto& e, ReplicaId r) { return e.first < r; });
  return (it != vv_.end() && it->first == replica) ? &it->second : nullptr;
}

uint64_t& CausalContext::SlotOrInsert(ReplicaId replica) {
  auto it = std::lower_bound(vv_.begin(), vv_.end(), replica,
                             [](const auto& e, ReplicaId r) { return e.first < r; });
  if (it == vv_.end() || it->first != replica) it = vv_.insert(it, {replica, 0});
  return it->second;
}

uint64_t CausalContext::Max(ReplicaId replica) const {
  auto it = std::lower_bound(vv_.begin(), vv_.end(), replica,
                             [](const auto& e, ReplicaId r) { return e.first < r; });
  return (it != vv_.end() && it->first == replica) ? it->second : 0;
}

bool CausalContext::Contains(const Dot& dot) const {
  if (dot.counter <= Max(dot.replica)) return true;
  return !cloud_.empty() && std::binary_search(cloud_.begin(), cloud_.end(), dot);
}

void CausalContext::Insert(const Dot& dot) {
  uint64_t max = Max(dot.replica);
  if (dot.counter <= max) return;
  if (dot.counter == max + 1) {
    SlotOrInsert(dot.replica) = dot.counter;
    if (!cloud_.empty()) Compact();
    return;
  }
  auto it = std::lower_bound(cloud_.begin(), cloud_.end(), dot);
  if (it == cloud_.end() || *it != dot) cloud_.insert(it, dot);
}

Dot CausalContext::Next(ReplicaId replica) {
  uint64_t& slot = SlotOrInsert(replica);
  ++slot;
  Dot dot{replica, slot};
  // Our own dots are contiguous, so the cloud cannot hold the new one; but a peer's delta may have
  // put later dots of ours there after a restore from an old backup, so fold them in all the same.
  if (!cloud_.empty()) Compact();
  return dot;
}

void CausalContext::Join(const CausalContext& other) {
  if (other.Empty()) return;
  if (Empty()) {
    *this = other;
    return;
  }
  // Usually both sides know the same few replicas: update in place.
  for (const auto& [replica, max] : other.vv_) {
    uint64_t& slot = SlotOrInsert(replica);
    if (slot < max) slot = max;
  }
  if (!other.cloud_.empty()) {
    Cloud cloud;
    cloud.reserve(cloud_.size() + other.cloud_.size());
    std::set_union(cloud_.begin(), cloud_.end(), other.cloud_.begin(), other.cloud_.end(),
                   std::back_inserter(cloud));
    cloud_ = std::move(cloud);
  }
  if (!cloud_.empty()) Compact();
}

void CausalContext::Compact() {
  // The cloud is sorted by (replica, counter), so one pass folds each replica's run of
  // contiguous counters into the version vector and drops what the vector already covers.
  Cloud keep;
  for (const Dot& d : cloud_) {
    uint64_t max = Max(d.replica);
    if (d.counter <= max) continue;
    if (d.counter == max + 1) {
      SlotOrInsert(d.replica) = d.counter;
      continue;
    }
    keep.push_back(d);
  }
  cloud_ = std::move(keep);
}

uint64_t CausalContext::DotCount() const {
  uint64_t n = cloud_.size();
  for (const auto& e : vv_) {
    if (e.second > std::numeric_limits<uint64_t>::max() - n) {
      return std::numeric_limits<uint64_t>::max();
    }
    n += e.second;
  }
  return n;
}

CausalContext CausalContext::FromParts(std::vector<std::pair<ReplicaId, uint64_t>> vv,
                                       std::vector<Dot> cloud) {
  CausalContext ctx;
  std::sort(vv.begin(), vv.end());
  for (const auto& [replica, max] : vv) {
    if (max == 0) continue;
    uint64_t& slot = ctx.SlotOrInsert(replica);
    slot = std::max(slot, max);
  }
  std::sort(cloud.begin(), cloud.end());
  cloud.erase(std::unique(cloud.begin(), cloud.end()), cloud.end());
  ctx.cloud_.assign(cloud.begin(), cloud.end());
  ctx.Compact();
  return ctx;
}

bool CausalContext::CheckInvariants() const {
  for (size_t i = 0; i < vv_.size(); ++i) {
    if (vv_[i].second == 0 || vv_[i].first == kNoReplica) return false;
    if (i > 0 && vv_[i - 1].first >= vv_[i].first) return false;
  }
  for (size_t i = 0; i < cloud_.size(); ++i) {
    if (i > 0 && !(cloud_[i - 1] < cloud_[i])) return false;
    if (cloud_[i].counter <= Max(cloud_[i].replica) + 1) return false;
  }
  return true;
}

}  // namespace meridian::crdt
