#include "geo/remote_backend.h"

#include <algorithm>
#include <cctype>
#include <exception>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/json_text.h"

namespace meridian::geo {
namespace {

using nlohmann::json;

// Longest qname worth normalizing; a DNS name is at most 255 bytes on the wire (more in
// presentation form with escapes, which we do not serve anyway).
constexpr size_t kQnameTextMax = 1024;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Dump(const json& j) {
  // Replace, never throw, on invalid UTF-8 (qnames come from the network).
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

BackendReply Result(json result) {
  return BackendReply{200, Dump(json{{"result", std::move(result)}})};
}

BackendReply BadRequest(BackendObserver* observer, const std::string& why) {
  if (observer) observer->OnBadRequest(why);
  return BackendReply{400, Dump(json{{"result", false}, {"log", json::array({why})}})};
}

std::string_view KnownMethod(const std::string& lower) {
  static constexpr std::string_view kKnown[] = {"initialize",           "lookup",
                                                "getalldomains",        "getdomaininfo",
                                                "getalldomainmetadata", "getdomainmetadata"};
  for (std::string_view k : kKnown) {
    if (lower == k) return k;
  }
  return "other";
}

json Record(const std::string& qname, std::string_view qtype, std::string content, uint32_t ttl,
            int scope_mask) {
  json r = {{"qtype", qtype},
            {"qname", qname},
            {"content", std::move(content)},
            {"ttl", ttl},
            {"auth", 1}};
  if (scope_mask > 0) r["scopeMask"] = scope_mask;
  return r;
}

void AddressRecords(const std::vector<IpAddress>& addresses, const std::string& qname,
                    const std::string& qtype, uint32_t ttl, int scope_mask, json& out) {
  for (const IpAddress& a : addresses) {
    const std::string_view type = a.is_v4 ? "A" : "AAAA";
    if (qtype == "ANY" || qtype == type)
      out.push_back(Record(qname, type, a.ToString(), ttl, scope_mask));
  }
}

json DomainInfo(const ZoneConfig& zone) {
  return json{{"id", 1}, {"zone", zone.name}, {"kind", "native"}, {"serial", zone.soa_serial}};
}

// The client's subnet: real-remote (EDNS Client Subnet, or the resolver's address as a full
// prefix) when it parses and is not the empty prefix, else remote, else nothing known.
// *asked_zero: real-remote was the empty prefix, an ECS query that asks for no client subnet to
// be used (RFC 7871: its answer then has scope 0). *mapped: real-remote was an IPv4-mapped IPv6
// prefix (::ffff:a.b.c.d/L), located as IPv4 but asked in the IPv6 family, so the answer's scope
// must count IPv6 bits again.
Cidr ClientSubnet(const json& params, bool* asked_zero, bool* mapped) {
  *asked_zero = false;
  *mapped = false;
  const auto text = [&](const char* key) -> std::optional<std::string> {
    auto it = params.find(key);
    if (it == params.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
  };
  if (std::optional<std::string> real = text("real-remote")) {
    absl::StatusOr<Cidr> cidr = ParseCidr(*real, /*strict_host_bits=*/false);
    if (cidr.ok() && cidr->prefix_len > 0) {
      *mapped = cidr->network.is_v4 && real->find(':') != std::string::npos;
      return *cidr;
    }
    *asked_zero = cidr.ok();
  }
  if (std::optional<std::string> remote = text("remote")) {
    absl::StatusOr<IpAddress> ip = ParseIpAddress(*remote);
    if (ip.ok()) return Cidr{*ip, ip->bit_count()};
  }
  return Cidr{};  // 0.0.0.0/0: nobody in particular; the default location answers
}

}  // namespace

RemoteBackend::RemoteBackend(const GeoConfig& config, const ClientLocator& locator,
                             HealthSnapshot health, BackendObserver* observer)
    : config_(config), locator_(locator), health_(std::move(health)), observer_(observer) {}

BackendReply RemoteBackend::Handle(std::string_view body) const {
  try {
    if (body.size() > kMaxBodyBytes) {
      return BadRequest(observer_,
                        absl::StrCat("body of ", body.size(), " bytes is over the limit"));
    }
    const json request = common::ParseJsonText<json>(body);
    if (request.is_discarded()) {
      return BadRequest(observer_,
                        "body is not valid JSON (or holds a NUL byte or a repeated key)");
    }
    if (!request.is_object()) return BadRequest(observer_, "body is not a JSON object");
    auto method_it = request.find("method");
    if (method_it == request.end() || !method_it->is_string()) {
      return BadRequest(observer_, "\"method\" is missing or not a string");
    }
    const std::string method = Lower(method_it->get<std::string>());
    const std::string_view known = KnownMethod(method);
    if (observer_) observer_->OnRequest(known);

    static const json kNoParameters = json::object();
    auto params_it = request.find("parameters");
    const json& params =
        params_it != request.end() && params_it->is_object() ? *params_it : kNoParameters;

    if (method == "initialize") return Result(true);
    if (method == "getalldomains") return Result(json::array({DomainInfo(config_.zone)}));
    if (method == "getdomaininfo") {
      auto name = params.find("name");
      if (name != params.end() && name->is_string() &&
          name->get<std::string>().size() <= kQnameTextMax &&
          NormalizeDnsName(name->get<std::string>()) == config_.zone.name) {
        return Result(DomainInfo(config_.zone));
      }
      return Result(false);
    }
    if (method != "lookup") return Result(false);

    auto qname_it = params.find("qname");
    auto qtype_it = params.find("qtype");
    if (qname_it == params.end() || !qname_it->is_string() || qtype_it == params.end() ||
        !qtype_it->is_string()) {
      return BadRequest(observer_, "lookup needs string parameters qname and qtype");
    }
    const std::string& qname = qname_it->get_ref<const std::string&>();
    const std::string qtype = [&] {
      std::string t = qtype_it->get<std::string>();
      for (char& c : t) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      return t;
    }();
    if (qname.size() > kQnameTextMax) return Result(false);
    const std::optional<std::string> name = NormalizeDnsName(qname);
    if (!name) return Result(false);
    const ZoneConfig& zone = config_.zone;

    json records = json::array();
    if (*name == zone.name) {
      if (qtype == "ANY" || qtype == "SOA") {
        records.push_back(
            Record(qname, "SOA",
                   absl::StrCat(zone.soa_primary, " ", zone.soa_hostmaster, " ", zone.soa_serial,
                                " ", zone.soa_refresh_s, " ", zone.soa_retry_s, " ",
                                zone.soa_expire_s, " ", zone.soa_minimum_s),
                   zone.ttl_s, 0));
      }
      if (qtype == "ANY" || qtype == "NS") {
        for (const NameServerConfig& ns : zone.nameservers) {
          records.push_back(Record(qname, "NS", ns.name, zone.ttl_s, 0));
        }
      }
    }
    for (const NameServerConfig& ns : zone.nameservers) {
      if (ns.name == *name) AddressRecords(ns.addresses, qname, qtype, zone.ttl_s, 0, records);
    }
    if (*name == zone.service_name && (qtype == "ANY" || qtype == "A" || qtype == "AAAA")) {
      bool asked_zero = false, mapped = false;
      const Cidr client = ClientSubnet(params, &asked_zero, &mapped);
      absl::Status geoip_error;
      const ClientLocation where = locator_.Locate(client, &geoip_error);
      if (!geoip_error.ok() && observer_)
        observer_->OnGeoIpError(std::string(geoip_error.message()));
      const std::vector<bool> healthy = health_();
      std::vector<RegionView> views(config_.regions.size());
      for (size_t i = 0; i < views.size(); ++i) {
        views[i].location = config_.regions[i].location;
        views[i].healthy = i < healthy.size() && healthy[i];
      }
      const Decision decision = Decide(where.point, views, config_.decision_policy());
      // A last-resort answer is the same for every client: scope 0 lets resolvers share it. So is
      // the answer to a query with an empty client subnet (placed by the resolver's address):
      // before, it came back with the resolver's /32 (probe, 2026-12-04).
      // An IPv4-mapped client subnet was located as IPv4: its scope back in IPv6 bits (a /24
      // there would tell resolvers the answer holds for all of ::/24).
      int scope = decision.last_resort || asked_zero ? 0 : where.scope_prefix_len;
      if (mapped && scope > 0) scope += 96;
      for (size_t region : decision.regions) {
        AddressRecords(config_.regions[region].addresses, qname, qtype, decision.ttl_s, scope,
                       records);
      }
      if (observer_) observer_->OnAnswer(decision, where);
    }
    if (records.empty()) return Result(false);
    return Result(std::move(records));
  } catch (const std::exception& e) {
    // Not expected (every access above is type-checked); answer rather than take pdns down.
    return BadRequest(observer_, absl::StrCat("internal error: ", e.what()));
  }
}

}  // namespace meridian::geo
