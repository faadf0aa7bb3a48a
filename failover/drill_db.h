#pragma once

// The drill's reads of the regions' PostgreSQL shard databases (the DSNs of region.yaml): which
// acknowledged orders a region holds, and every order carrying the drill's scarce SKUs. Read
// only. libpqxx errors are caught here and returned as Status naming the database.

#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "failover/drill_analysis.h"

namespace meridian::failover::drill {

// The ids among `order_ids` present in any of `dsns` (queried in batches of 500).
[[nodiscard]] absl::StatusOr<std::set<std::string>> OrdersPresent(
    const std::vector<std::string>& dsns, const std::vector<std::string>& order_ids);

// Every order with an item whose SKU starts with `sku_prefix`, with all its items, from `dsns`.
[[nodiscard]] absl::StatusOr<std::vector<OrderRow>> OrdersWithSkuPrefix(
    const std::vector<std::string>& dsns, const std::string& sku_prefix);

}  // namespace meridian::failover::drill
