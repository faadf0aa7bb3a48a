#pragma once

// The failover decision: a pure state machine. Inputs are this controller's own checks, the
// observations other controllers sent, and the time (always passed in, never read); outputs are
// decisions. No I/O, no threads, no clock: unit and property tests drive it step by step.
//
// Every region has one controller. Each controller checks every region every probe interval and
// keeps, per region, its streaks: consecutive unhealthy checks (fail_streak) and consecutive
// caught-up checks (ok_streak). Controllers exchange these as Observations.
//
// Votes. For region X, a controller C != X votes
//   - LOST      when C's latest observation is fresh and fail_streak(X) >= lost_after_checks,
//   - HEALTHY   when it is fresh and says X is healthy now,
//   - RECOVERED when it is fresh and ok_streak(X) >= recover_after_checks.
// X's own controller never votes on X ("the lost one counted as not agreeing"). An observation is
// fresh while it was received (or, for our own, recorded) less than observation_ttl_ms ago; a
// controller we have not heard from recently counts as not agreeing, whatever it said last.
// Quorum = regions / 2 + 1: a majority of ALL regions, not of the voters, so one controller alone
// (with three or more regions), or any minority cut off from the rest, can never decide.
//
// States per region and transitions (each one a Decision):
//   UP         --LOST votes >= quorum-->                   LOST        "lost"
//   LOST       --HEALTHY votes >= quorum-->                RECOVERING  "recovering"
//   RECOVERING --LOST votes >= quorum-->                   LOST        "lost" (relapse)
//   RECOVERING --RECOVERED votes >= quorum-->              UP          "recovered"
// Several transitions may happen in one Evaluate (LOST -> RECOVERING -> UP).
// Hysteresis: entering LOST needs N consecutive bad checks at a quorum; leaving it needs M
// consecutive caught-up checks at a quorum (any bad or not-caught-up check resets a streak).
//
// Thread-safety: none; the owner serializes calls.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace meridian::failover {

enum class RegionState { kUp, kLost, kRecovering };
const char* RegionStateName(RegionState s);

// One controller's summary of one region (exchanged between controllers).
struct RegionReport {
  bool healthy = false;
  bool caught_up = false;
  uint32_t fail_streak = 0;  // consecutive unhealthy checks (0 when healthy now)
  uint32_t ok_streak = 0;    // consecutive caught-up checks (0 unless caught up now)
  std::string reason;        // why not healthy / not caught up
  friend bool operator==(const RegionReport&, const RegionReport&) = default;
};

// What a controller sends to the others after each of its rounds.
struct Observation {
  std::string from;          // the controller's region
  uint64_t incarnation = 0;  // random per controller start: a restarted peer's seq starts over
  uint64_t seq = 0;          // its round number within the incarnation
  std::map<std::string, RegionReport> regions;
  friend bool operator==(const Observation&, const Observation&) = default;
};

struct DeciderConfig {
  std::vector<std::string> regions;    // every region; each has one controller
  std::string self;                    // this controller's region; in `regions`
  uint32_t lost_after_checks = 3;      // N
  uint32_t recover_after_checks = 10;  // M
  int64_t observation_ttl_ms = 1500;
  // InvalidArgument naming the field.
  [[nodiscard]] absl::Status Validate() const;
};

struct Decision {
  std::string region;
  RegionState from = RegionState::kUp;
  RegionState to = RegionState::kUp;
  std::string decision;             // "lost", "recovering", "recovered"
  std::vector<std::string> voters;  // controllers whose votes carried it
  uint32_t needed = 0;              // the quorum
  std::string reason;
  int64_t at_ms = 0;
  friend bool operator==(const Decision&, const Decision&) = default;
};

// The tally for one region at a time (for status pages and logs).
struct Tally {
  std::vector<std::string> lost, healthy, recovered;  // voters of each kind
  std::vector<std::string> silent;                    // controllers with no fresh observation
  uint32_t needed = 0;
};

class Decider {
 public:
  // REQUIRES: config.Validate().ok().
  explicit Decider(DeciderConfig config);

  // This controller's checks of one round (every region: healthy / caught_up / reason). Regions
  // missing from `checks` count as unhealthy ("not checked"). Updates the streaks.
  void RecordOwnChecks(int64_t now_ms, const std::map<std::string, RegionReport>& checks);
  // This controller's latest observation (to send to the others).
  [[nodiscard]] const Observation& own() const { return own_; }
  void set_incarnation(uint64_t incarnation) { own_.incarnation = incarnation; }

  // A peer's observation, received at now_ms. InvalidArgument (and nothing changes) when it is
  // from an unknown region or ourselves, names an unknown region, or lacks one; FailedPrecondition
  // when it is older than the one we hold (same incarnation, seq not higher) or comes from an
  // incarnation a restart of that peer superseded (the last kSupersededKept of them are kept), so
  // that a push delayed across the peer's restart, or replayed, never counts again.
  [[nodiscard]] absl::Status AcceptPeerObservation(int64_t now_ms, const Observation& o);

  // Applies the rules at now_ms; returns the transitions taken, in order.
  [[nodiscard]] std::vector<Decision> Evaluate(int64_t now_ms);

  [[nodiscard]] RegionState state(const std::string& region) const;
  [[nodiscard]] int64_t state_since_ms(const std::string& region) const;
  [[nodiscard]] Tally Count(int64_t now_ms, const std::string& region) const;
  // A peer's latest observation and when it arrived (nullopt if none).
  struct Held {
    Observation observation;
    int64_t received_ms = 0;
  };
  [[nodiscard]] std::optional<Held> peer(const std::string& controller) const;
  [[nodiscard]] const DeciderConfig& config() const { return config_; }
  // When this controller's current unhealthy streak for `region` began (its first bad check);
  // nullopt while healthy.
  [[nodiscard]] std::optional<int64_t> own_fail_since_ms(const std::string& region) const;
  [[nodiscard]] uint32_t quorum() const {
    return static_cast<uint32_t>(config_.regions.size() / 2 + 1);
  }

 private:
  // The fresh report of `controller` about `region`, or nullptr.
  const RegionReport* Fresh(int64_t now_ms, const std::string& controller,
                            const std::string& region) const;

  DeciderConfig config_;
  Observation own_;
  int64_t own_recorded_ms_ = -1;
  std::map<std::string, Held> peers_;
  static constexpr size_t kSupersededKept = 64;
  std::map<std::string, std::deque<uint64_t>> superseded_;  // per peer, oldest first
  std::map<std::string, RegionState> state_;
  std::map<std::string, int64_t> since_ms_;
  std::map<std::string, int64_t> fail_since_ms_;
};

}  // namespace meridian::failover
