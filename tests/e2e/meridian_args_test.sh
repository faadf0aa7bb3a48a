#!/usr/bin/env bash
# deploy/meridian's input checks that need no server: a flag given twice, and a damaged
# DIR/cluster.env (a key set twice). Each case checks the exit code, the message, and that
# nothing was created or changed. Usage: meridian_args_test.sh (from anywhere; no root needed).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=$ROOT/deploy/meridian
WORK=$(mktemp -d)
chmod 755 "$WORK"  # as root, check-args wants the postgres user to reach --data
trap 'rm -rf "$WORK"' EXIT
failures=0
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

# expect CODE PATTERN -- ARGS...: runs deploy/meridian ARGS, wants exit CODE and PATTERN in stderr.
expect() {
  local code=$1 pattern=$2
  shift 3
  local err rc
  err=$(bash "$M" "$@" 2>&1 >/dev/null)
  rc=$?
  [[ $rc -eq $code ]] || fail "meridian $*: exit $rc, wanted $code ($err)"
  [[ -z "$pattern" || "$err" == *"$pattern"* ]] || fail "meridian $*: '$err' lacks '$pattern'"
}

# A value flag twice is refused before anything is made; --delay may repeat (once per link).
expect 2 "--regions given twice ('3' and '2')" -- check-args up --data "$WORK/a" --regions 3 --regions 2
expect 2 "--data given twice" -- check-args up --data "$WORK/a" --data "$WORK/b"
expect 2 "--shards given twice" -- check-args up --data "$WORK/a" --shards 2 --shards 2
[[ ! -e "$WORK/a" && ! -e "$WORK/b" ]] || fail "a refused check-args created a folder"
expect 0 "" -- check-args up --data "$WORK/a" --regions 3 --delay us-east/eu-west=5 \
  --delay eu-west/ap-south=6
[[ ! -e "$WORK/a" ]] || fail "check-args created its folder"
# ... but one link once: the second of two --delay for one link was taken silently before.
expect 2 "the link us-east/eu-west was given already (--delay eu-west/us-east=5)" -- check-args up \
  --data "$WORK/a" --regions 3 --delay eu-west/us-east=5 --delay us-east/eu-west=7
[[ ! -e "$WORK/a" ]] || fail "a refused check-args created its folder"

# cluster.env with a key set twice: which line is the record? Refused, naming both lines.
mkdir "$WORK/c"
printf 'CLUSTER_REGIONS=3\nCLUSTER_SHARDS=2\nCLUSTER_REGIONS=1\n' > "$WORK/c/cluster.env"
before=$(cat "$WORK/c/cluster.env")
expect 1 "line 3, is damaged: CLUSTER_REGIONS is already set on line 1" -- status --data "$WORK/c"
[[ "$(cat "$WORK/c/cluster.env")" == "$before" ]] || fail "status changed a damaged cluster.env"
[[ "$(ls -A "$WORK/c")" == cluster.env ]] || fail "status wrote into a damaged folder: $(ls -A "$WORK/c")"
# The same file with each key once reads (the check above is about the repeat, not the keys);
# status then says the region an `up` never got to is not made, and so not ready (exit 1).
printf 'CLUSTER_REGIONS=1\nCLUSTER_SHARDS=2\n' > "$WORK/c/cluster.env"
expect 1 "not ready: local" -- status --data "$WORK/c"
out=$(bash "$M" status --data "$WORK/c" 2>/dev/null)
[[ "$out" == *"not made yet (run: deploy/meridian up --data $WORK/c)"* ]] ||
  fail "status of a region never made: '$out'"
[[ "$(ls -A "$WORK/c")" == cluster.env ]] || fail "status wrote into the folder: $(ls -A "$WORK/c")"

if ((failures > 0)); then
  printf '%d case(s) failed\n' "$failures" >&2
  exit 1
fi
echo "meridian_args_test: all cases passed"
