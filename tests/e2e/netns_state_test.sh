#!/usr/bin/env bash
# deploy/netem/netns.sh's reading of its state folder (state.env and links), which runs as root
# on every command after `up`: the commands that only read it (addr, ns, status) take a state
# written as `up` writes it, and refuse a damaged or planted one with the file, the line and the
# way out, running nothing from it. No namespace is made, so no root is needed; the prefix is one
# no `up` here uses. Usage: netns_state_test.sh (from anywhere).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
N=$ROOT/deploy/netem/netns.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failures=0
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
P=nstest$$
P=${P:0:10}
S=$WORK/state

# A state as save_state writes it: three regions, one line per pair in region order.
good_state() {
  mkdir -p "$S"
  printf '%s\n' 'STATE_REGIONS="us-east eu-west ap-south"' STATE_SUBNET=10.91.3 STATE_HOOK=ingress \
    STATE_SEED=42 'STATE_NFQ="/usr/local/bin/meridian-netem-nfq"' STATE_FWD_RULE=0 >"$S/state.env"
  printf '%s\n' 'eu-west/ap-south 60 0' 'us-east/ap-south 100 0.5' 'us-east/eu-west 38 0' >"$S/links"
}

# expect CODE PATTERN -- ARGS...: runs netns.sh ARGS --prefix P --state S (unless ARGS name a
# --state), wants exit CODE and PATTERN in its output.
expect() {
  local code=$1 pattern=$2
  shift 3
  local out rc state=(--state "$S")
  [[ " $* " == *" --state "* ]] && state=()
  out=$(bash "$N" "$@" --prefix "$P" "${state[@]}" 2>&1)
  rc=$?
  [[ $rc -eq $code ]] || fail "netns.sh $*: exit $rc, wanted $code ($out)"
  [[ -z "$pattern" || "$out" == *"$pattern"* ]] || fail "netns.sh $*: '$out' lacks '$pattern'"
}

# damaged FILE N LINE PATTERN: FILE (state.env or links) with LINE put in place of its line N is
# refused by addr, ns and status alike, naming the file; the state is left as it was.
damaged() {
  local file=$1 n=$2 line=$3 pattern=$4 before cmd
  good_state
  awk -v n="$n" -v l="$line" 'NR == n { print l; next } { print }' "$S/$file" >"$WORK/x" &&
    mv "$WORK/x" "$S/$file"
  before=$(cat "$S/state.env" "$S/links")
  for cmd in "addr us-east" "ns eu-west" status; do
    # shellcheck disable=SC2086  # the command and its argument
    expect 1 "$pattern" -- $cmd
  done
  [[ "$(cat "$S/state.env" "$S/links")" == "$before" ]] || fail "a read of damaged $file changed it"
  [[ "$(ls -A "$S")" == $'links\nstate.env' ]] || fail "a read of damaged $file wrote: $(ls -A "$S")"
}

# The good state reads: addresses by region order, the links as written.
good_state
expect 0 "10.91.3.2" -- addr eu-west
expect 0 "$P-ap-south" -- ns ap-south
expect 0 "link us-east/ap-south: one-way delay 100 ms, loss 0.5 %" -- status
expect 1 "no region 'sa-east'" -- addr sa-east
expect 1 "nothing is up under prefix '$P'" -- addr us-east --state "$WORK/none"
expect 2 "--state given twice ('$WORK/none' and '$S')" -- addr us-east --state "$WORK/none" --state "$S"
expect 2 "--prefix given twice" -- status --prefix a --state "$S"

# state.env: each way a line can be wrong names the file, the line and why.
damaged state.env 2 'STATE_SUBNET=10.300.3' "state.env, line 2, is damaged: 'STATE_SUBNET=10.300.3' (must be 10.A.B"
damaged state.env 2 'STATE_HOOK=sideways' "line 2, is damaged: 'STATE_HOOK=sideways' (must be egress or ingress"
damaged state.env 1 'STATE_REGIONS="us-east us-east"' "(a name is given twice)"
damaged state.env 2 'STATE_SEED=12x' "(must be a number"
damaged state.env 2 'STATE_NFQ="nfq"' "(not an absolute path)"
damaged state.env 2 'STATE_FWD_RULE=2' "(must be 0 or 1)"
damaged state.env 2 'PATH=/tmp' "'PATH=/tmp' (not a key netns.sh writes)"
damaged state.env 2 'STATE_SEED=42' "(STATE_SEED is given twice)"
damaged state.env 2 'just words' "(not a KEY=VALUE line)"
damaged state.env 2 '' "it has no STATE_SUBNET line"
# Planted commands never run: the file is read, never sourced.
damaged state.env 2 "STATE_SUBNET=\$(touch $WORK/ran)" "line 2, is damaged"
damaged state.env 2 "touch $WORK/ran" "(not a KEY=VALUE line)"
[[ ! -e "$WORK/ran" ]] || fail "a command planted in state.env ran"
# Every refusal says how to get out of it.
expect 1 "remove $S/state.env and clean up with: netns.sh down --prefix $P --state $S" -- status

# links: each way a line can be wrong.
damaged links 2 'us-east/ap-south 100' "links, line 2, is damaged: 'us-east/ap-south 100' (not 'A/B DELAY_MS LOSS_PCT')"
damaged links 2 'ap-south/us-east 100 0' "(not a pair A/B of the regions us-east eu-west ap-south, in their order)"
damaged links 2 'eu-west/ap-south 60 0' "(eu-west/ap-south is given twice)"
damaged links 2 'us-east/ap-south 60001 0' "(delay at most 60000 ms, loss at most 100 %)"
damaged links 2 'us-east/ap-south 100 100.5' "(delay at most 60000 ms, loss at most 100 %)"
damaged links 2 '' "it has no line for the pair us-east/ap-south"
good_state
rm "$S/links"
expect 1 "$S/links is missing (state.env is there)" -- status

if ((failures > 0)); then
  printf '%d case(s) failed\n' "$failures" >&2
  exit 1
fi
echo "netns_state_test: all cases passed"
