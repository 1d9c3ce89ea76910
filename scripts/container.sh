#!/usr/bin/env bash
# Builds the container image (Containerfile) and proves it runs without a
# container runtime: the image's root file system is extracted and its binary
# run under chroot, as cherga's user, with nothing else, until /healthz answers
# and an enqueue lands in the image's /data.
#
#   scripts/container.sh            # build the static binary and the image, check it
#   scripts/container.sh --no-build # check the image `cherga` already built
#
# CHERGA_IMAGE_PROFILE picks the cargo profile of the binary: `release` (the
# default, what is shipped) or `container` (CI: the release profile without
# optimisation, see Cargo.toml). Needs root (chroot) and podman (Debian's `podman`;
# no base image is pulled: the image is FROM scratch and has no RUN step).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
PROFILE="${CHERGA_IMAGE_PROFILE:-release}"
IMAGE="${CHERGA_IMAGE:-cherga}"
# podman as root in a bare sandbox or CI container: no overlay mounts, no
# systemd; vfs storage and cgroupfs work everywhere. Images go to the usual
# store unless PODMAN_STORAGE_DRIVER is set otherwise.
PODMAN=(podman --storage-driver "${PODMAN_STORAGE_DRIVER:-vfs}" --cgroup-manager cgroupfs --events-backend file)
# Not target/container: that is cargo's own directory for the `container` profile.
STAGE=target/image

if [ "${1:-}" != --no-build ]; then
    # A static binary: glibc linked in (no musl target needed), so the image
    # needs no libc of its own. --target keeps these objects apart from the
    # dynamically linked build in target/release.
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --locked --profile "$PROFILE" --target "$TARGET" -p cherga
    BIN="target/$TARGET/$PROFILE/cherga"
    file "$BIN" | grep -q "static.*linked" \
        || { echo "$BIN is not statically linked: $(file "$BIN")" >&2; exit 1; }
    # The image's files, staged for the Containerfile's COPY steps.
    rm -rf "$STAGE"
    mkdir -p "$STAGE/rootfs/etc/ssl/certs" "$STAGE/volume/data"
    # The store's directory is private (cherga makes it so, and warns otherwise);
    # copied as a directory, not as the destination of a COPY, it keeps its mode.
    chmod 700 "$STAGE/volume/data"
    cp "$BIN" "$STAGE/cherga"
    echo "cherga:x:10001:10001:cherga:/data:/nonexistent" > "$STAGE/rootfs/etc/passwd"
    echo "cherga:x:10001:" > "$STAGE/rootfs/etc/group"
    cp /etc/ssl/certs/ca-certificates.crt "$STAGE/rootfs/etc/ssl/certs/"
    "${PODMAN[@]}" build --pull=never --format docker -t "$IMAGE" -f Containerfile .
    echo "binary: $(stat -c %s "$BIN") bytes ($BIN)"
fi
"${PODMAN[@]}" image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"

ROOT="$(mktemp -d)"
cleanup() {
    if [ -n "${PID:-}" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$ROOT"
}
trap cleanup EXIT
# The image's layers, unpacked in order into one root file system.
"${PODMAN[@]}" save --format docker-archive -o "$ROOT/image.tar" "$IMAGE"
mkdir "$ROOT/archive" "$ROOT/fs"
tar -xf "$ROOT/image.tar" -C "$ROOT/archive"
for layer in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))[0]["Layers"]))' "$ROOT/archive/manifest.json"); do
    tar -xpf "$ROOT/archive/$layer" -C "$ROOT/fs"
done
ls -la "$ROOT/fs" "$ROOT/fs/data"
# The image holds these and nothing else.
EXPECTED=$'./cherga\n./data\n./etc\n./etc/group\n./etc/passwd\n./etc/ssl\n./etc/ssl/certs\n./etc/ssl/certs/ca-certificates.crt'
ACTUAL="$(cd "$ROOT/fs" && find . -mindepth 1 | LC_ALL=C sort)"
[ "$ACTUAL" = "$EXPECTED" ] || { echo "unexpected files in the image:"$'\n'"$ACTUAL" >&2; exit 1; }
[ "$(stat -c %u:%g:%a "$ROOT/fs/data")" = 10001:10001:700 ] \
    || { echo "/data is not 10001's, mode 700: $(stat -c %u:%g:%a "$ROOT/fs/data")" >&2; exit 1; }

# The image's own settings (ENV CHERGA_DATA_DIR=/data), an address of our own.
# chroot runs with the host's environment emptied to the image's.
ENVS=()
while IFS= read -r line; do ENVS+=("$line"); done < <(
    "${PODMAN[@]}" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep -v '^$')
PORT=$((20000 + RANDOM % 20000))
URL="http://127.0.0.1:$PORT"
run_in_image() {
    env -i "${ENVS[@]}" CHERGA_ADDR="127.0.0.1:$PORT" \
        chroot --userspec=10001:10001 "$ROOT/fs" /cherga "$@"
}
# Not through run_in_image: $! must be the server's own pid (env and chroot exec it).
env -i "${ENVS[@]}" CHERGA_ADDR="127.0.0.1:$PORT" \
    chroot --userspec=10001:10001 "$ROOT/fs" /cherga serve &
PID=$!
up=
for _ in $(seq 1 150); do
    if curl -fsS "$URL/healthz"; then echo; up=1; break; fi
    kill -0 "$PID" || { echo "the server in the image exited" >&2; exit 1; }
    sleep 0.2
done
[ -n "$up" ] || { echo "no answer from /healthz" >&2; exit 1; }
run_in_image health --server "$URL"
# An enqueue through the image's own CLI, read back over HTTP; the store is in /data.
ID="$(run_in_image enqueue image-check --kind probe --payload '{"n": 1}' --server "$URL" --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
curl -fsS "$URL/v1/tasks/$ID" | python3 -c '
import json, sys
task = json.load(sys.stdin)
assert task["queue"] == "image-check" and task["state"] == "ready", task
'
kill -TERM "$PID"
wait "$PID" || { echo "the server in the image did not stop cleanly" >&2; exit 1; }
PID=
ls -la "$ROOT/fs/data"
[ -n "$(find "$ROOT/fs/data" -mindepth 1 -user 10001 -print -quit)" ] \
    || { echo "nothing was written to /data as user 10001" >&2; exit 1; }
echo "scripts/container.sh: the image's binary serves under chroot, as user 10001, its store in /data"
