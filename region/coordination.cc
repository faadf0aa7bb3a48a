#include "region/coordination.h"

#include <algorithm>

namespace meridian::region {

void RightsSignals::RecordDemand(const std::string& sku, uint64_t units) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    demand_[sku] += units;
    dirty_ = true;
  }
  signal_cv_.notify_all();
}

uint64_t RightsSignals::StartWaiting(const std::string& sku, uint64_t units) {
  uint64_t ticket;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ticket = next_ticket_++;
    waiters_[ticket] = Waiter{sku, units};
    dirty_ = true;
  }
  signal_cv_.notify_all();
  return ticket;
}

void RightsSignals::DoneWaiting(uint64_t ticket) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (waiters_.erase(ticket) == 0) return;
    dirty_ = true;
  }
  signal_cv_.notify_all();
}

void RightsSignals::StockChanged() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stock_version_;
  }
  stock_cv_.notify_all();
}

uint64_t RightsSignals::StockVersion() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stock_version_;
}

uint64_t RightsSignals::WaitForStockChange(uint64_t seen, Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  stock_cv_.wait_until(lock, deadline, [&] { return stock_version_ != seen; });
  return stock_version_;
}

std::map<std::string, uint64_t> RightsSignals::WaitingLocked() const {
  std::map<std::string, uint64_t> w;
  for (const auto& [ticket, waiter] : waiters_) w[waiter.sku] += waiter.units;
  return w;
}

std::map<std::string, uint64_t> RightsSignals::Waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return WaitingLocked();
}

RightsSignals::Poll RightsSignals::TakeSignals(std::chrono::milliseconds wait) {
  std::unique_lock<std::mutex> lock(mu_);
  signal_cv_.wait_for(lock, wait, [&] { return dirty_; });
  Poll p;
  p.demand.swap(demand_);
  p.waiting = WaitingLocked();
  // SKUs that were waiting at the last poll and no longer are: report 0 once.
  for (const auto& [sku, units] : reported_waiting_) {
    if (!p.waiting.count(sku)) p.waiting[sku] = 0;
  }
  reported_waiting_.clear();
  for (const auto& [sku, units] : p.waiting)
    if (units > 0) reported_waiting_[sku] = units;
  dirty_ = false;
  return p;
}

void PeerAcks::Update(const std::string& stream, uint32_t peer, int64_t seq) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t& s = acked_[stream][peer];
    if (seq <= s) return;
    s = seq;
  }
  cv_.notify_all();
}

std::vector<uint32_t> PeerAcks::WaitFor(const std::vector<Mark>& marks,
                                        const std::function<bool(uint32_t)>& allowed, size_t needed,
                                        Clock::time_point deadline) {
  std::vector<uint32_t> found;
  if (marks.empty() || needed == 0) return found;
  std::unique_lock<std::mutex> lock(mu_);
  auto acked = [&](const Mark& m, uint32_t peer) {
    auto it = acked_.find(m.stream);
    if (it == acked_.end()) return false;
    auto p = it->second.find(peer);
    return p != it->second.end() && p->second >= m.seq;
  };
  const bool enough = cv_.wait_until(lock, deadline, [&] {
    found.clear();
    auto it = acked_.find(marks[0].stream);
    if (it == acked_.end()) return false;
    for (const auto& entry : it->second) {
      const uint32_t peer = entry.first;  // (a structured binding cannot be captured in C++20)
      if (!allowed(peer)) continue;
      if (std::all_of(marks.begin(), marks.end(), [&](const Mark& m) { return acked(m, peer); })) {
        found.push_back(peer);
        if (found.size() == needed) return true;
      }
    }
    return false;
  });
  if (!enough) found.clear();
  return found;
}

std::map<std::string, std::map<uint32_t, int64_t>> PeerAcks::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  return acked_;
}

}  // namespace meridian::region
