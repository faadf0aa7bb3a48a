#include "region/redis_client.h"

#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>
#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace meridian::region {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// KEYS[1] bucket; ARGV rate/s, burst, now ms, cost. Stores tokens and last refill time; expires
// idle buckets so that keys do not pile up. A negative cost gives tokens back (up to the burst).
constexpr const char* kTokenBucketLua = R"lua(
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2]); local now = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local ok = 0
if cost < 0 then tokens = math.min(burst, tokens - cost); ok = 1
elseif tokens >= 1 then tokens = tokens - cost; ok = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return ok
)lua";

}  // namespace

struct RedisClient::Reply {
  redisReply* r = nullptr;
  ~Reply() {
    if (r) freeReplyObject(r);
  }
};

RedisClient::RedisClient(Options options) : options_(std::move(options)) {}

RedisClient::~RedisClient() {
  for (redisContext* c : idle_) redisFree(c);
}

bool RedisClient::breaker_open() const { return NowMs() < open_until_ms_.load(); }

void RedisClient::Trip() {
  failures_.fetch_add(1);
  open_until_ms_.store(NowMs() + options_.open_ms);
  // One failure usually means the server went away: the other pooled connections are dead too,
  // and each would fail (and re-trip the breaker) once after the server is back.
  std::vector<redisContext*> stale;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stale.swap(idle_);
  }
  for (redisContext* c : stale) redisFree(c);
}

redisContext* RedisClient::Acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      redisContext* c = idle_.back();
      idle_.pop_back();
      return c;
    }
  }
  timeval tv{options_.timeout_ms / 1000, (options_.timeout_ms % 1000) * 1000};
  redisContext* c = redisConnectWithTimeout(options_.host.c_str(), options_.port, tv);
  if (c == nullptr) return nullptr;
  if (c->err) {
    redisFree(c);
    return nullptr;
  }
  redisSetTimeout(c, tv);
  return c;
}

void RedisClient::Release(redisContext* c, bool healthy) {
  if (!healthy) {
    redisFree(c);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(idle_.size()) < options_.pool_size) {
    idle_.push_back(c);
    return;
  }
  redisFree(c);
}

