#pragma once

// Inventory rights rebalancing: moves bounded-counter rights (crdt::BoundedCounter) between
// regions ahead of demand, so that a region rarely has to refuse a checkout for lack of rights
// while another region holds units it will not sell soon.
//
// Each region runs one RightsManager. It never moves units itself: a decision is a Grant ("move
// n of my rights for SKU to region R"), which the host executes as an Inventory::Transfer in the
// region's database; the transfer delta then travels to every region on the ordinary replication
// streams. Only a region's own rights can be given away, so no decision here can oversell: the
// bounded counter's invariant holds whatever this logic decides.
//
// Policy, per SKU, on every Tick (never while checkouts here wait for this SKU themselves, and
// never toward a peer the host reports away: SetAway):
//   1. Urgent: a peer that reported checkouts waiting for units (RightsRequest, or `waiting` in its
//      gossip) gets them from any rights we hold (they are sales now; our reserve, our recent
//      demand over `lead_ms`, is sales we only expect), plus, from what we hold above our
//      reserve, its own expected demand over `lead_ms`.
//   2. Ahead of demand: compare each region's time to exhaustion (rights / demand rate, an
//      exponentially decayed rate with half-life `demand_half_life_ms`). When the peer that will
//      run out first will do so within `horizon_ms` and `tte_ratio` times sooner than we will, move
//      enough to equalize the two (keeping our reserve). A region without demand has an infinite
//      time to exhaustion: it gives everything to whoever needs it. Near the end, when everyone's
//      time is short, only the urgent path moves units, so they stay where they will be sold.
// Grants in flight are tracked exactly: gossip carries, per peer, the cumulative units the sender
// has received from it (P[peer][sender] in the bounded counter), and we know what we gave.
// Limits: one grant per (SKU, peer) per `grant_cooldown_ms`; one urgent request per SKU per
// `request_cooldown_ms`; gossip every `gossip_interval_ms` with at most `max_skus_per_gossip` SKUs;
// peer information older than `info_ttl_ms` is ignored.
//
// Threading: not thread-safe (the host serializes calls). No I/O: messages leave through `send`,
// this region's rights come from `view`, time from Clock.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "replication/clock.h"
#include "replication/lease.h"

namespace meridian::replication {

struct RightsConfig {
  int64_t gossip_interval_ms = 100;
  int64_t demand_half_life_ms = 2000;
  int64_t lead_ms = 300;       // reserve: this much of our own demand is never given away
  int64_t horizon_ms = 10000;  // proactive moves only toward a peer running out within this
  double tte_ratio = 2.0;      // ... and this many times sooner than we would
  int64_t grant_cooldown_ms = 50;
  int64_t request_cooldown_ms = 50;
  int64_t info_ttl_ms = 3000;
  int64_t active_window_ms = 10000;  // a SKU is gossiped while touched within this window
  size_t max_skus_per_gossip = 2000;

  [[nodiscard]] absl::Status Validate() const;
};

// One SKU as this region's inventory document shows it.
struct SkuRights {
  int64_t rights = 0;                     // this region's rights
  std::map<RegionId, uint64_t> given;     // P[self][peer]: cumulative units we gave each peer
  std::map<RegionId, uint64_t> received;  // P[peer][self]: cumulative units each peer gave us
};

struct RightsGossip {
  struct Entry {
    std::string sku;
    int64_t rights = 0;
    double demand_per_s = 0;
    uint64_t waiting = 0;                   // units checkouts are waiting for right now
    std::map<RegionId, uint64_t> received;  // P[peer][sender] as the sender sees it
    friend bool operator==(const Entry&, const Entry&) = default;
  };
  std::vector<Entry> entries;
  friend bool operator==(const RightsGossip&, const RightsGossip&) = default;
};
// Checkouts here are waiting for `units` more of `sku` (sent at once, not at the next gossip).
struct RightsRequest {
  std::string sku;
  uint64_t units = 0;
  friend bool operator==(const RightsRequest&, const RightsRequest&) = default;
};
using RightsMessage = std::variant<RightsGossip, RightsRequest>;

class RightsManager {
 public:
  using SendFn = std::function<void(RegionId to, const RightsMessage& message)>;
  // This region's view of a SKU, or nullopt when it has no inventory document for it.
  using ViewFn = std::function<std::optional<SkuRights>(const std::string& sku)>;

