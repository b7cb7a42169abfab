#!/bin/bash
# make demo: a throwaway cluster and a dev sidecar serving the demo catalog,
# a short tour of the SQL functions, and how to connect and stop.
# make demo-stop: stop both and remove the directory.
set -euo pipefail
. "$(dirname "$0")/common.sh"

DEMO=/tmp/stigg-demo
PGPORT_DEMO=${DEMO_PORT:-5499}

stop() {
	if [ -f "$DEMO/sidecar.pid" ]; then
		kill "$(cat "$DEMO/sidecar.pid")" 2>/dev/null || true
	fi
	if [ -d "$DEMO/data" ]; then
		"${RUN_AS[@]}" "$PG_BINDIR/pg_ctl" -D "$DEMO/data" -m fast stop >/dev/null 2>&1 || true
	fi
	rm -rf "$DEMO"
}

if [ "${1:-start}" = stop ]; then
	stop
	echo "stigg demo stopped"
	exit 0
fi

stop
stage_tree "$DEMO"
SIDECAR_STAGED="$DEMO/test/sidecar/stigg_dev_sidecar.py"
start_sidecar "$DEMO/test/sidecar/demo-catalog.json" "$DEMO/sidecar.log"
echo "$SIDECAR_PID" > "$DEMO/sidecar.pid"

start_cluster "$DEMO" "$PGPORT_DEMO" </dev/null

PSQL=("${RUN_AS[@]}" "$PG_BINDIR/psql" -X -h "$DEMO" -p "$PGPORT_DEMO" -U postgres -d postgres)
"${PSQL[@]}" -q -c "CREATE EXTENSION stigg"
"${PSQL[@]}" -e <<'SQL'
SELECT stigg_has_access('customer-demo-01', 'feature-04-analytics');
SELECT stigg_has_access('customer-demo-01', 'feature-01-templates', requested_usage => 4);
SELECT jsonb_pretty(stigg_get_metered_entitlement('customer-demo-01', 'feature-01-templates', requested_usage => 10));
SELECT jsonb_pretty(stigg_get_numeric_entitlement('customer-demo-01', 'feature-06-max-file-size', resource_id => 'site-01'));
SELECT stigg_get_enum_entitlement('customer-demo-01', 'feature-08-export-formats', 'site-01', ARRAY['csv'])->'hasAccess' AS csv_export;
CREATE TABLE customers (id text PRIMARY KEY, name text);
INSERT INTO customers VALUES ('customer-demo-01', 'Revvenu'), ('customer-enterprise', 'Big Corp');
SELECT c.name, e.feature_id, e.has_access, e.usage_limit, e.current_usage, e.next_reset_date
  FROM customers c, LATERAL stigg_entitlements(c.id) e
 WHERE e.feature_type = 'FEATURE_TYPE_NUMBER' ORDER BY 1, 2;
SELECT stigg_reload_entitlements('customer-demo-01');
SQL

cat <<MSG

The demo is running:
  PostgreSQL    psql -h $DEMO -p $PGPORT_DEMO -U postgres postgres
  dev sidecar   gRPC on localhost:$SIDECAR_GRPC_PORT, control on http://127.0.0.1:$SIDECAR_CONTROL_PORT
                (curl http://127.0.0.1:$SIDECAR_CONTROL_PORT/stats)
  catalog       $DEMO/test/sidecar/demo-catalog.json
Stop it with:   make demo-stop
MSG
