# Shared helpers of the peer scripts: where state lives, how a peer is described
# to cherga-bench, and how processes this project started are stopped.
#
# Every peer script takes `start` or `stop`. `start` writes
# $STATE/<name>.peer with key=value lines (url, pid, version, settings) or a
# single `skip=<reason>` line when the peer cannot run here; it never fails the
# whole benchmark for a missing peer. `stop` ends only what `start` started,
# by the pid it recorded.

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${CHERGA_BENCH_STATE:-$ROOT/target/bench/peers}"
mkdir -p "$STATE"
# The cargo profile whose binaries cherga.sh and null.sh start (bench/run.sh
# sets it), and what their version line adds when it is not the optimised
# build (`profiling`: the release build with symbols).
PROFILE="${CHERGA_BENCH_PROFILE:-profiling}"
PROFILE_NOTE=$([ "$PROFILE" = profiling ] || echo ", $PROFILE build")

# write_peer NAME key=value...
write_peer() {
    local name=$1
    shift
    printf '%s\n' "$@" > "$STATE/$name.peer.tmp"
    mv "$STATE/$name.peer.tmp" "$STATE/$name.peer"
    echo "$name: ready ($(grep '^url=' "$STATE/$name.peer" | cut -d= -f2-))" >&2
}

# skip NAME REASON
skip() {
    printf 'skip=%s\n' "$2" > "$STATE/$1.peer"
    echo "$1: skipped: $2" >&2
}

# wait_port HOST PORT [TENTHS_OF_A_SECOND]
wait_port() {
    local tries=${3:-100}
    for _ in $(seq 1 "$tries"); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stop_pidfile FILE: ends the process whose pid FILE holds (SIGTERM, then
# SIGKILL after 15 s), then removes FILE.
stop_pidfile() {
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}
