#pragma once

// A fixed-size pool of libpqxx connections to one PostgreSQL database (a shard), and the one way
// code runs SQL: Run(fn) executes fn(pqxx::work&) in a transaction, commits, and turns libpqxx
// exceptions into absl::Status with context. Serialization failures and deadlocks are retried a
// bounded number of times. A connection found broken when its transaction starts (a pooled one
// whose server restarted) is replaced and the call made again once, on a new connection; broken
// later, it is replaced and the call fails with Unavailable (the caller's transaction may or may
// not have committed only for in-doubt commits, reported as Unknown; that connection is replaced
// too). RunAutocommit has no start of its own: its calls are not made again (ReadAutocommit's,
// reads only, are). No free connection within acquire_timeout_ms is Unavailable too (overload).
// Thread-safe.

#include <pqxx/pqxx>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace meridian::region {

// Thrown inside a Run() body to abort the transaction with a specific Status (validation failure,
// conflict, not found). Caught by Run() and returned; never escapes the pool.
struct AbortTx {
  absl::Status status;
};

class PgPool {
 public:
  struct Options {
    std::string name;  // for logs and metrics, e.g. "shard-1"
    std::string dsn;
    int size = 8;
    // Connections Create opens (0: all `size`); the rest open when first needed.
    int open_at_start = 0;
    int acquire_timeout_ms = 5000;
    int max_retries = 5;  // serialization failures and deadlocks
  };

  // Opens the connections of open_at_start (all of them by default) up front: a region that
  // cannot reach a shard, or whose server cannot take them, does not start.
  static absl::StatusOr<std::unique_ptr<PgPool>> Create(Options options);
  ~PgPool();

  // Runs `fn` in a read-write transaction (READ COMMITTED unless `serializable`).
  absl::Status Run(const std::function<void(pqxx::work&)>& fn, bool serializable = false);

  // Runs `fn` outside a transaction block: each statement commits on its own (one round trip per
  // statement, no BEGIN/COMMIT). For reads that need no snapshot across statements.
  absl::Status RunAutocommit(const std::function<void(pqxx::nontransaction&)>& fn);
  // As RunAutocommit, for a `fn` that only reads (and resets what it fills in when it starts):
  // a connection that breaks at any point of it is replaced and `fn` made again once, as Run
  // does when a transaction's start fails. So the first read after a PostgreSQL restart does not
  // fail on a stale pooled connection.
  absl::Status ReadAutocommit(const std::function<void(pqxx::nontransaction&)>& fn);

  // Opens a fresh connection (outside the pool) for a one-off job such as migrations.
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Connect() const;
  // Runs on every connection opened from now on (the pool's, the probe's, Connect's) before it
  // is used: an error drops the connection and is what the call that wanted it gets. Set once,
  // before the pool is shared between threads. The region server's checks that the database is
  // still the one it started on (a restore or a failover under it: region/app.cc).
  void SetConnectCheck(std::function<absl::Status(pqxx::connection&)> check) {
    connect_check_ = std::move(check);
  }
  // Runs the connect check again, on a connection of the pool (waiting for a free one for at
  // most kRecheckWaitMs: a pool busy that long is rechecked at the next call, and a server
  // stopping does not wait for it). A pooled connection does not break when the database behind a
  // pooler (pgbouncer) fails over, nor when another process changes what the check reads, so only
  // this sees it. When the check refuses, the pool is retired: its connections are closed (busy
  // ones when they come back), and every later call fails at once with the check's error. A failure
  // to get or use a connection is returned and retires nothing. OK with no check set.
  absl::Status Recheck();
  static constexpr int kRecheckWaitMs = 250;

  [[nodiscard]] const std::string& name() const { return options_.name; }
  [[nodiscard]] int size() const { return options_.size; }
  [[nodiscard]] int in_use() const;
  // True if a trivial query succeeds now. It runs on a connection of the probe's own, outside
  // the pool (opened at the first call, and again after it broke): readiness asks whether the
  // server answers, and a pool whose connections are all busy under load has it answering. A
  // ping through the pool waited for a free connection, up to acquire_timeout_ms, and a region
  // busy under load read as unreachable to probers that give up after 400 ms.
  [[nodiscard]] bool Ping();

 private:
  explicit PgPool(Options options) : options_(std::move(options)) {}
  // Waits up to `wait_ms` for a connection (-1: acquire_timeout_ms).
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Acquire(int wait_ms = -1);
  // Acquire, run, release; failures become a Status; serialization failures are retried, and so
  // is, once and on a new connection, a broken connection before fn set `body_started` (nothing
  // of the caller's was sent yet).
  absl::Status WithConnection(const std::function<void(pqxx::connection&, bool& body_started)>& fn);
  void Release(std::unique_ptr<pqxx::connection> c);

  Options options_;
  std::function<absl::Status(pqxx::connection&)> connect_check_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
  int in_use_ = 0;
  absl::Status retired_;  // not OK once Recheck's check refused: every call's answer
  // One probe at a time on ping_conn_. A probe that waited 2 s for the one before it (stuck
  // connecting, or on a server that does not answer) answers false, and does not pile up.
  std::timed_mutex ping_mu_;
  std::unique_ptr<pqxx::connection> ping_conn_;
};

// Turns the libpqxx exception in flight into a Status (call from a catch block), tagged as a
// database error.
absl::Status StatusFromPqxx(const std::exception& e, const std::string& context);

// A status made from a database's error carries a payload saying so: its message (the server's
// text: hosts, ports, tables, constraints, key values) is for logs and operators, not for
// customers (ProblemFromStatus answers them with a fixed text per code).
absl::Status TagDatabaseError(absl::Status s);
[[nodiscard]] bool IsDatabaseError(const absl::Status& s);

}  // namespace meridian::region
