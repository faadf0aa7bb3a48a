#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/dot_store.h"
#include "crdt/hlc.h"
#include "crdt/or_set.h"
#include "crdt/registers.h"

namespace meridian::crdt {

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
        state_(other.state_),
        fields_(other.fields_ ? std::make_unique<Fields>(*other.fields_) : nullptr) {}
  Cart& operator=(const Cart& other) {
    if (this != &other) {
      replica_ = other.replica_;
      state_ = other.state_;
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
  Dot AddChange(std::string_view sku, int64_t amount);
  void RemoveLine(std::string_view sku, std::vector<Dot>* retired);
  void JoinChange(std::string_view sku, Dot dot, int64_t amount);
  void JoinRemoval(std::string_view sku, const Dot* retired, size_t count);

  // Removes every line (after checkout). Fields stay.
  Cart Clear();
  Cart SetCurrency(std::string currency, HlcTimestamp time);
  Cart SetNote(std::string note, HlcTimestamp time);

  // Joins a delta or a whole state. Idempotent, commutative, associative.
  void Merge(const Cart& other);

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
  [[nodiscard]] const CausalContext& version() const { return state_.ctx; }
  [[nodiscard]] bool Empty() const {
    return state_.store.Empty() && state_.ctx.Empty() && !currency_field().reg.value() &&
           !note_field().reg.value();
  }
  [[nodiscard]] ReplicaId replica() const { return replica_; }

  // Raw parts, for the codec.
  [[nodiscard]] const Causal<Lines_>& state() const { return state_; }
  [[nodiscard]] const Field& currency_field() const;
  [[nodiscard]] const Field& note_field() const;
  static Cart FromParts(Causal<Lines_> state, Field currency, Field note);

  // Equality of replicated content (the local replica id is not content).
  friend bool operator==(const Cart& a, const Cart& b) {
    return a.state_ == b.state_ && a.currency_field() == b.currency_field() &&
           a.note_field() == b.note_field();
  }

 private:
  // The LWW fields live out of line: most carts never set them, and a smaller Cart keeps more
  // documents in cache (the cart workload is memory-bound).
  struct Fields {
    Field currency;
    Field note;
  };
  Cart SetField(Field Fields::*field, std::string value, HlcTimestamp time);
  static void JoinField(Field& mine, const Field& theirs);

  ReplicaId replica_ = kNoReplica;
  Causal<Lines_> state_;
  Field& MutableField(Field Fields::*field);
  std::unique_ptr<Fields> fields_;
};

}  // namespace meridian::crdt
