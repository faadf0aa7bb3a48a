#include "crdt/cart.h"

#include <cassert>

namespace meridian::crdt {

Cart Cart::Add(std::string_view sku, int64_t amount) {
  Cart delta;
  AddInto(sku, amount, delta);
  return delta;
}

void Cart::AddInto(std::string_view sku, int64_t amount, Cart& delta_acc) {
  assert(replica_ != kNoReplica);
  Dot dot = state_.ctx.Next(replica_);
  std::string key(sku);
  state_.store.FindOrInsert(key).Insert(dot, amount);
  // The new dot is fresh everywhere, so adding it to the accumulator is exactly the join of the
  // one-change delta {sku: {dot: amount}} with context {dot}.
  delta_acc.state_.store.FindOrInsert(key).Insert(dot, amount);
  delta_acc.state_.ctx.Insert(dot);
}

Cart Cart::Remove(std::string_view sku) {
  Cart delta;
  std::string key(sku);
  if (const CounterStore* line = state_.store.Find(key)) {
    line->ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
    state_.store.Erase(key);
  }
  return delta;
}

void Cart::RemoveInto(std::string_view sku, Cart& delta_acc) {
  std::string key(sku);
  const CounterStore* line = state_.store.Find(key);
  if (!line) return;
  // The accumulator's changes to this line are all in our line (they are our own, newer ones),
  // so joining the remove delta drops that whole line from it and adds the retired dots.
  delta_acc.state_.store.Erase(key);
  line->ForEachDot([&](const Dot& d) { delta_acc.state_.ctx.Insert(d); });
  state_.store.Erase(key);
}

Cart Cart::Clear() {
  Cart delta;
  state_.store.ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
  state_.store.Clear();
  return delta;
}

Cart Cart::SetField(Field Cart::*field, std::string value, HlcTimestamp time) {
  assert(replica_ != kNoReplica);
  Cart delta;
  Field& f = delta.*field;
  f.dot = state_.ctx.Next(replica_);
  f.reg.Set(std::move(value), Stamp{time, replica_});
  delta.state_.ctx.Insert(f.dot);
  JoinField(this->*field, f);
  return delta;
}

Cart Cart::SetCurrency(std::string currency, HlcTimestamp time) {
  return SetField(&Cart::currency_, std::move(currency), time);
}

Cart Cart::SetNote(std::string note, HlcTimestamp time) {
  return SetField(&Cart::note_, std::move(note), time);
}

void Cart::JoinField(Field& mine, const Field& theirs) {
  if (!theirs.reg.value()) return;
  LWWRegister<std::string> joined = mine.reg;
  joined.Join(theirs.reg);
  // The dot follows the winning write; on an exact tie (same stamp and value) keep the larger dot
  // so that the join stays commutative even for forged input.
  if (!(joined == mine.reg)) {
    mine.dot = theirs.dot;
  } else if (joined == theirs.reg && mine.dot < theirs.dot) {
    mine.dot = theirs.dot;
  }
  mine.reg = std::move(joined);
}

void Cart::Merge(const Cart& other) {
  state_.Join(other.state_);
  JoinField(currency_, other.currency_);
  JoinField(note_, other.note_);
}

Cart Cart::ChangesSince(const CausalContext& seen) const {
  Cart out;
  out.state_ = state_.Since(seen);
  if (currency_.reg.value() && !seen.Contains(currency_.dot)) out.currency_ = currency_;
  if (note_.reg.value() && !seen.Contains(note_.dot)) out.note_ = note_;
  // Field dots live in the context but not in the line store, so Since() put them in the delta's
  // context as "removed"; that is harmless (no line carries them).
  return out;
}

Cart Cart::NovelPart(const Cart& state) const {
  Cart out;
  out.state_ = state_.NovelPart(state.state_);
  auto novel_field = [](const Field& mine, const Field& theirs) {
    Field joined = theirs;
    JoinField(joined, mine);
    return joined == theirs ? Field{} : mine;
  };
  out.currency_ = novel_field(currency_, state.currency_);
  out.note_ = novel_field(note_, state.note_);
  return out;
}

int64_t Cart::Quantity(std::string_view sku) const {
  const CounterStore* line = state_.store.Find(std::string(sku));
  return line ? CounterValue(*line) : 0;
}

std::vector<std::pair<std::string, int64_t>> Cart::Lines() const {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& [sku, line] : state_.store.entries()) {
    int64_t q = CounterValue(line);
    if (q > 0) out.emplace_back(sku, q);
  }
  return out;
}

Cart Cart::FromParts(Causal<Lines_> state, Field currency, Field note) {
  Cart c;
  c.state_ = std::move(state);
  c.currency_ = std::move(currency);
  c.note_ = std::move(note);
  return c;
}

}  // namespace meridian::crdt
