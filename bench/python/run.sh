#!/usr/bin/env bash
# The Python worker and producer benchmark (see bench/python/README.md):
#
#   bench/python/run.sh [cherga_worker.py args...]    # e.g. --tasks 20000 --threads 8
#
# Starts cherga (target/release/cherga, else target/debug/cherga; or
# $CHERGA_BIN) on a free port with a fresh data directory, runs
# bench/python/cherga_worker.py with python/.venv's Python (or $PYTHON) once
# per --mode (thread, then async), and stops the server. With $PEERS_PYTHON (a
# Python with dramatiq[redis] and celery installed) it also runs peers.py for
# Dramatiq on Redis ($REDIS_URL) and Celery on RabbitMQ ($AMQP_URL).
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${CHERGA_BIN:-}"
if [ -z "$bin" ]; then
    bin=target/release/cherga
    [ -x "$bin" ] || bin=target/debug/cherga
fi
[ -x "$bin" ] || { echo "run.sh: no cherga binary; cargo build -p cherga (--release)" >&2; exit 1; }
python="${PYTHON:-python/.venv/bin/python}"

dir="$(mktemp -d)"
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin" serve --addr "127.0.0.1:$port" --data-dir "$dir/data" --log warn 2>"$dir/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done
echo "cherga: $bin ($("$bin" --version 2>/dev/null || echo '?')), Python: $("$python" -V)"
for mode in thread async; do
    "$python" bench/python/cherga_worker.py --url "http://127.0.0.1:$port" --mode "$mode" "$@"
done
if [ -n "${PEERS_PYTHON:-}" ]; then
    "$PEERS_PYTHON" bench/python/peers.py dramatiq --redis "${REDIS_URL:-redis://127.0.0.1:6379/15}"
    "$PEERS_PYTHON" bench/python/peers.py celery --broker "${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}" 2>&1 |
        grep -o '{"system".*'
fi
