#!/usr/bin/env bash
# A private PostgreSQL 15 cluster for pg_billing's demo, tests and benchmarks.
# Usage: scripts/cluster.sh start|stop|status|dir|port
# The data directory is project-local (.cluster/) and owned by the postgres user (initdb refuses
# root); it listens on a private port and socket directory so it never clashes with another server.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=/usr/lib/postgresql/15/bin
PORT=${PG_BILLING_PORT:-54329}
DIR=${PG_BILLING_CLUSTER_DIR:-$ROOT/.cluster}
as_postgres() { if [ "$(id -un)" = postgres ]; then "$@"; else sudo -u postgres "$@"; fi; }

mkdir -p "$DIR"
chown postgres "$DIR" 2>/dev/null || true
if ! as_postgres test -w "$DIR"; then
  # The checkout lies where the postgres user cannot reach (e.g. under /root): use /tmp instead.
  DIR=/tmp/pg_billing-cluster-$(echo "$ROOT" | md5sum | cut -c1-8)
  mkdir -p "$DIR"; chown postgres "$DIR"
fi
DATA=$DIR/data
SOCK=$DIR/sock

case "${1:-status}" in
  start)
    if [ ! -f "$DATA/PG_VERSION" ]; then
      as_postgres "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log"
      cat >>"$DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 256MB
fsync = on
CONF
    fi
    # Settings that may change between versions of this script live in their own file, rewritten
    # on every start; a running server whose file changed is restarted (shared_preload_libraries).
    # pg_cron runs jobs in background workers, from database postgres (cron.schedule_in_database).
    conf=$(printf '%s\n' "shared_preload_libraries = 'pg_cron'" "cron.database_name = 'postgres'" \
      "cron.use_background_workers = on" "max_worker_processes = 24")
    grep -q "include_if_exists = 'pg_billing.conf'" "$DATA/postgresql.conf" 2>/dev/null \
      || echo "include_if_exists = 'pg_billing.conf'" | as_postgres tee -a "$DATA/postgresql.conf" >/dev/null
    changed=0
    if [ "$(as_postgres cat "$DATA/pg_billing.conf" 2>/dev/null)" != "$conf" ]; then
      echo "$conf" | as_postgres tee "$DATA/pg_billing.conf" >/dev/null
      changed=1
    fi
    as_postgres mkdir -p "$SOCK"
    if as_postgres "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      [ $changed = 1 ] && as_postgres "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 -m fast restart >/dev/null
    else
      as_postgres "$PGBIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 start >/dev/null
    fi
    echo "cluster running: port $PORT, socket $SOCK"
    ;;
  stop)
    if [ -f "$DATA/PG_VERSION" ] && as_postgres "$PGBIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
      as_postgres "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
      echo "cluster stopped"
    else
      echo "cluster not running"
    fi
    ;;
  status) as_postgres "$PGBIN/pg_ctl" -D "$DATA" status || true ;;
  dir) echo "$DIR" ;;
  port) echo "$PORT" ;;
  *) echo "usage: $0 start|stop|status|dir|port" >&2; exit 2 ;;
esac
