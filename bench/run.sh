#!/bin/bash
# make bench: per-call latency of stigg_has_access against the dev sidecar,
# side by side in one run with a bench-only gRPC C core client calling the
# same sidecar, and calls/s at 1 and 8 clients next to a no-op baseline;
# then the usage queue: stigg_report_usage next to a plain INSERT, the
# worker's delivery rate, and commit-to-acknowledgement latency.
# Machines are noisy: read the ratios, not the absolute numbers.
set -euo pipefail
. "$(dirname "$0")/../test/scripts/common.sh"

CALLS=${BENCH_CALLS:-3000}
ROUNDS=${BENCH_ROUNDS:-3}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
PORT=${BENCH_PGPORT:-5498}

WORK=$(mktemp -d /tmp/stigg-bench.XXXXXX)
stage_tree "$WORK"
SIDECAR_STAGED="$WORK/test/sidecar/stigg_dev_sidecar.py"
cleanup() {
	stop_sidecar
	"${RUN_AS[@]}" "$PG_BINDIR/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$WORK"
}
trap cleanup EXIT

# the reference client, built from the same generated protobuf code
gcc -O2 -std=gnu99 -I"$SRC/src/gen" -o "$WORK/grpc_core_client" "$SRC/bench/grpc_core_client.c" \
	"$SRC"/src/gen/sidecar.pb-c.c "$SRC"/src/gen/google/protobuf/*.pb-c.c \
	$(pkg-config --cflags --libs grpc) -lprotobuf-c

start_sidecar "$WORK/test/sidecar/demo-catalog.json" "$WORK/sidecar.log"
start_cluster "$WORK" "$PORT" <<CONF
shared_preload_libraries = 'stigg'
stigg.database = 'postgres'
stigg.batch_size = 1000
CONF
PSQL=("${RUN_AS[@]}" "$PG_BINDIR/psql" -X -q -A -t -h "$WORK" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION stigg"

CHECK="stigg_has_access('customer-demo-01', 'feature-04-analytics')"
# pgbench: one statement each, so the statement memo does not answer; the
# shared cache does, unless the run sets stigg.cache_ttl = 0

# Mean microseconds per uncached call inside one backend: distinct
# customers with the cache off, so that every row asks the sidecar, minus
# the same scan calling nothing.
sql_us_per_call() {
	"${PSQL[@]}" <<SQL | tail -1
SET stigg.cache_ttl = 0;
SELECT count(*) FROM generate_series(1, 200) g WHERE stigg_has_access('warm-' || g, 'feature-04-analytics');
CREATE TEMP TABLE t(v float8);
DO \$\$
DECLARE t0 timestamptz; t1 timestamptz; t2 timestamptz; n bigint;
BEGIN
  t0 := clock_timestamp();
  SELECT count(*) INTO n FROM generate_series(1, $CALLS) g WHERE stigg_has_access('c-' || g, 'feature-04-analytics');
  t1 := clock_timestamp();
  SELECT count(*) INTO n FROM generate_series(1, $CALLS) g WHERE ('c-' || g) IS NOT NULL;
  t2 := clock_timestamp();
  INSERT INTO t VALUES (extract(epoch FROM (t1 - t0) - (t2 - t1)) * 1e6 / $CALLS);
END \$\$;
SELECT round(v::numeric, 1) FROM t;
SQL
}

echo "stigg benchmark: $ROUNDS rounds of $CALLS calls; dev sidecar (Python grpcio) on localhost"
echo "uncached stigg_has_access (distinct customers, stigg.cache_ttl = 0) vs gRPC C core"
printf '%-6s %22s %22s %8s\n' round "grpc C core us/call" "stigg_has_access us/call" ratio
ratios=()
for r in $(seq 1 "$ROUNDS"); do
	core=$("$WORK/grpc_core_client" "127.0.0.1:$SIDECAR_GRPC_PORT" "$CALLS" | sed -n 's/.*mean_us=\([0-9.]*\).*/\1/p')
	ext=$(sql_us_per_call)
	ratio=$(awk -v a="$ext" -v b="$core" 'BEGIN { printf "%.2f", a / b }')
	ratios+=("$ratio")
	printf '%-6s %22s %22s %8s\n' "$r" "$core" "$ext" "$ratio"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "median ratio stigg_has_access / gRPC C core: $median"
"$WORK/grpc_core_client" "127.0.0.1:$SIDECAR_GRPC_PORT" "$CALLS" | sed 's/^/gRPC C core: /'

