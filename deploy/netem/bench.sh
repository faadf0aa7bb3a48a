#!/usr/bin/env bash
# bench.sh — figures for region emulation in namespaces (not a test; prints figures and writes
# results/netem_bench.json). Needs root. Run it on a quiet machine:
#   flock -x /tmp/meridian-cpu.lock bash deploy/netem/bench.sh [PATH/TO/meridian-netem-nfq]
#
#   1. RTT per direction of every pair (ping -U: user-to-user, 50 pings) vs 2x the one-way delay;
#      TCP connect time (one RTT) per pair.
#   2. Loss: 5 % per direction on us-east/eu-west, 2,000 pings: ping loss vs 1-(0.95)^2.
#   3. CPU of meridian-netem-nfq at each of RATES packets/s per tool (ping at that rate from
#      us-east to eu-west for SECONDS_CPU: each request held by eu-west's tool, each reply by
#      us-east's), from utime+stime in /proc before and after; release lateness from the tool.
#   4. TCP bulk throughput us-east -> eu-west for 5 s, delay on ingress and on egress (needs
#      python3; skipped without it).
# Environment: RATES (default "1000 5000"), SECONDS_CPU (default 8). -h/--help: this text.
# Exit status: 0 done, 1 failed (with the reason), 2 bad usage (an unknown option, two paths).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
usage() { sed -n '2,15p' "$0"; }
NFQ=
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    -*) echo "bench: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *)
      [[ -z "$NFQ" ]] || { echo "bench: one PATH/TO/meridian-netem-nfq, got '$NFQ' and '$1'" >&2; exit 2; }
      NFQ=$1
      ;;
  esac
  shift
done
NFQ=${NFQ:-$ROOT/build/deploy/netem/meridian-netem-nfq}
NETNS="$ROOT/deploy/netem/netns.sh"
RATES=${RATES:-1000 5000}
SECONDS_CPU=${SECONDS_CPU:-8}
[[ $(id -u) -eq 0 ]] || { echo "bench: needs root" >&2; exit 1; }
[[ -x "$NFQ" ]] || { echo "bench: no meridian-netem-nfq at $NFQ" >&2; exit 1; }

P=mb$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
SUBNET=
for _ in $(seq 1 50); do
  s="10.$((200 + RANDOM % 50)).$((RANDOM % 256))"
  if ! ip -4 -o addr show | grep -q " ${s//./\\.}\\." && ! ip -4 route show | grep -q "^${s//./\\.}\\."; then
    SUBNET=$s
    break
  fi
done
[[ -n "$SUBNET" ]] || { echo "bench: no free subnet" >&2; exit 1; }
STATE=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  bash "$NETNS" down --prefix "$P" --state "$STATE" >/dev/null 2>&1 || true
  rm -rf "$STATE"
}
trap cleanup EXIT
net() { bash "$NETNS" "$@" --prefix "$P" --state "$STATE"; }
NAMES=(us-east eu-west ap-south)
declare -A ADDR=([us-east]=$SUBNET.1 [eu-west]=$SUBNET.2 [ap-south]=$SUBNET.3)
declare -A ONEWAY=([us-east/eu-west]=38 [us-east/ap-south]=100 [eu-west/ap-south]=60)
oneway() { echo "${ONEWAY[$1/$2]:-${ONEWAY[$2/$1]}}"; }
JSON="{\"date\": \"$(date -u +%FT%TZ)\", \"kernel\": \"$(uname -r)\", \"cores\": $(nproc)"

net up --nfq "$NFQ" --subnet "$SUBNET" >/dev/null
echo "== RTT (ping -U, 50 pings at 20 ms) and TCP connect (20 connects), delay on ingress"
for r in "${NAMES[@]}"; do
  ip netns exec "$P-$r" redis-server --port 7000 --bind "${ADDR[$r]}" --protected-mode no --save '' \
    --appendonly no --daemonize no --logfile /dev/null </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 0.3
