#!/usr/bin/env bash
# deploy/meridian up ended part-way: what it had started is stopped again and the folder is free.
# Three one-region ups, each in a fresh folder, each ended once its first PostgreSQL runs:
#   1. SIGTERM to the command (an operator's kill): exit 143;
#   2. SIGINT to its process group (Ctrl-C in a terminal): exit 130;
#   3. SIGKILL to the up run under the folder's lock, so that no trap of the run can run (what
#      bash 5.2 does to a trap when the signal lands while it expands a $(...): it fails to parse
#      the trap, or ignores the signal and goes on): exit 137.
# After each: no process of the folder left, no DATA/.up-started, and the folder's lock free (a
# second up of the folder starts, for the first). Before the run's supervisor, case 3 left every
# process it had started running. About a minute; needs root (PostgreSQL runs as the postgres
# user).
# Usage: meridian_up_interrupt_test.sh BUILD_DIR
set -euo pipefail

BUILD=$(cd "${1:?usage: meridian_up_interrupt_test.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export MERIDIAN_BUILD=$BUILD
M=$ROOT/deploy/meridian
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "meridian_up_interrupt_test.sh: needs root (skipped)"; exit 77; }

WORK=$(mktemp -d /tmp/meridian-up-int.XXXXXX)
chmod a+x "$WORK"
cleanup() {
  local rc=$? d
  for d in "$WORK"/d*; do [[ -d "$d" ]] && "$M" down --data "$d" >/dev/null 2>&1; done
  pkill -KILL -f "$WORK/" 2>/dev/null || true
  if ((rc == 0)); then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
}
trap cleanup EXIT

# up_until_postgres DATA: starts a one-region up of DATA in a session of its own (SIGINT not
# ignored, as in a terminal) and returns once its first PostgreSQL runs and the second's initdb
# has begun; UP is its pid.
up_until_postgres() {
  setsid env --default-signal=INT "$M" up --regions 1 --data "$1" >"$1.log" 2>&1 &
  UP=$!
  local _
  for _ in $(seq 1 600); do
    grep -q "initdb shard 1" "$1.log" 2>/dev/null && return 0
    kill -0 "$UP" 2>/dev/null || fail "up of $1 ended before its first PostgreSQL ran: $(tail -3 "$1.log")"
    sleep 0.1
  done
  fail "up of $1 started no PostgreSQL in 60 s"
}

# ended DATA WANT: waits for the up (UP) to end with status WANT, then checks that nothing of DATA
# runs and that it left no list of what it started.
ended() {
  local rc=0 _ left
  for _ in $(seq 1 600); do kill -0 "$UP" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$UP" 2>/dev/null && fail "up of $1 still runs 60 s after the signal: $(tail -3 "$1.log")"
  wait "$UP" || rc=$?
  ((rc == $2)) || fail "up of $1 exited $rc, expected $2: $(tail -5 "$1.log")"
  grep -q "operator token in" "$1.log" && fail "up of $1 finished before the signal; the test needs a slower start"
  sleep 1  # a process that outlived the run would have started by now
  left=$(pgrep -af -- "$1/" || true)
  [[ -z "$left" ]] || fail "after the interrupted up of $1, still running:
$left"
  [[ ! -e "$1/.up-started" ]] || fail "$1/.up-started left behind"
  echo "ok: up of $1 ended with $rc, nothing left running"
}

# 1. SIGTERM to the command.
up_until_postgres "$WORK/d1"
kill -TERM "$UP"
ended "$WORK/d1" 143

# 2. Ctrl-C: SIGINT to the whole process group.
up_until_postgres "$WORK/d2"
kill -INT -- "-$UP"
ended "$WORK/d2" 130

# 3. SIGKILL to the up run itself: the newest process of the folder's command that is a bash
# running deploy/meridian and whose parent is one too (the run's supervisor), not a subshell of it.
up_until_postgres "$WORK/d3"
run=
for pid in $(pgrep -f -- "deploy/meridian up --regions 1 --data $WORK/d3\$" | sort -n); do
  parent=$(ps -o ppid= -p "$pid" | tr -d ' ') || continue
  [[ "$(ps -o args= -p "$parent" 2>/dev/null)" == *"deploy/meridian up --regions 1 --data $WORK/d3" ]] || continue
  [[ "$(ps -o args= -p "$pid" 2>/dev/null)" == bash* ]] || continue
  grep -qz '^MERIDIAN_UP_RUN=1$' "/proc/$pid/environ" 2>/dev/null && run=$pid
done
[[ -n "$run" ]] || fail "no up run found under the lock of $WORK/d3"
grep -qz '^MERIDIAN_UP_RUN=1$' "/proc/$(ps -o ppid= -p "$run" | tr -d ' ')/environ" &&
  fail "picked a subshell of the run (pid $run)"
kill -KILL "$run"
ended "$WORK/d3" 137

# The first folder, interrupted, starts again: its lock is free and its files are sound.
"$M" up --data "$WORK/d1" >"$WORK/d1-again.log" 2>&1 || fail "a second up of $WORK/d1 failed: $(tail -5 "$WORK/d1-again.log")"
"$M" status --data "$WORK/d1" >/dev/null || fail "status after the second up of $WORK/d1"
echo "ok: a second up of $WORK/d1 started"
echo "PASS"
