#!/bin/bash
# make check: pg_regress on a temporary instance against the dev sidecar with
# the demo catalog, then the TAP tests (each starts its own sidecars).
set -uo pipefail
. "$(dirname "$0")/common.sh"

WORK=$(mktemp -d /tmp/stigg-check.XXXXXX)
stage_tree "$WORK"
SIDECAR_STAGED="$WORK/test/sidecar/stigg_dev_sidecar.py"
trap stop_sidecar EXIT
status=0

echo "== pg_regress"
start_sidecar "$WORK/test/sidecar/demo-catalog.json" "$WORK/sidecar-regress.log" || exit 1
cat > "$WORK/regress.conf" <<CONF
stigg.sidecar_host = 'localhost'
stigg.sidecar_port = $SIDECAR_GRPC_PORT
CONF
chown "$CLUSTER_USER" "$WORK/regress.conf"
(cd "$WORK" && "${RUN_AS[@]}" "$PGXS_DIR/src/test/regress/pg_regress" \
	--temp-instance="$WORK/tmp_check" --temp-config="$WORK/regress.conf" \
	--bindir="$PG_BINDIR" --inputdir="$WORK" --outputdir="$WORK" \
	--port=65432 $REGRESS) || {
	status=1
	[ -f "$WORK/regression.diffs" ] && cat "$WORK/regression.diffs"
}
stop_sidecar

echo "== TAP"
(cd "$WORK/test" && "${RUN_AS[@]}" env TESTDIR="$WORK/test" PATH="$PG_BINDIR:$PATH" \
	PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
	prove -I "$PGXS_DIR/src/test/perl" -I "$WORK/test/perl" ${PROVE_FLAGS:-} \
	${PROVE_TESTS:-t/*.pl}) || {
	status=1
	echo "TAP logs are in $WORK/test/tmp_check/log" >&2
}

[ $status -eq 0 ] && rm -rf "$WORK"
exit $status
