#!/usr/bin/env bash
# Builds the old-glibc test image: Debian bullseye (glibc 2.31, as in Ubuntu 20.04-era and many
# NGC/vendor PyTorch images) by debootstrap minbase + python3, from Debian's package archive, no
# registry. tests/images.rs runs the native engine's smoke cases and a `command` workload in it
# (the worker built for glibc 2.17 must start there; one linked on this host, glibc 2.34+, cannot).
#
# Tagged by a content hash of this script and the Debian suite, so a later run reuses it
# (`docker image inspect` answers in ms). Prints the image name on its last line.
# Needs: root (debootstrap), a Docker engine, Debian's package archive (deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=tagbench-test/bullseye
SUITE=bullseye
MIRROR="${TAGBENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LABEL=tagbench.test-image

hash="$( { cat "$0"; echo "$SUITE $MIRROR"; } | sha256sum | cut -c1-12)"
image="$REPO:python3-$hash"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "reusing $image (content hash $hash)" >&2
    echo "$image"
    exit 0
fi
command -v debootstrap >/dev/null || {
    [ "$(id -u)" = 0 ] || { echo "error: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
start=$(date +%s)
work="$(mktemp -d /var/tmp/tagbench-bullseye.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
echo "debootstrap $SUITE (minbase + python3) into $rootfs" >&2
debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 2
}
rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
tar -C "$rootfs" -cf - . | docker import \
    --change "LABEL $LABEL=1" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    - "$image" >/dev/null
# Images of earlier inputs: drop them (only this script's, by repository and label).
docker images --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO:" \
    | grep -v -e "^$image\$" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "built $image in $(( $(date +%s) - start )) s" >&2
echo "$image"
