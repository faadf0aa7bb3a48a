#include "crdt/packed_cart.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace meridian::crdt::internal {
namespace {

constexpr uint64_t kLow56 = (uint64_t{1} << 56) - 1;

uint64_t MakeChange(uint32_t index, uint64_t counter, int64_t amount) {
  return (uint64_t{index} << 56) | (counter << 24) | (static_cast<uint64_t>(amount) & 0xffffffu);
}
// (rep index << 32 | counter): orders changes by dot.
uint64_t ChangeKey(uint64_t change) { return change >> 24; }
uint32_t ChangeIndex(uint64_t change) { return static_cast<uint32_t>(change >> 56); }
uint64_t Reindex(uint64_t change, uint32_t index) {
  return (change & kLow56) | (uint64_t{index} << 56);
}
uint64_t MakeCloud(uint32_t index, uint64_t counter) { return (uint64_t{index} << 32) | counter; }

// Bytewise three-way comparison, the order of std::string.
inline int CompareSku(const uint8_t* a, size_t an, const char* b, size_t bn) {
  size_t n = std::min(an, bn);
  size_t i = 0;
  if (n >= 8) {  // SKUs usually differ in their first 8 bytes: one comparison
    uint64_t x, y;
    std::memcpy(&x, a, 8);
    std::memcpy(&y, b, 8);
    if (x != y) return __builtin_bswap64(x) < __builtin_bswap64(y) ? -1 : 1;
    i = 8;
  }
  for (; i + 8 <= n; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    if (x != y) return __builtin_bswap64(x) < __builtin_bswap64(y) ? -1 : 1;
  }
  for (; i < n; ++i) {
    uint8_t x = a[i], y = static_cast<uint8_t>(b[i]);
    if (x != y) return x < y ? -1 : 1;
  }
  return an < bn ? -1 : (an > bn ? 1 : 0);
}

// Where `sku` is, or would go, among `n_lines` line records starting at `base`.
struct Scan {
  bool found;
  uint32_t offset;
  uint32_t first_change;
  uint32_t n;
};
inline Scan ScanLines(const uint8_t* base, uint32_t n_lines, std::string_view sku) {
  const uint8_t* p = base;
  uint32_t first = 0;
  // The key's first 8 bytes as a big-endian number: most lines compare on that alone.
  const bool long_key = sku.size() >= 8;
  uint64_t key_prefix = 0;
  if (long_key) {
    std::memcpy(&key_prefix, sku.data(), 8);
    key_prefix = __builtin_bswap64(key_prefix);
  }
  for (uint32_t i = 0; i < n_lines; ++i) {
    const uint32_t n = p[0], len = p[1];
    int c;
    if (long_key && len >= 8) {
      uint64_t prefix;
      std::memcpy(&prefix, p + 2, 8);
      prefix = __builtin_bswap64(prefix);
      c = prefix < key_prefix   ? -1
          : prefix > key_prefix ? 1
                                : CompareSku(p + 10, len - 8, sku.data() + 8, sku.size() - 8);
    } else {
      c = CompareSku(p + 2, len, sku.data(), sku.size());
    }
    if (c >= 0) {
      return Scan{c == 0, static_cast<uint32_t>(p - base), first, c == 0 ? n : 0};
    }
    first += n;
    p += 2 + len;
  }
  return Scan{false, static_cast<uint32_t>(p - base), first, 0};
}

size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Block sizes come in classes 64, 96, 144, 224, 336, ... (steps of 1.5): a block that grows
// one change at a time reallocates rarely, and the blocks growing carts free are the sizes the
// next growing carts ask for.
size_t CapacityFor(size_t bytes) {
  size_t c = 64;
  while (c < bytes) c = RoundUp16(c + c / 2);
  return c;
}

// Freed blocks of the smaller classes wait in a per-thread cache for the next allocation of
// their class: carts grow through the classes one after another, so frees and allocations of a
// class come in step. (glibc's own per-thread cache keeps 7 chunks per size and sends the rest
// through its coalescing bins, which cost several times more per block here.) Bounded: at most
// kCachedPerClass blocks per class and thread; a thread's cache is freed when the thread exits.
constexpr int kCachedClasses = 8;  // 64 .. 1152 bytes
constexpr uint32_t kCachedPerClass = 32;
int CachedClass(size_t capacity) {
  size_t c = 64;
  for (int k = 0; k < kCachedClasses; ++k, c = RoundUp16(c + c / 2)) {
    if (c == capacity) return k;
  }
  return -1;
}
struct BlockCache {
  void* head[kCachedClasses] = {};
  uint32_t count[kCachedClasses] = {};
  ~BlockCache();
};
thread_local constinit bool tls_cache_gone = false;
thread_local BlockCache tls_cache;
BlockCache::~BlockCache() {
  tls_cache_gone = true;
  for (void* p : head) {
    while (p) {
      void* next = *static_cast<void**>(p);
      std::free(p);
      p = next;
    }
  }
}

// A block of `capacity` bytes (a CapacityFor size) with its header's capacity set.
void* AllocateBlock(size_t capacity) {
  int k = CachedClass(capacity);
  void* p = nullptr;
  if (k >= 0 && !tls_cache_gone) {
    BlockCache& cache = tls_cache;
    if (cache.head[k]) {
      p = cache.head[k];
      cache.head[k] = *static_cast<void**>(p);
      cache.count[k]--;
    }
  }
  if (!p) {
    p = std::malloc(capacity);
    if (!p) throw std::bad_alloc();
  }
  static_cast<uint32_t*>(p)[0] = static_cast<uint32_t>(capacity);  // Header::capacity
  return p;
}

}  // namespace

