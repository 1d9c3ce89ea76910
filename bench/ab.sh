#!/usr/bin/env bash
# A/B of two cherga builds (or one build with other `serve` flags), cherga alone,
# interleaved: each round starts every variant fresh on its own data directory and
# runs the same cells, so a noisy machine slows all variants alike.
#
#   bench/ab.sh NAME=BIN_DIR[:FLAGS] NAME=BIN_DIR[:FLAGS] ...
#   ROUNDS=8 TASKS=50000 CELLS=S1-b100-c4,S2-b100-w8 bench/ab.sh \
#       before=/tmp/old/bin after=target/release "off=target/release:--event-retention off"
#
# With SCHEMA=FILE and SCHEMA_VARIANTS=name,... the named variants' queues get
# FILE as their payload schema (e.g. `SCHEMA=bench/schema-10.json
# SCHEMA_VARIANTS=schema bench/ab.sh plain=target/release schema=target/release`).
# BIN_DIR holds `cherga` (and the first one `cherga-bench`). Prints one line per
# variant, round and cell (tasks/s, p99 ms, lost), then the median per variant
# and cell and its ratio to the first variant's. Writes its reports to
# target/bench/ab/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
TASKS=${TASKS:-50000}
CELLS=${CELLS:-S1-b100-c4,S2-b100-w8}
PORT=${CHERGA_BENCH_PORT:-7790}
OUT=target/bench/ab
mkdir -p "$OUT"
[ $# -ge 1 ] || { sed -n 2,16p "$0"; exit 2; }
BENCH="${1#*=}"; BENCH="${BENCH%%:*}/cherga-bench"
results="$OUT/results.txt"
: > "$results"
for round in $(seq 1 "$ROUNDS"); do
    for variant in "$@"; do
        name=${variant%%=*}; spec=${variant#*=}; bin=${spec%%:*}; flags=""
        [ "$spec" != "$bin" ] && flags=${spec#*:}
        data="$OUT/data"; peers="$OUT/peers-$name"
        rm -rf "$data" "$peers"; mkdir -p "$data" "$peers"
        # shellcheck disable=SC2086 # flags are words
        "$bin/cherga" serve --addr "127.0.0.1:$PORT" --data-dir "$data" --log warn $flags \
            > "$OUT/server-$name.log" 2>&1 &
        pid=$!
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" > /dev/null && break; sleep 0.1; done
        printf 'url=http://127.0.0.1:%s\npid=%s\nversion=%s\nsettings=%s\n' "$PORT" "$pid" "$name" "$flags" \
            > "$peers/cherga.peer"
        schema=""
        case ",${SCHEMA_VARIANTS:-}," in *",$name,"*) schema=${SCHEMA:?SCHEMA_VARIANTS needs SCHEMA} ;; esac
        CHERGA_BENCH_PAYLOAD_SCHEMA=$schema "$BENCH" run --peers-dir "$peers" --out-dir "$OUT" --name "$name-$round" --systems cherga \
            --scenarios "$CELLS" --runs 1 --tasks "$TASKS" --warmup 5000 --fsync-dir "$OUT" \
            > "$OUT/$name-$round.log" 2>&1
        kill "$pid"; wait "$pid" 2> /dev/null || true
        python3 - "$OUT/$name-$round.json" "$name" "$round" << 'PY' | tee -a "$results"
import json, sys
report = json.load(open(sys.argv[1]))
for row in report["rows"]:
    for cell in row["cells"]:
        s = cell.get("summary")
        if s:
            print(sys.argv[2], sys.argv[3], row["id"], round(s["tasks_per_second"]["median"]),
                  "p99", s["p99_ms"]["median"], "lost", s["lost"])
PY
    done
done
python3 - "$results" "${1%%=*}" << 'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, _, cell, tps = line.split()[:4]
    runs[(name, cell)].append(int(tps))
base = sys.argv[2]
for (name, cell), values in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0] != base, kv[0][0])):
    median = statistics.median(values)
    ratio = median / statistics.median(runs[(base, cell)])
    print(f"{cell} {name}: median {median:.0f} tasks/s over {len(values)} rounds, x{ratio:.3f} of {base}")
PY
