#pragma once

// A small hiredis client for the region's cache, hot carts, rate limits and idempotency keys,
// with a circuit breaker: when Redis fails, calls return Unavailable at once for `open_ms`
// (callers then fall back to PostgreSQL), after which one call probes it again. Never blocks
// longer than the configured timeout. Thread-safe (a small pool of connections).

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

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
  // One DEL of many keys (one round trip).
  absl::Status DelMany(const std::vector<std::string>& keys);
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

// Keys whose copy in Redis may be older than PostgreSQL because writing or deleting it failed
// (the breaker was open, a timeout): readers skip Redis for them, and Repair deletes them from
// Redis once it answers again. Past `capacity` keys it stops listing them and reports every key
// stale until `ttl` (the copies' expiry) after the last failure it could not list: by then every
// copy written before that failure has expired. Thread-safe.
class StaleKeys {
 public:
  StaleKeys(size_t capacity, std::chrono::seconds ttl) : capacity_(capacity), ttl_(ttl) {}

  void Mark(const std::string& key);
  [[nodiscard]] bool IsStale(const std::string& key) const;
  // Deletes up to `batch` listed keys from Redis in one round trip and forgets those not marked
  // again meanwhile. Returns how many stay listed.
  size_t Repair(RedisClient& redis, size_t batch = 1000);
  [[nodiscard]] size_t size() const;

 private:
  const size_t capacity_;
  const std::chrono::seconds ttl_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, uint64_t> keys_;  // key -> the generation of its last mark
  uint64_t generation_ = 0;
  std::chrono::steady_clock::time_point all_until_{};
  // False while nothing is listed and no overflow window is open: IsStale, on every cart read,
  // then takes no lock. Set under mu_ by Mark, cleared under mu_ once nothing is stale.
  mutable std::atomic<bool> any_{false};
};

}  // namespace meridian::region
