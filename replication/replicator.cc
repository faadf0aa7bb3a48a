#include "replication/replicator.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/summary.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/config_files.h"
#include "common/grpc_auth.h"
#include "region/internal.grpc.pb.h"
#include "replication/coordinator.h"
#include "replication/done_exchanges.h"
#include "replication/frames.h"
#include "replication/recent_keys.h"
#include "replication/replication.grpc.pb.h"
#include "services/auth.h"
#include "services/domain.h"

namespace meridian::replication {
namespace {

namespace rpb = ::meridian::region::v1;
using SteadyTime = std::chrono::steady_clock;

// Makes the folder `dir` and its missing parents. Into `made`, the folders this call made, parents
// first (another process may make one of them at the same time: that one is not listed).
std::error_code MakeFolders(const std::filesystem::path& dir,
                            std::vector<std::filesystem::path>* made) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> missing;
  for (fs::path at = fs::absolute(dir, ec); !ec && !at.empty() && !fs::exists(at, ec) && !ec;
       at = at.parent_path()) {
    missing.push_back(at);
    if (at == at.root_path()) break;
  }
  if (ec) return ec;
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (fs::create_directory(*it, ec)) made->push_back(*it);
    if (ec) return ec;
  }
  if (!fs::is_directory(dir, ec) && !ec) ec = std::make_error_code(std::errc::not_a_directory);
  return ec;
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

constexpr int kMaxFrameBytes = 32 << 20;  // larger frames end the stream (RESOURCE_EXHAUSTED)

// Both ends of a stream look the same to a session.
class FrameStream {
 public:
  virtual ~FrameStream() = default;
  virtual bool Read(pb::Frame* f) = 0;
  // `more`: another frame follows at once, so this one may wait for it in gRPC's buffer (one
  // TLS record and TCP segment for both rather than one each).
  virtual bool Write(const pb::Frame& f, bool more) = 0;
  virtual void Cancel() = 0;
};

grpc::WriteOptions Options(bool more) {
  grpc::WriteOptions o;
  if (more) o.set_buffer_hint();
  return o;
}

class ServerFrameStream final : public FrameStream {
 public:
  ServerFrameStream(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::Frame, pb::Frame>* rw)
      : ctx_(ctx), rw_(rw) {}
  bool Read(pb::Frame* f) override { return rw_->Read(f); }
  bool Write(const pb::Frame& f, bool more) override { return rw_->Write(f, Options(more)); }
  void Cancel() override { ctx_->TryCancel(); }

 private:
  grpc::ServerContext* ctx_;
  grpc::ServerReaderWriter<pb::Frame, pb::Frame>* rw_;
};

class ClientFrameStream final : public FrameStream {
 public:
  ClientFrameStream(grpc::ClientContext* ctx, grpc::ClientReaderWriter<pb::Frame, pb::Frame>* rw)
      : ctx_(ctx), rw_(rw) {}
  bool Read(pb::Frame* f) override { return rw_->Read(f); }
  bool Write(const pb::Frame& f, bool more) override { return rw_->Write(f, Options(more)); }
  void Cancel() override { ctx_->TryCancel(); }

 private:
  grpc::ClientContext* ctx_;
  grpc::ClientReaderWriter<pb::Frame, pb::Frame>* rw_;
};

struct PeerMetrics {
  prometheus::Summary* lag_ms;
  prometheus::Summary* queue_lag_ms;  // the same, less the network transit (no clock of two hosts)
  prometheus::Gauge* lag_seq;
  prometheus::Counter* bytes_sent;
  prometheus::Counter* bytes_received;
  prometheus::Histogram* batch_records;
  prometheus::Counter* reconnects;
  prometheus::Counter* rejected;
  prometheus::Counter* applied;
  prometheus::Gauge* connected;
  prometheus::Gauge* apply_queue_batches;   // received, not yet applied
  prometheus::Gauge* apply_queue_bytes;     // ... as the apply backpressure counts them
  prometheus::Counter* survivor_sent;       // exchanges after a loss where we sent our documents
  prometheus::Counter* survivor_skipped;    // ... where the peer already had what we have
  prometheus::Counter* survivor_parked;     // peer's marks for a loss this region has not seen
  prometheus::Counter* survivor_confirmed;  // the peer applied our answer: the exchange is done
  prometheus::Counter* survivor_records;    // state records sent in those exchanges
  prometheus::Counter* own_outbox_reads;    // reads of the outbox for this peer alone
  prometheus::Counter* state_truncated;     // full-state transfers: resume point truncated
  prometheus::Counter* state_rebuilt;       // full-state transfers: the peer was rebuilt
};

// A live session's way out for coordination frames. The coordinator sends through a copy taken
// under PeerState::mu; the session closes it before it ends, so a frame sent through a copy
// taken just before goes nowhere instead of to a session that is gone.
class Outlet {
 public:
  explicit Outlet(std::function<bool(pb::Frame)> write) : write_(std::move(write)) {}
  bool Send(pb::Frame f) {
    std::lock_guard<std::mutex> l(mu_);
    return write_ ? write_(std::move(f)) : false;
  }
  void Close() {
    std::lock_guard<std::mutex> l(mu_);
    write_ = nullptr;
  }

 private:
  std::mutex mu_;
  std::function<bool(pb::Frame)> write_;
};

struct PeerState {
  Peer config;
  PeerMetrics m;
  std::mutex mu;
  FrameStream* active = nullptr;  // the live session's stream, if any
  // What the peer has durably applied of each of our databases (from its Hello and Acks).
  std::map<std::string, int64_t> acked;
  // Where the peer would resume each of them if it reconnected now (its Hello, then the
  // resume_seq of its Acks): the outbox is truncated through this, never through `acked`.
  std::map<std::string, int64_t> resumable;
  bool heard = false;  // a Hello arrived since this process started
  // Queues a frame on the live session (coordination frames); empty while there is none.
  std::shared_ptr<Outlet> send;
  // The survivors' exchange after a region was lost (ExchangeAfterLossIfAsked), guarded by mu:
  // the lost regions whose exchange with the peer is not done (our marks go out once per
  // session until the peer's answer, and what came before it, is applied here); the lost
  // regions for which we answer the peer's marks (a takeover our coordinator saw, or a rebuild,
  // until the peer confirms: marks about any other region are parked, so a peer cannot make us send
  // our documents unasked); and when we last answered about each (once per session, and not again
  // within kReanswerGap: a peer that redials cannot make us send them again and again).
  std::set<uint32_t> owe_marks;
  std::set<uint32_t> answer_marks;
  std::map<uint32_t, SteadyTime::time_point> last_answer;
  // Takeovers of each lost region our coordinator saw (and rebuilds of it, seen in its hello):
  // an exchange confirmed for an earlier one does not end the exchange a later one needs.
  std::map<uint32_t, uint64_t> takeovers;
  // Guarded by mu. The peer's current streams, sorted and joined by ",", as of its last hello
  // that showed it rebuilt (streams of its that we applied records of are gone): its current
  // life. "" until then. Each life starts one survivors' exchange about the peer per process
  // (exchanged_lives); a life that comes after another we never heard from (rebuilt twice) is a
  // new one, though the streams we see gone are the same.
  std::string rebuilt_life;
  std::set<std::string> exchanged_lives;
  // Guarded by mu. Our databases were rebuilt and the peer knows our past (its hello had resume
  // points for streams of ours that are gone): the peer's databases (stream names) whose state
  // has not come yet. While any peer's is not empty, the region takes no local cart or stock
  // change (SyncWriteHold). Cleared when the session ends (the next hello sets it again).
  std::set<std::string> awaiting_state;
  // Guarded by mu. Our stream names in the session whose hello from the peer was judged last
  // (AwaitStateIfRebuilt): equal to the current ones, the peer has had its say about them.
  std::set<std::string> hello_streams;
  // Guarded by mu. The session that set the two above last: only it clears them at its end (an
  // old session winding down after the peer's next hello leaves the newer session's alone).
  const void* judged_by = nullptr;
  // Bumped whenever a session may have marks to send or to answer; each session's sender
  // handles every bump (sessions may overlap while an old one winds down).
  std::atomic<uint64_t> exchange_generation{0};
  // The keys of the peer's records applied here lately: should the peer be lost, what another
  // survivor lacks of it is sent as just the documents those records touched.
  RecentKeys recent;

  explicit PeerState(size_t recent_keys_per_stream) : recent(recent_keys_per_stream) {}
};

// Documents by kind and key: a survivors' exchange narrowed to what the peer lacks.
using DocumentKeys = std::map<rpb::OutboxKind, std::set<std::string>>;
constexpr size_t kKeysPerRead = 1000;  // keys named in one ReadState
// Marks per origin replica and origin database (stream).
using Marks = std::map<uint32_t, std::map<std::string, int64_t>>;

// The streams of a region that `applied` (resume points for them) has records of, past 0, and
// that are not among `now`: the region's databases were rebuilt since.
std::vector<std::string> GoneStreams(
    const google::protobuf::RepeatedPtrField<pb::AckedSeq>& applied,
    const std::set<std::string>& now) {
  std::vector<std::string> gone;
  for (const auto& a : applied)
    if (a.seq() > 0 && !now.count(a.origin_database())) gone.push_back(a.origin_database());
  return gone;
}

std::string Describe(const std::map<std::string, int64_t>& marks) {
  std::string s;
  for (const auto& [db, seq] : marks) absl::StrAppend(&s, s.empty() ? "" : " ", db, ":", seq);
  return s;
}

rpb::OutboxKind ToRegionKind(pb::RecordKind k) { return static_cast<rpb::OutboxKind>(k); }
pb::RecordKind ToWireKind(rpb::OutboxKind k) { return static_cast<pb::RecordKind>(k); }

int64_t CommittedMs(const rpb::OutboxRecord& o) {
  return o.created_at().seconds() * 1000 + o.created_at().nanos() / 1000000;
}

pb::Record ToWire(const rpb::OutboxRecord& o) {
  pb::Record rec;
  rec.set_seq(o.seq());
  rec.set_kind(ToWireKind(o.kind()));
  rec.set_key(o.key());
  rec.set_payload(o.payload());
  rec.set_residency(o.residency());
  rec.set_committed_unix_ms(CommittedMs(o));
  return rec;
}

// The region's outbox, read once for every peer. One reader thread long-polls PollOutbox (commit
// order: it never passes a seq whose transaction may still commit) and keeps what it read, per
// local database, as slices: every committed record with after < seq <= through. A session
// ships from the slices past its peer's position and waits here for more; what every attached
// session has passed is dropped. A session whose position lies before the oldest slice (a peer
// resuming from far back) reads the outbox itself until it reaches the slices.
class OutboxFeed {
 public:
  struct Slice {
    int64_t after = 0, through = 0;
    std::shared_ptr<const std::vector<pb::Record>> records;
  };

  OutboxFeed(rpb::RegionInternal::Stub& region, const ReplicatorConfig& config)
      : region_(region), config_(config) {}

  // A session ships `db` from `pos` on. The first session of a database starts its slices there,
  // unless `may_start` is false: a position past every seq the outbox ever took (a peer claiming
  // more than we wrote) would make the feed skip the records written meanwhile, and every other
  // session would then read the outbox for itself. Such a session reads for itself until another
  // session starts the feed at or below its position, and ships from the feed from then on.
  // `stream` names the database's incarnation: a rebuilt database (its seqs start over)
  // starts its slices afresh.
  void Attach(const void* who, const std::string& db, const std::string& stream, int64_t pos,
              bool may_start) {
    std::lock_guard<std::mutex> l(mu_);
    Db& d = dbs_[db];
    if (d.started && d.stream != stream) {
      const uint64_t generation = d.generation + 1;
      d = Db();
      d.generation = generation;
    }
    if (!d.started && may_start) {
      d.started = true;
      d.stream = stream;
      d.next_after = pos;
    }
    d.positions[who] = pos;
    cv_.notify_all();
  }

  void Detach(const void* who) {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [name, d] : dbs_) d.positions.erase(who);
  }

  // The records of `db` past `pos` (slices), and the position they take the session to; false
  // when `pos` lies before the oldest slice (the session reads the outbox itself).
  bool Take(const void* who, const std::string& db, const std::string& stream, int64_t pos,
            std::vector<Slice>* out, int64_t* through) {
    std::lock_guard<std::mutex> l(mu_);
    Db& d = dbs_[db];
    if (!d.started || d.stream != stream) return false;
    d.positions[who] = pos;
    const int64_t base = d.slices.empty() ? d.next_after : d.slices.front().after;
    if (pos < base) return false;
    *through = std::max(pos, d.next_after);
    for (const Slice& s : d.slices)
      if (s.through > pos) out->push_back(s);
    Trim(d);
    return true;
  }

  // Waits until one of `positions` (database -> position) has records past it, or `deadline`.
  // (Or until `wake` is true and Kick() called.)
  void Wait(const std::map<std::string, int64_t>& positions, SteadyTime::time_point deadline,
            const std::function<bool()>& wake) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait_until(l, deadline, [&] {
      if (stopping_ || wake()) return true;
      for (const auto& [db, pos] : positions) {
        auto it = dbs_.find(db);
        if (it != dbs_.end() && it->second.next_after > pos) return true;
      }
      return false;
    });
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  void Kick() {
    { std::lock_guard<std::mutex> l(mu_); }
    cv_.notify_all();
  }

  // The reader: until Stop().
  void Run() {
    while (true) {
      rpb::PollOutboxRequest req;
      std::vector<std::string> names;
      std::vector<uint64_t> generations;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] {
          if (stopping_) return true;
          for (const auto& [name, d] : dbs_)
            if (d.started) return true;
          return false;
        });
        if (stopping_) return;
        for (const auto& [name, d] : dbs_) {
          if (!d.started) continue;
          rpb::OutboxCursor* c = req.add_cursors();
          c->set_database(name);
          c->set_after_seq(d.next_after);
          c->set_gap_horizon(d.gap_horizon);
          c->set_gap_horizon_seq(d.gap_horizon_seq);
          names.push_back(name);
          generations.push_back(d.generation);
        }
      }
      req.set_limit(config_.batch_max_records);
      req.set_wait_ms(config_.heartbeat_ms);
      rpb::PollOutboxResponse resp;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(config_.heartbeat_ms + 10000));
      const auto t0 = SteadyTime::now();
      grpc::Status s = region_.PollOutbox(&ctx, req, &resp);
      if (!s.ok() || resp.chunks_size() != static_cast<int>(names.size())) {
        spdlog::warn("event=outbox_poll_failed error=\"{}\"", s.error_message());
        std::unique_lock<std::mutex> l(mu_);
        if (cv_.wait_for(l, std::chrono::milliseconds(200), [&] { return stopping_; })) return;
        continue;
      }
      int got = 0, gaps = 0;
      int64_t oldest = 0;
      {
        std::lock_guard<std::mutex> l(mu_);
        for (size_t i = 0; i < names.size(); ++i) {
          const rpb::OutboxChunk& chunk = resp.chunks(static_cast<int>(i));
          Db& d = dbs_[names[i]];
          if (chunk.database() != names[i] || d.generation != generations[i] ||
              req.cursors(static_cast<int>(i)).after_seq() != d.next_after) {
            continue;  // not what we asked for (or the slices started afresh): read again
          }
          if (!chunk.error().empty()) {  // that database alone: read again at the next poll
            if (SteadyTime::now() - d.warned_at > std::chrono::seconds(10)) {
              spdlog::warn("event=outbox_read_failed db={} error=\"{}\"", names[i], chunk.error());
              d.warned_at = SteadyTime::now();
            }
            continue;
          }
          d.gap_horizon = chunk.gap_horizon();
          d.gap_horizon_seq = chunk.gap_horizon_seq();
          gaps += chunk.gap_horizon() != 0;
          if (chunk.next_after_seq() <= d.next_after) continue;
          auto records = std::make_shared<std::vector<pb::Record>>();
          records->reserve(static_cast<size_t>(chunk.records_size()));
          for (const rpb::OutboxRecord& o : chunk.records()) {
            records->push_back(ToWire(o));
            if (oldest == 0 || CommittedMs(o) < oldest) oldest = CommittedMs(o);
          }
          got = std::max(got, chunk.records_size());
          d.count += records->size();
          d.slices.push_back(Slice{d.next_after, chunk.next_after_seq(), std::move(records)});
          d.next_after = chunk.next_after_seq();
          Trim(d);
        }
      }
      cv_.notify_all();
      spdlog::debug(
          "event=outbox_polled records={} gaps={} oldest_age_ms={} us={}", got, gaps,
          oldest ? UnixMs() - oldest : 0,
          std::chrono::duration_cast<std::chrono::microseconds>(SteadyTime::now() - t0).count());
      // Under load, linger a moment before the next read so that batches fill (the first
      // record after a quiet spell goes out at once: an empty poll long-polls instead).
      if (got > 0 && got < config_.batch_max_records && config_.batch_linger_ms > 0) {
        std::unique_lock<std::mutex> l(mu_);
        if (cv_.wait_for(l, std::chrono::milliseconds(config_.batch_linger_ms),
                         [&] { return stopping_; })) {
          return;
        }
      }
    }
  }

 private:
  // At most this many records are kept per database: a session further behind reads the
  // outbox itself.
  static constexpr size_t kMaxRecords = 200000;

  struct Db {
    bool started = false;
    std::string stream;       // the incarnation the slices belong to
    uint64_t generation = 0;  // bumped when the slices start afresh
    int64_t next_after = 0;   // every record through here is in the slices (or was dropped)
    int64_t gap_horizon = 0, gap_horizon_seq = 0;
    std::deque<Slice> slices;
    size_t count = 0;                          // records in slices
    std::map<const void*, int64_t> positions;  // attached sessions
    SteadyTime::time_point warned_at{};        // the last outbox_read_failed logged
  };

  // Drops the slices every attached session has passed (all of them when none is attached).
  void Trim(Db& d) {
    int64_t low = d.next_after;
    for (const auto& [who, pos] : d.positions) low = std::min(low, pos);
    while (!d.slices.empty() && (d.slices.front().through <= low || d.count > kMaxRecords)) {
      d.count -= d.slices.front().records->size();
      d.slices.pop_front();
    }
  }

  rpb::RegionInternal::Stub& region_;
  const ReplicatorConfig& config_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, Db> dbs_;
};

}  // namespace

