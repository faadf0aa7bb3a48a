#include "crdt/codec.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "crdt/crdt.pb.h"

namespace meridian::crdt {
namespace {

namespace pb = ::meridian::crdt::v1;

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("crdt decode: ", what));
}

#define MERIDIAN_RETURN_IF_ERROR(expr) \
  do {                                 \
    absl::Status status_ = (expr);     \
    if (!status_.ok()) return status_; \
  } while (false)

// ---------------------------------------------------------------------------------------------
// Encoding helpers.

// Whether the whole range (replica, 1..counter) is among `implied` (sorted): a delta holding a
// replica's first dots. Such a version entry is left out; the decoder rebuilds it from the store.
bool RangeImplied(ReplicaId replica, uint64_t counter, const std::vector<Dot>& implied) {
  auto first = std::lower_bound(implied.begin(), implied.end(), Dot{replica, 1});
  if (static_cast<uint64_t>(implied.end() - first) < counter) return false;
  auto last = first + static_cast<std::ptrdiff_t>(counter - 1);
  return first->replica == replica && first->counter == 1 && last->replica == replica &&
         last->counter == counter;
}

void PutContext(const CausalContext& ctx, const std::vector<Dot>& implied, pb::CausalContext* out) {
  for (const auto& [replica, counter] : ctx.version_vector()) {
    if (RangeImplied(replica, counter, implied)) continue;
    auto* e = out->add_versions();
    e->set_replica(replica);
    e->set_counter(counter);
  }
  // Store dots are implied; only list cloud dots that are not.
  for (const Dot& d : ctx.cloud()) {
    if (std::binary_search(implied.begin(), implied.end(), d)) continue;
    auto* c = out->add_cloud();
    c->set_replica(d.replica);
    c->set_counter(d.counter);
  }
}

template <class S>
std::vector<Dot> SortedDots(const S& store) {
  std::vector<Dot> dots;
  store.ForEachDot([&](const Dot& d) { dots.push_back(d); });
  std::sort(dots.begin(), dots.end());
  return dots;
}

// Same, into a reused buffer (the per-delta hot path).
template <class S>
void SortedDotsInto(const S& store, std::vector<Dot>* dots) {
  dots->clear();
  store.ForEachDot([&](const Dot& d) { dots->push_back(d); });
  std::sort(dots->begin(), dots->end());
}

void PutChanges(const CounterStore& s, google::protobuf::RepeatedPtrField<pb::CounterChange>* out) {
  for (const auto& [dot, value] : s.entries()) {
    auto* c = out->Add();
    c->set_replica(dot.replica);
    c->set_counter(dot.counter);
    c->set_value(value);
  }
}

