#pragma once

// Versioned SQL migrations, applied at start. Each runs in its own transaction together with the
// row that records it in schema_migrations, under an advisory lock so that two processes starting
// at once do not race; applying twice is a no-op.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "region/pg_pool.h"

namespace meridian::region {

enum class SchemaKind { kGlobal, kShard };

struct Migration {
  int version;
  const char* name;
  const char* sql;
};

const std::vector<Migration>& Migrations(SchemaKind kind);

// The migrations that make a database's outbox stream: applied at a start, the database is new.
inline constexpr int kGlobalOutboxStreamVersion = 8;
inline constexpr int kShardOutboxStreamVersion = 10;

// Applies what is missing; returns the versions it applied (empty when up to date).
absl::StatusOr<std::vector<int>> ApplyMigrations(PgPool& pool, SchemaKind kind);

}  // namespace meridian::region