struct Replicator::Impl {
  ReplicatorConfig config;
  std::string ca, cert, key;
  std::unique_ptr<rpb::RegionInternal::Stub> region;
  std::vector<std::unique_ptr<PeerState>> peers;
  // Held by Housekeeping while it reads the peers' acks and decides its truncations (each
  // recorded in `truncating` before the call that makes it, which goes outside the lock), and by
  // a session's check of its peer's resume point against the outbox (CatchUpFromState).
  std::mutex truncate_mu;
  std::atomic<bool> stopping{false};
  // The local databases' stream names as Housekeeping last read them (a database rebuilt while
  // sessions are up gets a new one, its seqs start over); the generation moves when they change.
  std::mutex local_streams_mu;
  std::set<std::string> local_streams;
  SteadyTime::time_point local_streams_since;  // when they were first read as they are
  std::atomic<uint64_t> local_streams_generation{0};
  // The region server started with new databases and has not been released since (its
  // GetStatus, read every second): SyncWriteHold releases it once every peer has been heard.
  std::atomic<bool> region_held_since_start{false};
  // Peers not heard when the new databases' hold was released (after two peer timeouts): they
  // may hold the last stock changes of this region's earlier life, which it would count again
  // (stock counts are per replica id). Stock changes stay held until each has said hello to a
  // session of the current streams (its state, if it knows our past, then comes under the full
  // hold). Guarded by hold_mu.
  std::set<std::string> stock_awaits;
  bool stock_told = false;
  bool stock_awaits_read = false;  // Housekeeping: the region's list, taken up once
  std::mutex stop_mu;
  std::condition_variable stop_cv;
  std::vector<std::thread> threads;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<pb::Replication::Service> service;
  std::unique_ptr<Coordinator> coordinator;  // leases, rights, forwarding (issue 5); optional
  int port = 0;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;
  // Per local stream (a database's incarnation), guarded by truncate_mu: the highest seq a
  // truncation was decided through, recorded before its TruncateOutbox call and kept whatever the
  // call returns (one that timed out or failed may have deleted, or may still: CatchUpFromState
  // counts it as done), and the highest the region confirmed (Housekeeping skips what it holds).
  std::map<std::string, int64_t> truncating;
  std::map<std::string, int64_t> truncated;
  std::unique_ptr<OutboxFeed> feed;
  // The survivors' exchanges about a rebuilt peer's gone streams we asked for and saw done (in
  // state_dir, so that a restart does not ask again).
  DoneExchanges done_exchanges;

  // Sleeps up to `d`; false when the replicator is stopping.
  bool SleepFor(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> l(stop_mu);
    return !stop_cv.wait_for(l, d, [&] { return stopping.load(); });
  }

  PeerState* PeerNamed(const std::string& name) {
    for (auto& p : peers)
      if (p->config.name == name) return p.get();
    return nullptr;
  }

  std::unique_ptr<grpc::ClientContext> RegionCtx(int timeout_ms) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    return ctx;
  }

  absl::Status RegionError(const grpc::Status& s, const std::string& what) {
    return absl::UnavailableError(absl::StrCat("region ", what, ": ", s.error_message()));
  }

  // Records per batch we build: the configured count, never more than a peer accepts
  // (kMaxBatchRecords, which DecodeBatch enforces).
  int BatchRecordsMax() const { return std::min(config.batch_max_records, kMaxBatchRecords); }

  // (database name, stream name) of every local database.
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> LocalDatabases() {
    rpb::GetStatusRequest req;
    rpb::GetStatusResponse resp;
    auto ctx = RegionCtx(5000);
    grpc::Status s = region->GetStatus(ctx.get(), req, &resp);
    if (!s.ok()) return RegionError(s, "GetStatus");
    // The region server must be the one this replicator is configured as: the jurisdiction
    // decides which records go to and come from each peer (residency), the replica id names the
    // records. A hand-edited config that disagrees streams nothing, rather than apply one
    // jurisdiction's rules to another's customers (residency review, 2026-12-04).
    if (resp.region() != config.region || resp.jurisdiction() != config.jurisdiction ||
        resp.replica_id() != config.replica_id) {
      const std::string why = absl::StrCat(
          "the region server is ", resp.region(), " (jurisdiction ", resp.jurisdiction(),
          ", replica id ", resp.replica_id(), ") but this replicator is configured as ",
          config.region, " (jurisdiction ", config.jurisdiction, ", replica id ", config.replica_id,
          "): no stream until the two configs agree");
      spdlog::error("event=region_config_mismatch error=\"{}\"", why);
      return absl::FailedPreconditionError(why);
    }
    std::vector<std::pair<std::string, std::string>> dbs;
    for (const auto& d : resp.databases()) {
      if (d.stream().empty()) return absl::UnavailableError("region GetStatus: no stream names");
      dbs.emplace_back(d.name(), d.stream());
    }
    return dbs;
  }

  void InitMetrics() {
    auto& lag =
        prometheus::BuildSummary()
            .Name("meridian_replication_lag_ms")
            .Help("Milliseconds from the origin's commit to the apply here, per origin peer")
            .Register(*registry);
    auto& queue_lag =
        prometheus::BuildSummary()
            .Name("meridian_replication_queue_lag_ms")
            .Help(
                "Milliseconds a record waited at the origin before it was sent, plus its batch's "
                "wait here until the apply committed, per origin peer: the lag less the network "
                "transit, measured without comparing two hosts' clocks")
            .Register(*registry);
    auto& lag_seq = prometheus::BuildGauge()
                        .Name("meridian_replication_lag_seq")
                        .Help("Outbox records committed here and not yet acked by the peer")
                        .Register(*registry);
    auto& bytes = prometheus::BuildCounter()
                      .Name("meridian_replication_bytes_total")
                      .Help("Frame bytes on the stream with a peer")
                      .Register(*registry);
    auto& batch = prometheus::BuildHistogram()
                      .Name("meridian_replication_batch_records")
                      .Help("Records per delta batch sent to a peer")
                      .Register(*registry);
    auto& reconnects = prometheus::BuildCounter()
                           .Name("meridian_replication_reconnects_total")
                           .Help("Streams with a peer that ended (and were or will be redialled)")
                           .Register(*registry);
    auto& rejected = prometheus::BuildCounter()
                         .Name("meridian_replication_rejected_frames_total")
                         .Help("Frames from a peer rejected as malformed or breaking residency")
                         .Register(*registry);
    auto& applied = prometheus::BuildCounter()
                        .Name("meridian_replication_applied_records_total")
                        .Help("Peer records applied here")
                        .Register(*registry);
    auto& connected = prometheus::BuildGauge()
                          .Name("meridian_replication_connected")
                          .Help("1 while a stream with the peer is established")
                          .Register(*registry);
    auto& queue_batches = prometheus::BuildGauge()
                              .Name("meridian_replication_apply_queue_batches")
                              .Help("The peer's batches received here and not yet applied")
                              .Register(*registry);
    auto& queue_bytes = prometheus::BuildGauge()
                            .Name("meridian_replication_apply_queue_bytes")
                            .Help(
                                "Bytes of those batches as the apply backpressure counts them "
                                "(records plus 256 per batch); the stream is held back at 16 MiB")
                            .Register(*registry);
    auto& survivor = prometheus::BuildCounter()
                         .Name("meridian_replication_survivor_exchanges_total")
                         .Help(
                             "After a region was lost: whether we sent the peer our documents "
                             "(outcome=documents_sent), it had every record of the lost region "
                             "we have (outcome=skipped), or its marks came for a loss this "
                             "region had not seen (yet) and wait for it (outcome=parked); "
                             "outcome=confirmed: the peer applied our answer, the exchange is done")
                         .Register(*registry);
    auto& survivor_docs = prometheus::BuildCounter()
                              .Name("meridian_replication_survivor_state_records_total")
                              .Help(
                                  "State records sent to the peer in those exchanges (a "
                                  "document is one; an order with a status, two)")
                              .Register(*registry);
    auto& own_reads = prometheus::BuildCounter()
                          .Name("meridian_replication_own_outbox_reads_total")
                          .Help(
                              "Reads of the outbox for this peer alone, because its resume "
                              "point lies before what the shared reader holds (a peer catching "
                              "up) or past the outbox's end; 0 while the peer keeps up")
                          .Register(*registry);
    auto& states = prometheus::BuildCounter()
                       .Name("meridian_replication_state_transfers_total")
                       .Help(
                           "Full-state transfers of a database to the peer: its resume point lay "
                           "in the truncated part of our outbox (reason=resume_point_truncated), "
                           "or its databases were rebuilt and it had none (reason=peer_rebuilt; "
                           "once per database and rebuild)")
                       .Register(*registry);
    for (auto& p : peers) {
      prometheus::Labels l{{"peer", p->config.name}};
      p->m.state_truncated =
          &states.Add({{"peer", p->config.name}, {"reason", "resume_point_truncated"}});
      p->m.state_rebuilt = &states.Add({{"peer", p->config.name}, {"reason", "peer_rebuilt"}});
      p->m.lag_ms =
          &lag.Add(l, prometheus::Summary::Quantiles{{0.5, 0.01}, {0.9, 0.005}, {0.99, 0.001}},
                   std::chrono::seconds(30), 3);
      p->m.queue_lag_ms = &queue_lag.Add(l, prometheus::Summary::Quantiles{});
      p->m.lag_seq = &lag_seq.Add(l);
      p->m.bytes_sent = &bytes.Add({{"peer", p->config.name}, {"direction", "sent"}});
      p->m.bytes_received = &bytes.Add({{"peer", p->config.name}, {"direction", "received"}});
      p->m.batch_records =
          &batch.Add(l, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256,
                                                                512, 1024, 4096, 10000});
      p->m.reconnects = &reconnects.Add(l);
      p->m.rejected = &rejected.Add(l);
      p->m.applied = &applied.Add(l);
      p->m.connected = &connected.Add(l);
      p->m.apply_queue_batches = &queue_batches.Add(l);
      p->m.apply_queue_bytes = &queue_bytes.Add(l);
      p->m.survivor_sent = &survivor.Add({{"peer", p->config.name}, {"outcome", "documents_sent"}});
      p->m.survivor_skipped = &survivor.Add({{"peer", p->config.name}, {"outcome", "skipped"}});
      p->m.survivor_parked = &survivor.Add({{"peer", p->config.name}, {"outcome", "parked"}});
      p->m.survivor_confirmed = &survivor.Add({{"peer", p->config.name}, {"outcome", "confirmed"}});
      p->m.survivor_records = &survivor_docs.Add(l);
      p->m.own_outbox_reads = &own_reads.Add(l);
    }
  }

  absl::Status RunSession(PeerState& peer, FrameStream& stream);
  void DialLoop(PeerState& peer);
  void Housekeeping();
  void DecideTruncations(const rpb::GetStatusResponse& status,
                         SteadyTime::time_point& last_truncate,
                         std::vector<std::pair<std::string, int64_t>>* out);
  // Tells the region whether to hold its local cart and stock changes: while any peer's
  // awaiting_state is not empty. On a change, and every second from Housekeeping while held (a
  // region server that restarted starts released); nothing while nothing is or was held.
  void SyncWriteHold();
  // Starts the survivors' exchange about region `lost` with every other peer (the region was
  // taken over, or its databases were rebuilt): each may hold records of it the others lack.
  // For a rebuilt region, `rebuilt_life` names its current life: a peer with which an exchange
  // in that life is done already (done_exchanges, by a process before a restart) is not asked
  // again; its marks are still answered.
  void AskSurvivorMarks(uint32_t lost, const std::string& rebuilt_life = "");
  // PeerState::rebuilt_life of peer `lost`: "" unless it was seen rebuilt.
  std::string RebuiltLifeOf(uint32_t lost) {
    for (auto& p : peers) {
      if (p->config.replica_id != lost) continue;
      std::lock_guard<std::mutex> l(p->mu);
      return p->rebuilt_life;
    }
    return "";
  }
  std::mutex hold_mu;  // one SetLocalWriteHold at a time, in order
  bool hold_told = false;
  void NoteLocalStreams(const std::map<std::string, std::string>& names);
};

void Replicator::Impl::AskSurvivorMarks(uint32_t lost, const std::string& rebuilt_life) {
  for (auto& p : peers) {
    if (p->config.replica_id == lost) continue;  // the lost region is the origin: not it
    const bool done =
        !rebuilt_life.empty() && done_exchanges.Done(lost, p->config.replica_id, rebuilt_life);
    bool fresh;
    {
      std::lock_guard<std::mutex> l(p->mu);
      fresh = !done && p->owe_marks.insert(lost).second;
      p->answer_marks.insert(lost);
      ++p->takeovers[lost];
    }
    if (done) {
      spdlog::info("event=survivor_exchange_already_done peer={} lost_replica={} life=\"{}\"",
                   p->config.name, lost, rebuilt_life);
    }
    ++p->exchange_generation;
    feed->Kick();  // a sender waiting for records
    if (fresh) {
      spdlog::info("event=survivor_marks_asked peer={} lost_replica={}", p->config.name, lost);
    }
  }
}

namespace {

// One established stream with one peer: this side's sender thread ships our outbox; the calling
// thread reads the peer's frames (applies batches, takes acks); a watchdog ends a quiet stream.
class Session {
 public:
  Session(Replicator::Impl& r, PeerState& peer, FrameStream& stream)
      : r_(r), peer_(peer), stream_(stream) {}

