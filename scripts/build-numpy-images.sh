#!/usr/bin/env bash
# Builds a second real pair of PyTorch images, FROM the BASE image of
# scripts/build-torch-images.sh, that differ by Python distributions from PyPI, as a data-stack
# upgrade does (docs/test-images.md):
#
#   NUMPY1 = BASE with numpy 1.26.4 in place of BASE's numpy 2, and Bottleneck 1.3.7 (a C
#            extension built against numpy 1.x)
#   NUMPY2 = BASE (its numpy 2) with Bottleneck 1.4.2 (built against numpy 2)
#
# numpy 2.3 and later find the unique values of an integer array with a hash table
# (`_unique_hash`) instead of sorting: on a few hundred thousand distinct int64 values that is
# several times slower, so `np.unique` regresses from NUMPY1 to NUMPY2. A's Bottleneck cannot
# import beside numpy 2 ("numpy.core.multiarray failed to import"), B's can beside numpy 1.26.
#
# The wheels are installed with PYTHON's pip (`--target`, no dependencies) into the build
# context and copied where `pip install` in a Dockerfile would put them; each image adds one
# small layer to BASE. Both are tagged by a content hash of this script, BASE's image ID and the
# Python version, so a later run reuses them; older ones (this repository, by label) are removed.
# Prints the two image names on the last two lines (NUMPY1, then NUMPY2).
#
# Usage: scripts/build-numpy-images.sh BASE [PYTHON]
#   BASE: the image scripts/build-torch-images.sh printed first.
#   PYTHON: a python of the image's version with pip (default: $TAGBENCH_PYTHON, else the venv
#   that scripts/install-torch-cpu.sh creates).
# Needs: a Docker engine, PyPI (or pip's cache).
set -euo pipefail
cd "$(dirname "$0")/.."

REPO=tagbench-test/pytorch-numpy
LABEL=tagbench.test-image
OLD_PACKAGES=(numpy==1.26.4 bottleneck==1.3.7)
NEW_PACKAGES=(bottleneck==1.4.2)

base="${1:?usage: scripts/build-numpy-images.sh BASE [PYTHON]}"
py="${2:-${TAGBENCH_PYTHON:-}}"
if [ -z "$py" ]; then
    py="$(bash scripts/install-torch-cpu.sh | tail -1)"
fi
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
base_id="$(docker image inspect --format '{{.Id}}' "$base")" || {
    echo "error: no image $base (build it with scripts/build-torch-images.sh)" >&2
    exit 2
}
hash="$( { cat "$0"; echo "$base_id $pyver"; } | sha256sum | cut -c1-12)"
old="$REPO:numpy1.26.4-$hash"
new="$REPO:numpy2-$hash"

have() { docker image inspect "$1" >/dev/null 2>&1; }

if have "$old" && have "$new"; then
    echo "reusing $old and $new (content hash $hash)" >&2
    echo "$old"
    echo "$new"
    exit 0
fi

start=$(date +%s)
work="$(mktemp -d /var/tmp/tagbench-numpy.XXXXXX)"
trap 'rm -rf "$work"' EXIT
site="/usr/local/lib/python$pyver/dist-packages"

# build NAME PREAMBLE PACKAGE...: FROM BASE, the RUN line PREAMBLE (may be empty), then the
# packages' files copied into the image's dist-packages.
build() {
    local name="$1" pre="$2"
    shift 2
    local ctx="$work/$(echo "$name" | tr '/:' '__')"
    mkdir -p "$ctx"
    "$py" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
        --target "$ctx/site" "$@" >&2
    # Console scripts (f2py) are not imported: they stay out, as in BASE.
    rm -rf "$ctx/site/bin"
    {
        echo "FROM $base"
        [ -z "$pre" ] || echo "RUN $pre"
        echo "COPY site/ $site/"
        echo "LABEL $LABEL=1"
    } >"$ctx/Dockerfile"
    # The classic builder (as the other test images use) works offline from local images; its
    # deprecation notice is shown only with a failure.
    local log
    log="$(DOCKER_BUILDKIT=0 docker build -q -t "$name" "$ctx" 2>&1)" || {
        echo "$log" >&2
        exit 2
    }
}

if ! have "$old"; then
    echo "building $old: ${OLD_PACKAGES[*]}" >&2
    # BASE's numpy goes as `pip uninstall` would take it: its package, its bundled libraries and
    # its metadata.
    build "$old" "rm -rf $site/numpy $site/numpy.libs $site/numpy-*.dist-info" "${OLD_PACKAGES[@]}"
fi
if ! have "$new"; then
    echo "building $new: ${NEW_PACKAGES[*]}" >&2
    build "$new" "" "${NEW_PACKAGES[@]}"
fi
docker images --filter "label=$LABEL" --format '{{.Repository}}:{{.Tag}}' | grep "^$REPO:" \
    | grep -v -e "^$old\$" -e "^$new\$" | xargs -r docker rmi >/dev/null 2>&1 || true
echo "built $old and $new in $(( $(date +%s) - start )) s" >&2
echo "$old"
echo "$new"
