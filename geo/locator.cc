#include "geo/locator.h"

#include <algorithm>
#include <cassert>

namespace meridian::geo {

std::string_view LocationSourceName(LocationSource s) {
  switch (s) {
    case LocationSource::kGeoIp:
      return "geoip";
    case LocationSource::kCidrTable:
      return "cidr";
    case LocationSource::kDefault:
      return "default";
  }
  return "default";
}

ClientLocator::ClientLocator(const GeoConfig& config, std::unique_ptr<GeoIpDatabase> geoip)
    : default_point_(config.default_location), geoip_(std::move(geoip)) {
  points_.reserve(config.locations.size());
  for (size_t i = 0; i < config.locations.size(); ++i) {
    const LocationConfig& row = config.locations[i];
    points_.push_back(row.region ? config.regions.at(*row.region).location : row.point);
    // The config loader rejected duplicates, so this cannot fail.
    [[maybe_unused]] const absl::Status st = table_.Insert(row.cidr, i);
    assert(st.ok());
  }
}

ClientLocation ClientLocator::Locate(const Cidr& client, absl::Status* geoip_error) const {
  ClientLocation out;
  // Past a database miss, the answer holds only within the database's empty block around the
  // client: a wider scope would take in networks the database places elsewhere.
  int geoip_block = 0;
  if (geoip_) {
    absl::StatusOr<GeoIpLookup> found = geoip_->Lookup(client.network);
    if (!found.ok()) {
      if (geoip_error) *geoip_error = found.status();
    } else if (found->point) {
      out.point = *found->point;
      out.scope_prefix_len = found->prefix_len;
      out.source = LocationSource::kGeoIp;
      return out;
    } else {
      geoip_block = found->prefix_len;
    }
  }
  if (std::optional<CidrTable::Match> m = table_.Lookup(client.network)) {
    out.point = points_[m->value];
    // Longer than the row's when rows lie inside it, or the database's block is smaller.
    out.scope_prefix_len = std::max(m->scope_len, geoip_block);
    out.source = LocationSource::kCidrTable;
    out.table_row = m->value;
    return out;
  }
  out.point = default_point_;
  // The client's own prefix, or longer when a row lies inside it (its clients answer otherwise)
  // or the database's block is smaller.
  out.scope_prefix_len =
      std::max(table_.ScopeLen(client.network, -1, client.prefix_len), geoip_block);
  out.source = LocationSource::kDefault;
  return out;
}

}  // namespace meridian::geo
