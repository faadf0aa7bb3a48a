#include "crdt/bounded_counter.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace meridian::crdt {
namespace {

bool TransferLess(const BoundedCounter::Transfer& a, const BoundedCounter::Transfer& b) {
  return a.from != b.from ? a.from < b.from : a.to < b.to;
}

// Entries only grow, and each is written by one replica, so the larger (units, seq) is newer.
template <class E>
void MaxInto(E& mine, const E& theirs) {
  if (theirs.units > mine.units || (theirs.units == mine.units && theirs.seq > mine.seq)) {
    mine.units = theirs.units;
    mine.seq = theirs.seq;
  }
}

}  // namespace

BoundedCounter::Transfer& BoundedCounter::TransferSlot(ReplicaId from, ReplicaId to) {
  Transfer key{from, to, 0, 0};
  auto it = std::lower_bound(transfers_.begin(), transfers_.end(), key, TransferLess);
  if (it == transfers_.end() || it->from != from || it->to != to) it = transfers_.insert(it, key);
  return *it;
}

BoundedCounter::Spent& BoundedCounter::SpentSlot(ReplicaId replica) {
  auto it = std::lower_bound(spent_.begin(), spent_.end(), replica,
                             [](const Spent& s, ReplicaId r) { return s.replica < r; });
  if (it == spent_.end() || it->replica != replica) it = spent_.insert(it, Spent{replica, 0, 0});
  return *it;
}

uint64_t BoundedCounter::TransferUnits(ReplicaId from, ReplicaId to) const {
  Transfer key{from, to, 0, 0};
  auto it = std::lower_bound(transfers_.begin(), transfers_.end(), key, TransferLess);
  return (it != transfers_.end() && it->from == from && it->to == to) ? it->units : 0;
}

namespace {
// Sums are taken in 128 bits and clamped: entries are below 2^40 each, but joins of many peers'
// deltas can hold any number of entries, and an overflow must not flip a sign.
int64_t Clamp(__int128 v) {
  constexpr __int128 kMax = INT64_MAX;
  constexpr __int128 kMin = INT64_MIN;
  return static_cast<int64_t>(v > kMax ? kMax : (v < kMin ? kMin : v));
}
}  // namespace

int64_t BoundedCounter::Rights(ReplicaId replica) const {
  // Each side is at most kMaxReplicas * kMaxUnits entries' worth (< 2^49): no overflow.
  return Received(replica) - Consumed(replica);
}

int64_t BoundedCounter::Received(ReplicaId replica) const {
  __int128 r = 0;
  for (const Transfer& t : transfers_)
    if (t.to == replica) r += t.units;  // includes increments (from == to)
  return Clamp(r);
}

int64_t BoundedCounter::Consumed(ReplicaId replica) const {
  __int128 r = 0;
  for (const Transfer& t : transfers_)
    if (t.from == replica && t.to != replica) r += t.units;
  for (const Spent& s : spent_)
    if (s.replica == replica) r += s.units;
  return Clamp(r);
}

int64_t BoundedCounter::Value() const {
  __int128 v = 0;
  for (const Transfer& t : transfers_)
    if (t.from == t.to) v += t.units;
  for (const Spent& s : spent_) v -= s.units;
  return Clamp(v);
}

absl::StatusOr<BoundedCounter> BoundedCounter::Increment(ReplicaId replica, uint64_t n,
                                                         uint64_t seq) {
  if (replica == kNoReplica) return absl::InvalidArgumentError("replica id 0 is not valid");
  Transfer& slot = TransferSlot(replica, replica);
  if (n > kMaxUnits - slot.units) {
    return absl::OutOfRangeError(
        absl::StrCat("increment of ", n, " would pass the limit of ", kMaxUnits, " units"));
  }
  slot.units += n;
  slot.seq = std::max(slot.seq, seq);
  BoundedCounter delta;
  delta.transfers_.push_back(slot);
  return delta;
}

absl::StatusOr<BoundedCounter> BoundedCounter::Decrement(ReplicaId replica, uint64_t n,
                                                         uint64_t seq) {
  if (replica == kNoReplica) return absl::InvalidArgumentError("replica id 0 is not valid");
  int64_t rights = Rights(replica);
  if (n > kMaxUnits || static_cast<int64_t>(n) > rights) {
    return absl::FailedPreconditionError(absl::StrCat("replica ", replica, " holds ",
                                                      std::max<int64_t>(rights, 0),
                                                      " units of rights, ", n, " requested"));
  }
  Spent& slot = SpentSlot(replica);
  // The slot is cumulative and can pass kMaxUnits (rights received from many replicas, spent
  // over time): a state past it would be refused by every decoder, so refuse the change instead.
  if (n > kMaxUnits - slot.units) {
    return absl::OutOfRangeError(absl::StrCat("replica ", replica, " has spent ", slot.units,
                                              " units; ", n, " more would pass the limit of ",
                                              kMaxUnits));
  }
  slot.units += n;
  slot.seq = std::max(slot.seq, seq);
  BoundedCounter delta;
  delta.spent_.push_back(slot);
  return delta;
}