  absl::Status Run() {
    auto dbs = r_.LocalDatabases();
    if (!dbs.ok()) return dbs.status();
    for (const auto& [name, stream] : *dbs) streams_.insert(stream);
    rpb::GetStreamMarksResponse marks;
    {
      auto ctx = r_.RegionCtx(5000);
      grpc::Status s = r_.region->GetStreamMarks(ctx.get(), rpb::GetStreamMarksRequest(), &marks);
      if (!s.ok()) return r_.RegionError(s, "GetStreamMarks");
    }
    pb::Frame hello;
    pb::Hello* h = hello.mutable_hello();
    h->set_region(r_.config.region);
    h->set_jurisdiction(r_.config.jurisdiction);
    h->set_replica_id(r_.config.replica_id);
    h->set_protocol_version(pb::PROTOCOL_VERSION_1);
    for (const auto& [name, stream] : *dbs) h->add_streams(stream);
    for (const auto& m : marks.marks()) {
      if (m.origin() != peer_.config.replica_id) continue;
      pb::AckedSeq* a = h->add_applied();
      a->set_origin_database(m.origin_database());
      a->set_seq(m.seq());
    }
    last_received_ = SteadyTime::now();
    std::thread watchdog([this] { Watch(); });
    std::thread writer([this] { WriteLoop(); });
    absl::Status result = Converse(hello, *dbs);
    // Ends the session without cancelling the stream when the writer is idle, so that the
    // peer sees the status we return (say INVALID_ARGUMENT naming its bad frame) rather than
    // CANCELLED; a writer stuck on a full window is cut loose by a cancel after a second.
    {
      std::unique_lock<std::mutex> l(mu_);
      done_ = true;
      over_ = true;
      NotifyAll();
      if (!state_cv_.wait_for(l, std::chrono::seconds(1), [&] { return !writing_; })) {
        l.unlock();
        stream_.Cancel();
      }
    }
    r_.feed->Kick();  // the sender may be waiting for records
    writer.join();
    if (sender_.joinable()) sender_.join();
    if (coordination_.joinable()) coordination_.join();
    for (auto& [db, t] : appliers_) t.join();
    watchdog.join();
    // What was queued and not applied goes with the session (the peer resends it). Gauges
    // move by amounts, not set: a newer session with this peer may be counting already.
    peer_.m.apply_queue_bytes->Decrement(static_cast<double>(apply_bytes_));
    peer_.m.apply_queue_batches->Decrement(apply_queued_);
    FlushResumePoints();
    bool was_awaiting = false;
    {
      std::lock_guard<std::mutex> l(peer_.mu);
      if (peer_.judged_by == this) {
        peer_.judged_by = nullptr;
        was_awaiting = !peer_.awaiting_state.empty();
        peer_.awaiting_state.clear();
        // Its state did not all arrive: it has not had its say about our databases after all
        // (a stock hold awaiting it stays on until a later session brings the state in).
        if (was_awaiting) peer_.hello_streams.clear();
      }
    }
    if (was_awaiting) r_.SyncWriteHold();
    if (outlet_) {
      outlet_->Close();
      // A newer session with this peer may have put its own in place already.
      std::lock_guard<std::mutex> l(peer_.mu);
      if (peer_.send == outlet_) peer_.send = nullptr;
    }
    return result;
  }

 private:
  struct Pending {
    std::string db;
    bool state = false;      // a state transfer's batch
    bool state_end = false;  // its last (no records; last_seq its barrier, maybe 0)
    int64_t first_seq = 0, last_seq = 0;
    std::vector<rpb::OutboxRecord> records;
    size_t bytes = kPendingOverhead;  // what it holds in memory, for the apply backpressure
    SteadyTime::time_point queued_at;
    int64_t sent_unix_ms = 0;  // the peer's clock, as its committed times are
  };
  // Of each batch one ApplyDeltas call took, in order: its records, when the peer sent it and
  // when it was queued here (for the queue lag).
  struct Taken {
    int records;
    int64_t sent_unix_ms;
    SteadyTime::time_point queued_at;
  };
  // Counted for every queued batch, records or not: a peer sending empty batches faster than
  // they apply must meet the backpressure too.
  static constexpr size_t kPendingOverhead = 256;

  struct Cursor {
    std::string db;      // the local database, for the region's API
    std::string stream;  // its stream name, for the peer
    int64_t after_seq = 0;
    int64_t gap_horizon = 0;
    int64_t gap_horizon_seq = 0;
    // Whether we know the peer's resume point is not in the truncated part of our outbox
    // (CatchUpFromState); an unchecked cursor ships nothing.
    bool checked = false;
    // Whether the peer's hello gave a resume point for this database: a rebuilt peer without
    // one gets our full state first (CatchUpFromState).
    bool known = false;
    // The resume point lies past the last seq our outbox ever took (CatchUpFromState): the peer
    // claims more than we wrote, and the session must not start the shared feed there.
    bool past_end = false;
    bool attached = false;  // to the shared feed (after the check)
  };

  absl::Status Reject(const std::string& why) {
    peer_.m.rejected->Increment();
    spdlog::warn("event=replication_frame_rejected peer={} reason=\"{}\"", peer_.config.name, why);
    return absl::InvalidArgumentError(why);
  }

  // Frames go out through one writer thread, so that the reader never blocks on a full
  // window: the reader keeps draining the peer's batches (and queueing acks) whatever the
  // sender is doing, and two regions shipping to each other cannot deadlock. False once the
  // session ended.
  bool Write(pb::Frame f) {
    const size_t bytes = UnwindowedBytes(f);
    size_t queued = 0;
    bool cut = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (done_ || write_failed_) return false;
      if (outgoing_bytes_ + bytes <= kOutgoingBytesMax) {
        outgoing_bytes_ += bytes;
        outgoing_.push_back(std::move(f));
      } else {
        queued = outgoing_bytes_;
        cut = write_failed_ = not_reading_ = true;
        NotifyAll();
      }
    }
    if (cut) {
      spdlog::warn("event=replication_peer_not_reading peer={} queued_bytes={} frame_bytes={}",
                   peer_.config.name, queued, bytes);
      stream_.Cancel();
      return false;
    }
    last_sent_ = SteadyTime::now();
    write_cv_.notify_one();
    return true;
  }

  // Batches are bounded by the window (max_inflight_bytes); what else goes out (acks, replies to
  // the peer's sync requests) is paced by the peer. A peer that keeps asking without reading
  // would grow the queue without end: past kOutgoingBytesMax of such frames (these bytes) the
  // session ends instead.
  static size_t UnwindowedBytes(const pb::Frame& f) { return f.has_batch() ? 0 : f.ByteSizeLong(); }

