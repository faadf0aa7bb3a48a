#pragma once

// Shared property-test harness for the CRDT types (used by the *_test.cc files only).
//
// A Model<T> says how to make a replica, apply one random operation (returning its delta) and
// merge. RunScenario drives 3..5 replicas through random operations interleaved with random
// deliveries of earlier deltas (reordered, duplicated, some lost and resent at the end), then
// delivers everything and returns the final replicas, which must all be equal.

#include <rapidcheck.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "crdt/causal_context.h"
#include "crdt/dot.h"

namespace meridian::crdt::testing {

struct Step {
  int kind = 0;  // 0: local operation, 1: deliver a random pending delta, 2: duplicate
  uint32_t replica = 0;
  uint32_t pick = 0;  // which pending delta / operation argument
  uint32_t arg = 0;
};

inline rc::Gen<std::vector<Step>> GenSteps() {
  return rc::gen::container<std::vector<Step>>(rc::gen::build<Step>(
      rc::gen::set(&Step::kind, rc::gen::weightedElement<int>({{5, 0}, {4, 1}, {1, 2}})),
      rc::gen::set(&Step::replica, rc::gen::inRange<uint32_t>(0, 64)),
      rc::gen::set(&Step::pick, rc::gen::arbitrary<uint32_t>()),
      rc::gen::set(&Step::arg, rc::gen::arbitrary<uint32_t>())));
}

// Model requirements:
//   T Make(ReplicaId id);
//   T Op(T& replica, ReplicaId id, uint32_t pick, uint32_t arg);  // applies, returns the delta
//   void Merge(T& into, const T& delta);
template <class T, class Model>
std::vector<T> RunScenario(Model& model, int replicas, const std::vector<Step>& steps,
                           std::vector<T>* deltas_out = nullptr) {
  std::vector<T> rs;
  for (int i = 0; i < replicas; ++i) rs.push_back(model.Make(static_cast<ReplicaId>(i + 1)));
  struct InFlight {
    int to;
    T delta;
  };
  std::vector<InFlight> pending;
  std::vector<InFlight> lost;
  for (const Step& s : steps) {
    int r = static_cast<int>(s.replica % replicas);
    if (s.kind == 0) {
      T d = model.Op(rs[r], static_cast<ReplicaId>(r + 1), s.pick, s.arg);
      if (deltas_out) deltas_out->push_back(d);
      for (int to = 0; to < replicas; ++to) {
        if (to == r) continue;
        // One in eight sends is lost and only resent at the end.
        if ((s.arg >> 29) == 0) {
          lost.push_back({to, d});
        } else {
          pending.push_back({to, d});
        }
      }
    } else if (!pending.empty()) {
      size_t i = s.pick % pending.size();
      model.Merge(rs[pending[i].to], pending[i].delta);
      if (s.kind == 1) {
        pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
      }  // kind 2 keeps it: the same delta will be delivered again (duplicate)
    }
  }
  // Heal: deliver the rest, in reverse order for good measure, then the lost ones.
  for (auto it = pending.rbegin(); it != pending.rend(); ++it) model.Merge(rs[it->to], it->delta);
  for (const auto& f : lost) model.Merge(rs[f.to], f.delta);
  return rs;
}

// Builds three states by running one random scenario with partial, one-way syncs: states made by
// the real mutators from one history (independent histories would reuse dots for different
// events, which no real system does).
template <class T, class Model>
std::vector<T> RandomStates(Model& model, const std::vector<Step>& steps) {
  std::vector<T> rs;
  for (int i = 0; i < 3; ++i) rs.push_back(model.Make(static_cast<ReplicaId>(i + 1)));
  for (const Step& s : steps) {
    int r = static_cast<int>(s.replica % 3);
    if (s.kind == 0) {
      T d = model.Op(rs[r], static_cast<ReplicaId>(r + 1), s.pick, s.arg);
      if (s.arg & 1) model.Merge(rs[(r + 1) % 3], d);
    } else if (s.kind == 1) {
      model.Merge(rs[r], rs[(r + 2) % 3]);
    }
  }
  return rs;
}

// The three semilattice laws plus "join of deltas equals the state", checked for model T.
template <class T, class Model>
void CheckJoinLaws(Model& model) {
  auto states = RandomStates<T>(model, *GenSteps());
  const T& a = states[0];
  const T& b = states[1];
  const T& c = states[2];
  T ab = a;
  model.Merge(ab, b);
  T ba = b;
  model.Merge(ba, a);
  RC_ASSERT(ab == ba);  // commutative
  T ab_c = ab;
  model.Merge(ab_c, c);
  T bc = b;
  model.Merge(bc, c);
  T a_bc = a;
  model.Merge(a_bc, bc);
  RC_ASSERT(ab_c == a_bc);  // associative
  T aa = a;
  model.Merge(aa, a);
  RC_ASSERT(aa == a);  // idempotent
}

// Every replica's state equals the join of all deltas from an empty replica, and replicas
// converge under reordering, duplication and loss-then-resend.
template <class T, class Model>
void CheckConvergence(Model& model) {
  int n = *rc::gen::inRange(3, 6);
  std::vector<T> deltas;
  auto rs = RunScenario<T>(model, n, *GenSteps(), &deltas);
  for (int i = 1; i < n; ++i) RC_ASSERT(rs[i] == rs[0]);
  T joined = model.Make(1);
  for (const T& d : deltas) model.Merge(joined, d);
  RC_ASSERT(joined == rs[0]);  // joining the deltas gives the same state
}

// The observed-remove oracle for causal counters in a map: a key's value is the sum of the changes
// (dot, amount) that no remove of that key had in its context; the key exists iff there is one.
using ChangeLog = std::map<std::string, std::vector<std::pair<Dot, int64_t>>>;
using RemoveLog = std::map<std::string, std::vector<CausalContext>>;

inline std::optional<int64_t> ExpectedCounter(const ChangeLog& changes, const RemoveLog& removes,
                                              const std::string& key) {
  auto c = changes.find(key);
  if (c == changes.end()) return std::nullopt;
  auto r = removes.find(key);
  std::optional<int64_t> sum;
  for (const auto& [dot, amount] : c->second) {
    bool seen = false;
    if (r != removes.end())
      for (const auto& ctx : r->second) seen = seen || ctx.Contains(dot);
    if (!seen) sum = sum.value_or(0) + amount;
  }
  return sum;
}

}  // namespace meridian::crdt::testing
