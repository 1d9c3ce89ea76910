#!/usr/bin/env bash
# Checks the deployment files: the systemd unit with `systemd-analyze verify`
# (and its hardening with `systemd-analyze security`, which must rate it 2.0 or
# better), and compose.yaml with `docker-compose config` (Debian's
# docker-compose, installed with apt-get when missing: it needs no daemon). The unit's ExecStart names /usr/local/bin/cherga; here it names the
# binary given (default: target/debug/cherga), which must exist for verify.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(realpath "${1:-target/debug/cherga}")"
[ -x "$BIN" ] || { echo "deploy/check.sh: no binary at $BIN" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
sed "s|/usr/local/bin/cherga|$BIN|" deploy/cherga.service > "$TMP/cherga.service"
systemd-analyze verify "$TMP/cherga.service"
# Exposure on systemd's scale of 0 (locked down) to 100; 20 is its "2.0 OK".
systemd-analyze security --offline=true --threshold=20 "$TMP/cherga.service" | tail -1
echo "deploy/check.sh: the systemd unit verifies"

if ! command -v docker-compose > /dev/null; then
    install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose > /dev/null; }
    install || { apt-get update -qq && install; }
fi
docker-compose -f compose.yaml config -q
echo "deploy/check.sh: compose.yaml is valid"
