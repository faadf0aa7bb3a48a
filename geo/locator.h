#pragma once

// Where a DNS client is: its subnet (EDNS Client Subnet, else the resolver's address) is looked up
// in the optional GeoIP database first, then in the configured CIDR table (longest prefix wins),
// else it gets the configured default location.

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "geo/cidr.h"
#include "geo/config.h"
#include "geo/decision.h"
#include "geo/geoip.h"

namespace meridian::geo {

enum class LocationSource { kGeoIp, kCidrTable, kDefault };
[[nodiscard]] std::string_view LocationSourceName(LocationSource s);  // "geoip", "cidr", "default"

struct ClientLocation {
  GeoPoint point;
  // The ECS scope to answer with: the prefix length of the network that decided the location
  // (GeoIP network or table prefix), or the client's own prefix length for the default.
  int scope_prefix_len = 0;
  LocationSource source = LocationSource::kDefault;
  std::optional<size_t> table_row;  // kCidrTable: index into GeoConfig::locations
};

// Thread-safety: immutable after construction; Locate may run concurrently.
class ClientLocator {
 public:
  // Builds the table from config.locations (already validated: no duplicates). `geoip` may be
  // null. REQUIRES: config outlives nothing here (everything needed is copied).
  ClientLocator(const GeoConfig& config, std::unique_ptr<GeoIpDatabase> geoip);

  // `client` is the client's subnet (a host address is a full-length prefix). A GeoIP lookup
  // error is logged by the caller through `geoip_error` (optional) and falls through to the table.
  [[nodiscard]] ClientLocation Locate(const Cidr& client,
                                      absl::Status* geoip_error = nullptr) const;

 private:
  CidrTable table_;
  std::vector<GeoPoint> points_;  // per table row
  GeoPoint default_point_;
  std::unique_ptr<GeoIpDatabase> geoip_;
};

}  // namespace meridian::geo