# Throughput through the whole stack (client, PostgreSQL, sidecar), next to
# a statement that does not call the sidecar.
echo "SELECT 1;" > "$WORK/noop.sql"
echo "SET stigg.cache_ttl = 0; SELECT $CHECK;" > "$WORK/check.sql"
chown "$CLUSTER_USER" "$WORK"/*.sql
pgb() {
	"${RUN_AS[@]}" "$PG_BINDIR/pgbench" -n -h "$WORK" -p "$PORT" -U postgres -M prepared \
		-T "$SECONDS_PER_RUN" "$@" postgres 2>/dev/null
}
echo
echo "through pgbench, one uncached check per transaction"
printf '%-8s %16s %22s %8s %22s\n' clients "SELECT 1 tps" "stigg_has_access tps" ratio "stigg latency avg ms"
for c in 1 8; do
	base=$(pgb -c "$c" -j "$(( c > 1 ? 2 : 1 ))" -f "$WORK/noop.sql" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
	out=$(pgb -c "$c" -j "$(( c > 1 ? 2 : 1 ))" -f "$WORK/check.sql")
	tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
	lat=$(sed -n 's/^latency average = \([0-9.]*\).*/\1/p' <<<"$out")
	printf '%-8s %16.0f %22.0f %8.2f %22s\n' "$c" "$base" "$tps" "$(awk -v a="$tps" -v b="$base" 'BEGIN { print a / b }')" "$lat"
done

# ---- the usage queue
ROWS=${BENCH_QUEUE_ROWS:-100000}
control() { curl -s -X "$1" "http://127.0.0.1:$SIDECAR_CONTROL_PORT$2" ${3:+-H 'Content-Type: application/json' -d "$3"} >/dev/null; }
echo
echo "usage queue: $ROWS rows"
# the sidecar refuses while rows are queued, so the worker does not compete
control POST /faults '{"faults": [{"method": "*", "action": "error", "code": "UNAVAILABLE"}]}'
"${PSQL[@]}" <<SQL
CREATE TABLE plain_usage (LIKE stigg.usage_queue INCLUDING DEFAULTS INCLUDING INDEXES);
ALTER TABLE plain_usage ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY;
SQL
queue_ms() {
	"${PSQL[@]}" <<SQL | tail -1
\\timing off
CREATE TEMP TABLE r(ms float8);
DO \$\$
DECLARE t0 timestamptz; t1 timestamptz; t2 timestamptz;
BEGIN
  t0 := clock_timestamp();
  INSERT INTO plain_usage (customer_id, feature_id, value, update_behavior)
  SELECT 'customer-enterprise', 'feature-09-api-calls', 1, 'DELTA' FROM generate_series(1, $ROWS);
  t1 := clock_timestamp();
  PERFORM count(stigg_report_usage('customer-enterprise', 'feature-09-api-calls', 1)) FROM generate_series(1, $ROWS);
  t2 := clock_timestamp();
  INSERT INTO r VALUES (extract(epoch FROM t1 - t0) * 1e6 / $ROWS), (extract(epoch FROM t2 - t1) * 1e6 / $ROWS);
END \$\$;
SELECT string_agg(round(ms::numeric, 2)::text, ' ') FROM r;
SQL
}
read -r plain_us report_us <<<"$(queue_ms)"
printf '%-44s %10s us/row\n' "INSERT into an equivalent table" "$plain_us"
printf '%-44s %10s us/row  (%.2fx)\n' "stigg_report_usage (one statement)" "$report_us" \
	"$(awk -v a="$report_us" -v b="$plain_us" 'BEGIN { print a / b }')"