  void WriteLoop() {
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      write_cv_.wait(l, [&] { return done_ || !outgoing_.empty(); });
      if (done_) return;
      pb::Frame f = std::move(outgoing_.front());
      outgoing_.pop_front();
      const size_t bytes = f.ByteSizeLong();
      if (!f.has_batch()) outgoing_bytes_ -= std::min(outgoing_bytes_, bytes);  // UnwindowedBytes
      // The hello (the stream's first frame) never carries the buffer hint. On the server side
      // the first write also sends the response headers, and gRPC's chttp2 starts no transport
      // write for headers whose message is hinted, yet the blocking Write waits for the headers
      // to be written: nothing else on the connection, and this writer hangs until the peer,
      // which sends nothing before our hello, is cut as silent. That happened whenever the
      // writer woke after the peer's hello had queued frames behind ours (ASan, a busy machine).
      const bool more = !outgoing_.empty() && !f.has_hello();
      writing_ = true;
      l.unlock();
      bool ok = stream_.Write(f, more);
      if (ok) peer_.m.bytes_sent->Increment(static_cast<double>(bytes));
      l.lock();
      writing_ = false;
      if (done_) state_cv_.notify_all();
      if (!ok) {
        write_failed_ = true;
        NotifyAll();
        l.unlock();
        stream_.Cancel();
        return;
      }
    }
  }

  // True once Housekeeping has read local stream names other than this session's (checked when
  // its generation moves: the first reading after the session started may already differ).
  bool LocalStreamsRenamed() {
    const uint64_t generation = r_.local_streams_generation.load();
    if (generation == streams_checked_) return false;
    streams_checked_ = generation;
    std::lock_guard<std::mutex> l(r_.local_streams_mu);
    return !r_.local_streams.empty() && r_.local_streams != streams_;
  }

  void Watch() {
    const auto timeout = std::chrono::milliseconds(r_.config.peer_timeout_ms);
    std::unique_lock<std::mutex> l(mu_);
    while (!done_) {
      watch_cv_.wait_for(l, std::chrono::milliseconds(50));
      if (done_) break;
      const bool apply_failed =
          !apply_status_.ok() && SteadyTime::now() - apply_failed_at_ > std::chrono::seconds(1);
      const bool silent = !held_back_ && SteadyTime::now() - last_received_.load() > timeout;
      const bool renamed = LocalStreamsRenamed();
      if (silent || r_.stopping || apply_failed || renamed) {
        if (silent && !r_.stopping) {
          spdlog::warn("event=replication_peer_silent peer={} timeout_ms={}", peer_.config.name,
                       r_.config.peer_timeout_ms);
        }
        if (renamed) {
          // Our records would go on under the old names, below the peer's marks for them, and
          // be skipped there: a new session ships the new streams from their start.
          spdlog::info("event=replication_session_restart peer={} reason=local_stream_renamed",
                       peer_.config.name);
        }
        stream_.Cancel();
        cancelled_ = true;
        NotifyAll();  // a reader held back by the apply queue's size
        break;
      }
      // The ship loop sends heartbeats between its reads, but not while one call takes long (a
      // state page read from a busy region, a slow outbox poll): the peer would take us for
      // silent and end the stream, every attempt. Keep it told from here too.
      if (up_ && SteadyTime::now() - last_sent_.load() >=
                     std::chrono::milliseconds(r_.config.heartbeat_ms)) {
        l.unlock();
        (void)Heartbeat();  // false: the session is ending, which the loop sees
        l.lock();
      }
    }
  }

  // Our databases were rebuilt when the peer has applied records of streams of ours that are
  // gone (its resume points name them, past 0). Then, until we hold a resume point for each of
  // the peer's databases (its state transfer's end gives one), the region takes no local cart
  // or stock change: ours would take dots and per-replica counts we had used before.
  void AwaitStateIfRebuilt(const pb::Hello& ours, const pb::Hello& theirs) {
    const std::vector<std::string> gone = GoneStreams(theirs.applied(), streams_);
    std::set<std::string> awaiting;
    if (!gone.empty()) {
      for (const std::string& stream : theirs.streams()) awaiting.insert(stream);
      for (const auto& a : ours.applied()) awaiting.erase(a.origin_database());
    }
    {
      std::lock_guard<std::mutex> l(peer_.mu);
      peer_.judged_by = this;
      peer_.hello_streams = streams_;
      if (peer_.awaiting_state == awaiting && !r_.region_held_since_start) return;
      peer_.awaiting_state = awaiting;
    }
    if (!awaiting.empty()) {
      spdlog::warn(
          "event=rebuilt_region_awaits_state peer={} our_gone_streams=\"{}\" awaiting=\"{}\"",
          peer_.config.name, absl::StrJoin(gone, ","), absl::StrJoin(awaiting, ","));
    }
    r_.SyncWriteHold();
  }

  // A state transfer of the peer's database `stream` ended here.
  void StateArrived(const std::string& stream) {
    {
      std::lock_guard<std::mutex> l(peer_.mu);
      if (!peer_.awaiting_state.erase(stream) || !peer_.awaiting_state.empty()) return;
    }
    spdlog::info("event=rebuilt_region_state_in peer={}", peer_.config.name);
    r_.SyncWriteHold();
  }

  absl::Status Converse(const pb::Frame& hello,
                        const std::vector<std::pair<std::string, std::string>>& dbs) {
    if (!Write(hello)) return absl::UnavailableError("the stream closed before our hello");
    pb::Frame f;
    if (!stream_.Read(&f)) return absl::UnavailableError("the stream closed before the hello");
    last_received_ = SteadyTime::now();
    peer_.m.bytes_received->Increment(static_cast<double>(f.ByteSizeLong()));
    if (!f.has_hello()) return Reject("the first frame must be a hello");
    const pb::Hello& ph = f.hello();
    if (ph.protocol_version() != pb::PROTOCOL_VERSION_1) {
      return Reject(
          absl::StrCat("protocol version ", ph.protocol_version(), " is not spoken here"));
    }
    if (ph.region() != peer_.config.name || ph.replica_id() != peer_.config.replica_id ||
        ph.jurisdiction() != peer_.config.jurisdiction) {
      return Reject(absl::StrCat("hello from ", ph.region(), "/", ph.replica_id(), "/",
                                 ph.jurisdiction(), " does not match the configured peer ",
                                 peer_.config.name, "/", peer_.config.replica_id, "/",
                                 peer_.config.jurisdiction));
    }
    for (const auto& a : ph.applied()) {
      if (a.seq() < 0 || a.seq() > kMaxSeq) {
        return Reject(absl::StrCat("hello resume point ", a.seq(), " of ", a.origin_database(),
                                   " is not a seq"));
      }
    }
    if (ph.streams_size() > 64) return Reject("a hello naming more than 64 streams");
    for (const std::string& name : ph.streams()) {
      if (!ValidDatabaseName(name)) return Reject("a hello naming a malformed stream");
    }
    AwaitStateIfRebuilt(hello.hello(), ph);
    // The peer was rebuilt when we applied records of streams of its that are gone: it needs
    // our full state, its own documents among them (CatchUpFromState).
    const std::vector<std::string> peer_gone =
        ph.streams_size() > 0
            ? GoneStreams(hello.hello().applied(), {ph.streams().begin(), ph.streams().end()})
            : std::vector<std::string>();
    peer_rebuilt_ = !peer_gone.empty();
    // The last records of its earlier life may have reached some of the other peers and not
    // others, and each hears the peer's records only from the peer, whose outbox of them is
    // gone: the survivors compare what they applied of it, as after a loss.
    if (!peer_gone.empty()) {
      std::set<std::string> now(ph.streams().begin(), ph.streams().end());
      const std::string life = absl::StrJoin(now, ",");
      bool new_life;
      {
        std::lock_guard<std::mutex> l(peer_.mu);
        peer_.rebuilt_life = life;
        new_life = peer_.exchanged_lives.insert(life).second;
      }
      if (new_life) {
        spdlog::info(
            "event=survivor_exchange_for_rebuilt_peer peer={} gone_streams=\"{}\" life=\"{}\"",
            peer_.config.name, absl::StrJoin(peer_gone, ","), life);
        r_.AskSurvivorMarks(peer_.config.replica_id, life);
      }
    }
    std::vector<Cursor> cursors;
    {
      std::lock_guard<std::mutex> l(peer_.mu);
      peer_.heard = true;
      for (const auto& [db, stream] : dbs) {
        Cursor c{db, stream};
        for (const auto& a : ph.applied()) {
          if (a.origin_database() != stream) continue;
          c.after_seq = std::max<int64_t>(0, a.seq());
          c.known = true;
        }
        peer_.acked[stream] = c.after_seq;
        peer_.resumable[stream] = c.after_seq;
        cursors.push_back(c);
      }
    }
    {
      // The peer ships each of its databases from the resume point we gave.
      std::lock_guard<std::mutex> l(mu_);
      for (const auto& a : hello.hello().applied()) queued_through_[a.origin_database()] = a.seq();
      // It may ack what its hello claimed as soon as it has our hello: the reader below must
      // know our streams before the sender thread gets to run (it used to register them itself,
      // and an early ack was refused as "for a database we did not ship").
      for (const Cursor& c : cursors) {
        inflight_[c.stream];
        claimed_through_[c.stream] = c.after_seq;
      }
    }
    peer_.m.connected->Set(1);
    {
      // Coordination frames (leases, rights, syncs) from now on go out on this stream.
      std::lock_guard<std::mutex> l(peer_.mu);
      outlet_ = std::make_shared<Outlet>([this](pb::Frame fr) { return Write(std::move(fr)); });
      peer_.send = outlet_;
    }
    if (r_.coordinator) r_.coordinator->OnPeerUp(peer_.config.replica_id);
    spdlog::info("event=replication_stream_up peer={} resume=\"{}\"", peer_.config.name, [&] {
      std::string s;
      for (const Cursor& c : cursors) absl::StrAppend(&s, c.stream, ":", c.after_seq, " ");
      return s;
    }());
    up_ = true;  // both hellos are through: heartbeats may go out (Watch)
    sender_ = std::thread([this, cursors]() mutable { Ship(std::move(cursors)); });
    absl::Status result = absl::OkStatus();
    while (stream_.Read(&f)) {
      last_received_ = SteadyTime::now();
      if (r_.coordinator) r_.coordinator->Heard(peer_.config.replica_id);
      peer_.m.bytes_received->Increment(static_cast<double>(f.ByteSizeLong()));
      switch (f.body_case()) {
        case pb::Frame::kBatch:
          result = EnqueueBatch(f.batch());
          break;
        case pb::Frame::kAck:
          result = TakeAck(f.ack());
          break;
        case pb::Frame::kHeartbeat:
          break;
        case pb::Frame::kLease:
        case pb::Frame::kRights:
        case pb::Frame::kSyncRequest:
        case pb::Frame::kSyncReply:
          if (!r_.coordinator) {
            result = Reject("coordination frames, but coordination is off here");
          } else if (CallsTheRegion(f)) {
            if (absl::Status st = Coordinator::CheckFrame(peer_.config.replica_id, f); !st.ok()) {
              result = Reject(std::string(st.message()));
            } else {
              result = QueueCoordination(std::move(f));
            }
          } else if (absl::Status st = r_.coordinator->OnFrame(peer_.config.replica_id, f);
                     !st.ok()) {
            result = Reject(std::string(st.message()));
          }
          break;
        case pb::Frame::kSurvivorMarks:
          result = TakeSurvivorMarks(f.survivor_marks());
          break;
        case pb::Frame::kSurvivorAnswer:
          result = TakeSurvivorAnswer(f.survivor_answer());
          break;
        case pb::Frame::kSurvivorConfirm:
          result = TakeSurvivorConfirm(f.survivor_confirm());
          break;
        case pb::Frame::kHello:
          result = Reject("a second hello on one stream");
          break;
        default:
          result = Reject("a frame with no known body");
          break;
      }
      if (result.ok()) {
        std::lock_guard<std::mutex> l(mu_);
        result = apply_status_;
      }
      if (!result.ok()) break;
    }
    {
      // A session replaced by the peer's redial winds down after the new one said "connected":
      // only the live session may say the peer is not.
      std::lock_guard<std::mutex> l(peer_.mu);
      if (peer_.active == &stream_) peer_.m.connected->Set(0);
    }
    if (result.ok()) {
      // The peer half-closed (or went away): let the appliers and the coordination thread
      // finish what arrived, so that a rejected frame ends the stream with its own status. Not
      // when the stream was cut (silence, a failed write): nothing could be answered.
      std::unique_lock<std::mutex> l(mu_);
      draining_ = true;
      state_cv_.wait_for(l, std::chrono::seconds(5), [&] {
        return done_ || cancelled_ || write_failed_ || !apply_status_.ok() ||
               (apply_queued_ == 0 && applying_ == 0 && coordination_frames_.empty() &&
                !coordinating_);
      });
      if (!apply_status_.ok()) result = apply_status_;
      if (result.ok() && not_reading_) {
        result = absl::ResourceExhaustedError(
            "the peer does not read: its replies and acks would pass 64 MiB queued");
      }
    }
    if (result.ok() && !r_.stopping) result = absl::UnavailableError("the peer closed the stream");
    if (result.ok() && ship_error_.load()) result = absl::UnavailableError("shipping failed");
    return result;
  }

  // While batches apply, the region moves the streams' resume points at most every 200 ms; when
  // the session is over (every applier joined), they move to what it applied, so that they are
  // exact while the peer is away: the survivors' exchange after a loss compares them.
  void FlushResumePoints() {
    for (const auto& [db, through] : applied_through_) {
      if (through > 0) (void)MarkResumePoint(db, through, "resume_point_flush_failed");
    }
  }

  // Moves the stream's resume point for `db` to `through` (every record through it applied);
  // logs `failure_event` when the region could not. True when it did.
  bool MarkResumePoint(const std::string& db, int64_t through, const char* failure_event) {
    rpb::ApplyDeltasRequest req;
    req.set_origin(peer_.config.replica_id);
    req.set_origin_database(db);
    req.set_through_seq(through);
    req.set_mark_now(true);
    for (const auto& stream : streams_) req.add_receiver_streams(stream);
    rpb::ApplyDeltasResponse resp;
    auto ctx = r_.RegionCtx(5000);
    grpc::Status s = r_.region->ApplyDeltas(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("event={} peer={} db={} through={} error=\"{}\"", failure_event,
                   peer_.config.name, db, through, s.error_message());
    }
    return s.ok();
  }

  static pb::Frame AckFrame(const std::string& db, int64_t seq, int64_t resume_seq,
                            uint32_t state_batches) {
    pb::Frame f;
    f.mutable_ack()->set_origin_database(db);
    f.mutable_ack()->set_seq(seq);
    f.mutable_ack()->set_resume_seq(resume_seq);
    f.mutable_ack()->set_state_batches(state_batches);
    return f;
  }

  // The applier of `db` found no batch for kIdleMark after applying through `through`, past the
  // stream's resume point: moves the resume point there and acks it. False when the stream
  // could not take the ack (the session is over).
  bool MarkIdleStream(const std::string& db, int64_t through) {
    if (!MarkResumePoint(db, through, "resume_point_mark_failed")) return true;
    {
      std::lock_guard<std::mutex> l(mu_);
      int64_t& m = marked_through_[db];
      m = std::max(m, through);
    }
    return Write(AckFrame(db, through, through, 0));
  }

  // Checks a peer's batch and queues it for the applier. Batches arrive faster than one
  // ApplyDeltas per batch could take them; the applier takes everything queued per database in
  // one call (group commit), so the apply keeps up and its batches grow with the load.
  absl::Status EnqueueBatch(const pb::DeltaBatch& b) {
    auto list = DecodeBatch(b, peer_.config.replica_id);
    if (!list.ok()) return Reject(std::string(list.status().message()));
    Pending p;
    p.db = b.origin_database();
    p.state = b.state();
    p.state_end = b.state() && list->records_size() == 0;
    p.first_seq = b.first_seq();
    p.last_seq = b.last_seq();
    p.queued_at = SteadyTime::now();
    p.sent_unix_ms = b.sent_unix_ms();
    if (spdlog::should_log(spdlog::level::debug)) {
      int64_t oldest = 0;
      for (const pb::Record& rec : list->records())
        if (oldest == 0 || rec.committed_unix_ms() < oldest) oldest = rec.committed_unix_ms();
      const int64_t now = UnixMs();
      spdlog::debug(
          "event=batch_received peer={} db={} first={} last={} records={} age_at_send_ms={} "
          "transit_ms={}",
          peer_.config.name, b.origin_database(), b.first_seq(), b.last_seq(), list->records_size(),
          oldest ? b.sent_unix_ms() - oldest : 0, now - b.sent_unix_ms());
    }
    for (const pb::Record& rec : list->records()) {
      if (!services::ResidencyAllows(rec.residency(), r_.config.jurisdiction)) {
        return Reject(absl::StrCat("residency violation: record ", rec.seq(), " of ",
                                   b.origin_database(), " is pinned to ", rec.residency(),
                                   ", this region is ", r_.config.jurisdiction));
      }
      // Nor may the peer send what it could not hold itself: a region never writes, or is sent,
      // a record pinned to another jurisdiction (its customers are sent home to write), so such a
      // record is forged (say, a profile write that would take over an account pinned here).
      if (!services::ResidencyAllows(rec.residency(), peer_.config.jurisdiction)) {
        return Reject(absl::StrCat("residency violation: record ", rec.seq(), " of ",
                                   b.origin_database(), " is pinned to ", rec.residency(),
                                   ", which ", peer_.config.name, " (", peer_.config.jurisdiction,
                                   ") could not hold"));
      }
      rpb::OutboxRecord& o = p.records.emplace_back();
      o.set_seq(rec.seq());
      o.set_origin(b.origin());
      o.set_kind(ToRegionKind(rec.kind()));
      o.set_key(rec.key());
      o.set_payload(rec.payload());
      o.set_residency(rec.residency());
      o.mutable_created_at()->set_seconds(rec.committed_unix_ms() / 1000);
      o.mutable_created_at()->set_nanos(static_cast<int32_t>(rec.committed_unix_ms() % 1000) *
                                        1000000);
      p.bytes += rec.payload().size() + rec.key().size() + 32;
    }
    std::unique_lock<std::mutex> l(mu_);
    // Each database's seqs come without gaps, from the resume point our hello gave: a batch's
    // range covers the records it leaves out (residency), and the last batch of a state transfer
    // (which may only come before any deltas) moves the stream to the transfer's barrier. A gap
    // would move our mark past records we never saw.
    int64_t& queued_through = queued_through_[p.db];
    if (p.state_end) {
      if (deltas_queued_.count(p.db) || b.last_seq() < queued_through) {
        const int64_t at = queued_through;
        l.unlock();
        return Reject(absl::StrCat("a state transfer of ", p.db, " ends at ", b.last_seq(),
                                   " after this stream carried deltas or reached ", at));
      }
    } else if (!b.state()) {
      if (b.first_seq() != queued_through + 1) {
        const int64_t at = queued_through;
        l.unlock();
        return Reject(absl::StrCat("batch of ", p.db, " starts at ", b.first_seq(),
                                   ", this stream is at ", at, " (a gap or an overlap)"));
      }
      deltas_queued_.insert(p.db);
    }
    queued_through = std::max(queued_through, b.last_seq());
    // Backpressure: a reader that stops reading lets HTTP/2 flow control hold the peer (and the
    // watchdog does not count the peer's silence meanwhile). A failed apply, a cancelled stream
    // or a failed write ends the wait: the failed applier will never drain its queue, and an
    // applier whose ack cannot be written stops with its queue full (the reader would then wait
    // for good, and the watchdog does not cut a reader held back).
    if (!HoldBackReader([&] { return apply_bytes_ < (16 << 20); }, l)) return ReaderReleased();
    auto queue = apply_queues_.find(p.db);
    if (queue == apply_queues_.end()) {
      // One applier per origin database: the peer's databases go to different databases
      // here (a cart lives in the same shard everywhere), so their applies run side by side.
      if (apply_queues_.size() >= 64) {
        l.unlock();
        return Reject("more than 64 origin databases on one stream");
      }
      queue = apply_queues_.try_emplace(p.db).first;
      appliers_.emplace(p.db, std::thread([this, db = p.db] { ApplyLoop(db); }));
    }
    apply_bytes_ += p.bytes;
    ++apply_queued_;
    peer_.m.apply_queue_bytes->Increment(static_cast<double>(p.bytes));
    peer_.m.apply_queue_batches->Increment();
    ++queue->second.queued;
    queue->second.batches.push_back(std::move(p));
    queue->second.cv.notify_one();
    return absl::OkStatus();
  }

  // Records the lag of an applied call's records. lag_ms: from the commit at the peer to now,
  // two hosts' clocks, so it holds their skew. queue_lag_ms: what each record waited at the peer
  // before its batch was sent (the peer's clock) plus what its batch waited here until the
  // apply committed (this host's steady clock): the same less the network transit, and free of
  // skew, so the failover controllers can judge a returning region caught up by it.
  void ObserveLag(const rpb::ApplyDeltasRequest& req, const std::vector<Taken>& batches) {
    const int64_t now = UnixMs();
    const auto steady_now = SteadyTime::now();
    int i = 0;
    for (const auto& b : batches) {
      const int64_t waited_here =
          std::chrono::duration_cast<std::chrono::milliseconds>(steady_now - b.queued_at).count();
      for (int end = std::min(i + b.records, req.records_size()); i < end; ++i) {
        const auto& at = req.records(i).created_at();
        const int64_t committed = at.seconds() * 1000 + at.nanos() / 1000000;
        peer_.m.lag_ms->Observe(static_cast<double>(std::max<int64_t>(0, now - committed)));
        peer_.m.queue_lag_ms->Observe(
            static_cast<double>(std::max<int64_t>(0, b.sent_unix_ms - committed) + waited_here));
      }
    }
  }

  // Applies what the peer ships of one of its databases, in stream order: everything queued
  // in one ApplyDeltas call (at most 10,000 records; a state transfer's batches apart).
  void ApplyLoop(const std::string& origin_db) {
    bool busy = false;
    int64_t idle_mark_tried = 0;  // the last `through` an idle mark was tried for
    while (true) {
      rpb::ApplyDeltasRequest req;
      int64_t first_seq = 0;
      SteadyTime::time_point queued_at;
      uint64_t taken = 0;  // batches in this call
      std::vector<Taken> batches;
      int64_t mark_idle_through = 0;
      {
        std::unique_lock<std::mutex> l(mu_);
        ApplyQueue& aq = apply_queues_[origin_db];
        std::deque<Pending>& queue = aq.batches;
        if (busy) --applying_;
        busy = false;
        if (draining_) state_cv_.notify_all();
        const auto ready = [&] { return done_ || !queue.empty(); };
        // While batches come, the region moves the stream's resume point at most every 200 ms;
        // once they stop for kIdleMark, the resume point is moved to what was applied, so that
        // the acks let the peer truncate through all of it (see Ack.resume_seq). One try per
        // position: a failed one waits for the next batch or the session's end.
        const int64_t through = applied_through_[origin_db];
        if (marked_through_[origin_db] < through && idle_mark_tried < through) {
          if (!aq.cv.wait_for(l, kIdleMark, ready)) mark_idle_through = idle_mark_tried = through;
        } else {
          aq.cv.wait(l, ready);
        }
        if (done_) return;
        busy = true;
        ++applying_;
        if (mark_idle_through > 0) {
          l.unlock();
          if (!MarkIdleStream(origin_db, mark_idle_through)) {
            {
              std::lock_guard<std::mutex> ll(mu_);
              --applying_;
            }
            state_cv_.notify_all();
            return;
          }
          continue;
        }
        req.set_origin(peer_.config.replica_id);
        req.set_origin_database(origin_db);
        for (const auto& stream : streams_) req.add_receiver_streams(stream);
        req.set_state(queue.front().state);
        first_seq = queue.front().first_seq;
        queued_at = queue.front().queued_at;
        while (!queue.empty()) {
          Pending& p = queue.front();
          if (p.state != req.state()) break;
          if (req.records_size() > 0 &&
              req.records_size() + static_cast<int>(p.records.size()) > 10000) {
            break;
          }
          batches.push_back({static_cast<int>(p.records.size()), p.sent_unix_ms, p.queued_at});
          for (auto& o : p.records) *req.add_records() = std::move(o);
          req.set_through_seq(std::max(req.through_seq(), p.last_seq));
          if (p.state_end) req.set_state_end(true);
          apply_bytes_ -= p.bytes;
          --apply_queued_;
          peer_.m.apply_queue_bytes->Decrement(static_cast<double>(p.bytes));
          peer_.m.apply_queue_batches->Decrement();
          ++taken;
          queue.pop_front();
        }
        state_cv_.notify_all();  // a reader held back by the queue's size
      }
      rpb::ApplyDeltasResponse resp;
      auto ctx = r_.RegionCtx(30000);
      const auto t0 = SteadyTime::now();
      grpc::Status s = r_.region->ApplyDeltas(ctx.get(), req, &resp);
      spdlog::debug(
          "event=batch_applied peer={} db={} records={} first={} through={} applied={} "
          "duplicates={} ok={} us={} queued_us={}",
          peer_.config.name, origin_db, req.records_size(),
          req.records_size() ? req.records(0).seq() : 0, req.through_seq(), resp.applied(),
          resp.duplicates(), s.ok(),
          std::chrono::duration_cast<std::chrono::microseconds>(SteadyTime::now() - t0).count(),
          std::chrono::duration_cast<std::chrono::microseconds>(t0 - queued_at).count());
      if (!s.ok()) {
        absl::Status st = s.error_code() == grpc::StatusCode::INVALID_ARGUMENT
                              ? Reject(s.error_message())
                              : r_.RegionError(s, "ApplyDeltas");
        {
          // The reader ends the stream with this status at the next frame (or the watchdog
          // cancels it a second later if none comes).
          std::lock_guard<std::mutex> l(mu_);
          apply_status_ = st;
          apply_failed_at_ = SteadyTime::now();
          --applying_;  // this applier is done: a draining reader must not wait for it
        }
        state_cv_.notify_all();
        return;
      }
      if (!req.state()) ObserveLag(req, batches);  // full documents: no commit time to measure
      peer_.m.applied->Increment(resp.applied());
      if (req.state_end()) StateArrived(origin_db);
      if (req.state()) {
        peer_.recent.StateApplied(origin_db, req.through_seq(), req.state_end());
      } else {
        std::vector<RecentKeys::Record> recs;
        recs.reserve(static_cast<size_t>(req.records_size()));
        for (rpb::OutboxRecord& o : *req.mutable_records())  // done with them: move the keys
          recs.push_back({o.seq(), static_cast<uint32_t>(o.kind()), std::move(*o.mutable_key())});
        peer_.recent.Applied(origin_db, first_seq, req.through_seq(), std::move(recs));
      }
      int64_t marked = 0;
      {
        std::lock_guard<std::mutex> l(mu_);
        int64_t& through = applied_through_[origin_db];
        through = std::max(through, req.through_seq());
        apply_queues_[origin_db].applied += taken;
        int64_t& m = marked_through_[origin_db];
        m = std::max(m, resp.marked_through_seq());
        marked = std::min(m, req.through_seq());
      }
      if (!Write(AckFrame(origin_db, req.through_seq(), marked,
                          req.state() ? static_cast<uint32_t>(taken) : 0))) {
        {
          std::lock_guard<std::mutex> l(mu_);
          --applying_;
        }
        state_cv_.notify_all();
        return;
      }
      ConfirmAppliedAnswers();
    }
  }

  absl::Status TakeAck(const pb::Ack& a) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = inflight_.find(a.origin_database());
    if (it == inflight_.end()) return Reject("an ack for a database we did not ship");
    // An ack past what we shipped, or past where the peer's hello said it stood, would let the
    // outbox be truncated before the peer has the records.
    const int64_t shipped = shipped_through_[a.origin_database()];
    if (a.seq() > std::max(shipped, claimed_through_[a.origin_database()])) {
      return Reject(absl::StrCat("an ack of ", a.origin_database(), " through ", a.seq(),
                                 ", past what was shipped (", shipped, ")"));
    }
    if (a.has_resume_seq() && (a.resume_seq() < 0 || a.resume_seq() > a.seq())) {
      return Reject(absl::StrCat("an ack of ", a.origin_database(), " through ", a.seq(),
                                 " with a resume point of ", a.resume_seq(), " past it"));
    }
    auto& q = it->second;
    // State batches leave the window as the peer counts them applied (state_batches); before it
    // said so, an ack of seq 0 (every state call's) took all of them out, applied or not, and a
    // transfer of small documents grew the outgoing queue toward the size of the database.
    uint32_t state_credit = a.state_batches();
    if (state_credit > 0) {  // (not on a delta call's ack, which says 0: the hot path)
      const auto in_flight = static_cast<size_t>(
          std::count_if(q.begin(), q.end(), [](const InFlight& b) { return b.state; }));
      if (state_credit > in_flight) {
        return Reject(absl::StrCat("an ack of ", state_credit, " state batches of ",
                                   a.origin_database(), ", ", in_flight, " in flight"));
      }
    }
    while (!q.empty()) {
      const InFlight& b = q.front();
      const bool counted = b.state && a.has_state_batches();  // out by count, not by seq
      if (counted ? state_credit == 0 : b.last > a.seq()) break;
      if (counted) --state_credit;
      inflight_bytes_ -= static_cast<int64_t>(b.bytes);
      q.pop_front();
    }
    {
      std::lock_guard<std::mutex> pl(peer_.mu);
      int64_t& acked = peer_.acked[a.origin_database()];
      acked = std::max(acked, a.seq());
      int64_t& resumable = peer_.resumable[a.origin_database()];
      resumable = std::max(resumable, a.has_resume_seq() ? a.resume_seq() : a.seq());
    }
    window_cv_.notify_all();
    // Sync-peer durability counts only what this session sent: the hello's claim is the peer's
    // word alone, and one claiming the last seq would otherwise make every checkout on the
    // stream "persisted" there at once, though it holds none of it.
    if (r_.coordinator && shipped > 0) {
      r_.coordinator->OnAck(peer_.config.replica_id, a.origin_database(),
                            std::min(a.seq(), shipped));
    }
    return absl::OkStatus();
  }

  void NotifyAll() {
    write_cv_.notify_all();
    watch_cv_.notify_all();
    window_cv_.notify_all();
    state_cv_.notify_all();
    coordination_cv_.notify_all();
    for (auto& [db, q] : apply_queues_) q.cv.notify_all();
  }

  // Holds the reader back (holding `l` on mu_) until `room` or the session can go no further: a
  // failed apply, the session's end, a cancel or a failed write (after which no ack goes out,
  // so the appliers stop and the queues never drain). True when there is room.
  template <class Room>
  bool HoldBackReader(Room room, std::unique_lock<std::mutex>& l) {
    held_back_ = true;
    state_cv_.wait(
        l, [&] { return done_ || cancelled_ || write_failed_ || !apply_status_.ok() || room(); });
    held_back_ = false;
    last_received_ = SteadyTime::now();
    return !done_ && !cancelled_ && !write_failed_ && apply_status_.ok();
  }

  // Why HoldBackReader returned false (mu_ held).
  absl::Status ReaderReleased() const {
    if (!apply_status_.ok()) return apply_status_;
    if (write_failed_) return absl::UnavailableError("a write to the peer failed");
    return absl::CancelledError("the session is ending");
  }

  // Coordination frames whose handling calls the region (a takeover's or catch-up's order pages,
  // a rights write-off) can take seconds; they run on this session's coordination thread, in
  // arrival order, so that the reader goes on reading: leases, acks and batches are not held up
  // and the watchdog does not take a slow region call for a silent peer. Lease and rights gossip
  // frames only touch memory and stay on the reader.
  static bool CallsTheRegion(const pb::Frame& f) {
    return f.has_sync_request() || f.has_sync_reply() ||
           (f.has_rights() &&
            (f.rights().has_retire() || f.rights().has_declared() || f.rights().has_settled()));
  }

  // Queues `f` for the coordination thread (started on first use). At most kCoordinationQueued
  // frames wait; beyond that the reader waits too, as for a full apply queue.
  absl::Status QueueCoordination(pb::Frame f) {
    std::unique_lock<std::mutex> l(mu_);
    if (!HoldBackReader([&] { return coordination_frames_.size() < kCoordinationQueued; }, l)) {
      return ReaderReleased();
    }
    // An asker re-sends a page it has no answer to every second; while a slow region call holds
    // the thread, one copy in the queue is enough.
    if (f.has_sync_request()) {
      for (const pb::Frame& q : coordination_frames_) {
        if (q.has_sync_request() && SamePage(q.sync_request(), f.sync_request())) {
          return absl::OkStatus();
        }
      }
    }
    coordination_frames_.push_back(std::move(f));
    if (!coordination_.joinable()) coordination_ = std::thread([this] { CoordinationLoop(); });
    coordination_cv_.notify_one();
    return absl::OkStatus();
  }

  static bool SamePage(const pb::GroupSyncRequest& a, const pb::GroupSyncRequest& b) {
    return a.group() == b.group() && a.epoch() == b.epoch() && a.after_key() == b.after_key() &&
           a.catch_up() == b.catch_up();
  }

  void CoordinationLoop() {
    std::unique_lock<std::mutex> l(mu_);
    while (true) {
      coordination_cv_.wait(
          l, [&] { return done_ || cancelled_ || write_failed_ || !coordination_frames_.empty(); });
      // A stream that ended or was cut cannot carry answers: what is left is asked again
      // (syncs) or resent on the next stream (write-offs).
      if (done_ || cancelled_ || write_failed_) return;
      pb::Frame f = std::move(coordination_frames_.front());
      coordination_frames_.pop_front();
      coordinating_ = true;
      state_cv_.notify_all();  // a reader waiting for room
      l.unlock();
      absl::Status st = r_.coordinator->OnFrame(peer_.config.replica_id, f);
      if (!st.ok()) st = Reject(std::string(st.message()));
      l.lock();
      // Both in one hold of mu_: a draining reader must not see this frame done and no failure.
      coordinating_ = false;
      if (!st.ok() && apply_status_.ok()) {
        // As for a failed apply: the reader ends the stream with this status at the next frame,
        // or the watchdog cancels it a second later.
        apply_status_ = st;
        apply_failed_at_ = SteadyTime::now();
      }
      if (draining_ || !st.ok()) state_cv_.notify_all();
      if (!st.ok()) return;
    }
  }

  // Waits until fewer than max_inflight_bytes are unacknowledged; false when the session ends.
  bool WaitForWindow() {
    std::unique_lock<std::mutex> l(mu_);
    window_cv_.wait(l, [&] {
      return done_ || write_failed_ || inflight_bytes_ < r_.config.max_inflight_bytes;
    });
    return !done_ && !write_failed_;
  }

  bool WindowFull() {
    std::lock_guard<std::mutex> l(mu_);
    return inflight_bytes_ >= r_.config.max_inflight_bytes;
  }

  bool SendBatch(const std::string& db, int64_t first, int64_t last, const pb::RecordList& list,
                 BatchKind kind) {
    pb::Frame f;
    *f.mutable_batch() = EncodeBatch(r_.config.replica_id, db, first, last, list, UnixMs(), kind);
    size_t bytes = f.ByteSizeLong();
    {
      std::lock_guard<std::mutex> l(mu_);
      inflight_[db].push_back(InFlight{last, bytes, kind == BatchKind::kState});
      inflight_bytes_ += static_cast<int64_t>(bytes);
      int64_t& shipped = shipped_through_[db];
      shipped = std::max(shipped, last);
    }
    peer_.m.batch_records->Observe(list.records_size());
    spdlog::debug("event=batch_sent peer={} db={} first={} last={} records={}", peer_.config.name,
                  db, first, last, list.records_size());
    if (staging_) {
      staged_.push_back(std::move(f));
      return true;
    }
    return Write(std::move(f));
  }

  // Queues the staged frames at once, so that the writer sends them back to back (one TLS
  // record and TCP segment where they fit). False once the session ended.
  bool WriteStaged() {
    staging_ = false;
    if (staged_.empty()) return true;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (done_ || write_failed_) return false;
      for (pb::Frame& f : staged_) outgoing_.push_back(std::move(f));  // batches
    }
    staged_.clear();
    last_sent_ = SteadyTime::now();
    write_cv_.notify_one();
    return true;
  }

  // Ships our outbox to the peer: from the region-wide feed, or, for a database where the peer
  // is further behind than the feed reaches, from the outbox itself until it catches up.
  void Ship(std::vector<Cursor> cursors) {
    if (!CatchUpFromState(cursors)) return Fail();
    auto next_check = SteadyTime::now() + std::chrono::seconds(1);
    OutboxFeed& feed = *r_.feed;
    struct Detach {
      OutboxFeed& feed;
      const void* who;
      ~Detach() { feed.Detach(who); }
    } detach{feed, this};
    while (WaitForWindow()) {
      if (!ExchangeAfterLossIfAsked(cursors)) return Fail();
      if (SteadyTime::now() >= next_check) {
        if (!CatchUpFromState(cursors)) return Fail();
        next_check = SteadyTime::now() + std::chrono::seconds(1);
      }
      std::vector<Cursor*> behind;
      bool sent = false;
      staging_ = true;  // the batches of every database in one go
      for (Cursor& c : cursors) {
        if (!c.checked) continue;
        if (!c.attached) {
          feed.Attach(this, c.db, c.stream, c.after_seq, !c.past_end);
          c.attached = true;
        }
        std::vector<OutboxFeed::Slice> slices;
        int64_t through = 0;
        if (!feed.Take(this, c.db, c.stream, c.after_seq, &slices, &through)) {
          behind.push_back(&c);
          continue;
        }
        if (through <= c.after_seq) continue;
        if (!ShipSlices(c, slices, through)) return Fail();
        sent = true;
      }
      if (!WriteStaged()) return Fail();
      if (!behind.empty()) {
        if (!ReadBehind(behind)) return;
        continue;
      }
      const auto heartbeat_due =
          last_sent_.load() + std::chrono::milliseconds(r_.config.heartbeat_ms);
      if (SteadyTime::now() >= heartbeat_due) {
        if (!Heartbeat()) return Fail();
        continue;
      }
      if (!sent) {
        // Checked cursors only: an unchecked one ships nothing (its database could not be read;
        // it is checked again every second), and the feed past it would end every wait at once,
        // a loop at full speed until then.
        std::map<std::string, int64_t> positions;
        for (const Cursor& c : cursors)
          if (c.checked) positions[c.db] = c.after_seq;
        // Marks to send or answer (exchange_generation, reanswer_at_) wake us too.
        feed.Wait(positions, reanswer_at_ ? std::min(heartbeat_due, *reanswer_at_) : heartbeat_due,
                  [&] { return over_.load() || peer_.exchange_generation != exchange_seen_; });
      }
    }
  }

  // Batches the records of `slices` past the cursor, by count and bytes; records the peer may
  // not hold are left out (the batch's range still covers them, so the peer's resume point moves
  // past them). Stops after the batch that fills the window (the cursor then stands at its end,
  // and the feed keeps the rest): a peer behind by many slices would otherwise get them all at
  // once, however little it acked. False when the stream failed.
  bool ShipSlices(Cursor& c, const std::vector<OutboxFeed::Slice>& slices, int64_t through) {
    pb::RecordList list;
    size_t bytes = 0;
    int64_t first = c.after_seq + 1;
    for (const OutboxFeed::Slice& slice : slices) {
      for (const pb::Record& rec : *slice.records) {
        if (rec.seq() <= c.after_seq) continue;
        if (services::ResidencyAllows(rec.residency(), peer_.config.jurisdiction)) {
          *list.add_records() = rec;
          bytes += rec.payload().size() + rec.key().size() + 24;
        }
        if (list.records_size() >= r_.BatchRecordsMax() ||
            bytes >= static_cast<size_t>(r_.config.batch_max_bytes)) {
          if (!SendBatch(c.stream, first, rec.seq(), list, BatchKind::kDeltas)) return false;
          first = rec.seq() + 1;
          list.Clear();
          bytes = 0;
          if (rec.seq() < through && WindowFull()) {
            c.after_seq = rec.seq();
            return true;
          }
        }
      }
    }
    if (first <= through && !SendBatch(c.stream, first, through, list, BatchKind::kDeltas))
      return false;
    c.after_seq = through;
    return true;
  }

  // One read of the outbox for the cursors the feed does not reach back to. False when the
  // session is over.
  bool ReadBehind(const std::vector<Cursor*>& cursors) {
    rpb::PollOutboxRequest req;
    for (const Cursor* c : cursors) {
      rpb::OutboxCursor* oc = req.add_cursors();
      oc->set_database(c->db);
      oc->set_after_seq(c->after_seq);
      oc->set_gap_horizon(c->gap_horizon);
      oc->set_gap_horizon_seq(c->gap_horizon_seq);
    }
    req.set_limit(r_.config.batch_max_records);
    req.set_wait_ms(50);
    peer_.m.own_outbox_reads->Increment();
    rpb::PollOutboxResponse resp;
    auto ctx = r_.RegionCtx(10000);
    grpc::Status s = r_.region->PollOutbox(ctx.get(), req, &resp);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (done_) return false;
    }
    if (!s.ok() || resp.chunks_size() != static_cast<int>(cursors.size())) {
      // The region is restarting or overloaded: keep the stream (the peer's batches wait for
      // the same region anyway) and read again shortly.
      spdlog::warn("event=outbox_poll_failed peer={} error=\"{}\"", peer_.config.name,
                   s.error_message());
      if (!Heartbeat()) return false;
      return r_.SleepFor(std::chrono::milliseconds(200));
    }
    for (size_t i = 0; i < cursors.size(); ++i) {
      Cursor& c = *cursors[i];
      const rpb::OutboxChunk& chunk = resp.chunks(static_cast<int>(i));
      c.gap_horizon = chunk.gap_horizon();
      c.gap_horizon_seq = chunk.gap_horizon_seq();
      if (chunk.next_after_seq() <= c.after_seq) continue;
      auto records = std::make_shared<std::vector<pb::Record>>();
      for (const rpb::OutboxRecord& o : chunk.records()) records->push_back(ToWire(o));
      if (!ShipSlices(c, {OutboxFeed::Slice{c.after_seq, chunk.next_after_seq(), records}},
                      chunk.next_after_seq())) {
        Fail();
        return false;
      }
    }
    if (SteadyTime::now() - last_sent_.load() >=
        std::chrono::milliseconds(r_.config.heartbeat_ms)) {
      if (!Heartbeat()) return false;
    }
    return true;
  }

  // Anti-entropy: a peer whose resume point lies in the part of our outbox already truncated
  // (a new region, or one that was away while the others truncated) gets the full documents of
  // that database instead, then the outbox from the barrier seq on. So does a rebuilt peer
  // (peer_rebuilt_) with no resume point for it: our outbox holds only what this region wrote,
  // and the peer needs every document we hold, its own among them (which no outbox holds any
  // more). The transfer's end gives the peer a resume point, so this happens once per database
  // and rebuild. Checks the cursors not checked yet; one whose database cannot be read now (the
  // region or that database unreachable) stays unchecked, and the ship loop tries again a second
  // later: reading on regardless would ship past a truncated gap as if it were aborted
  // transactions. False when the stream failed.
  bool CatchUpFromState(std::vector<Cursor>& cursors) {
    if (std::all_of(cursors.begin(), cursors.end(), [](const Cursor& c) { return c.checked; }))
      return true;
    rpb::GetStatusResponse status;
    std::map<std::string, int64_t> truncating;
    {
      // Housekeeping decides its truncations under the same lock, from acks read under it, and
      // records each before calling the region: so a truncation that went past the peer's hello
      // shows here, in this status or in `truncating`, or none will. The status
      // alone would not do: a TruncateOutbox that timed out may still be deleting (its DELETE
      // waiting for a lock or a connection), and commit after this status was read.
      std::lock_guard<std::mutex> tl(r_.truncate_mu);
      auto ctx = r_.RegionCtx(5000);
      grpc::Status s = r_.region->GetStatus(ctx.get(), rpb::GetStatusRequest(), &status);
      if (!s.ok()) {
        spdlog::warn("event=outbox_check_failed peer={} error=\"{}\"", peer_.config.name,
                     s.error_message());
        return true;
      }
      truncating = r_.truncating;
    }
    for (Cursor& c : cursors) {
      if (c.checked) continue;
      for (const auto& d : status.databases()) {
        if (d.name() != c.db || !d.reachable()) continue;
        auto decided = truncating.find(c.stream);
        // The region records how far its outbox was truncated. Before it did, a missing row
        // right after the resume point was taken for a truncated one, and a seq that never
        // committed (a rolled-back write, or the sequence's jump after a PostgreSQL crash) with
        // the peer resuming just before it cost a full state transfer. A region server from
        // before that still gets the old rule.
        const bool truncated = (decided != truncating.end() && c.after_seq < decided->second) ||
                               (d.has_outbox_truncated_through()
                                    ? c.after_seq < d.outbox_truncated_through()
                                    : (d.outbox_min_seq() > 0 ? d.outbox_min_seq() > c.after_seq + 1
                                                              : d.outbox_last_seq() > c.after_seq));
        const bool send_state = truncated || (peer_rebuilt_ && !c.known);
        // Before SendState, which moves the cursor to a barrier taken later (past this status's
        // last seq once anything was written meanwhile).
        c.past_end = !send_state && c.after_seq > d.outbox_last_seq();
        if (send_state) {
          (truncated ? peer_.m.state_truncated : peer_.m.state_rebuilt)->Increment();
          if (!SendState(c, truncated ? "resume_point_truncated" : "peer_rebuilt")) return false;
        }
        if (c.past_end) {
          spdlog::warn(
              "event=peer_resume_past_outbox_end peer={} db={} resume_seq={} outbox_last_seq={}",
              peer_.config.name, c.db, c.after_seq, d.outbox_last_seq());
        }
        c.checked = true;
      }
    }
    return true;
  }

  bool SendState(Cursor& c, const char* reason) {
    rpb::OutboxBarrierRequest breq;
    breq.set_database(c.db);
    rpb::OutboxBarrierResponse barrier;
    {
      auto ctx = r_.RegionCtx(30000);
      grpc::Status s = r_.region->OutboxBarrier(ctx.get(), breq, &barrier);
      if (!s.ok()) {
        spdlog::warn("event=state_transfer_failed peer={} db={} error=\"{}\"", peer_.config.name,
                     c.db, s.error_message());
        return false;
      }
    }
    spdlog::info(
        "event=state_transfer_started peer={} db={} reason={} peer_resume={} through_seq={}",
        peer_.config.name, c.db, reason, c.after_seq, barrier.seq());
    int64_t sent = 0;
    if (!SendDocuments(c, &sent)) return false;
    if (!SendBatch(c.stream, 0, barrier.seq(), pb::RecordList(), BatchKind::kState)) return false;
    spdlog::info("event=state_transfer_sent peer={} db={} documents={} through_seq={}",
                 peer_.config.name, c.db, sent, barrier.seq());
    c.after_seq = barrier.seq();
    c.gap_horizon = c.gap_horizon_seq = 0;
    return true;
  }

  // Every document of c's database the peer may hold (or, with `only`, those of these keys), as
  // state batches (joined at the peer, no mark moves). False when the stream or the region
  // failed.
  bool SendDocuments(Cursor& c, int64_t* sent, const DocumentKeys* only = nullptr) {
    const bool global = c.db == "global";
    const std::vector<rpb::OutboxKind> kinds =
        global ? std::vector<rpb::OutboxKind>{rpb::OUTBOX_KIND_PRODUCT, rpb::OUTBOX_KIND_INVENTORY}
               : std::vector<rpb::OutboxKind>{rpb::OUTBOX_KIND_USER, rpb::OUTBOX_KIND_CART,
                                              rpb::OUTBOX_KIND_ORDER};
    for (rpb::OutboxKind kind : kinds) {
      // With `only`: its keys of this kind, a slice of them per read (one read per slice when
      // they fit its limit).
      std::vector<std::string> wanted;
      if (only) {
        auto it = only->find(kind);
        if (it == only->end()) continue;
        wanted.assign(it->second.begin(), it->second.end());
      }
      std::string after;
      for (size_t slice = 0; !only || slice < wanted.size(); slice += kKeysPerRead) {
        for (bool done = false; !done;) {
          if (!WaitForWindow()) return false;
          rpb::ReadStateRequest req;
          req.set_database(c.db);
          req.set_kind(kind);
          req.set_after_key(after);
          req.set_limit(r_.config.batch_max_records);
          for (size_t i = slice; only && i < std::min(wanted.size(), slice + kKeysPerRead); ++i)
            req.add_keys(wanted[i]);
          rpb::ReadStateResponse resp;
          auto ctx = r_.RegionCtx(30000);
          grpc::Status s = r_.region->ReadState(ctx.get(), req, &resp);
          if (!s.ok()) {
            spdlog::warn("event=state_transfer_failed peer={} db={} error=\"{}\"",
                         peer_.config.name, c.db, s.error_message());
            return false;
          }
          // A page is split by count and by bytes: it may hold more records than it has rows (an
          // order with a status is two), and large documents must not make a frame the peer
          // refuses (kMaxBatchRecords, kMaxBatchBytes) on every retry: the transfer would start
          // over on every redial and never end.
          pb::RecordList list;
          size_t bytes = 0;
          for (const rpb::OutboxRecord& o : resp.records()) {
            if (!services::ResidencyAllows(o.residency(), peer_.config.jurisdiction)) continue;
            const size_t size = o.payload().size() + o.key().size() + 24;
            if (list.records_size() > 0 &&
                (list.records_size() >= r_.BatchRecordsMax() ||
                 bytes + size > static_cast<size_t>(r_.config.batch_max_bytes))) {
              if (!SendBatch(c.stream, 0, 0, list, BatchKind::kState)) return false;
              *sent += list.records_size();
              list.Clear();
              bytes = 0;
            }
            bytes += size;
            pb::Record* rec = list.add_records();
            rec->set_seq(0);
            rec->set_kind(ToWireKind(o.kind()));
            rec->set_key(o.key());
            rec->set_payload(o.payload());
            rec->set_residency(o.residency());
            rec->set_committed_unix_ms(o.created_at().seconds() * 1000 +
                                       o.created_at().nanos() / 1000000);
          }
          if (list.records_size() > 0 && !SendBatch(c.stream, 0, 0, list, BatchKind::kState))
            return false;
          *sent += list.records_size();
          after = resp.last_key();
          done = resp.done();
        }
        if (!only) break;
        after.clear();
      }
    }
    return true;
  }

  // After a region was lost (a peer took its orders over), the survivors may each hold records
  // of it the others lack: it shipped to each directly and died in between. Each survivor sends
  // each other survivor its marks for the lost region's databases (SurvivorMarks, asked for by
  // the coordinator: owe_marks); a survivor whose mark for one of them is higher than the
  // peer's sends the peer the documents that the records in between touched (or, where it does
  // not know them, all its documents), which the peer joins; one that is not ahead sends
  // nothing (the usual case: the lost region had shipped the same to both). Either way it then
  // sends a SurvivorAnswer, and the asker, once it applied what came before the answer, a
  // SurvivorConfirm: until then the asker sends its marks again on every new session, since
  // frames queued on a session that breaks are lost. A survivor answers a peer's marks only for
  // a takeover its own coordinator saw, until the peer confirms (answer_marks), at most once per
  // session and not within kReanswerGap of its last answer. False when the session failed.
  bool ExchangeAfterLossIfAsked(std::vector<Cursor>& cursors) {
    const uint64_t generation = peer_.exchange_generation.load();
    const auto now = SteadyTime::now();
    if (generation == exchange_seen_ && (!reanswer_at_ || now < *reanswer_at_)) return true;
    exchange_seen_ = generation;
    reanswer_at_.reset();
    std::set<uint32_t> owe;
    Marks theirs;
    {
      std::lock_guard<std::mutex> l(mu_);  // then peer_.mu, as everywhere
      std::lock_guard<std::mutex> lp(peer_.mu);
      for (uint32_t lost : peer_.owe_marks) {
        auto [it, fresh] = asked_.try_emplace(lost);  // before the peer can answer
        if (!fresh) continue;
        it->second.takeover = peer_.takeovers[lost];
        owe.insert(lost);
      }
      for (auto it = peer_marks_.begin(); it != peer_marks_.end();) {
        const uint32_t lost = it->first;
        auto last = peer_.last_answer.find(lost);
        if (!peer_.answer_marks.count(lost) || answered_.count(lost)) {
          ++it;  // parked until our coordinator sees that region taken over
        } else if (last != peer_.last_answer.end() && now - last->second < kReanswerGap) {
          const auto at = last->second + kReanswerGap;  // answered on a session just before
          reanswer_at_ = reanswer_at_ ? std::min(*reanswer_at_, at) : at;
          ++it;
        } else {
          answered_[lost] = peer_.takeovers[lost];
          peer_.last_answer[lost] = now;
          theirs.insert(peer_marks_.extract(it++));
        }
      }
    }
    if (owe.empty() && theirs.empty()) return true;
    // Whatever fails from here ends the session: on the next one we send our marks again
    // (owe_marks holds them until the exchange is done), and so does the peer.
    // What we tell the peer errs low (our resume points: everything through them is applied
    // here), what we compare it with errs high (the highest we applied), so that a doubt sends
    // the documents rather than skipping them.
    Marks resume, highest;
    if (!ReadMarks(false, &resume) || !ReadMarks(true, &highest)) return false;
    for (uint32_t lost : owe) {
      // The life of a rebuilt peer our marks go out in, noted before they go (so before the
      // peer can answer): once the exchange is done, it is recorded as done for that life.
      const std::string life = r_.RebuiltLifeOf(lost);
      {
        std::lock_guard<std::mutex> l(mu_);
        auto it = asked_.find(lost);
        if (it != asked_.end()) it->second.rebuilt_life = life;
      }
      pb::Frame f;
      pb::SurvivorMarks* sm = f.mutable_survivor_marks();
      sm->set_lost(lost);
      for (const auto& [db, seq] : resume[lost]) {
        pb::AckedSeq* a = sm->add_applied();
        a->set_origin_database(db);
        a->set_seq(seq);
      }
      if (!Write(std::move(f))) return false;
      spdlog::info("event=survivor_marks_sent peer={} lost_replica={} marks=\"{}\"",
                   peer_.config.name, lost, Describe(resume[lost]));
    }
    if (theirs.empty()) return true;
    DocumentKeys keys;
    bool every_document = false;
    int64_t sent = 0;
    if (WhatThePeerLacks(theirs, highest, &keys, &every_document)) {
      for (Cursor& c : cursors) {
        if (!SendDocuments(c, &sent, every_document ? nullptr : &keys)) return false;
      }
      size_t n_keys = 0;
      for (const auto& [kind, k] : keys) n_keys += k.size();
      peer_.m.survivor_sent->Increment();
      peer_.m.survivor_records->Increment(static_cast<double>(sent));
      spdlog::info("event=survivor_state_sent peer={} records={} scope={}", peer_.config.name, sent,
                   every_document ? "every_document" : absl::StrCat(n_keys, "_keys"));
    }
    // The answers follow the documents on the stream: the peer confirms once it applied them.
    for (const auto& [lost, marks] : theirs) {
      pb::Frame f;
      f.mutable_survivor_answer()->set_lost(lost);
      f.mutable_survivor_answer()->set_records(static_cast<uint64_t>(sent));
      if (!Write(std::move(f))) return false;
    }
    return true;
  }

  // Our marks per origin region and database: the resume points, or the highest applied.
  bool ReadMarks(bool highest, Marks* out) {
    rpb::GetStreamMarksRequest req;
    req.set_highest(highest);
    rpb::GetStreamMarksResponse resp;
    auto ctx = r_.RegionCtx(5000);
    grpc::Status s = r_.region->GetStreamMarks(ctx.get(), req, &resp);
    if (!s.ok()) {
      spdlog::warn("event=survivor_exchange_failed peer={} error=\"{}\"", peer_.config.name,
                   s.error_message());
      return false;
    }
    for (const auto& m : resp.marks()) (*out)[m.origin()][m.origin_database()] = m.seq();
    return true;
  }

  // Whether the peer lacks records of a lost region that we applied (its marks `theirs` below
  // our `highest`), and which documents to send it then: those of the keys those records touched
  // as listed here (PeerState::recent of the lost region), or every document where a range is
  // not listed (applied by an earlier process, or too long ago).
  bool WhatThePeerLacks(const Marks& theirs, const Marks& highest, DocumentKeys* keys,
                        bool* every_document) {
    bool lacks = false;
    for (const auto& [lost, peer_marks] : theirs) {
      auto mine = highest.find(lost);
      const std::map<std::string, int64_t> none;
      const auto& ours = mine == highest.end() ? none : mine->second;
      const PeerState* origin = nullptr;
      for (const auto& p : r_.peers)
        if (p->config.replica_id == lost) origin = p.get();
      std::string ahead;
      for (const auto& [db, seq] : ours) {
        auto p = peer_marks.find(db);
        const int64_t at_peer = p == peer_marks.end() ? 0 : p->second;
        if (seq <= at_peer) continue;
        absl::StrAppend(&ahead, ahead.empty() ? "" : " ", db, ":", at_peer, "<", seq);
        std::vector<std::pair<uint32_t, std::string>> listed;
        if (!origin || !origin->recent.KeysBetween(db, at_peer, seq, &listed)) {
          *every_document = true;
        }
        for (auto& [kind, key] : listed) (*keys)[static_cast<rpb::OutboxKind>(kind)].insert(key);
      }
      if (ahead.empty()) {
        peer_.m.survivor_skipped->Increment();
        spdlog::info(
            "event=survivor_state_skipped peer={} lost_replica={} ours=\"{}\" theirs=\"{}\"",
            peer_.config.name, lost, Describe(ours), Describe(peer_marks));
      } else {
        lacks = true;
        spdlog::info("event=survivor_state_asked peer={} lost_replica={} ahead=\"{}\"",
                     peer_.config.name, lost, ahead);
      }
    }
    return lacks;
  }

  // A peer's marks for a region that was lost (see ExchangeAfterLossIfAsked): kept for the ship
  // loop to compare with ours.
  absl::Status TakeSurvivorMarks(const pb::SurvivorMarks& m) {
    const bool third = std::any_of(r_.peers.begin(), r_.peers.end(), [&](const auto& p) {
      return p->config.replica_id == m.lost() && p.get() != &peer_;
    });
    if (!third) {
      return Reject(absl::StrCat("survivor marks for replica ", m.lost(),
                                 ", which is not a third region of this deployment"));
    }
    if (m.applied_size() > 1024) return Reject("survivor marks: more than 1024 databases");
    std::map<std::string, int64_t> marks;
    for (const pb::AckedSeq& a : m.applied()) {
      if (a.origin_database().empty() || a.seq() < 0 ||
          !marks.emplace(a.origin_database(), a.seq()).second) {
        return Reject(absl::StrCat("survivor marks for replica ", m.lost(),
                                   ": an empty, negative or repeated mark for database \"",
                                   a.origin_database(), "\""));
      }
    }
    bool awaited, fresh;
    {
      std::lock_guard<std::mutex> l(mu_);
      std::lock_guard<std::mutex> lp(peer_.mu);
      fresh = peer_marks_.insert_or_assign(m.lost(), std::move(marks)).second;
      awaited = peer_.answer_marks.count(m.lost()) > 0;
    }
    spdlog::info("event=survivor_marks_received peer={} lost_replica={} marks={} awaited={}",
                 peer_.config.name, m.lost(), m.applied_size(), awaited);
    if (!awaited) {
      // Not (yet) a loss here: compared once our coordinator sees the takeover, if ever.
      peer_.m.survivor_parked->Increment();
      return absl::OkStatus();
    }
    if (fresh) {  // (marks replacing waiting ones were asked for already)
      WakeExchange();
    }
    return absl::OkStatus();
  }

  // The peer's answer to our marks on this stream. Once every batch the stream carried before
  // it (the peer's documents) is applied here, the exchange is done (ConfirmAppliedAnswers).
  absl::Status TakeSurvivorAnswer(const pb::SurvivorAnswer& a) {
    bool asked;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = asked_.find(a.lost());
      asked = it != asked_.end() && !it->second.answered;
      if (asked) {
        it->second.answered = true;
        for (const auto& [db, queue] : apply_queues_) it->second.queued[db] = queue.queued;
      }
    }
    if (!asked) {
      return Reject(
          absl::StrCat("a survivor answer about replica ", a.lost(),
                       " that our marks did not ask for on this stream, or a second one"));
    }
    spdlog::info("event=survivor_answer_received peer={} lost_replica={} records={}",
                 peer_.config.name, a.lost(), a.records());
    ConfirmAppliedAnswers();
    return absl::OkStatus();
  }

  // Confirms the peer's answers whose batches are applied: the exchange about that lost region
  // is done, our marks stop going out, and the peer stops answering.
  void ConfirmAppliedAnswers() {
    struct Done {
      uint32_t lost;
      bool taken_again;  // since our marks
      std::string rebuilt_life;
    };
    std::vector<Done> done;
    bool again = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      auto applied = [&](const Asked& a) {
        if (!a.answered) return false;
        for (const auto& [db, queued] : a.queued) {
          auto q = apply_queues_.find(db);
          if (q != apply_queues_.end() && q->second.applied < queued) return false;
        }
        return true;
      };
      if (std::none_of(asked_.begin(), asked_.end(),
                       [&](const auto& a) { return applied(a.second); }))
        return;
      std::lock_guard<std::mutex> lp(peer_.mu);
      for (auto it = asked_.begin(); it != asked_.end();) {
        if (!applied(it->second)) {
          ++it;
          continue;
        }
        const bool moved = peer_.takeovers[it->first] != it->second.takeover;
        done.push_back({it->first, moved, std::move(it->second.rebuilt_life)});
        if (moved) {
          again = true;  // taken over again since our marks: they go out again
        } else {
          peer_.owe_marks.erase(it->first);
        }
        it = asked_.erase(it);
      }
    }
    if (again) {
      WakeExchange();
    }
    for (const auto& [lost, taken_again, rebuilt_life] : done) {
      // Recorded (a rebuilt peer's life) before it is logged: a kill right after the line
      // finds the record.
      bool recorded = false;
      if (!taken_again && !rebuilt_life.empty()) {
        absl::Status st = r_.done_exchanges.Record(lost, peer_.config.replica_id, rebuilt_life);
        recorded = st.ok();
        if (!st.ok()) {
          spdlog::warn("event=done_exchange_not_persisted peer={} lost_replica={} error=\"{}\"",
                       peer_.config.name, lost, std::string(st.message()));
        }
      }
      spdlog::info(
          "event=survivor_exchange_done peer={} lost_replica={} taken_over_again={} recorded={}",
          peer_.config.name, lost, taken_again, recorded);
      pb::Frame f;
      f.mutable_survivor_confirm()->set_lost(lost);
      // Lost with the session, the peer keeps answer_marks open; we send no more marks.
      (void)Write(std::move(f));
    }
  }

  // The peer applied our answer about a lost region: we answer its marks about it no more.
  absl::Status TakeSurvivorConfirm(const pb::SurvivorConfirm& c) {
    bool answered, again = false;
    {
      std::lock_guard<std::mutex> l(mu_);
      std::lock_guard<std::mutex> lp(peer_.mu);
      auto it = answered_.find(c.lost());
      answered = it != answered_.end();
      if (answered) {
        // Taken over again since our answer: marks about it are answered again (any that came
        // on this session meanwhile wait in peer_marks_).
        again = peer_.takeovers[c.lost()] != it->second;
        if (!again) {
          peer_.answer_marks.erase(c.lost());
          peer_.last_answer.erase(c.lost());
        }
        answered_.erase(it);
      }
    }
    if (!answered) {
      return Reject(absl::StrCat("a survivor confirm about replica ", c.lost(),
                                 ", whose marks we did not answer on this stream"));
    }
    if (again) {
      WakeExchange();
    }
    peer_.m.survivor_confirmed->Increment();
    spdlog::info("event=survivor_exchange_confirmed peer={} lost_replica={}", peer_.config.name,
                 c.lost());
    return absl::OkStatus();
  }

  // Something for the survivors' exchange to send or answer: the sender looks at its next turn
  // (and stops waiting for outbox records).
  void WakeExchange() {
    ++peer_.exchange_generation;
    r_.feed->Kick();
  }

  bool Heartbeat() {
    pb::Frame f;
    f.mutable_heartbeat()->set_sent_unix_ms(UnixMs());
    return Write(f);
  }

  // The sender's way to end the stream when shipping failed. Not once the session is over: its
  // writes fail then because it is (the reader rejected a frame, say), and a cancel would
  // replace the status the session ends with (INVALID_ARGUMENT naming the frame) by CANCELLED.
  void Fail() {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (done_) return;
    }
    ship_error_ = true;
    stream_.Cancel();
  }

  Replicator::Impl& r_;
  PeerState& peer_;
  FrameStream& stream_;
  std::thread sender_;
  std::thread coordination_;                   // CoordinationLoop, once a frame needs it
  std::deque<pb::Frame> coordination_frames_;  // for coordination_, in arrival order
  std::condition_variable coordination_cv_;    // coordination_ waits here
  bool coordinating_ = false;                  // coordination_ is handling a frame
  static constexpr size_t kCoordinationQueued = 64;
  // How long an applier waits for the next batch before it moves the stream's resume point to
  // what it applied (longer than the region's own 200 ms mark interval).
  static constexpr auto kIdleMark = std::chrono::milliseconds(300);
  struct ApplyQueue {
    std::deque<Pending> batches;
    std::condition_variable cv;        // its applier waits here
    uint64_t queued = 0, applied = 0;  // batches, this session
  };
  std::map<std::string, ApplyQueue> apply_queues_;  // per origin database
  std::map<std::string, std::thread> appliers_;
  size_t apply_bytes_ = 0;
  int apply_queued_ = 0;                            // batches in apply_queues_
  int applying_ = 0;                                // appliers inside an ApplyDeltas call
  std::map<std::string, int64_t> queued_through_;   // per origin database: the stream's position
  std::set<std::string> deltas_queued_;             // origin databases with deltas this session
  std::map<std::string, int64_t> applied_through_;  // per origin database, by this session
  // Where this session moved the stream's resume point (the region's ApplyDeltas says when).
  std::map<std::string, int64_t> marked_through_;
  absl::Status apply_status_;
  SteadyTime::time_point apply_failed_at_;
  std::mutex mu_;
  // mu_ guards the session's state; each kind of waiter has its own condition (a notify wakes
  // only who can proceed): the writer, the watchdog, the sender's window, and the rest (the
  // reader's backpressure and the end of the session).
  std::condition_variable write_cv_, watch_cv_, window_cv_, state_cv_;
  bool draining_ = false;          // the reader waits for the appliers to finish
  bool held_back_ = false;         // the reader waits for the apply queue to shrink
  bool cancelled_ = false;         // the watchdog cancelled the stream
  std::set<std::string> streams_;  // the local stream names this session ships under
  uint64_t streams_checked_ = 0;   // the local_streams_generation last compared (watchdog)
  bool done_ = false;
  bool write_failed_ = false;
  bool writing_ = false;
  std::deque<pb::Frame> outgoing_;
  size_t outgoing_bytes_ = 0;  // of the frames in outgoing_ other than batches
  bool not_reading_ = false;   // the session ended because outgoing_bytes_ hit its cap
  static constexpr size_t kOutgoingBytesMax = 64 << 20;
  struct InFlight {
    int64_t last;  // the batch's last_seq (0 for a state batch but a transfer's end)
    size_t bytes;
    bool state;
  };
  std::map<std::string, std::deque<InFlight>> inflight_;  // per database, in the order sent
  std::map<std::string, int64_t> shipped_through_;        // per database: the highest seq sent
  std::map<std::string, int64_t> claimed_through_;        // per database: the hello's resume point
  int64_t inflight_bytes_ = 0;
  std::atomic<SteadyTime::time_point> last_received_{SteadyTime::now()};
  std::atomic<SteadyTime::time_point> last_sent_{SteadyTime::now()};
  std::atomic<bool> up_{false};  // the hellos were exchanged
  // The peer's hello named its streams, and streams of its we applied records of are not among
  // them: its databases were rebuilt (set before the sender starts).
  bool peer_rebuilt_ = false;
  std::atomic<bool> ship_error_{false};
  std::shared_ptr<Outlet> outlet_;  // this session's coordination frames (peer_.send)
  std::atomic<bool> over_{false};   // done_, for waits outside mu_
  bool staging_ = false;            // sender thread only: SendBatch stages its frame
  std::vector<pb::Frame> staged_;
  // The survivors' exchange on this session (ExchangeAfterLossIfAsked), guarded by mu_: the
  // lost regions our marks went out for, each, once the peer's answer came, with the batches
  // queued before it per origin database (ApplyQueue::queued), to be applied before we confirm;
  // the peer's marks waiting for an answer; and the lost regions whose marks we answered.
  // Each with the count of takeovers (PeerState::takeovers) it was for.
  struct Asked {
    uint64_t takeover = 0;
    bool answered = false;
    std::map<std::string, uint64_t> queued;
    std::string rebuilt_life;  // of the lost region when our marks went out (rebuilt_life)
  };
  std::map<uint32_t, Asked> asked_;
  Marks peer_marks_;
  std::map<uint32_t, uint64_t> answered_;
  // Sender thread only: the PeerState::exchange_generation handled, and when marks answered
  // on an earlier session moments ago may be answered again (kReanswerGap).
  uint64_t exchange_seen_ = 0;
  std::optional<SteadyTime::time_point> reanswer_at_;
  static constexpr auto kReanswerGap = std::chrono::seconds(10);
};