void PackedCart::Release(void* block) {
  if (!block) return;
  size_t capacity = static_cast<const Header*>(block)->capacity;
  int k = CachedClass(capacity);
  if (k >= 0 && !tls_cache_gone) {
    BlockCache& cache = tls_cache;
    if (cache.count[k] < kCachedPerClass) {
      *static_cast<void**>(block) = cache.head[k];
      cache.head[k] = block;
      cache.count[k]++;
      return;
    }
  }
  std::free(block);
}

PackedCart::PackedCart(const PackedCart& other) {
  if (!other.block_) return;
  size_t used = other.UsedBytes();
  size_t cap = CapacityFor(used);
  block_ = AllocateBlock(cap);
  std::memcpy(block_, other.block_, used);
  header()->capacity = static_cast<uint32_t>(cap);
}

PackedCart& PackedCart::operator=(const PackedCart& other) {
  if (this == &other) return *this;
  if (!other.block_) {
    Release(block_);
    block_ = nullptr;
    return *this;
  }
  size_t used = other.UsedBytes();
  if (!block_ || header()->capacity < used) {
    size_t cap = CapacityFor(used);
    Release(block_);
    block_ = nullptr;
    block_ = AllocateBlock(cap);
    std::memcpy(block_, other.block_, used);
    header()->capacity = static_cast<uint32_t>(cap);
  } else {
    uint32_t cap = header()->capacity;
    std::memcpy(block_, other.block_, used);
    header()->capacity = cap;
  }
  return *this;
}

size_t PackedCart::UsedBytes() const {
  const Header* h = header();
  return sizeof(Header) + 8 * (size_t{h->n_reps} + h->n_cloud + h->n_changes) + h->line_bytes;
}

void PackedCart::Reserve(size_t extra) {
  size_t used = block_ ? UsedBytes() : sizeof(Header);
  size_t cap = block_ ? header()->capacity : 0;
  if (used + extra <= cap) return;
  // Grow by half: carts grow one change at a time, and a tight block keeps more carts in cache.
  size_t want = CapacityFor(used + extra);
  void* fresh = AllocateBlock(want);
  if (block_) {
    std::memcpy(fresh, block_, used);
    Release(block_);
  } else {
    std::memset(fresh, 0, sizeof(Header));
  }
  block_ = fresh;
  header()->capacity = static_cast<uint32_t>(want);
}

PackedCart::LinePos PackedCart::FindLine(std::string_view sku) const {
  if (!block_) return LinePos{false, 0, 0, 0};
  Scan scan = ScanLines(lines(), header()->n_lines, sku);
  return LinePos{scan.found, scan.offset, scan.first_change, scan.n};
}

uint32_t PackedCart::FindRep(ReplicaId replica, bool* found) const {
  uint32_t n = rep_count();
  uint32_t i = 0;
  if (n > 0) {
    const Rep* r = reps();
    if (n <= 8) {
      while (i < n && r[i].replica < replica) ++i;
    } else {
      i = static_cast<uint32_t>(
          std::lower_bound(r, r + n, replica,
                           [](const Rep& x, ReplicaId id) { return x.replica < id; }) -
          r);
    }
    *found = i < n && r[i].replica == replica;
  } else {
    *found = false;
  }
  return i;
}

