#!/usr/bin/env bash
# Try pgwarden in one command: installs what is missing, builds, starts a
# throwaway PostgreSQL 15 cluster and pgwarden in front of it, and prints the
# psql line to connect through the proxy. Ctrl-C stops both and deletes the
# cluster.
#
#   bash scripts/demo.sh            # everything
#   PGW_DEMO_NO_BUILD=1 bash scripts/demo.sh   # skip install-deps and build
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ -z "${PGW_DEMO_NO_BUILD:-}" ]; then
    bash scripts/install-deps.sh
    bash scripts/build.sh
fi

PG_BIN=${PGW_PG_BIN:-/usr/lib/postgresql/15/bin}
PGWARDEN=${PGW_BINARY:-$REPO/build/pgwarden}
[ -x "$PGWARDEN" ] || { echo "demo: $PGWARDEN not found; run scripts/build.sh" >&2; exit 1; }

# Audit events go to the file sink (the embedded default): one JSON line per
# event, kept after the demo stops. PGW_DEMO_AUDIT=- prints them on stdout.
AUDIT_FILE=${PGW_DEMO_AUDIT:-$REPO/demo-audit.jsonl}
AUDIT_ARGS=(--audit-file "$AUDIT_FILE")

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

TMP=$(mktemp -d /tmp/pgwarden-demo.XXXXXX)
chmod 755 "$TMP"
PGDATA="$TMP/data"
PGSOCK="$TMP/pgsock"
mkdir -p "$PGSOCK"

# PostgreSQL refuses to run as root: as root, run it as the postgres user.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    chown -R postgres: "$TMP"
    as_pg=(runuser -u postgres --)
fi

PROXY_PID=
cleanup() {
    trap - EXIT INT TERM
    echo
    echo "demo: stopping"
    if [ -n "$PROXY_PID" ] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    if [ -f "$PGDATA/postmaster.pid" ]; then
        "${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
    echo "demo: removed $TMP"
}
trap cleanup EXIT INT TERM

PGPORT=$(free_port)
PROXY_PORT=$(free_port)
while [ "$PROXY_PORT" = "$PGPORT" ]; do PROXY_PORT=$(free_port); done

echo "demo: creating a PostgreSQL 15 cluster in $PGDATA"
"${as_pg[@]}" "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >/dev/null
cat >> "$PGDATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGSOCK'
fsync = off
CONF
"${as_pg[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$TMP/postgresql.log" -w start >/dev/null
echo "demo: PostgreSQL listens on 127.0.0.1:$PGPORT and $PGSOCK"

"$PGWARDEN" --listen "127.0.0.1:$PROXY_PORT" --upstream "127.0.0.1:$PGPORT" \
    --log-level info --drain-timeout 5 ${AUDIT_ARGS[@]+"${AUDIT_ARGS[@]}"} 2> >(sed 's/^/pgwarden: /' >&2) &
PROXY_PID=$!

for _ in $(seq 100); do
    if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -d postgres; then break; fi
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "demo: pgwarden exited" >&2; exit 1; }
    sleep 0.1
done

CONNINFO="host=127.0.0.1 port=$PROXY_PORT user=postgres dbname=postgres"
echo "demo: a first query through pgwarden:"
"$PG_BIN/psql" -X "$CONNINFO" -c "SELECT version()"

cat <<MSG

  pgwarden is running (pid $PROXY_PID) on 127.0.0.1:$PROXY_PORT, in front of
  PostgreSQL 15 on 127.0.0.1:$PGPORT. Connect through it with:

    psql "$CONNINFO"

  or pgbench:  $PG_BIN/pgbench -h 127.0.0.1 -p $PROXY_PORT -U postgres -i postgres

  Every statement is audited, one JSON line per event, in:

    $AUDIT_FILE      (tail -f it while you type)

  Press Ctrl-C to stop both and delete $TMP.

MSG

wait "$PROXY_PID"
