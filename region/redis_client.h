#pragma once

// A small hiredis client for the region's cache, hot carts, rate limits and idempotency keys,
// with a circuit breaker: when Redis fails, calls return Unavailable at once for `open_ms`
// (callers then fall back to PostgreSQL), after which one call probes it again. Never blocks
// longer than the configured timeout. Thread-safe (a small pool of connections).

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct redisContext;

namespace meridian::region {

class RedisClient {
 public:
  struct Options {
    std::string host = "127.0.0.1";
    uint16_t port = 6379;
    int timeout_ms = 200;
    int pool_size = 8;
    int open_ms = 1000;  // how long the breaker stays open after a failure
  };
  explicit RedisClient(Options options);
  ~RedisClient();

  absl::StatusOr<std::optional<std::string>> Get(std::string_view key);
  absl::Status Set(std::string_view key, std::string_view value, int ttl_s = 0);
  // SET NX with a TTL: true if this call created the key.
  absl::StatusOr<bool> SetNx(std::string_view key, std::string_view value, int ttl_s);
  absl::Status Del(std::string_view key);
  // Token bucket in one Lua script (atomic across regions' threads): true if the bucket held a
  // token, of which `cost` was then taken. A negative cost gives -cost tokens back, up to the
  // burst, whatever the bucket holds (always true).
  absl::StatusOr<bool> TakeToken(std::string_view key, double rate_per_s, double burst,
                                 int64_t now_ms, double cost = 1);
  absl::Status Ping();
  // EVAL a script; the reply is ignored beyond errors.
  absl::Status Eval(std::string_view script, const std::vector<std::string>& keys,
                    const std::vector<std::string>& args);
  // HGETALL as a map (empty when the key does not exist).
  absl::StatusOr<std::map<std::string, std::string>> HGetAll(std::string_view key);

  [[nodiscard]] bool breaker_open() const;
  [[nodiscard]] uint64_t failures() const { return failures_.load(); }

 private:
  struct Reply;
  absl::StatusOr<std::unique_ptr<Reply>> Command(const std::vector<std::string_view>& args);
  redisContext* Acquire();
  void Release(redisContext* c, bool healthy);
  void Trip();

  Options options_;
  std::mutex mu_;
  std::vector<redisContext*> idle_;
  std::atomic<int64_t> open_until_ms_{0};
  std::atomic<uint64_t> failures_{0};
};

// Keys whose copy in Redis may be older than PostgreSQL because writing or retiring it failed
// (the breaker was open, a timeout), each with the version of the write that failed: readers skip
// Redis for them, and Repair retires them in Redis once it answers again, with a marker at that
// version, which keeps out any copy older than it (a DEL let a slower writer of an older version
// put its copy back). The region keeps the list in PostgreSQL too (Unsaved/Saved to write it,
// Adopt to list what another process of the region, or the run before a restart, wrote; jobs.cc).
// Past `capacity` keys it stops listing them and reports every key stale until `ttl` (the
// copies' expiry) after the last failure it could not list: by then every copy written before
// that failure has expired. Thread-safe.
class StaleKeys {
 public:
  struct Entry {
    std::string key;
    std::string version;  // decimal digits: the version of the write whose copy failed
    uint64_t generation = 0;
  };
  using RetireFn = std::function<absl::Status(const std::vector<Entry>&)>;

  StaleKeys(size_t capacity, std::chrono::seconds ttl) : capacity_(capacity), ttl_(ttl) {}

  // `version`: decimal digits (leading zeros allowed). A key listed at a higher one keeps it.
  void Mark(const std::string& key, std::string_view version);
  [[nodiscard]] bool IsStale(const std::string& key) const;
  // Up to `batch` listed keys not saved since they were last marked.
  [[nodiscard]] std::vector<Entry> Unsaved(size_t batch) const;
  // The entries (from Unsaved) were saved: those not marked again since are no longer Unsaved.
  void Saved(const std::vector<Entry>& saved);
  // Lists keys saved elsewhere (key, version), as saved; a key listed here at a lower version
  // takes the higher one.
  void Adopt(const std::vector<std::pair<std::string, std::string>>& listed);
  // Retires up to `batch` listed keys with one call of `retire`, and forgets those not marked
  // again meanwhile. Returns the entries retired (none when `retire` failed).
  std::vector<Entry> Repair(const RetireFn& retire, size_t batch = 1000);
  [[nodiscard]] size_t size() const;

 private:
  struct Listed {
    std::string version;
    uint64_t generation = 0;
    bool saved = false;
  };
  // Lists `key` at `version` (or raises its version); past capacity opens the window instead.
  void ListLocked(const std::string& key, std::string_view version, bool saved);

  const size_t capacity_;
  const std::chrono::seconds ttl_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Listed> keys_;
  uint64_t generation_ = 0;
  std::chrono::steady_clock::time_point all_until_{};
  // False while nothing is listed and no overflow window is open: IsStale, on every cart read,
  // then takes no lock. Set under mu_ by Mark, cleared under mu_ once nothing is stale.
  mutable std::atomic<bool> any_{false};
};

// a < b for versions in decimal digits (leading zeros allowed).
[[nodiscard]] bool VersionBelow(std::string_view a, std::string_view b);

}  // namespace meridian::region
