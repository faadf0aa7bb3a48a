#include "geo/geoip.h"

#include <arpa/inet.h>
#include <maxminddb.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace meridian::geo {

struct MaxMindDatabase::Handle {
  MMDB_s mmdb{};
};

MaxMindDatabase::MaxMindDatabase(std::string path, std::unique_ptr<Handle> handle)
    : path_(std::move(path)), handle_(std::move(handle)) {}

MaxMindDatabase::~MaxMindDatabase() { MMDB_close(&handle_->mmdb); }

absl::StatusOr<std::unique_ptr<MaxMindDatabase>> MaxMindDatabase::Open(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("maxmind_db '", path, "': ", std::strerror(errno)));
  }
  // MMDB_open would block on a FIFO (for a writer) and map no device: only a regular file.
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("maxmind_db '", path,
                     "': ", S_ISDIR(st.st_mode) ? "is a folder" : "is not a regular file"));
  }
  auto handle = std::make_unique<Handle>();
  const int rc = MMDB_open(path.c_str(), MMDB_MODE_MMAP, &handle->mmdb);
  if (rc != MMDB_SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat("maxmind_db '", path, "': ", MMDB_strerror(rc)));
  }
  return std::unique_ptr<MaxMindDatabase>(new MaxMindDatabase(path, std::move(handle)));
}

absl::StatusOr<GeoIpLookup> MaxMindDatabase::Lookup(const IpAddress& address) const {
  const MMDB_s* mmdb = &handle_->mmdb;
  sockaddr_storage storage{};
  if (address.is_v4) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
    sin->sin_family = AF_INET;
    std::memcpy(&sin->sin_addr, address.bytes.data(), 4);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
    sin6->sin6_family = AF_INET6;
    std::memcpy(&sin6->sin6_addr, address.bytes.data(), 16);
  }
  int mmdb_error = MMDB_SUCCESS;
  MMDB_lookup_result_s result =
      MMDB_lookup_sockaddr(mmdb, reinterpret_cast<const sockaddr*>(&storage), &mmdb_error);
  if (mmdb_error != MMDB_SUCCESS) {
    // An IPv6 address in an IPv4-only database: simply not covered.
    if (mmdb_error == MMDB_IPV6_LOOKUP_IN_IPV4_DATABASE_ERROR) return GeoIpLookup{};
    return absl::InternalError(absl::StrCat("maxmind_db '", path_, "': lookup of ",
                                            address.ToString(), ": ", MMDB_strerror(mmdb_error)));
  }
  // An IPv4 address found in an IPv6 tree (::a.b.c.d/96) carries an IPv6 netmask. On a miss the
  // netmask is the empty block's: before, it was dropped, and an answer from the CIDR table was
  // scoped over networks the database places elsewhere (probe, 2026-12-04).
  GeoIpLookup out;
  int prefix = result.netmask;
  if (address.is_v4 && mmdb->metadata.ip_version == 6) prefix -= 96;
  out.prefix_len = std::clamp(prefix, 0, address.bit_count());
  if (!result.found_entry) return out;

  double coordinates[2] = {0, 0};
  const char* const kKeys[2] = {"latitude", "longitude"};
  for (int i = 0; i < 2; ++i) {
    MMDB_entry_data_s data{};
    const int rc = MMDB_get_value(&result.entry, &data, "location", kKeys[i], nullptr);
    if (rc == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR ||
        (rc == MMDB_SUCCESS && !data.has_data)) {
      return out;
    }
    if (rc != MMDB_SUCCESS) {
      return absl::InternalError(absl::StrCat("maxmind_db '", path_, "': location.", kKeys[i],
                                              " of ", address.ToString(), ": ", MMDB_strerror(rc)));
    }
    if (data.type == MMDB_DATA_TYPE_DOUBLE) {
      coordinates[i] = data.double_value;
    } else if (data.type == MMDB_DATA_TYPE_FLOAT) {
      coordinates[i] = data.float_value;
    } else {
      return absl::InternalError(absl::StrCat("maxmind_db '", path_, "': location.", kKeys[i],
                                              " of ", address.ToString(), " is not a number"));
    }
  }
  const GeoPoint point{coordinates[0], coordinates[1]};
  if (!std::isfinite(point.lat_deg) || !std::isfinite(point.lon_deg) ||
      std::fabs(point.lat_deg) > 90 || std::fabs(point.lon_deg) > 180) {
    return absl::InternalError(absl::StrCat("maxmind_db '", path_, "': location of ",
                                            address.ToString(), " is out of range"));
  }
  out.point = point;
  return out;
}

}  // namespace meridian::geo
