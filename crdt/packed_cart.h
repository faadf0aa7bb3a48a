#pragma once

// The compact storage behind crdt::Cart (internal to crdt/; use Cart).
//
// A cart's lines and causal context in one heap block, small enough that a replica holding tens
// of thousands of carts keeps them in cache, and laid out so that a local change is an append.
// Layout (host byte order):
//
//   front: Header (16 B) | Rep[n_reps] | u32 cloud[n_cloud] | line records
//   back:  u64 change[n_changes], ending at the block's end (the region grows downwards)
//
//   Rep:    {u32 replica, u32 vv}: the replicas the context names, sorted by id; vv is the
//           contiguous prefix (0 when the replica has only cloud dots).
//   cloud:  (rep index << 24 | counter): dots seen out of order, sorted.
//   line:   {u8 n_changes, u8 sku_length, sku bytes}; a line's index is its position.
//   change: (line << 56 | rep index << 48 | counter << 24 | amount & 0xffffff); its dot is
//           (reps[rep index].replica, counter).
//
// Rep indices are ordered like replica ids, so dots compare as (rep index, counter). A block is
// either sorted -- lines in SKU order, changes in (line, dot) order: the canonical form, where
// equal content means equal bytes -- or, after local changes, unsorted: AddChange appends its line
// record and its change, and RemoveLine compacts in place, so neither moves more than the line
// records. Whatever needs order (joins, readers, equality) works on the canonical form, sorting a
// block in place (mutators) or a copy (const readers) first.
//
// It holds exactly what Causal<DotMap<std::string, CounterStore>> holds, within limits: at most
// 255 replicas, lines, changes per line and SKU bytes; dot counters below 2^24; amounts in
// [-2^23, 2^23). A state beyond them does not fit: the mutators then return false and change
// nothing, and Cart falls back to the general form.
//
// Value type, not thread-safe.

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/dot.h"
#include "crdt/dot_store.h"
#include "crdt/or_set.h"

namespace meridian::crdt::internal {

class PackedCart {
 public:
  using General = Causal<DotMap<std::string, CounterStore>>;

  static constexpr uint64_t kCounterLimit = uint64_t{1} << 24;  // counters are below this
  static constexpr int64_t kAmountMin = -(int64_t{1} << 23);
  static constexpr int64_t kAmountMax = (int64_t{1} << 23) - 1;
  static constexpr size_t kMaxReps = 255;
  static constexpr size_t kMaxLines = 255;
  static constexpr size_t kMaxLineChanges = 255;
  static constexpr size_t kMaxSkuBytes = 255;

