#include "region/pg_pool.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace meridian::region {

namespace {
constexpr absl::string_view kDatabaseErrorPayload = "type.meridian.dev/database-error";
// How many connections Create opens at once.
constexpr size_t kConnectParallelism = 4;
}  // namespace

absl::Status TagDatabaseError(absl::Status s) {
  if (!s.ok()) s.SetPayload(kDatabaseErrorPayload, absl::Cord("1"));
  return s;
}

bool IsDatabaseError(const absl::Status& s) {
  return s.GetPayload(kDatabaseErrorPayload).has_value();
}

absl::Status StatusFromPqxx(const std::exception& e, const std::string& context) {
  return TagDatabaseError([&] {
    std::string what = absl::StrCat(context, ": ", e.what());
    if (dynamic_cast<const pqxx::unique_violation*>(&e)) return absl::AlreadyExistsError(what);
    if (dynamic_cast<const pqxx::foreign_key_violation*>(&e) ||
        dynamic_cast<const pqxx::check_violation*>(&e) ||
        dynamic_cast<const pqxx::not_null_violation*>(&e)) {
      return absl::FailedPreconditionError(what);
    }
    if (dynamic_cast<const pqxx::in_doubt_error*>(&e)) return absl::UnknownError(what);
    if (dynamic_cast<const pqxx::broken_connection*>(&e)) return absl::UnavailableError(what);
    if (dynamic_cast<const pqxx::transaction_rollback*>(&e)) return absl::AbortedError(what);
    if (dynamic_cast<const pqxx::data_exception*>(&e)) return absl::InvalidArgumentError(what);
    // libpqxx refusing a value before it reaches the server (e.g. quoting text that is not valid in
    // the connection's encoding): the validators should have caught it, but it is the client's
    // input, not our failure.
    if (dynamic_cast<const pqxx::argument_error*>(&e)) return absl::InvalidArgumentError(what);
    return absl::InternalError(what);
  }());
}

absl::StatusOr<std::unique_ptr<PgPool>> PgPool::Create(Options options) {
  if (options.size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("postgres ", options.name, ": pool size ", options.size, " is below 1"));
  }
  std::unique_ptr<PgPool> pool(new PgPool(std::move(options)));
  // The first connection alone: a database that cannot be reached fails with one error.
  auto first = pool->Connect();
  if (!first.ok()) return first.status();
  pool->idle_.push_back(*std::move(first));
  // The rest side by side, a few at a time: each one costs the server a backend start (about
  // 15 ms here), which a region of several pools otherwise pays one after another at every start.
  const int at_start = pool->options_.open_at_start > 0
                           ? std::min(pool->options_.open_at_start, pool->options_.size)
                           : pool->options_.size;
  const size_t rest = static_cast<size_t>(at_start - 1);
  std::vector<absl::StatusOr<std::unique_ptr<pqxx::connection>>> opened(rest);
  std::atomic<size_t> next{0};
  std::vector<std::thread> openers;
  for (size_t t = 0; t < std::min<size_t>(rest, kConnectParallelism); ++t) {
    openers.emplace_back([&] {
      for (size_t i = next++; i < rest; i = next++) opened[i] = pool->Connect();
    });
  }
  for (std::thread& t : openers) t.join();
  for (auto& c : opened) {
    if (!c.ok()) return c.status();
    pool->idle_.push_back(*std::move(c));
  }
  return pool;
}

PgPool::~PgPool() = default;

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Connect() const {
  try {
    auto c = std::make_unique<pqxx::connection>(options_.dsn);
    // Never an asynchronous commit: one returns before its WAL is written, so a PostgreSQL crash
    // can lose a commit that clients and peers already saw. The outbox rows shipped from it
    // would then live on at the peers, and its seqs be taken again by new rows that no peer
    // ever receives (their marks are past them). A server set to `off` gets `on` for our
    // sessions; any other setting (local, remote_write, remote_apply) is the operator's.
    pqxx::nontransaction(*c).exec(
        "SELECT set_config('synchronous_commit', CASE current_setting('synchronous_commit') WHEN "
        "'off' THEN 'on' ELSE current_setting('synchronous_commit') END, false)");
    if (connect_check_) {
      if (absl::Status checked = connect_check_(*c); !checked.ok()) return checked;
    }
    return c;
  } catch (const std::exception& e) {
    return TagDatabaseError(absl::UnavailableError(
        absl::StrCat("postgres ", options_.name, ": cannot connect: ", e.what())));
  }
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Acquire(int wait_ms) {
  if (wait_ms < 0) wait_ms = options_.acquire_timeout_ms;
  std::unique_lock<std::mutex> lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  while (idle_.empty()) {
    if (!retired_.ok()) return retired_;  // Recheck: the pool keeps no connection
    // A slot freed by a dropped (broken) connection is refilled here, lazily.
    if (in_use_ + static_cast<int>(idle_.size()) < options_.size) {
      ++in_use_;
      lock.unlock();
      auto fresh = Connect();
      if (!fresh.ok()) {
        lock.lock();
        --in_use_;
        cv_.notify_one();
      }
      return fresh;
    }
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty()) {
      // The server is overloaded (503), not the client over its quota (429): the caller did
      // nothing wrong and may retry shortly or at another region.
      return absl::UnavailableError(absl::StrCat(
          "postgres ", options_.name, ": no free connection within ", wait_ms, " ms (pool of ",
          options_.size, "); the region is overloaded, retry shortly"));
    }
  }
  auto c = std::move(idle_.back());
  idle_.pop_back();
  ++in_use_;
  return c;
}

