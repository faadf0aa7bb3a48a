// Operator views of the multi-region coordination (issue 5): order leases and inventory rights.

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "crdt/codec.h"
#include "region/app_impl.h"
#include "region/documents.h"
#include "services/auth.h"
#include "services/domain.h"

namespace meridian::region {

HttpResponse RegionApp::Impl::GetLeases(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  const auto now = LeaseTable::Clock::now();
  Json groups = Json::array();
  if (!leases->managed()) {
    groups.push_back(Json{{"group", config.replica_id},
                          {"group_region", config.name},
                          {"epoch", 1},
                          {"owner", config.name},
                          {"held_here", true},
                          {"valid_for_ms", nullptr}});
  }
  for (const auto& [group, e] : leases->Snapshot()) {
    const int64_t left =
        std::chrono::duration_cast<std::chrono::milliseconds>(e.usable_until - now).count();
    groups.push_back(
        Json{{"group", group},
             {"group_region", RegionName(group)},
             {"epoch", e.grant.epoch},
             {"owner", e.grant.owner ? Json(RegionName(e.grant.owner)) : Json()},
             {"held_here", e.grant.usable && left > 0},
             {"valid_for_ms", e.grant.usable && left > 0 ? Json(left) : Json()},
             {"updated_ms_ago",
              std::chrono::duration_cast<std::chrono::milliseconds>(now - e.updated).count()}});
  }
  return HttpResponse::Json(
      200,
      Json{{"region", config.name}, {"managed", leases->managed()}, {"groups", groups}}.dump());
}

HttpResponse RegionApp::Impl::GetRights(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  const std::string sku = req.params["sku"];
  if (auto st = services::ValidateSku(sku); !st.ok()) return ProblemFromStatus(st);
  crdt::Inventory inv(config.replica_id);
  bool found = false;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    pqxx::result r = tx.exec("SELECT state FROM inventory WHERE sku = " + tx.quote(sku));
    if (r.empty()) return;
    pqxx::binarystring bytes(r[0][0]);
    auto decoded =
        crdt::DecodeInventory(std::string_view(bytes.get(), bytes.size()), config.replica_id);
    if (!decoded.ok()) throw AbortTx{absl::DataLossError(std::string(decoded.status().message()))};
    inv = *std::move(decoded);
    found = true;
  });
  if (!st.ok()) return ProblemFromStatus(st);
  if (!found) return ProblemFromStatus(absl::NotFoundError(absl::StrCat("no stock for ", sku)));
  Json regions = Json::array();
  const crdt::BoundedCounter* bc = inv.Find(sku);
  if (bc != nullptr) {
    for (crdt::ReplicaId r : bc->Replicas()) {
      uint64_t given = 0, received = 0;
      for (const auto& t : bc->transfers()) {
        if (t.from == r && t.to != r) given += t.units;
        if (t.to == r && t.from != r) received += t.units;
      }
      regions.push_back(Json{{"replica_id", r},
                             {"region", RegionName(r)},
                             {"rights", bc->Rights(r)},
                             {"transferred_out", given},
                             {"transferred_in", received}});
    }
  }
  uint64_t waiting = 0;
  if (auto w = rights_signals.Waiting(); w.count(sku)) waiting = w[sku];
  return HttpResponse::Json(200, Json{{"sku", sku},
                                      {"as_seen_by", config.name},
                                      {"available", inv.Available(sku)},
                                      {"regions", regions},
                                      {"waiting_here", waiting}}
                                     .dump());
}

}  // namespace meridian::region