template <class Msg>
std::string Serialize(const Msg& m) {
  std::string out;
  m.SerializeToString(&out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decoding helpers. Each validates what it reads.

template <class Msg>
absl::Status Parse(std::string_view bytes, const DecodeLimits& l, Msg* m) {
  if (bytes.size() > l.max_message_bytes) {
    return Invalid(absl::StrCat("message of ", bytes.size(), " bytes exceeds the limit of ",
                                l.max_message_bytes));
  }
  if (!m->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return Invalid("not a valid protobuf message (truncated or malformed)");
  }
  if (m->format_version() != kFormatVersion) {
    return Invalid(absl::StrCat("unsupported format_version ", m->format_version(),
                                " (this build reads ", kFormatVersion, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Dot> ReadDot(uint32_t replica, uint64_t counter, const DecodeLimits& l) {
  if (replica == kNoReplica) return Invalid("dot with replica 0");
  if (counter == 0) return Invalid("dot with counter 0");
  if (counter > l.max_counter) return Invalid(absl::StrCat("dot counter ", counter, " too large"));
  return Dot{replica, counter};
}

absl::Status CheckCount(size_t n, const DecodeLimits& l, absl::string_view what) {
  if (n > l.max_entries) {
    return Invalid(absl::StrCat(n, " ", what, " exceed the limit of ", l.max_entries));
  }
  return absl::OkStatus();
}

absl::Status CheckKey(absl::string_view key, const DecodeLimits& l, absl::string_view what) {
  if (key.empty()) return Invalid(absl::StrCat("empty ", what));
  if (key.size() > l.max_key_bytes) {
    return Invalid(
        absl::StrCat(what, " of ", key.size(), " bytes exceeds the limit of ", l.max_key_bytes));
  }
  return absl::OkStatus();
}

// `store_dots` (sorted, unique) are added to the context: they are implied by the encoding.
absl::StatusOr<CausalContext> ReadContext(const pb::CausalContext& m,
                                          const std::vector<Dot>& store_dots,
                                          const DecodeLimits& l) {
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.versions_size() + m.cloud_size(), l, "context entries"));
  std::vector<std::pair<ReplicaId, uint64_t>> vv;
  vv.reserve(m.versions_size());
  for (const auto& e : m.versions()) {
    if (e.replica() == kNoReplica) return Invalid("version entry with replica 0");
    if (e.counter() == 0) return Invalid("version entry with counter 0");
    if (e.counter() > l.max_counter) return Invalid("version entry counter too large");
    vv.emplace_back(e.replica(), e.counter());
  }
  std::sort(vv.begin(), vv.end());
  for (size_t i = 1; i < vv.size(); ++i) {
    if (vv[i - 1].first == vv[i].first) return Invalid("version vector names a replica twice");
  }
  std::vector<Dot> cloud;
  cloud.reserve(m.cloud_size() + store_dots.size());
  for (const auto& d : m.cloud()) {
    absl::StatusOr<Dot> dot = ReadDot(d.replica(), d.counter(), l);
    if (!dot.ok()) return dot.status();
    cloud.push_back(*dot);
  }
  cloud.insert(cloud.end(), store_dots.begin(), store_dots.end());
  return CausalContext::FromParts(std::move(vv), std::move(cloud));
}

// Checks that no dot appears twice in a store (a dot names exactly one write).
absl::Status CheckUniqueDots(std::vector<Dot>& dots) {
  std::sort(dots.begin(), dots.end());
  if (std::adjacent_find(dots.begin(), dots.end()) != dots.end()) {
    return Invalid("the same dot appears twice in the store");
  }
  return absl::OkStatus();
}

absl::StatusOr<CounterStore> ReadChanges(
    const google::protobuf::RepeatedPtrField<pb::CounterChange>& changes, const DecodeLimits& l,
    std::vector<Dot>* all_dots) {
  if (changes.empty()) return Invalid("entry without changes");
  std::vector<CounterStore::Entry> entries;
  entries.reserve(changes.size());
  for (const auto& c : changes) {
    absl::StatusOr<Dot> dot = ReadDot(c.replica(), c.counter(), l);
    if (!dot.ok()) return dot.status();
    if (c.value() > l.max_abs_amount || c.value() < -l.max_abs_amount) {
      return Invalid(absl::StrCat("counter change of ", c.value(), " is out of range"));
    }
    entries.emplace_back(*dot, c.value());
    all_dots->push_back(*dot);
  }
  if (!CounterStore::IsSortedUnique(entries)) return Invalid("changes not sorted by dot");
  return CounterStore::FromSorted(std::move(entries));
}

template <class K>
absl::Status CheckSortedKeys(const std::vector<K>& keys, absl::string_view what) {
  for (size_t i = 1; i < keys.size(); ++i) {
    if (!(keys[i - 1] < keys[i])) return Invalid(absl::StrCat(what, " not sorted or duplicated"));
  }
  return absl::OkStatus();
}

absl::StatusOr<GCounter> ReadGCounter(
    const google::protobuf::RepeatedPtrField<pb::VersionEntry>& entries, const DecodeLimits& l) {
  MERIDIAN_RETURN_IF_ERROR(CheckCount(entries.size(), l, "counter entries"));
  std::vector<GCounter::Entry> out;
  for (const auto& e : entries) {
    if (e.replica() == kNoReplica) return Invalid("counter entry with replica 0");
    if (e.counter() > l.max_counter) return Invalid("counter entry too large");
    out.emplace_back(e.replica(), e.counter());
  }
  for (size_t i = 1; i < out.size(); ++i) {
    if (out[i - 1].first >= out[i].first)
      return Invalid("counter entries not sorted or duplicated");
  }
  return GCounter::FromSorted(std::move(out));
}

void PutGCounter(const GCounter& c, google::protobuf::RepeatedPtrField<pb::VersionEntry>* out) {
  for (const auto& [r, v] : c.entries()) {
    auto* e = out->Add();
    e->set_replica(r);
    e->set_counter(v);
  }
}

void PutStamp(const Stamp& s, pb::Stamp* out) {
  out->set_hlc(s.time.value);
  out->set_replica(s.replica);
}

void PutBounded(const BoundedCounter& c, google::protobuf::RepeatedPtrField<pb::Transfer>* t,
                google::protobuf::RepeatedPtrField<pb::Spent>* s) {
  for (const auto& x : c.transfers()) {
    auto* m = t->Add();
    m->set_from_replica(x.from);
    m->set_to_replica(x.to);
    m->set_units(x.units);
    m->set_seq(x.seq);
  }
  for (const auto& x : c.spent()) {
    auto* m = s->Add();
    m->set_replica(x.replica);
    m->set_units(x.units);
    m->set_seq(x.seq);
  }
}

absl::StatusOr<BoundedCounter> ReadBounded(
    const google::protobuf::RepeatedPtrField<pb::Transfer>& t,
    const google::protobuf::RepeatedPtrField<pb::Spent>& s, const DecodeLimits& l) {
  MERIDIAN_RETURN_IF_ERROR(CheckCount(t.size() + s.size(), l, "bounded counter entries"));
  std::vector<BoundedCounter::Transfer> transfers;
  for (const auto& m : t) {
    if (m.seq() == 0 || m.seq() > l.max_counter) return Invalid("transfer with invalid seq");
    transfers.push_back({m.from_replica(), m.to_replica(), m.units(), m.seq()});
  }
  std::vector<BoundedCounter::Spent> spent;
  for (const auto& m : s) {
    if (m.seq() == 0 || m.seq() > l.max_counter) return Invalid("decrement with invalid seq");
    spent.push_back({m.replica(), m.units(), m.seq()});
  }
  absl::StatusOr<BoundedCounter> c =
      BoundedCounter::FromParts(std::move(transfers), std::move(spent));
  if (!c.ok()) return Invalid(c.status().message());
  return c;
}

absl::StatusOr<Cart::Field> ReadField(const pb::CartField& m, const DecodeLimits& l,
                                      absl::string_view name) {
  if (m.value().size() > l.max_value_bytes) {
    return Invalid(absl::StrCat("cart ", name, " exceeds ", l.max_value_bytes, " bytes"));
  }
  if (m.stamp().replica() == kNoReplica)
    return Invalid(absl::StrCat("cart ", name, " stamp replica 0"));
  absl::StatusOr<Dot> dot = ReadDot(m.dot().replica(), m.dot().counter(), l);
  if (!dot.ok()) return dot.status();
  Cart::Field f;
  f.reg.Set(m.value(), Stamp{HlcTimestamp{m.stamp().hlc()}, m.stamp().replica()});
  f.dot = *dot;
  return f;
}

void PutField(const Cart::Field& f, pb::CartField* out) {
  out->set_value(*f.reg.value());
  PutStamp(f.reg.stamp(), out->mutable_stamp());
  out->mutable_dot()->set_replica(f.dot.replica);
  out->mutable_dot()->set_counter(f.dot.counter);
}

void FillCart(const Cart& v, pb::Cart* m) {
  m->set_format_version(kFormatVersion);
  const Causal<Cart::Lines_> state = v.state();
  for (const auto& [sku, line] : state.store.entries()) {
    auto* l = m->add_lines();
    l->set_sku(sku);
    PutChanges(line, l->mutable_changes());
  }
  thread_local std::vector<Dot> implied;
  SortedDotsInto(state.store, &implied);
  // Field dots are implied as well when the field is present.
  if (v.currency_field().reg.value()) implied.push_back(v.currency_field().dot);
  if (v.note_field().reg.value()) implied.push_back(v.note_field().dot);
  std::sort(implied.begin(), implied.end());
  if (!state.ctx.Empty()) {
    PutContext(state.ctx, implied, m->mutable_context());
    // Everything was implied: leave the field out rather than send an empty message.
    if (m->context().versions().empty() && m->context().cloud().empty()) m->clear_context();
  }
  if (v.currency_field().reg.value()) PutField(v.currency_field(), m->mutable_currency());
  if (v.note_field().reg.value()) PutField(v.note_field(), m->mutable_note());
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string Encode(const GCounter& v) {
  pb::GCounter m;
  m.set_format_version(kFormatVersion);
  PutGCounter(v, m.mutable_entries());
  return Serialize(m);
}

absl::StatusOr<GCounter> DecodeGCounter(std::string_view bytes, const DecodeLimits& l) {
  pb::GCounter m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  return ReadGCounter(m.entries(), l);
}

std::string Encode(const PNCounter& v) {
  pb::PNCounter m;
  m.set_format_version(kFormatVersion);
  PutGCounter(v.p(), m.mutable_increments());
  PutGCounter(v.n(), m.mutable_decrements());
  return Serialize(m);
}

absl::StatusOr<PNCounter> DecodePNCounter(std::string_view bytes, const DecodeLimits& l) {
  pb::PNCounter m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  absl::StatusOr<GCounter> p = ReadGCounter(m.increments(), l);
  if (!p.ok()) return p.status();
  absl::StatusOr<GCounter> n = ReadGCounter(m.decrements(), l);
  if (!n.ok()) return n.status();
  return PNCounter::FromParts(*std::move(p), *std::move(n));
}

std::string Encode(const LWWRegister<std::string>& v) {
  pb::LwwRegister m;
  m.set_format_version(kFormatVersion);
  if (v.value()) {
    m.set_value(*v.value());
    PutStamp(v.stamp(), m.mutable_stamp());
  }
  return Serialize(m);
}

absl::StatusOr<LWWRegister<std::string>> DecodeLwwRegister(std::string_view bytes,
                                                           const DecodeLimits& l) {
  pb::LwwRegister m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  LWWRegister<std::string> r;
  if (!m.has_value()) {
    if (m.has_stamp()) return Invalid("register stamp without a value");
    return r;
  }
  if (m.value().size() > l.max_value_bytes) return Invalid("register value too large");
  if (m.stamp().replica() == kNoReplica) return Invalid("register stamp with replica 0");
  r.Set(m.value(), Stamp{HlcTimestamp{m.stamp().hlc()}, m.stamp().replica()});
  return r;
}

std::string Encode(const MVRegister<std::string>& v) {
  pb::MvRegister m;
  m.set_format_version(kFormatVersion);
  for (const auto& [dot, value] : v.state().store.entries()) {
    auto* e = m.add_values();
    e->set_replica(dot.replica);
    e->set_counter(dot.counter);
    e->set_value(value);
  }
  PutContext(v.state().ctx, SortedDots(v.state().store), m.mutable_context());
  return Serialize(m);
}

absl::StatusOr<MVRegister<std::string>> DecodeMvRegister(std::string_view bytes,
                                                         const DecodeLimits& l) {
  pb::MvRegister m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.values_size(), l, "register values"));
  std::vector<DotFun<std::string>::Entry> entries;
  std::vector<Dot> dots;
  for (const auto& e : m.values()) {
    absl::StatusOr<Dot> dot = ReadDot(e.replica(), e.counter(), l);
    if (!dot.ok()) return dot.status();
    if (e.value().size() > l.max_value_bytes) return Invalid("register value too large");
    entries.emplace_back(*dot, e.value());
    dots.push_back(*dot);
  }
  if (!DotFun<std::string>::IsSortedUnique(entries)) return Invalid("values not sorted by dot");
  absl::StatusOr<CausalContext> ctx = ReadContext(m.context(), dots, l);
  if (!ctx.ok()) return ctx.status();
  return MVRegister<std::string>(
      Causal<DotFun<std::string>>{DotFun<std::string>::FromSorted(std::move(entries)), *ctx});
}

std::string Encode(const AWORSet<std::string>& v) {
  pb::AworSet m;
  m.set_format_version(kFormatVersion);
  for (const auto& [element, dots] : v.state().store.entries()) {
    auto* e = m.add_elements();
    e->set_element(element);
    for (const auto& [dot, unit] : dots.entries()) {
      auto* d = e->add_dots();
      d->set_replica(dot.replica);
      d->set_counter(dot.counter);
    }
  }
  PutContext(v.state().ctx, SortedDots(v.state().store), m.mutable_context());
  return Serialize(m);
}

absl::StatusOr<AWORSet<std::string>> DecodeAworSet(std::string_view bytes, const DecodeLimits& l) {
  pb::AworSet m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.elements_size(), l, "set elements"));
  std::vector<std::pair<std::string, DotSet>> entries;
  std::vector<std::string> keys;
  std::vector<Dot> all;
  for (const auto& e : m.elements()) {
    MERIDIAN_RETURN_IF_ERROR(CheckKey(e.element(), l, "set element"));
    if (e.dots().empty()) return Invalid("set element without dots");
    MERIDIAN_RETURN_IF_ERROR(CheckCount(all.size() + e.dots_size(), l, "dots"));
    std::vector<DotSet::Entry> dots;
    for (const auto& d : e.dots()) {
      absl::StatusOr<Dot> dot = ReadDot(d.replica(), d.counter(), l);
      if (!dot.ok()) return dot.status();
      dots.emplace_back(*dot, Unit{});
      all.push_back(*dot);
    }
    if (!DotSet::IsSortedUnique(dots)) return Invalid("element dots not sorted");
    keys.push_back(e.element());
    entries.emplace_back(e.element(), DotSet::FromSorted(std::move(dots)));
  }
  MERIDIAN_RETURN_IF_ERROR(CheckSortedKeys(keys, "set elements"));
  MERIDIAN_RETURN_IF_ERROR(CheckUniqueDots(all));
  absl::StatusOr<CausalContext> ctx = ReadContext(m.context(), all, l);
  if (!ctx.ok()) return ctx.status();
  return AWORSet<std::string>(Causal<DotMap<std::string, DotSet>>{
      DotMap<std::string, DotSet>::FromSorted(std::move(entries)), *ctx});
}

std::string Encode(const CounterMap& v) {
  pb::CounterMap m;
  m.set_format_version(kFormatVersion);
  for (const auto& [key, store] : v.state().store.entries()) {
    auto* e = m.add_entries();
    e->set_key(key);
    PutChanges(store, e->mutable_changes());
  }
  PutContext(v.state().ctx, SortedDots(v.state().store), m.mutable_context());
  return Serialize(m);
}

absl::StatusOr<CounterMap> DecodeCounterMap(std::string_view bytes, const DecodeLimits& l) {
  pb::CounterMap m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.entries_size(), l, "map entries"));
  std::vector<std::pair<std::string, CounterStore>> entries;
  std::vector<std::string> keys;
  std::vector<Dot> all;
  for (const auto& e : m.entries()) {
    MERIDIAN_RETURN_IF_ERROR(CheckKey(e.key(), l, "map key"));
    MERIDIAN_RETURN_IF_ERROR(CheckCount(all.size() + e.changes_size(), l, "dots"));
    absl::StatusOr<CounterStore> s = ReadChanges(e.changes(), l, &all);
    if (!s.ok()) return s.status();
    keys.push_back(e.key());
    entries.emplace_back(e.key(), *std::move(s));
  }
  MERIDIAN_RETURN_IF_ERROR(CheckSortedKeys(keys, "map keys"));
  MERIDIAN_RETURN_IF_ERROR(CheckUniqueDots(all));
  absl::StatusOr<CausalContext> ctx = ReadContext(m.context(), all, l);
  if (!ctx.ok()) return ctx.status();
  return CounterMap(Causal<DotMap<std::string, CounterStore>>{
      DotMap<std::string, CounterStore>::FromSorted(std::move(entries)), *ctx});
}

