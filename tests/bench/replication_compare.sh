#!/usr/bin/env bash
# Side by side, one run (not a pass/fail test): the same concurrent cart workload on two regions
# through PostgreSQL logical replication (pglogical, both directions, last_update_wins) and
# through Meridian (two regions, replicators over the same kind of 38 ms link). Both take RATE
# single-change commits per second per node on the same 2,000 hot cart lines (200 customers x 10
# SKUs) for SECONDS; lost updates are units committed somewhere but missing from the agreed
# carts. Writes results/replication_compare.json (and the two runs' own JSON beside it).
#   tests/bench/replication_compare.sh [--seconds 20] [--rate 300]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECS=20 RATE=300
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    *) echo "replication_compare.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
done
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target replication_bench pglogical_bench >/dev/null
mkdir -p results
echo "== pglogical (last_update_wins), 2 nodes"
build/tests/bench/pglogical_bench --seconds "$SECS" --rate "$RATE" --lines 2000 --delay-ms 38 \
  --out results/replication_compare_pglogical.json | tail -6
echo "== Meridian, 2 regions"
build/tests/bench/replication_bench --regions 2 --seconds "$SECS" --rate "$RATE" --users 200 \
  --skus 10 --changes-per-tx 1 --out results/replication_compare_meridian.json | tail -8
node -e '
const fs = require("fs");
const p = JSON.parse(fs.readFileSync("results/replication_compare_pglogical.json"));
const m = JSON.parse(fs.readFileSync("results/replication_compare_meridian.json"));
const ml = m.pairs.map(x => x.p50_ms), mh = m.pairs.map(x => x.p99_ms);
const out = {
  one_way_ms: 38, rate_per_node: p.offered_per_node_per_s, seconds: p.seconds,
  pglogical: {committed: p.committed, lost_units: p.lost_units, lost_percent: p.lost_percent,
              lag_p50_ms: p.lag_p50_ms, lag_p99_ms: p.lag_p99_ms, agreed: p.agreed},
  meridian: {committed: m.committed, lost_units: m.lost_units,
             lag_p50_ms: Math.max(...ml), lag_p99_ms: Math.max(...mh),
             agreed: m.converged_after_s >= 0},
};
fs.writeFileSync("results/replication_compare.json", JSON.stringify(out, null, 2) + "\n");
console.log("\n| system | committed | lost units | lag p50 ms | lag p99 ms |");
console.log("|---|---|---|---|---|");
for (const [k, v] of [["pglogical (LWW)", out.pglogical], ["Meridian", out.meridian]])
  console.log(`| ${k} | ${v.committed} | ${v.lost_units} | ${v.lag_p50_ms.toFixed(1)} | ${v.lag_p99_ms.toFixed(1)} |`);
console.log("wrote results/replication_compare.json");
'
