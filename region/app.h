#pragma once

// meridian-region: one region's order stack. Owns the PostgreSQL pools (global shard + user
// shards), the Redis client, the HTTP API and the background jobs (reservation sweep,
// notification worker, outbox depth sampling). main.cc only parses flags and calls this.
//
// Lifecycle: Create() checks the config, connects to every shard and applies migrations (a region
// that cannot reach its databases does not start); Start() serves; Stop() drains and joins.
// Thread-safe after Start(): handlers run concurrently on the HTTP server's pool.

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "region/config.h"

namespace meridian::region {

// One run of the reservation sweep.
struct SweepCounts {
  int released = 0;  // reservations whose stock went back
  int failed = 0;    // reservations it could not settle (left for the next sweep)
};

class RegionApp {
 public:
  static absl::StatusOr<std::unique_ptr<RegionApp>> Create(RegionConfig config);
  ~RegionApp();

  absl::Status Start();
  void Stop();
  [[nodiscard]] uint16_t http_port() const;
  // The internal gRPC API's port; 0 when listen.grpc is not configured.
  [[nodiscard]] uint16_t grpc_port() const;
  // A database is no longer the one the start found (restored, or failed over to a standby,
  // under this server): it takes no request on it, and must restart to give it a new life.
  [[nodiscard]] bool database_changed() const;

  // Background jobs, also callable directly (tests, operator endpoints).
  // Releases the stock of held reservations whose order was not paid before expiry. An error
  // only when a database is unavailable; a reservation that cannot be settled is counted in
  // `failed`, logged (event=sweep_item_failed) and left for the next sweep.
  absl::StatusOr<SweepCounts> SweepReservations();
  // Sends due notifications once; returns how many were sent.
  absl::StatusOr<int> RunNotificationsOnce();

  struct Impl;

 private:
  explicit RegionApp(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::region
