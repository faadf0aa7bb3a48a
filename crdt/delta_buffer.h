#pragma once

// Per-sender buffer of deltas for delta-based synchronization, with the two optimizations of
// Enes, Almeida, Baquero, Leitão, "Efficient Synchronization of State-based CRDTs" (ICDE 2019):
//  - BP, avoid back-propagation: a delta received from peer p is never sent back to p;
//  - RR, remove redundant state: of a received delta only the part that is new to the local state
//    is buffered (and applied), so what a peer already told us is not re-gossiped.
//
// T is a delta-state CRDT with: void Merge(const T&); T NovelPart(const T& state) const (the part
// of *this not already in `state`; joining it into `state` equals joining *this); bool Empty().
//
// Limits: at most `max_entries` buffered deltas. When a delta must be dropped before every peer
// acked it, the peers that missed it are marked as needing a full-state sync (anti-entropy);
// Pending() reports that instead of silently skipping what they lack. Not thread-safe.

#include <cassert>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <utility>

#include "crdt/dot.h"

namespace meridian::crdt {

template <class T>
class DeltaBuffer {
 public:
  using PeerId = ReplicaId;

  struct Batch {
    T delta;            // join of the deltas this peer lacks
    uint64_t upto = 0;  // ack this sequence number once the peer has applied `delta`
    size_t count = 0;   // number of buffered deltas joined into it
  };

  explicit DeltaBuffer(size_t max_entries = 4096) : max_entries_(max_entries) {
    assert(max_entries_ > 0);
  }

  void AddPeer(PeerId peer) { peers_.try_emplace(peer, PeerState{next_seq_ - 1, false}); }

  // A delta made locally and already applied to the local state.
  void AddLocal(T delta) { Push(kNoReplica, std::move(delta)); }

  // A delta received from `from`: joins its new part into `state` and buffers that part for the
  // other peers. Returns whether anything was new.
  bool Receive(PeerId from, const T& delta, T& state) {
    T novel = delta.NovelPart(state);
    if (novel.Empty()) return false;
    state.Merge(novel);
    Push(from, std::move(novel));
    return true;
  }

  // What `peer` has not acked yet, excluding deltas that came from `peer` itself.
  // nullopt when there is nothing to send.
  [[nodiscard]] std::optional<Batch> Pending(PeerId peer) const {
    auto it = peers_.find(peer);
    if (it == peers_.end()) return std::nullopt;
    Batch batch;
    batch.upto = it->second.acked;
    for (const Entry& e : entries_) {
      if (e.seq <= it->second.acked) continue;
      batch.upto = e.seq;
      if (e.origin == peer) continue;
      batch.delta.Merge(e.delta);
      ++batch.count;
    }
    if (batch.upto == it->second.acked) return std::nullopt;
    return batch;
  }

  // `peer` applied everything up to `seq`. Frees deltas every peer has.
  void Ack(PeerId peer, uint64_t seq) {
    auto it = peers_.find(peer);
    if (it == peers_.end() || seq <= it->second.acked || seq >= next_seq_) return;
    it->second.acked = seq;
    while (!entries_.empty() && AckedByAll(entries_.front().seq)) entries_.pop_front();
  }

  // True when deltas `peer` had not acked were dropped for space: it needs a full-state sync
  // (ClearFullSync once that is done).
  [[nodiscard]] bool NeedsFullSync(PeerId peer) const {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second.needs_full_sync;
  }
  // After a full-state sync the peer has everything buffered so far.
  void ClearFullSync(PeerId peer) {
    auto it = peers_.find(peer);
    if (it == peers_.end()) return;
    it->second.needs_full_sync = false;
    it->second.acked = next_seq_ - 1;
  }

  [[nodiscard]] size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t seq;
    PeerId origin;  // kNoReplica for local deltas
    T delta;
  };
  struct PeerState {
    uint64_t acked;
    bool needs_full_sync;
  };

  bool AckedByAll(uint64_t seq) const {
    for (const auto& [peer, st] : peers_)
      if (st.acked < seq) return false;
    return true;
  }

  void Push(PeerId origin, T delta) {
    if (entries_.size() == max_entries_) {
      uint64_t dropped = entries_.front().seq;
      for (auto& [peer, st] : peers_) {
        if (st.acked < dropped) {
          st.needs_full_sync = true;
          st.acked = dropped;
        }
      }
      entries_.pop_front();
    }
    entries_.push_back(Entry{next_seq_++, origin, std::move(delta)});
  }

  size_t max_entries_;
  uint64_t next_seq_ = 1;
  std::deque<Entry> entries_;
  std::map<PeerId, PeerState> peers_;
};

}  // namespace meridian::crdt
