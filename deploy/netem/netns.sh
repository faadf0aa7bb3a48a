#!/usr/bin/env bash
# netns.sh — regions as network namespaces on one machine, with one-way delay and loss per pair of
# regions (meridian-netem-nfq on iptables NFQUEUE; this kernel has no netem) and partitions on
# demand (iptables DROP). Needs root. See deploy/netem/README.md.
#
#   netns.sh up        [--prefix P] [--subnet 10.A.B] [--regions r1,r2,...] [--delay A/B=MS]...
#                      [--loss A/B=PCT]... [--hook egress|ingress] [--seed N] [--nfq BIN] [--state DIR]
#   netns.sh down      [--prefix P] [--state DIR]           everything up made, gone (idempotent)
#   netns.sh partition REGION|A/B [--prefix P]              cut REGION from every other (or one pair)
#   netns.sh heal      REGION|A/B [--prefix P]              restore what partition cut
#   netns.sh set-delay A/B=MS [--prefix P]                  change a pair's one-way delay, live
#   netns.sh set-loss  A/B=PCT [--prefix P]                 change a pair's loss (each direction), live
#   netns.sh expose REGION --ports P1,P2,... [--prefix P]   other regions may open TCP connections
#                      to REGION on these ports only (1..15 ports, or 'none'); the region itself
#                      and the root namespace (operators, customers) still reach every port
#   netns.sh status    [--prefix P]                         namespaces, links, partitions, counters
#   netns.sh addr REGION [--prefix P]                       the region's address (10.A.B.i)
#   netns.sh ns   REGION [--prefix P]                       the region's namespace name (P-REGION)
#   netns.sh check     [--nfq BIN]                          can namespaces and NFQUEUE be used here?
#
# Names: namespace P-REGION, bridge P-br (root namespace, address 10.A.B.254), host-side veth P-vI
# (the namespace side is eth0, address 10.A.B.(I+1)), iptables chains MERIDIAN-PART,
# MERIDIAN-DELAY and (once exposed) MERIDIAN-GUARD inside each namespace. P is 1..10 of [a-z0-9]
# starting with a letter (default mer); use a unique P per concurrent user. Defaults: subnet
# 10.77.0, regions us-east,eu-west,ap-south, delays us-east/eu-west 38, us-east/ap-south 100,
# eu-west/ap-south 60 ms (other pairs 0), loss 0, delay applied on ingress (by source; --hook
# egress: by destination). State (rules, pids, counters, logs) in --state DIR, default
# /run/meridian-netem/P.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

PREFIX=mer
STATE=
SUBNET=
REGIONS_CSV=
HOOK=
SEED=
NFQ=${MERIDIAN_NETEM_NFQ:-}
DELAY_ARGS=()
LOSS_ARGS=()
TARGET=
PORTS=

log() { printf 'netns: %s\n' "$*"; }
die() { printf 'netns: error: %s\n' "$*" >&2; exit 1; }
# Bad usage exits 2, as deploy/meridian's does; 1 is a command that ran and failed.
bad() { printf 'netns: %s\n' "$*" >&2; exit 2; }
usage() { sed -n '2,28p' "$0"; }

CMD=${1:-}
[[ $# -gt 0 ]] && shift
case "$CMD" in
  partition | heal | set-delay | set-loss | addr | ns | expose)
    TARGET=${1:-}
    [[ -n "$TARGET" && "$TARGET" != -* ]] || bad "$CMD needs an argument (see --help)"
    shift
    ;;
  -h | --help | help) usage; exit 0 ;;
  "") usage >&2; bad "no command given" ;;
esac
# Each flag but --delay and --loss (one per pair) is given once: of two, which did the operator
# mean? (The last one silently won, and a command ran on another state folder than the one named.)
declare -A GIVEN=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --prefix | --state | --subnet | --regions | --delay | --loss | --hook | --seed | --nfq | --ports)
      [[ $# -ge 2 ]] || bad "$1 needs a value" ;;
    *) bad "unknown argument '$1' (see --help)" ;;
  esac
  case "$1" in
    --delay | --loss) ;;
    *)
      [[ -z "${GIVEN[$1]+set}" ]] || bad "$1 given twice ('${GIVEN[$1]}' and '$2')"
      GIVEN[$1]=$2
      ;;
  esac
  case "$1" in
    --prefix) PREFIX=$2 ;;
    --state) STATE=$2 ;;
    --subnet) SUBNET=$2 ;;
    --regions) REGIONS_CSV=$2 ;;
    --delay) DELAY_ARGS+=("$2") ;;
    --loss) LOSS_ARGS+=("$2") ;;
    --hook) HOOK=$2 ;;
    --seed) SEED=$2 ;;
    --nfq) NFQ=$2 ;;
    --ports) PORTS=$2 ;;
  esac
  shift 2
done

