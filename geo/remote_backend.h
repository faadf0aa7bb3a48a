#pragma once

// The PowerDNS remote backend protocol (HTTP connector, post=1, post_json=1): one JSON request
// {"method": ..., "parameters": {...}} in, one JSON reply {"result": ...} out. Pure apart from
// what its dependencies do: the region health snapshot and the observer are passed in.
//
// Methods (matched case-insensitively; pdns 4.7 sends camelCase):
//   initialize            -> true
//   lookup                -> the zone's records for qname (SOA, NS and glue at their names, A/AAAA
//                            for the service name chosen for the client), filtered by qtype
//                            unless qtype is ANY; false for names outside the zone or without
//                            records (pdns then answers NXDOMAIN/NODATA from the SOA)
//   getAllDomains         -> [the zone's domain info]   (lets pdns's zone cache find the zone)
//   getDomainInfo         -> the zone's domain info for the zone's name, else false
//   anything else         -> false (pdns treats it as "not implemented": no metadata, no keys)
// A body that is not a JSON object with a string "method" gets HTTP 400 with {"result":false}
// and a "log" line saying why; the handler never throws and never crashes on any input.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "geo/config.h"
#include "geo/decision.h"
#include "geo/locator.h"

namespace meridian::geo {

// Told about every request, for metrics and logs. Must be thread-safe (called from HTTP threads).
class BackendObserver {
 public:
  virtual ~BackendObserver() = default;
  // `method` is lowercased, and "other" for methods the backend does not know (bounded labels).
  virtual void OnRequest(std::string_view method) = 0;
  // A lookup of the service name was answered.
  virtual void OnAnswer(const Decision& decision, const ClientLocation& where) = 0;
  virtual void OnBadRequest(std::string_view why) = 0;
  virtual void OnGeoIpError(std::string_view what) = 0;
};

struct BackendReply {
  int http_status = 200;
  std::string body;  // JSON
};

// Thread-safety: Handle is const and may run concurrently if the dependencies allow it.
class RemoteBackend {
 public:
  // Returns each region's effective health, indexed like config.regions.
  using HealthSnapshot = std::function<std::vector<bool>()>;

  // REQUIRES: `config` and `locator` outlive this; `observer` may be null.
  RemoteBackend(const GeoConfig& config, const ClientLocator& locator, HealthSnapshot health,
                BackendObserver* observer);

  [[nodiscard]] BackendReply Handle(std::string_view body) const;

  // Body limit the HTTP layer should enforce for this endpoint (pdns's requests are < 1 KiB).
  static constexpr size_t kMaxBodyBytes = 64 * 1024;

 private:
  const GeoConfig& config_;
  const ClientLocator& locator_;
  HealthSnapshot health_;
  BackendObserver* observer_;
};

}  // namespace meridian::geo