absl::StatusOr<std::unique_ptr<RedisClient::Reply>> RedisClient::Command(
    const std::vector<std::string_view>& args) {
  if (breaker_open()) return absl::UnavailableError("redis: circuit open after a recent failure");
  redisContext* c = Acquire();
  if (c == nullptr) {
    Trip();
    return absl::UnavailableError(
        absl::StrCat("redis ", options_.host, ":", options_.port, ": cannot connect"));
  }
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (auto a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto reply = std::make_unique<Reply>();
  reply->r = static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
  if (reply->r == nullptr || c->err) {
    std::string err = c->err ? c->errstr : "no reply";
    Release(c, false);
    Trip();
    spdlog::warn("event=redis_error error=\"{}\"", err);
    return absl::UnavailableError(absl::StrCat("redis: ", err));
  }
  Release(c, true);
  if (reply->r->type == REDIS_REPLY_ERROR) {
    return absl::InternalError(absl::StrCat("redis: ", std::string(reply->r->str, reply->r->len)));
  }
  return reply;
}

absl::StatusOr<std::optional<std::string>> RedisClient::Get(std::string_view key) {
  auto r = Command({"GET", key});
  if (!r.ok()) return r.status();
  if ((*r)->r->type == REDIS_REPLY_NIL) return std::optional<std::string>();
  return std::optional<std::string>(std::string((*r)->r->str, (*r)->r->len));
}

absl::Status RedisClient::Set(std::string_view key, std::string_view value, int ttl_s) {
  std::string ttl = std::to_string(ttl_s);
  auto r = ttl_s > 0 ? Command({"SET", key, value, "EX", ttl}) : Command({"SET", key, value});
  return r.status();
}

absl::StatusOr<bool> RedisClient::SetNx(std::string_view key, std::string_view value, int ttl_s) {
  std::string ttl = std::to_string(ttl_s);
  auto r = Command({"SET", key, value, "NX", "EX", ttl});
  if (!r.ok()) return r.status();
  return (*r)->r->type != REDIS_REPLY_NIL;
}

absl::Status RedisClient::Del(std::string_view key) { return Command({"DEL", key}).status(); }

absl::StatusOr<bool> RedisClient::TakeToken(std::string_view key, double rate_per_s, double burst,
                                            int64_t now_ms, double cost) {
  std::string rate = std::to_string(rate_per_s), b = std::to_string(burst),
              now = std::to_string(now_ms), c = std::to_string(cost);
  auto r = Command({"EVAL", kTokenBucketLua, "1", key, rate, b, now, c});
  if (!r.ok()) return r.status();
  return (*r)->r->type == REDIS_REPLY_INTEGER && (*r)->r->integer == 1;
}

absl::Status RedisClient::Eval(std::string_view script, const std::vector<std::string>& keys,
                               const std::vector<std::string>& args) {
  std::string nkeys = std::to_string(keys.size());
  std::vector<std::string_view> argv = {"EVAL", script, nkeys};
  for (const auto& k : keys) argv.push_back(k);
  for (const auto& a : args) argv.push_back(a);
  return Command(argv).status();
}

absl::StatusOr<std::map<std::string, std::string>> RedisClient::HGetAll(std::string_view key) {
  auto r = Command({"HGETALL", key});
  if (!r.ok()) return r.status();
  std::map<std::string, std::string> out;
  const redisReply* rep = (*r)->r;
  if (rep->type != REDIS_REPLY_ARRAY) return out;
  for (size_t i = 0; i + 1 < rep->elements; i += 2) {
    out.emplace(std::string(rep->element[i]->str, rep->element[i]->len),
                std::string(rep->element[i + 1]->str, rep->element[i + 1]->len));
  }
  return out;
}

absl::Status RedisClient::Ping() {
  // Bypass the breaker: readiness and the half-open probe need a real answer.
  // Two tries: a pooled connection may be stale after a Redis restart; the second is fresh.
  for (int attempt = 0; attempt < 2; ++attempt) {
    redisContext* c = Acquire();
    if (c == nullptr) return absl::UnavailableError("redis: cannot connect");
    auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
    bool ok = r != nullptr && !c->err;
    if (r) freeReplyObject(r);
    Release(c, ok);
    if (ok) {
      open_until_ms_.store(0);
      return absl::OkStatus();
    }
  }
  return absl::UnavailableError("redis: no reply to PING");
}

bool VersionBelow(std::string_view a, std::string_view b) {
  auto digits = [](std::string_view v) {
    const size_t first = v.find_first_not_of('0');
    return first == std::string_view::npos ? std::string_view() : v.substr(first);
  };
  a = digits(a);
  b = digits(b);
  return a.size() != b.size() ? a.size() < b.size() : a < b;
}

void StaleKeys::ListLocked(const std::string& key, std::string_view version, bool saved) {
  any_.store(true, std::memory_order_release);
  auto it = keys_.find(key);
  if (it != keys_.end()) {
    Listed& l = it->second;
    const bool higher = VersionBelow(l.version, version);
    // Marked again, or listed elsewhere at a higher version: Repair's and Unsaved's copies of the
    // entry are out of date (a retire in flight at the lower version does not clear it).
    if (!saved || higher) l.generation = ++generation_;
    if (!saved) l.saved = false;
    if (higher) l.version = std::string(version);
    return;
  }
  if (keys_.size() >= capacity_) {
    if (std::chrono::steady_clock::now() >= all_until_) {
      spdlog::warn(
          "event=redis_stale_keys_full listed={} (every key is read from PostgreSQL for "
          "{} s)",
          keys_.size(), ttl_.count());
    }
    all_until_ = std::chrono::steady_clock::now() + ttl_;
    return;
  }
  keys_.emplace(key, Listed{std::string(version), ++generation_, saved});
}

void StaleKeys::Mark(const std::string& key, std::string_view version) {
  std::lock_guard<std::mutex> lock(mu_);
  ListLocked(key, version, false);
}

void StaleKeys::Adopt(const std::vector<std::pair<std::string, std::string>>& listed) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, version] : listed) ListLocked(key, version, true);
}

bool StaleKeys::IsStale(const std::string& key) const {
  if (!any_.load(std::memory_order_acquire)) return false;
  std::lock_guard<std::mutex> lock(mu_);
  const bool window = std::chrono::steady_clock::now() < all_until_;
  if (keys_.empty() && !window) any_.store(false, std::memory_order_release);
  return window || keys_.count(key) > 0;
}

std::vector<StaleKeys::Entry> StaleKeys::Unsaved(size_t batch) const {
  std::vector<Entry> out;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, l] : keys_) {
    if (out.size() == batch) break;
    if (!l.saved) out.push_back(Entry{key, l.version, l.generation});
  }
  return out;
}

void StaleKeys::Saved(const std::vector<Entry>& saved) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const Entry& e : saved) {
    auto it = keys_.find(e.key);
    if (it != keys_.end() && it->second.generation == e.generation) it->second.saved = true;
  }
}

std::vector<StaleKeys::Entry> StaleKeys::Repair(const RetireFn& retire, size_t batch) {
  std::vector<Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, l] : keys_) {
      if (entries.size() == batch) break;
      entries.push_back(Entry{key, l.version, l.generation});
    }
  }
  if (entries.empty() || !retire(entries).ok()) return {};
  std::lock_guard<std::mutex> lock(mu_);
  for (const Entry& e : entries) {
    auto it = keys_.find(e.key);
    // Marked again after the retire was sent: that failure may have left a copy older still.
    if (it != keys_.end() && it->second.generation == e.generation) keys_.erase(it);
  }
  if (keys_.empty() && std::chrono::steady_clock::now() >= all_until_) {
    any_.store(false, std::memory_order_release);
  }
  return entries;
}

size_t StaleKeys::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_.size();
}

}  // namespace meridian::region
