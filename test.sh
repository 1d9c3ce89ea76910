#!/usr/bin/env bash
# Runs every test of cherga: the Rust workspace (unit, property, store and
# end-to-end tests), then the Python package against the real binary.
# Postgres tests run when CHERGA_TEST_POSTGRES_URL is set and say "skipped" when not.
set -euo pipefail
cd "$(dirname "$0")"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== Rust: cargo test --workspace"
cargo test --workspace 2>&1 | tee "$log"

echo "== Python: python/run-tests.sh"
cargo build -p cherga
CHERGA_BIN="$PWD/target/debug/cherga" python/run-tests.sh 2>&1 | tee -a "$log"

# One closing line for both runners. cargo prints a result line per test binary
# ("test result: ok. 11 passed; 0 failed; ..."), pytest one line at the end
# ("===== 60 passed in 25.01s =====").
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
  /[0-9]+ (passed|failed).* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed,?$/) p += $(i-1); if ($i ~ /^failed,?$/) f += $(i-1) } }
  END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
