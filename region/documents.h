#pragma once

// The SQL that stores the region's CRDT documents (carts in the user's shard, inventory in the
// global database) together with their outbox deltas, for the region's handlers and for tools
// that write exactly as the region does (the replication benchmark's load driver).

#include <pqxx/pqxx>

#include <string>
#include <string_view>

#include "crdt/cart.h"
#include "crdt/inventory.h"

namespace meridian::region {

// "SELECT pg_advisory_xact_lock(...);" for one document (a cart, a SKU's inventory): every
// read-merge-write of a CRDT row takes it first, so that two writers never both see "no row yet"
// and the second upsert overwrites the first's join. Take several in key order.
// `shared`: the lock's shared form (many holders at once, none while it is held exclusively).
std::string DocumentLockSql(pqxx::work& tx, std::string_view kind, const std::string& key,
                            bool shared = false);

// The ON CONFLICT clause of every upsert of a cart row (`INSERT INTO carts (user_id, state,
// residency, version) VALUES ...`): the new state and version, and a residency that only ever
// narrows. Within a region a cart's tag is `any` or this region's jurisdiction; once a change
// tagged with the jurisdiction is in the document, the row ships under that tag (a state
// transfer or the survivors' exchange reads it), whoever wrote first. Two accounts can share a
// user id (one e-mail registered in two regions that could not see each other), and the first
// writer's `any` would otherwise carry a pinned customer's lines to every region.
inline constexpr const char* kCartUpsertConflictSql =
    " ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version, "
    "residency = CASE WHEN carts.residency = 'any' THEN EXCLUDED.residency ELSE carts.residency "
    "END, updated_at = now()";

// Saves the cart's state and its delta (to the outbox, tagged with `residency`). A state past
// `max_state_bytes` (0: no limit) aborts the transaction (AbortTx, 422).
std::string SaveCartSql(pqxx::work& tx, const std::string& user_id, const std::string& residency,
                        const crdt::Cart& cart, const crdt::Cart& delta, int64_t version,
                        crdt::ReplicaId origin, size_t max_state_bytes = 0);
void SaveCart(pqxx::work& tx, const std::string& user_id, const std::string& residency,
              const crdt::Cart& cart, const crdt::Cart& delta, int64_t version,
              crdt::ReplicaId origin, size_t max_state_bytes = 0);

// The CRDT replica id ("actor") that a region's local cart changes take their dots from: the
// region's replica id (1..255) in the low 8 bits and, above it, 24 bits (never all zero) of the
// outbox stream id of the cart's shard database. That id is drawn afresh whenever the database is
// made, so a region whose databases were rebuilt counts its cart dots under a new actor: it can
// never hand out a dot it used in an earlier life, which a peer that saw it would drop as a
// duplicate (and whose own copy of the old change it would drop in turn: the carts would never
// converge). Riak's vnode epochs answer the same problem. REQUIRES: 1 <= replica_id <= 255.
crdt::ReplicaId CartActor(uint32_t replica_id, std::string_view stream_id);

// Saves the SKU's inventory document and its delta.
std::string SaveInventorySql(pqxx::work& tx, const std::string& sku, const crdt::Inventory& state,
                             const crdt::Inventory& delta, crdt::ReplicaId origin);
void SaveInventory(pqxx::work& tx, const std::string& sku, const crdt::Inventory& state,
                   const crdt::Inventory& delta, crdt::ReplicaId origin);
// The outbox row of a stock delta alone (SaveInventorySql's second statement).
std::string InventoryOutboxSql(pqxx::work& tx, const std::string& sku, const crdt::Inventory& delta,
                               crdt::ReplicaId origin);
crdt::Inventory LoadInventoryForUpdate(pqxx::work& tx, const std::string& sku,
                                       crdt::ReplicaId replica);

}  // namespace meridian::region
