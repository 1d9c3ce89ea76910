#!/usr/bin/env bash
# Runs every test of cherga: the Rust workspace (unit, property, store and
# end-to-end tests), then the Python package against the real binary, and ends
# with one line: "tests: N passed, M failed, K skipped".
#
# PostgreSQL tests run when CHERGA_TEST_POSTGRES_URL is set. Without it they
# skip; libtest has no outcome for that and reports them as passed, so each
# skip also appends a line to the file CHERGA_TEST_SKIPS_FILE names (set here),
# and the closing line counts those as skipped, not passed (with the tests
# libtest ignored and pytest skipped). With CHERGA_TEST_NO_SKIP=1 (CI) such a
# test fails instead of skipping, and any skipped test fails the run.
# Exits non-zero when a test failed or a runner could not run.
set -uo pipefail
cd "$(dirname "$0")"

log=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT
export CHERGA_TEST_SKIPS_FILE="$skips"
status=0

# --no-fail-fast: a failing test binary does not keep the others from running,
# so the closing line counts every test.
echo "== Rust: cargo test --workspace"
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=1

echo "== Python: python/run-tests.sh"
if cargo build -p cherga; then
  CHERGA_BIN="$PWD/target/debug/cherga" python/run-tests.sh 2>&1 | tee -a "$log" || status=1
else
  status=1
fi

# One closing line for both runners. cargo prints a result line per test binary
# ("test result: ok. 11 passed; 0 failed; 0 ignored; ..."), pytest one line at
# the end ("===== 60 passed, 1 skipped in 25.01s ====="); the tests that skipped
# at run time are among cargo's passed, one line each in $skips.
summary=$(awk -v recorded="$(wc -l < "$skips")" '
  function count(suffix,    i) {
    for (i = 2; i <= NF; i++) {
      if ($i ~ "^passed" suffix "$") p += $(i-1)
      if ($i ~ "^(failed|errors?)" suffix "$") f += $(i-1)
      if ($i ~ "^(ignored|skipped)" suffix "$") s += $(i-1)
    }
  }
  /^test result:/ { count(";?") }
  /[0-9]+ (passed|failed).* in [0-9.]+s/ { count(",?") }
  END { printf "tests: %d passed, %d failed, %d skipped\n", p - recorded, f, s + recorded }' "$log")
if [ -s "$skips" ]; then
  echo "skipped at run time, by reason:"
  sed 's/.*: //' "$skips" | sort | uniq -c
fi
echo "$summary"
if [[ ${CHERGA_TEST_NO_SKIP:-0} != 0 && $summary != *", 0 skipped" ]]; then
  echo "test.sh: CHERGA_TEST_NO_SKIP is set and tests were skipped" >&2
  status=1
fi
exit "$status"
