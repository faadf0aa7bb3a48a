#pragma once

#include <cassert>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "crdt/causal_context.h"
#include "crdt/dot_store.h"
#include "crdt/hlc.h"
#include "crdt/or_set.h"
#include "crdt/packed_cart.h"
#include "crdt/registers.h"

namespace meridian::crdt {

// A read-only, flattened view of a cart's lines and context, for encoders. The string_views point
// into the cart (or into `canonical`, the view's own sorted copy of a cart whose local changes
// are not sorted yet) and stay valid while the cart and the view are not changed.
struct CartView {
  struct Line {
    std::string_view sku;
    uint32_t begin;  // its changes: changes[begin, end), sorted by dot
    uint32_t end;
  };
  std::vector<std::pair<ReplicaId, uint64_t>> versions;  // the context's version vector
  std::vector<Dot> cloud;                                // and its cloud
  std::vector<Line> lines;                               // sorted by SKU
  std::vector<std::pair<Dot, int64_t>> changes;
  internal::PackedCart canonical;
  void Clear() {
    canonical = internal::PackedCart();
    versions.clear();
    cloud.clear();
    lines.clear();
    changes.clear();
  }
};

// A shopping cart as a document: lines SKU -> quantity (an observed-remove map of causal counters)
// plus last-writer-wins fields (currency, note). Every mutator applies the change locally and
// returns its delta, itself a Cart; Merge joins a delta or a whole state from any replica.
//
// Semantics a customer sees:
// - adds and quantity changes made concurrently in different regions all count;
// - a removed line comes back only through a change the remover had not seen, and then with only
//   that change's units (each change has its own dot, so the removed units never return);
// - a line's quantity can be <= 0 after concurrent decrements; Lines() leaves such lines out.
//
// Storage: the compact packed form of crdt/packed_cart.h (one small block per cart), or, for a
// state beyond its limits (huge counters or amounts, hundreds of replicas or lines), the general
// Causal<DotMap<std::string, CounterStore>>. Both hold the same content; which one a cart uses is
// not observable except through speed.
//
// Value type, not thread-safe. Deltas and states are encoded by crdt/codec.h.
class Cart {
 public:
  struct Field {
    LWWRegister<std::string> reg;
    Dot dot;  // the winning write's dot, so ChangesSince can tell whether a peer has it
    friend bool operator==(const Field&, const Field&) = default;
  };
  using Lines_ = DotMap<std::string, CounterStore>;

  Cart() = default;
  Cart(const Cart& other)
      : replica_(other.replica_),
        packed_(other.packed_),
        general_(other.general_ ? std::make_unique<Causal<Lines_>>(*other.general_) : nullptr),
        fields_(other.fields_ ? std::make_unique<Fields>(*other.fields_) : nullptr) {}
  Cart& operator=(const Cart& other) {
    if (this != &other) {
      replica_ = other.replica_;
      packed_ = other.packed_;
      general_ = other.general_ ? std::make_unique<Causal<Lines_>>(*other.general_) : nullptr;
      fields_ = other.fields_ ? std::make_unique<Fields>(*other.fields_) : nullptr;
    }
    return *this;
  }
  Cart(Cart&&) noexcept = default;
  Cart& operator=(Cart&&) noexcept = default;
  // `replica` makes the dots of local changes. A Cart that only receives (or a delta) may use
  // kNoReplica; calling a mutator on it is a programming error.
  explicit Cart(ReplicaId replica) : replica_(replica) {}

  // Changes the line's quantity by `amount` (negative to lower it); creates the line if absent.
  Cart Add(std::string_view sku, int64_t amount);
  // Same change, joined straight into `delta_acc` instead of returning a new delta: the path of a
  // sender that buffers deltas per peer (cheaper than building and joining a separate delta).
  void AddInto(std::string_view sku, int64_t amount, Cart& delta_acc);
  // Removes the line (what this replica has seen of it).
  Cart Remove(std::string_view sku);
  // Same, joined straight into `delta_acc` (see AddInto).
  void RemoveInto(std::string_view sku, Cart& delta_acc);

  // The same changes as outbox records, for a sender that logs each change and folds the log per
  // cart at ship time. AddChange applies the change and returns its dot: the delta is
  // {sku: {dot: amount}} with context {dot}. RemoveLine removes the line and appends the dots it
  // retired: the delta is an empty store with context `retired`. JoinChange and JoinRemoval join
  // such a delta into this cart (any cart: they are the general join, specialised).
  Dot AddChange(std::string_view sku, int64_t amount) {
    assert(replica_ != kNoReplica);
    Dot dot;
    if (!general_ && packed_.AddChange(replica_, sku, amount, &dot)) return dot;
    return AddChangeGeneral(sku, amount);
  }
  void RemoveLine(std::string_view sku, std::vector<Dot>* retired) {
    if (!general_) {
      packed_.RemoveLine(sku, retired);
    } else {
      RemoveLineGeneral(sku, retired);
    }
  }
  void JoinChange(std::string_view sku, Dot dot, int64_t amount);
  void JoinRemoval(std::string_view sku, const Dot* retired, size_t count);