void PackedCart::InsertRep(uint32_t i, ReplicaId replica) {
  char* at = reinterpret_cast<char*>(reps() + i);
  size_t tail = UsedBytes() - static_cast<size_t>(at - static_cast<char*>(block_));
  std::memmove(at + sizeof(Rep), at, tail);
  Rep rep{replica, 0};
  std::memcpy(at, &rep, sizeof rep);
  Header* h = header();
  h->n_reps++;
  uint64_t* cl = cloud();
  for (uint32_t j = 0; j < h->n_cloud; ++j) {
    if ((cl[j] >> 32) >= i) cl[j] += uint64_t{1} << 32;
  }
  uint64_t* ch = changes();
  for (uint32_t j = 0; j < h->n_changes; ++j) {
    if (ChangeIndex(ch[j]) >= i) ch[j] += uint64_t{1} << 56;
  }
}

uint64_t PackedCart::BumpRep(uint32_t i) {
  Rep* r = reps() + i;
  uint64_t counter = ++r->vv;
  Header* h = header();
  if (h->n_cloud == 0) return counter;
  // Fold the cloud dots of this replica that are now contiguous with its prefix.
  uint64_t* cl = cloud();
  uint64_t* end = cl + h->n_cloud;
  uint64_t* it = std::lower_bound(cl, end, MakeCloud(i, counter + 1));
  uint32_t k = 0;
  while (it + k < end && it[k] == MakeCloud(i, counter + 1 + k)) ++k;
  if (k > 0) {
    r->vv = static_cast<uint32_t>(counter + k);
    char* from = reinterpret_cast<char*>(it + k);
    size_t tail = UsedBytes() - static_cast<size_t>(from - static_cast<char*>(block_));
    std::memmove(it, from, tail);
    h->n_cloud = static_cast<uint16_t>(h->n_cloud - k);
  }
  return counter;
}

bool PackedCart::PrepareNext(ReplicaId replica, size_t extra, uint32_t* index) {
  bool found;
  uint32_t i = FindRep(replica, &found);
  if (found) {
    if (reps()[i].vv + uint64_t{1} >= kCounterLimit) return false;
    Reserve(extra);
  } else {
    if (rep_count() >= kMaxReps) return false;
    Reserve(extra + sizeof(Rep));
    InsertRep(i, replica);
  }
  *index = i;
  return true;
}

bool PackedCart::AddChange(ReplicaId replica, std::string_view sku, int64_t amount, Dot* dot) {
  if (amount < kAmountMin || amount > kAmountMax || sku.size() > kMaxSkuBytes) return false;
  // One pass over the block: find the replica and the line, check every limit, then make room
  // (growing the block, inserting the replica) and insert. Positions are kept as offsets within
  // their regions, which stay valid while regions before them grow.
  const Header empty{};
  const Header& h0 = block_ ? *header() : empty;
  const uint32_t n_reps = h0.n_reps;
  const Rep* r = block_ ? reps() : nullptr;
  uint32_t i = 0;
  if (n_reps <= 8) {
    while (i < n_reps && r[i].replica < replica) ++i;
  } else {
    i = static_cast<uint32_t>(
        std::lower_bound(r, r + n_reps, replica,
                         [](const Rep& x, ReplicaId id) { return x.replica < id; }) -
        r);
  }
  const bool have_rep = i < n_reps && r[i].replica == replica;
  if (have_rep ? r[i].vv + uint64_t{1} >= kCounterLimit : n_reps >= kMaxReps) return false;
  const Scan pos = block_ ? ScanLines(lines(), h0.n_lines, sku) : Scan{false, 0, 0, 0};
  const size_t record = pos.found ? 0 : 2 + sku.size();
  if (h0.n_changes >= 0xffff ||
      (pos.found ? pos.n >= kMaxLineChanges
                 : h0.n_lines >= kMaxLines || h0.line_bytes + record > 0xffff)) {
    return false;
  }
  const size_t extra = 8 + record + (have_rep ? 0 : sizeof(Rep));
  if (!block_ || UsedBytes() + extra > header()->capacity) Reserve(extra);
  if (!have_rep) InsertRep(i, replica);
  const uint64_t counter = header()->n_cloud == 0 ? ++reps()[i].vv : BumpRep(i);

  // The new dot is the highest of its replica, but a line can hold dots of later replicas (and,
  // after a restore, cloud dots of this one): insert in dot order.
  Header* h = header();
  uint64_t* ch = changes();
  const uint32_t n_changes = h->n_changes;
  const size_t line_bytes = h->line_bytes;
  const uint64_t key = (uint64_t{i} << 32) | counter;
  uint32_t p = pos.first_change;
  const uint32_t end = p + pos.n;
  while (p < end && ChangeKey(ch[p]) < key) ++p;
  std::memmove(ch + p + 1, ch + p, (n_changes - p) * size_t{8} + line_bytes);
  ch[p] = MakeChange(i, counter, amount);
  uint8_t* ln = reinterpret_cast<uint8_t*>(ch + n_changes + 1);
  if (pos.found) {
    ln[pos.offset]++;
  } else {
    uint8_t* at = ln + pos.offset;
    std::memmove(at + record, at, line_bytes - pos.offset);
    at[0] = 1;
    at[1] = static_cast<uint8_t>(sku.size());
    std::memcpy(at + 2, sku.data(), sku.size());
    h->line_bytes = static_cast<uint16_t>(line_bytes + record);
    h->n_lines++;
  }
  h->n_changes = static_cast<uint16_t>(n_changes + 1);
  *dot = Dot{replica, counter};
  return true;
}