# The shape of a run, checked alike in the flags (a bad one is bad usage) and in state.env (a bad
# line is a damaged file). Each prints nothing and returns 0, or returns 1 with the reason.
regions_ok() { # regions_ok NAME...
  local r
  (($# >= 2 && $# <= 200)) || { echo "give 2..200 regions"; return 1; }
  for r in "$@"; do
    [[ "$r" =~ ^[a-z][a-z0-9-]{0,30}$ ]] || { echo "region name '$r': use [a-z0-9-], starting with a letter"; return 1; }
  done
  [[ $(printf '%s\n' "$@" | sort -u | wc -l) -eq $# ]] || { echo "a name is given twice"; return 1; }
}
subnet_ok() {
  [[ "$1" =~ ^10\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})$ ]] &&
    ((BASH_REMATCH[1] <= 255 && BASH_REMATCH[2] <= 255)) && return 0
  echo "must be 10.A.B (a /24 of 10/8), got '$1'"
  return 1
}
hook_ok() { [[ "$1" == egress || "$1" == ingress ]] || { echo "must be egress or ingress, got '$1'"; return 1; }; }
# A --delay/--loss (or set-delay/set-loss) setting A/B=V with V at most MAX, or bad usage.
setting_ok() { # setting_ok LABEL MAX SETTING
  [[ "$3" =~ ^([a-z0-9/-]+)=([0-9]+(\.[0-9]+)?)$ ]] || bad "$1 must be A/B=NUMBER, got '$3'"
  awk -v v="${BASH_REMATCH[2]}" -v m="$2" 'BEGIN { exit !(v <= m) }' || bad "$1 $3: must be at most $2"
}
seed_ok() { [[ "$1" =~ ^[0-9]{1,18}$ ]] || { echo "must be a number (up to 18 digits), got '$1'"; return 1; }; }

[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,9}$ ]] ||
  bad "--prefix must be 1..10 characters of [a-z0-9] starting with a letter (interface names are at most 15)"
WHY=
if [[ -n "$REGIONS_CSV" ]]; then
  IFS=, read -r -a WANT_REGIONS <<<"$REGIONS_CSV"
  WHY=$(regions_ok "${WANT_REGIONS[@]}") || bad "--regions: $WHY"
fi
[[ -z "$SUBNET" ]] || WHY=$(subnet_ok "$SUBNET") || bad "--subnet $WHY"
[[ -z "$HOOK" ]] || WHY=$(hook_ok "$HOOK") || bad "--hook $WHY"
[[ -z "$SEED" ]] || WHY=$(seed_ok "$SEED") || bad "--seed $WHY"
for S in "${DELAY_ARGS[@]}"; do setting_ok --delay 60000 "$S"; done
for S in "${LOSS_ARGS[@]}"; do setting_ok --loss 100 "$S"; done
case "$CMD" in
  set-delay) setting_ok set-delay 60000 "$TARGET" ;;
  set-loss) setting_ok set-loss 100 "$TARGET" ;;
esac
STATE=${STATE:-/run/meridian-netem/$PREFIX}
BR="$PREFIX-br"
FWD_COMMENT="meridian-netem-$PREFIX"

# ---------------------------------------------------------------------------------------------
# State: state.env (shape) and links (one "A/B delay_ms loss_pct" line per pair).

REGIONS=()
declare -A PAIR_DELAY=() PAIR_LOSS=()