class ReplicationService final : public pb::Replication::Service {
 public:
  explicit ReplicationService(Replicator::Impl& r) : r_(r) {}

  // The caller's name, as its certificate (signed by the deployment's CA) gives it.
  static std::string CommonName(const grpc::ServerContext& ctx) {
    std::string cn;
    for (const auto& v : ctx.auth_context()->FindPropertyValues("x509_common_name")) {
      cn.assign(v.data(), v.size());
    }
    return cn;
  }

  grpc::Status ForwardOrder(grpc::ServerContext* ctx, const pb::ForwardOrderRequest* req,
                            pb::ForwardOrderResponse* out) override {
    const std::string cn = CommonName(*ctx);
    PeerState* peer = r_.PeerNamed(cn);
    if (!peer) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "no configured peer region has this certificate's name");
    }
    if (!r_.coordinator) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "coordination is off here");
    }
    if (req->order_id().empty() || req->order_id().size() > 64 || req->user_id().empty() ||
        req->user_id().size() > 128 || req->card_number().size() > 32) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ForwardOrder: malformed request");
    }
    return r_.coordinator->ForwardIncoming(peer->config.replica_id, *req, out);
  }

  grpc::Status FindAccount(grpc::ServerContext* ctx, const pb::FindAccountRequest* req,
                           pb::FindAccountResponse* out) override {
    const std::string cn = CommonName(*ctx);
    if (!r_.PeerNamed(cn)) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "no configured peer region has this certificate's name");
    }
    if (!r_.coordinator) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "coordination is off here");
    }
    if (absl::Status st = services::ValidatePeerAccountQuestion(
            req->user_id(), req->password(),
            {.prefix = req->id_prefix(), .key = req->key(), .blinded = req->blinded_id()},
            r_.config.account_questions_named);
        !st.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("FindAccount: ", st.message()));
    }
    return r_.coordinator->FindAccountIncoming(*req, out);
  }

  grpc::Status Stream(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<pb::Frame, pb::Frame>* rw) override {
    // The peer is who its certificate says (the CA signed it for that region's name).
    const std::string cn = CommonName(*ctx);
    PeerState* peer = r_.PeerNamed(cn);
    if (!peer) {
      spdlog::warn("event=replication_peer_refused cn=\"{}\" peer={}", cn, ctx->peer());
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "no configured peer region has this certificate's name");
    }
    if (peer->config.replica_id > r_.config.replica_id) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "streams are dialled by the region with the lower replica id");
    }
    ServerFrameStream stream(ctx, rw);
    absl::Status st = r_.RunSession(*peer, stream);
    if (st.ok() || r_.stopping) return grpc::Status::OK;
    return grpc::Status(st.code() == absl::StatusCode::kInvalidArgument
                            ? grpc::StatusCode::INVALID_ARGUMENT
                            : grpc::StatusCode::UNAVAILABLE,
                        std::string(st.message()));
  }

 private:
  Replicator::Impl& r_;
};

}  // namespace

