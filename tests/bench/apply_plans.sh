#!/usr/bin/env bash
# What cached plans would save on the apply of a peer's cart deltas (not a pass/fail test).
#
# The region applies a batch of a peer's cart deltas in two round trips of simple-query SQL
# (region/internal_service.cc, ApplyToTarget): BEGIN with the advisory locks and the read of the
# stream's mark and the carts, then the multi-row upsert of the carts, the mark and COMMIT. Every
# statement is parsed, analysed and planned each time. This script measures that against the
# same two round trips through PL/pgSQL functions, whose statements keep cached plans, on a
# PostgreSQL of its own (initdb as the postgres user into a temp dir, Unix socket only, fsync off
# as in the test servers), with pgbench: one client, alternating runs, --rows carts per batch.
#
#   bash tests/bench/apply_plans.sh [--rows 10] [--seconds 8] [--runs 3]
#
# Prints the average latency per batch of each form and writes results/apply_plans.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

ROWS=10 SECONDS_PER_RUN=8 RUNS=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) ROWS=$2; shift 2 ;;
    --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "apply_plans.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
for v in "$ROWS" "$SECONDS_PER_RUN" "$RUNS"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "apply_plans.sh: counts are positive integers" >&2; exit 2; }
done
(( ROWS <= 1000 )) || { echo "apply_plans.sh: --rows is at most 1000" >&2; exit 2; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x "$PGBIN/initdb" ]] || { echo "apply_plans.sh: PostgreSQL not found (deploy/install-deps.sh)" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "apply_plans.sh: pgbench not found" >&2; exit 1; }