  struct Grant {
    std::string sku;
    RegionId to = kNoRegion;
    uint64_t units = 0;
    bool urgent = false;
    friend bool operator==(const Grant&, const Grant&) = default;
  };

  // REQUIRES: config.Validate().ok(); peers exclude self.
  RightsManager(RegionId self, std::vector<RegionId> peers, RightsConfig config, const Clock* clock,
                SendFn send, ViewFn view);

  // A checkout here wanted `units` of `sku` (whether or not it could be sold): the demand signal.
  void RecordDemand(const std::string& sku, uint64_t units);
  // Checkouts here are now waiting for `units` more of `sku` than this region holds (0: none).
  // A rise sends an urgent RightsRequest to every peer (at most one per request_cooldown_ms).
  void SetWaiting(const std::string& sku, uint64_t units);
  void OnMessage(RegionId from, const RightsMessage& message);
  // The peers that are away: no stream to them, or their group held by another region (they are
  // lost). They get no grant, urgent or ahead of demand, whatever their last gossip said: units
  // moved to a region that cannot sell them are lost to every customer until it is back. Their
  // information is kept, and counts again once they are no longer named here. Replaces the set.
  void SetAway(std::set<RegionId> away);
  // Sends gossip when due and returns the grants to execute now. The host reports the outcome
  // through the view (a grant that failed because the rights were sold meanwhile is harmless).
  [[nodiscard]] std::vector<Grant> Tick();

  // Operators: what we know of each region for one SKU.
  struct RegionView {
    RegionId region = kNoRegion;
    int64_t rights = 0;
    double demand_per_s = 0;
    uint64_t waiting = 0;
    int64_t age_ms = 0;  // how old this information is (0 for this region)
  };
  [[nodiscard]] std::vector<RegionView> Views(const std::string& sku);
  [[nodiscard]] double DemandPerS(const std::string& sku) const;

 private:
  static constexpr int64_t kNever = -(int64_t{1} << 60);
  struct Demand {
    double decayed = 0;  // units, decayed with half-life
    int64_t at_ms = 0;
  };
  struct Local {
    Demand demand;
    uint64_t waiting = 0;
    int64_t touched_ms = 0;
    int64_t last_request_ms = -1'000'000'000;
  };
  struct PeerInfo {
    RightsGossip::Entry entry;
    int64_t at_ms = kNever;     // when the last gossip came
    uint64_t urgent_units = 0;  // from a RightsRequest newer than the gossip
    int64_t urgent_at_ms = kNever;
  };

  double Rate(const Demand& d, int64_t now) const;
  void Gossip(int64_t now);
  void Decide(const std::string& sku, int64_t now, std::vector<Grant>& out);
  bool Fresh(int64_t at_ms, int64_t now) const { return now - at_ms <= config_.info_ttl_ms; }

  RegionId self_;
  std::vector<RegionId> peers_;
  RightsConfig config_;
  const Clock* clock_;
  SendFn send_;
  ViewFn view_;
  int64_t next_gossip_ms_ = 0;
  std::map<std::string, Local> local_;
  std::map<std::string, std::map<RegionId, PeerInfo>> peers_info_;
  std::map<std::pair<std::string, RegionId>, int64_t> last_grant_ms_;
  std::set<RegionId> away_;
  // Grants decided here that the view may not show yet: `given` should reach expected_given.
  struct Pending {
    uint64_t expected_given = 0;
    int64_t at_ms = 0;
  };
  std::map<std::pair<std::string, RegionId>, Pending> pending_;
};

}  // namespace meridian::replication
