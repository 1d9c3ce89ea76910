#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each (default 60 s), with
# AddressSanitizer, and stops at the first crash. Findings land in
# fuzz/artifacts/<target>/; fixed ones are kept in fuzz/regressions/<target>/
# and replayed first, so a fix that regresses fails at once.
#
#   fuzz/run.sh              # every target, 60 s each
#   fuzz/run.sh 600          # every target, 10 minutes each
#   fuzz/run.sh 60 tokens    # one target
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only
# flags (-Zsanitizer); on a stable toolchain RUSTC_BOOTSTRAP=1 lets them through,
# which is fine for a test build and never used for what we ship.
set -euo pipefail
cd "$(dirname "$0")"

SECONDS_EACH="${1:-60}"
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(request_bodies query_strings tokens http_router)
fi
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz"; exit 1; }
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

for target in "${TARGETS[@]}"; do
  mkdir -p "corpus/$target"
  if compgen -G "regressions/$target/*" >/dev/null; then
    echo "== $target: replaying regressions"
    cargo fuzz run -O "$target" regressions/"$target"/* -- -runs=0
  fi
  echo "== $target: fuzzing for ${SECONDS_EACH}s"
  cargo fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|thread)|panicked|ERROR|artifact" || true
  # grep drops libFuzzer's progress lines; a crash still fails the run.
  if compgen -G "artifacts/$target/crash-*" >/dev/null || compgen -G "artifacts/$target/oom-*" >/dev/null; then
    echo "FAIL: $target found a crash: $(ls artifacts/"$target")"
    exit 1
  fi
done
echo "== no crashes in ${#TARGETS[@]} targets x ${SECONDS_EACH}s"
