# Shared by check.sh, demo.sh and bench/run.sh: where things are, and how to
# run a command as the user that owns test clusters (PostgreSQL refuses to
# run as root, so as root that is "postgres").

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(cd "$(dirname "$("$PG_CONFIG" --pgxs)")/../.." && pwd)
PYTHON=/usr/bin/python3
SIDECAR="$SRC/test/sidecar/stigg_dev_sidecar.py"

if [ "$(id -u)" -eq 0 ]; then
	RUN_AS=(runuser -u postgres --)
	CLUSTER_USER=postgres
else
	RUN_AS=()
	CLUSTER_USER=$(id -un)
fi

# A copy of what the tests read, in a directory the cluster user owns: the
# checkout itself may sit where that user cannot read (/root).
stage_tree() {
	local dest=$1
	mkdir -p "$dest"
	cp -r "$SRC/sql" "$SRC/expected" "$SRC/test" "$dest/"
	[ -d "$SRC/bench" ] && cp -r "$SRC/bench" "$dest/"
	chown -R "$CLUSTER_USER" "$dest"
}

# Starts a dev sidecar as the cluster user; sets SIDECAR_GRPC_PORT,
# SIDECAR_CONTROL_PORT and SIDECAR_PID.
start_sidecar() {
	local catalog=$1 log=$2
	local line
	line=$("${RUN_AS[@]}" "$PYTHON" "$SIDECAR_STAGED" --catalog "$catalog" \
		--daemon --log-file "$log")
	SIDECAR_GRPC_PORT=$(sed -n 's/.*grpc_port=\([0-9]*\).*/\1/p' <<<"$line")
	SIDECAR_CONTROL_PORT=$(sed -n 's/.*control_port=\([0-9]*\).*/\1/p' <<<"$line")
	SIDECAR_PID=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line")
	[ -n "$SIDECAR_GRPC_PORT" ] || { echo "dev sidecar did not start: $line" >&2; return 1; }
}

stop_sidecar() {
	[ -n "${SIDECAR_PID:-}" ] && kill "$SIDECAR_PID" 2>/dev/null || true
	SIDECAR_PID=
}

# Creates and starts a throwaway cluster in DIR/data on PORT, reached by its
# Unix socket in DIR, pointed at the dev sidecar started by start_sidecar;
# further postgresql.conf lines come on standard input.
start_cluster() {
	local dir=$1 port=$2
	"${RUN_AS[@]}" "$PG_BINDIR/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
	{
		cat <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$dir'
stigg.sidecar_host = 'localhost'
stigg.sidecar_port = $SIDECAR_GRPC_PORT
CONF
		cat
	} >> "$dir/data/postgresql.conf"
	"${RUN_AS[@]}" "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null
}
