// Meridian's side of tests/bench/crdt_compare.sh: runs a cart workload file (written by
// crdt_compare/gen_workload.mjs) through crdt::Cart exactly as the Automerge and Yjs runners do:
// one document per (replica, cart); every local op applies the change and appends it to the
// replica's outbox log (as the region does: one outbox row per change); `p R` folds the log per
// cart into the join of its deltas and encodes each into a message; `d M R` decodes and merges
// that message at replica R.
//
// Usage: crdt_compare_meridian --workload FILE --out RESULT.json --totals TOTALS.txt
//                              [--heap-mib N]
//
// Before anything else the runner reserves N MiB of heap (default 64, about three times what
// the default workload peaks at; 0: none) and touches every page of it, as the Automerge runner
// pre-sizes its wasm heap: a long-running region process allocates from a heap whose pages are
// already mapped, and without it the timed ops also pay the kernel's first-touch page faults
// (about a fifth of the local time on this VM, 2026-12-03).

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "crdt/cart.h"
#include "crdt/codec.h"

namespace {

using meridian::crdt::Cart;
using meridian::crdt::ReplicaId;
using Clock = std::chrono::steady_clock;

struct Op {
  uint8_t replica;
  char kind;  // 'a', 'c', 'r'
  uint32_t cart;
  uint32_t sku;
  int32_t amount;
};
struct Event {
  char type;              // 'o', 'p', 'd'
  uint32_t a = 0, b = 0;  // o: index into ops; p: replica; d: message, replica
};
// A growable byte buffer that, unlike std::string, does not zero the room it adds.
struct Bytes {
  std::unique_ptr<char[]> data;
  size_t size = 0;
  size_t capacity = 0;
  // Room for `n` more bytes at data + size.
  char* Room(size_t n) {
    if (size + n > capacity) {
      size_t grown = std::max({size + n, 2 * capacity, size_t{4096}});
      auto fresh = std::make_unique_for_overwrite<char[]>(grown);
      if (size) std::memcpy(fresh.get(), data.get(), size);
      data = std::move(fresh);
      capacity = grown;
    }
    return data.get() + size;
  }
  std::string_view view() const { return {data.get(), size}; }
};

struct Message {
  uint32_t origin;
  uint64_t ops = 0;
  uint32_t deliveries_left = 0;
  Bytes bytes;                                                            // concatenated payloads
  std::vector<std::pair<uint32_t, std::pair<uint32_t, uint32_t>>> parts;  // cart, (offset, len)
};

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "crdt_compare_meridian: %s\n", why.c_str());
  std::exit(2);
}

// Maps and touches `mib` MiB of heap and hands it back to malloc, which keeps it (no trimming;
// allocations of up to 1 MiB come from the heap, larger ones are mapped as usual): the
// documents, their blocks and the outbox logs are then served from pages already mapped.
void ReserveHeap(size_t mib) {
  if (mib == 0) return;
  // Chunks below the mmap threshold come from the heap proper, which malloc keeps once freed.
  if (mallopt(M_MMAP_THRESHOLD, 1 << 20) != 1 || mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1) {
    Die("mallopt refused the heap settings");
  }
  std::vector<char*> chunks;
  constexpr size_t kChunk = 512 << 10;
  for (size_t i = 0; i < (mib << 20) / kChunk; ++i) {
    char* volatile chunk = static_cast<char*>(std::malloc(kChunk));
    if (chunk == nullptr) Die("cannot reserve " + std::to_string(mib) + " MiB of heap");
    for (size_t at = 0; at < kChunk; at += 4096) chunk[at] = 1;
    chunks.push_back(static_cast<char*>(chunk));
  }
  for (char* c : chunks) std::free(c);
}

}  // namespace

