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
// before it applied: an append-only log of the calls (each entry length-prefixed and checksummed),
// rewritten from memory once it holds twice what the listing does. An entry is written after the
// apply it lists committed, so a crash between the two leaves the file short of that range: the
// listing then ends before what the database holds, and ranges past it are not covered (the next
// apply after the restart starts a new listing). Never more than the truth, only less.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
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

  // One successful apply of the stream's range [first_seq, through_seq]: its records (ascending
  // seq; seqs of the range not among them were not for this region). Records at or below what
  // is already listed are resends and are skipped; a range that starts past the listed one
  // leaves a hole, so the listing starts over there.
  void Applied(const std::string& stream, int64_t first_seq, int64_t through_seq,
               std::vector<Record> records);
  // A state transfer's batch of the stream: through_seq 0 within the transfer (the listing is
  // forgotten: its documents have no seqs), > 0 at its end (listing from through_seq on).
  void StateApplied(const std::string& stream, int64_t through_seq);
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
  void StateLocked(const std::string& stream, int64_t through_seq);
  // The file: appends one entry (and rewrites the file when it has grown), or rewrites it.
  void Log(std::string entry, size_t records);
  bool Rewrite();

  const size_t per_stream_;
  mutable std::mutex mu_;
  std::map<std::string, Stream> streams_;
  std::string path_;
  std::function<void(const std::string&)> on_write_error_;
  int fd_ = -1;                // the file, open for appending; -1: not persisted
  size_t file_records_ = 0;    // records in the file's entries
  size_t listed_records_ = 0;  // records in streams_
};

}  // namespace meridian::replication