absl::StatusOr<BoundedCounter> BoundedCounter::Move(ReplicaId from, ReplicaId to, uint64_t n,
                                                    uint64_t seq) {
  if (from == kNoReplica || to == kNoReplica) {
    return absl::InvalidArgumentError("replica id 0 is not valid");
  }
  if (from == to) return absl::InvalidArgumentError("a transfer needs two different replicas");
  int64_t rights = Rights(from);
  if (n > kMaxUnits || static_cast<int64_t>(n) > rights) {
    return absl::FailedPreconditionError(absl::StrCat("replica ", from, " holds ",
                                                      std::max<int64_t>(rights, 0),
                                                      " units of rights, ", n, " to transfer"));
  }
  Transfer& slot = TransferSlot(from, to);
  if (n > kMaxUnits - slot.units) {  // cumulative too: see Decrement
    return absl::OutOfRangeError(absl::StrCat("replica ", from, " has moved ", slot.units,
                                              " units to ", to, "; ", n,
                                              " more would pass the limit of ", kMaxUnits));
  }
  slot.units += n;
  slot.seq = std::max(slot.seq, seq);
  BoundedCounter delta;
  delta.transfers_.push_back(slot);
  return delta;
}

void BoundedCounter::Join(const BoundedCounter& other) {
  for (const Transfer& t : other.transfers_) MaxInto(TransferSlot(t.from, t.to), t);
  for (const Spent& s : other.spent_) MaxInto(SpentSlot(s.replica), s);
}

namespace {
// Whether two versions of one entry are steps of one writer's history (see CheckSameWrites).
template <class E>
bool InStep(const E& a, const E& b) {
  if (a.seq == b.seq) return a.units == b.units;
  return a.seq < b.seq ? a.units <= b.units : a.units >= b.units;
}
template <class E>
std::string Versions(const E& a, const E& b) {
  return absl::StrCat(a.units, " units at seq ", a.seq, " here and ", b.units, " units at seq ",
                      b.seq, " in the other record");
}
}  // namespace

absl::Status BoundedCounter::CheckSameWrites(const BoundedCounter& other) const {
  for (const Transfer& t : other.transfers_) {
    auto it = std::lower_bound(transfers_.begin(), transfers_.end(), t, TransferLess);
    if (it != transfers_.end() && it->from == t.from && it->to == t.to && !InStep(*it, t)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bounded counter: rights ", t.from, "->", t.to, " are ", Versions(*it, t)));
    }
  }
  for (const Spent& s : other.spent_) {
    auto it = std::lower_bound(spent_.begin(), spent_.end(), s.replica,
                               [](const Spent& e, ReplicaId r) { return e.replica < r; });
    if (it != spent_.end() && it->replica == s.replica && !InStep(*it, s)) {
      return absl::InvalidArgumentError(
          absl::StrCat("bounded counter: units spent by ", s.replica, " are ", Versions(*it, s)));
    }
  }
  return absl::OkStatus();
}

BoundedCounter BoundedCounter::Since(const CausalContext& seen) const {
  BoundedCounter out;
  for (const Transfer& t : transfers_)
    if (!seen.Contains(Dot{t.from, t.seq})) out.transfers_.push_back(t);
  for (const Spent& s : spent_)
    if (!seen.Contains(Dot{s.replica, s.seq})) out.spent_.push_back(s);
  return out;
}

std::vector<ReplicaId> BoundedCounter::Replicas() const {
  std::vector<ReplicaId> out;
  for (const Transfer& t : transfers_) {
    out.push_back(t.from);
    out.push_back(t.to);
  }
  for (const Spent& s : spent_) out.push_back(s.replica);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

absl::StatusOr<BoundedCounter> BoundedCounter::FromParts(std::vector<Transfer> transfers,
                                                         std::vector<Spent> spent) {
  for (size_t i = 0; i < transfers.size(); ++i) {
    const Transfer& t = transfers[i];
    if (t.from == kNoReplica || t.to == kNoReplica) {
      return absl::InvalidArgumentError("bounded counter: transfer names replica 0");
    }
    if (t.units > kMaxUnits) {
      return absl::InvalidArgumentError(
          absl::StrCat("bounded counter: ", t.units, " units exceeds the limit ", kMaxUnits));
    }
    if (i > 0 && !TransferLess(transfers[i - 1], t)) {
      return absl::InvalidArgumentError("bounded counter: transfers not sorted or duplicated");
    }
  }
  for (size_t i = 0; i < spent.size(); ++i) {
    if (spent[i].replica == kNoReplica) {
      return absl::InvalidArgumentError("bounded counter: decrement names replica 0");
    }
    if (spent[i].units > kMaxUnits) {
      return absl::InvalidArgumentError(absl::StrCat("bounded counter: ", spent[i].units,
                                                     " units exceeds the limit ", kMaxUnits));
    }
    if (i > 0 && spent[i - 1].replica >= spent[i].replica) {
      return absl::InvalidArgumentError("bounded counter: decrements not sorted or duplicated");
    }
  }
  BoundedCounter c;
  c.transfers_ = std::move(transfers);
  c.spent_ = std::move(spent);
  if (c.Replicas().size() > kMaxReplicas) {
    return absl::InvalidArgumentError(
        absl::StrCat("bounded counter: more than ", kMaxReplicas, " replicas"));
  }
  return c;
}

}  // namespace meridian::crdt
