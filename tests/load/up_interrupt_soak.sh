#!/usr/bin/env bash
# Interrupts `deploy/meridian up` at random points, many times, and counts what each interrupt
# left behind (not a pass/fail test; ctest meridian_up_interrupted is the fixed-point one). Each
# round starts an `up` in a fresh folder, in a session of its own with SIGINT not ignored (as in a
# terminal), waits a random 2..(2+SPREAD-1) s, sends SIGTERM to the command or, with --ctrl-c,
# SIGINT to its process group, waits for it to end, and reports its exit status, how long it took
# to stop, the processes of the folder still running and the network namespaces left. A round
# that left something runs `deploy/meridian down` on its folder. Needs root; about 30 s a round
# for three regions.
#
# Usage: tests/load/up_interrupt_soak.sh [--rounds N] [--regions 1|2|3] [--spread S] [--ctrl-c]
#                                        [--out FILE]
# Prints one line per round and a summary; --out also writes the summary (JSON).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
M=$ROOT/deploy/meridian
ROUNDS=8 REGIONS=3 SPREAD=25 CTRL_C=0 OUT=
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
while (($#)); do
  case "$1" in
    --rounds) ROUNDS=${2:?}; shift 2 ;;
    --regions) REGIONS=${2:?}; shift 2 ;;
    --spread) SPREAD=${2:?}; shift 2 ;;
    --ctrl-c) CTRL_C=1; shift ;;
    --out) OUT=${2:?}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "up_interrupt_soak.sh: unknown flag $1" >&2; usage ;;
  esac
done
[[ "$ROUNDS" =~ ^[1-9][0-9]{0,3}$ ]] || { echo "--rounds takes 1..9999" >&2; exit 2; }
[[ "$REGIONS" =~ ^[123]$ ]] || { echo "--regions takes 1, 2 or 3" >&2; exit 2; }
[[ "$SPREAD" =~ ^[1-9][0-9]{0,2}$ ]] || { echo "--spread takes 1..999 (seconds)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "up_interrupt_soak.sh: needs root" >&2; exit 2; }

WORK=$(mktemp -d /tmp/meridian-up-soak.XXXXXX)
chmod a+x "$WORK"
clean=0 dirty=0
for i in $(seq 1 "$ROUNDS"); do
  d=$WORK/d$i
  setsid env --default-signal=INT "$M" up --regions "$REGIONS" --data "$d" >"$d.log" 2>&1 &
  pid=$!
  after=$((2 + RANDOM % SPREAD))
  sleep "$after"
  if ((CTRL_C)); then kill -INT -- "-$pid" 2>/dev/null || true; else kill -TERM "$pid" 2>/dev/null || true; fi
  from=$(date +%s)
  rc=0
  wait "$pid" || rc=$?
  sleep 1
  left=$( (pgrep -f -- "$d/" || true) | wc -l)
  ns=$(ip netns list 2>/dev/null | wc -l)
  finished=no
  grep -q "operator token in" "$d.log" && finished=yes
  echo "round $i: signal after ${after}s, exit $rc, stopped in $(($(date +%s) - from))s," \
    "processes left $left, namespaces left $ns, up had finished: $finished"
  if ((left > 0 || ns > 0)) || [[ -e "$d/.up-started" ]]; then
    if [[ $finished == no ]]; then dirty=$((dirty + 1)); else clean=$((clean + 1)); fi
    "$M" down --data "$d" >/dev/null 2>&1 || true
  else
    clean=$((clean + 1))
  fi
done
echo "rounds $ROUNDS: $clean left nothing (or had finished before the signal), $dirty left something"
if [[ -n "$OUT" ]]; then
  printf '{"bench":"up_interrupt_soak","rounds":%d,"regions":%d,"signal":"%s","left_nothing":%d,"left_something":%d}\n' \
    "$ROUNDS" "$REGIONS" "$( ((CTRL_C)) && echo SIGINT-group || echo SIGTERM)" "$clean" "$dirty" >"$OUT"
fi
rm -rf "$WORK"