  // Removes every line (after checkout). Fields stay.
  Cart Clear();
  Cart SetCurrency(std::string currency, HlcTimestamp time);
  Cart SetNote(std::string note, HlcTimestamp time);

  // Joins a delta or a whole state. Idempotent, commutative, associative.
  void Merge(const Cart& other);

  // InvalidArgument when `other` holds a change whose dot this cart holds too, but on another line
  // or with another amount. A dot names one write, so only a forged or corrupted record does that,
  // and joining it would make replicas diverge for good: the join keeps whichever line came first
  // (and the larger amount), and ChangesSince never sends the other version to a replica that has
  // the dot. Receivers of peer records check before Merge. A dot this cart has seen but no longer
  // holds (its line was removed) cannot be checked; the join drops it either way.
  [[nodiscard]] absl::Status CheckSameWrites(const Cart& other) const;

  // What a replica whose version is `seen` lacks: lines and fields with unseen dots, plus the dots
  // of changes removed since. Joining it into that replica gives the same state as joining the
  // whole of this one.
  [[nodiscard]] Cart ChangesSince(const CausalContext& seen) const;

  // The part of this delta that `state` lacks (for DeltaBuffer's redundancy removal).
  [[nodiscard]] Cart NovelPart(const Cart& state) const;

  [[nodiscard]] int64_t Quantity(std::string_view sku) const;
  // Lines with a positive quantity, sorted by SKU.
  [[nodiscard]] std::vector<std::pair<std::string, int64_t>> Lines() const;
  [[nodiscard]] std::optional<std::string> currency() const { return currency_field().reg.value(); }
  [[nodiscard]] std::optional<std::string> note() const { return note_field().reg.value(); }
  // Every dot this cart has seen: its version, for ChangesSince and anti-entropy.
  [[nodiscard]] CausalContext version() const;
  [[nodiscard]] bool Empty() const;
  [[nodiscard]] ReplicaId replica() const { return replica_; }

  // Raw parts, for the codec and tests. state() builds the general form (a copy: bind it to a
  // variable before iterating over its parts); FillView is the cheap read for encoders.
  [[nodiscard]] Causal<Lines_> state() const;
  void FillView(CartView* view) const;
  [[nodiscard]] const Field& currency_field() const;
  [[nodiscard]] const Field& note_field() const;
  static Cart FromParts(Causal<Lines_> state, Field currency, Field note);

  // Whether the lines and context are in the packed form (tests, memory accounting), and the
  // heap bytes they take.
  [[nodiscard]] bool packed() const { return general_ == nullptr; }
  [[nodiscard]] size_t LineBytes() const;
  // The representation invariants (tests and fuzzing).
  [[nodiscard]] bool CheckInvariants() const;

  // Equality of replicated content (the local replica id is not content).
  friend bool operator==(const Cart& a, const Cart& b);

 private:
  // The LWW fields live out of line: most carts never set them, and a smaller Cart keeps more
  // documents in cache (the cart workload is memory-bound).
  struct Fields {
    Field currency;
    Field note;
  };
  Cart SetField(Field Fields::*field, std::string value, HlcTimestamp time);
  static void JoinField(Field& mine, const Field& theirs);
  Field& MutableField(Field Fields::*field);
  // Switches to the general form (if packed) and returns it.
  Causal<Lines_>& General();
  // Stores `state`, packed when it fits.
  void SetState(Causal<Lines_> state);
  // Back to the packed form when the general state fits it again.
  void Normalize();
  // Takes the next dot of this replica into the context.
  Dot NextDot();
  // AddChange and RemoveLine in the general form (or beyond the packed limits).
  Dot AddChangeGeneral(std::string_view sku, int64_t amount);
  void RemoveLineGeneral(std::string_view sku, std::vector<Dot>* retired);

  ReplicaId replica_ = kNoReplica;
  internal::PackedCart packed_;              // the state, unless general_ is set
  std::unique_ptr<Causal<Lines_>> general_;  // the state when it does not fit packed_
  std::unique_ptr<Fields> fields_;
};

}  // namespace meridian::crdt
