#!/usr/bin/env bash
# Builds two real PyTorch images without a container registry, the way a user can try tagbench
# on a machine with no GPU and no registry (docs/test-images.md), and the way the tests get them:
#
#   BASE  = Debian bookworm (debootstrap minbase + python3, from Debian's package archive)
#           + the PyTorch and transformers that scripts/install-torch-cpu.sh installs from PyPI
#   SLOW  = BASE with OMP_NUM_THREADS=1 baked into the image (a real setting an image can ship,
#           which halves torch's CPU threads on a 2-core machine)
#
# Both are tagged by a content hash of this script, the Debian suite and the Python packages,
# so a later run on the same machine reuses them (`docker image inspect` answers in ms) and a
# change of any input builds new ones. Prints the two image names on the last two lines.
#
# Usage: scripts/build-torch-images.sh [PYTHON]
#   PYTHON: a python whose site-packages holds torch (default: $TAGBENCH_PYTHON, else the venv
#   that scripts/install-torch-cpu.sh creates, installing it when missing).
# Needs: root (debootstrap), a Docker engine, Debian's package archive (deb.debian.org).
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=tagbench-test/pytorch
SUITE=bookworm
MIRROR="${TAGBENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
LABEL=tagbench.test-image

py="${1:-${TAGBENCH_PYTHON:-}}"
if [ -z "$py" ]; then
    py="$(bash scripts/install-torch-cpu.sh | tail -1)"
fi
site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
[ -d "$site/torch" ] || { echo "error: no torch in $site" >&2; exit 2; }

hash="$( { cat "$0"; echo "$SUITE $MIRROR $pyver"; "$py" -m pip freeze --all 2>/dev/null | sort; } \
    | sha256sum | cut -c1-12)"
torch_ver="$("$py" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')"
base="$REPO:torch${torch_ver}-$hash"
slow="$REPO:torch${torch_ver}-omp1-$hash"

have() { docker image inspect "$1" >/dev/null 2>&1; }

if have "$base" && have "$slow"; then
    echo "reusing $base and $slow (content hash $hash)" >&2
    echo "$base"
    echo "$slow"
    exit 0
fi

start=$(date +%s)
if ! have "$base"; then
    command -v debootstrap >/dev/null || {
        [ "$(id -u)" = 0 ] || { echo "error: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    work="$(mktemp -d /var/tmp/tagbench-rootfs.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
    rootfs="$work/rootfs"
    echo "debootstrap $SUITE (minbase + python3) into $rootfs" >&2
    debootstrap --variant=minbase --include=python3 "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log" >&2
        exit 2
    }
    img_py="$(chroot "$rootfs" python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    [ "$img_py" = "$pyver" ] || {
        echo "error: the image's python is $img_py, the wheels are for $pyver" >&2
        exit 2
    }
    # Debian's python3 reads /usr/local/lib/python3.X/dist-packages: the wheels' files go there,
    # as `pip install` in a Dockerfile would put them. pip itself stays out (the image has none).
    dest="$rootfs/usr/local/lib/python$pyver/dist-packages"
    mkdir -p "$dest"
    echo "copying torch and its dependencies ($(du -sh "$site" | cut -f1)) into the image" >&2
    tar -C "$site" --exclude='./pip' --exclude='./pip-*' --exclude='__pycache__' -cf - . | tar -C "$dest" -xf -
    rm -rf "$rootfs/var/cache/apt/archives"/*.deb "$rootfs/var/lib/apt/lists"/*
    # (torch's cpuinfo complains that /proc is not mounted in the chroot; that line is dropped.)
    chroot "$rootfs" python3 -c 'import torch; assert torch.randn(8, 8).sum().isfinite()' 2>&1 \
        | { grep -v 'Error in cpuinfo' || true; } >&2
    echo "importing $base" >&2
    tar -C "$rootfs" -cf - . | docker import \
        --change "LABEL $LABEL=1" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' \
        - "$base" >/dev/null
fi
if ! have "$slow"; then
    printf 'FROM %s\nENV OMP_NUM_THREADS=1\nLABEL %s=1\n' "$base" "$LABEL" | DOCKER_BUILDKIT=0 docker build -q -t "$slow" - >/dev/null 2>&1
fi
# Images of earlier inputs are 4.6 GB each: drop them (only this script's, by repository and label).
docker images --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO:" \
    | grep -v -e "^$base\$" -e "^$slow\$" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "built $base and $slow in $(( $(date +%s) - start )) s" >&2
echo "$base"
echo "$slow"