std::string Encode(const BoundedCounter& v) {
  pb::BoundedCounter m;
  m.set_format_version(kFormatVersion);
  PutBounded(v, m.mutable_transfers(), m.mutable_spent());
  return Serialize(m);
}

absl::StatusOr<BoundedCounter> DecodeBoundedCounter(std::string_view bytes, const DecodeLimits& l) {
  pb::BoundedCounter m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  return ReadBounded(m.transfers(), m.spent(), l);
}

std::string Encode(const Cart& v) {
  std::string out;
  EncodeTo(v, &out);
  return out;
}

std::string EncodeCartReference(const Cart& v) {
  pb::Cart m;
  FillCart(v, &m);
  return m.SerializeAsString();
}

namespace {

// Hand-written protobuf wire encoding of crdt.v1.Cart: the same bytes as serializing the message
// built by FillCart (tested against EncodeCartReference), without building the message. Shipping
// encodes one small delta per changed cart, where the message objects cost more than the data.
// Sizes are computed first, then the bytes are written through a pointer into `out`, grown once.
size_t VarintSize(uint64_t v) { return 1 + (63 - __builtin_clzll(v | 1)) / 7; }
char* PutVarint(char* p, uint64_t v) {
  while (v >= 0x80) {
    *p++ = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  *p++ = static_cast<char>(v);
  return p;
}
uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
// Size of a {1: varint a, 2: varint b} message (Dot, VersionEntry), zero fields omitted.
size_t PairSize(uint64_t a, uint64_t b) {
  return (a ? 1 + VarintSize(a) : 0) + (b ? 1 + VarintSize(b) : 0);
}
char* PutPairBody(char* p, uint64_t a, uint64_t b) {
  if (a) {
    *p++ = 0x08;
    p = PutVarint(p, a);
  }
  if (b) {
    *p++ = 0x10;
    p = PutVarint(p, b);
  }
  return p;
}
char* PutPair(char* p, uint8_t tag, uint64_t a, uint64_t b) {
  *p++ = static_cast<char>(tag);
  p = PutVarint(p, PairSize(a, b));
  return PutPairBody(p, a, b);
}
size_t ChangeSize(const Dot& d, int64_t value) {
  return PairSize(d.replica, d.counter) + (value ? 1 + VarintSize(ZigZag(value)) : 0);
}
size_t LenField(size_t body) { return 1 + VarintSize(body) + body; }
char* PutBytes(char* p, uint8_t tag, std::string_view bytes) {
  *p++ = static_cast<char>(tag);
  p = PutVarint(p, bytes.size());
  std::memcpy(p, bytes.data(), bytes.size());
  return p + bytes.size();
}
char* PutChange(char* p, const Dot& dot, int64_t value) {
  *p++ = 0x12;
  p = PutVarint(p, ChangeSize(dot, value));
  p = PutPairBody(p, dot.replica, dot.counter);
  if (value) {
    *p++ = 0x18;
    p = PutVarint(p, ZigZag(value));
  }
  return p;
}
// Grows `out` by `n` bytes and returns where they start.
char* Extend(std::string* out, size_t n) {
  size_t old = out->size();
  out->resize(old + n);
  return out->data() + old;
}

size_t FieldSize(const Cart::Field& f) {
  const std::string& value = *f.reg.value();
  size_t n = value.empty() ? 0 : LenField(value.size());
  n += LenField(PairSize(f.reg.stamp().time.value, f.reg.stamp().replica));
  n += LenField(PairSize(f.dot.replica, f.dot.counter));
  return n;
}
char* PutField(char* p, uint8_t tag, const Cart::Field& f) {
  const std::string& value = *f.reg.value();
  *p++ = static_cast<char>(tag);
  p = PutVarint(p, FieldSize(f));
  if (!value.empty()) p = PutBytes(p, 0x0a, value);
  p = PutPair(p, 0x12, f.reg.stamp().time.value, f.reg.stamp().replica);
  return PutPair(p, 0x1a, f.dot.replica, f.dot.counter);
}
// A context message of `versions` then `cloud`; nothing when both are empty.
size_t ContextSize(const std::vector<std::pair<uint64_t, uint64_t>>& versions,
                   const std::vector<std::pair<uint64_t, uint64_t>>& cloud) {
  if (versions.empty() && cloud.empty()) return 0;
  size_t body = 0;
  for (const auto& [a, b] : versions) body += LenField(PairSize(a, b));
  for (const auto& [a, b] : cloud) body += LenField(PairSize(a, b));
  return LenField(body);
}
char* PutContext(char* p, const std::vector<std::pair<uint64_t, uint64_t>>& versions,
                 const std::vector<std::pair<uint64_t, uint64_t>>& cloud) {
  if (versions.empty() && cloud.empty()) return p;
  size_t body = 0;
  for (const auto& [a, b] : versions) body += LenField(PairSize(a, b));
  for (const auto& [a, b] : cloud) body += LenField(PairSize(a, b));
  *p++ = 0x1a;
  p = PutVarint(p, body);
  for (const auto& [a, b] : versions) p = PutPair(p, 0x0a, a, b);
  for (const auto& [a, b] : cloud) p = PutPair(p, 0x12, a, b);
  return p;
}

// Encodes a cart given as a view plus its fields (EncodeTo and the one-record deltas share it).
void EncodeView(const CartView& v, const Cart::Field* currency, const Cart::Field* note,
                std::string* out) {
  thread_local std::vector<Dot> implied;
  implied.clear();
  for (const auto& [dot, value] : v.changes) implied.push_back(dot);
  if (currency) implied.push_back(currency->dot);
  if (note) implied.push_back(note->dot);
  if (implied.size() > 1) std::sort(implied.begin(), implied.end());

  // The context's entries that are not implied (PutContext's rule).
  thread_local std::vector<std::pair<uint64_t, uint64_t>> versions, cloud;
  versions.clear();
  cloud.clear();
  for (const auto& [replica, counter] : v.versions) {
    if (!RangeImplied(replica, counter, implied)) versions.emplace_back(replica, counter);
  }
  for (const Dot& d : v.cloud) {
    if (!std::binary_search(implied.begin(), implied.end(), d)) {
      cloud.emplace_back(d.replica, d.counter);
    }
  }

  auto line_body = [&](const CartView::Line& line) {
    size_t n = line.sku.empty() ? 0 : LenField(line.sku.size());
    for (uint32_t i = line.begin; i < line.end; ++i) {
      n += LenField(ChangeSize(v.changes[i].first, v.changes[i].second));
    }
    return n;
  };
  size_t size = 1 + VarintSize(kFormatVersion) + ContextSize(versions, cloud);
  for (const CartView::Line& line : v.lines) size += LenField(line_body(line));
  if (currency) size += LenField(FieldSize(*currency));
  if (note) size += LenField(FieldSize(*note));

  char* p = Extend(out, size);
  *p++ = 0x08;  // format_version
  p = PutVarint(p, kFormatVersion);
  for (const CartView::Line& line : v.lines) {
    *p++ = 0x12;
    p = PutVarint(p, line_body(line));
    if (!line.sku.empty()) p = PutBytes(p, 0x0a, line.sku);
    for (uint32_t i = line.begin; i < line.end; ++i) {
      p = PutChange(p, v.changes[i].first, v.changes[i].second);
    }
  }
  p = PutContext(p, versions, cloud);
  if (currency) p = PutField(p, 0x22, *currency);
  if (note) p = PutField(p, 0x2a, *note);
}

}  // namespace

void EncodeTo(const Cart& v, std::string* out) {
  thread_local CartView view;
  v.FillView(&view);
  EncodeView(view, v.currency_field().reg.value() ? &v.currency_field() : nullptr,
             v.note_field().reg.value() ? &v.note_field() : nullptr, out);
}

// EncodeChangeDelta for a dot no cart makes (replica or counter 0): the long way, exactly as the
// delta Cart would be encoded. Out of line: it keeps the usual path small.
[[gnu::noinline]] static char* EncodeInvalidChangeDelta(std::string_view sku, Dot dot,
                                                        int64_t amount, char* out) {
  thread_local CartView view;
  thread_local std::string bytes;
  view.Clear();
  if (dot.counter == 1) {
    view.versions.emplace_back(dot.replica, 1);
  } else {
    view.cloud.push_back(dot);
  }
  view.changes.emplace_back(dot, amount);
  view.lines.push_back({sku, 0, 1});
  bytes.clear();
  EncodeView(view, nullptr, nullptr, &bytes);
  std::memcpy(out, bytes.data(), bytes.size());
  return out + bytes.size();
}

char* EncodeChangeDelta(std::string_view sku, Dot dot, int64_t amount, char* out) {
  if (dot.replica == kNoReplica || dot.counter == 0) {
    return EncodeInvalidChangeDelta(sku, dot, amount, out);
  }
  // The delta's context is {dot}: a version entry {replica: 1} or a cloud dot, either way implied
  // by the line's change, so the message is the format version and one line.
  static_assert(kFormatVersion < 0x80);
  const uint64_t zigzag = ZigZag(amount);
  char* p = out;
  p[0] = 0x08;
  p[1] = static_cast<char>(kFormatVersion);
  p[2] = 0x12;
  if (dot.replica < 0x80 && dot.counter < 0x80 && zigzag < 0x80 && sku.size() <= 100) {
    // Every varint is one byte (the usual case: few regions, a cart's own small counters).
    const size_t change = 4 + (amount ? 2 : 0);
    p[3] = static_cast<char>((sku.empty() ? 0 : 2 + sku.size()) + 2 + change);
    p += 4;
    if (!sku.empty()) {
      p[0] = 0x0a;
      p[1] = static_cast<char>(sku.size());
      if (sku.size() >= 8 && sku.size() <= 16) {  // the usual SKU: two overlapping 8-byte copies
        std::memcpy(p + 2, sku.data(), 8);
        std::memcpy(p + 2 + sku.size() - 8, sku.data() + sku.size() - 8, 8);
      } else {
        std::memcpy(p + 2, sku.data(), sku.size());
      }
      p += 2 + sku.size();
    }
    p[0] = 0x12;
    p[1] = static_cast<char>(change);
    p[2] = 0x08;
    p[3] = static_cast<char>(dot.replica);
    p[4] = 0x10;
    p[5] = static_cast<char>(dot.counter);
    if (!amount) return p + 6;
    p[6] = 0x18;
    p[7] = static_cast<char>(zigzag);
    return p + 8;
  }
  size_t change = ChangeSize(dot, amount);
  size_t line = (sku.empty() ? 0 : LenField(sku.size())) + LenField(change);
  p = PutVarint(p + 3, line);
  if (!sku.empty()) p = PutBytes(p, 0x0a, sku);
  return PutChange(p, dot, amount);
}

void EncodeChangeDeltaTo(std::string_view sku, Dot dot, int64_t amount, std::string* out) {
  size_t old = out->size();
  out->resize(old + MaxChangeDeltaBytes(sku.size()));
  char* end = EncodeChangeDelta(sku, dot, amount, out->data() + old);
  out->resize(static_cast<size_t>(end - out->data()));
}

char* EncodeRemovalDelta(const Dot* retired, size_t count, char* out) {
  static_assert(kFormatVersion < 0x80);
  out[0] = 0x08;
  out[1] = static_cast<char>(kFormatVersion);
  // Fast path: a few sorted, distinct dots with one-byte varints (what RemoveLine retires from a
  // cart that few regions changed): each context entry is 6 bytes, written in one pass per kind.
  constexpr size_t kFastDots = 16;
  bool fast = count <= kFastDots;
  for (size_t i = 0; fast && i < count; ++i) {
    const Dot& d = retired[i];
    fast = d.replica > 0 && d.replica < 0x80 && d.counter > 0 && d.counter < 0x80 &&
           (i == 0 || retired[i - 1] < d);
  }
  if (fast) {
    char* p = out + 4;
    // Versions (each replica's run 1..k), then the cloud (the rest), as CausalContext keeps them.
    for (int kind = 0; kind < 2; ++kind) {
      for (size_t i = 0; i < count;) {
        const ReplicaId r = retired[i].replica;
        uint64_t run = 0;
        while (i < count && retired[i].replica == r && retired[i].counter == run + 1) {
          ++run;
          ++i;
        }
        if (kind == 0 && run > 0) {
          p[0] = 0x0a;
          p[1] = 4;
          p[2] = 0x08;
          p[3] = static_cast<char>(r);
          p[4] = 0x10;
          p[5] = static_cast<char>(run);
          p += 6;
        }
        for (; i < count && retired[i].replica == r; ++i) {
          if (kind == 1) {
            p[0] = 0x12;
            p[1] = 4;
            p[2] = 0x08;
            p[3] = static_cast<char>(r);
            p[4] = 0x10;
            p[5] = static_cast<char>(retired[i].counter);
            p += 6;
          }
        }
      }
    }
    const size_t body = static_cast<size_t>(p - (out + 4));
    if (body == 0) return out + 2;
    out[2] = 0x1a;
    out[3] = static_cast<char>(body);
    return p;
  }
  // The context of `retired` as CausalContext keeps it: per replica, the run 1..k as a version
  // entry, the other dots in the cloud. No line implies any of them.
  thread_local std::vector<Dot> dots;
  thread_local std::vector<std::pair<uint64_t, uint64_t>> versions, cloud;
  dots.clear();
  for (size_t i = 0; i < count; ++i) {
    if (retired[i].counter != 0) dots.push_back(retired[i]);  // a context never holds counter 0
  }
  if (!std::is_sorted(dots.begin(), dots.end())) std::sort(dots.begin(), dots.end());
  dots.erase(std::unique(dots.begin(), dots.end()), dots.end());
  versions.clear();
  cloud.clear();
  for (size_t i = 0; i < dots.size();) {
    ReplicaId r = dots[i].replica;
    uint64_t run = 0;
    while (i < dots.size() && dots[i].replica == r && dots[i].counter == run + 1) {
      ++run;
      ++i;
    }
    if (run > 0) versions.emplace_back(r, run);
    for (; i < dots.size() && dots[i].replica == r; ++i) {
      cloud.emplace_back(dots[i].replica, dots[i].counter);
    }
  }
  return PutContext(out + 2, versions, cloud);
}

void EncodeRemovalDeltaTo(const Dot* retired, size_t count, std::string* out) {
  size_t old = out->size();
  out->resize(old + MaxRemovalDeltaBytes(count));
  char* end = EncodeRemovalDelta(retired, count, out->data() + old);
  out->resize(static_cast<size_t>(end - out->data()));
}

void EncodeRecordsTo(const CartRecord* records, size_t n, std::string* out) {
  // The fold of the records' deltas, in log order, as JoinChange and JoinRemoval do it: a change
  // whose dot is already in the context is skipped; a removal drops the entries of its line whose
  // dots it retires; every dot joins the context. Then encoded like the folded Cart.
  struct Entry {
    std::string_view sku;
    Dot dot;
    int64_t amount;
  };
  thread_local std::vector<Entry> entries;
  thread_local std::vector<Dot> seen;
  thread_local CartView view;
  entries.clear();
  seen.clear();
  auto contains = [&](const Dot& d) {
    return d.counter == 0 || std::find(seen.begin(), seen.end(), d) != seen.end();
  };
  for (size_t i = 0; i < n; ++i) {
    const CartRecord& rec = records[i];
    if (rec.retired_count == 0) {
      if (contains(rec.dot)) continue;
      entries.push_back({rec.sku, rec.dot, rec.amount});
      seen.push_back(rec.dot);
    } else {
      const Dot* begin = rec.retired;
      const Dot* end = rec.retired + rec.retired_count;
      entries.erase(std::remove_if(entries.begin(), entries.end(),
                                   [&](const Entry& e) {
                                     return e.sku == rec.sku && std::find(begin, end, e.dot) != end;
                                   }),
                    entries.end());
      for (const Dot* d = begin; d != end; ++d) {
        if (!contains(*d)) seen.push_back(*d);
      }
    }
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.sku != b.sku ? a.sku < b.sku : a.dot < b.dot;
  });
  std::sort(seen.begin(), seen.end());
  view.Clear();
  for (size_t i = 0; i < seen.size();) {
    ReplicaId r = seen[i].replica;
    uint64_t run = 0;
    while (i < seen.size() && seen[i].replica == r && seen[i].counter == run + 1) {
      ++run;
      ++i;
    }
    if (run > 0) view.versions.emplace_back(r, run);
    for (; i < seen.size() && seen[i].replica == r; ++i) view.cloud.push_back(seen[i]);
  }
  for (size_t i = 0; i < entries.size();) {
    auto begin = static_cast<uint32_t>(view.changes.size());
    std::string_view sku = entries[i].sku;
    for (; i < entries.size() && entries[i].sku == sku; ++i) {
      view.changes.emplace_back(entries[i].dot, entries[i].amount);
    }
    view.lines.push_back({sku, begin, static_cast<uint32_t>(view.changes.size())});
  }
  EncodeView(view, nullptr, nullptr, out);
}

