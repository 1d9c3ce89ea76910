#!/usr/bin/env bash
# The README's first minutes, as a new user lives them, in a fresh clone of
# this repository's HEAD (commit what you want tested):
#
#   1. the opening block's first command, the server, exactly as written, in
#      the background until /healthz answers on 127.0.0.1:7700;
#   2. its second, the tests: .ci/run must run exactly that command (running
#      it here as well would double the time of CI, which runs on a clean clone);
#   3. "Five minutes with curl": each command as written, with TASK_ID and
#      LEASE_TOKEN replaced by what the answers before it said, and each answer
#      checked (status code and key fields);
#   4. "The same from the command line", likewise;
#   5. afterwards the clone has nothing untracked (`cherga-data/` is ignored).
#
# Commands are read from README.md, never copied here, so the README is tested
# as it reads; a section that gains or loses a command fails here until the
# checks below follow it. The clone's target/ is a link to target/docs-test/ of
# this checkout, so a later run rebuilds only the workspace's own crates, not
# their dependencies (the first run is a whole release build: minutes on two
# cores). Not this checkout's target/ itself: cargo judges a workspace crate
# fresh by the times of its files, and a build from the clone's newer copies
# would then pass for a build of this checkout's uncommitted changes.
#
# Needs git, curl, jq and port 7700 free.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for tool in git curl jq setsid; do
  command -v "$tool" >/dev/null || { echo "docs-test: $tool is missing" >&2; exit 1; }
done

work=$(mktemp -d)
clone="$work/clone"
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then
    # The server command runs in a process group of its own (setsid): cargo and
    # the cherga it started.
    kill -TERM -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "docs-test: FAILED: $*" >&2
  if [ -s "$work/serve.log" ]; then
    echo "---- output of the server command (last 40 lines) ----" >&2
    tail -n 40 "$work/serve.log" >&2
  fi
  exit 1
}

git clone --quiet "$root" "$clone"
mkdir -p "$root/target/docs-test"
ln -s "$root/target/docs-test" "$clone/target"
cd "$clone"
echo "== docs test in a fresh clone of $(git rev-parse --short HEAD)"

# The commands of a ```sh block of README.md, one per line: continuation lines
# joined, comment lines and blank lines dropped, a trailing "  # comment" cut
# (the README's commands hold no "#" of their own). $1 picks the block: the
# first ```sh block after the first line that starts with $1 ("" = the first).
commands() {
  awk -v after="$1" '
    !started && (after == "" || index($0, after) == 1) { started = 1 }
    started && !inside && /^```sh$/ { inside = 1; next }
    inside && /^```$/ { exit }
    inside {
      line = $0
      if (line ~ /^[[:space:]]*#/ || line ~ /^[[:space:]]*$/) next
      sub(/[[:space:]]+#[[:space:]].*$/, "", line)
      if (line ~ /\\$/) { sub(/\\$/, "", line); pending = pending line; next }
      print pending line
      pending = ""
    }' README.md
}

mapfile -t opening < <(commands "")
[ "${#opening[@]}" -eq 2 ] || fail "the README's opening block has ${#opening[@]} commands, expected 2: ${opening[*]}"
serve_cmd=${opening[0]}
test_cmd=${opening[1]}

echo "== the tests: $test_cmd"
grep -qxF "$test_cmd" .ci/run || fail ".ci/run does not run the README's test command as written: $test_cmd"
echo "   .ci/run runs it"

echo "== the server: $serve_cmd"
if curl -s -o /dev/null --max-time 2 http://127.0.0.1:7700/healthz; then
  fail "something already answers on 127.0.0.1:7700"
fi
started=$SECONDS
setsid bash -c "$serve_cmd" > "$work/serve.log" 2>&1 &
server_pid=$!
until curl -s -o /dev/null --max-time 2 http://127.0.0.1:7700/healthz; do
  kill -0 "$server_pid" 2>/dev/null || fail "the server command exited before /healthz answered"
  [ $((SECONDS - started)) -lt 1800 ] || fail "no answer on /healthz after 30 minutes"
  sleep 1 # polling the server's start, bounded above
done
echo "   /healthz answers after $((SECONDS - started)) s (build included)"
[ -x target/release/cherga ] || fail "the README says the binary is target/release/cherga; it is not there"

# Every curl of the walkthrough prints its status code on a line of its own
# after the body: a curlrc, so the commands stay as written.
mkdir -p "$work/curl"
printf 'write-out = "\\n%%{http_code}"\n' > "$work/curl/.curlrc"
export CURL_HOME="$work/curl"

task_id=
lease_token=
# run COMMAND: runs it with TASK_ID and LEASE_TOKEN filled in; sets $out and $status.
run() {
  local cmd=${1//TASK_ID/$task_id}
  cmd=${cmd//LEASE_TOKEN/$lease_token}
  echo "   \$ $cmd"
  out=$(bash -c "$cmd" 2>&1) || fail "exit status $? from: $cmd"$'\n'"$out"
}
# answer STATUS JQ-CONDITION: the last curl answered STATUS with a body for
# which the condition holds ($id is the task id so far).
answer() {
  local code=${out##*$'\n'} body=${out%$'\n'*}
  [ "$code" = "$1" ] || fail "status $code, expected $1; body: $body"
  jq -e --arg id "$task_id" "$2" <<< "$body" > /dev/null || fail "answer does not satisfy $2: $body"
  body_json=$body
}
# shows PATTERN: a line of the last command's output matches the extended regex.
shows() {
  grep -qE "$1" <<< "$out" || fail "output has no line matching /$1/: $out"
}

echo "== Five minutes with curl"
mapfile -t walk < <(commands "## Five minutes with curl")
[ "${#walk[@]}" -eq 5 ] || fail "the curl walkthrough has ${#walk[@]} commands; the checks here expect 5"
run "${walk[0]}" # enqueue
answer 201 '.state == "ready" and .kind == "charge_card" and .attempts == 0'
task_id=$(jq -r .id <<< "$body_json")
run "${walk[1]}" # lease
answer 200 '(.tasks | length) == 1 and .tasks[0].id == $id and .tasks[0].state == "running"
  and .tasks[0].attempts == 1 and (.tasks[0].lease.token | type) == "string"'
lease_token=$(jq -r '.tasks[0].lease.token' <<< "$body_json")
run "${walk[2]}" # ack
answer 200 '.id == $id and .state == "succeeded" and .result.charge_id == "ch_1"'
run "${walk[3]}" # the task
answer 200 '.id == $id and .state == "succeeded" and .result.charge_id == "ch_1"'
run "${walk[4]}" # the queue
answer 200 '.name == "payments" and .counts.succeeded == 1 and .counts.running == 0'

echo "== The same from the command line"
mapfile -t cli < <(commands "The same from the command line")
[ "${#cli[@]}" -eq 3 ] || fail "the command-line section has ${#cli[@]} commands; the checks here expect 3"
run "${cli[0]}" # enqueue: a new task, not a replay nor a refused key
shows '^enqueued [0-9a-f-]{36} \(charge_card, ready\)$'
task_id=$(grep -oE '[0-9a-f-]{36}' <<< "$out" | head -n 1)
run "${cli[1]}" # queues: the walkthrough's task succeeded, this one ready
shows '^payments +0 +1 +0 +1 +0 +0$'
run "${cli[2]}" # the task
shows "^id +$task_id\$"
shows '^state +ready$'

echo "== the clone has nothing untracked"
untracked=$(git status --porcelain --untracked-files=all -- . ':!target')
[ -z "$untracked" ] || fail "files the README's commands left that git does not ignore: $untracked"
echo "docs test: passed"
