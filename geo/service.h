#pragma once

// meridian-geo as one object: the HTTP server (PowerDNS remote backend endpoint, health hooks,
// region status, metrics), the health tracker, the probe loop and the client locator, wired
// from a validated GeoConfig. main.cc only parses flags and runs this.
//
// Endpoints (all on config.listen):
//   POST <dns_path>                     PowerDNS remote backend (remote_backend.h)
//   GET  /v1/regions                    every region: probe state, override, effective health
//   GET  /v1/regions/{name}             one region
//   POST /v1/regions/{name}/health      {"state":"down"|"up"|"auto","reason":"..."}; needs
//                                       "Authorization: Bearer <operator token>"
//   GET  /v1/route?client=<ip[/len]>    what a lookup from that client subnet would answer
//   GET  /metrics                       Prometheus text format
//   GET  /healthz                       liveness
//
// Thread-safety: every public method is safe to call from any thread once Create returned,
// except Start/Stop, which the owner calls once each.

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "geo/clock.h"
#include "geo/config.h"
#include "geo/geoip.h"
#include "geo/prober.h"
#include "region/http/http_types.h"

namespace meridian::geo {

class GeoService {
 public:
  struct Options {
    // Null: a SteadyClock / a CurlProbeClient owned by the service. When given, they must
    // outlive the service.
    Clock* clock = nullptr;
    ProbeClient* probe_client = nullptr;
    // Replaces opening config.maxmind_db (tests). Null: open config.maxmind_db when set.
    std::unique_ptr<GeoIpDatabase> geoip = nullptr;
  };

  // Opens the GeoIP database if configured (its errors are returned here: the service does not
  // start without a database it was told to use).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<GeoService>> Create(GeoConfig config,
                                                                          Options options);
  ~GeoService();  // Stop()s

  GeoService(const GeoService&) = delete;
  GeoService& operator=(const GeoService&) = delete;

  // Binds config.listen and starts serving and probing. Unavailable when the bind fails.
  [[nodiscard]] absl::Status Start();
  // The bound port (config.listen's, or the picked one when it was 0); 0 before Start.
  [[nodiscard]] uint16_t port() const;
  void Stop();

  // One request through the router, without the network (tests, and the HTTP server's handler).
  [[nodiscard]] region::http::HttpResponse Handle(region::http::HttpRequest& request);

  // One round of probes on the caller's thread (tests drive probing with a fake ProbeClient and
  // clock instead of Start()ing the probe loop).
  void ProbeOnce();

 private:
  class Impl;
  explicit GeoService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace meridian::geo
