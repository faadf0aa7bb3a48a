#pragma once

// The keys of a peer's records applied here lately, per origin database (stream), so that after
// the peer is lost this region can send another survivor just the documents that the records it
// lacks touched (replicator.cc, ExchangeAfterLossIfAsked), rather than every document.
//
// For each stream it knows a range (floor, last]: every record of the stream in that range that
// was applied here is listed. Bounded per stream (the oldest entries go first, raising the
// floor); a state transfer (documents without seqs) forgets the stream until its end. Knows
// nothing about what an earlier process applied. Thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace meridian::replication {

class RecentKeys {
 public:
  struct Record {
    int64_t seq;
    uint32_t kind;  // the record's kind (RecordKind / OutboxKind: the same numbers)
    std::string key;
  };

  explicit RecentKeys(size_t per_stream = 50000) : per_stream_(per_stream) {}

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
  const size_t per_stream_;
  mutable std::mutex mu_;
  std::map<std::string, Stream> streams_;
};

}  // namespace meridian::replication
