#!/usr/bin/env bash
# One region's figures (not a pass/fail test), all in one run on the same PostgreSQL:
#   1. the physical-limit anchor: pgbench running checkout_anchor.sql — the SQL of one checkout,
#      transaction for transaction — with CLIENTS connections;
#   2. Meridian's highest sustained checkout rate (checkout-only sessions, open loop, rising
#      rates; "sustained" = achieved >= 95% of target, p99 send lag < 50 ms, nothing dropped);
#   3. the highest sustained rate of the default customer mix, then a run at 70% of it for the
#      p99 latencies of checkout and cart add;
#   4. product reads (browse-only) at 15,000/s, served from the Redis cache.
# The region comes from deploy/meridian (PostgreSQL fsync=off, synchronous_commit=off,
# shared_buffers=128MB — a dev cluster) with the per-client rate limits raised so that the load
# generator's customers are not throttled. Writes results/region_bench.json (and the loadgen's
# JSON of each run beside it in results/region_bench/).
# Usage: tests/bench/region_bench.sh [--seconds N] [--clients N]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECS=15 CLIENTS=16
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECS=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    *) echo "region_bench.sh: unknown argument $1 (see the header)" >&2; exit 2 ;;
  esac
done
DATA=$(mktemp -d /tmp/meridian-bench.XXXXXX)
trap 'deploy/meridian down --data "$DATA" >/dev/null 2>&1 || true; rm -rf "$DATA"' EXIT
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target meridian-region meridian-loadgen >/dev/null
OUT=results/region_bench
mkdir -p "$OUT"

echo "== region (data in $DATA)"
deploy/meridian up --data "$DATA" >/dev/null
cat >> "$DATA/region.yaml" <<'YAML'
limits: {rate_limit_per_s: 1000000, rate_limit_burst: 1000000, http_threads: 32}
YAML
sed -i 's/pool_size: 16/pool_size: 32/' "$DATA/region.yaml"
deploy/meridian down --data "$DATA" >/dev/null
deploy/meridian up --data "$DATA" >/dev/null
source "$DATA/ports.env"
URL="http://127.0.0.1:$HTTP_PORT"
PSQL=(psql -q -h 127.0.0.1 -p "$PG_PORT_0" -U postgres -v ON_ERROR_STOP=1)

echo "== 1. anchor: pgbench, $CLIENTS clients, ${SECS} s, the SQL of one checkout"
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS anchor" -c "CREATE DATABASE anchor"
{
  echo "CREATE SCHEMA g; SET search_path = g;"
  build/region/meridian-region --print-schema global
  echo "CREATE SCHEMA s; SET search_path = s;"
  build/region/meridian-region --print-schema shard
  echo "INSERT INTO g.products (sku, name, price_cents, currency, hlc, origin)"
  echo "  SELECT 'sku-' || lpad(i::text, 4, '0'), 'p' || i, 1000, 'USD', 1, 1 FROM generate_series(1, 24) i;"
} | "${PSQL[@]}" -d anchor >/dev/null
pgbench -n -h 127.0.0.1 -p "$PG_PORT_0" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" \
  -f tests/bench/checkout_anchor.sql anchor | tee "$OUT/pgbench.txt" | grep -E "tps|latency"
ANCHOR_TPS=$(grep -oP 'tps = \K[0-9.]+' "$OUT/pgbench.txt" | head -1)

field() {  # field FILE EXPR  (EXPR over r = the loadgen's JSON)
  node -e 'const r=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")); const v=eval(process.argv[2]); console.log(v===undefined?"":v)' "$1" "$2"
}
run() {  # run NAME RATE MIX [LOADGEN FLAGS...] -> prints "achieved sustained"
  build/tests/load/meridian-loadgen --target "$URL" --operator-token-file "$DATA/operator_token" \
    --rate "$2" --duration-s "$SECS" --mix "$3" --connections 64 --out "$OUT/$1.json" "${@:4}" \
    >"$OUT/$1.txt" 2>&1 || true
  echo "$(field "$OUT/$1.json" 'r.achieved_rate_per_s') $(field "$OUT/$1.json" 'r.sustained?1:0')"
}

