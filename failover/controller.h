#pragma once

// meridian-failover as one object: probes every region, exchanges observations with the other
// regions' controllers, runs the Decider, and acts on its decisions (geo health hooks, lease
// handback), writing every decision to the log, the audit file and the metrics. main.cc only
// parses flags and runs this.
//
// HTTP API (config.listen):
//   GET  /healthz                 liveness
//   GET  /metrics                 Prometheus text
//   GET  /v1/observations         this controller's latest observation and the peers' it holds
//   POST /v1/observations         a peer controller's observation (that controller's own token)
//   GET  /v1/regions              every region: state, votes, this controller's check, lease
//                                 holder, takeover/handback progress, rights frozen or not
//   GET  /v1/decisions            the last 200 audit entries (decisions and actions)
//   GET  /v1/admin/rights/{sku}   the SKU's rights per region as a live region sees them, with
//                                 the units frozen in lost regions (operator bearer token)
//   POST /v1/regions/{r}/declared-lost  an operator's declare-lost, as the replicator answered it
//                                 (meridianctl sends it): the reclaimed units are no longer
//                                 reported frozen (operator bearer token; 409 unless r is lost)
//
// Threads (after Start): the HTTP server's, one probe thread (a round every probe_interval_ms on
// fixed ticks), one push thread (sends each round's observation to every peer controller at
// once), and two action threads, so a slow geo never delays probing: one for the geo updates
// that decisions make (lost: "down", recovered: "auto"; at most one pending per region), one for
// periodic work (geo reconciles, handback requests; at most one queued or running per region and
// kind, the next due an interval after the previous finished). Each geo instance is called on a
// thread of its own, so one that hangs delays neither the others nor a decision.
// Stop drops queued actions and returns once the running ones finish their current HTTP call
// (each bounded by 2 s).
// Thread-safety: every public method may be called from any thread once Create returned, except
// Start/Stop (the owner, once each) and the test drivers RunRound/RunPendingActions/
// PushObservation (only when not Start()ed). RunPendingActions runs the decisions' geo updates
// before the periodic work.

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "failover/clock.h"
#include "failover/config.h"
#include "failover/http_client.h"
#include "region/http/http_types.h"

namespace meridian::failover {

class Controller {
 public:
  struct Options {
    const Clock* clock = nullptr;  // null: a SteadyClock owned by the controller
    HttpClient* http = nullptr;    // null: libcurl, owned by the controller
    uint64_t incarnation = 0;      // 0: random
  };

  // Opens the audit file (its error is returned: an audit trail that cannot be written must not
  // go unnoticed).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Controller>> Create(FailoverConfig config,
                                                                          Options options);
  ~Controller();  // Stop()s
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Binds config.listen, starts the threads. Unavailable when the bind fails.
  [[nodiscard]] absl::Status Start();
  [[nodiscard]] uint16_t port() const;
  void Stop();

  // One request through the router, without the network (tests; also the server's handler).
  [[nodiscard]] region::http::HttpResponse Handle(region::http::HttpRequest& request);

  // Test drivers (REQUIRES: not Start()ed): one probe round with its decisions and follow-ups;
  // the actions queued so far, run on the caller's thread; this controller's latest observation
  // pushed to every peer.
  void RunRound();
  void RunPendingActions();
  void PushObservation();

 private:
  class Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::failover
