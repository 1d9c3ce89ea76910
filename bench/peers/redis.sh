#!/usr/bin/env bash
# A second, durable redis-server for the benchmark, on its own port and data
# dir (the machine's Redis on 6379 keeps nothing on disk and is left alone):
# appendonly yes + appendfsync always, so every write is in the AOF and fsynced
# before Redis replies; RDB snapshots off.
source "$(dirname "$0")/lib.sh"
PORT=${CHERGA_BENCH_REDIS_PORT:-6390}

case "${1:-}" in
start)
    stop_pidfile "$STATE/redis.pid"
    if ! command -v redis-server > /dev/null; then
        skip redis "redis-server is not installed (apt-get install redis-server)"
        exit 0
    fi
    if ! port_free "$PORT"; then
        skip redis "port $PORT is taken"
        exit 0
    fi
    rm -rf "$STATE/redis-data"
    mkdir -p "$STATE/redis-data"
    redis-server --port "$PORT" --bind 127.0.0.1 --dir "$STATE/redis-data" \
        --appendonly yes --appendfsync always --save "" \
        --daemonize yes --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log"
    if ! wait_port 127.0.0.1 "$PORT"; then
        skip redis "did not listen on $PORT (see $STATE/redis.log)"
        exit 0
    fi
    for _ in $(seq 1 50); do [ -s "$STATE/redis.pid" ] && break; sleep 0.1; done
    write_peer redis "url=redis://127.0.0.1:$PORT/" "pid=$(cat "$STATE/redis.pid")" \
        "version=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
        "settings=appendonly yes, appendfsync always, save \"\" (no RDB); streams: XADD, XREADGROUP, XACK"
    ;;
stop)
    stop_pidfile "$STATE/redis.pid"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
