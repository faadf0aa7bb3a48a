#pragma once

// A seam for IP geolocation databases, and its libmaxminddb implementation. The locator asks the
// database first when one is configured (see locator.h).

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "geo/cidr.h"
#include "geo/decision.h"

namespace meridian::geo {

struct GeoIpLookup {
  std::optional<GeoPoint> point;  // none: no record for the address, or one without a location
  // The database's network that holds the address, hit or not (a miss is a block of the tree with
  // no record), as a prefix length in the address's own family: an answer made for the address
  // holds for that block only (its ECS scope is at least this long).
  int prefix_len = 0;
};

// Thread-safety: Lookup is const and safe to call concurrently.
class GeoIpDatabase {
 public:
  virtual ~GeoIpDatabase() = default;
  // No point when the database has no record for the address, or the record has no
  // location.latitude/longitude; an error when the database is corrupt at that record.
  [[nodiscard]] virtual absl::StatusOr<GeoIpLookup> Lookup(const IpAddress& address) const = 0;
};

// A MaxMind DB file (GeoLite2-City, GeoIP2-City, or any .mmdb whose records carry
// location.latitude and location.longitude as doubles), memory-mapped by libmaxminddb.
class MaxMindDatabase : public GeoIpDatabase {
 public:
  // NotFound / InvalidArgument naming the path and libmaxminddb's reason (missing file, not an
  // MMDB file, corrupt metadata).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MaxMindDatabase>> Open(
      const std::string& path);
  ~MaxMindDatabase() override;

  MaxMindDatabase(const MaxMindDatabase&) = delete;
  MaxMindDatabase& operator=(const MaxMindDatabase&) = delete;

  [[nodiscard]] absl::StatusOr<GeoIpLookup> Lookup(const IpAddress& address) const override;

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  struct Handle;
  MaxMindDatabase(std::string path, std::unique_ptr<Handle> handle);

  std::string path_;
  std::unique_ptr<Handle> handle_;
};

}  // namespace meridian::geo
