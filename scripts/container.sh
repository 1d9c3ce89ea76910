#!/usr/bin/env bash
# Builds the container image (Containerfile) and proves it runs without a
# container runtime: the image's root file system is extracted and its binary
# run under chroot, as cherga's user, with nothing else, until /healthz answers.
#
#   scripts/container.sh            # build the static binary and the image, check it
#   scripts/container.sh --no-build # check the image `cherga` already built
#
# Needs root (chroot) and podman (Debian's `podman`; no base image is pulled:
# the image is FROM scratch).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-gnu
IMAGE=cherga

if [ "${1:-}" != --no-build ]; then
    # A static binary: glibc linked in (no musl target needed), so the image
    # needs no libc of its own.
    RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target "$TARGET" -p cherga
    file "target/$TARGET/release/cherga" | grep -q "statically linked" \
        || { echo "target/$TARGET/release/cherga is not statically linked" >&2; exit 1; }
    rm -rf target/container
    mkdir -p target/container/rootfs/etc/ssl/certs target/container/data
    echo "cherga:x:10001:10001:cherga:/data:/nonexistent" > target/container/rootfs/etc/passwd
    echo "cherga:x:10001:" > target/container/rootfs/etc/group
    cp /etc/ssl/certs/ca-certificates.crt target/container/rootfs/etc/ssl/certs/
    podman build --format docker -t "$IMAGE" -f Containerfile .
fi

ROOT="$(mktemp -d)"
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT
# The image's layers, unpacked in order into one root file system.
podman save --format docker-archive -o "$ROOT/image.tar" "$IMAGE"
mkdir "$ROOT/archive" "$ROOT/fs"
tar -xf "$ROOT/image.tar" -C "$ROOT/archive"
for layer in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))[0]["Layers"]))' "$ROOT/archive/manifest.json"); do
    tar -xpf "$ROOT/archive/$layer" -C "$ROOT/fs"
done
ls -la "$ROOT/fs" "$ROOT/fs/data"

PORT=$((20000 + RANDOM % 20000))
chroot --userspec=10001:10001 "$ROOT/fs" /cherga serve --addr "127.0.0.1:$PORT" --data-dir /data &
PID=$!
for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$PORT/healthz"; then
        echo
        chroot --userspec=10001:10001 "$ROOT/fs" /cherga health --server "http://127.0.0.1:$PORT"
        echo "scripts/container.sh: the image's binary serves under chroot, as user 10001"
        exit 0
    fi
    kill -0 "$PID" || { echo "the server in the image exited" >&2; exit 1; }
    sleep 0.2
done
echo "no answer from /healthz" >&2
exit 1