absl::Status Replicator::Impl::RunSession(PeerState& peer, FrameStream& stream) {
  {
    // One live stream per peer: a new one (the peer redialled) replaces a half-dead old one.
    std::lock_guard<std::mutex> l(peer.mu);
    if (peer.active) peer.active->Cancel();
    peer.active = &stream;
  }
  Session session(*this, peer, stream);
  absl::Status st = session.Run();
  bool replaced = true;  // by a newer stream: the peer is still up
  {
    std::lock_guard<std::mutex> l(peer.mu);
    if (peer.active == &stream) {
      peer.active = nullptr;
      replaced = false;
    }
  }
  if (!stopping) {
    if (!replaced && coordinator) coordinator->OnPeerDown(peer.config.replica_id);
    peer.m.reconnects->Increment();
    spdlog::info("event=replication_stream_down peer={} reason=\"{}\"", peer.config.name,
                 std::string(st.message()));
  }
  return st;
}

void Replicator::Impl::DialLoop(PeerState& peer) {
  std::mt19937_64 rng(std::random_device{}());
  int backoff = config.backoff_min_ms;
  const std::string target = absl::StrCat(peer.config.address.host, ":", peer.config.address.port);
  while (!stopping) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = ca;
    tls.pem_private_key = key;
    tls.pem_cert_chain = cert;
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride(peer.config.name);
    args.SetMaxReceiveMessageSize(kMaxFrameBytes);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, config.backoff_min_ms);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, config.backoff_max_ms);
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a fresh connection per attempt
    auto channel = grpc::CreateCustomChannel(target, grpc::SslCredentials(tls), args);
    auto stub = pb::Replication::NewStub(channel);
    grpc::ClientContext ctx;
    auto started = SteadyTime::now();
    auto rw = stub->Stream(&ctx);
    ClientFrameStream stream(&ctx, rw.get());
    absl::Status st = RunSession(peer, stream);
    ctx.TryCancel();
    (void)rw->Finish();
    if (stopping) break;
    // A stream that lived a while was healthy: start the backoff over.
    if (SteadyTime::now() - started > std::chrono::seconds(5)) backoff = config.backoff_min_ms;
    std::uniform_int_distribution<int> jitter(backoff / 2, backoff);
    int wait = jitter(rng);
    spdlog::info("event=replication_redial peer={} in_ms={}", peer.config.name, wait);
    if (!SleepFor(std::chrono::milliseconds(wait))) break;
    backoff = std::min(backoff * 2, config.backoff_max_ms);
  }
}