# A damaged state file ends the command with the file and line, and how to get out of it.
damaged() {
  local names=A,B,...
  ((${#REGIONS[@]})) && names=$(IFS=,; echo "${REGIONS[*]}")
  die "$1; restore it, or remove $STATE/state.env and clean up with: netns.sh down --prefix $PREFIX --state $STATE --regions $names"
}

# state.env is read line by line as the KEY=VALUE lines save_state writes, as deploy/meridian reads
# its .env files, never sourced: a line that is not one of those keys with a value `up` would
# accept is an error naming the file and line, so a damaged or planted file runs nothing (this
# runs as root).
read_state_env() {
  local f=$1 line n=0 key val why
  local -A seen=()
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    [[ -z "$line" || "$line" == \#* ]] && continue
    key='' val='' why="not a KEY=VALUE line"
    if [[ "$line" =~ ^([A-Z][A-Z0-9_]*)=\"?([^\"]*)\"?$ ]]; then
      key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
      if [[ -n "${seen[$key]:-}" ]]; then
        why="$key is given twice"
      else
        why=$(state_value_ok "$key" "$val") && why=
      fi
    fi
    [[ -z "$why" ]] || damaged "$f, line $n, is damaged: '$line' ($why)"
    seen[$key]=1
    printf -v "$key" '%s' "$val"
  done <"$f"
  for key in STATE_REGIONS STATE_SUBNET STATE_HOOK STATE_SEED STATE_NFQ STATE_FWD_RULE; do
    [[ -n "${seen[$key]:-}" ]] || damaged "$f is damaged: it has no $key line"
  done
}

state_value_ok() { # state_value_ok KEY VALUE: 0, or 1 with the reason
  local -a names
  case "$1" in
    STATE_REGIONS) read -r -a names <<<"$2"; regions_ok "${names[@]}" ;;
    STATE_SUBNET) subnet_ok "$2" ;;
    STATE_HOOK) hook_ok "$2" ;;
    STATE_SEED) seed_ok "$2" ;;
    STATE_NFQ) [[ "$2" == /* ]] || { echo "not an absolute path"; return 1; } ;;
    STATE_FWD_RULE) [[ "$2" == 0 || "$2" == 1 ]] || { echo "must be 0 or 1"; return 1; } ;;
    *) echo "not a key netns.sh writes"; return 1 ;;
  esac
}

load_state() {
  [[ -f "$STATE/state.env" ]] || return 1
  read_state_env "$STATE/state.env"
  read -r -a REGIONS <<<"$STATE_REGIONS"
  SUBNET=$STATE_SUBNET
  HOOK=$STATE_HOOK
  SEED=$STATE_SEED
  NFQ=${NFQ:-$STATE_NFQ}
  # links: one "A/B DELAY_MS LOSS_PCT" line per pair of the regions (A before B), as save_state
  # writes it; checked likewise.
  local f="$STATE/links" line n=0 pair d l i j
  [[ -f "$f" ]] || damaged "$f is missing (state.env is there)"
  local -A want=()
  for ((i = 0; i < ${#REGIONS[@]}; i++)); do
    for ((j = i + 1; j < ${#REGIONS[@]}; j++)); do want["${REGIONS[$i]}/${REGIONS[$j]}"]=1; done
  done
  while IFS= read -r line || [[ -n "$line" ]]; do
    n=$((n + 1))
    [[ -n "$line" ]] || continue
    if ! [[ "$line" =~ ^([a-z0-9-]+/[a-z0-9-]+)\ ([0-9]+(\.[0-9]+)?)\ ([0-9]+(\.[0-9]+)?)$ ]]; then
      damaged "$f, line $n, is damaged: '$line' (not 'A/B DELAY_MS LOSS_PCT')"
    fi
    pair=${BASH_REMATCH[1]} d=${BASH_REMATCH[2]} l=${BASH_REMATCH[4]}
    [[ -n "${want[$pair]:-}" ]] ||
      damaged "$f, line $n, is damaged: '$line' (not a pair A/B of the regions ${REGIONS[*]}, in their order)"
    [[ -z "${PAIR_DELAY[$pair]:-}" ]] || damaged "$f, line $n, is damaged: '$line' ($pair is given twice)"
    awk -v d="$d" -v l="$l" 'BEGIN { exit !(d <= 60000 && l <= 100) }' ||
      damaged "$f, line $n, is damaged: '$line' (delay at most 60000 ms, loss at most 100 %)"
    PAIR_DELAY[$pair]=$d
    PAIR_LOSS[$pair]=$l
  done <"$f"
  for pair in "${!want[@]}"; do
    [[ -n "${PAIR_DELAY[$pair]:-}" ]] || damaged "$f is damaged: it has no line for the pair $pair"
  done
  return 0
}

save_state() {
  mkdir -p "$STATE"
  {
    echo "STATE_REGIONS=\"${REGIONS[*]}\""
    echo "STATE_SUBNET=$SUBNET"
    echo "STATE_HOOK=$HOOK"
    echo "STATE_SEED=$SEED"
    echo "STATE_NFQ=\"$NFQ\""
    echo "STATE_FWD_RULE=${STATE_FWD_RULE:-0}"
  } >"$STATE/state.env.tmp"
  mv "$STATE/state.env.tmp" "$STATE/state.env"
  local p
  for p in "${!PAIR_DELAY[@]}"; do echo "$p ${PAIR_DELAY[$p]} ${PAIR_LOSS[$p]}"; done |
    sort >"$STATE/links.tmp"
  mv "$STATE/links.tmp" "$STATE/links"
}

require_state() { load_state || die "nothing is up under prefix '$PREFIX' (no $STATE/state.env)"; }

index_of() {
  local i
  for i in "${!REGIONS[@]}"; do [[ "${REGIONS[$i]}" == "$1" ]] && { echo "$i"; return 0; }; done
  die "no region '$1' (regions: ${REGIONS[*]})"
}
ns_of() { echo "$PREFIX-${REGIONS[$1]}"; }
addr_of() { echo "$SUBNET.$(($1 + 1))"; }
veth_of() { echo "$PREFIX-v$1"; }

# "A/B" with A before B in region order, or an error.
pair_key() {
  [[ "$1" =~ ^([a-z0-9-]+)/([a-z0-9-]+)$ ]] || die "'$1' is not a pair A/B of regions"
  local a b
  # `|| exit`: called in $(...), where set -e does not hold; index_of's die ends only its subshell.
  a=$(index_of "${BASH_REMATCH[1]}") || exit 1
  b=$(index_of "${BASH_REMATCH[2]}") || exit 1
  ((a != b)) || die "'$1': a region is not a pair with itself"
  if ((a < b)); then echo "${REGIONS[$a]}/${REGIONS[$b]}"; else echo "${REGIONS[$b]}/${REGIONS[$a]}"; fi
}
pair_of() { if (($1 < $2)); then echo "${REGIONS[$1]}/${REGIONS[$2]}"; else echo "${REGIONS[$2]}/${REGIONS[$1]}"; fi; }

# Applies "A/B=V" settings to PAIR_DELAY or PAIR_LOSS (named by $1), checking V against $2 (max).
apply_settings() {
  local -n table=$1  # a nameref: writes go to the caller's associative array
  local max=$2 what=$3 s key
  shift 3
  for s in "$@"; do
    setting_ok "--$what" "$max" "$s"
    [[ "$s" =~ ^([a-z0-9/-]+)=([0-9]+(\.[0-9]+)?)$ ]]
    key=$(pair_key "${BASH_REMATCH[1]}")
    # shellcheck disable=SC2034,SC2004  # table is a nameref to an associative array
    table[$key]=${BASH_REMATCH[2]}
  done
}

# ---------------------------------------------------------------------------------------------
# Pieces of `up`, each idempotent.

need_root() {
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces and iptables); use the proxy links instead"
  command -v ip >/dev/null || die "ip (iproute2) not installed (deploy/install-deps.sh)"
  command -v iptables >/dev/null || die "iptables not installed (deploy/install-deps.sh)"
}

find_nfq() {
  if [[ -z "$NFQ" ]]; then
    local b
    for b in "${MERIDIAN_BUILD:-$ROOT/build}/deploy/netem/meridian-netem-nfq" "$ROOT/build/deploy/netem/meridian-netem-nfq"; do
      [[ -x "$b" ]] && { NFQ=$b; break; }
    done
  fi
  [[ -n "$NFQ" && -x "$NFQ" ]] ||
    die "meridian-netem-nfq not found (build it: cmake --build build --target meridian-netem-nfq; or --nfq BIN)"
  NFQ=$(cd "$(dirname "$NFQ")" && pwd)/$(basename "$NFQ")
}

subnet_free() {
  # Our own bridge may already carry the subnet (a second `up`); anything else is a collision.
  local used
  used=$(ip -4 -o addr show | awk -v br="$BR" '$2 != br { print $4 }' | grep -E "^${SUBNET//./\\.}\\." || true)
  [[ -z "$used" ]] || die "subnet $SUBNET.0/24 is already used here ($used); pick another --subnet"
  used=$(ip -4 route show | awk -v br="$BR" '$0 !~ (" dev " br " ") { print $1 }' |
    grep -E "^${SUBNET//./\\.}\\." || true)
  [[ -z "$used" ]] || die "subnet $SUBNET.0/24 is already routed here ($used); pick another --subnet"
}

bridge_up() {
  if ! ip link show "$BR" >/dev/null 2>&1; then
    subnet_free
    ip link add "$BR" type bridge
  fi
  ip -4 addr show dev "$BR" | grep -q "inet $SUBNET.254/24" || ip addr add "$SUBNET.254/24" dev "$BR"
  ip link set "$BR" up
  # With br_netfilter, bridged frames cross the root namespace's FORWARD chain; if its policy
  # drops (Docker does that), let our bridge's own traffic through.
  if [[ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 0)" == 1 ]] &&
    ! iptables -S FORWARD | grep -qx -- '-P FORWARD ACCEPT'; then
    iptables -C FORWARD -i "$BR" -o "$BR" -m comment --comment "$FWD_COMMENT" -j ACCEPT 2>/dev/null ||
      iptables -I FORWARD 1 -i "$BR" -o "$BR" -m comment --comment "$FWD_COMMENT" -j ACCEPT
    STATE_FWD_RULE=1
  fi
}

region_ns_up() {
  local i=$1 ns veth addr
  ns=$(ns_of "$i")
  veth=$(veth_of "$i")
  addr=$(addr_of "$i")
  ip netns list | awk '{ print $1 }' | grep -qx -- "$ns" || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip -n "$ns" link del eth0 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BR"
  ip link set "$veth" up
  ip -n "$ns" link set lo up
  ip -n "$ns" -4 addr show dev eth0 | grep -q "inet $addr/24" || ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route replace default via "$SUBNET.254" dev eth0
}

ipt() { local ns=$1; shift; ip netns exec "$ns" iptables -w "$@"; }

# MERIDIAN-PART (partitions) first in INPUT; MERIDIAN-DELAY sends peers' packets to queue 0, in
# INPUT by source (ingress, the default) or in OUTPUT by destination (egress). Either way each
# direction of a pair gets the pair's one-way delay. Ingress is the default because a packet held
# on egress still counts against its sender's TCP Small Queues budget (about 1 ms of data at the
# pacing rate), which throttles a 38 ms link to ~0.1 MB/s; on ingress veth has already released
# it from the sender (measured 33 MB/s). Partitions drop on INPUT, so a cut link behaves as a real
# one (the sender sees silence, not an error).
chains_up() {
  local i=$1 ns j peer match chain
  ns=$(ns_of "$i")
  ipt "$ns" -N MERIDIAN-PART 2>/dev/null || true
  ipt "$ns" -N MERIDIAN-DELAY 2>/dev/null || true
  ipt "$ns" -C INPUT -j MERIDIAN-PART 2>/dev/null || ipt "$ns" -I INPUT 1 -j MERIDIAN-PART
  if [[ "$HOOK" == egress ]]; then chain=OUTPUT; match=-d; else chain=INPUT; match=-s; fi
  for c in INPUT OUTPUT; do
    [[ "$c" == "$chain" ]] && continue
    ipt "$ns" -D "$c" -j MERIDIAN-DELAY 2>/dev/null || true
  done
  ipt "$ns" -C "$chain" -j MERIDIAN-DELAY 2>/dev/null || ipt "$ns" -A "$chain" -j MERIDIAN-DELAY
  ipt "$ns" -F MERIDIAN-DELAY
  for j in "${!REGIONS[@]}"; do
    ((j == i)) && continue
    peer=$(addr_of "$j")
    ipt "$ns" -A MERIDIAN-DELAY "$match" "$peer/32" -j NFQUEUE --queue-num 0 --queue-bypass
  done
}

write_rules() {
  local i=$1 ns j key field f
  ns=$(ns_of "$i")
  f="$STATE/$ns.rules"
  if [[ "$HOOK" == egress ]]; then field=dst; else field=src; fi
  {
    echo "# ${REGIONS[$i]} ($HOOK): written by netns.sh; one-way delay and loss per peer"
    for j in "${!REGIONS[@]}"; do
      ((j == i)) && continue
      key=$(pair_of "$i" "$j")
      echo "$field=$(addr_of "$j") delay=${PAIR_DELAY[$key]} loss=${PAIR_LOSS[$key]}  # ${REGIONS[$j]}"
    done
  } >"$f.tmp"
  mv "$f.tmp" "$f"
}

# Running and not a zombie (an orphan waits for its reaper, which may be slow in containers).
alive() {
  local st
  st=$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$st" && "$st" != Z ]]
}

nfq_pid() {
  local f="$STATE/$1.nfq.pid"
  [[ -f "$f" ]] && alive "$(cat "$f")" && cat "$f"
}

stat_field() { # stat_field NS FIELD: a top-level number from the tool's stats file
  sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" "$STATE/$1.stats" 2>/dev/null || true
}

# shellcheck disable=SC2016  # awk's own $1
queue_bound() { ip netns exec "$1" awk '$1 == 0 { found = 1 } END { exit !found }' /proc/net/netfilter/nfnetlink_queue 2>/dev/null; }

# Starts the region's meridian-netem-nfq, or makes a running one reload its rules.
nfq_up() {
  local i=$1 ns pid before
  ns=$(ns_of "$i")
  if pid=$(nfq_pid "$ns"); then
    before=$(stat_field "$ns" reloads)
    kill -HUP "$pid"
    for _ in $(seq 1 100); do
      [[ "$(stat_field "$ns" reloads)" != "$before" ]] && return 0
      sleep 0.02
    done
    die "$ns: meridian-netem-nfq (pid $pid) did not reload its rules; see $STATE/$ns.nfq.log"
  fi
  ip netns exec "$ns" setsid "$NFQ" --queue 0 --rules-file "$STATE/$ns.rules" \
    --seed "$((SEED + i))" --stats-file "$STATE/$ns.stats" --stats-interval-s 1 \
    </dev/null >>"$STATE/$ns.nfq.log" 2>&1 &
  echo $! >"$STATE/$ns.nfq.pid"
  for _ in $(seq 1 250); do
    queue_bound "$ns" && return 0
    alive "$(cat "$STATE/$ns.nfq.pid")" ||
      die "$ns: meridian-netem-nfq exited: $(tail -n 3 "$STATE/$ns.nfq.log")"
    sleep 0.02
  done
  die "$ns: meridian-netem-nfq did not bind queue 0 in 5 s; see $STATE/$ns.nfq.log"
}

cmd_up() {
  need_root
  find_nfq
  local had_state=0
  local -a want_regions=()
  if load_state; then had_state=1; fi
  if [[ -n "$REGIONS_CSV" ]]; then IFS=, read -r -a want_regions <<<"$REGIONS_CSV"; fi
  if ((had_state)); then
    [[ ${#want_regions[@]} -eq 0 || "${want_regions[*]}" == "${REGIONS[*]}" ]] ||
      die "prefix '$PREFIX' is up with regions ${REGIONS[*]}; run down first to change them"
  else
    ((${#want_regions[@]})) || want_regions=(us-east eu-west ap-south)
    REGIONS=("${want_regions[@]}")
    SUBNET=${SUBNET:-10.77.0}
    HOOK=${HOOK:-ingress}
    SEED=${SEED:-1}
  fi
  # The flags were checked after parsing (exit 2), the state as it was read.
  local o
  if ((had_state == 0)); then
    local i j key
    for i in "${!REGIONS[@]}"; do
      for ((j = i + 1; j < ${#REGIONS[@]}; j++)); do
        key="${REGIONS[$i]}/${REGIONS[$j]}"
        case "$key" in
          us-east/eu-west | eu-west/us-east) PAIR_DELAY[$key]=38 ;;
          us-east/ap-south | ap-south/us-east) PAIR_DELAY[$key]=100 ;;
          eu-west/ap-south | ap-south/eu-west) PAIR_DELAY[$key]=60 ;;
          *) PAIR_DELAY[$key]=0 ;;
        esac
        PAIR_LOSS[$key]=0
      done
    done
  fi
  apply_settings PAIR_DELAY 60000 delay "${DELAY_ARGS[@]}"
  apply_settings PAIR_LOSS 100 loss "${LOSS_ARGS[@]}"
  if ((had_state == 0)); then
    # Names of this prefix that exist without our state belong to someone else (or to a run that
    # lost its state): never adopt them.
    local taken=""
    ip link show "$BR" >/dev/null 2>&1 && taken="$BR"
    for i in "${!REGIONS[@]}"; do
      ip netns list | awk '{ print $1 }' | grep -qx -- "$(ns_of "$i")" && taken="$taken $(ns_of "$i")"
      ip link show "$(veth_of "$i")" >/dev/null 2>&1 && taken="$taken $(veth_of "$i")"
    done
    [[ -z "$taken" ]] || die "prefix '$PREFIX' is in use here without state in $STATE ($taken); if those are yours: netns.sh down --prefix $PREFIX --regions $(IFS=,; echo "${REGIONS[*]}"); else pick another --prefix"
  fi

  mkdir -p "$STATE"
  bridge_up
  save_state
  for i in "${!REGIONS[@]}"; do
    region_ns_up "$i"
    chains_up "$i"
    write_rules "$i"
    nfq_up "$i"
  done
  for o in "${!PAIR_DELAY[@]}"; do
    log "link $o: one-way delay ${PAIR_DELAY[$o]} ms, loss ${PAIR_LOSS[$o]} % ($HOOK)"
  done
  for i in "${!REGIONS[@]}"; do log "region ${REGIONS[$i]}: namespace $(ns_of "$i"), address $(addr_of "$i")"; done
}

# ---------------------------------------------------------------------------------------------

stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do alive "$pid" || return 0; sleep 0.02; done
  kill -9 "$pid" 2>/dev/null || true
}

cmd_down() {
  [[ $(id -u) -eq 0 ]] || die "needs root"
  if ! load_state; then
    # No state: remove what our names say, for the default regions or --regions.
    if [[ -n "$REGIONS_CSV" ]]; then IFS=, read -r -a REGIONS <<<"$REGIONS_CSV"; else REGIONS=(us-east eu-west ap-south); fi
  fi
  local i ns pid f
  for i in "${!REGIONS[@]}"; do
    ns=$(ns_of "$i")
    if pid=$(nfq_pid "$ns"); then stop_pid "$pid"; fi
    rm -f "$STATE/$ns.nfq.pid"
    if ip netns list | awk '{ print $1 }' | grep -qx -- "$ns"; then
      # Whatever still runs inside our namespace was started there by us (meridian, a test).
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        log "$ns: stopping leftover pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null || echo '?'))"
        stop_pid "$pid"
      done
      ip netns del "$ns"
    fi
    ip link del "$(veth_of "$i")" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  while iptables -D FORWARD -i "$BR" -o "$BR" -m comment --comment "$FWD_COMMENT" -j ACCEPT 2>/dev/null; do :; done
  if [[ -d "$STATE" ]]; then
    rm -f "$STATE"/state.env "$STATE"/links "$STATE"/*.rules "$STATE"/*.stats "$STATE"/*.pid "$STATE"/*.tmp
    # The default state folder lives with the namespaces; a given one keeps its logs.
    [[ "$STATE" == /run/meridian-netem/"$PREFIX" ]] && rm -rf "$STATE"
  fi
  log "down: prefix $PREFIX removed"
}

# partition/heal: the pairs a target names (REGION: all its pairs; A/B: that one), as "i j".
target_pairs() {
  if [[ "$TARGET" == */* ]]; then
    local key a b
    key=$(pair_key "$TARGET") || exit 1
    a=$(index_of "${key%/*}") || exit 1
    b=$(index_of "${key#*/}") || exit 1
    echo "$a $b"
  else
    local t j
    t=$(index_of "$TARGET") || exit 1
    for j in "${!REGIONS[@]}"; do ((j != t)) && echo "$t $j"; done
  fi
  return 0
}

part_rule() { # part_rule i j: the rule in i's namespace that drops j's packets for pair i/j
  echo "-s $(addr_of "$2")/32 -m comment --comment partition:$(pair_of "$1" "$2") -j DROP"
}

cmd_partition() {
  need_root
  require_state
  local a b pairs
  # A subshell: its die (an unknown region) must stop us, not just end the loop's input.
  pairs=$(target_pairs) || exit 1
  while read -r a b; do
    [[ -n $a ]] || continue # no pairs: <<< still feeds one empty line
    # shellcheck disable=SC2046
    ipt "$(ns_of "$a")" -C MERIDIAN-PART $(part_rule "$a" "$b") 2>/dev/null || ipt "$(ns_of "$a")" -A MERIDIAN-PART $(part_rule "$a" "$b")
    # shellcheck disable=SC2046
    ipt "$(ns_of "$b")" -C MERIDIAN-PART $(part_rule "$b" "$a") 2>/dev/null || ipt "$(ns_of "$b")" -A MERIDIAN-PART $(part_rule "$b" "$a")
    log "partitioned $(pair_of "$a" "$b")"
  done <<<"$pairs"
}

cmd_heal() {
  need_root
  require_state
  local a b pairs
  # A subshell: its die (an unknown region) must stop us, not just end the loop's input.
  pairs=$(target_pairs) || exit 1
  while read -r a b; do
    [[ -n $a ]] || continue # no pairs: <<< still feeds one empty line
    # shellcheck disable=SC2046
    while ipt "$(ns_of "$a")" -D MERIDIAN-PART $(part_rule "$a" "$b") 2>/dev/null; do :; done
    # shellcheck disable=SC2046
    while ipt "$(ns_of "$b")" -D MERIDIAN-PART $(part_rule "$b" "$a") 2>/dev/null; do :; done
    log "healed $(pair_of "$a" "$b")"
  done <<<"$pairs"
}

cmd_set() { # cmd_set delay|loss
  need_root
  require_state
  find_nfq
  local key a b
  if [[ $1 == delay ]]; then apply_settings PAIR_DELAY 60000 delay "$TARGET"; else apply_settings PAIR_LOSS 100 loss "$TARGET"; fi
  key=$(pair_key "${TARGET%%=*}")
  save_state
  a=$(index_of "${key%/*}")
  b=$(index_of "${key#*/}")
  write_rules "$a"
  write_rules "$b"
  nfq_up "$a"
  nfq_up "$b"
  log "link $key: one-way delay ${PAIR_DELAY[$key]} ms, loss ${PAIR_LOSS[$key]} %"
}

# expose REGION --ports: in REGION's namespace, MERIDIAN-GUARD (first in INPUT, before the
# partitions and the delay queue, whose accept would end INPUT for a packet) resets every new
# connection from another region except to the ports given. Each region's processes listen on its
# address, which the other regions' namespaces reach over the bridge; without this a process in
# another region's namespace could talk to the region's internal gRPC, its replicator's control
# port or its Redis, none of which authenticate, going around the replicators' mTLS. The region's
# own processes (loopback) and the root namespace (bridge address .254: operators, the failover
# controllers, customers) pass. Replies to connections the region opened are not new connections
# and pass. Each call replaces the region's list: the new chain is built whole beside the old one
# and swapped in, so no moment leaves every port open, and a rule that cannot be made leaves the
# old guard as it was.
cmd_expose() {
  need_root
  require_state
  local i ns p n=0 new=MERIDIAN-GUARD-NEW
  i=$(index_of "$TARGET") || exit 1
  ns=$(ns_of "$i")
  [[ -n "$PORTS" ]] || bad "expose needs --ports P1,P2,... (or --ports none)"
  if [[ "$PORTS" != none ]]; then
    [[ "$PORTS" =~ ^[0-9]{1,5}(,[0-9]{1,5})*$ ]] || bad "--ports must be a comma-separated list of ports, got '$PORTS'"
    for p in ${PORTS//,/ }; do
      ((10#$p >= 1 && 10#$p <= 65535)) || bad "--ports: $p is not a port (1..65535)"
      n=$((n + 1))
    done
    ((n <= 15)) || bad "--ports: at most 15 ports (iptables multiport), got $n"
  fi
  # What a call that stopped half-way may have left (its old guard, if any, still stands).
  while ipt "$ns" -D INPUT -j "$new" 2>/dev/null; do :; done
  if ipt "$ns" -F "$new" 2>/dev/null; then ipt "$ns" -X "$new"; fi
  ipt "$ns" -N "$new"
  if ! { ipt "$ns" -A "$new" -i lo -j RETURN &&
    ipt "$ns" -A "$new" -s "$SUBNET.254/32" -j RETURN &&
    { [[ "$PORTS" == none ]] || ipt "$ns" -A "$new" -p tcp -m multiport --dports "$PORTS" -j RETURN; } &&
    ipt "$ns" -A "$new" -p tcp --syn -m comment --comment "exposed:$PORTS" -j REJECT --reject-with tcp-reset; }; then
    ipt "$ns" -F "$new"
    ipt "$ns" -X "$new"
    die "${REGIONS[$i]}: the guard's rules could not be made (above); the region's guard is unchanged"
  fi
  ipt "$ns" -I INPUT 1 -j "$new"
  while ipt "$ns" -D INPUT -j MERIDIAN-GUARD 2>/dev/null; do :; done
  if ipt "$ns" -F MERIDIAN-GUARD 2>/dev/null; then ipt "$ns" -X MERIDIAN-GUARD; fi
  ipt "$ns" -E "$new" MERIDIAN-GUARD
  log "${REGIONS[$i]}: other regions may connect to ports $PORTS only"
}

cmd_status() {
  require_state
  echo "prefix $PREFIX: ${#REGIONS[@]} regions on $SUBNET.0/24 (bridge $BR at $SUBNET.254), delay on $HOOK, state $STATE"
  local i ns pid st p parts
  for i in "${!REGIONS[@]}"; do
    ns=$(ns_of "$i")
    st="missing"
    ip netns list | awk '{ print $1 }' | grep -qx -- "$ns" && st="up"
    if pid=$(nfq_pid "$ns"); then
      p="meridian-netem-nfq pid $pid: received $(stat_field "$ns" received) held_now $(stat_field "$ns" held_now) lost $(stat_field "$ns" lost) overflow $(stat_field "$ns" overflow)"
    else
      p="meridian-netem-nfq NOT running (packets pass undelayed)"
    fi
    echo "  ${REGIONS[$i]}: namespace $ns $st, address $(addr_of "$i"); $p"
    if [[ "$st" == up && $(id -u) -eq 0 ]]; then
      parts=$(ipt "$ns" -S MERIDIAN-PART 2>/dev/null | sed -n 's/.*partition:\([^ "]*\).*/\1/p' | sort -u | tr '\n' ' ')
      [[ -n "$parts" ]] && echo "    partitioned: $parts"
      p=$(ipt "$ns" -S MERIDIAN-GUARD 2>/dev/null | sed -n 's/.*exposed:\([^ "]*\).*/\1/p' | head -1 || true)
      if [[ -n "$p" ]]; then echo "    to other regions: TCP ports $p only"; else echo "    to other regions: every port (not exposed)"; fi
    fi
  done
  for p in $(printf '%s\n' "${!PAIR_DELAY[@]}" | sort); do
    echo "  link $p: one-way delay ${PAIR_DELAY[$p]} ms, loss ${PAIR_LOSS[$p]} %"
  done
}

# Can this machine run regions in namespaces? Exit 0, or 1 with the reason on stderr.
cmd_check() {
  [[ $(id -u) -eq 0 ]] || { echo "netns: not root: network namespaces need root" >&2; exit 1; }
  command -v ip >/dev/null || { echo "netns: no ip (iproute2)" >&2; exit 1; }
  command -v iptables >/dev/null || { echo "netns: no iptables" >&2; exit 1; }
  find_nfq
  local probe="mprobe$$" ok=1 why=""
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "netns: cannot create a network namespace (ip netns add failed)" >&2
    exit 1
  fi
  if ! why=$(ip netns exec "$probe" iptables -w -A OUTPUT -d 10.255.255.1/32 -j NFQUEUE --queue-num 0 --queue-bypass 2>&1); then
    ok=0; why="iptables NFQUEUE in a namespace failed: $why"
  elif ! why=$(ip netns exec "$probe" iptables -w -A INPUT -p tcp --syn -m multiport --dports 1,2 \
    -m comment --comment probe -j REJECT --reject-with tcp-reset 2>&1); then
    ok=0; why="iptables REJECT, multiport or comment in a namespace failed (expose needs them): $why"
  elif ! why=$(ip netns exec "$probe" "$NFQ" --queue 0 --probe 2>&1); then
    ok=0; why="meridian-netem-nfq cannot bind a queue: $why"
  fi
  ip netns del "$probe" 2>/dev/null || true
  ((ok)) || { echo "netns: $why" >&2; exit 1; }
  echo "netns: ok (namespaces, iptables NFQUEUE and REJECT, $NFQ)"
}

case "$CMD" in
  up) cmd_up ;;
  down) cmd_down ;;
  partition) cmd_partition ;;
  heal) cmd_heal ;;
  set-delay) cmd_set delay ;;
  set-loss) cmd_set loss ;;
  status) cmd_status ;;
  addr)
    require_state
    # Not addr_of "$(index_of ...)": index_of's die would end only the $(...), and an unknown
    # region would print the first region's address.
    I=$(index_of "$TARGET") || exit 1
    addr_of "$I"
    ;;
  ns) require_state; index_of "$TARGET" >/dev/null; echo "$PREFIX-$TARGET" ;;
  check) cmd_check ;;
  expose) cmd_expose ;;
  *) bad "unknown command '$CMD' (see --help)" ;;
esac
