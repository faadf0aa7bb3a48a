#pragma once

// What one probe round learns about the regions, and the health rules that turn it into checks.
// Pure: parsing and rules only, no I/O or clock (the controller does the HTTP and passes results).
//
// A region is HEALTHY at a check when
//   - its /readyz answers 2xx,
//   - its replicator's operator API (/v1/status) answers 200 with a valid body, and
//   - that replicator sees enough peers alive to be part of a majority (alive peers + itself >=
//     regions / 2 + 1): a region cut off from the others (a partition) cannot renew its leases or
//     replicate, even while it still answers probes from the management network.
// It is CAUGHT UP (ready for failback) when healthy and also
//   - its replicator sees every peer alive, except peers this controller has decided are lost,
//   - the mean queue lag at the region for each peer, over the last probe interval (from the
//     `meridian_replication_queue_lag_ms` summary's _sum and _count), is at most
//     max_apply_lag_ms: what records waited at the peer before they were sent, plus what they
//     waited at the region until their apply committed. The network transit is left out: it is
//     the one part that would need two hosts' clocks, and a returning host whose clock ran a
//     second ahead would otherwise never count as caught up (one behind would switch the rule
//     off). The lag from commit to apply (`meridian_replication_lag_ms`) is still reported, and
//     read instead from a replicator that does not export the queue lag (one from before it,
//     during a rolling upgrade). The queue lag compares the origin database's commit time with
//     the origin replicator's clock: they must run on one host or share a synchronised clock.
//   - every peer's backlog toward it (`meridian_replication_lag_seq{peer=<region>}` at the peer:
//     records committed there and not yet acknowledged by the region) is at most
//     max_backlog_records; again except peers this controller has decided are lost.
// Why lost peers are left out: a region that returns while another one is still gone would
// otherwise never count as caught up, so it would never fail back until the other one returned
// too (never, if that region was destroyed). A lost peer's records are not being replicated to
// anyone; the region catches up on them, as the survivors do, when that peer returns.
// Why not the summary's p99: its window is 30 s, so the catch-up burst of a returning region
// would hold failback back for up to 30 s after it caught up. The p99 is still reported.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "failover/http_client.h"

namespace meridian::failover {

struct LeaseInfo {
  std::string group_region;
  uint64_t epoch = 0;
  std::string owner;
  bool held_here = false;
  bool usable = false;
  bool syncing = false;
  int64_t valid_for_ms = 0;
};

// A replicator's GET /v1/status.
struct ReplicatorStatus {
  std::string region;
  std::map<std::string, bool> peers_alive;  // peer name -> alive
  std::vector<LeaseInfo> leases;
};
// InvalidArgument naming what is wrong.
[[nodiscard]] absl::StatusOr<ReplicatorStatus> ParseReplicatorStatus(std::string_view json);

// The replication figures of one replicator's /metrics, per peer.
struct PeerReplication {
  std::optional<double> lag_p99_ms;  // summary quantile 0.99 (30 s window); NaN -> nullopt
  double queue_lag_sum_ms = 0;       // queue_lag_ms summary _sum (since the replicator started)
  double queue_lag_count = 0;        // ... and _count
  bool queue_lag_seen = false;       // the series is there (not a replicator from before it)
  double lag_sum_ms = 0;             // lag_ms summary _sum: read when queue_lag_ms is not there
  double lag_count = 0;              // ... and _count
  std::optional<double> backlog_records;  // lag_seq: our records the peer has not acked
  std::optional<bool> connected;
};
struct ReplicationMetrics {
  std::map<std::string, PeerReplication> peers;
};
// Reads the meridian_replication_* series of Prometheus text format; other series are skipped.
// InvalidArgument on a malformed line of those series.
[[nodiscard]] absl::StatusOr<ReplicationMetrics> ParseReplicationMetrics(std::string_view text);

// One sample line of Prometheus text: name, labels, value. False for comments, blanks and lines
// that do not parse. Exposed for tests.
struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
[[nodiscard]] bool ParsePromLine(std::string_view line, PromSample* out);

// The raw results of probing one region in one round.
struct RegionProbe {
  HttpResult readyz;   // GET <url>/readyz
  HttpResult status;   // GET <replicator>/v1/status
  HttpResult metrics;  // GET <metrics>
};

struct CatchUpPolicy {
  double max_apply_lag_ms = 1000;
  double max_backlog_records = 1000;
};

// What one controller concludes about one region at one check.
struct RegionCheck {
  bool healthy = false;
  bool caught_up = false;
  std::string reason;  // why not healthy, else why not caught up; empty when both hold
  // details, for operators
  bool ready = false;
  std::optional<ReplicatorStatus> status;
  std::optional<ReplicationMetrics> metrics;
  std::map<std::string, double> queue_lag_ms;     // per peer, over the last interval (if any)
  std::map<std::string, double> backlog_records;  // per peer: the peer's backlog toward us
};

// Applies the rules above to one round. `regions` lists every region (names); `probes` and
// `previous` are keyed by region (`previous`: the last round's parsed metrics, for the interval's
// mean lag; may lack entries). `lost`: the regions this controller has decided are lost; they
// do not hold back another region's catch-up (they still count for its health: a majority of
// peers alive is needed either way).
[[nodiscard]] std::map<std::string, RegionCheck> ComputeChecks(
    const std::vector<std::string>& regions, const std::map<std::string, RegionProbe>& probes,
    const std::map<std::string, ReplicationMetrics>& previous, const CatchUpPolicy& policy,
    const std::set<std::string>& lost = {});

}  // namespace meridian::failover