// Sessions compare their stream names with these (Session::LocalStreamsRenamed).
void Replicator::Impl::NoteLocalStreams(const std::map<std::string, std::string>& names) {
  std::set<std::string> streams;
  for (const auto& [stream, db] : names) {
    if (stream.empty()) return;  // a database unreachable: no complete reading
    streams.insert(stream);
  }
  std::lock_guard<std::mutex> l(local_streams_mu);
  if (streams == local_streams) return;
  if (!local_streams.empty()) {
    spdlog::info("event=local_streams_changed streams=\"{}\"", absl::StrJoin(streams, ","));
  }
  local_streams = std::move(streams);
  local_streams_since = SteadyTime::now();
  ++local_streams_generation;
}

void Replicator::Impl::SyncWriteHold() {
  std::lock_guard<std::mutex> hl(hold_mu);
  // Until the region's status was read once, this replicator does not know the stock hold a
  // predecessor set (nor whether the region is held since its start): telling the region a hold
  // now would replace that list with an empty one. Housekeeping reads it at once.
  if (!stock_awaits_read) return;
  std::set<std::string> streams;
  SteadyTime::time_point since;
  {
    std::lock_guard<std::mutex> l(local_streams_mu);
    streams = local_streams;
    since = local_streams_since;
  }
  // Per peer, in one look (AwaitStateIfRebuilt sets both together): whether we await its state,
  // and whether it has had its say about our databases: said hello to a session of our current
  // streams, and what it held of our past (if anything) is in.
  rpb::SetLocalWriteHoldRequest req;
  std::set<std::string> heard;
  for (auto& p : peers) {
    std::lock_guard<std::mutex> l(p->mu);
    if (!p->awaiting_state.empty()) {
      req.add_peers(p->config.name);
    } else if (!streams.empty() && p->hello_streams == streams) {
      heard.insert(p->config.name);
    }
  }
  req.set_hold(req.peers_size() > 0);
  for (auto it = stock_awaits.begin(); it != stock_awaits.end();) {
    if (!heard.count(*it)) {
      ++it;
      continue;
    }
    spdlog::info("event=stock_hold_peer_heard peer={}", *it);
    it = stock_awaits.erase(it);
  }
  if (!req.hold() && region_held_since_start) {
    // The region's databases are new, or were rebuilt: it stays held until each peer has been
    // heard, or has stayed silent for two peer timeouts since our streams appeared (a peer that
    // is down must not hold a new region for ever; its stock changes stay held, stock_awaits).
    if (streams.empty()) return;
    const bool waited_enough =
        SteadyTime::now() - since > std::chrono::milliseconds(2 * config.peer_timeout_ms);
    std::vector<std::string> unheard;
    for (auto& p : peers)
      if (!heard.count(p->config.name)) unheard.push_back(p->config.name);
    if (!unheard.empty() && !waited_enough) return;
    spdlog::info("event=new_databases_released unheard=\"{}\"", absl::StrJoin(unheard, ","));
    region_held_since_start = false;
    req.set_release_new_databases(true);
    stock_awaits.insert(unheard.begin(), unheard.end());
  }
  for (const std::string& name : stock_awaits) req.add_stock_awaits(name);
  const bool stock = !stock_awaits.empty();
  // A region server starts released (new databases aside): a release it was already told of
  // (or never needed) is not sent again. A hold is, every second, for a region server that
  // restarted meanwhile.
  if (!req.hold() && !req.release_new_databases() && !hold_told && !stock && !stock_told) return;
  rpb::SetLocalWriteHoldResponse resp;
  auto ctx = RegionCtx(5000);
  grpc::Status s = region->SetLocalWriteHold(ctx.get(), req, &resp);
  if (!s.ok()) {
    // A region server that is down starts released: only a hold it missed matters.
    if (req.hold() || hold_told || stock || stock_told) {
      spdlog::warn("event=local_write_hold_not_set hold={} stock_awaits=\"{}\" error=\"{}\"",
                   req.hold(), absl::StrJoin(req.stock_awaits(), ","), s.error_message());
    }
    return;
  }
  if (req.hold() != hold_told || stock != stock_told) {
    spdlog::info("event=local_write_hold hold={} awaiting=\"{}\" stock_awaits=\"{}\"", req.hold(),
                 absl::StrJoin(req.peers(), ","), absl::StrJoin(req.stock_awaits(), ","));
  }
  hold_told = req.hold();
  stock_told = stock;
}