int main(int argc, char** argv) {
  std::string workload, out_path, totals_path;
  size_t heap_mib = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--workload")
      workload = argv[i + 1];
    else if (flag == "--heap-mib") {
      char* end = nullptr;
      unsigned long v = std::strtoul(argv[i + 1], &end, 10);
      if (end == argv[i + 1] || *end != '\0' || v > 4096) Die("--heap-mib takes 0..4096");
      heap_mib = v;
    } else if (flag == "--out")
      out_path = argv[i + 1];
    else if (flag == "--totals")
      totals_path = argv[i + 1];
    else
      Die("unknown flag " + flag);
  }
  if (workload.empty() || out_path.empty() || totals_path.empty()) {
    Die("usage: crdt_compare_meridian --workload FILE --out RESULT.json --totals TOTALS.txt "
        "[--heap-mib N]");
  }
  ReserveHeap(heap_mib);

  // Parse everything first: parsing is not part of any measured figure.
  std::ifstream in(workload);
  if (!in) Die("cannot open " + workload);
  std::vector<Op> ops;
  std::vector<Event> events;
  std::vector<std::string> sku_names;
  std::unordered_map<std::string, uint32_t> sku_ids;
  uint32_t replicas = 0, carts = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream ls(line);
    std::string t;
    ls >> t;
    if (t == "#") {
      std::string kv;
      while (ls >> kv) {
        if (kv.rfind("replicas=", 0) == 0) replicas = std::stoul(kv.substr(9));
        if (kv.rfind("carts=", 0) == 0) carts = std::stoul(kv.substr(6));
      }
    } else if (t == "o") {
      Op op{};
      unsigned r;
      std::string kind, sku;
      ls >> r >> op.cart >> kind >> sku;
      op.replica = static_cast<uint8_t>(r);
      op.kind = kind[0];
      if (op.kind != 'r') ls >> op.amount;
      if (!ls || r >= replicas || op.cart >= carts) Die("bad line: " + line);
      auto [it, fresh] = sku_ids.try_emplace(sku, static_cast<uint32_t>(sku_names.size()));
      if (fresh) sku_names.push_back(sku);
      op.sku = it->second;
      events.push_back({'o', static_cast<uint32_t>(ops.size()), 0});
      ops.push_back(op);
    } else if (t == "p") {
      Event e{'p'};
      ls >> e.a;
      events.push_back(e);
    } else if (t == "d") {
      Event e{'d'};
      ls >> e.a >> e.b;
      events.push_back(e);
    } else {
      Die("bad line: " + line);
    }
  }
  if (replicas == 0 || carts == 0) Die("workload header lacks replicas= or carts=");
  // How many times each message will be delivered, so that its buffers can be reused (as an outbox
  // frees a batch every peer has) once the last delivery is done.
  std::vector<uint32_t> deliveries;
  for (const Event& e : events) {
    if (e.type != 'd') continue;
    if (e.a >= deliveries.size()) deliveries.resize(e.a + 1, 0);
    ++deliveries[e.a];
  }

  // An outbox record: one change (counter, amount; the dot's replica is the outbox's) or one
  // removal (its retired dots in `retired`). Records of one cart are chained in log order
  // (`next`), so that shipping folds each cart's records without sorting the log.
  constexpr uint32_t kNone = ~uint32_t{0};
  struct Record {
    uint32_t cart;
    uint32_t sku;
    uint64_t counter;
    int64_t amount;          // a removal: the index of its first retired dot
    uint32_t retired_count;  // > 0 marks a removal
    uint32_t next;           // the cart's next record, or kNone
  };
  struct Outbox {
    ReplicaId replica;
    std::vector<Record> log;
    std::vector<meridian::crdt::Dot> retired;
    std::vector<uint32_t> first, last;  // per cart: its first and last record since the last ship
    std::vector<uint32_t> touched;      // carts with records, in order of first record
    void Append(const Record& rec) {
      auto i = static_cast<uint32_t>(log.size());
      log.push_back(rec);
      uint32_t& head = first[rec.cart];
      uint32_t& tail = last[rec.cart];
      if (head == kNone) {
        head = i;
        touched.push_back(rec.cart);
      } else {
        log[tail].next = i;
      }
      tail = i;
    }
  };
  std::vector<std::vector<Cart>> docs(replicas);
  std::vector<Outbox> outbox(replicas);
  std::vector<uint64_t> ops_since_pack(replicas, 0);
  for (uint32_t r = 0; r < replicas; ++r) {
    for (uint32_t c = 0; c < carts; ++c) docs[r].emplace_back(static_cast<ReplicaId>(r + 1));
    outbox[r].replica = static_cast<ReplicaId>(r + 1);
    outbox[r].first.assign(carts, kNone);
    outbox[r].last.assign(carts, kNone);
  }
  std::vector<Message> messages;
  std::vector<Message> spare;  // delivered messages whose buffers the next packs reuse
  Clock::duration local_time{}, merge_time{}, ship_time{};  // ship_time: part of local_time
  uint64_t wire_bytes = 0, merge_ops = 0;

  size_t done = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& e = events[i];
    if (e.type == 'o') {
      // Time each run of consecutive ops as a whole: reading the clock per op would cost as much
      // as the op itself.
      auto t0 = Clock::now();
      for (; i < events.size() && events[i].type == 'o'; ++i) {
        const Op& op = ops[events[i].a];
        Cart& doc = docs[op.replica][op.cart];
        Outbox& box = outbox[op.replica];
        if (op.kind == 'r') {
          auto begin = static_cast<uint32_t>(box.retired.size());
          doc.RemoveLine(sku_names[op.sku], &box.retired);
          uint32_t n = static_cast<uint32_t>(box.retired.size()) - begin;
          if (n > 0) box.Append({op.cart, op.sku, 0, begin, n, kNone});
        } else {
          meridian::crdt::Dot dot = doc.AddChange(sku_names[op.sku], op.amount);
          box.Append({op.cart, op.sku, dot.counter, op.amount, 0, kNone});
        }
        ++ops_since_pack[op.replica];
      }
      local_time += Clock::now() - t0;
      --i;
      size_t before = done;
      done = i + 1;
      if (done / 50000 != before / 50000) std::fprintf(stderr, "meridian: %zu events\n", done);
    } else if (e.type == 'p') {
      auto t0 = Clock::now();
      Message m;
      if (!spare.empty()) {
        m = std::move(spare.back());
        spare.pop_back();
        m.bytes.size = 0;
        m.parts.clear();
      }
      m.origin = e.a;
      size_t id = messages.size();
      m.deliveries_left = id < deliveries.size() ? deliveries[id] : 0;
      m.ops = ops_since_pack[e.a];
      ops_since_pack[e.a] = 0;
      // Fold the log per cart (its records in log order; joining them in that order is the join of
      // their deltas) and encode one delta per cart. A cart with one record ships that record's
      // delta, encoded straight from the record (the same bytes as encoding the delta Cart).
      Outbox& box = outbox[e.a];
      Bytes& buf = m.bytes;
      for (uint32_t c : box.touched) {
        uint32_t j = box.first[c];
        box.first[c] = kNone;
        const Record& head = box.log[j];
        const std::string& sku = sku_names[head.sku];
        const size_t offset = buf.size;
        if (head.next == kNone && head.retired_count > 0) {
          char* start = buf.Room(meridian::crdt::MaxRemovalDeltaBytes(head.retired_count));
          char* end = meridian::crdt::EncodeRemovalDelta(box.retired.data() + head.amount,
                                                         head.retired_count, start);
          buf.size += static_cast<size_t>(end - start);
        } else if (head.next == kNone) {
          char* start = buf.Room(meridian::crdt::MaxChangeDeltaBytes(sku.size()));
          char* end = meridian::crdt::EncodeChangeDelta(sku, {box.replica, head.counter},
                                                        head.amount, start);
          buf.size += static_cast<size_t>(end - start);
        } else {
          thread_local std::vector<meridian::crdt::CartRecord> recs;
          thread_local std::string folded;
          recs.clear();
          for (; j != kNone; j = box.log[j].next) {
            const Record& rec = box.log[j];
            if (rec.retired_count > 0) {
              recs.push_back(
                  {sku_names[rec.sku], {}, 0, box.retired.data() + rec.amount, rec.retired_count});
            } else {
              recs.push_back({sku_names[rec.sku], {box.replica, rec.counter}, rec.amount});
            }
          }
          folded.clear();
          meridian::crdt::EncodeRecordsTo(recs.data(), recs.size(), &folded);
          std::memcpy(buf.Room(folded.size()), folded.data(), folded.size());
          buf.size += folded.size();
        }
        m.parts.push_back(
            {c, {static_cast<uint32_t>(offset), static_cast<uint32_t>(buf.size - offset)}});
      }
      box.touched.clear();
      box.log.clear();
      box.retired.clear();
      Clock::duration shipping = Clock::now() - t0;
      local_time += shipping;
      ship_time += shipping;
      messages.push_back(std::move(m));
    } else {
      if (e.a >= messages.size() || e.b >= replicas) Die("delivery of an unknown message");
      Message& m = messages[e.a];
      wire_bytes += m.bytes.size;
      merge_ops += m.ops;
      auto t0 = Clock::now();
      for (const auto& [cart, span] : m.parts) {
        auto delta = meridian::crdt::DecodeCart(m.bytes.view().substr(span.first, span.second));
        if (!delta.ok()) Die("decode failed: " + std::string(delta.status().message()));
        docs[e.b][cart].Merge(*delta);
      }
      merge_time += Clock::now() - t0;
      if (--m.deliveries_left == 0) {
        spare.emplace_back();
        spare.back().bytes = std::move(m.bytes);
        spare.back().parts = std::move(m.parts);
      }
    }
  }

  bool converged = true;
  uint64_t state_bytes = 0;
  for (uint32_t c = 0; c < carts; ++c) {
    for (uint32_t r = 1; r < replicas; ++r) converged = converged && docs[r][c] == docs[0][c];
    state_bytes += meridian::crdt::Encode(docs[0][c]).size();
  }
  std::ofstream totals(totals_path);
  for (uint32_t c = 0; c < carts; ++c) {
    const auto state = docs[0][c].state();
    for (const auto& [sku, line] : state.store.entries()) {
      int64_t q = meridian::crdt::CounterValue(line);
      if (q != 0) totals << c << ' ' << sku << ' ' << q << '\n';
    }
  }
  double local_s = std::chrono::duration<double>(local_time).count();
  double merge_s = std::chrono::duration<double>(merge_time).count();
  std::ofstream out(out_path);
  char buf[1024];
  std::snprintf(
      buf, sizeof buf,
      "{\"system\":\"meridian\",\"version\":\"crdt format %u\",\"ops\":%zu,"
      "\"local_seconds\":%.6f,\"local_ship_seconds\":%.6f,\"local_ops_per_s\":%.1f,"
      "\"merge_ops\":%llu,"
      "\"merge_seconds\":%.6f,\"merge_ops_per_s\":%.1f,\"wire_bytes\":%llu,"
      "\"wire_bytes_per_op\":%.3f,\"state_bytes_per_cart\":%.3f,"
      "\"replicas_converged\":%s,\"carts\":%u,\"heap_reserved_mib\":%zu}\n",
      meridian::crdt::kFormatVersion, ops.size(), local_s,
      std::chrono::duration<double>(ship_time).count(), ops.size() / local_s,
      static_cast<unsigned long long>(merge_ops), merge_s, merge_ops / merge_s,
      static_cast<unsigned long long>(wire_bytes), static_cast<double>(wire_bytes) / ops.size(),
      static_cast<double>(state_bytes) / carts, converged ? "true" : "false", carts, heap_mib);
  out << buf;
  std::fprintf(stderr, "meridian: %s", buf);
  return converged ? 0 : 1;
}
