#!/usr/bin/env bash
# PostgreSQL for the benchmark: the machine's server on 127.0.0.1:5432 (trust
# auth, database test, user postgres or root), started here only if it is down.
# It must run with fsync = on; the load generator sets synchronous_commit = on
# on every connection, so each commit returns after its WAL flush.
source "$(dirname "$0")/lib.sh"
HOST=127.0.0.1
PORT=${CHERGA_BENCH_POSTGRES_PORT:-5432}
DB=${CHERGA_BENCH_POSTGRES_DB:-test}

q() {
    psql -X -h "$HOST" -p "$PORT" -U "$USER_NAME" -d "$DB" -Atc "$1" 2> /dev/null
}

find_user() {
    for USER_NAME in postgres root; do
        q 'select 1' > /dev/null && return 0
    done
    return 1
}

case "${1:-}" in
start)
    if ! command -v psql > /dev/null; then
        skip postgres "psql is not installed"
        exit 0
    fi
    if ! find_user && command -v pg_ctlcluster > /dev/null && [ -d /etc/postgresql ]; then
        echo "postgres: not answering; starting the local cluster" >&2
        version=$(ls /etc/postgresql | sort -n | tail -1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
        echo "$version" > "$STATE/postgres.started-here"
        sleep 1
    fi
    if ! find_user; then
        skip postgres "no PostgreSQL at $HOST:$PORT/$DB for user postgres or root"
        exit 0
    fi
    if [ "$(q 'show fsync')" != on ]; then
        skip postgres "the server runs with fsync = off: not durable"
        exit 0
    fi
    data_dir=$(q 'show data_directory')
    pid=$(head -1 "$data_dir/postmaster.pid" 2> /dev/null || true)
    write_peer postgres "url=postgresql://$USER_NAME@$HOST:$PORT/$DB" "pid=$pid" \
        "version=$(q 'show server_version')" \
        "settings=fsync=$(q 'show fsync'), synchronous_commit=on (per session), wal_sync_method=$(q 'show wal_sync_method'); one transaction per enqueue, batch insert, lease (UPDATE ... FOR UPDATE SKIP LOCKED) and ack"
    ;;
stop)
    if [ -f "$STATE/postgres.started-here" ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(cat "$STATE/postgres.started-here")" main stop >&2 || true
        rm -f "$STATE/postgres.started-here"
    fi
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