namespace meridian::region {

namespace {
// The rows a listing query matched before its LIMIT: its `column` of count(*) OVER () (the same in
// every row), 0 when it matched none.
int64_t WholeCount(const pqxx::result& rows, int column) {
  return rows.empty() ? 0 : rows[0][column].as<int64_t>();
}
}  // namespace

// Residency audit: what this region holds per residency, and every record whose residency does
// not allow this region's jurisdiction, or whose tag differs from its owner's profile here (a
// cart or order tagged more widely than the customer is pinned could have been shipped where it
// must not go): there must be none; meridianctl residency audit checks every region. A cart or
// order tagged "any" whose owner has no profile here cannot be checked here: it is listed as
// `unverified` (with its owner's id), and meridianctl asks the other regions for that owner's
// profile (ResidencyProfiles): a copy of a pinned customer's record that reached a region under
// a wrong "any" tag, without her profile, is found that way. Reads every shard; bounded output
// (at most 1000 violations and 1000 unverified records listed, each with its full count).
HttpResponse RegionApp::Impl::ResidencyAudit(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  Json tables = Json::object();
  Json violations = Json::array();
  int64_t violation_count = 0;
  for (const char* table : {"users", "carts", "orders"}) {
    const std::string key = std::string(table) == "orders" ? "order_id" : "user_id";
    std::map<std::string, int64_t> counts;
    for (auto& shard : shards) {
      absl::Status st = shard->Run([&](pqxx::work& tx) {
        for (const auto& r :
             tx.exec(std::string("SELECT residency, count(*) FROM ") + table + " GROUP BY 1")) {
          counts[r[0].as<std::string>()] += r[1].as<int64_t>();
        }
        const pqxx::result bad = tx.exec("SELECT " + key + ", residency, count(*) OVER () FROM " +
                                         table + " WHERE residency <> 'any' AND residency <> " +
                                         tx.quote(config.jurisdiction) + " ORDER BY 1 LIMIT 1000");
        violation_count += WholeCount(bad, 2);
        for (const auto& r : bad) {
          if (violations.size() < 1000) {
            violations.push_back(Json{{"table", table},
                                      {"key", r[0].as<std::string>()},
                                      {"residency", r[1].as<std::string>()},
                                      {"database", shard->name()},
                                      {"kind", "not_allowed_here"}});
          }
        }
      });
      if (!st.ok()) return ProblemFromStatus(st);
    }
    tables[table] = counts;
  }
  Json unverified = Json::array();
  int64_t unverified_count = 0;
  for (auto& shard : shards) {
    absl::Status st = shard->Run([&](pqxx::work& tx) {
      const pqxx::result differs = tx.exec(
          "SELECT t, k, r, p, count(*) OVER () FROM ((SELECT 'carts' AS t, c.user_id AS k, "
          "c.residency AS r, u.residency AS p FROM carts c JOIN users u USING (user_id) WHERE "
          "c.residency <> u.residency) UNION ALL (SELECT 'orders', o.order_id, o.residency, "
          "u.residency FROM orders o JOIN users u ON u.user_id = o.user_id WHERE o.residency <> "
          "u.residency)) s ORDER BY 1, 2 LIMIT 1000");
      violation_count += WholeCount(differs, 4);
      for (const auto& r : differs) {
        if (violations.size() < 1000) {
          violations.push_back(Json{{"table", r[0].as<std::string>()},
                                    {"key", r[1].as<std::string>()},
                                    {"residency", r[2].as<std::string>()},
                                    {"profile_residency", r[3].as<std::string>()},
                                    {"database", shard->name()},
                                    {"kind", "differs_from_profile"}});
        }
      }
      // Tagged "any", no profile of the owner here: nothing to compare the tag with.
      const pqxx::result any = tx.exec(
          "SELECT t, k, u, count(*) OVER () FROM ((SELECT 'carts' AS t, c.user_id AS k, "
          "c.user_id AS u FROM carts c WHERE c.residency = 'any' AND NOT EXISTS (SELECT 1 "
          "FROM users p WHERE p.user_id = c.user_id)) UNION ALL (SELECT 'orders', o.order_id, "
          "o.user_id FROM orders o WHERE o.residency = 'any' AND NOT EXISTS (SELECT 1 FROM "
          "users p WHERE p.user_id = o.user_id))) s ORDER BY 1, 2 LIMIT 1000");
      unverified_count += WholeCount(any, 3);
      for (const auto& r : any) {
        if (unverified.size() < 1000) {
          unverified.push_back(Json{{"table", r[0].as<std::string>()},
                                    {"key", r[1].as<std::string>()},
                                    {"user_id", r[2].as<std::string>()},
                                    {"database", shard->name()}});
        }
      }
    });
    if (!st.ok()) return ProblemFromStatus(st);
  }
  return HttpResponse::Json(200, Json{{"region", config.name},
                                      {"jurisdiction", config.jurisdiction},
                                      {"tables", tables},
                                      {"violations", violations},
                                      {"violation_count", violation_count},
                                      {"unverified", unverified},
                                      {"unverified_count", unverified_count},
                                      {"checked_at", UnixNowS()}}
                                     .dump());
}

// For meridianctl's residency audit: the residency of each of these owners' profiles held here
// (owners without one are left out). Operator only; at most 1000 ids, each a user id, or 422 and
// nothing read.
HttpResponse RegionApp::Impl::ResidencyProfiles(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  auto body = ParseBody(req);
  if (!body.ok()) return ProblemFromStatus(body.status());
  if (!body->is_object() || !body->contains("user_ids") || !(*body)["user_ids"].is_array()) {
    return ProblemFromStatus(Unprocessable("user_ids: an array of user ids is required"));
  }
  const Json& ids = (*body)["user_ids"];
  if (ids.size() > 1000) {
    return ProblemFromStatus(
        Unprocessable(absl::StrCat("user_ids: at most 1000 per request, got ", ids.size())));
  }
  std::map<PgPool*, std::vector<std::string>> by_shard;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].is_string() || !services::IsUserId(ids[i].get<std::string>())) {
      return ProblemFromStatus(Unprocessable(absl::StrCat("user_ids[", i, "]: not a user id")));
    }
    const std::string id = ids[i].get<std::string>();
    by_shard[&ShardFor(id)].push_back(id);
  }
  Json profiles = Json::object();
  for (auto& entry : by_shard) {
    const std::vector<std::string>& list = entry.second;  // a lambda cannot capture a binding
    absl::Status st = entry.first->Run([&](pqxx::work& tx) {
      std::string in;
      for (const auto& id : list) absl::StrAppend(&in, in.empty() ? "" : ", ", tx.quote(id));
      for (const auto& r :
           tx.exec("SELECT user_id, residency FROM users WHERE user_id IN (" + in + ")")) {
        profiles[r[0].as<std::string>()] = r[1].as<std::string>();
      }
    });
    if (!st.ok()) return ProblemFromStatus(st);
  }
  return HttpResponse::Json(
      200,
      Json{{"region", config.name}, {"jurisdiction", config.jurisdiction}, {"profiles", profiles}}
          .dump());
}

}  // namespace meridian::region
