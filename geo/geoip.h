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

struct GeoIpHit {
  GeoPoint point;
  int prefix_len = 0;  // the database network's prefix length, in the address's own family
};

// Thread-safety: Lookup is const and safe to call concurrently.
class GeoIpDatabase {
 public:
  virtual ~GeoIpDatabase() = default;
  // nullopt when the database has no record for the address, or the record has no
  // location.latitude/longitude; an error when the database is corrupt at that record.
  [[nodiscard]] virtual absl::StatusOr<std::optional<GeoIpHit>> Lookup(
      const IpAddress& address) const = 0;
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

  [[nodiscard]] absl::StatusOr<std::optional<GeoIpHit>> Lookup(
      const IpAddress& address) const override;

  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  struct Handle;
  MaxMindDatabase(std::string path, std::unique_ptr<Handle> handle);

  std::string path_;
  std::unique_ptr<Handle> handle_;
};

}  // namespace meridian::geo