echo "INSERT INTO plain_usage (customer_id, feature_id, value, update_behavior) VALUES ('customer-demo-01', 'feature-01-templates', 1, 'DELTA');" > "$WORK/insert.sql"
echo "SELECT stigg_report_usage('customer-demo-01', 'feature-01-templates', 1);" > "$WORK/report.sql"
chown "$CLUSTER_USER" "$WORK"/*.sql
t_ins=$(pgb -c 1 -f "$WORK/insert.sql" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
t_rep=$(pgb -c 1 -f "$WORK/report.sql" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
printf '%-44s %10.0f tps\n' "one-row INSERT transactions, 1 client" "$t_ins"
printf '%-44s %10.0f tps  (%.2fx the time)\n' "one-row stigg_report_usage transactions" "$t_rep" \
	"$(awk -v a="$t_ins" -v b="$t_rep" 'BEGIN { print a / b }')"

# delivery: let the worker drain what is queued
pending=$("${PSQL[@]}" -c "SELECT count(*) FROM stigg.usage_queue WHERE state <> 'delivered'")
start=$(date +%s.%N)
control DELETE /faults
"${PSQL[@]}" -c "SELECT stigg_flush('10 minutes')" >/dev/null
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')
printf '%-44s %10.0f rows/s  (%d rows in %.1f s, batches of 1000)\n' "worker delivery into the dev sidecar" \
	"$(awk -v n="$pending" -v t="$secs" 'BEGIN { print n / t }')" "$pending" "$secs"

# commit to acknowledgement at a steady 200 reports/s
"${PSQL[@]}" -c "TRUNCATE stigg.usage_queue"
pgb -c 2 -j 2 -R 200 -f "$WORK/report.sql" >/dev/null
"${PSQL[@]}" -c "SELECT stigg_flush('1 minute')" >/dev/null
"${PSQL[@]}" -c "SELECT format('%-44s p50 %s ms, p99 %s ms, max %s ms (%s rows)', 'commit to acknowledgement, 200 rows/s',
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(max(ms)::numeric, 1), count(*))
  FROM (SELECT extract(epoch FROM delivered_at - enqueued_at) * 1000 AS ms FROM stigg.usage_queue) d"

# ---- gating
echo
echo "gating"
gcc -O2 -fPIC -shared -I"$("$PG_CONFIG" --includedir-server)" -o "$WORK/noop.so" "$SRC/bench/noop.c"
chown "$CLUSTER_USER" "$WORK/noop.so"
"${PSQL[@]}" <<SQL
CREATE FUNCTION bench_noop(text, text) RETURNS boolean AS '$WORK/noop.so', 'bench_noop' LANGUAGE C;
CREATE TABLE scan_t AS SELECT 'customer-' || (g % 1000) AS customer_id FROM generate_series(1, 1000000) g;
ANALYZE scan_t;
SQL
scan_ms() {
	"${PSQL[@]}" <<SQL | tail -1
CREATE TEMP TABLE r(ms float8);
SELECT count(*) FROM scan_t WHERE $1;   -- warm: the cache and the buffers
DO \$\$
DECLARE t0 timestamptz; n bigint;
BEGIN
  t0 := clock_timestamp();
  SELECT count(*) INTO n FROM scan_t WHERE $1;
  INSERT INTO r VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
END \$\$;
SELECT round(ms::numeric, 1) FROM r;
SQL
}
noop=$(scan_ms "bench_noop(customer_id, 'feature-04-analytics')")
cached=$(scan_ms "stigg_has_access(customer_id, 'feature-04-analytics')")
printf '%-52s %9s ms\n' "1M-row scan, no-op C function per row" "$noop"
printf '%-52s %9s ms  (%.2fx)\n' "1M-row scan, cached stigg_has_access per row" "$cached" \
	"$(awk -v a="$cached" -v b="$noop" 'BEGIN { print a / b }')"

insert_ms() {
	"${PSQL[@]}" <<SQL | tail -1
DROP TABLE IF EXISTS g_t;
CREATE TABLE g_t (customer_id text, n int);
$1
CREATE TEMP TABLE r(ms float8);
DO \$\$
DECLARE t0 timestamptz;
BEGIN
  t0 := clock_timestamp();
  INSERT INTO g_t SELECT CASE WHEN g % 2 = 0 THEN 'customer-demo-02' ELSE 'customer-demo-01' END, 1
    FROM generate_series(1, $2) g;
  INSERT INTO r VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000);
END \$\$;
SELECT round(ms::numeric, 1) FROM r;
SQL
}
plain=$(insert_ms "" 100000)
enforced=$(insert_ms "CREATE TRIGGER e BEFORE INSERT ON g_t FOR EACH ROW EXECUTE FUNCTION stigg_enforce('feature-04-analytics', 'customer_id');" 100000)
printf '%-52s %9s ms\n' "100k-row INSERT, no trigger" "$plain"
printf '%-52s %9s ms  (%.2fx)\n' "100k-row INSERT, stigg_enforce (boolean feature)" "$enforced" \
	"$(awk -v a="$enforced" -v b="$plain" 'BEGIN { print a / b }')"
plain=$(insert_ms "" 1000000)
tracked=$(insert_ms "CREATE TRIGGER t AFTER INSERT ON g_t REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION stigg_track_usage('feature-09-api-calls', 'customer_id', '', 'n');" 1000000)
printf '%-52s %9s ms\n' "1M-row INSERT, no trigger" "$plain"
printf '%-52s %9s ms  (%.2fx)\n' "1M-row INSERT, statement-level stigg_track_usage" "$tracked" \
	"$(awk -v a="$tracked" -v b="$plain" 'BEGIN { print a / b }')"
