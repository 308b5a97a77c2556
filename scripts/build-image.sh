#!/usr/bin/env bash
# The platform's image (Dockerfile) built where no image registry can be reached: its BASE is a
# Debian bookworm made here with debootstrap and `docker import`, once. Needs root, debootstrap and
# a running Docker engine.
#   bash scripts/build-image.sh                            # awq-release:cpu
#   AWQ_RELEASE_ENGINE=gpu bash scripts/build-image.sh     # awq-release:cuda
# AWQ_RELEASE_BASE: the base image, made here unless it is already present (e.g. one pulled from a
# registry); AWQ_RELEASE_IMAGE: the tag to build.
# TORCH_WHEELS=DIR (default: pip's find-links folder here, if it is one) holds the CPU torch wheel:
# the build takes it from a loopback server on port $AWQ_RELEASE_WHEELS_PORT, where PyTorch's own
# index is out of reach.
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${AWQ_RELEASE_ENGINE:-cpu}"
base="${AWQ_RELEASE_BASE:-awq-release-base:bookworm}"
image="${AWQ_RELEASE_IMAGE:-awq-release:$([ "$engine" = cpu ] && echo cpu || echo cuda)}"
wheels="${TORCH_WHEELS:-${PIP_FIND_LINKS:-}}"
cleanup=()
trap 'for c in "${cleanup[@]}"; do eval "$c"; done' EXIT

if ! docker image inspect "$base" >/dev/null 2>&1; then
    rootfs="$(mktemp -d)"
    cleanup+=("rm -rf '$rootfs'")
    echo "making $base with debootstrap (minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$rootfs" >"$rootfs.log" 2>&1 || { tail -n 20 "$rootfs.log" >&2; exit 1; }
    # This machine's trusted certificates: pip in the build reaches the package index as pip here does.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
fi

build=(--network host --build-arg "BASE=$base" --build-arg "ENGINE=$engine" -t "$image")
if [ "$engine" = cpu ] && [ -d "$wheels" ]; then
    port="${AWQ_RELEASE_WHEELS_PORT:-38611}" # fixed: the address is part of the build's cache key
    python3 -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >/dev/null 2>&1 &
    cleanup+=("kill $!")
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break || sleep 0.1; done
    curl -sf "http://127.0.0.1:$port/" >/dev/null || {
        echo "error: cannot serve $wheels on 127.0.0.1:$port: set AWQ_RELEASE_WHEELS_PORT to a free port" >&2
        exit 2
    }
    build+=(--build-arg "TORCH_SOURCE=--find-links http://127.0.0.1:$port/")
fi
DOCKER_BUILDKIT=0 docker build "${build[@]}" .
echo "built $image (base $base)"
