// Background jobs: the reservation sweep and the notification worker.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "region/app_impl.h"
#include "services/orders.h"

namespace meridian::region {

absl::StatusOr<SweepCounts> RegionApp::Impl::Sweep() {
  struct Expired {
    std::string id;       // the reservation's, which is its order's
    std::string user_id;  // the order's customer
    std::string version;  // the row's xmin: any change to it since (a cancel's mark) shows
    // Marked due (expires_at -infinity) within its order's payment window: the order, if it
    // still awaits payment, is not expired (see below).
    bool early = false;
  };
  std::vector<Expired> expired;
  // A release deferred by a stock hold is due at -infinity (ReleaseReservation): the first sweep
  // after the hold takes those first, and the sweeps during the hold pass over them (they could
  // only defer them again, and the oldest 500 would hold back every newer expiry).
  const std::string pass_over_deferred = StockWritesHeld() ? "expires_at > '-infinity' AND " : "";
  constexpr size_t kPage = 500;
  std::optional<std::pair<std::string, std::string>> cursor;
  {
    std::lock_guard<std::mutex> l(sweep_mu);
    cursor = sweep_cursor;
  }
  std::optional<std::pair<std::string, std::string>> last;
  absl::Status st = global->Run([&](pqxx::work& tx) {
    expired.clear();  // Run may run this again (a serialization failure)
    last.reset();
    const std::string after = cursor ? "(expires_at, id) > (" + tx.quote(cursor->first) +
                                           "::timestamptz, " + tx.quote(cursor->second) + ") AND "
                                     : "";
    for (const auto& r : tx.exec(
             "SELECT id, user_id, xmin::text, expires_at::text, expires_at = '-infinity' AND "
             "created_at + " +
             tx.quote(absl::StrCat(config.reservation_ttl_s, " seconds")) +
             "::interval > now() FROM reservations WHERE state = 'held' AND " + pass_over_deferred +
             after + "expires_at < now() ORDER BY expires_at, id LIMIT " + std::to_string(kPage))) {
      expired.push_back({r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(),
                         r[4].as<bool>()});
      last.emplace(r[3].as<std::string>(), r[0].as<std::string>());
    }
  });
  if (!st.ok()) return st;
  {
    std::lock_guard<std::mutex> l(sweep_mu);
    sweep_cursor = expired.size() == kPage ? last : std::nullopt;
  }
  SweepCounts counts;
  // A customer's shard that does not answer holds back only its own customers' items: the rest
  // of the page, and the refunds and captures settled below, go on; the sweep then reports the
  // error. Before, the first such item ended the sweep, and nothing was settled on any shard
  // while one was down.
  absl::Status unavailable;
  std::set<const PgPool*> shards_down;
  for (const auto& entry : expired) {
    const std::string& id = entry.id;
    const std::string& user_id = entry.user_id;
    const PgPool* shard = &ShardFor(user_id);
    if (shards_down.contains(shard)) continue;
    // Expire the order if it is still unpaid and ours (a paid order keeps its stock).
    std::string payment_ref;
    auto expired = ExpireOrder(id, user_id, &payment_ref, /*window_over=*/!entry.early);
    if (!expired.ok()) {
      st = expired.status();
      if (absl::IsUnavailable(st)) {
        shards_down.insert(shard);
        if (unavailable.ok()) unavailable = st;
        ++counts.failed;
        spdlog::warn("event=sweep_shard_skipped pool={} status=\"{}\"", shard->name(),
                     st.ToString());
        continue;
      }
      if (!SkipFailedSweepItem(id, st, &counts)) return st;
      continue;
    }
    const std::string& status = *expired;
    st = absl::OkStatus();
    if (status == "pending_payment" && entry.early) {
      // A mark for a decision (SettleAtNextSweep) whose transaction then failed on the order's
      // shard: it commits in the global database first. The order still awaits payment within
      // its window, so its reservation gets its expiry back. Before, this sweep expired the order
      // at once, in the middle of its customer's payment window.
      st = global->Run([&](pqxx::work& tx) {
        tx.exec0("UPDATE reservations SET expires_at = created_at + " +
                 tx.quote(absl::StrCat(config.reservation_ttl_s, " seconds")) +
                 "::interval WHERE id = " + tx.quote(id) +
                 " AND state = 'held' AND expires_at = '-infinity' AND xmin::text = " +
                 tx.quote(entry.version));
      });
      if (st.ok()) {
        spdlog::info("event=sweep_mark_undone reservation={} (its order awaits payment)", id);
      }
    } else if (status == "pending_payment") {
      // Another region owns the order now (a failover): it may still be paid there. Its owner
      // expires or settles it, the event reaches us, and a later sweep settles the reservation.
      spdlog::debug("event=sweep_deferred reservation={} (the order's owner decides)", id);
      continue;
    } else if (status == "paid") {
      // Its stock stays sold. A capture here other than the paid one is a payment whose event
      // the region that took the order over never got, before the customer paid there again.
      std::vector<std::string> refunded;
      st = global->Run([&](pqxx::work& tx) {
        // Only the row as selected: a cancel that marked it since (SettleAtNextSweep) decided the
        // order again after we read it paid, and the next sweep settles it by that.
        tx.exec0("UPDATE reservations SET state = 'committed' WHERE id = " + tx.quote(id) +
                 " AND state = 'held' AND xmin::text = " + tx.quote(entry.version));
        if (!payment_ref.empty()) {
          refunded = RefundCaptured(
              tx, "order_id = " + tx.quote(id) + " AND charge_id <> " + tx.quote(payment_ref));
        }
      });
      if (st.ok()) {
        for (const std::string& charge : refunded) {
          spdlog::warn("event=second_capture_refunded order={} charge={} paid_with={}", id, charge,
                       payment_ref);
        }
      }
    } else {
      // Expired, cancelled, declined, or no order at all (a checkout that died half-way). A
      // capture of an order that is not paid is a payment whose order update was in doubt and
      // never retried: the money goes back too.
      std::vector<std::string> refunded;
      st = global->Run(
          [&](pqxx::work& tx) { refunded = RefundCaptured(tx, "order_id = " + tx.quote(id)); });
      if (st.ok()) {
        for (const std::string& charge : refunded) {
          spdlog::info("event=stray_capture_refunded order={} charge={} order_status={}", id,
                       charge, status);
        }
      }
      bool deferred = false;
      if (st.ok()) st = ReleaseReservation(id, absl::StrCat("expired_", status), &deferred);
      if (st.ok() && !deferred) ++counts.released;
    }
    if (!st.ok() && !SkipFailedSweepItem(id, st, &counts)) {
      // The global database does not answer: every other item needs it too.
      unavailable = st;
      break;
    }
  }
  RefundsDue();
  SettleCharges(&counts);
  if (!unavailable.ok()) return unavailable;
  return counts;
}

void RegionApp::Impl::RefundsDue() {
  constexpr int kPage = 100;
  for (auto& shard : shards) {
    std::vector<std::pair<std::string, std::string>> due;  // charge, order
    absl::Status st = shard->Run([&](pqxx::work& tx) {
      due.clear();
      for (const auto& r :
           tx.exec("SELECT charge_id, order_id FROM refunds_due ORDER BY created_at LIMIT " +
                   std::to_string(kPage))) {
        due.emplace_back(r[0].as<std::string>(), r[1].as<std::string>());
      }
    });
    if (!st.ok()) {
      spdlog::warn("event=refunds_due_unread pool={} status=\"{}\"", shard->name(), st.ToString());
      continue;
    }
    // Each is refunded unless its order was paid with it meanwhile; its row goes once settled.
    for (const auto& [charge, order] : due) (void)RefundUnlessPaidWith(*shard, order, charge);
  }
}

void RegionApp::Impl::SettleCharges(SweepCounts* counts) {
  constexpr int kSettlePageMax = 500;
  for (auto& shard : shards) {
    std::vector<std::string> due;  // order ids
    // Rows of orders still awaiting payment stay until the order is decided (SettleChargesOf), so
    // they are not read: 500 of them in front (failed payment attempts of unpaid orders) held
    // every newer row back until those orders expired (review of the order paths, 2026-12-07).
    // A row whose order is missing here is read: it goes once its grace is over.
    absl::Status st = shard->Run([&](pqxx::work& tx) {
      due.clear();
      for (const auto& r :
           tx.exec("SELECT c.order_id FROM charges_to_settle c LEFT JOIN orders o USING (order_id) "
                   "WHERE o.status IS DISTINCT FROM " +
                   tx.quote(std::string(
                       services::OrderStatusName(services::OrderStatus::kPendingPayment))) +
                   " ORDER BY c.created_at, c.order_id LIMIT " + std::to_string(kSettlePageMax))) {
        due.push_back(r[0].as<std::string>());
      }
    });
    if (!st.ok()) {
      spdlog::warn("event=charges_to_settle_unread pool={} status=\"{}\"", shard->name(),
                   st.ToString());
      ++counts->failed;
      continue;
    }
    for (const std::string& order : due) {
      st = SettleChargesOf(*shard, order);
      if (!st.ok()) {
        ++counts->failed;
        spdlog::error("event=charge_settle_failed order={} status=\"{}\" (the next sweep retries)",
                      order, st.ToString());
      }
    }
  }
}

absl::Status RegionApp::Impl::SettleChargesOf(PgPool& shard, const std::string& order_id) {
  std::string status;
  std::string paid_with;
  // Not cleared when Run runs the body again: what an attempt refunded stays refunded.
  std::vector<std::string> refunded;
  absl::Status st = shard.Run([&](pqxx::work& tx) {
    // The order's row lock: a status applied meanwhile waits for us, then finds this row gone and
    // writes it again if captures are left; a payment here records its charge only under it.
    pqxx::result r =
        tx.exec("SELECT status, payment_ref FROM orders WHERE order_id = " + tx.quote(order_id) +
                " FOR UPDATE");
    status = r.empty() ? "missing" : r[0][0].as<std::string>();
    paid_with = r.empty() || r[0][1].is_null() ? "" : r[0][1].as<std::string>();
    const auto parsed = services::ParseOrderStatus(status);
    // Paid: never the charge it is paid with, while it stays paid; a paid order without one is
    // not refunded on a guess (the reconcile report shows its charges). Given up: every capture,
    // the one it was paid with included. Missing here: nothing goes back on a guess (the apply
    // of its decided status writes the row again). Undecided: the row stays until the order is
    // decided (a payment attempt wrote it before capturing, and may have died after).
    const bool paid = status == "paid";
    const bool given_up = !paid && parsed.ok() && services::OrderDecided(*parsed);
    if (!paid && !given_up && status != "missing") return;
    if ((paid && !paid_with.empty()) || given_up) {
      absl::Status g = global->Run([&](pqxx::work& gtx) {
        for (std::string& charge : RefundCaptured(
                 gtx, "order_id = " + gtx.quote(order_id) +
                          (paid ? " AND charge_id <> " + gtx.quote(paid_with) : std::string()))) {
          refunded.push_back(std::move(charge));
        }
      });
      if (!g.ok()) throw AbortTx{g};
    }
    // The row stays while a payment attempt that wrote it may still capture: one that read the
    // order as awaiting payment before it was decided, slower than this sweep (a wait for a
    // connection, a slow provider). Its capture then finds the order decided, and should giving
    // it back fail too, only this row brings it back to the sweep (review of the order paths,
    // 2026-12-07, finding 1: deleted at once, such a capture stayed for good).
    tx.exec0("DELETE FROM charges_to_settle WHERE order_id = " + tx.quote(order_id) +
             " AND created_at < now() - make_interval(secs => " +
             std::to_string(kChargeAttemptGraceS) + ")");
  });
  if (!st.ok()) return st;
  for (const std::string& charge : refunded) {
    spdlog::info("event=capture_settled_refunded order={} charge={} order_status={} paid_with={}",
                 order_id, charge, status, paid_with.empty() ? "-" : paid_with);
  }
  return absl::OkStatus();
}

// One reservation the sweep cannot settle (its stock cannot go back, its order cannot be read)
// must not hold back every other: it is logged, counted and tried again by the next sweep. The
// global database down ends the sweep's items (every other item would fail the same way); a
// customer's shard down skips that shard's items (Sweep).
bool RegionApp::Impl::SkipFailedSweepItem(const std::string& id, const absl::Status& st,
                                          SweepCounts* counts) {
  if (absl::IsUnavailable(st)) return false;
  ++counts->failed;
  spdlog::error("event=sweep_item_failed reservation={} status=\"{}\" (the next sweep retries)", id,
                st.ToString());
  return true;
}

absl::StatusOr<int> RegionApp::Impl::NotifyOnce() {
  // A batch per transaction; batches follow each other while they come back full, for up to
  // kDrainBudget per shard, so that the sender keeps up with the checkouts (one batch per
  // second was 50 per shard per second, well below the rate a region takes orders at: review
  // of accounts and payments, finding 2), and the jobs thread still gets to its sweep.
  constexpr int kBatch = 100;
  constexpr auto kDrainBudget = std::chrono::milliseconds(500);
  int sent = 0;
  absl::Status first_error;
  for (auto& shard : shards) {
    const auto until = std::chrono::steady_clock::now() + kDrainBudget;
    int batch_rows = kBatch;
    while (batch_rows == kBatch && std::chrono::steady_clock::now() < until) {
      auto n = NotifyBatch(*shard, kBatch, &batch_rows);
      if (!n.ok()) {
        // A shard that fails holds back no other shard's customers (finding 3): the others go
        // on, and the first error is the call's.
        if (first_error.ok()) first_error = n.status();
        break;
      }
      sent += *n;
    }
    // How long the oldest due confirmation has waited (0 when none): the backlog, as customers
    // feel it. The due index answers it without a scan.
    (void)shard->Run([&](pqxx::work& tx) {
      notifications_oldest_due->Add({{"db", shard->name()}})
          .Set(tx.exec1("SELECT coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0) "
                        "FROM notifications WHERE sent_at IS NULL AND next_attempt_at <= now()")[0]
                   .as<double>());
    });
  }
  if (!first_error.ok()) return first_error;
  return sent;
}

absl::StatusOr<int> RegionApp::Impl::NotifyBatch(PgPool& shard, int limit, int* rows) {
  constexpr int kMaxAttempts = 5;
  // Counted once the transaction committed (Run may run the body again after a deadlock, and
  // an attempt that rolled back recorded nothing). Delivery itself is at least once.
  int shard_sent = 0, shard_dead = 0, shard_failed = 0;
  absl::Status st = shard.Run([&](pqxx::work& tx) {
    shard_sent = shard_dead = shard_failed = 0;
    // SKIP LOCKED: several workers (or regions' processes) share the table without waiting.
    const pqxx::result due = tx.exec(
        "SELECT id, order_id, user_id, kind, payload, attempts FROM notifications WHERE "
        "sent_at IS NULL AND next_attempt_at <= now() ORDER BY id LIMIT " +
        tx.quote(limit) + " FOR UPDATE SKIP LOCKED");
    *rows = static_cast<int>(due.size());
    for (const auto& r : due) {
      int64_t id = r[0].as<int64_t>();
      int attempts = r[5].as<int>() + 1;
      // The built-in sink is the structured log (a mail or webhook sink plugs in here).
      // Operators can make the next deliveries fail for a drill.
      bool ok = true;
      std::string error;
      int pending = fail_next_notifications.load();
      while (pending > 0 && !fail_next_notifications.compare_exchange_weak(pending, pending - 1)) {
      }
      if (pending > 0) {
        ok = false;
        error = "injected delivery failure";
      }
      if (ok) {
        spdlog::info("event=notification_sent id={} kind={} order={} user={}", id,
                     r[3].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>());
        tx.exec0("UPDATE notifications SET sent_at = now(), attempts = " + tx.quote(attempts) +
                 " WHERE id = " + tx.quote(id));
        ++shard_sent;
      } else if (attempts >= kMaxAttempts) {
        tx.exec0(
            "INSERT INTO notifications_dead (id, order_id, user_id, kind, payload, "
            "attempts, last_error) SELECT id, order_id, user_id, kind, payload, " +
            tx.quote(attempts) + ", " + tx.quote(error) +
            " FROM notifications WHERE id = " + tx.quote(id));
        tx.exec0("DELETE FROM notifications WHERE id = " + tx.quote(id));
        ++shard_dead;
        spdlog::warn("event=notification_dead_letter id={} attempts={} error=\"{}\"", id, attempts,
                     error);
      } else {
        // Exponential backoff: 1, 2, 4, 8 s ... capped at 5 minutes.
        int backoff_s = std::min(300, 1 << (attempts - 1));
        tx.exec0("UPDATE notifications SET attempts = " + tx.quote(attempts) +
                 ", last_error = " + tx.quote(error) + ", next_attempt_at = now() + " +
                 tx.quote(absl::StrCat(backoff_s, " seconds")) +
                 "::interval WHERE id = " + tx.quote(id));
        ++shard_failed;
      }
    }
  });
  if (!st.ok()) return st;
  notifications_sent->Increment(shard_sent);
  notifications_dead->Increment(shard_dead);
  notifications_failed->Increment(shard_failed);
  return shard_sent;
}

namespace {
// The rows of (key, version) pairs, for unnest.
std::string StaleRows(pqxx::work& tx, const std::vector<StaleKeys::Entry>& entries) {
  std::string keys, versions;
  for (const StaleKeys::Entry& e : entries) {
    absl::StrAppend(&keys, keys.empty() ? "" : ", ", tx.quote(e.key));
    absl::StrAppend(&versions, versions.empty() ? "" : ", ", tx.quote(e.version));
  }
  return absl::StrCat("unnest(ARRAY[", keys, "]::text[], ARRAY[", versions,
                      "]::numeric[]) AS r(key, version)");
}
}  // namespace

absl::Status RegionApp::Impl::SaveStaleMarks(const std::vector<StaleKeys::Entry>& marks) {
  if (marks.empty()) return absl::OkStatus();
  return global->Run([&](pqxx::work& tx) {
    // One row per key (a batch of a peer's records may write one product twice: an upsert may
    // not touch a row twice), in key order (as every save: two saves lock rows in one order).
    tx.exec0(
        absl::StrCat("INSERT INTO stale_hot_copies (key, version) SELECT DISTINCT ON (key) "
                     "key, version FROM ",
                     StaleRows(tx, marks),
                     " ORDER BY key, version DESC ON CONFLICT (key) DO UPDATE SET version = "
                     "GREATEST(stale_hot_copies.version, excluded.version), marked_at = now()"));
  });
}

void RegionApp::Impl::SyncStaleCopies() {
  constexpr size_t kBatch = 1000;
  // Marks not saved yet: saved, so that a restart or another process of the region knows them.
  if (std::vector<StaleKeys::Entry> unsaved = stale_hot_copies.Unsaved(kBatch); !unsaved.empty()) {
    absl::Status st = SaveStaleMarks(unsaved);
    if (st.ok()) {
      stale_hot_copies.Saved(unsaved);
    } else {
      spdlog::warn("event=stale_copies_save_failed keys={} status=\"{}\"", unsaved.size(),
                   st.ToString());
    }
  }
  // Retired in Redis: no longer listed, here or in the table (unless marked since at a higher
  // version).
  if (stale_hot_copies.size() > 0 && !redis->breaker_open()) {
    std::vector<StaleKeys::Entry> retired = stale_hot_copies.Repair(
        [this](const std::vector<StaleKeys::Entry>& copies) { return RetireCopies(copies); },
        kBatch);
    if (!retired.empty()) {
      absl::Status st = global->Run([&](pqxx::work& tx) {
        tx.exec0(absl::StrCat("DELETE FROM stale_hot_copies s USING ", StaleRows(tx, retired),
                              " WHERE s.key = r.key AND s.version <= r.version"));
      });
      // The rows left are listed again below and retired again: no harm.
      if (!st.ok()) {
        spdlog::warn("event=stale_copies_delete_failed status=\"{}\"", st.ToString());
      }
    }
  }
  // What the other processes saved since the last look (with a margin for their transactions
  // still open then), or everything at the first look.
  std::vector<std::pair<std::string, std::string>> listed;
  std::string now;
  absl::Status st = global->ReadAutocommit([&](pqxx::nontransaction& tx) {
    listed.clear();
    now = tx.exec1("SELECT now()::text")[0].as<std::string>();
    std::string sql = "SELECT key, version::text FROM stale_hot_copies";
    if (!stale_copies_seen_until.empty()) {
      absl::StrAppend(&sql, " WHERE marked_at > ", tx.quote(stale_copies_seen_until),
                      "::timestamptz - interval '10 seconds'");
    }
    for (const auto& r : tx.exec(absl::StrCat(sql, " LIMIT 200000"))) {
      listed.emplace_back(r[0].as<std::string>(), r[1].as<std::string>());
    }
  });
  if (st.ok()) {
    stale_hot_copies.Adopt(listed);
    stale_copies_seen_until = now;
  }
  stale_hot_cart_gauge->Set(static_cast<double>(stale_hot_copies.size()));
}

void RegionApp::Impl::RunEvery(std::chrono::milliseconds interval, std::function<void()> job) {
  jobs.emplace_back([this, interval, job = std::move(job)] {
    std::unique_lock<std::mutex> lock(jobs_mu);
    while (!stopping) {
      jobs_cv.wait_for(lock, interval);
      if (stopping) break;
      lock.unlock();
      job();
      lock.lock();
    }
  });
}

void RegionApp::Impl::StartJobs() {
  RunEvery(std::chrono::seconds(1), [this, tick = 0]() mutable {
    if (auto n = NotifyOnce(); !n.ok()) {
      spdlog::warn("event=notify_job_failed status=\"{}\"", n.status().ToString());
    }
    SyncStaleCopies();
    if (config.sweep_interval_s > 0 && ++tick >= config.sweep_interval_s) {
      tick = 0;
      if (auto n = Sweep(); !n.ok()) {
        spdlog::warn("event=sweep_job_failed status=\"{}\"", n.status().ToString());
      } else if (n->failed > 0) {
        spdlog::warn("event=sweep_job_partial released={} failed={}", n->released, n->failed);
      }
    }
  });
  // Apart from the jobs above, which a slow notification sink or sweep holds up: a database that
  // changed under connections that did not break (a failover behind pgbouncer, a new life given
  // by another process of the region) is found within identity_check_ms. The check refuses
  // (database_changed, logged by it) and retires the pool: every call answers 503 until the
  // server stops with exit status 3 (main.cc). Other failures (no free connection under load, a
  // broken connection) are left to the next round.
  if (config.identity_check_ms > 0) {
    RunEvery(std::chrono::milliseconds(config.identity_check_ms), [this] {
      for (PgPool* db : AllDatabases()) {
        if (absl::Status st = db->Recheck(); !st.ok()) {
          spdlog::debug("event=identity_recheck_failed db={} status=\"{}\"", db->name(),
                        st.ToString());
        }
      }
    });
  }
}

void RegionApp::Impl::StopJobs() {
  {
    std::lock_guard<std::mutex> lock(jobs_mu);
    stopping = true;
  }
  jobs_cv.notify_all();
  for (auto& t : jobs)
    if (t.joinable()) t.join();
  jobs.clear();
}

HttpResponse RegionApp::Impl::SweepNow(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  auto n = Sweep();
  if (!n.ok()) return ProblemFromStatus(n.status());
  return HttpResponse::Json(200, Json{{"released", n->released}, {"failed", n->failed}}.dump());
}

HttpResponse RegionApp::Impl::NotifyNow(HttpRequest& req) {
  if (auto st = Operator(req); !st.ok()) return ProblemFromStatus(st);
  if (!req.body.empty()) {
    auto body = ParseBody(req);
    if (!body.ok()) return ProblemFromStatus(body.status());
    auto fail = IntField(*body, "fail_next", false, 0);
    if (!fail.ok()) return ProblemFromStatus(fail.status());
    if (*fail < 0 || *fail > 1000) return ProblemFromStatus(Unprocessable("fail_next: 0..1000"));
    fail_next_notifications = static_cast<int>(*fail);
  }
  auto n = NotifyOnce();
  if (!n.ok()) return ProblemFromStatus(n.status());
  return HttpResponse::Json(200, Json{{"sent", *n}}.dump());
}

}  // namespace meridian::region