echo "== 2. checkout-only (all approved, like the anchor), rising rates"
BEST_CHECKOUT=0
for rate in 100 200 300 400 500 600 700 800 1000 1200; do
  read -r achieved sustained < <(run "checkout-$rate" "$rate" "checkout=1" --declined-fraction 0)
  echo "   $rate/s: achieved $achieved/s sustained=$sustained"
  [[ "$sustained" == 1 ]] || break
  BEST_CHECKOUT=$achieved
done

echo "== 3. default mix, rising rates"
BEST_MIX=0
for rate in 500 1000 1500 2000 2500 3000 3500; do
  read -r achieved sustained < <(run "mix-$rate" "$rate" "browse=40,search=10,cart_add=25,cart_remove=5,checkout=15,get_cart=5")
  echo "   $rate/s: achieved $achieved/s sustained=$sustained"
  [[ "$sustained" == 1 ]] || break
  BEST_MIX=$achieved
done
AT70=$(node -e "console.log(Math.round($BEST_MIX * 0.7))")
echo "   at 70% ($AT70/s):"
run "mix-70pct" "$AT70" "browse=40,search=10,cart_add=25,cart_remove=5,checkout=15,get_cart=5" >/dev/null
CHECKOUT_P99=$(field "$OUT/mix-70pct.json" 'r.operations.checkout.latency_ms.p99')
CART_ADD_P99=$(field "$OUT/mix-70pct.json" 'r.operations.cart_add.latency_ms.p99')
echo "   checkout p99 $CHECKOUT_P99 ms (target <= 50), cart add p99 $CART_ADD_P99 ms (target <= 10)"

echo "== 4. product reads from the cache at 15,000/s"
read -r BROWSE_RATE BROWSE_SUSTAINED < <(run "browse-15000" 15000 "browse=1")
HITS=$(curl -s "$URL/metrics" | grep -E '^meridian_catalog_cache_total\{result="hit"\}' | awk '{print $2}')
echo "   achieved $BROWSE_RATE/s sustained=$BROWSE_SUSTAINED (cache hits so far: $HITS)"

RATIO=$(node -e "console.log(($BEST_CHECKOUT / $ANCHOR_TPS).toFixed(3))")
echo "== result: checkout $BEST_CHECKOUT/s vs pgbench $ANCHOR_TPS TPS = ${RATIO}x (target >= 0.6)"
node -e '
const fs = require("fs");
const [a, c, r, mix, at70, cp99, ap99, br, bs, clients, secs] = process.argv.slice(1);
fs.writeFileSync("results/region_bench.json", JSON.stringify({
  generated: new Date().toISOString(),
  postgres: "deploy/meridian: fsync=off synchronous_commit=off shared_buffers=128MB, 2 shards",
  pgbench_anchor_tps: +a, pgbench_clients: +clients, seconds_per_run: +secs,
  meridian_sustained_checkouts_per_s: +c, checkout_vs_anchor: +r,
  mix_max_sustained_per_s: +mix, mix_70pct_rate_per_s: +at70,
  checkout_p99_ms_at_70pct: +cp99, cart_add_p99_ms_at_70pct: +ap99,
  product_reads_per_s_at_15000_target: +br, product_reads_sustained: bs === "1"}, null, 2) + "\n");
' "$ANCHOR_TPS" "$BEST_CHECKOUT" "$RATIO" "$BEST_MIX" "$AT70" "$CHECKOUT_P99" "$CART_ADD_P99" "$BROWSE_RATE" "$BROWSE_SUSTAINED" "$CLIENTS" "$SECS"
echo "== wrote results/region_bench.json"
