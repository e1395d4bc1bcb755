#!/usr/bin/env bash
# Podman's Docker-compatible API service, for tests and for trying tagbench on Podman:
#   scripts/podman-service.sh up DIR            installs podman when missing (apt, as root),
#                                               starts `podman system service` on DIR/podman.sock
#                                               with its own storage under DIR, waits until the
#                                               API answers; prints `unix://DIR/podman.sock`
#                                               (DOCKER_HOST) on its last line.
#   scripts/podman-service.sh load DIR IMAGE... copies images from the Docker engine
#                                               (`docker save | podman load`).
#   scripts/podman-service.sh down DIR          removes every container and image of DIR's
#                                               storage, stops the service by its PID file,
#                                               removes DIR.
# Everything lives under DIR (storage, run root, socket, log, containers.conf), so the host's
# own Podman storage is never touched. The service runs with `--cgroup-manager=cgroupfs` (no
# systemd session is needed, as in a CI container) and `--events-backend=file` (no journald).
# Rootful Podman gives every container RLIMIT_NOFILE 1048576 and RLIMIT_NPROC at the kernel's
# maximum unless told otherwise, which runc cannot set where root lacks CAP_SYS_RESOURCE (a VM
# or CI sandbox: "error setting rlimit type 7: operation not permitted"); DIR/containers.conf
# gives containers this shell's hard limits instead, as Docker's containers inherit its daemon's.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 up|load|down DIR [IMAGE...]" >&2
    exit 2
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
sock="$dir/podman.sock"

pod() {
    CONTAINERS_CONF="$dir/containers.conf" podman --root "$dir/storage" --runroot "$dir/run" --cgroup-manager=cgroupfs \
        --events-backend=file --tmpdir "$dir/tmp" "$@"
}

case "$cmd" in
up)
    if ! command -v podman >/dev/null 2>&1; then
        [ "$(id -u)" = 0 ] || { echo "error: podman is missing (sudo apt-get install podman)" >&2; exit 2; }
        echo "installing podman (Debian package)" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman >/dev/null
    fi
    mkdir -p "$dir/tmp"
    rm -f "$sock"
    nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
    [ "$nofile" = unlimited ] && nofile=1048576
    [ "$nproc" = unlimited ] && nproc="$(cat /proc/sys/kernel/pid_max)"
    [ "$nproc" -gt "$(cat /proc/sys/kernel/pid_max)" ] && nproc="$(cat /proc/sys/kernel/pid_max)"
    printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
        "$nofile" "$nofile" "$nproc" "$nproc" >"$dir/containers.conf"
    # Started directly (not through `pod`, a function, whose `&` would fork a subshell): the PID
    # file holds podman's own PID, which `down` stops.
    CONTAINERS_CONF="$dir/containers.conf" podman --root "$dir/storage" --runroot "$dir/run" \
        --cgroup-manager=cgroupfs --events-backend=file --tmpdir "$dir/tmp" \
        system service --time=0 "unix://$sock" >"$dir/service.log" 2>&1 </dev/null &
    echo $! >"$dir/service.pid"
    for _ in $(seq 1 150); do
        if curl -sf --unix-socket "$sock" http://podman/_ping >/dev/null 2>&1; then
            echo "podman $(pod --version | awk '{print $3}') API service on $sock" >&2
            echo "unix://$sock"
            exit 0
        fi
        if ! kill -0 "$(cat "$dir/service.pid")" 2>/dev/null; then
            echo "error: podman system service exited:" >&2
            cat "$dir/service.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "error: podman's API did not answer on $sock within 15 s:" >&2
    cat "$dir/service.log" >&2
    exit 1
    ;;
load)
    shift 2
    [ $# -gt 0 ] || { echo "usage: $0 load DIR IMAGE..." >&2; exit 2; }
    docker save "$@" | pod load -q >&2
    ;;
down)
    if [ -d "$dir/storage" ]; then
        pod rm -af -t 0 >/dev/null 2>&1 || true
        pod rmi -af >/dev/null 2>&1 || true
    fi
    if [ -s "$dir/service.pid" ]; then
        pid="$(cat "$dir/service.pid")"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Layer mounts the service may leave behind keep the directory from being removed.
    grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 up|load|down DIR [IMAGE...]" >&2
    exit 2
    ;;
esac