// Every second: the lag in records per peer; every truncate_interval_ms: deletes the outbox rows
// every peer has acked as within its resume point (only once every peer has said where it
// stands since this start).
void Replicator::Impl::Housekeeping() {
  auto last_truncate = SteadyTime::now();
  // The first status read at once (SyncWriteHold waits for it), then one a second.
  for (bool first = true; first || SleepFor(std::chrono::milliseconds(1000)); first = false) {
    rpb::GetStatusResponse status;
    auto ctx = RegionCtx(5000);
    const bool got = region->GetStatus(ctx.get(), rpb::GetStatusRequest(), &status).ok();
    std::map<std::string, std::string> names;  // stream -> database name
    if (got) {
      region_held_since_start = status.held_since_start();
      if (!stock_awaits_read) {
        // A replicator that restarted takes up the stock hold its predecessor set: nothing
        // else would ever release it.
        std::lock_guard<std::mutex> hl(hold_mu);
        for (const std::string& peer : status.stock_awaits()) {
          if (PeerNamed(peer)) stock_awaits.insert(peer);
        }
        stock_told = stock_told || status.stock_awaits_size() > 0;
        stock_awaits_read = true;
      }
      for (const auto& d : status.databases()) names[d.stream()] = d.name();
      NoteLocalStreams(names);
    }
    SyncWriteHold();
    if (!got) continue;
    // Decided under truncate_mu, from acks read under it; called outside it, so that a
    // session's check of its peer's resume point (CatchUpFromState) never waits for a slow
    // DELETE (up to truncate_timeout_ms).
    std::vector<std::pair<std::string, int64_t>> truncations;  // stream, through seq
    {
      std::lock_guard<std::mutex> tl(truncate_mu);
      DecideTruncations(status, last_truncate, &truncations);
    }
    for (const auto& [stream, seq] : truncations) {
      const std::string& db = names[stream];
      rpb::TruncateOutboxRequest req;
      req.set_database(db);
      req.set_through_seq(seq);
      req.set_stream(stream);
      rpb::TruncateOutboxResponse resp;
      auto tctx = RegionCtx(config.truncate_timeout_ms);
      grpc::Status s = region->TruncateOutbox(tctx.get(), req, &resp);
      if (s.ok()) {
        {
          std::lock_guard<std::mutex> tl(truncate_mu);
          int64_t& done = truncated[stream];
          done = std::max(done, seq);
        }
        if (resp.deleted() > 0) {
          spdlog::info("event=outbox_truncated db={} through_seq={} rows={}", db, seq,
                       resp.deleted());
        }
      } else {
        spdlog::warn("event=outbox_truncate_failed db={} through_seq={} error=\"{}\"", db, seq,
                     s.error_message());
      }
    }
  }
}

// Housekeeping's part under truncate_mu: the lag per peer, and, every truncate_interval_ms once
// every peer was heard, the truncations to make (each stream's lowest resume point over the
// peers), each recorded in `truncating` before it is made.
void Replicator::Impl::DecideTruncations(const rpb::GetStatusResponse& status,
                                         SteadyTime::time_point& last_truncate,
                                         std::vector<std::pair<std::string, int64_t>>* out) {
  std::map<std::string, int64_t> through;  // per local stream
  bool all_heard = true;
  for (auto& p : peers) {
    std::lock_guard<std::mutex> l(p->mu);
    int64_t behind = 0;
    // No peer has applied past what the outbox holds: a hello claiming more (up to kMaxSeq)
    // would otherwise be truncated through and recorded, and nothing truncated again.
    auto seen = [&](const std::map<std::string, int64_t>& m, const auto& d) {
      auto it = m.find(d.stream());
      return std::min(it == m.end() ? 0 : it->second, d.outbox_max_seq());
    };
    for (const auto& d : status.databases()) {
      behind += std::max<int64_t>(0, d.outbox_max_seq() - seen(p->acked, d));
      // Through where the peer would resume after a crash, not through what it applied.
      const int64_t resumable = seen(p->resumable, d);
      auto [t, fresh] = through.emplace(d.stream(), resumable);
      if (!fresh) t->second = std::min(t->second, resumable);
    }
    p->m.lag_seq->Set(static_cast<double>(behind));
    all_heard = all_heard && p->heard;
  }
  if (!all_heard ||
      SteadyTime::now() - last_truncate < std::chrono::milliseconds(config.truncate_interval_ms)) {
    return;
  }
  last_truncate = SteadyTime::now();
  for (const auto& [stream, seq] : through) {
    if (stream.empty() || seq <= truncated[stream]) continue;  // (unreachable: no stream)
    // Decided: from here on a peer resuming below `seq` gets a state transfer, whatever the
    // call returns. A call that timed out may have deleted, or may still (the region bounds
    // its DELETE by our deadline, but a commit can race it); a failed one is retried.
    int64_t& decided = truncating[stream];
    decided = std::max(decided, seq);
    out->emplace_back(stream, seq);
  }
}

Replicator::Replicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Replicator::~Replicator() { Stop(); }
uint16_t Replicator::port() const { return static_cast<uint16_t>(impl_->port); }

absl::StatusOr<std::unique_ptr<Replicator>> Replicator::Start(ReplicatorConfig config) {
  // gRPC's mutexes are absl's: their deadlock-cycle bookkeeping costs every lock and unlock
  // on the shipping path, and it only ever reports.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  auto impl = std::make_unique<Impl>();
  impl->config = std::move(config);
  const ReplicatorConfig& c = impl->config;
  for (auto [field, path, out] : {std::tuple{"tls.ca", &c.tls_ca, &impl->ca},
                                  std::tuple{"tls.cert", &c.tls_cert, &impl->cert},
                                  std::tuple{"tls.key", &c.tls_key, &impl->key}}) {
    auto text = common::ReadPemFile(field, *path);
    if (!text.ok()) return text.status();
    *out = *std::move(text);
  }
  // The recent keys are loaded (and their files made) before the stream service listens, as a
  // peer may connect at once; a start that fails after that (its port taken) removes the files
  // and folders it made, by name, so that a typo in a port leaves nothing behind. (Not a tree: a
  // folder another process filled meanwhile stays, with what it holds.)
  std::vector<std::filesystem::path> made_folders, made_files;
  absl::Cleanup remove_what_start_made = [&made_folders, &made_files] {
    std::error_code ignored;
    for (const auto& f : made_files) std::filesystem::remove(f, ignored);
    for (auto it = made_folders.rbegin(); it != made_folders.rend(); ++it) {
      std::filesystem::remove(*it, ignored);  // only if empty
    }
  };
  if (!c.state_dir.empty()) {
    if (std::error_code ec = MakeFolders(c.state_dir, &made_folders)) {
      return absl::UnavailableError(
          absl::StrCat("state_dir: cannot make ", c.state_dir, ": ", ec.message()));
    }
  }
  {
    std::string warning;
    absl::Status st = impl->done_exchanges.Load(
        c.state_dir.empty() ? "" : absl::StrCat(c.state_dir, "/done-exchanges"), &warning);
    // Not known, an exchange only runs again: the replicator runs on.
    if (!st.ok()) {
      spdlog::warn("event=done_exchanges_not_read error=\"{}\"", std::string(st.message()));
    }
    if (!warning.empty()) spdlog::warn("event=done_exchanges_damaged detail=\"{}\"", warning);
  }
  for (const Peer& p : c.peers) {
    auto state = std::make_unique<PeerState>(static_cast<size_t>(c.recent_keys_per_stream));
    state->config = p;
    if (!c.state_dir.empty()) {
      // Named by replica id: the peer's identity in every record, and safe in a path.
      const std::string path = absl::StrCat(c.state_dir, "/recent-keys-", p.replica_id, ".log");
      // Not persisted (now or after a failed write), the keys are kept in memory all the same:
      // that only costs the exchange after a restart, so the replicator runs on.
      auto not_persisted = [name = p.name](const std::string& why) {
        spdlog::warn("event=recent_keys_not_persisted peer={} error=\"{}\"", name, why);
      };
      std::string warning;
      std::error_code ec;
      if (!std::filesystem::exists(path, ec) && !ec) made_files.push_back(path);
      absl::Status st = state->recent.Persist(path, &warning, not_persisted);
      if (!st.ok()) not_persisted(std::string(st.message()));
      if (!warning.empty()) {
        spdlog::warn("event=recent_keys_damaged peer={} detail=\"{}\"", p.name, warning);
      }
    }
    impl->peers.push_back(std::move(state));
  }
  impl->InitMetrics();
  if (c.metrics.port != 0 || !c.metrics.host.empty()) {
    try {
      impl->exposer = std::make_unique<prometheus::Exposer>(
          absl::StrCat(c.metrics.host, ":", c.metrics.port), 1);
      impl->exposer->RegisterCollectable(impl->registry);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("metrics: cannot listen on ", c.metrics.host, ":",
                                                 c.metrics.port, ": ", e.what()));
    }
  }
  // Both channels to the region (the internal API's and the coordinator's control API) take
  // replies of up to 64 MiB: gRPC's default of 4 MiB refused a ReadGroupOrders page of 500 large
  // orders (9.35 MB, RESOURCE_EXHAUSTED on every ask), and the sync or catch-up never finished.
  grpc::ChannelArguments region_args;
  region_args.SetMaxReceiveMessageSize(64 << 20);
  const std::string region_target = absl::StrCat(c.region_grpc.host, ":", c.region_grpc.port);
  // Every call to the region carries region_token_file's token (common/grpc_auth.h).
  impl->region = rpb::RegionInternal::NewStub(
      common::ChannelWithBearerToken(region_target, c.region_token, region_args));

  grpc::SslServerCredentialsOptions tls(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  tls.pem_root_certs = impl->ca;
  tls.pem_key_cert_pairs.push_back({impl->key, impl->cert});
  impl->feed = std::make_unique<OutboxFeed>(*impl->region, impl->config);
  impl->service = std::make_unique<ReplicationService>(*impl);
  Impl* raw = impl.get();
  // The coordinator runs before the stream service listens: a peer's session hands lease, rights
  // and sync frames to it, and until Start has loaded the lease records (from the region, which
  // may be slow or restarting) it has no lease or rights manager to hand them to.
  if (c.coordination) {
    raw->coordinator = std::make_unique<Coordinator>(
        c, common::ChannelWithBearerToken(region_target, c.region_token, region_args),
        Coordinator::Tls{raw->ca, raw->cert, raw->key}, [raw](RegionId to, pb::Frame f) {
          for (auto& p : raw->peers) {
            if (p->config.replica_id != to) continue;
            std::shared_ptr<Outlet> send;
            {
              std::lock_guard<std::mutex> l(p->mu);
              send = p->send;
            }
            return send ? send->Send(std::move(f)) : false;
          }
          return false;
        });
    raw->coordinator->SurvivorsExchangePending([raw](RegionId lost) {
      std::vector<RegionId> pending;
      for (auto& p : raw->peers) {
        std::lock_guard<std::mutex> l(p->mu);
        if (p->owe_marks.contains(lost)) pending.push_back(p->config.replica_id);
      }
      return pending;
    });
    raw->coordinator->OnRegionTakenOver([raw](RegionId lost) {
      // A peer's sync request may name any group: only a region of this deployment is lost
      // (marks about another would be rejected by every peer, on every session).
      if (std::none_of(raw->peers.begin(), raw->peers.end(),
                       [&](const auto& p) { return p->config.replica_id == lost; })) {
        spdlog::warn("event=survivor_takeover_ignored group={} reason=\"not a peer region\"", lost);
        return;
      }
      raw->AskSurvivorMarks(lost);
    });
    if (absl::Status st = raw->coordinator->Start(); !st.ok()) return st;
  }
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(c.listen.host, ":", c.listen.port),
                           grpc::SslServerCredentials(tls), &impl->port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(kMaxFrameBytes);
  impl->server = builder.BuildAndStart();
  if (!impl->server || impl->port == 0) {
    // The coordinator's threads use the feed and the peers, which go before it when impl does.
    if (raw->coordinator) raw->coordinator->Stop();
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", c.listen.host, ":", c.listen.port));
  }
  for (auto& p : raw->peers) {
    PeerState* peer = p.get();
    if (peer->config.replica_id > c.replica_id) {
      raw->threads.emplace_back([raw, peer] { raw->DialLoop(*peer); });
    }
  }
  raw->threads.emplace_back([raw] { raw->Housekeeping(); });
  raw->threads.emplace_back([raw] { raw->feed->Run(); });
  std::move(remove_what_start_made).Cancel();
  spdlog::info("event=replicator_started region={} listen={}:{} peers={}", c.region, c.listen.host,
               raw->port, c.peers.size());
  return std::unique_ptr<Replicator>(new Replicator(std::move(impl)));
}

void Replicator::Stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  { std::lock_guard<std::mutex> l(impl_->stop_mu); }
  impl_->stop_cv.notify_all();
  if (impl_->coordinator) impl_->coordinator->Stop();
  if (impl_->feed) impl_->feed->Stop();
  for (auto& p : impl_->peers) {
    std::lock_guard<std::mutex> l(p->mu);
    if (p->active) p->active->Cancel();
  }
  if (impl_->server)
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  for (auto& t : impl_->threads) t.join();
  impl_->threads.clear();
}

}  // namespace meridian::replication