JSON+=", \"rtt\": ["
first=1
for a in "${NAMES[@]}"; do
  for b in "${NAMES[@]}"; do
    [[ "$a" == "$b" ]] && continue
    d=$(oneway "$a" "$b")
    read -r mn med p99 mx < <(ip netns exec "$P-$a" ping -U -n -c 50 -i 0.02 -w 20 "${ADDR[$b]}" |
      sed -n 's/.*time=\([0-9.]*\) ms.*/\1/p' | sort -n |
      awk '{ v[NR] = $1 } END { printf "%s %s %s %s\n", v[1], v[int((NR + 1) / 2)], v[int(NR * 0.99 + 0.999)], v[NR] }')
    tcp=$(ip netns exec "$P-$a" bash -c "for i in \$(seq 1 20); do s=\$EPOCHREALTIME; exec 3<>/dev/tcp/${ADDR[$b]}/7000; e=\$EPOCHREALTIME; exec 3>&-; echo \"\$s \$e\"; done" |
      awk '{ printf "%.3f\n", ($2 - $1) * 1000 }' | sort -n | awk '{ v[NR] = $1 } END { printf "%.2f", v[int((NR + 1) / 2)] }')
    printf '  %-8s -> %-8s one-way %3s ms: RTT min %s median %s p99 %s max %s ms (setting 2x = %s); TCP connect median %s ms\n' \
      "$a" "$b" "$d" "$mn" "$med" "$p99" "$mx" "$((2 * d))" "$tcp"
    ((first)) || JSON+=", "
    first=0
    JSON+="{\"from\": \"$a\", \"to\": \"$b\", \"one_way_ms\": $d, \"rtt_min_ms\": $mn, \"rtt_median_ms\": $med, \"rtt_p99_ms\": $p99, \"rtt_max_ms\": $mx, \"tcp_connect_median_ms\": $tcp}"
  done
done
JSON+="]"