bool PackedCart::NextDot(ReplicaId replica, Dot* dot) {
  uint32_t i = 0;
  if (!PrepareNext(replica, 0, &i)) return false;
  *dot = Dot{replica, BumpRep(i)};
  return true;
}

void PackedCart::RemoveLine(std::string_view sku, std::vector<Dot>* retired) {
  LinePos pos = FindLine(sku);
  if (!pos.found) return;
  Header* h = header();
  uint64_t* ch = changes();
  for (uint32_t j = pos.first_change; j < pos.first_change + pos.n; ++j) {
    retired->push_back(DotOf(ch[j]));
  }
  uint8_t* base = reinterpret_cast<uint8_t*>(ch);
  size_t all_changes = h->n_changes * size_t{8};
  size_t gap = pos.n * size_t{8};
  size_t record = 2 + size_t{lines()[pos.offset + 1]};
  size_t after = (pos.first_change + pos.n) * size_t{8};
  // Later changes and the line records before this one move down over its changes; the line
  // records after it move down over its changes and its record.
  std::memmove(base + pos.first_change * size_t{8}, base + after, all_changes + pos.offset - after);
  std::memmove(base + all_changes - gap + pos.offset, base + all_changes + pos.offset + record,
               h->line_bytes - pos.offset - record);
  h->n_changes = static_cast<uint16_t>(h->n_changes - pos.n);
  h->line_bytes = static_cast<uint16_t>(h->line_bytes - record);
  h->n_lines--;
}

void PackedCart::RemoveAllLines(std::vector<Dot>* retired) {
  if (!block_) return;
  Header* h = header();
  const uint64_t* ch = changes();
  for (uint32_t j = 0; j < h->n_changes; ++j) retired->push_back(DotOf(ch[j]));
  h->n_changes = 0;
  h->n_lines = 0;
  h->line_bytes = 0;
}

int64_t PackedCart::Quantity(std::string_view sku) const {
  LinePos pos = FindLine(sku);
  if (!pos.found) return 0;
  const uint64_t* ch = changes() + pos.first_change;
  int64_t sum = 0;
  for (uint32_t j = 0; j < pos.n; ++j) sum += AmountOf(ch[j]);
  return sum;
}

