#!/usr/bin/env bash
# API fuzzing: schemathesis generates requests from cherga's own OpenAPI document
# (/v1/openapi.json, generated from the code) and sends them to the real binary,
# with authentication on and an admin token. It checks every answer against the
# document (status codes, content types, bodies, headers) and that no request
# gets a 5xx. Afterwards the server must still be alive and must not have
# logged a panic.
#
#   scripts/schemathesis.sh                # the default budget
#   EXAMPLES=500 scripts/schemathesis.sh   # more cases per operation
#   SEED=1 scripts/schemathesis.sh         # reproduce a run
#
# schemathesis comes from PyPI into a virtualenv of its own under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

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

# Failed-auth limiting off: schemathesis sends requests without the token on
# purpose (to check they are refused), and must not lock itself out.
"$BIN" serve --addr 127.0.0.1:0 --data-dir "$WORK/data" --auth-keys "$WORK/keys.json" \
  --max-auth-failures 0 --log warn >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$WORK/stdout" 2>/dev/null && break
  sleep 0.1
done
BASE="$(sed -n 's/^listening on //p' "$WORK/stdout")"
[ -n "$BASE" ] || { echo "cherga did not start"; cat "$WORK/stderr"; exit 1; }
echo "== cherga at $BASE; schemathesis $("$VENV/bin/schemathesis" --version | awk '{print $NF}')"

status=0
"$VENV/bin/schemathesis" --config-file scripts/schemathesis.toml run "$BASE/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --exclude-checks use_after_free \
  --max-response-time 65 \
  --max-examples "$EXAMPLES" \
  --workers 2 \
  --request-timeout 70 \
  --no-color \
  --report junit --report-dir "$WORK/report" \
  --generation-database "$PWD/target/schemathesis-examples" \
  ${SEED:+--seed "$SEED"} || status=$?

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
  echo "FAIL: cherga is no longer running"; cat "$WORK/stderr"; exit 1
fi
if grep -q "panicked" "$WORK/stderr"; then
  echo "FAIL: cherga logged a panic"; grep -A3 "panicked" "$WORK/stderr"; exit 1
fi
curl -sf "$BASE/healthz" >/dev/null || { echo "FAIL: /healthz does not answer"; exit 1; }
echo "== cherga still healthy after the run; schemathesis exit status $status"
exit "$status"
