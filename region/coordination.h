#pragma once

// What the region's request threads and its replicator tell each other (issue 5), kept apart from
// the HTTP handlers so each piece is testable alone:
//   - RightsSignals: checkouts report demand and the units they are waiting for; the replicator
//     long-polls them (RegionControl.WaitRightsDemand); a waiting checkout sleeps until stock
//     changes (a grant or restock applied) or its deadline.
//   - PeerAcks: how far each peer has durably applied each of this region's outbox streams; a
//     sync-peer checkout waits for one allowed peer to pass its order event's seq.
// Both are thread-safe. Waits are bounded by the caller's deadline.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace meridian::region {

class RightsSignals {
 public:
  using Clock = std::chrono::steady_clock;

  // A checkout wanted `units` of `sku` here (sold or not).
  void RecordDemand(const std::string& sku, uint64_t units);

  // A checkout waits for `units` more of `sku` than the region holds. Returns a ticket for Done.
  uint64_t StartWaiting(const std::string& sku, uint64_t units);
  void DoneWaiting(uint64_t ticket);

  // Stock of some SKU changed here (a grant, restock or peer delta applied): wake waiters.
  void StockChanged();
  // Sleeps until StockChanged() after `seen` or the deadline; returns the current change count.
  uint64_t WaitForStockChange(uint64_t seen, Clock::time_point deadline);
  [[nodiscard]] uint64_t StockVersion() const;

  struct Poll {
    std::map<std::string, uint64_t> demand;   // since the previous poll
    std::map<std::string, uint64_t> waiting;  // now; SKUs that stopped waiting appear with 0
  };
  // Waits up to `wait` for demand or a change in waiting units, then returns and resets demand.
  Poll TakeSignals(std::chrono::milliseconds wait);

  // Operators: units waiting now per SKU.
  [[nodiscard]] std::map<std::string, uint64_t> Waiting() const;

 private:
  std::map<std::string, uint64_t> WaitingLocked() const;

  mutable std::mutex mu_;
  std::condition_variable signal_cv_;  // the replicator's poll
  std::condition_variable stock_cv_;   // waiting checkouts
  std::map<std::string, uint64_t> demand_;
  struct Waiter {
    std::string sku;
    uint64_t units;
  };
  std::map<uint64_t, Waiter> waiters_;
  std::map<std::string, uint64_t> reported_waiting_;  // what the last poll returned
  uint64_t next_ticket_ = 1;
  uint64_t stock_version_ = 0;
  bool dirty_ = false;
};

class PeerAcks {
 public:
  using Clock = std::chrono::steady_clock;

  struct Mark {
    std::string stream;
    int64_t seq = 0;
  };

  void Update(const std::string& stream, uint32_t peer, int64_t seq);
  // Waits until `needed` peers accepted by `allowed` have each acknowledged every mark's stream
  // through its seq, or the deadline. Returns those peers' ids (ascending), or nothing on timeout
  // (and at once when `marks` is empty).
  std::vector<uint32_t> WaitFor(const std::vector<Mark>& marks,
                                const std::function<bool(uint32_t peer)>& allowed, size_t needed,
                                Clock::time_point deadline);
  [[nodiscard]] std::map<std::string, std::map<uint32_t, int64_t>> Snapshot() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::map<uint32_t, int64_t>> acked_;  // stream -> peer -> seq
};

}  // namespace meridian::region
