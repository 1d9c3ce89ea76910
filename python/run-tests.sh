#!/usr/bin/env bash
# Runs the Python client's tests against the real cherga binary.
#
#   CHERGA_BIN=/path/to/cherga python/run-tests.sh [pytest args...]
#
# CHERGA_BIN defaults to ../target/debug/cherga (build it first with
# `cargo build -p cherga`). Creates python/.venv with Python 3.12 when missing,
# installs the package with its test extras, runs mypy --strict on the package
# and a typed usage example, and runs pytest. Exits non-zero
# when a test fails, and also when no test ran (nothing collected, or all
# skipped).
set -euo pipefail
cd "$(dirname "$0")"
here="$(pwd)"

find_python() {
    if PYENV_VERSION=3.12.1 python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        echo "env PYENV_VERSION=3.12.1 python3.12"
    elif command -v python3.12 >/dev/null && python3.12 -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
        echo "python3.12"
    else
        return 1
    fi
}

if [ ! -x .venv/bin/python ]; then
    python_cmd="$(find_python)" || { echo "run-tests.sh: Python 3.12 not found (tried PYENV_VERSION=3.12.1 python3.12, python3.12)" >&2; exit 1; }
    echo "== creating python/.venv with: $python_cmd"
    $python_cmd -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi

echo "== installing cherga with test extras"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"

export CHERGA_BIN="${CHERGA_BIN:-$here/../target/debug/cherga}"
if [ ! -x "$CHERGA_BIN" ]; then
    echo "run-tests.sh: no cherga binary at $CHERGA_BIN; run 'cargo build -p cherga' or set CHERGA_BIN" >&2
    exit 1
fi
echo "== mypy --strict (settings in pyproject.toml)"
.venv/bin/python -m mypy

echo "== pytest (cherga binary: $CHERGA_BIN)"

report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
.venv/bin/python -m pytest --junitxml="$report" "$@" || status=$?
if [ "$status" -ne 0 ]; then
    exit "$status"
fi

# pytest exits 0 when every collected test was skipped: that is not a pass.
ran="$(.venv/bin/python - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
print(sum(int(s.get("tests", 0)) - int(s.get("skipped", 0)) for s in suites))
PY
)"
if [ "$ran" -le 0 ]; then
    echo "run-tests.sh: no test ran" >&2
    exit 1
fi
echo "== $ran tests ran"