# PostgreSQL refuses to run as root: as root, its commands run as the postgres user.
as_pg() {
  if [[ $EUID -eq 0 ]]; then su postgres -c "$*"; else bash -c "$*"; fi
}
work=$(mktemp -d)
chmod 755 "$work"
mkdir "$work/data" "$work/sock"
[[ $EUID -ne 0 ]] || chown postgres "$work/data" "$work/sock"
stop() {
  as_pg "$PGBIN/pg_ctl -D $work/data -m fast stop" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop EXIT
echo "== PostgreSQL in $work (Unix socket only)"
as_pg "$PGBIN/initdb -D $work/data -A trust" >/dev/null
as_pg "$PGBIN/pg_ctl -D $work/data -w -l $work/sock/log start -o \
  '-p 5432 -k $work/sock -c listen_addresses= -c fsync=off'" >/dev/null
PG=(-h "$work/sock" -p 5432 -U postgres)

# The tables as region/migrations.cc makes them, and the two functions of the cached-plan form.
psql "${PG[@]}" -q -v ON_ERROR_STOP=1 postgres <<'SQL'
CREATE TABLE replication_applied (origin integer NOT NULL, origin_db text NOT NULL,
  seq bigint NOT NULL, PRIMARY KEY (origin, origin_db));
CREATE TABLE carts (user_id text PRIMARY KEY, state bytea NOT NULL,
  residency text NOT NULL DEFAULT 'any', version bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION apply_lock_read(p_locks text[], p_origin integer, p_db text, p_keys text[])
RETURNS TABLE (k integer, user_id text, state bytea, version bigint)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(hashtextextended(l, 0)) FROM unnest(p_locks) AS l;
  RETURN QUERY
    SELECT 0, NULL::text, NULL::bytea, a.seq FROM replication_applied a
     WHERE a.origin = p_origin AND a.origin_db = p_db
    UNION ALL SELECT 1, c.user_id, c.state, c.version FROM carts c WHERE c.user_id = ANY (p_keys);
END $$;
CREATE FUNCTION apply_write(p_keys text[], p_states bytea[], p_res text[], p_versions bigint[],
                            p_origin integer, p_db text, p_seq bigint)
RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  INSERT INTO carts (user_id, state, residency, version)
    SELECT * FROM unnest(p_keys, p_states, p_res, p_versions)
    ON CONFLICT (user_id) DO UPDATE
      SET state = EXCLUDED.state, version = EXCLUDED.version, updated_at = now();
  INSERT INTO replication_applied (origin, origin_db, seq) VALUES (p_origin, p_db, p_seq)
    ON CONFLICT (origin, origin_db) DO UPDATE
      SET seq = GREATEST(replication_applied.seq, EXCLUDED.seq);
END $$;
INSERT INTO replication_applied VALUES (2, 'shard0', 1);
INSERT INTO carts SELECT 'bench-user-' || g, decode(repeat('ab', 220), 'hex'), 'any', 1
  FROM generate_series(0, 19999) g;
SQL
psql "${PG[@]}" -q -c "VACUUM ANALYZE" postgres

# One batch: $ROWS distinct customers of 20,000, a 220-byte cart state each (the size of a
# bench cart), as the region's SQL text with the values inline.
state="'\\x$(head -c 220 /dev/urandom | od -An -v -tx1 | tr -d ' \n')'::bytea"
sets="\\set b random(0, $((20000 / ROWS - 1)))"$'\n'
locks="'stream:2/shard0'" keys="" values="" states="" res="" versions=""
for ((i = 0; i < ROWS; i++)); do
  sets+="\\set u$i :b * $ROWS + $i"$'\n'
  key="'bench-user-' || :u$i"
  locks+=", 'cart:bench-user-' || :u$i"
  keys+="${keys:+, }$key"
  values+="${values:+, }($key, $state, 'any', 5)"
  states+="${states:+, }$state"
  res+="${res:+, }'any'"
  versions+="${versions:+, }5"
done
mark="INSERT INTO replication_applied (origin, origin_db, seq) VALUES (2, 'shard0', 100) ON CONFLICT (origin, origin_db) DO UPDATE SET seq = GREATEST(replication_applied.seq, EXCLUDED.seq)"
cat >"$work/simple.sql" <<EOF
${sets}BEGIN\\;SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(ARRAY[$locks]::text[]) AS k\\;SELECT 0, NULL, NULL, seq FROM replication_applied WHERE origin = 2 AND origin_db = 'shard0' UNION ALL SELECT 1, user_id, state, version FROM carts WHERE user_id IN ($keys);
INSERT INTO carts (user_id, state, residency, version) VALUES $values ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, version = EXCLUDED.version, updated_at = now()\\;$mark\\;COMMIT;
EOF
cat >"$work/cached.sql" <<EOF
${sets}BEGIN\\;SELECT * FROM apply_lock_read(ARRAY[$locks]::text[], 2, 'shard0', ARRAY[$keys]::text[]);
SELECT apply_write(ARRAY[$keys]::text[], ARRAY[$states], ARRAY[$res]::text[], ARRAY[$versions]::bigint[], 2, 'shard0', 100)\\;COMMIT;
EOF

declare -A sum
for ((run = 1; run <= RUNS; run++)); do
  for form in simple cached; do
    ms=$(pgbench "${PG[@]}" -n -M simple -c 1 -T "$SECONDS_PER_RUN" -f "$work/$form.sql" postgres \
           2>&1 | sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p')
    [[ -n "$ms" ]] || { echo "apply_plans.sh: pgbench failed for $form" >&2; exit 1; }
    printf 'run %d  %-6s  %s ms per batch of %d carts\n' "$run" "$form" "$ms" "$ROWS"
    sum[$form]=$(awk -v a="${sum[$form]:-0}" -v b="$ms" 'BEGIN { print a + b }')
  done
done
simple=$(awk -v s="${sum[simple]}" -v n="$RUNS" 'BEGIN { printf "%.3f", s / n }')
cached=$(awk -v s="${sum[cached]}" -v n="$RUNS" 'BEGIN { printf "%.3f", s / n }')
saved=$(awk -v a="$simple" -v b="$cached" 'BEGIN { printf "%.3f", a - b }')
echo "== mean of $RUNS runs: simple-query $simple ms, cached plans $cached ms per batch" \
  "($saved ms saved per batch of $ROWS carts)"
mkdir -p results
cat >results/apply_plans.json <<EOF
{"generated": "$(date -u +%FT%TZ)", "rows_per_batch": $ROWS, "seconds_per_run": $SECONDS_PER_RUN,
 "runs": $RUNS, "simple_query_ms_per_batch": $simple, "cached_plan_ms_per_batch": $cached,
 "saved_ms_per_batch": $saved, "postgres": "$("$PGBIN/postgres" --version)"}
EOF
echo "results/apply_plans.json written"
