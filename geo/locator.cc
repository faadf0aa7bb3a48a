#include "geo/locator.h"

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
  if (geoip_) {
    absl::StatusOr<std::optional<GeoIpHit>> hit = geoip_->Lookup(client.network);
    if (!hit.ok()) {
      if (geoip_error) *geoip_error = hit.status();
    } else if (hit->has_value()) {
      out.point = (*hit)->point;
      out.scope_prefix_len = (*hit)->prefix_len;
      out.source = LocationSource::kGeoIp;
      return out;
    }
  }
  if (std::optional<CidrTable::Match> m = table_.Lookup(client.network)) {
    out.point = points_[m->value];
    out.scope_prefix_len = m->scope_len;  // longer than the row's when rows lie inside it
    out.source = LocationSource::kCidrTable;
    out.table_row = m->value;
    return out;
  }
  out.point = default_point_;
  // The client's own prefix, or longer when a row lies inside it (its clients answer otherwise).
  out.scope_prefix_len = table_.ScopeLen(client.network, -1, client.prefix_len);
  out.source = LocationSource::kDefault;
  return out;
}

}  // namespace meridian::geo
