#pragma once

// The keys of a peer's records applied here lately, per origin database (stream), so that after
// the peer is lost this region can send another survivor just the documents that the records it
// lacks touched (replicator.cc, ExchangeAfterLossIfAsked), rather than every document.
//
// For each stream it knows a range (floor, last]: every record of the stream in that range that
// was applied here is listed. Bounded per stream (the oldest entries go first, raising the
// floor); a state transfer (documents without seqs) forgets the stream until its end. Thread-safe.
//
// Persist() keeps the listing in a file too, so that a restarted replicator knows what the process
// before it applied: an append-only log of the calls (each entry length-prefixed and checksummed).
// Once the file's records plus entries exceed twice the listing's records plus 10,000, a thread of
// its own rewrites it: it replays the file as it stood into a listing of its own, writes that
// afresh beside it, and then, holding the lock only for that, adds the entries logged meanwhile
// and renames it over the file. (Done in the caller, a rewrite of 150,000 keys held an apply up
// for 120 ms. `recent_keys_bench`, 30,000 records/s on this machine's disk, two runs: 6.0-6.3 us
// per call at p50, 50-66 us at p99, the slowest 11-13 ms, as a rewrite's write-back met an append;
// in memory only 2.4 / 13 us, slowest 0.7 ms.) An entry is written after the apply it lists
// committed, so a crash between the two leaves the file short of that range: the listing then ends
// before what the database holds, and ranges past it are not covered (the next apply after the
// restart starts a new listing). A range it does cover lists every record applied in it. (Should
// the database lose commits the file lists, as PostgreSQL with synchronous_commit off can in a
// crash, the listing runs past the database's marks; a survivor asks only up to those, and a seq
// names one record, so what it lists there stays right.)

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace meridian::replication {

class RecentKeys {
 public:
  struct Record {
    int64_t seq;
    uint32_t kind;  // the record's kind (RecordKind / OutboxKind: the same numbers)
    std::string key;
  };

  explicit RecentKeys(size_t per_stream = 50000) : per_stream_(per_stream) {}
  ~RecentKeys();
  RecentKeys(const RecentKeys&) = delete;
  RecentKeys& operator=(const RecentKeys&) = delete;

  // Loads the listing `path` holds (a missing file is an empty listing) and logs every later call
  // there. A damaged entry ends what is loaded (the file is cut there and *warning says so); a file
  // of another format is set aside as path + ".bad" (*warning too). Error: the file cannot be
  // read, created or written (nothing is persisted then). A later write that fails stops the
  // persisting and calls `on_write_error` with why (the file keeps a listing short of the truth,
  // which is safe); a failed rewrite keeps appending to the old file and calls it too. Call once,
  // before the other calls; with per_stream 0 it does nothing.
  absl::Status Persist(const std::string& path, std::string* warning,
                       std::function<void(const std::string&)> on_write_error = nullptr);
  // Waits for a rewrite of the file under way, if any (tests and benches).
  void WaitForRewrite();

  // One successful apply of the stream's range [first_seq, through_seq]: its records (ascending
  // seq; seqs of the range not among them were not for this region). Records at or below what
  // is already listed are resends and are skipped; a range that starts past the listed one
  // leaves a hole, so the listing starts over there.
  void Applied(const std::string& stream, int64_t first_seq, int64_t through_seq,
               std::vector<Record> records);
  // A state transfer's batch of the stream: within the transfer (`ended` false, through_seq 0)
  // the listing is forgotten (its documents have no seqs); at its end, the listing starts from
  // through_seq (0 when the sender's outbox never took a record).
  void StateApplied(const std::string& stream, int64_t through_seq, bool ended);
  // Appends (kind, key) of every listed record of the stream with after < seq <= through to
  // *out. False, with *out unchanged, when the listing does not cover that whole range.
  bool KeysBetween(const std::string& stream, int64_t after, int64_t through,
                   std::vector<std::pair<uint32_t, std::string>>* out) const;

 private:
  struct Stream {
    bool known = false;
    int64_t floor = 0, last = 0;
    std::deque<Record> records;
  };
  void ApplyLocked(const std::string& stream, int64_t first_seq, int64_t through_seq,
                   std::vector<Record> records);
  void StateLocked(const std::string& stream, int64_t through_seq, bool ended);
  // Replays a file's entries (after its magic) into this listing, up to the first damaged one:
  // the bytes replayed, magic included, and the entries.
  size_t Replay(std::string_view file, size_t* entries);
  // The file: appends one entry; starts a rewrite once the file has grown (kRewriteSlack).
  void Log(const std::string& entry, size_t records);
  void RewriteIfDue();
  void RewriteFile(size_t bytes);  // the rewriter thread: the file's first `bytes`
  void Failed(const std::string& why);

  const size_t per_stream_;
  mutable std::mutex mu_;
  std::map<std::string, Stream> streams_;
  size_t listed_records_ = 0;  // records in streams_
  std::string path_;
  std::function<void(const std::string&)> on_write_error_;
  int fd_ = -1;             // the file, open for appending; -1: not persisted
  size_t file_bytes_ = 0;   // its size
  size_t file_weight_ = 0;  // its records plus its entries (kRewriteSlack)
  // A rewrite under way: the entries appended since it read the file, and their records.
  bool rewriting_ = false;
  std::string since_;
  size_t since_weight_ = 0;
  std::thread rewriter_;
};

}  // namespace meridian::replication
