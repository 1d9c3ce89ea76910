#!/usr/bin/env bash
# The null endpoint: cherga's HTTP stack (axum, same version) parsing the same
# enqueue JSON and answering 201 with a task-shaped body, storing nothing. The
# baseline that shows what HTTP alone costs on this machine.
source "$(dirname "$0")/lib.sh"
PORT=${CHERGA_BENCH_NULL_PORT:-7719}
BIN="$ROOT/target/$PROFILE/cherga-bench"

case "${1:-}" in
start)
    stop_pidfile "$STATE/null.pid"
    if [ ! -x "$BIN" ]; then
        skip null "no $BIN (bench/run.sh builds it)"
        exit 0
    fi
    if ! port_free "$PORT"; then
        skip null "port $PORT is taken"
        exit 0
    fi
    nohup "$BIN" null-server --addr "127.0.0.1:$PORT" > "$STATE/null.log" 2>&1 &
    echo $! > "$STATE/null.pid"
    if ! wait_port 127.0.0.1 "$PORT"; then
        skip null "did not listen on $PORT (see $STATE/null.log)"
        exit 0
    fi
    write_peer null "url=http://127.0.0.1:$PORT" "pid=$(cat "$STATE/null.pid")" \
        "version=axum 0.8 (cherga's HTTP stack)$PROFILE_NOTE" \
        "settings=no storage: parses the enqueue JSON and answers 201"
    ;;
stop)
    stop_pidfile "$STATE/null.pid"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