bool PackedCart::Pack(const General& g, PackedCart* out) {
  const auto& vv = g.ctx.version_vector();
  const auto& cl = g.ctx.cloud();
  // The rep table: every replica the context names (vv and cloud are both sorted by replica).
  thread_local std::vector<Rep> table;
  table.clear();
  {
    size_t a = 0, b = 0;
    while (a < vv.size() || b < cl.size()) {
      ReplicaId r;
      uint64_t v = 0;
      if (b == cl.size() || (a < vv.size() && vv[a].first <= cl[b].replica)) {
        r = vv[a].first;
        v = vv[a].second;
        ++a;
      } else {
        r = cl[b].replica;
      }
      while (b < cl.size() && cl[b].replica == r) {
        if (cl[b].counter >= kCounterLimit) return false;
        ++b;
      }
      if (v >= kCounterLimit || r == kNoReplica) return false;
      table.push_back(Rep{r, static_cast<uint32_t>(v)});
      if (table.size() > kMaxReps) return false;
    }
  }
  auto index_of = [&](ReplicaId r, uint32_t* index) {
    auto it = std::lower_bound(table.begin(), table.end(), r,
                               [](const Rep& x, ReplicaId id) { return x.replica < id; });
    if (it == table.end() || it->replica != r) return false;
    *index = static_cast<uint32_t>(it - table.begin());
    return true;
  };
  const auto& entries = g.store.entries();
  if (entries.size() > kMaxLines || cl.size() > 0xffff) return false;
  size_t n_changes = 0, line_bytes = 0;
  for (const auto& [sku, line] : entries) {
    if (sku.size() > kMaxSkuBytes || line.Size() > kMaxLineChanges || line.Empty()) return false;
    n_changes += line.Size();
    line_bytes += 2 + sku.size();
    for (const auto& [dot, amount] : line.entries()) {
      if (dot.counter >= kCounterLimit || amount < kAmountMin || amount > kAmountMax) return false;
    }
  }
  if (n_changes > 0xffff || line_bytes > 0xffff) return false;

  size_t used = sizeof(Header) + 8 * (table.size() + cl.size() + n_changes) + line_bytes;
  PackedCart p;
  if (used > sizeof(Header)) {
    p.block_ = AllocateBlock(CapacityFor(used));
    Header* h = p.header();
    *h = Header{static_cast<uint32_t>(CapacityFor(used)),
                static_cast<uint16_t>(n_changes),
                static_cast<uint16_t>(line_bytes),
                static_cast<uint16_t>(cl.size()),
                static_cast<uint8_t>(table.size()),
                static_cast<uint8_t>(entries.size()),
                0};
    std::memcpy(p.reps(), table.data(), table.size() * sizeof(Rep));
    uint64_t* c = p.cloud();
    for (size_t j = 0; j < cl.size(); ++j) {
      uint32_t index = 0;
      index_of(cl[j].replica, &index);  // the table holds every cloud replica
      c[j] = MakeCloud(index, cl[j].counter);
    }
    uint64_t* ch = p.changes();
    uint8_t* ln = p.lines();
    for (const auto& [sku, line] : entries) {
      *ln++ = static_cast<uint8_t>(line.Size());
      *ln++ = static_cast<uint8_t>(sku.size());
      std::memcpy(ln, sku.data(), sku.size());
      ln += sku.size();
      for (const auto& [dot, amount] : line.entries()) {
        uint32_t index = 0;
        if (!index_of(dot.replica, &index)) return false;  // a store dot outside the context
        *ch++ = MakeChange(index, dot.counter, amount);
      }
    }
  }
  *out = std::move(p);
  return true;
}

bool PackedCart::OneChange(std::string_view sku, Dot dot, int64_t amount, PackedCart* out) {
  if (dot.replica == kNoReplica || dot.counter == 0 || dot.counter >= kCounterLimit ||
      amount < kAmountMin || amount > kAmountMax || sku.size() > kMaxSkuBytes) {
    return false;
  }
  // A first dot is the version entry {replica: 1}; any other is a cloud dot.
  bool in_cloud = dot.counter > 1;
  size_t used = sizeof(Header) + 8 * (2 + size_t{in_cloud}) + 2 + sku.size();
  PackedCart p;
  p.block_ = AllocateBlock(CapacityFor(used));
  *p.header() = Header{static_cast<uint32_t>(CapacityFor(used)),
                       1,
                       static_cast<uint16_t>(2 + sku.size()),
                       static_cast<uint16_t>(in_cloud),
                       1,
                       1,
                       0};
  p.reps()[0] = Rep{dot.replica, in_cloud ? 0u : 1u};
  if (in_cloud) p.cloud()[0] = MakeCloud(0, dot.counter);
  p.changes()[0] = MakeChange(0, dot.counter, amount);
  uint8_t* ln = p.lines();
  ln[0] = 1;
  ln[1] = static_cast<uint8_t>(sku.size());
  std::memcpy(ln + 2, sku.data(), sku.size());
  *out = std::move(p);
  return true;
}

bool PackedCart::ContextOf(const Dot* dots, size_t count, PackedCart* out) {
  General g;
  for (size_t i = 0; i < count; ++i) g.ctx.Insert(dots[i]);
  return Pack(g, out);
}

