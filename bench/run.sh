#!/usr/bin/env bash
# The side-by-side benchmark in one command (see bench/README.md):
#
#   bench/run.sh            # full: median of 3 runs, 100k tasks, S4 with 2M
#   bench/run.sh --quick    # smoke test, well under a minute after the build
#   bench/run.sh --no-build --quick   # with the binaries already built
#   bench/run.sh --quick --debug      # smoke test on debug builds (what CI runs)
#
# Builds cherga and cherga-bench in the `profiling` profile (the release build
# with symbols, so `perf` can profile a cell; with --debug in the dev profile:
# its figures mean nothing, its runs check the same things), starts
# every peer with the settings in bench/peers/*.sh (a peer that cannot run is
# reported as skipped), runs `cherga-bench run` with the arguments given here,
# writes bench/results/latest.{json,md,svg} (quick.* with --quick), and stops
# what it started. Exits non-zero if cherga could not run, failed a run or lost
# a task (with --strict, also if a peer lost one); never because of a speed.
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=(cherga null redis nats rabbitmq postgres)
STATE=target/bench/peers

# --no-build uses the binaries already in target/profiling (target/debug with
# --debug); every other argument goes to cherga-bench.
BUILD=1
PROFILE=profiling
ARGS=()
for arg in "$@"; do
    case "$arg" in
    --no-build) BUILD= ;;
    --debug) PROFILE=debug ;;
    *) ARGS+=("$arg") ;;
    esac
done
if [ -n "$BUILD" ]; then
    if [ "$PROFILE" = profiling ]; then
        cargo build --profile profiling -p cherga -p cherga-bench
    else
        cargo build -p cherga -p cherga-bench
    fi
fi
# cherga.sh and null.sh start the binaries of this profile.
export CHERGA_BENCH_PROFILE=$PROFILE

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

"target/$PROFILE/cherga-bench" run --peers-dir "$STATE" --out-dir bench/results ${ARGS[@]+"${ARGS[@]}"}