echo "== loss 5 % per direction on us-east/eu-west (2,000 pings at 2 ms)"
net set-loss us-east/eu-west=5 >/dev/null
loss=$(ip netns exec "$P-us-east" ping -n -q -c 2000 -i 0.002 -W 1 "${ADDR[eu-west]}" | sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p')
net set-loss us-east/eu-west=0 >/dev/null
echo "  ping loss $loss % (expected 1-(0.95)^2 = 9.75 %)"
JSON+=", \"loss\": {\"per_direction_pct\": 5, \"pings\": 2000, \"ping_loss_pct\": $loss, \"expected_pct\": 9.75}"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
stat_of() { sed -n "s/.*\"$2\":\([0-9.e+-]*\).*/\1/p" "$STATE/$P-$1.stats"; }
JSON+=", \"cpu\": ["
first=1
for RATE in $RATES; do
  echo "== CPU of meridian-netem-nfq at ~$RATE packets/s per tool for $SECONDS_CPU s"
  pu=$(cat "$STATE/$P-us-east.nfq.pid")
  pe=$(cat "$STATE/$P-eu-west.nfq.pid")
  net set-delay us-east/eu-west=38 >/dev/null # a reload: the rule counters restart
  ru0=$(stat_of us-east received)
  re0=$(stat_of eu-west received)
  tu0=$(cpu_ticks "$pu")
  te0=$(cpu_ticks "$pe")
  count=$((RATE * SECONDS_CPU))
  interval=$(awk -v r="$RATE" 'BEGIN { printf "%.6f", 1 / r }')
  # ping waits for replies before sending more unless preloaded; with a 76 ms RTT it needs about
  # RATE * 0.076 packets in flight. (ping spins between sends at these intervals: it costs a core.)
  preload=$((RATE / 10 + 10))
  t0=$EPOCHREALTIME
  summary=$(ip netns exec "$P-us-east" ping -U -n -q -s 16 -l "$preload" -c "$count" -i "$interval" -W 1 "${ADDR[eu-west]}" | tail -2)
  t1=$EPOCHREALTIME
  tu1=$(cpu_ticks "$pu")
  te1=$(cpu_ticks "$pe")
  kill -USR1 "$pu" "$pe"
  sleep 0.3
  ru1=$(stat_of us-east received)
  re1=$(stat_of eu-west received)
  hz=$(getconf CLK_TCK)
  late_mean=$(stat_of eu-west release_late_us_mean)
  late_max=$(stat_of eu-west release_late_us_max)
  held_max=$(stat_of eu-west held_max)
  read -r secs rate_e rate_u cpu_e cpu_u us_e us_u < <(awk -v t0="$t0" -v t1="$t1" -v hz="$hz" \
    -v tu0="$tu0" -v tu1="$tu1" -v te0="$te0" -v te1="$te1" -v ru0="$ru0" -v ru1="$ru1" -v re0="$re0" -v re1="$re1" 'BEGIN {
      s = t1 - t0; pe = re1 - re0; pu = ru1 - ru0; ce = (te1 - te0) / hz; cu = (tu1 - tu0) / hz
      printf "%.2f %.0f %.0f %.1f %.1f %.1f %.1f\n", s, pe / s, pu / s, 100 * ce / s, 100 * cu / s, 1e6 * ce / pe, 1e6 * cu / pu }')
  echo "  ping: $(tr '\n' ' ' <<<"$summary")"
  echo "  eu-west's tool: $rate_e packets/s, CPU $cpu_e % of one core ($us_e us per packet); held at most $held_max; release late mean $late_mean us, max $late_max us"
  echo "  us-east's tool: $rate_u packets/s, CPU $cpu_u % of one core ($us_u us per packet)"
  ((first)) || JSON+=", "
  first=0
  JSON+="{\"target_rate\": $RATE, \"seconds\": $secs, \"eu_west_packets_per_s\": $rate_e, \"eu_west_cpu_pct\": $cpu_e, \"eu_west_us_per_packet\": $us_e, \"us_east_packets_per_s\": $rate_u, \"us_east_cpu_pct\": $cpu_u, \"us_east_us_per_packet\": $us_u, \"held_max\": $held_max, \"release_late_us_mean\": $late_mean, \"release_late_us_max\": $late_max, \"ping\": \"$(tr '\n' ' ' <<<"$summary")\"}"
done
JSON+="]"

if command -v python3 >/dev/null; then
  echo "== TCP bulk us-east -> eu-west (38 ms one-way), 5 s"
  cat >"$STATE/bulk.py" <<'PY'
import socket, sys, time
if sys.argv[1] == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3]))); s.listen(4)
    while True:
        c, _ = s.accept()
        while c.recv(1 << 20): pass
        c.sendall(b"x"); c.close()
else:
    c = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    buf = b"a" * (1 << 16); sent = 0; t0 = time.time()
    while time.time() - t0 < float(sys.argv[4]):
        c.sendall(buf); sent += len(buf)
    c.shutdown(socket.SHUT_WR); c.recv(1)
    print("%.1f" % (sent / (time.time() - t0) / 1e6))
PY
  bulk() {
    ip netns exec "$P-eu-west" python3 "$STATE/bulk.py" server "${ADDR[eu-west]}" 7001 </dev/null >/dev/null 2>&1 &
    local srv=$!
    sleep 0.3
    ip netns exec "$P-us-east" python3 "$STATE/bulk.py" client "${ADDR[eu-west]}" 7001 5
    kill "$srv"
    wait "$srv" 2>/dev/null || true
  }
  ingress=$(bulk)
  echo "  delay on ingress (default): $ingress MB/s"
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  PIDS=()
  net down >/dev/null
  net up --nfq "$NFQ" --subnet "$SUBNET" --hook egress >/dev/null
  egress=$(bulk)
  echo "  delay on egress:            $egress MB/s"
  JSON+=", \"tcp_bulk_mb_per_s\": {\"ingress\": $ingress, \"egress\": $egress}"
fi
JSON+="}"
mkdir -p "$ROOT/results"
echo "$JSON" >"$ROOT/results/netem_bench.json"
echo "wrote results/netem_bench.json"