bool PackedCart::Contains(const Dot& dot) const {
  bool found;
  uint32_t i = FindRep(dot.replica, &found);
  if (!found) return false;
  if (dot.counter <= reps()[i].vv) return true;
  if (dot.counter >= kCounterLimit) return false;
  const uint64_t* cl = cloud();
  return std::binary_search(cl, cl + header()->n_cloud, MakeCloud(i, dot.counter));
}

PackedCart::General PackedCart::Unpack() const {
  General g;
  g.ctx = Context();
  std::vector<std::pair<std::string, CounterStore>> entries;
  ForEachLine([&](std::string_view sku, const uint64_t* ch, uint32_t n) {
    std::vector<CounterStore::Entry> line;
    line.reserve(n);
    for (uint32_t j = 0; j < n; ++j) line.emplace_back(DotOf(ch[j]), AmountOf(ch[j]));
    entries.emplace_back(std::string(sku), CounterStore::FromSorted(std::move(line)));
  });
  g.store = DotMap<std::string, CounterStore>::FromSorted(std::move(entries));
  return g;
}

CausalContext PackedCart::Context() const {
  std::vector<std::pair<ReplicaId, uint64_t>> vv;
  std::vector<Dot> cl;
  for (uint32_t i = 0; i < rep_count(); ++i) {
    if (reps()[i].vv > 0) vv.emplace_back(reps()[i].replica, reps()[i].vv);
  }
  for (uint32_t i = 0; i < cloud_count(); ++i) cl.push_back(cloud_dot(i));
  return CausalContext::FromParts(std::move(vv), std::move(cl));
}

