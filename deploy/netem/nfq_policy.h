#pragma once

// The decisions of meridian-netem-nfq, free of netfilter so they can be tested alone: which rule a
// packet matches (by queue number, IPv4 source and destination), whether it is lost (a seeded
// RNG), and when it is released (a hold queue ordered by release time, with a bound).
//
// Rule text (command line `--rule` or one per line of a rules file, `#` starts a comment):
//   [queue=N] [src=A.B.C.D[/LEN]] [dst=A.B.C.D[/LEN]] [delay=MS] [loss=PCT]
// separated by spaces or commas. The first rule whose given fields all match a packet decides it;
// a packet no rule matches gets the default delay and loss. Not thread-safe; one thread owns all.

#include <chrono>
#include <cstdint>
#include <optional>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meridian::netem {

using Clock = std::chrono::steady_clock;

// The limits a rule may take; anything outside is a parse error.
inline constexpr double kDelayMsMax = 60000.0;
inline constexpr double kLossPctMax = 100.0;

// An IPv4 prefix, host byte order.
struct Ipv4Net {
  uint32_t addr = 0;
  uint32_t mask = 0;
  [[nodiscard]] bool Contains(uint32_t a) const { return (a & mask) == addr; }
  [[nodiscard]] std::string ToString() const;
};

struct Rule {
  std::optional<uint16_t> queue;
  std::optional<Ipv4Net> src;
  std::optional<Ipv4Net> dst;
  double delay_ms = 0;
  double loss_pct = 0;
  [[nodiscard]] std::string ToString() const;
};

// "10.1.2.3" or "10.1.2.0/24" (host bits must be zero).
[[nodiscard]] absl::StatusOr<Ipv4Net> ParseIpv4Net(std::string_view text);
// One rule; every error names the offending field.
[[nodiscard]] absl::StatusOr<Rule> ParseRule(std::string_view text);
// A rules file's text: one rule per non-blank line, `#` comments; errors name the line.
[[nodiscard]] absl::StatusOr<std::vector<Rule>> ParseRules(std::string_view text);
[[nodiscard]] absl::StatusOr<std::vector<Rule>> LoadRulesFile(const std::string& path);

// Source and destination of an IPv4 packet (host byte order); nullopt when `data` is not an IPv4
// header (IPv6, or shorter than 20 bytes).
struct PacketAddrs {
  uint32_t src = 0;
  uint32_t dst = 0;
};
[[nodiscard]] std::optional<PacketAddrs> ParseIpv4Header(const uint8_t* data, size_t len);

struct Decision {
  enum class Kind { kAccept, kHold, kDrop };
  Kind kind = Kind::kAccept;
  Clock::time_point release;  // kHold only
  int rule = -1;              // index into rules(), -1 for the default
};

struct RuleCounters {
  uint64_t packets = 0;
  uint64_t lost = 0;
};

class Policy {
 public:
  // `fallback` decides packets that no rule matches (its match fields are ignored).
  Policy(std::vector<Rule> rules, Rule fallback, uint64_t seed);

  // Index of the first matching rule, -1 for none. A packet without addresses (not IPv4) matches
  // only rules that name no address.
  [[nodiscard]] int Match(uint16_t queue, const std::optional<PacketAddrs>& addrs) const;
  // Matches, draws the loss, and counts.
  Decision Decide(uint16_t queue, const std::optional<PacketAddrs>& addrs, Clock::time_point now);
  // New rules (a reload); the RNG and the default stay, counters restart.
  void ReplaceRules(std::vector<Rule> rules);

  [[nodiscard]] const std::vector<Rule>& rules() const { return rules_; }
  [[nodiscard]] const Rule& fallback() const { return fallback_; }
  [[nodiscard]] const std::vector<RuleCounters>& counters() const { return counters_; }
  [[nodiscard]] const RuleCounters& fallback_counters() const { return fallback_counters_; }

 private:
  [[nodiscard]] bool Lost(double loss_pct);

  std::vector<Rule> rules_;
  Rule fallback_;
  std::vector<RuleCounters> counters_;
  RuleCounters fallback_counters_;
  std::mt19937_64 rng_;
};

// Items held until their release time, released in release order (ties in push order). Holds at
// most `capacity` items: Push refuses the rest, the caller drops them.
template <typename T>
class HoldQueue {
 public:
  explicit HoldQueue(size_t capacity) : capacity_(capacity) {}

  // False (and nothing held) when full.
  [[nodiscard]] bool Push(Clock::time_point release, T value) {
    if (heap_.size() >= capacity_) return false;
    heap_.push(Entry{release, next_seq_++, std::move(value)});
    if (heap_.size() > high_water_) high_water_ = heap_.size();
    return true;
  }
  [[nodiscard]] std::optional<Clock::time_point> NextRelease() const {
    if (heap_.empty()) return std::nullopt;
    return heap_.top().release;
  }
  // Calls f(value, release) for every item due at `now`, in release order; returns how many.
  template <typename F>
  size_t PopDue(Clock::time_point now, F&& f) {
    size_t n = 0;
    while (!heap_.empty() && heap_.top().release <= now) {
      const Clock::time_point release = heap_.top().release;
      T value = heap_.top().value;  // T is small (a packet id); copy
      heap_.pop();
      f(value, release);
      ++n;
    }
    return n;
  }
  // Calls f(value, release) for every item, in release order, and empties the queue.
  template <typename F>
  size_t PopAll(F&& f) {
    return PopDue(Clock::time_point::max(), std::forward<F>(f));
  }

  [[nodiscard]] size_t size() const { return heap_.size(); }
  [[nodiscard]] size_t capacity() const { return capacity_; }
  [[nodiscard]] size_t high_water() const { return high_water_; }
  void ResetHighWater() { high_water_ = heap_.size(); }

 private:
  struct Entry {
    Clock::time_point release;
    uint64_t seq;
    T value;
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.release != b.release ? a.release > b.release : a.seq > b.seq;
    }
  };

  size_t capacity_;
  size_t high_water_ = 0;
  uint64_t next_seq_ = 0;
  std::priority_queue<Entry, std::vector<Entry>, Later> heap_;
};

}  // namespace meridian::netem
