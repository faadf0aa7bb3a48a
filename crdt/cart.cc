#include "crdt/cart.h"

#include <algorithm>
#include <cassert>

namespace meridian::crdt {

Cart Cart::Add(std::string_view sku, int64_t amount) {
  Cart delta;
  AddInto(sku, amount, delta);
  return delta;
}

Dot Cart::AddChange(std::string_view sku, int64_t amount) {
  assert(replica_ != kNoReplica);
  Dot dot = state_.ctx.Next(replica_);
  state_.store.FindOrInsert(std::string(sku)).Insert(dot, amount);
  return dot;
}

void Cart::JoinChange(std::string_view sku, Dot dot, int64_t amount) {
  // Seen already: either we hold it, or we removed it; a join keeps what we have.
  if (state_.ctx.Contains(dot)) return;
  state_.store.FindOrInsert(std::string(sku)).Insert(dot, amount);
  state_.ctx.Insert(dot);
}

void Cart::AddInto(std::string_view sku, int64_t amount, Cart& delta_acc) {
  Dot dot = AddChange(sku, amount);
  delta_acc.JoinChange(sku, dot, amount);
}

Cart Cart::Remove(std::string_view sku) {
  Cart delta;
  RemoveInto(sku, delta);
  return delta;
}

void Cart::RemoveLine(std::string_view sku, std::vector<Dot>* retired) {
  std::string key(sku);
  const CounterStore* line = state_.store.Find(key);
  if (!line) return;
  line->ForEachDot([&](const Dot& d) { retired->push_back(d); });
  state_.store.Erase(key);
}

void Cart::JoinRemoval(std::string_view sku, const Dot* retired, size_t count) {
  // The join with {store: empty, ctx: retired}: our entries with a retired dot go, and the dots
  // join our context. Entries of other lines cannot carry these dots (a dot names one change).
  std::string key(sku);
  if (const CounterStore* line = state_.store.Find(key)) {
    CounterStore kept;
    for (const auto& [dot, amount] : line->entries()) {
      if (std::find(retired, retired + count, dot) == retired + count) kept.Insert(dot, amount);
    }
    if (kept.Empty()) {
      state_.store.Erase(key);
    } else {
      state_.store.FindOrInsert(key) = std::move(kept);
    }
  }
  for (size_t i = 0; i < count; ++i) state_.ctx.Insert(retired[i]);
}

void Cart::RemoveInto(std::string_view sku, Cart& delta_acc) {
  std::vector<Dot> retired;
  RemoveLine(sku, &retired);
  if (!retired.empty()) delta_acc.JoinRemoval(sku, retired.data(), retired.size());
}

Cart Cart::Clear() {
  Cart delta;
  state_.store.ForEachDot([&](const Dot& d) { delta.state_.ctx.Insert(d); });
  state_.store.Clear();
  return delta;
}

namespace {
const Cart::Field& EmptyField() {
  static const Cart::Field kEmpty;
  return kEmpty;
}
}  // namespace

const Cart::Field& Cart::currency_field() const {
  return fields_ ? fields_->currency : EmptyField();
}
const Cart::Field& Cart::note_field() const { return fields_ ? fields_->note : EmptyField(); }

Cart::Field& Cart::MutableField(Field Fields::*field) {
  if (!fields_) fields_ = std::make_unique<Fields>();
  return (*fields_).*field;
}

Cart Cart::SetField(Field Fields::*field, std::string value, HlcTimestamp time) {
  assert(replica_ != kNoReplica);
  Cart delta;
  Field& f = delta.MutableField(field);
  f.dot = state_.ctx.Next(replica_);
  f.reg.Set(std::move(value), Stamp{time, replica_});
  delta.state_.ctx.Insert(f.dot);
  JoinField(MutableField(field), f);
  return delta;
}

Cart Cart::SetCurrency(std::string currency, HlcTimestamp time) {
  return SetField(&Fields::currency, std::move(currency), time);
}

Cart Cart::SetNote(std::string note, HlcTimestamp time) {
  return SetField(&Fields::note, std::move(note), time);
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
  if (other.fields_) {
    if (other.fields_->currency.reg.value()) {
      JoinField(MutableField(&Fields::currency), other.fields_->currency);
    }
    if (other.fields_->note.reg.value())
      JoinField(MutableField(&Fields::note), other.fields_->note);
  }
}

Cart Cart::ChangesSince(const CausalContext& seen) const {
  Cart out;
  out.state_ = state_.Since(seen);
  const Field& currency = currency_field();
  const Field& note = note_field();
  if (currency.reg.value() && !seen.Contains(currency.dot)) {
    out.MutableField(&Fields::currency) = currency;
  }
  if (note.reg.value() && !seen.Contains(note.dot)) out.MutableField(&Fields::note) = note;
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
  Field currency = novel_field(currency_field(), state.currency_field());
  Field note = novel_field(note_field(), state.note_field());
  if (currency.reg.value()) out.MutableField(&Fields::currency) = std::move(currency);
  if (note.reg.value()) out.MutableField(&Fields::note) = std::move(note);
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
  if (currency.reg.value()) c.MutableField(&Fields::currency) = std::move(currency);
  if (note.reg.value()) c.MutableField(&Fields::note) = std::move(note);
  return c;
}

}  // namespace meridian::crdt
