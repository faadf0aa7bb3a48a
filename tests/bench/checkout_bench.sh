#!/usr/bin/env bash
# Checkout throughput against its physical-limit anchor (not a pass/fail test).
#
# Brings up a fresh region with deploy/meridian (PostgreSQL fsync=off, synchronous_commit=off,
# shared_buffers=128MB; the same cluster for both runs), then in the same run:
#   1. pgbench with checkout_anchor.sql — the SQL of one checkout, transaction for transaction —
#      against a database on the region's own PostgreSQL (schemas g and s made from the region's
#      migrations), with CLIENTS connections for SECONDS: the anchor TPS;
#   2. meridian-loadgen, checkout-only sessions, open-loop at rising rates: the highest rate the
#      region sustains (achieved within 5% of target, no schedule lag), and its latencies.
# Prints both and their ratio, writes results/checkout.json (and results/load.json from the
# loadgen's last sustained run). Usage: tests/bench/checkout_bench.sh [--seconds N] [--clients N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECONDS_PER_RUN=15 CLIENTS=16
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    *) echo "checkout_bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
DATA=$(mktemp -d /tmp/meridian-bench.XXXXXX)
trap 'deploy/meridian down --data "$DATA" >/dev/null 2>&1 || true; rm -rf "$DATA"' EXIT
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target meridian-region meridian-loadgen >/dev/null

echo "== region"
deploy/meridian up --data "$DATA"
# The benchmark's customers must not be throttled: raise the per-client limits, restart.
cat >> "$DATA/region.yaml" <<'YAML'
limits: {rate_limit_per_s: 1000000, rate_limit_burst: 1000000, http_threads: 32}
YAML
sed -i 's/pool_size: 16/pool_size: 32/' "$DATA/region.yaml"
deploy/meridian down --data "$DATA" >/dev/null
deploy/meridian up --data "$DATA" >/dev/null
source "$DATA/ports.env"
URL="http://127.0.0.1:$HTTP_PORT"
PSQL=(psql -q -h 127.0.0.1 -p "$PG_PORT_0" -U postgres -v ON_ERROR_STOP=1)

echo "== anchor database (schemas g and s from the region's migrations)"
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS anchor" -c "CREATE DATABASE anchor"
{
  echo "CREATE SCHEMA g; SET search_path = g;"
  build/region/meridian-region --print-schema global
  echo "CREATE SCHEMA s; SET search_path = s;"
  build/region/meridian-region --print-schema shard
  echo "SET search_path = g;"
  echo "INSERT INTO g.products (sku, name, price_cents, currency, hlc, origin)"
  echo "  SELECT 'sku-' || lpad(i::text, 4, '0'), 'p' || i, 1000, 'USD', 1, 1 FROM generate_series(1, 24) i;"
} | "${PSQL[@]}" -d anchor >/dev/null

echo "== pgbench: $CLIENTS clients, ${SECONDS_PER_RUN} s"
pgbench -n -h 127.0.0.1 -p "$PG_PORT_0" -U postgres -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" \
  -f tests/bench/checkout_anchor.sql anchor | tee "$DATA/pgbench.txt"
ANCHOR_TPS=$(grep -oP 'tps = \K[0-9.]+' "$DATA/pgbench.txt" | head -1)

echo "== meridian: checkout-only sessions, open loop, rising rates"
OP=$(cat "$DATA/operator_token")
best=0
mkdir -p results
for rate in 100 200 300 400 500 600 800 1000 1300 1600; do
  build/tests/load/meridian-loadgen --target "$URL" --operator-token "$OP" --rate "$rate" \
    --duration-s "$SECONDS_PER_RUN" --mix checkout=1 --declined-fraction 0 \
    --connections "$CLIENTS" --out "$DATA/load-$rate.json" >"$DATA/load-$rate.txt" 2>&1 || true
  sustained=$(node -e 'const r=require(process.argv[1]);console.log(r.sustained?1:0)' "$DATA/load-$rate.json" 2>/dev/null || echo 0)
  achieved=$(node -e 'const r=require(process.argv[1]);const o=r.operations.checkout;console.log(o?o.achieved_per_s:0)' "$DATA/load-$rate.json" 2>/dev/null || echo 0)
  echo "rate $rate/s: achieved $achieved checkouts/s, sustained=$sustained"
  [[ "$sustained" == 1 ]] || break
  best=$achieved
  cp "$DATA/load-$rate.json" results/load.json
done
ratio=$(node -e "console.log(($best / $ANCHOR_TPS).toFixed(3))")
echo "== result: Meridian sustained $best checkouts/s; pgbench anchor $ANCHOR_TPS TPS; ratio $ratio (target >= 0.6)"
node -e '
const fs = require("fs");
const [best, tps, ratio, clients, secs] = process.argv.slice(1);
fs.writeFileSync("results/checkout.json", JSON.stringify({
  generated: new Date().toISOString(), meridian_sustained_checkouts_per_s: +best,
  pgbench_anchor_tps: +tps, ratio: +ratio, clients: +clients, seconds_per_run: +secs,
  postgres_settings: "fsync=off synchronous_commit=off shared_buffers=128MB (deploy/meridian)"}, null, 2) + "\n");
' "$best" "$ANCHOR_TPS" "$ratio" "$CLIENTS" "$SECONDS_PER_RUN"
