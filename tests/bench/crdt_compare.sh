#!/usr/bin/env bash
# Side-by-side CRDT benchmark (not a pass/fail test): the same cart workload — 3 replicas, 10,000
# carts, 200,000 random add / change-quantity / remove ops, deltas exchanged in random order — run
# through Meridian's crdt::Cart, Automerge (Counter values in a map) and Yjs (per-replica sub-keys),
# plus the Google Benchmark micro-benchmarks of crdt/. Prints the tables and writes
# results/crdt.json (both parts) and results/crdt_compare.json.
#
# Usage: tests/bench/crdt_compare.sh [--carts N] [--ops N] [--round N] [--seed N]
# Each runner starts with its heap reserved (Automerge: 512 MiB of wasm memory; Meridian: 64 MiB,
# `crdt_compare_meridian --heap-mib`), so that neither pays for growing it inside a timed op.
# Takes a few minutes; Automerge is by far the slowest part and prints its progress.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

CARTS=10000 OPS=200000 ROUND=1000 SEED=42
while [[ $# -gt 0 ]]; do
  case "$1" in
    --carts) CARTS=$2; shift 2 ;;
    --ops) OPS=$2; shift 2 ;;
    --round) ROUND=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    *) echo "crdt_compare.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done

BUILD=${BUILD:-build}
echo "== building Release into $BUILD"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target crdt_benchmark crdt_compare_meridian >/dev/null

echo "== installing the JavaScript side (npm ci)"
(cd tests/bench/crdt_compare && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

mkdir -p results
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
JS=tests/bench/crdt_compare

echo "== workload: 3 replicas, $CARTS carts, $OPS ops, rounds of $ROUND, seed $SEED"
node "$JS/gen_workload.mjs" --out "$work/workload.txt" --carts "$CARTS" --ops "$OPS" \
  --round "$ROUND" --seed "$SEED"

echo "== meridian"
"$BUILD/tests/bench/crdt_compare_meridian" --workload "$work/workload.txt" \
  --out "$work/meridian.json" --totals "$work/meridian.txt"
echo "== yjs"
node "$JS/run_yjs.mjs" --workload "$work/workload.txt" --out "$work/yjs.json" \
  --totals "$work/yjs.txt"
echo "== automerge"
node "$JS/run_automerge.mjs" --workload "$work/workload.txt" --out "$work/automerge.json" \
  --totals "$work/automerge.txt"

echo "== comparison"
node "$JS/report.mjs" --results "$work/meridian.json" "$work/yjs.json" "$work/automerge.json" \
  --totals "$work/meridian.txt" "$work/yjs.txt" "$work/automerge.txt" \
  --out results/crdt_compare.json

echo "== micro-benchmarks (Google Benchmark)"
"$BUILD/tests/bench/crdt_benchmark" --benchmark_min_time=0.2 \
  --benchmark_out="$work/micro.json" --benchmark_out_format=json

node -e '
const fs = require("fs");
const [compare, micro, out] = process.argv.slice(1);
const m = JSON.parse(fs.readFileSync(micro, "utf8"));
const doc = {
  generated: new Date().toISOString(),
  host: m.context,
  comparison: JSON.parse(fs.readFileSync(compare, "utf8")),
  micro: m.benchmarks.map((b) => ({
    name: b.name, ns_per_op: b.real_time, ops_per_s: b.items_per_second,
    delta_bytes: b.delta_bytes,
  })),
};
fs.writeFileSync(out, JSON.stringify(doc, null, 2) + "\n");
' results/crdt_compare.json "$work/micro.json" results/crdt.json
echo "== wrote results/crdt.json and results/crdt_compare.json"
