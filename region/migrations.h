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

// The migrations that make a database's outbox stream: the database is new. In the same
// transaction ApplyMigrations marks the stream as new (NewStreamMarked); CheckDatabaseLife
// marks the new stream it gives a restored database too.
inline constexpr int kGlobalOutboxStreamVersion = 8;
inline constexpr int kShardOutboxStreamVersion = 10;

// Applies what is missing; returns the versions it applied (empty when up to date). Refuses
// (FailedPrecondition, naming the database and what it holds) a database whose recorded
// migrations are not `kind`'s: the other schema's, or some other one's.
absl::StatusOr<std::vector<int>> ApplyMigrations(PgPool& pool, SchemaKind kind);

// Whether the database's outbox stream was made (by ApplyMigrations, or anew by
// CheckDatabaseLife) and its mark not cleared since: true from that commit on, also across a
// start that stopped after it.
// REQUIRES: ApplyMigrations ran on `pool`.
absl::StatusOr<bool> NewStreamMarked(PgPool& pool);
// Clears the mark, once the start has recorded what it means (the write hold, region/app.cc).
absl::Status ClearNewStreamMark(PgPool& pool);
// Drops the database's resume points of the peers' streams (table replication_applied): a start
// with a new stream in any database does, in every database, before it clears the marks.
absl::Status ForgetResumePoints(PgPool& pool);

// Whether the database went back in time since the last start: restored from a backup to a
// point in time, or logically (into this cluster or another), or a standby promoted in its place
// (which may lack the primary's last commits), or ForgetDatabaseIdentity ran. Its outbox
// numbering and its cart dots went back with it, and so did its resume points of the peers'
// streams; peers hold records of it past them. Such a database gets a new life, as a rebuilt
// one: a new stream name, marked new (NewStreamMarked; the start then drops every database's
// resume points, ForgetResumePoints, and holds writes until the peers' state is in). Returns
// true when it did that; records the database's identity (table database_identity) either way.
// REQUIRES: ApplyMigrations ran on `pool`.
absl::StatusOr<bool> CheckDatabaseLife(PgPool& pool);
// `meridian-region --restored`, for a restore PostgreSQL cannot tell (a file copy of a stopped
// server put back as it was): the recorded identity is forgotten, so that the next
// CheckDatabaseLife gives the database a new life, at this start or, if it stops before, at the
// next one.
absl::Status ForgetDatabaseIdentity(PgPool& pool);
// What the database is now (CheckDatabaseLife's identity) and its outbox stream, as one line: a
// region server compares it on every new connection with what it was at the start.
std::string DatabaseIdentity(pqxx::transaction_base& tx);

}  // namespace meridian::region
