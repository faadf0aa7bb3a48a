#include "failover/drill_db.h"

#include <map>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"

namespace meridian::failover::drill {
namespace {

constexpr size_t kBatch = 500;

// "host=10.77.0.1 port=5432 ... dbname=x" -> "10.77.0.1:5432/x", for messages.
std::string Where(const std::string& dsn) {
  auto field = [&](const std::string& key) {
    size_t at = dsn.find(key + "=");
    if (at == std::string::npos) return std::string();
    size_t end = dsn.find(' ', at);
    return dsn.substr(at + key.size() + 1,
                      end == std::string::npos ? end : end - at - key.size() - 1);
  };
  return absl::StrCat(field("host"), ":", field("port"), "/", field("dbname"));
}

}  // namespace

absl::StatusOr<std::set<std::string>> OrdersPresent(const std::vector<std::string>& dsns,
                                                    const std::vector<std::string>& order_ids) {
  std::set<std::string> found;
  for (const std::string& dsn : dsns) {
    try {
      pqxx::connection conn(dsn + " connect_timeout=5");
      pqxx::read_transaction tx(conn);
      for (size_t start = 0; start < order_ids.size(); start += kBatch) {
        std::string in;
        for (size_t i = start; i < std::min(order_ids.size(), start + kBatch); ++i) {
          absl::StrAppend(&in, in.empty() ? "" : ",", tx.quote(order_ids[i]));
        }
        for (const auto& row :
             tx.exec("SELECT order_id FROM orders WHERE order_id IN (" + in + ")")) {
          found.insert(row[0].as<std::string>());
        }
      }
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("reading orders in ", Where(dsn), ": ", e.what()));
    }
  }
  return found;
}

absl::StatusOr<std::vector<OrderRow>> OrdersWithSkuPrefix(const std::vector<std::string>& dsns,
                                                          const std::string& sku_prefix) {
  std::vector<OrderRow> out;
  for (const std::string& dsn : dsns) {
    try {
      pqxx::connection conn(dsn + " connect_timeout=5");
      pqxx::read_transaction tx(conn);
      std::map<std::string, OrderRow> orders;
      pqxx::result r = tx.exec(
          "SELECT o.order_id, o.status, o.epoch, o.version, i.sku, i.quantity FROM orders o "
          "JOIN order_items i USING (order_id) WHERE o.order_id IN (SELECT order_id FROM "
          "order_items WHERE sku LIKE " +
          tx.quote(sku_prefix + "%") + ") ORDER BY o.order_id, i.sku");
      for (const auto& row : r) {
        OrderRow& o = orders[row[0].as<std::string>()];
        o.order_id = row[0].as<std::string>();
        o.status = row[1].as<std::string>();
        o.epoch = row[2].as<int64_t>();
        o.version = row[3].as<int64_t>();
        o.items.emplace_back(row[4].as<std::string>(), row[5].as<int64_t>());
      }
      for (auto& [id, o] : orders) out.push_back(std::move(o));
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("reading orders in ", Where(dsn), ": ", e.what()));
    }
  }
  return out;
}

}  // namespace meridian::failover::drill