void PgPool::Release(std::unique_ptr<pqxx::connection> c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
    if (c && retired_.ok()) idle_.push_back(std::move(c));
  }
  cv_.notify_one();
}

absl::Status PgPool::Recheck() {
  if (!connect_check_) return absl::OkStatus();
  auto conn = Acquire(kRecheckWaitMs);
  if (!conn.ok()) return conn.status();
  std::unique_ptr<pqxx::connection> c = *std::move(conn);
  absl::Status checked;
  try {
    checked = connect_check_(*c);
  } catch (const std::exception& e) {
    // The connection, not the database, failed: it is dropped, and nothing is retired.
    Release(nullptr);
    return StatusFromPqxx(e, absl::StrCat("postgres ", options_.name, ": rechecking"));
  }
  if (checked.ok()) {
    Release(std::move(c));
    return checked;
  }
  std::vector<std::unique_ptr<pqxx::connection>> closing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    retired_ = checked;
    closing.swap(idle_);
  }
  Release(nullptr);
  cv_.notify_all();  // callers waiting for a connection get the check's error now
  return checked;
}

int PgPool::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

absl::Status PgPool::Run(const std::function<void(pqxx::work&)>& fn, bool serializable) {
  return WithConnection([&](pqxx::connection& c, bool& body_started) {
    pqxx::work tx(c);
    if (serializable) tx.exec0("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    body_started = true;
    fn(tx);
    tx.commit();
  });
}

absl::Status PgPool::RunAutocommit(const std::function<void(pqxx::nontransaction&)>& fn) {
  return WithConnection([&](pqxx::connection& c, bool& body_started) {
    pqxx::nontransaction tx(c);
    // Each of fn's statements commits as it is sent: from the first one on, nothing is retried.
    body_started = true;
    fn(tx);
  });
}

absl::Status PgPool::ReadAutocommit(const std::function<void(pqxx::nontransaction&)>& fn) {
  return WithConnection([&](pqxx::connection& c, bool& /*body_started*/) {
    pqxx::nontransaction tx(c);
    fn(tx);  // reads only: made again after a broken connection, whatever it had sent
  });
}

absl::Status PgPool::WithConnection(
    const std::function<void(pqxx::connection&, bool& body_started)>& fn) {
  for (int attempt = 0;; ++attempt) {
    auto conn = Acquire();
    if (!conn.ok()) return conn.status();
    std::unique_ptr<pqxx::connection> c = *std::move(conn);
    absl::Status result;
    bool retry = false;
    // A pooled connection whose server went away (a PostgreSQL restart) still looks open until it
    // is used: it fails on the transaction's start, before any of fn's statements was sent. That
    // is retried once, on a freshly opened connection in the same slot (another idle one may be
    // just as stale); a failure from fn on is not, as a statement or COMMIT may have run.
    for (bool reconnected = false;;) {
      bool body_started = false;
      result = absl::OkStatus();
      try {
        if (!c->is_open()) throw pqxx::broken_connection("connection closed");
        fn(*c, body_started);
      } catch (const AbortTx& abort) {
        result = abort.status;
      } catch (const pqxx::transaction_rollback& e) {  // serialization failure, deadlock
        retry = attempt < options_.max_retries;
        result = StatusFromPqxx(e, absl::StrCat("postgres ", options_.name));
      } catch (const pqxx::broken_connection& e) {
        result = StatusFromPqxx(e, absl::StrCat("postgres ", options_.name));
        c.reset();  // dropped; Acquire opens a new one when the slot is next needed
        if (!body_started && !reconnected) {
          reconnected = true;
          spdlog::info("event=pg_reconnect pool={} reason=\"{}\"", options_.name, e.what());
          auto fresh = Connect();
          if (fresh.ok()) {
            c = *std::move(fresh);
            continue;
          }
          spdlog::warn("event=pg_reconnect_failed pool={} status=\"{}\"", options_.name,
                       fresh.status().ToString());
        }
      } catch (const std::exception& e) {
        result = StatusFromPqxx(e, absl::StrCat("postgres ", options_.name));
      }
      break;
    }
    // A connection lost in some other way (an in-doubt COMMIT, a server that ended the session
    // with an error) goes too: pooled, it would fail the next request that draws it.
    if (c && !c->is_open()) c.reset();
    Release(std::move(c));
    if (!retry) return result;
    spdlog::debug("event=pg_retry pool={} attempt={} status={}", options_.name, attempt + 1,
                  result.ToString());
  }
}

bool PgPool::Ping() {
  std::unique_lock<std::timed_mutex> lock(ping_mu_, std::chrono::seconds(2));
  if (!lock.owns_lock()) return false;
  // Two tries: the connection kept from the last probe may be stale after a server restart.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!ping_conn_ || !ping_conn_->is_open()) {
      auto fresh = Connect();
      if (!fresh.ok()) return false;
      ping_conn_ = *std::move(fresh);
    }
    try {
      pqxx::nontransaction(*ping_conn_).exec1("SELECT 1");
      return true;
    } catch (const pqxx::broken_connection&) {
      ping_conn_.reset();
    } catch (const std::exception&) {
      return false;
    }
  }
  return false;
}

}  // namespace meridian::region
