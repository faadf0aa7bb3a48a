#!/usr/bin/env bash
# Quick failover timing on a running deploy/meridian cluster, without load (the region-loss drill,
# `meridianctl drill region-loss`, is the full measurement). kill -9 of REGION's meridian-region
# and meridian-replicator (--mode partition: `deploy/meridian partition REGION` instead), then,
# polled every 50 ms from the root namespace:
#   detection  every surviving controller's /v1/regions says REGION is lost
#   dns        dig with REGION's customers' subnet no longer answers REGION's address
#   takeover   a surviving replicator holds REGION's lease group, usable
# then `deploy/meridian up` restarts it (partition: `deploy/meridian heal REGION`) and:
#   recovered  every surviving controller says up again (after catch-up and hysteresis)
#   dns back   dig answers REGION's address again
#   lease home REGION's replicator holds its own group again
# Usage: failover/measure_kill.sh [--data DIR] [--region eu-west] [--mode kill|partition]
#        (needs root, curl, jq, dig)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=.meridian
REGION=eu-west
MODE=kill
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA=$2; shift 2 ;;
    --region) REGION=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    *) echo "measure_kill: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
DATA=$(cd "$DATA" && pwd)
TOKEN=$(cat "$DATA/operator_token")
source "$DATA/geo/ports.env"
NAMES=(us-east eu-west ap-south)
SUBNETS=(198.51.100.0/24 203.0.113.0/24 192.0.2.0/24)
idx=-1
for i in 0 1 2; do [[ "${NAMES[$i]}" == "$REGION" ]] && idx=$i; done
(( idx >= 0 )) || { echo "measure_kill: unknown region $REGION" >&2; exit 2; }
SUBNET=${SUBNETS[$idx]}
ADDR=$(dig @127.0.0.1 -p "$DNS_PORT" shop.example.test A +subnet="$SUBNET" +short | head -1)
survivors=()
for r in "${NAMES[@]}"; do [[ "$r" != "$REGION" ]] && survivors+=("$r"); done
port() { (source "$DATA/$1/ports.env"; echo "${!2}"); }
host() { sed -E 's#http://([^:]+):.*#\1#' "$DATA/$1/url"; }
now_ms() { date +%s%3N; }
state() { curl -sf "http://127.0.0.1:$(port "$1" FAILOVER_PORT)/v1/regions" |
            jq -r --arg r "$REGION" '.regions[] | select(.name == $r) | .state'; }
holds() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$(host "$1"):$(port "$1" ADMIN_PORT)/v1/status" |
            jq -e --arg g "$REGION" '.leases[] | select(.group_region == $g and .held_here and .usable)' >/dev/null; }
answer() { dig @127.0.0.1 -p "$DNS_PORT" shop.example.test A +subnet="$SUBNET" +short +time=1 +tries=1 | head -1; }

[[ "$MODE" == kill || "$MODE" == partition ]] || { echo "measure_kill: --mode kill|partition" >&2; exit 2; }
echo "measure_kill: $REGION answers $ADDR for $SUBNET; $MODE"
t0=$(now_ms)
if [[ "$MODE" == kill ]]; then
  kill -9 "$(cat "$DATA/$REGION/region.pid")" "$(cat "$DATA/$REGION/replicator.pid")"
else
  bash "$ROOT/deploy/meridian" partition "$REGION" --data "$DATA" >/dev/null
fi
detect= dns= takeover=
while [[ -z "$detect" || -z "$dns" || -z "$takeover" ]]; do
  t=$(now_ms)
  (( t - t0 > 60000 )) && { echo "measure_kill: timeout" >&2; exit 1; }
  if [[ -z "$detect" ]]; then
    all=1; for s in "${survivors[@]}"; do [[ "$(state "$s")" == lost ]] || all=0; done
    (( all )) && detect=$((t - t0))
  fi
  [[ -z "$dns" && "$(answer)" != "$ADDR" ]] && dns=$((t - t0))
  if [[ -z "$takeover" ]]; then for s in "${survivors[@]}"; do holds "$s" && takeover=$((t - t0)); done; fi
  sleep 0.05
done
echo "detection_ms=$detect dns_switch_ms=$dns takeover_ms=$takeover (after the $MODE)"
t1=$(now_ms)
if [[ "$MODE" == kill ]]; then
  bash "$ROOT/deploy/meridian" up --data "$DATA" >/dev/null
else
  bash "$ROOT/deploy/meridian" heal "$REGION" --data "$DATA" >/dev/null
fi
up=$(( $(now_ms) - t1 ))
rec= back= home=
while [[ -z "$rec" || -z "$back" || -z "$home" ]]; do
  t=$(now_ms)
  (( t - t1 > 120000 )) && { echo "measure_kill: recovery timeout" >&2; exit 1; }
  if [[ -z "$rec" ]]; then
    all=1; for s in "${survivors[@]}"; do [[ "$(state "$s")" == up ]] || all=0; done
    (( all )) && rec=$((t - t1))
  fi
  [[ -z "$back" && "$(answer)" == "$ADDR" ]] && back=$((t - t1))
  [[ -z "$home" ]] && holds "$REGION" && home=$((t - t1))
  sleep 0.05
done
echo "return ($MODE: up or heal) took ${up}ms; recovered_ms=$rec dns_back_ms=$back lease_home_ms=$home (after the return began)"