absl::StatusOr<Cart> DecodeCart(std::string_view bytes, ReplicaId replica, const DecodeLimits& l) {
  thread_local pb::Cart m;
  m.Clear();
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.lines_size(), l, "cart lines"));
  std::vector<std::pair<std::string, CounterStore>> lines;
  lines.reserve(m.lines_size());
  std::vector<Dot> all;
  for (int i = 0; i < m.lines_size(); ++i) {
    const auto& line = m.lines(i);
    MERIDIAN_RETURN_IF_ERROR(CheckKey(line.sku(), l, "SKU"));
    if (i > 0 && !(m.lines(i - 1).sku() < line.sku())) {
      return Invalid("cart lines not sorted by SKU or duplicated");
    }
    MERIDIAN_RETURN_IF_ERROR(CheckCount(all.size() + line.changes_size(), l, "dots"));
    absl::StatusOr<CounterStore> s = ReadChanges(line.changes(), l, &all);
    if (!s.ok()) return s.status();
    lines.emplace_back(line.sku(), *std::move(s));
  }
  Cart::Field currency, note;
  if (m.has_currency()) {
    absl::StatusOr<Cart::Field> f = ReadField(m.currency(), l, "currency");
    if (!f.ok()) return f.status();
    currency = *std::move(f);
    all.push_back(currency.dot);
  }
  if (m.has_note()) {
    absl::StatusOr<Cart::Field> f = ReadField(m.note(), l, "note");
    if (!f.ok()) return f.status();
    note = *std::move(f);
    all.push_back(note.dot);
  }
  MERIDIAN_RETURN_IF_ERROR(CheckUniqueDots(all));
  absl::StatusOr<CausalContext> ctx = ReadContext(m.context(), all, l);
  if (!ctx.ok()) return ctx.status();
  Cart decoded = Cart::FromParts(
      Causal<Cart::Lines_>{Cart::Lines_::FromSorted(std::move(lines)), *std::move(ctx)},
      std::move(currency), std::move(note));
  if (replica == kNoReplica) return decoded;
  Cart out(replica);
  out.Merge(decoded);
  return out;
}

