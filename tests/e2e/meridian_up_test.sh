#!/usr/bin/env bash
# deploy/meridian up on a kept one-region folder whose port another process took while the
# cluster was down: refused (exit 1, naming the port), with nothing of ours left running. Before,
# Redis failed to bind, its readiness check took the stranger's PONG for its own, and up reported
# success. About 20 s; needs root (PostgreSQL runs as the postgres user).
# Usage: meridian_up_test.sh BUILD_DIR
set -euo pipefail

BUILD=$(cd "${1:?usage: meridian_up_test.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export MERIDIAN_BUILD=$BUILD
M=$ROOT/deploy/meridian
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "meridian_up_test.sh: needs root (skipped)"; exit 77; }

DATA=$(mktemp -d /tmp/meridian-up-test.XXXXXX)
chmod a+x "$DATA"
STRANGER=
cleanup() {
  local rc=$?
  [[ -z "$STRANGER" ]] || kill "$STRANGER" 2>/dev/null || true
  bash "$M" down --data "$DATA" >/dev/null 2>&1 || true
  if (( rc != 0 )); then
    echo "--- data kept in $DATA" >&2
  else
    rm -rf "$DATA"
  fi
}
trap cleanup EXIT
# The cluster's processes still running (PostgreSQL and our binaries name the folder in their
# command lines; the scripts and flock that run up are not counted).
ours() {
  ps -eo pid=,args= | grep -F "$DATA" |
    grep -v -E '^ *[0-9]+ ((/usr/bin/)?(bash|flock|env|setsid|grep|ps|sleep)( |$))' || true
}

echo "== up, then down: the folder keeps its ports"
bash "$M" up --data "$DATA" --regions 1 >"$DATA.first.log" 2>&1 ||
  { cat "$DATA.first.log"; fail "first up"; }
rm -f "$DATA.first.log"
bash "$M" down --data "$DATA" >/dev/null
[[ -z "$(ours)" ]] || fail "down left: $(ours)"
REDIS_PORT=$(sed -n 's/^REDIS_PORT=//p' "$DATA/ports.env")
[[ "$REDIS_PORT" =~ ^[0-9]+$ ]] || fail "no REDIS_PORT in $DATA/ports.env"

echo "== another process takes the kept Redis port: up is refused, nothing of ours runs"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir /tmp >/dev/null 2>&1 &
STRANGER=$!
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
rc=0
err=$(bash "$M" up --data "$DATA" --regions 1 2>&1 >/dev/null) || rc=$?
[[ $rc -eq 1 ]] || fail "up on a held port: exit $rc, wanted 1 ($err)"
[[ "$err" == *"port $REDIS_PORT"*"is held by another process"* ]] || fail "message: $err"
[[ -z "$(ours)" ]] || fail "a refused up left: $(ours)"
kill "$STRANGER"
wait "$STRANGER" 2>/dev/null || true
STRANGER=

echo "meridian_up_test: all cases passed"
