#!/usr/bin/env bash
# Builds the worker that goes into containers: this crate's binary linked against glibc 2.17 (by
# zig's linker, `ziglang` from PyPI), so that it starts in images based on Debian bullseye, Ubuntu
# 20.04, CentOS/UBI 7-8 — a binary linked on this host needs the host's newer glibc (2.34+).
# Only the final link differs from the host build: the compiled crates are shared, so this costs
# one link, not a second build of every dependency. Writes target/release/tagbench-glibc2.17,
# beside target/release/tagbench, where the docker executor looks for it (and mounts it instead of
# itself). Prints its path on the last line.
#
# Usage: scripts/build-worker.sh   (needs python3 with venv and PyPI, or TAGBENCH_ZIG_PYTHON set
#                                   to a python that has ziglang)
set -euo pipefail
cd "$(dirname "$0")/.."

GLIBC=2.17
py="${TAGBENCH_ZIG_PYTHON:-$HOME/.cache/tagbench/venv-zig/bin/python}"
if ! "$py" -c 'import ziglang' 2>/dev/null; then
    venv="$HOME/.cache/tagbench/venv-zig"
    echo "installing ziglang from PyPI into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q ziglang
    py="$venv/bin/python"
fi
mkdir -p target/zig
cc="$PWD/target/zig/cc-glibc$GLIBC"
cat >"$cc" <<SH
#!/bin/sh
# rustc's linker for the glibc $GLIBC worker (scripts/build-worker.sh).
exec "$py" -m ziglang cc -target x86_64-linux-gnu.$GLIBC "\$@"
SH
chmod +x "$cc"
out=target/release/tagbench-glibc$GLIBC
start=$(date +%s)
# `cargo rustc` passes the linker to the binary's rustc alone: the dependencies' and the library's
# builds are the host build's. It leaves target/release/tagbench linked by zig; the next host
# build (cargo test, cargo build) links that one again natively.
cargo rustc --release --bin tagbench -- -C "linker=$cc" >&2
cp target/release/tagbench "$out.tmp"
mv "$out.tmp" "$out"
newest="$(objdump -T "$out" | grep -o 'GLIBC_[0-9.]*' | sort -t. -k2,2n -k3,3n -u | tail -1)"
echo "linked $out in $(( $(date +%s) - start )) s; newest glibc symbol: $newest" >&2
echo "$PWD/$out"
