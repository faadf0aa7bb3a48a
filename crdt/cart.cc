#include "crdt/cart.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"

namespace meridian::crdt {

Causal<Cart::Lines_>& Cart::General() {
  if (!general_) {
    general_ = std::make_unique<Causal<Lines_>>(packed_.Unpack());
    packed_ = internal::PackedCart();
  }
  return *general_;
}

void Cart::SetState(Causal<Lines_> state) {
  if (internal::PackedCart::Pack(state, &packed_)) {
    general_.reset();
  } else {
    packed_ = internal::PackedCart();
    general_ = std::make_unique<Causal<Lines_>>(std::move(state));
  }
}

void Cart::Normalize() {
  if (general_ && internal::PackedCart::Pack(*general_, &packed_)) general_.reset();
}

Causal<Cart::Lines_> Cart::state() const { return general_ ? *general_ : packed_.Unpack(); }

CausalContext Cart::version() const { return general_ ? general_->ctx : packed_.Context(); }

bool Cart::Empty() const {
  bool lines_empty = general_ ? general_->store.Empty() && general_->ctx.Empty()
                              : packed_.StoreEmpty() && packed_.ContextEmpty();
  return lines_empty && !currency_field().reg.value() && !note_field().reg.value();
}

bool Cart::CheckInvariants() const {
  if (general_) return general_->ctx.CheckInvariants();
  return packed_.CheckInvariants() && packed_.Context().CheckInvariants();
}

size_t Cart::LineBytes() const { return general_ ? 0 : packed_.AllocatedBytes(); }

void Cart::FillView(CartView* view) const {
  view->Clear();
  if (general_) {
    for (const auto& [replica, counter] : general_->ctx.version_vector()) {
      view->versions.emplace_back(replica, counter);
    }
    view->cloud.assign(general_->ctx.cloud().begin(), general_->ctx.cloud().end());
    for (const auto& [sku, line] : general_->store.entries()) {
      auto begin = static_cast<uint32_t>(view->changes.size());
      view->changes.insert(view->changes.end(), line.entries().begin(), line.entries().end());
      view->lines.push_back({sku, begin, static_cast<uint32_t>(view->changes.size())});
    }
    return;
  }
  for (uint32_t i = 0; i < packed_.rep_count(); ++i) {
    if (packed_.rep_vv(i) > 0)
      view->versions.emplace_back(packed_.rep_replica(i), packed_.rep_vv(i));
  }
  for (uint32_t i = 0; i < packed_.cloud_count(); ++i) view->cloud.push_back(packed_.cloud_dot(i));
  // The SKUs must outlive this call: an unsorted block is read through the view's sorted copy
  // (ForEachLine's own copy would be gone, and the views with it).
  const internal::PackedCart* sorted = &packed_;
  if (!packed_.IsSorted()) {
    view->canonical = packed_.SortedCopy();
    sorted = &view->canonical;
  }
  sorted->ForEachLine([&](std::string_view sku, const uint64_t* changes, uint32_t n) {
    auto begin = static_cast<uint32_t>(view->changes.size());
    for (uint32_t j = 0; j < n; ++j) {
      view->changes.emplace_back(sorted->DotOf(changes[j]),
                                 internal::PackedCart::AmountOf(changes[j]));
    }
    view->lines.push_back({sku, begin, static_cast<uint32_t>(view->changes.size())});
  });
}

Cart Cart::Add(std::string_view sku, int64_t amount) {
  Cart delta;
  AddInto(sku, amount, delta);
  return delta;
}

Dot Cart::AddChangeGeneral(std::string_view sku, int64_t amount) {
  assert(replica_ != kNoReplica);
  // The general form, or beyond the packed limits (the packed form refused, changing nothing).
  Causal<Lines_>& g = General();
  Dot dot = g.ctx.Next(replica_);
  g.store.FindOrInsert(std::string(sku)).Insert(dot, amount);
  return dot;
}

Dot Cart::NextDot() {
  assert(replica_ != kNoReplica);
  Dot dot;
  if (!general_ && packed_.NextDot(replica_, &dot)) return dot;
  return General().ctx.Next(replica_);
}

void Cart::JoinChange(std::string_view sku, Dot dot, int64_t amount) {
  // Seen already: either we hold it, or we removed it; a join keeps what we have.
  if (general_ ? general_->ctx.Contains(dot) : packed_.Contains(dot)) return;
  if (!general_) {
    internal::PackedCart delta;
    if (internal::PackedCart::OneChange(sku, dot, amount, &delta)) {
      if (packed_.ContextEmpty()) {
        packed_ = std::move(delta);
        return;
      }
      if (packed_.Join(delta)) return;
    }
  }
  Causal<Lines_> delta;
  delta.store.FindOrInsert(std::string(sku)).Insert(dot, amount);
  delta.ctx.Insert(dot);
  General().Join(delta);
  Normalize();
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

void Cart::RemoveLineGeneral(std::string_view sku, std::vector<Dot>* retired) {
  std::string key(sku);
  const CounterStore* line = general_->store.Find(key);
  if (!line) return;
  line->ForEachDot([&](const Dot& d) { retired->push_back(d); });
  general_->store.Erase(key);
  Normalize();
}

void Cart::JoinRemoval(std::string_view sku, const Dot* retired, size_t count) {
  // The join with {store: empty, ctx: retired}: our entries with a retired dot go, and the dots
  // join our context. Entries of other lines cannot carry these dots (a dot names one change).
  if (!general_) {
    internal::PackedCart delta;
    if (internal::PackedCart::ContextOf(retired, count, &delta) && packed_.Join(delta)) return;
  }
  Causal<Lines_>& g = General();
  std::string key(sku);
  if (const CounterStore* line = g.store.Find(key)) {
    CounterStore kept;
    for (const auto& [dot, amount] : line->entries()) {
      if (std::find(retired, retired + count, dot) == retired + count) kept.Insert(dot, amount);
    }
    if (kept.Empty()) {
      g.store.Erase(key);
    } else {
      g.store.FindOrInsert(key) = std::move(kept);
    }
  }
  for (size_t i = 0; i < count; ++i) g.ctx.Insert(retired[i]);
  Normalize();
}

void Cart::RemoveInto(std::string_view sku, Cart& delta_acc) {
  std::vector<Dot> retired;
  RemoveLine(sku, &retired);
  if (!retired.empty()) delta_acc.JoinRemoval(sku, retired.data(), retired.size());
}

Cart Cart::Clear() {
  std::vector<Dot> retired;
  if (general_) {
    general_->store.ForEachDot([&](const Dot& d) { retired.push_back(d); });
    general_->store.Clear();
    Normalize();
  } else {
    packed_.RemoveAllLines(&retired);
  }
  Causal<Lines_> delta;
  for (const Dot& d : retired) delta.ctx.Insert(d);
  Cart out;
  out.SetState(std::move(delta));
  return out;
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
  f.dot = NextDot();
  f.reg.Set(std::move(value), Stamp{time, replica_});
  Causal<Lines_> ctx_only;
  ctx_only.ctx.Insert(f.dot);
  delta.SetState(std::move(ctx_only));
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

absl::Status Cart::CheckSameWrites(const Cart& other) const {
  CartView mine, theirs;
  FillView(&mine);
  if (mine.changes.empty()) return absl::OkStatus();
  other.FillView(&theirs);
  struct Held {
    Dot dot;
    uint32_t line;
    int64_t amount;
  };
  std::vector<Held> held;
  held.reserve(mine.changes.size());
  for (uint32_t l = 0; l < mine.lines.size(); ++l) {
    for (uint32_t j = mine.lines[l].begin; j < mine.lines[l].end; ++j) {
      held.push_back({mine.changes[j].first, l, mine.changes[j].second});
    }
  }
  std::sort(held.begin(), held.end(), [](const Held& a, const Held& b) { return a.dot < b.dot; });
  for (const CartView::Line& line : theirs.lines) {
    for (uint32_t j = line.begin; j < line.end; ++j) {
      const auto& [dot, amount] = theirs.changes[j];
      auto it = std::lower_bound(held.begin(), held.end(), dot,
                                 [](const Held& h, const Dot& d) { return h.dot < d; });
      if (it == held.end() || it->dot != dot) continue;
      const std::string_view sku = mine.lines[it->line].sku;
      if (sku != line.sku || it->amount != amount) {
        return absl::InvalidArgumentError(
            absl::StrCat("dot ", dot.replica, ":", dot.counter, " is a change of ", it->amount,
                         " on line '", std::string(sku), "' here and of ", amount, " on line '",
                         std::string(line.sku), "' in the other record: one dot names one write"));
      }
    }
  }
  return absl::OkStatus();
}

void Cart::Merge(const Cart& other) {
  if (general_ || other.general_ || !packed_.Join(other.packed_)) {
    // One side is general, or the join does not fit the packed form.
    if (other.general_) {
      General().Join(*other.general_);
    } else {
      Causal<Lines_> theirs = other.packed_.Unpack();
      General().Join(theirs);
    }
    Normalize();
  }
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
  out.SetState(state().Since(seen));
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
  out.SetState(this->state().NovelPart(state.state()));
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
  if (!general_) return packed_.Quantity(sku);
  const CounterStore* line = general_->store.Find(std::string(sku));
  return line ? CounterValue(*line) : 0;
}

std::vector<std::pair<std::string, int64_t>> Cart::Lines() const {
  std::vector<std::pair<std::string, int64_t>> out;
  if (general_) {
    for (const auto& [sku, line] : general_->store.entries()) {
      int64_t q = CounterValue(line);
      if (q > 0) out.emplace_back(sku, q);
    }
    return out;
  }
  packed_.ForEachLine([&](std::string_view sku, const uint64_t* changes, uint32_t n) {
    int64_t q = 0;
    for (uint32_t j = 0; j < n; ++j) q += internal::PackedCart::AmountOf(changes[j]);
    if (q > 0) out.emplace_back(std::string(sku), q);
  });
  return out;
}

Cart Cart::FromParts(Causal<Lines_> state, Field currency, Field note) {
  Cart c;
  c.SetState(std::move(state));
  if (currency.reg.value()) c.MutableField(&Fields::currency) = std::move(currency);
  if (note.reg.value()) c.MutableField(&Fields::note) = std::move(note);
  return c;
}

bool operator==(const Cart& a, const Cart& b) {
  if (!(a.currency_field() == b.currency_field()) || !(a.note_field() == b.note_field())) {
    return false;
  }
  // The packed form is canonical; a mixed pair compares in the general form.
  if (!a.general_ && !b.general_) return a.packed_ == b.packed_;
  return a.state() == b.state();
}

}  // namespace meridian::crdt