std::string Encode(const Inventory& v) {
  pb::Inventory m;
  m.set_format_version(kFormatVersion);
  std::vector<Dot> implied;
  for (const auto& [sku, counter] : v.items()) {
    auto* item = m.add_items();
    item->set_sku(sku);
    PutBounded(counter, item->mutable_transfers(), item->mutable_spent());
    for (const auto& t : counter.transfers()) implied.push_back(Dot{t.from, t.seq});
    for (const auto& s : counter.spent()) implied.push_back(Dot{s.replica, s.seq});
  }
  std::sort(implied.begin(), implied.end());
  PutContext(v.version(), implied, m.mutable_version());
  return Serialize(m);
}

absl::StatusOr<Inventory> DecodeInventory(std::string_view bytes, ReplicaId replica,
                                          const DecodeLimits& l) {
  pb::Inventory m;
  MERIDIAN_RETURN_IF_ERROR(Parse(bytes, l, &m));
  MERIDIAN_RETURN_IF_ERROR(CheckCount(m.items_size(), l, "inventory items"));
  std::vector<Inventory::Item> items;
  size_t entries = 0;
  for (int i = 0; i < m.items_size(); ++i) {
    const auto& item = m.items(i);
    MERIDIAN_RETURN_IF_ERROR(CheckKey(item.sku(), l, "SKU"));
    if (i > 0 && !(m.items(i - 1).sku() < item.sku())) {
      return Invalid("inventory items not sorted by SKU or duplicated");
    }
    entries += item.transfers_size() + item.spent_size();
    MERIDIAN_RETURN_IF_ERROR(CheckCount(entries, l, "inventory entries"));
    absl::StatusOr<BoundedCounter> c = ReadBounded(item.transfers(), item.spent(), l);
    if (!c.ok()) return c.status();
    items.emplace_back(item.sku(), *std::move(c));
  }
  absl::StatusOr<CausalContext> version = ReadContext(m.version(), {}, l);
  if (!version.ok()) return version.status();
  absl::StatusOr<Inventory> decoded = Inventory::FromParts(std::move(items), *std::move(version));
  if (!decoded.ok()) return Invalid(decoded.status().message());
  if (replica == kNoReplica) return decoded;
  Inventory out(replica);
  out.Merge(*decoded);
  return out;
}

}  // namespace meridian::crdt
