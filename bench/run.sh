#!/usr/bin/env bash
# The side-by-side benchmark in one command (see bench/README.md):
#
#   bench/run.sh            # full: median of 3 runs, 100k tasks, S4 with 2M
#   bench/run.sh --quick    # smoke test, well under a minute after the build
#   bench/run.sh --no-build --quick   # with the binaries already built
#
# Builds cherga and cherga-bench in release mode, starts every peer with the
# settings in bench/peers/*.sh (a peer that cannot run is reported as skipped),
# runs `cherga-bench run` with the arguments given here, writes
# bench/results/latest.{json,md,svg} (quick.* with --quick), and stops what it
# started. Exits non-zero if cherga could not run, failed a run or lost a task
# (with --strict, also if a peer lost one); never because of a speed.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=(cherga null redis nats rabbitmq postgres)
STATE=target/bench/peers

# --no-build uses the binaries already in target/release; every other argument
# goes to cherga-bench.
BUILD=1
ARGS=()
for arg in "$@"; do
    if [ "$arg" = --no-build ]; then BUILD=; else ARGS+=("$arg"); fi
done
if [ -n "$BUILD" ]; then
    cargo build --release -p cherga -p cherga-bench
fi

stop_all() {
    for peer in "${PEERS[@]}"; do
        "bench/peers/$peer.sh" stop || true
    done
}
trap stop_all EXIT

mkdir -p "$STATE"
rm -f "$STATE"/*.peer
for peer in "${PEERS[@]}"; do
    if ! "bench/peers/$peer.sh" start; then
        echo "skip=bench/peers/$peer.sh start failed" > "$STATE/$peer.peer"
    fi
done

target/release/cherga-bench run --peers-dir "$STATE" --out-dir bench/results ${ARGS[@]+"${ARGS[@]}"}