bool PackedCart::Join(const PackedCart& other) {
  if (other.ContextEmpty()) return true;  // a valid packed state without context has no lines
  if (ContextEmpty()) {
    *this = other;
    return true;
  }
  const Header* ha = header();
  const Header* hb = other.header();

  // Union of the rep tables; both maps are increasing, so remapped dots keep their order.
  thread_local std::vector<Rep> joined;
  thread_local std::vector<uint32_t> map_a, map_b, vv_a, vv_b;
  joined.clear();
  map_a.resize(ha->n_reps);
  map_b.resize(hb->n_reps);
  vv_a.clear();
  vv_b.clear();
  {
    const Rep* ra = this->reps();
    const Rep* rb = other.reps();
    uint32_t a = 0, b = 0;
    while (a < ha->n_reps || b < hb->n_reps) {
      uint32_t k = static_cast<uint32_t>(joined.size());
      if (b == hb->n_reps || (a < ha->n_reps && ra[a].replica < rb[b].replica)) {
        joined.push_back(ra[a]);
        vv_a.push_back(ra[a].vv);
        vv_b.push_back(0);
        map_a[a++] = k;
      } else if (a == ha->n_reps || rb[b].replica < ra[a].replica) {
        joined.push_back(rb[b]);
        vv_a.push_back(0);
        vv_b.push_back(rb[b].vv);
        map_b[b++] = k;
      } else {
        joined.push_back(Rep{ra[a].replica, std::max(ra[a].vv, rb[b].vv)});
        vv_a.push_back(ra[a].vv);
        vv_b.push_back(rb[b].vv);
        map_a[a++] = k;
        map_b[b++] = k;
      }
    }
  }
  if (joined.size() > kMaxReps) return false;

  // Clouds in union indices; each context's membership test works on them.
  thread_local std::vector<uint64_t> cloud_a, cloud_b, cloud;
  cloud_a.clear();
  cloud_b.clear();
  for (uint32_t j = 0; j < ha->n_cloud; ++j) {
    uint64_t c = this->cloud()[j];
    cloud_a.push_back(MakeCloud(map_a[c >> 32], c & 0xffffffffu));
  }
  for (uint32_t j = 0; j < hb->n_cloud; ++j) {
    uint64_t c = other.cloud()[j];
    cloud_b.push_back(MakeCloud(map_b[c >> 32], c & 0xffffffffu));
  }
  auto contains = [](const std::vector<uint32_t>& vv, const std::vector<uint64_t>& cl,
                     uint64_t key) {
    if ((key & 0xffffffffu) <= vv[key >> 32]) return true;
    return !cl.empty() && std::binary_search(cl.begin(), cl.end(), key);
  };
  // Joined context: max of the prefixes, union of the clouds, then fold what became contiguous
  // (one pass: the cloud is sorted by replica, then counter).
  cloud.clear();
  std::set_union(cloud_a.begin(), cloud_a.end(), cloud_b.begin(), cloud_b.end(),
                 std::back_inserter(cloud));
  {
    size_t kept = 0;
    for (uint64_t c : cloud) {
      Rep& r = joined[c >> 32];
      uint64_t counter = c & 0xffffffffu;
      if (counter <= r.vv) continue;
      if (counter == uint64_t{r.vv} + 1) {
        r.vv = static_cast<uint32_t>(counter);
        continue;
      }
      cloud[kept++] = c;
    }
    cloud.resize(kept);
  }
  if (cloud.size() > 0xffff) return false;

  // Stores, line by line (the general DotMap/DotFun join, including its shortcut: when the other
  // context holds only its store's dots it removes nothing, so lines it lacks stay as they are).
  uint64_t dots_b = hb->n_cloud;
  for (uint32_t j = 0; j < hb->n_reps; ++j) dots_b += other.reps()[j].vv;
  const bool b_removes = dots_b != hb->n_changes;

  thread_local std::vector<uint64_t> out_changes;
  thread_local std::vector<uint8_t> out_lines;
  out_changes.clear();
  out_lines.clear();
  size_t n_lines = 0;
  const uint64_t* ca = this->changes();
  const uint64_t* cb = other.changes();
  const uint8_t* la = this->lines();
  const uint8_t* lb = other.lines();
  uint32_t ia = 0, ib = 0;  // lines consumed
  bool fits = true;
  auto emit_line = [&](const uint8_t* record, size_t first) {
    size_t n = out_changes.size() - first;
    if (n == 0) return;
    if (n > kMaxLineChanges) fits = false;
    out_lines.push_back(static_cast<uint8_t>(n));
    out_lines.insert(out_lines.end(), record + 1, record + 2 + record[1]);
    ++n_lines;
  };
  while (ia < ha->n_lines || ib < hb->n_lines) {
    int c;
    if (ia == ha->n_lines) {
      c = 1;
    } else if (ib == hb->n_lines) {
      c = -1;
    } else {
      c = CompareSku(la + 2, la[1], reinterpret_cast<const char*>(lb + 2), lb[1]);
    }
    size_t first = out_changes.size();
    if (c < 0) {  // ours only
      for (uint32_t j = 0; j < la[0]; ++j) {
        uint64_t x = Reindex(ca[j], map_a[ChangeIndex(ca[j])]);
        if (!b_removes || !contains(vv_b, cloud_b, ChangeKey(x))) out_changes.push_back(x);
      }
      emit_line(la, first);
      ca += la[0];
      la += 2 + la[1];
      ++ia;
    } else if (c > 0) {  // theirs only
      for (uint32_t j = 0; j < lb[0]; ++j) {
        uint64_t y = Reindex(cb[j], map_b[ChangeIndex(cb[j])]);
        if (!contains(vv_a, cloud_a, ChangeKey(y))) out_changes.push_back(y);
      }
      emit_line(lb, first);
      cb += lb[0];
      lb += 2 + lb[1];
      ++ib;
    } else {  // both: merge the two dot-sorted lists
      uint32_t ja = 0, jb = 0;
      while (ja < la[0] || jb < lb[0]) {
        uint64_t x = ja < la[0] ? Reindex(ca[ja], map_a[ChangeIndex(ca[ja])]) : ~uint64_t{0};
        uint64_t y = jb < lb[0] ? Reindex(cb[jb], map_b[ChangeIndex(cb[jb])]) : ~uint64_t{0};
        if (jb == lb[0] || (ja < la[0] && ChangeKey(x) < ChangeKey(y))) {
          if (!contains(vv_b, cloud_b, ChangeKey(x))) out_changes.push_back(x);
          ++ja;
        } else if (ja == la[0] || ChangeKey(y) < ChangeKey(x)) {
          if (!contains(vv_a, cloud_a, ChangeKey(y))) out_changes.push_back(y);
          ++jb;
        } else {  // the same dot: the larger amount (only forged input can differ)
          out_changes.push_back(AmountOf(x) < AmountOf(y) ? y : x);
          ++ja;
          ++jb;
        }
      }
      emit_line(la, first);
      ca += la[0];
      la += 2 + la[1];
      cb += lb[0];
      lb += 2 + lb[1];
      ++ia;
      ++ib;
    }
  }
  if (!fits || n_lines > kMaxLines || out_changes.size() > 0xffff || out_lines.size() > 0xffff) {
    return false;
  }

  size_t used =
      sizeof(Header) + 8 * (joined.size() + cloud.size() + out_changes.size()) + out_lines.size();
  if (header()->capacity < used) {
    // Room for a few more changes: the next local change to this cart should not reallocate.
    size_t want = CapacityFor(used + 24);
    Release(block_);
    block_ = nullptr;
    block_ = AllocateBlock(want);
    header()->capacity = static_cast<uint32_t>(want);
  }
  Header* h = header();
  h->n_reps = static_cast<uint8_t>(joined.size());
  h->n_cloud = static_cast<uint16_t>(cloud.size());
  h->n_changes = static_cast<uint16_t>(out_changes.size());
  h->n_lines = static_cast<uint8_t>(n_lines);
  h->line_bytes = static_cast<uint16_t>(out_lines.size());
  h->unused = 0;
  std::memcpy(this->reps(), joined.data(), joined.size() * sizeof(Rep));
  std::memcpy(this->cloud(), cloud.data(), cloud.size() * 8);
  std::memcpy(this->changes(), out_changes.data(), out_changes.size() * 8);
  std::memcpy(this->lines(), out_lines.data(), out_lines.size());
  return true;
}