  PackedCart() = default;
  PackedCart(const PackedCart& other);
  PackedCart& operator=(const PackedCart& other);
  PackedCart(PackedCart&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
  PackedCart& operator=(PackedCart&& other) noexcept {
    std::swap(block_, other.block_);
    return *this;
  }
  ~PackedCart() {
    if (block_) Release(block_);
  }

  // Packs a general state. Returns false, leaving *out unchanged, when it does not fit.
  // REQUIRES: g is a valid causal state (store dots in the context, compacted context).
  static bool Pack(const General& g, PackedCart* out);
  [[nodiscard]] General Unpack() const;
  [[nodiscard]] CausalContext Context() const;
  // The delta of one change: {sku: {dot: amount}} with context {dot}. False if it does not fit.
  static bool OneChange(std::string_view sku, Dot dot, int64_t amount, PackedCart* out);
  // A context-only delta holding `dots` (a removal's retired dots). False if it does not fit.
  static bool ContextOf(const Dot* dots, size_t count, PackedCart* out);
  [[nodiscard]] bool Contains(const Dot& dot) const;

  // Applies a local change as `replica`: the next dot of `replica` with `amount` on the line.
  // Same result as the general form's ctx.Next + store insert. False (nothing changed) when the
  // result would not fit.
  bool AddChange(ReplicaId replica, std::string_view sku, int64_t amount, Dot* dot);
  // Takes the next dot of `replica` into the context without a change (a cart field's write).
  bool NextDot(ReplicaId replica, Dot* dot);
  // Drops the line, appending its dots (in dot order) to `retired`; they stay in the context.
  void RemoveLine(std::string_view sku, std::vector<Dot>* retired);
  // Drops every line, appending their dots to `retired`.
  void RemoveAllLines(std::vector<Dot>* retired);
  // this := join(this, other). False (nothing changed) when the join would not fit.
  bool Join(const PackedCart& other);

  [[nodiscard]] int64_t Quantity(std::string_view sku) const;
  [[nodiscard]] bool StoreEmpty() const { return !block_ || header()->n_changes == 0; }
  [[nodiscard]] bool ContextEmpty() const { return !block_ || header()->n_reps == 0; }
  // Whether the block is in the canonical form (an empty one is).
  [[nodiscard]] bool IsSorted() const { return !block_ || header()->sorted; }
  // A copy in the canonical form.
  [[nodiscard]] PackedCart SortedCopy() const {
    PackedCart copy = *this;
    copy.Sort();
    return copy;
  }

  // Readers. fn(std::string_view sku, const uint64_t* changes, uint32_t n) per line, in SKU
  // order, changes in dot order (an unsorted block is read through a sorted copy, so `sku` and
  // `changes` are valid only during the call: keep a SortedCopy to hold on to them).
  template <class Fn>
  void ForEachLine(Fn&& fn) const {
    if (!block_) return;
    if (!header()->sorted) {
      SortedCopy().ForEachLine(fn);
      return;
    }
    const uint64_t* ch = changes();
    const uint8_t* p = lines();
    for (uint32_t i = 0; i < header()->n_lines; ++i) {
      uint32_t n = p[0], len = p[1];
      fn(std::string_view(reinterpret_cast<const char*>(p + 2), len), ch, n);
      ch += n;
      p += 2 + len;
    }
  }
  [[nodiscard]] Dot DotOf(uint64_t change) const {
    return Dot{reps()[(change >> 48) & 0xff].replica, (change >> 24) & 0xffffff};
  }
  [[nodiscard]] static int64_t AmountOf(uint64_t change) {
    return static_cast<int64_t>(change << 40) >> 40;
  }
  [[nodiscard]] uint32_t rep_count() const { return block_ ? header()->n_reps : 0; }
  [[nodiscard]] ReplicaId rep_replica(uint32_t i) const { return reps()[i].replica; }
  [[nodiscard]] uint64_t rep_vv(uint32_t i) const { return reps()[i].vv; }
  [[nodiscard]] uint32_t cloud_count() const { return block_ ? header()->n_cloud : 0; }
  [[nodiscard]] Dot cloud_dot(uint32_t i) const {
    uint32_t c = cloud()[i];
    return Dot{reps()[c >> 24].replica, c & 0xffffff};
  }

  // Bytes of the block (capacity included), for memory accounting.
  [[nodiscard]] size_t AllocatedBytes() const { return block_ ? header()->capacity : 0; }
  // Checks the layout invariants listed above (tests and fuzzing).
  [[nodiscard]] bool CheckInvariants() const;

  friend bool operator==(const PackedCart& a, const PackedCart& b);

 private:
  struct Header {
    uint32_t capacity;  // bytes of the block, header included
    uint16_t n_changes;
    uint16_t line_bytes;
    uint16_t n_cloud;
    uint8_t n_reps;
    uint8_t n_lines;
    uint8_t sorted;  // 1: the canonical form
    uint8_t unused[3];
  };
  static_assert(sizeof(Header) == 16);
  struct Rep {
    uint32_t replica;
    uint32_t vv;
  };
  static_assert(sizeof(Rep) == 8);

  Header* header() { return static_cast<Header*>(block_); }
  const Header* header() const { return static_cast<const Header*>(block_); }
  Rep* reps() { return reinterpret_cast<Rep*>(static_cast<char*>(block_) + sizeof(Header)); }
  const Rep* reps() const {
    return reinterpret_cast<const Rep*>(static_cast<const char*>(block_) + sizeof(Header));
  }
  uint32_t* cloud() { return reinterpret_cast<uint32_t*>(reps() + header()->n_reps); }
  const uint32_t* cloud() const {
    return reinterpret_cast<const uint32_t*>(reps() + header()->n_reps);
  }
  uint8_t* lines() { return reinterpret_cast<uint8_t*>(cloud() + header()->n_cloud); }
  const uint8_t* lines() const {
    return reinterpret_cast<const uint8_t*>(cloud() + header()->n_cloud);
  }
  uint64_t* changes() {
    return reinterpret_cast<uint64_t*>(static_cast<char*>(block_) + header()->capacity) -
           header()->n_changes;
  }
  const uint64_t* changes() const {
    return reinterpret_cast<const uint64_t*>(static_cast<const char*>(block_) +
                                             header()->capacity) -
           header()->n_changes;
  }
  // Bytes of the front part (header to the end of the line records).
  size_t FrontBytes() const;
  size_t UsedBytes() const { return FrontBytes() + 8 * size_t{header()->n_changes}; }

  // The line record of `sku`: its index and byte offset, or where a new one would be appended.
  struct LinePos {
    bool found;
    uint32_t index;
    uint32_t offset;
  };
  LinePos FindLine(std::string_view sku) const;
  // Index of `replica` in the rep table, or where it would be inserted (*found false).
  uint32_t FindRep(ReplicaId replica, bool* found) const;
  // Makes room for `extra` more used bytes (may move the block).
  void Reserve(size_t extra);
  // Inserts replica at index i with vv 0; re-indexes cloud and changes. REQUIRES: room for 8 B.
  void InsertRep(uint32_t i, ReplicaId replica);
  // Increments rep i's vv and folds cloud dots that became contiguous; returns the new dot's
  // counter. REQUIRES: vv + 1 < kCounterLimit.
  uint64_t BumpRep(uint32_t i);
  // Puts the block in the canonical form (lines by SKU, changes by line and dot).
  void Sort();
  // Frees a block (into the per-thread cache of its size class when there is room).
  static void Release(void* block);

  void* block_ = nullptr;
};

}  // namespace meridian::crdt::internal
