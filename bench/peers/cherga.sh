#!/usr/bin/env bash
# cherga for the benchmark: target/profiling/cherga serve on its own port with a
# fresh data dir. Its durability is built in and not configurable: SQLite WAL,
# fdatasync of the WAL after every commit and before any 2xx (group commit).
source "$(dirname "$0")/lib.sh"
PORT=${CHERGA_BENCH_PORT:-7710}
BIN="$ROOT/target/$PROFILE/cherga"

case "${1:-}" in
start)
    stop_pidfile "$STATE/cherga.pid"
    if [ ! -x "$BIN" ]; then
        skip cherga "no $BIN (bench/run.sh builds it)"
        exit 0
    fi
    if ! port_free "$PORT"; then
        skip cherga "port $PORT is taken"
        exit 0
    fi
    rm -rf "$STATE/cherga-data"
    mkdir -p "$STATE/cherga-data"
    nohup "$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$STATE/cherga-data" --log warn \
        > "$STATE/cherga.log" 2>&1 &
    echo $! > "$STATE/cherga.pid"
    if ! wait_port 127.0.0.1 "$PORT"; then
        skip cherga "did not listen on $PORT (see $STATE/cherga.log)"
        exit 0
    fi
    rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo "+changes" || true)
    write_peer cherga "url=http://127.0.0.1:$PORT" "pid=$(cat "$STATE/cherga.pid")" \
        "version=$("$BIN" --version | awk '{print $2}') ($rev$dirty)$PROFILE_NOTE" \
        "settings=embedded SQLite store, WAL, fdatasync of the WAL before every 2xx (group commit, synchronous=NORMAL); HTTP/1.1 keep-alive, one connection per client, Prefer: return=minimal (short answers to enqueues and acks)"
    ;;
stop)
    stop_pidfile "$STATE/cherga.pid"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
