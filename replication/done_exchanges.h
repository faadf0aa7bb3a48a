#pragma once

// The survivors' exchanges about a rebuilt peer that this replicator asked for and saw done, kept
// in a file under state_dir so that a restart does not start them again.
//
// A region whose databases were rebuilt names none of its earlier streams in its hello; a
// survivor that applied records of them starts an exchange with every other survivor about that
// region (replicator.cc: survivor_exchange_for_rebuilt_peer). Those gone streams' resume points
// are never pruned (a survivor that comes back later still needs them to compare), so the process
// after a restart sees them gone again. Without this record it asked again: the peer that had
// confirmed parked its marks, a frame on every session for good, or, restarted too, compared
// and sent its documents again.
//
// An entry is (lost region, peer, life): the lost region's life is its streams as its hello named
// them when our marks went out (sorted, joined by ","). Our marks for every stream of the lost
// region went to the peer, its answer came and every batch it sent before the answer was applied
// here: the peer sent whatever it held of the region's earlier lives beyond our marks, and those
// lives are over, so no more can come of them. A later life (the region rebuilt again, even
// after a life we never heard from) is another entry. An entry is recorded then, never at the
// start: a crash mid-way leaves no entry, and the exchange runs again. Losing an entry (a file
// that cannot be written, a crash before the write) costs only that repeat, so the file is
// replaced whole without an fsync. Thread-safe.

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <tuple>

#include "absl/status/status.h"

namespace meridian::replication {

class DoneExchanges {
 public:
  // Loads the entries `path` holds (a missing file has none) and writes later ones there; "" keeps
  // them in memory only. A damaged file (another format, a bad line) is not used: *warning says
  // why, and the exchanges it listed run again. Error: the file cannot be read.
  absl::Status Load(const std::string& path, std::string* warning);

  // Whether an exchange with `peer` about region `lost` in its life `life` is done.
  [[nodiscard]] bool Done(uint32_t lost, uint32_t peer, const std::string& life) const;

  // Records the exchange with `peer` about region `lost` in its life `life` as done and rewrites
  // the file (mode 0600, as the recent keys). Error: the file could not be written (the entry is
  // kept in memory all the same), or `life` is not a life (kept nowhere).
  absl::Status Record(uint32_t lost, uint32_t peer, const std::string& life);

 private:
  using Entry = std::tuple<uint32_t, uint32_t, std::string>;
  mutable std::mutex mu_;
  std::string path_;
  std::set<Entry> done_;
};

}  // namespace meridian::replication
