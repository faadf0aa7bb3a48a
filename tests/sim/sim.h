#pragma once

// Deterministic simulation of 3 to 5 Meridian regions in one process, after FoundationDB's
// simulator: the real lease manager (replication/lease.h), rights manager (replication/rights.h),
// CRDT joins (crdt/) and order rules (services/orders.h) run on a simulated clock per region (skew
// and drift), over a simulated network (delay, jitter, reordering, duplication, loss,
// partitions), with crashes and restarts (volatile state lost, durable state kept) and, optionally,
// one region lost for good. Everything random comes from one seed, so a failing seed replays
// exactly (same build, same flags).
//
// Workloads: concurrent checkouts of scarce SKUs (each region sells only within its rights and
// waits a bounded time for a grant), cart edits, order changes (paid, cancelled, refunded) at the
// owner or forwarded to it, restocks, lease churn from partitions and crashes.
//
// Checked after every event:
//   - no oversell: units sold never exceed units restocked, and no region's own rights go negative;
//   - never two regions able to mutate one lease group (so one order) at the same instant.
// Checked at the end, after healing and letting replication settle:
//   - every live region holds identical carts, stock and orders (where residency allows);
//   - no cart change made at a surviving region is missing from the final carts;
//   - sync-peer: every order acknowledged as sync-peer durable exists in every live region it may
//     live in, even when a region was lost for good;
//   - every lease group has exactly one usable holder.

#include <cstdint>
#include <string>
#include <vector>

namespace meridian::sim {

enum class Durability { kAsync, kSyncPeer };

struct SimOptions {
  uint64_t seed = 1;
  int regions = 0;  // 3..5; 0 picks from the seed
  Durability durability = Durability::kAsync;
  int64_t workload_ms = 20000;  // faults and traffic during this much simulated time
  int64_t settle_ms = 20000;    // then healed, quiet, and checked
  int ops = 400;                // customer operations during the workload
  bool lose_region = true;      // one region may be lost for good (durable state destroyed)
  bool trace = false;           // print every event (for replaying a failing seed)
};

struct SimStats {
  int regions = 0;
  int checkouts_ok = 0;
  int checkouts_refused_no_rights = 0;
  int refused_while_spare_elsewhere = 0;
  int checkouts_refused_no_lease = 0;
  int orders_sync_acked = 0;
  int orders_degraded = 0;    // sync-peer checkouts acknowledged as async (no peer in time)
  int orders_lost_async = 0;  // async-acknowledged orders missing after a region was lost
  int order_changes = 0;
  int forwarded = 0;
  int stale_rejected = 0;
  int grants = 0;
  int units_granted = 0;
  int takeovers = 0;
  int handbacks = 0;
  int crashes = 0;
  int partitions = 0;
  int lost_region = 0;  // its id, 0 if none
  int64_t messages = 0;
};

struct SimResult {
  bool ok = true;
  std::string failure;  // the first invariant broken, with the simulated time
  SimStats stats;
};

SimResult RunSimulation(const SimOptions& options);

}  // namespace meridian::sim
