#!/usr/bin/env bash
# API fuzzing: schemathesis generates requests from cherga's own OpenAPI document
# (/v1/openapi.json, generated from the code) and sends them to the real binary:
# once with authentication on and an admin token, once with it off (the
# default loopback server, whose document asks for no token). It runs every
# check on every answer (status codes, content types, bodies, headers; no 5xx).
# Afterwards each server must still be alive and must not have logged a panic.
#
#   scripts/schemathesis.sh                # both runs, the default budget
#   scripts/schemathesis.sh on             # only with auth on (or: off)
#   EXAMPLES=500 scripts/schemathesis.sh   # more cases per operation
#   SEED=1 scripts/schemathesis.sh         # reproduce a run
#
# The servers run with a 5 s request timeout, so a long poll waits at most 4 s
# (wait_ms up to 60000 is still valid and accepted): the budget goes to
# requests, not to waiting on empty queues.
#
# schemathesis comes from PyPI into a virtualenv of its own under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

MODES="${1:-both}"
case "$MODES" in
  both) MODES="on off" ;;
  on | off) ;;
  *) echo "usage: $0 [on|off|both]" >&2; exit 2 ;;
esac
EXAMPLES="${EXAMPLES:-100}"
VENV=target/schemathesis-venv
if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis>=4.3,<5"
fi

cargo build -p cherga
BIN="$PWD/target/debug/cherga"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" keygen --kid schemathesis --out "$WORK/keys.json" 2>/dev/null
TOKEN="$("$BIN" token issue --keys "$WORK/keys.json" --sub schemathesis --scope admin --ttl 2h)"

# Runs schemathesis against a server with auth on or off ($1); returns its exit
# status, and fails the script at once if the server died or panicked.
run() {
  local mode="$1" dir="$WORK/$1"
  local -a serve_args=() auth_header=()
  mkdir -p "$dir"
  if [ "$mode" = on ]; then
    # Failed-auth limiting off: schemathesis sends requests without the token
    # on purpose (to check they are refused), and must not lock itself out.
    serve_args=(--auth-keys "$WORK/keys.json" --max-auth-failures 0)
    auth_header=(--header "Authorization: Bearer $TOKEN")
  fi
  "$BIN" serve --addr 127.0.0.1:0 --data-dir "$dir/data" --request-timeout 5s --log warn \
    "${serve_args[@]}" >"$dir/stdout" 2>"$dir/stderr" &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q "listening on" "$dir/stdout" 2>/dev/null && break
    sleep 0.1
  done
  local base
  base="$(sed -n 's/^listening on //p' "$dir/stdout")"
  [ -n "$base" ] || { echo "cherga did not start"; cat "$dir/stderr"; exit 1; }
  echo "== auth $mode: cherga at $base; schemathesis $("$VENV/bin/schemathesis" --version | awk '{print $NF}')"

  local status=0 attempt
  # A crash of schemathesis itself (its summary lists a "Runtime Error" and no
  # failure: a bug of the tool, e.g. hypothesis's "AST constructor recursion
  # depth mismatch" on Python 3.11, not a finding about cherga) is run once
  # more, with a new seed unless SEED is set. Any failure fails at once.
  for attempt in 1 2; do
    status=0
    # /v1/events answers an endless event stream by default (its JSON pages are
    # checked by the server's own tests); every other operation is fuzzed.
    "$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$base/v1/openapi.json" \
      "${auth_header[@]}" \
      --checks all \
      --exclude-checks use_after_free \
      --exclude-path /v1/events \
      --max-response-time 10 \
      --max-examples "$EXAMPLES" \
      --workers 2 \
      --request-timeout 15 \
      --no-color \
      --report junit --report-dir "$dir/report" \
      --generation-database "$PWD/target/schemathesis-examples-$mode" \
      ${SEED:+--seed "$SEED"} 2>&1 | tee "$dir/run-$attempt.log" || status=$?
    if [ "$status" -ne 0 ] && [ "$attempt" = 1 ] && grep -q "Runtime Error" "$dir/run-$attempt.log" \
      && ! grep -q "Failures:" "$dir/run-$attempt.log"; then
      echo "== auth $mode: schemathesis itself crashed (no failure found in cherga); running it once more"
      continue
    fi
    break
  done

  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "FAIL: cherga (auth $mode) is no longer running"; cat "$dir/stderr"; exit 1
  fi
  if grep -q "panicked" "$dir/stderr"; then
    echo "FAIL: cherga (auth $mode) logged a panic"; grep -A3 "panicked" "$dir/stderr"; exit 1
  fi
  curl -sf "$base/healthz" >/dev/null || { echo "FAIL: /healthz does not answer (auth $mode)"; exit 1; }
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  echo "== auth $mode: cherga still healthy after the run; schemathesis exit status $status"
  return "$status"
}

overall=0
for mode in $MODES; do
  run "$mode" || overall=$?
done
exit "$overall"
