#!/usr/bin/env bash
# meridian demo — the whole system on this machine, in one command:
#
#   deploy/meridian demo [--data DIR] [--region R] [--mode kill|partition] [--duration S] [--down]
#
# 1. builds what it needs (Release, into $MERIDIAN_BUILD, default build/);
# 2. brings up three regions (us-east, eu-west, ap-south) with emulated latency between them
#    (network namespaces and NFQUEUE delays as root, else loopback delay proxies), sync-peer
#    durability, GeoDNS (pdns_server + meridian-geo) and a failover controller per region
#    (deploy/meridian up --regions 3 --durability sync-peer), and loads the demo catalog;
# 3. shows the cluster (meridianctl status);
# 4. runs customer load (meridian-loadgen, routed by GeoDNS) and a region-loss drill on it
#    (meridianctl drill region-loss: kill -9 of eu-west by default, 30 s away, then back);
# 5. prints the drill's targets (PASS/FAIL) and where its report is (drills/<time>-<region>-<mode>/
#    report.md, report.json, timeline.svg) — only a report this run's drill wrote, never an older one.
#
# --data (and a kept folder's shape) is checked before step 1, as `deploy/meridian up` checks it.
# The cluster keeps running afterwards (DIR defaults to .meridian/demo) unless --down is given:
# explore it with `meridianctl --data DIR status`, stop it with `deploy/meridian down --data DIR`.
# Needs the packages of deploy/install-deps.sh. About 70 s on 2 cores once built and the cluster
# exists (the drill takes about --duration + 30 s, by its reports' timestamps); the first build and
# a fresh cluster's first up add theirs. Exit status: the drill's (0 every target met, 1 a target
# missed, 2 it could not run — also when the build or `deploy/meridian up` fails).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=.meridian/demo
REGION=eu-west
MODE="kill"
DURATION=30
DOWN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data | --region | --mode | --duration)
      [[ $# -ge 2 && -n "$2" && "$2" != -* ]] || { echo "meridian demo: $1 needs a value (see --help)" >&2; exit 2; }
      ;;&
    --data) DATA=$2; shift 2 ;;
    --region) REGION=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --down) DOWN=1; shift ;;
    -h|--help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "meridian demo: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$REGION" =~ ^(us-east|eu-west|ap-south)$ ]] ||
  { echo "meridian demo: --region must be us-east, eu-west or ap-south" >&2; exit 2; }
[[ "$MODE" =~ ^(kill|partition)$ ]] || { echo "meridian demo: --mode must be kill or partition" >&2; exit 2; }
# Base 10 (bash reads 08 as bad octal and 010 as 8) and at most 3 digits (a long number wraps).
[[ "$DURATION" =~ ^[0-9]{1,3}$ ]] && (( 10#$DURATION >= 5 && 10#$DURATION <= 600 )) ||
  { echo "meridian demo: --duration must be 5..600 seconds" >&2; exit 2; }
DURATION=$((10#$DURATION))

BUILD=${MERIDIAN_BUILD:-$ROOT/build}
export MERIDIAN_BUILD=$BUILD
STARTED=$(date +%s)
step() { printf '\n\033[1m== [%s, +%ss] %s\033[0m\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - STARTED ))" "$*"; }
die() { printf 'meridian demo: %s\n' "$*" >&2; exit 2; }

# --data as deploy/meridian up will take it (characters, length, a folder, postgres can reach it,
# the cluster's shape), before the build: a typo must not cost a build first.
if [[ -f "$DATA/cluster.env" ]]; then
  # A folder's shape is fixed by its first up: one of fewer regions would be started and then
  # found to have no GeoDNS, so say so before anything starts.
  had=$(sed -n 's/^CLUSTER_REGIONS=//p' "$DATA/cluster.env" | head -1)
  [[ "$had" == 3 ]] || {
    echo "meridian demo: $DATA holds a ${had:-?}-region cluster (chosen on its first up); the demo needs three: give another --data, or 'deploy/meridian down --data $DATA' and remove it" >&2
    exit 2
  }
  bash "$ROOT/deploy/meridian" check-args up --data "$DATA" || exit 2
else
  bash "$ROOT/deploy/meridian" check-args up --data "$DATA" --regions 3 --durability sync-peer || exit 2
fi

for tool in cmake ninja pdns_server dig redis-server; do
  command -v "$tool" >/dev/null || die "$tool not found: run deploy/install-deps.sh first"
done
ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || die "PostgreSQL not found: run deploy/install-deps.sh first"

step "1/5 building (Release) into $BUILD"
[[ -n "${CCACHE_DIR:-}" ]] || export CCACHE_DIR=$HOME/.cache/meridian-ccache
if [[ ! -f "$BUILD/build.ninja" ]]; then
  cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake (configure) failed"
fi
cmake --build "$BUILD" --target meridian-region meridian-replicator meridian-netem-proxy \
  meridian-netem-nfq meridian-geo meridian-failover meridianctl meridian-loadgen || die "the build failed"
CTL=$BUILD/failover/meridianctl

step "2/5 three regions with emulated latency, GeoDNS and failover controllers ($DATA)"
if [[ -f "$DATA/cluster.env" ]]; then
  echo "reusing the cluster in $DATA (its shape and durability were fixed on its first up)"
  bash "$ROOT/deploy/meridian" up --data "$DATA" || die "deploy/meridian up failed (above)"
else
  bash "$ROOT/deploy/meridian" up --data "$DATA" --regions 3 --durability sync-peer ||
    die "deploy/meridian up failed (above)"
fi
[[ -f "$DATA/geo/ports.env" ]] ||
  die "$DATA has no GeoDNS (geo/ports.env): this deploy/meridian does not start geo and failover yet"

step "3/5 the cluster"
"$CTL" --data "$DATA" status || true

step "4/5 customer load and a region-loss drill: $MODE $REGION for $DURATION s"
echo "(the drill starts meridian-loadgen itself; customers reach regions through GeoDNS)"
rc=0
# Only a report folder made after this mark is this run's (drills/ also holds committed ones).
mkdir -p "$ROOT/drills"
MARK=$(mktemp "${TMPDIR:-/tmp}/meridian-demo.XXXXXX")
trap 'rm -f "$MARK"' EXIT
"$CTL" --data "$DATA" drill region-loss --region "$REGION" --mode "$MODE" --duration "$DURATION" \
  --output-dir "$ROOT/drills" || rc=$?
REPORT=$(find "$ROOT/drills" -mindepth 1 -maxdepth 1 -type d -name "*-$REGION-$MODE" -newer "$MARK" \
  -printf '%T@ %p/\n' | sort -n | tail -1 | cut -d' ' -f2-)

step "5/5 done (exit $rc)"
if [[ -n "$REPORT" && -f "$REPORT/report.md" ]]; then
  echo "report:   ${REPORT}report.md"
  echo "timeline: ${REPORT}timeline.svg"
  echo "data:     ${REPORT}report.json"
else
  echo "this run's drill wrote no report (see the messages above)"
  (( rc != 0 )) || rc=2
fi
if (( DOWN )); then
  bash "$ROOT/deploy/meridian" down --data "$DATA"
else
  echo
  echo "the cluster is still running:  $CTL --data $DATA status"
  echo "stop it:                       deploy/meridian down --data $DATA"
fi
exit "$rc"