bool PackedCart::CheckInvariants() const {
  if (!block_) return true;
  const Header* h = header();
  if (UsedBytes() > h->capacity) return false;
  const Rep* r = reps();
  std::vector<bool> has_cloud(h->n_reps, false);
  for (uint32_t i = 0; i < h->n_reps; ++i) {
    if (r[i].replica == kNoReplica) return false;
    if (i > 0 && r[i - 1].replica >= r[i].replica) return false;
  }
  const uint64_t* cl = cloud();
  for (uint32_t j = 0; j < h->n_cloud; ++j) {
    uint64_t index = cl[j] >> 32, counter = cl[j] & 0xffffffffu;
    if (index >= h->n_reps || counter <= uint64_t{r[index].vv} + 1) return false;
    if (j > 0 && cl[j - 1] >= cl[j]) return false;
    has_cloud[index] = true;
  }
  for (uint32_t i = 0; i < h->n_reps; ++i) {
    if (r[i].vv == 0 && !has_cloud[i]) return false;
  }
  std::vector<uint64_t> keys;
  const uint64_t* ch = changes();
  const uint8_t* p = lines();
  const uint8_t* end = p + h->line_bytes;
  uint32_t total = 0;
  std::string_view previous;
  for (uint32_t i = 0; i < h->n_lines; ++i) {
    if (p + 2 > end || p + 2 + p[1] > end || p[0] == 0) return false;
    std::string_view sku(reinterpret_cast<const char*>(p + 2), p[1]);
    if (i > 0 && !(previous < sku)) return false;
    previous = sku;
    for (uint32_t j = 0; j < p[0]; ++j) {
      uint64_t c = ch[total + j];
      if (ChangeIndex(c) >= h->n_reps) return false;
      if (j > 0 && ChangeKey(ch[total + j - 1]) >= ChangeKey(c)) return false;
      uint64_t counter = (c >> 24) & 0xffffffffu;
      if (counter == 0) return false;
      if (counter > r[ChangeIndex(c)].vv &&
          !std::binary_search(cl, cl + h->n_cloud, MakeCloud(ChangeIndex(c), counter))) {
        return false;
      }
      keys.push_back(ChangeKey(c));
    }
    total += p[0];
    p += 2 + p[1];
  }
  if (p != end || total != h->n_changes) return false;
  std::sort(keys.begin(), keys.end());
  return std::adjacent_find(keys.begin(), keys.end()) == keys.end();
}

bool operator==(const PackedCart& a, const PackedCart& b) {
  bool ea = !a.block_ || a.UsedBytes() == sizeof(PackedCart::Header);
  bool eb = !b.block_ || b.UsedBytes() == sizeof(PackedCart::Header);
  if (ea || eb) return ea == eb;
  const auto* ha = a.header();
  const auto* hb = b.header();
  if (ha->n_reps != hb->n_reps || ha->n_cloud != hb->n_cloud || ha->n_changes != hb->n_changes ||
      ha->n_lines != hb->n_lines || ha->line_bytes != hb->line_bytes) {
    return false;
  }
  size_t used = a.UsedBytes();
  return std::memcmp(static_cast<const char*>(a.block_) + sizeof(PackedCart::Header),
                     static_cast<const char*>(b.block_) + sizeof(PackedCart::Header),
                     used - sizeof(PackedCart::Header)) == 0;
}

}  // namespace meridian::crdt::internal
