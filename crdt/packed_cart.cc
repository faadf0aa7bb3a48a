#include "crdt/packed_cart.h"

#include <algorithm>
#include <cstring>
#include <new>

namespace meridian::crdt::internal {
namespace {
// memcpy from a vector's data(), which is null when the vector is empty (memcpy's arguments
// must not be null even for 0 bytes).
inline void CopyIn(void* to, const void* from, size_t bytes) {
  if (bytes > 0) std::memcpy(to, from, bytes);
}
}  // namespace

namespace {

// A change: line << 56 | rep << 48 | counter << 24 | amount (24-bit two's complement).
uint64_t MakeChange(uint32_t line, uint32_t rep, uint64_t counter, int64_t amount) {
  return (uint64_t{line} << 56) | (uint64_t{rep} << 48) | (counter << 24) |
         (static_cast<uint64_t>(amount) & 0xffffffu);
}
uint32_t LineOf(uint64_t change) { return static_cast<uint32_t>(change >> 56); }
uint32_t RepOf(uint64_t change) { return static_cast<uint32_t>(change >> 48) & 0xff; }
// (rep << 24 | counter): orders dots; the same form as a cloud entry.
uint32_t DotKey(uint64_t change) { return static_cast<uint32_t>(change >> 24); }
uint64_t WithLineAndRep(uint64_t change, uint32_t line, uint32_t rep) {
  return (change & ((uint64_t{1} << 48) - 1)) | (uint64_t{line} << 56) | (uint64_t{rep} << 48);
}
uint32_t MakeCloud(uint32_t rep, uint64_t counter) {
  return (rep << 24) | static_cast<uint32_t>(counter);
}
int64_t Amount(uint64_t change) { return static_cast<int64_t>(change << 40) >> 40; }

// Whether the line record at `record` holds `sku`.
inline bool SameSku(const uint8_t* record, std::string_view sku) {
  const size_t len = sku.size();
  if (record[1] != len) return false;
  const uint8_t* key = record + 2;
  if (len >= 8 && len <= 16) {  // the usual SKU: two overlapping 8-byte comparisons
    uint64_t a, b, c, d;
    std::memcpy(&a, key, 8);
    std::memcpy(&b, sku.data(), 8);
    std::memcpy(&c, key + len - 8, 8);
    std::memcpy(&d, sku.data() + len - 8, 8);
    return a == b && c == d;
  }
  return std::memcmp(key, sku.data(), len) == 0;
}

std::string_view SkuOf(const uint8_t* record) {
  return std::string_view(reinterpret_cast<const char*>(record + 2), record[1]);
}

size_t RoundUp16(size_t n) { return (n + 15) & ~size_t{15}; }

// Block sizes come in classes 64, 80, 112, 144, 192, 240, ... (steps of 1.25): a block that grows
// one change at a time reallocates rarely, and the blocks growing carts free are the sizes the
// next growing carts ask for.
size_t CapacityFor(size_t bytes) {
  size_t c = 64;
  while (c < bytes) c = RoundUp16(c + c / 4);
  return c;
}

// Freed blocks of the smaller classes wait in a per-thread cache for the next allocation of
// their class. (glibc's own per-thread cache keeps 7 chunks per size and sends the rest through
// its coalescing bins, which cost several times more per block here.) Bounded: at most
// kCachedPerClass blocks per class and thread; a thread's cache is freed when the thread exits.
constexpr int kCachedClasses = 12;  // 64 .. 928 bytes
constexpr uint32_t kCachedPerClass = 128;
int CachedClass(size_t capacity) {
  size_t c = 64;
  for (int k = 0; k < kCachedClasses; ++k, c = RoundUp16(c + c / 4)) {
    if (c == capacity) return k;
  }
  return -1;
}
struct BlockCache {
  void* head[kCachedClasses] = {};
  uint32_t count[kCachedClasses] = {};
  ~BlockCache();
};
// Under AddressSanitizer every block goes back to malloc, so a use after free is reported.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCacheBlocks = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kCacheBlocks = false;
#else
constexpr bool kCacheBlocks = true;
#endif
#else
constexpr bool kCacheBlocks = true;
#endif
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

// A block of `capacity` bytes (a CapacityFor size). Its contents are undefined.
void* AllocateBlock(size_t capacity) {
  int k = kCacheBlocks ? CachedClass(capacity) : -1;
  if (k >= 0 && !tls_cache_gone) {
    BlockCache& cache = tls_cache;
    if (void* p = cache.head[k]) {
      cache.head[k] = *static_cast<void**>(p);
      cache.count[k]--;
      return p;
    }
  }
  void* p = std::malloc(capacity);
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace

void PackedCart::Release(void* block) {
  if (!block) return;
  int k = kCacheBlocks ? CachedClass(static_cast<const Header*>(block)->capacity) : -1;
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

size_t PackedCart::FrontBytes() const {
  const Header* h = header();
  return sizeof(Header) + sizeof(Rep) * h->n_reps + 4 * size_t{h->n_cloud} + h->line_bytes;
}

namespace {
// Copies the used parts of `from` (a block) into `to` (a block of `capacity` bytes, at least
// the used size), front to front and back to back, and sets its capacity.
void CopyBlock(const void* from, size_t front, size_t back, void* to, size_t capacity,
               size_t from_capacity) {
  std::memcpy(to, from, front);
  std::memcpy(static_cast<char*>(to) + capacity - back,
              static_cast<const char*>(from) + from_capacity - back, back);
  static_cast<uint32_t*>(to)[0] = static_cast<uint32_t>(capacity);  // Header::capacity
}
}  // namespace

PackedCart::PackedCart(const PackedCart& other) {
  if (!other.block_) return;
  size_t front = other.FrontBytes(), back = 8 * size_t{other.header()->n_changes};
  size_t cap = CapacityFor(front + back);
  block_ = AllocateBlock(cap);
  CopyBlock(other.block_, front, back, block_, cap, other.header()->capacity);
}

PackedCart& PackedCart::operator=(const PackedCart& other) {
  if (this == &other) return *this;
  if (!other.block_) {
    Release(block_);
    block_ = nullptr;
    return *this;
  }
  size_t front = other.FrontBytes(), back = 8 * size_t{other.header()->n_changes};
  size_t cap = block_ ? header()->capacity : 0;
  if (cap < front + back) {
    Release(block_);
    block_ = nullptr;
    cap = CapacityFor(front + back);
    block_ = AllocateBlock(cap);
  }
  CopyBlock(other.block_, front, back, block_, cap, other.header()->capacity);
  return *this;
}

void PackedCart::Reserve(size_t extra) {
  if (!block_) {
    size_t cap = CapacityFor(sizeof(Header) + extra);
    block_ = AllocateBlock(cap);
    *header() = Header{static_cast<uint32_t>(cap), 0, 0, 0, 0, 0, 1, {}};
    return;
  }
  size_t front = FrontBytes(), back = 8 * size_t{header()->n_changes};
  size_t cap = header()->capacity;
  if (front + back + extra <= cap) return;
  size_t want = CapacityFor(front + back + extra);
  void* fresh = AllocateBlock(want);
  CopyBlock(block_, front, back, fresh, want, cap);
  Release(block_);
  block_ = fresh;
}

PackedCart::LinePos PackedCart::FindLine(std::string_view sku) const {
  const Header* h = header();
  const uint8_t* base = lines();
  const uint8_t* p = base;
  const size_t len = sku.size();
  if (len >= 8 && len <= 16) {
    // The usual SKU: each record of the same length is two overlapping 8-byte comparisons.
    uint64_t head, tail;
    std::memcpy(&head, sku.data(), 8);
    std::memcpy(&tail, sku.data() + len - 8, 8);
    for (uint32_t i = 0; i < h->n_lines; ++i) {
      if (p[1] == len) {
        uint64_t a, b;
        std::memcpy(&a, p + 2, 8);
        std::memcpy(&b, p + 2 + len - 8, 8);
        if (a == head && b == tail) return LinePos{true, i, static_cast<uint32_t>(p - base)};
      }
      p += 2 + p[1];
    }
  } else {
    for (uint32_t i = 0; i < h->n_lines; ++i) {
      if (SameSku(p, sku)) return LinePos{true, i, static_cast<uint32_t>(p - base)};
      p += 2 + p[1];
    }
  }
  return LinePos{false, h->n_lines, h->line_bytes};
}

inline uint32_t PackedCart::FindRep(ReplicaId replica, bool* found) const {
  uint32_t n = rep_count();
  *found = false;
  if (n == 0) return 0;
  const Rep* r = reps();
  uint32_t i = 0;
  if (n <= 8) {
    while (i < n && r[i].replica < replica) ++i;
  } else {
    i = static_cast<uint32_t>(
        std::lower_bound(r, r + n, replica,
                         [](const Rep& x, ReplicaId id) { return x.replica < id; }) -
        r);
  }
  *found = i < n && r[i].replica == replica;
  return i;
}

void PackedCart::InsertRep(uint32_t i, ReplicaId replica) {
  char* at = reinterpret_cast<char*>(reps() + i);
  size_t tail = FrontBytes() - static_cast<size_t>(at - static_cast<char*>(block_));
  std::memmove(at + sizeof(Rep), at, tail);
  Rep rep{replica, 0};
  std::memcpy(at, &rep, sizeof rep);
  Header* h = header();
  h->n_reps++;
  uint32_t* cl = cloud();
  for (uint32_t j = 0; j < h->n_cloud; ++j) {
    if ((cl[j] >> 24) >= i) cl[j] += uint32_t{1} << 24;
  }
  uint64_t* ch = changes();
  for (uint32_t j = 0; j < h->n_changes; ++j) {
    if (RepOf(ch[j]) >= i) ch[j] += uint64_t{1} << 48;
  }
}

uint64_t PackedCart::BumpRep(uint32_t i) {
  Rep* r = reps() + i;
  uint64_t counter = ++r->vv;
  Header* h = header();
  if (h->n_cloud == 0) return counter;
  // Fold the cloud dots of this replica that are now contiguous with its prefix.
  uint32_t* cl = cloud();
  uint32_t* end = cl + h->n_cloud;
  uint32_t* it = std::lower_bound(cl, end, MakeCloud(i, counter + 1));
  uint32_t k = 0;
  while (it + k < end && it[k] == MakeCloud(i, counter + 1 + k)) ++k;
  if (k > 0) {
    r->vv = static_cast<uint32_t>(counter + k);
    char* from = reinterpret_cast<char*>(it + k);
    size_t tail = FrontBytes() - static_cast<size_t>(from - static_cast<char*>(block_));
    std::memmove(it, from, tail);
    h->n_cloud = static_cast<uint16_t>(h->n_cloud - k);
  }
  return counter;
}

bool PackedCart::AddChange(ReplicaId replica, std::string_view sku, int64_t amount, Dot* dot) {
  if (amount < kAmountMin || amount > kAmountMax || sku.size() > kMaxSkuBytes) return false;
  // Find the replica and the line, check every limit, then make room (growing the block,
  // inserting the replica) and append: the line record if the line is new, and the change.
  // Line positions are offsets within the line records, which stay valid while the regions
  // before them grow or shrink.
  bool have_rep;
  const uint32_t i = FindRep(replica, &have_rep);
  if (have_rep ? reps()[i].vv + uint64_t{1} >= kCounterLimit : rep_count() >= kMaxReps) {
    return false;
  }
  const LinePos pos = block_ ? FindLine(sku) : LinePos{false, 0, 0};
  const size_t record = pos.found ? 0 : 2 + sku.size();
  if (block_) {
    const Header* h = header();
    if (h->n_changes >= 0xffff ||
        (pos.found ? lines()[pos.offset] >= kMaxLineChanges
                   : h->n_lines >= kMaxLines || h->line_bytes + record > 0xffff)) {
      return false;
    }
  }
  const size_t extra = 8 + record + (have_rep ? 0 : sizeof(Rep));
  if (!block_ || UsedBytes() + extra > header()->capacity) Reserve(extra);
  if (!have_rep) InsertRep(i, replica);
  Header* h = header();
  const uint64_t counter = h->n_cloud == 0 ? ++reps()[i].vv : BumpRep(i);
  uint8_t* ln = lines();
  if (pos.found) {
    ln[pos.offset]++;
  } else {
    uint8_t* at = ln + h->line_bytes;
    at[0] = 1;
    at[1] = static_cast<uint8_t>(sku.size());
    std::memcpy(at + 2, sku.data(), sku.size());
    h->line_bytes = static_cast<uint16_t>(h->line_bytes + record);
    h->n_lines++;
  }
  changes()[-1] = MakeChange(pos.index, i, counter, amount);
  h->n_changes++;
  h->sorted = 0;
  *dot = Dot{replica, counter};
  return true;
}

bool PackedCart::NextDot(ReplicaId replica, Dot* dot) {
  bool have_rep;
  const uint32_t i = FindRep(replica, &have_rep);
  if (have_rep ? reps()[i].vv + uint64_t{1} >= kCounterLimit : rep_count() >= kMaxReps) {
    return false;
  }
  if (!have_rep) {
    Reserve(sizeof(Rep));
    InsertRep(i, replica);
  }
  *dot = Dot{replica, BumpRep(i)};
  return true;
}

void PackedCart::RemoveLine(std::string_view sku, std::vector<Dot>* retired) {
  if (!block_) return;
  const LinePos pos = FindLine(sku);
  if (!pos.found) return;
  // Compact the changes towards the block's end, keeping their order: the line's go to
  // `retired`, later lines' indices move down by one.
  Header* h = header();
  uint64_t* begin = changes();
  uint64_t* end = begin + h->n_changes;
  uint64_t* kept = end;
  const size_t first_retired = retired->size();
  for (uint64_t* r = end; r != begin;) {
    uint64_t x = *--r;
    uint32_t line = LineOf(x);
    if (line == pos.index) {
      retired->push_back(DotOf(x));
    } else {
      *--kept = line > pos.index ? x - (uint64_t{1} << 56) : x;
    }
  }
  h->n_changes = static_cast<uint16_t>(end - kept);
  std::sort(retired->begin() + static_cast<std::ptrdiff_t>(first_retired), retired->end());
  uint8_t* at = lines() + pos.offset;
  const size_t record = 2 + size_t{at[1]};
  std::memmove(at, at + record, h->line_bytes - pos.offset - record);
  h->line_bytes = static_cast<uint16_t>(h->line_bytes - record);
  h->n_lines--;
}

void PackedCart::RemoveAllLines(std::vector<Dot>* retired) {
  if (!block_) return;
  Header* h = header();
  const uint64_t* ch = changes();
  const size_t first_retired = retired->size();
  for (uint32_t j = 0; j < h->n_changes; ++j) retired->push_back(DotOf(ch[j]));
  std::sort(retired->begin() + static_cast<std::ptrdiff_t>(first_retired), retired->end());
  h->n_changes = 0;
  h->n_lines = 0;
  h->line_bytes = 0;
  h->sorted = 1;
}

int64_t PackedCart::Quantity(std::string_view sku) const {
  if (!block_) return 0;
  const LinePos pos = FindLine(sku);
  if (!pos.found) return 0;
  const uint64_t* ch = changes();
  int64_t sum = 0;
  for (uint32_t j = 0; j < header()->n_changes; ++j) {
    if (LineOf(ch[j]) == pos.index) sum += Amount(ch[j]);
  }
  return sum;
}

void PackedCart::Sort() {
  if (!block_ || header()->sorted) return;
  Header* h = header();
  // Line records in SKU order, and each old index's new one.
  struct Record {
    const uint8_t* at;
    uint32_t index;
  };
  thread_local std::vector<Record> records;
  thread_local std::vector<uint8_t> sorted_lines;
  records.clear();
  const uint8_t* p = lines();
  for (uint32_t i = 0; i < h->n_lines; ++i, p += 2 + p[1]) records.push_back({p, i});
  std::sort(records.begin(), records.end(),
            [](const Record& a, const Record& b) { return SkuOf(a.at) < SkuOf(b.at); });
  uint8_t new_index[256];
  sorted_lines.clear();
  for (uint32_t k = 0; k < records.size(); ++k) {
    new_index[records[k].index] = static_cast<uint8_t>(k);
    sorted_lines.insert(sorted_lines.end(), records[k].at, records[k].at + 2 + records[k].at[1]);
  }
  CopyIn(lines(), sorted_lines.data(), sorted_lines.size());
  uint64_t* ch = changes();
  for (uint32_t j = 0; j < h->n_changes; ++j) {
    ch[j] = WithLineAndRep(ch[j], new_index[LineOf(ch[j])], RepOf(ch[j]));
  }
  std::sort(ch, ch + h->n_changes);
  h->sorted = 1;
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

  const size_t front = sizeof(Header) + sizeof(Rep) * table.size() + 4 * cl.size() + line_bytes;
  if (front + 8 * n_changes == sizeof(Header)) {  // empty
    *out = PackedCart();
    return true;
  }
  PackedCart p;
  const size_t cap = CapacityFor(front + 8 * n_changes);
  p.block_ = AllocateBlock(cap);
  *p.header() = Header{static_cast<uint32_t>(cap),
                       static_cast<uint16_t>(n_changes),
                       static_cast<uint16_t>(line_bytes),
                       static_cast<uint16_t>(cl.size()),
                       static_cast<uint8_t>(table.size()),
                       static_cast<uint8_t>(entries.size()),
                       1,
                       {}};
  CopyIn(p.reps(), table.data(), table.size() * sizeof(Rep));
  uint32_t* c = p.cloud();
  for (size_t j = 0; j < cl.size(); ++j) {
    uint32_t index = 0;
    index_of(cl[j].replica, &index);  // the table holds every cloud replica
    c[j] = MakeCloud(index, cl[j].counter);
  }
  uint64_t* ch = p.changes();
  uint8_t* ln = p.lines();
  uint32_t line_index = 0;
  for (const auto& [sku, line] : entries) {
    *ln++ = static_cast<uint8_t>(line.Size());
    *ln++ = static_cast<uint8_t>(sku.size());
    std::memcpy(ln, sku.data(), sku.size());
    ln += sku.size();
    for (const auto& [dot, amount] : line.entries()) {
      uint32_t index = 0;
      if (!index_of(dot.replica, &index)) return false;  // a store dot outside the context
      *ch++ = MakeChange(line_index, index, dot.counter, amount);
    }
    ++line_index;
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
  const bool in_cloud = dot.counter > 1;
  const size_t line_bytes = 2 + sku.size();
  const size_t cap =
      CapacityFor(sizeof(Header) + sizeof(Rep) + (in_cloud ? 4 : 0) + line_bytes + 8);
  PackedCart p;
  p.block_ = AllocateBlock(cap);
  *p.header() = Header{static_cast<uint32_t>(cap),
                       1,
                       static_cast<uint16_t>(line_bytes),
                       static_cast<uint16_t>(in_cloud),
                       1,
                       1,
                       1,
                       {}};
  p.reps()[0] = Rep{dot.replica, in_cloud ? 0u : 1u};
  if (in_cloud) p.cloud()[0] = MakeCloud(0, dot.counter);
  uint8_t* ln = p.lines();
  ln[0] = 1;
  ln[1] = static_cast<uint8_t>(sku.size());
  std::memcpy(ln + 2, sku.data(), sku.size());
  p.changes()[0] = MakeChange(0, 0, dot.counter, amount);
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
  const uint32_t* cl = cloud();
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
  // Both sides in the canonical form: lines by SKU, each line's changes together, by dot.
  PackedCart sorted_other;
  const PackedCart* o = &other;
  if (!other.header()->sorted) {
    sorted_other = other;
    sorted_other.Sort();
    o = &sorted_other;
  }
  if (ContextEmpty()) {
    *this = *o;
    return true;
  }
  Sort();
  const Header* ha = header();
  const Header* hb = o->header();

  // Union of the rep tables; both maps are increasing, so remapped dots keep their order.
  thread_local std::vector<Rep> joined;
  thread_local std::vector<uint32_t> map_a, map_b, vv_a, vv_b;
  joined.clear();
  map_a.resize(ha->n_reps);
  map_b.resize(hb->n_reps);
  vv_a.clear();
  vv_b.clear();
  {
    const Rep* ra = reps();
    const Rep* rb = o->reps();
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
  thread_local std::vector<uint32_t> cloud_a, cloud_b, cloud_joined;
  cloud_a.clear();
  cloud_b.clear();
  for (uint32_t j = 0; j < ha->n_cloud; ++j) {
    uint32_t c = cloud()[j];
    cloud_a.push_back(MakeCloud(map_a[c >> 24], c & 0xffffff));
  }
  for (uint32_t j = 0; j < hb->n_cloud; ++j) {
    uint32_t c = o->cloud()[j];
    cloud_b.push_back(MakeCloud(map_b[c >> 24], c & 0xffffff));
  }
  auto contains = [](const std::vector<uint32_t>& vv, const std::vector<uint32_t>& cl,
                     uint32_t key) {
    if ((key & 0xffffff) <= vv[key >> 24]) return true;
    return !cl.empty() && std::binary_search(cl.begin(), cl.end(), key);
  };
  // Joined context: max of the prefixes, union of the clouds, then fold what became contiguous
  // (one pass: the cloud is sorted by replica, then counter).
  cloud_joined.clear();
  std::set_union(cloud_a.begin(), cloud_a.end(), cloud_b.begin(), cloud_b.end(),
                 std::back_inserter(cloud_joined));
  {
    size_t kept = 0;
    for (uint32_t c : cloud_joined) {
      Rep& r = joined[c >> 24];
      uint32_t counter = c & 0xffffff;
      if (counter <= r.vv) continue;
      if (counter == r.vv + 1) {
        r.vv = counter;
        continue;
      }
      cloud_joined[kept++] = c;
    }
    cloud_joined.resize(kept);
  }
  if (cloud_joined.size() > 0xffff) return false;

  // Stores, line by line (the general DotMap/DotFun join, including its shortcut: when the other
  // context holds only its store's dots it removes nothing, so lines it lacks stay as they are).
  uint64_t dots_b = hb->n_cloud;
  for (uint32_t j = 0; j < hb->n_reps; ++j) dots_b += o->reps()[j].vv;
  const bool b_removes = dots_b != hb->n_changes;

  thread_local std::vector<uint64_t> out_changes;
  thread_local std::vector<uint8_t> out_lines;
  out_changes.clear();
  out_lines.clear();
  uint32_t n_lines = 0;
  const uint64_t* ca = changes();
  const uint64_t* cb = o->changes();
  const uint8_t* la = lines();
  const uint8_t* lb = o->lines();
  uint32_t ia = 0, ib = 0;  // lines consumed
  bool fits = true;
  // Our change / their change with the output line index and the union rep index.
  auto ours = [&](uint64_t x) { return WithLineAndRep(x, n_lines, map_a[RepOf(x)]); };
  auto theirs = [&](uint64_t y) { return WithLineAndRep(y, n_lines, map_b[RepOf(y)]); };
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
      std::string_view sa = SkuOf(la), sb = SkuOf(lb);
      c = sa < sb ? -1 : (sb < sa ? 1 : 0);
    }
    size_t first = out_changes.size();
    if (c < 0) {  // ours only
      for (uint32_t j = 0; j < la[0]; ++j) {
        uint64_t x = ours(ca[j]);
        if (!b_removes || !contains(vv_b, cloud_b, DotKey(x))) out_changes.push_back(x);
      }
      emit_line(la, first);
      ca += la[0];
      la += 2 + la[1];
      ++ia;
    } else if (c > 0) {  // theirs only
      for (uint32_t j = 0; j < lb[0]; ++j) {
        uint64_t y = theirs(cb[j]);
        if (!contains(vv_a, cloud_a, DotKey(y))) out_changes.push_back(y);
      }
      emit_line(lb, first);
      cb += lb[0];
      lb += 2 + lb[1];
      ++ib;
    } else {  // both: merge the two dot-sorted lists
      uint32_t ja = 0, jb = 0;
      while (ja < la[0] || jb < lb[0]) {
        uint64_t x = ja < la[0] ? ours(ca[ja]) : 0;
        uint64_t y = jb < lb[0] ? theirs(cb[jb]) : 0;
        if (jb == lb[0] || (ja < la[0] && DotKey(x) < DotKey(y))) {
          if (!contains(vv_b, cloud_b, DotKey(x))) out_changes.push_back(x);
          ++ja;
        } else if (ja == la[0] || DotKey(y) < DotKey(x)) {
          if (!contains(vv_a, cloud_a, DotKey(y))) out_changes.push_back(y);
          ++jb;
        } else {  // the same dot: the larger amount (only forged input can differ)
          out_changes.push_back(Amount(x) < Amount(y) ? y : x);
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

  const size_t front =
      sizeof(Header) + sizeof(Rep) * joined.size() + 4 * cloud_joined.size() + out_lines.size();
  const size_t back = 8 * out_changes.size();
  size_t cap = header()->capacity;
  if (cap < front + back) {
    // Room for a few more changes: the next local change to this cart should not reallocate.
    Release(block_);
    block_ = nullptr;
    cap = CapacityFor(front + back + 24);
    block_ = AllocateBlock(cap);
  }
  *header() = Header{static_cast<uint32_t>(cap),
                     static_cast<uint16_t>(out_changes.size()),
                     static_cast<uint16_t>(out_lines.size()),
                     static_cast<uint16_t>(cloud_joined.size()),
                     static_cast<uint8_t>(joined.size()),
                     static_cast<uint8_t>(n_lines),
                     1,
                     {}};
  CopyIn(reps(), joined.data(), joined.size() * sizeof(Rep));
  CopyIn(cloud(), cloud_joined.data(), cloud_joined.size() * 4);
  CopyIn(lines(), out_lines.data(), out_lines.size());
  CopyIn(changes(), out_changes.data(), back);
  return true;
}

bool PackedCart::CheckInvariants() const {
  if (!block_) return true;
  const Header* h = header();
  if (UsedBytes() > h->capacity || h->sorted > 1) return false;
  const Rep* r = reps();
  std::vector<bool> has_cloud(h->n_reps, false);
  for (uint32_t i = 0; i < h->n_reps; ++i) {
    if (r[i].replica == kNoReplica || r[i].vv >= kCounterLimit) return false;
    if (i > 0 && r[i - 1].replica >= r[i].replica) return false;
  }
  const uint32_t* cl = cloud();
  for (uint32_t j = 0; j < h->n_cloud; ++j) {
    uint32_t index = cl[j] >> 24, counter = cl[j] & 0xffffff;
    if (index >= h->n_reps || counter <= uint64_t{r[index].vv} + 1) return false;
    if (j > 0 && cl[j - 1] >= cl[j]) return false;
    has_cloud[index] = true;
  }
  for (uint32_t i = 0; i < h->n_reps; ++i) {
    if (r[i].vv == 0 && !has_cloud[i]) return false;
  }
  // Line records: exactly line_bytes, each with changes, SKUs distinct (in order when sorted).
  std::vector<std::string_view> skus;
  std::vector<uint32_t> counts;
  const uint8_t* p = lines();
  const uint8_t* end = p + h->line_bytes;
  for (uint32_t i = 0; i < h->n_lines; ++i) {
    if (p + 2 > end || p + 2 + p[1] > end || p[0] == 0) return false;
    skus.push_back(SkuOf(p));
    counts.push_back(p[0]);
    p += 2 + p[1];
  }
  if (p != end) return false;
  if (h->sorted) {
    for (size_t i = 1; i < skus.size(); ++i) {
      if (!(skus[i - 1] < skus[i])) return false;
    }
  } else {
    std::vector<std::string_view> distinct = skus;
    std::sort(distinct.begin(), distinct.end());
    if (std::adjacent_find(distinct.begin(), distinct.end()) != distinct.end()) return false;
  }
  // Changes: a line and a replica that exist, a dot in the context and distinct, the counts of
  // the line records; in (line, dot) order when sorted.
  const uint64_t* ch = changes();
  std::vector<uint32_t> dots;
  for (uint32_t j = 0; j < h->n_changes; ++j) {
    uint64_t x = ch[j];
    uint32_t line = LineOf(x), index = RepOf(x);
    uint64_t counter = DotKey(x) & 0xffffff;
    if (line >= h->n_lines || index >= h->n_reps || counter == 0) return false;
    if (counter > r[index].vv &&
        !std::binary_search(cl, cl + h->n_cloud, MakeCloud(index, counter))) {
      return false;
    }
    if (counts[line]-- == 0) return false;
    if (h->sorted && j > 0 && (ch[j - 1] >> 24) >= (x >> 24)) return false;
    dots.push_back(DotKey(x));
  }
  for (uint32_t c : counts) {
    if (c != 0) return false;
  }
  std::sort(dots.begin(), dots.end());
  return std::adjacent_find(dots.begin(), dots.end()) == dots.end();
}

bool operator==(const PackedCart& a, const PackedCart& b) {
  bool ea = a.ContextEmpty() && a.StoreEmpty();
  bool eb = b.ContextEmpty() && b.StoreEmpty();
  if (ea || eb) return ea == eb;
  if (!a.header()->sorted || !b.header()->sorted) {
    PackedCart sa = a, sb = b;
    sa.Sort();
    sb.Sort();
    return sa == sb;
  }
  const auto* ha = a.header();
  const auto* hb = b.header();
  if (ha->n_reps != hb->n_reps || ha->n_cloud != hb->n_cloud || ha->n_changes != hb->n_changes ||
      ha->n_lines != hb->n_lines || ha->line_bytes != hb->line_bytes) {
    return false;
  }
  const size_t front = a.FrontBytes() - sizeof(PackedCart::Header);
  return std::memcmp(static_cast<const char*>(a.block_) + sizeof(PackedCart::Header),
                     static_cast<const char*>(b.block_) + sizeof(PackedCart::Header), front) == 0 &&
         std::memcmp(a.changes(), b.changes(), 8 * size_t{ha->n_changes}) == 0;
}

}  // namespace meridian::crdt::internal
