#include "failover/wire.h"

#include <cstdio>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/json_text.h"

namespace meridian::failover {

using Json = nlohmann::json;

std::string ObservationToJson(const Observation& o) {
  Json regions = Json::object();
  for (const auto& [name, r] : o.regions) {
    regions[name] = Json{{"healthy", r.healthy},
                         {"caught_up", r.caught_up},
                         {"fail_streak", r.fail_streak},
                         {"ok_streak", r.ok_streak},
                         {"reason", r.reason}};
  }
  return Json{{"from", o.from},
              {"incarnation", absl::StrFormat("%016x", o.incarnation)},
              {"seq", o.seq},
              {"regions", regions}}
      .dump(-1, ' ', false, Json::error_handler_t::replace);
}

namespace {

absl::Status Bad(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

absl::Status OnlyKeys(const Json& j, const std::string& path, const std::set<std::string>& keys) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!keys.count(it.key()))
      return Bad(path.empty() ? it.key() : path + "." + it.key(), "unknown field");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Observation> ObservationFromJson(std::string_view body) {
  if (body.size() > kMaxObservationBytes)
    return Bad("body", absl::StrCat("larger than ", kMaxObservationBytes, " bytes"));
  Json j = common::ParseJsonText<Json>(body);
  if (j.is_discarded() || !j.is_object()) return Bad("body", "not a JSON object");
  if (auto st = OnlyKeys(j, "", {"from", "incarnation", "seq", "regions"}); !st.ok()) return st;
  Observation o;
  if (!j.contains("from") || !j["from"].is_string()) return Bad("from", "must be a string");
  o.from = j["from"].get<std::string>();
  if (!j.contains("incarnation") || !j["incarnation"].is_string())
    return Bad("incarnation", "must be a string of 16 hex digits");
  const std::string inc = j["incarnation"].get<std::string>();
  if (inc.size() != 16 || inc.find_first_not_of("0123456789abcdef") != std::string::npos)
    return Bad("incarnation", "must be 16 lowercase hex digits");
  o.incarnation = std::stoull(inc, nullptr, 16);
  if (!j.contains("seq") || !j["seq"].is_number_unsigned())
    return Bad("seq", "must be a non-negative integer");
  o.seq = j["seq"].get<uint64_t>();
  if (!j.contains("regions") || !j["regions"].is_object())
    return Bad("regions", "must be an object");
  if (j["regions"].size() > 64) return Bad("regions", "at most 64 regions");
  for (auto it = j["regions"].begin(); it != j["regions"].end(); ++it) {
    const std::string p = "regions." + it.key();
    const Json& r = it.value();
    if (!r.is_object()) return Bad(p, "must be an object");
    if (auto st = OnlyKeys(r, p, {"healthy", "caught_up", "fail_streak", "ok_streak", "reason"});
        !st.ok()) {
      return st;
    }
    RegionReport rep;
    for (const char* b : {"healthy", "caught_up"}) {
      if (!r.contains(b) || !r[b].is_boolean()) return Bad(p + "." + b, "must be true or false");
    }
    rep.healthy = r["healthy"].get<bool>();
    rep.caught_up = r["caught_up"].get<bool>();
    for (const char* n : {"fail_streak", "ok_streak"}) {
      if (!r.contains(n) || !r[n].is_number_unsigned() || r[n].get<uint64_t>() > UINT32_MAX)
        return Bad(p + "." + n, "must be an integer 0..4294967295");
    }
    rep.fail_streak = r["fail_streak"].get<uint32_t>();
    rep.ok_streak = r["ok_streak"].get<uint32_t>();
    if (rep.healthy && rep.fail_streak != 0)
      return Bad(p + ".fail_streak", "must be 0 when healthy");
    if (!rep.healthy && rep.ok_streak != 0)
      return Bad(p + ".ok_streak", "must be 0 when unhealthy");
    if (!rep.caught_up && rep.ok_streak != 0)
      return Bad(p + ".ok_streak", "must be 0 when not caught up");
    if (rep.caught_up && !rep.healthy)
      return Bad(p + ".caught_up", "cannot be true when unhealthy");
    if (r.contains("reason")) {
      if (!r["reason"].is_string()) return Bad(p + ".reason", "must be a string");
      rep.reason = r["reason"].get<std::string>();
      if (rep.reason.size() > kMaxReasonBytes)
        return Bad(p + ".reason", absl::StrCat("longer than ", kMaxReasonBytes, " bytes"));
    }
    o.regions[it.key()] = std::move(rep);
  }
  return o;
}

std::string LogValue(std::string_view v) {
  bool plain = !v.empty();
  for (char c : v) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '/' || c == ',' || c == '@' ||
                    c == '+' || c == '-';
    plain = plain && ok;
  }
  if (plain) return std::string(v);
  std::string out = "\"";
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", u);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace meridian::failover
