#!/usr/bin/env bash
# deploy/make-base-image.sh — a local Debian bookworm + Python 3.11 base image, for hosts that cannot pull
# python:3.11-slim-bookworm from Docker Hub. Needs root, debootstrap and a Debian mirror.
#
#   sudo deploy/make-base-image.sh                      # -> scalingnote/bookworm-base:local
#   docker build --build-arg BASE_IMAGE=scalingnote/bookworm-base:local --target serve-cpu ... .
#
# The image holds a minbase bookworm with python3 (3.11), python3-venv and ca-certificates: what the Dockerfile's
# builder, serve-cpu and trainer stages need (`python3 -m venv`). Knobs: IMAGE, MIRROR, SUITE, DOCKER, ROOTFS.
set -euo pipefail

IMAGE=${IMAGE:-scalingnote/bookworm-base:local}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
DOCKER=${DOCKER:-docker}
ROOTFS=${ROOTFS:-$(mktemp -d /tmp/scalingnote-rootfs.XXXXXX)}

[[ $(id -u) -eq 0 ]] || { echo "run as root (debootstrap)" >&2; exit 2; }
command -v debootstrap > /dev/null || { echo "install debootstrap first (apt-get install debootstrap)" >&2; exit 2; }
trap 'rm -rf "$ROOTFS"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
chroot "$ROOTFS" python3 --version
tar -C "$ROOTFS" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$IMAGE"
"$DOCKER" run --rm --network none "$IMAGE" python3 -c 'import ensurepip, ssl, sys, venv; print(sys.version)'
echo "built $IMAGE"
