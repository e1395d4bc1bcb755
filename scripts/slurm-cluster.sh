#!/usr/bin/env bash
# A real two-node Slurm cluster on this host, for tests and for trying `--executor slurm`:
#   scripts/slurm-cluster.sh up DIR     installs slurm-wlm + munge when missing (apt, as root),
#                                       writes DIR/slurm.conf and DIR/gres.conf, starts munged,
#                                       slurmctld and `slurmd -N n1`/`-N n2` (no systemd), waits
#                                       until both nodes are idle; prints `export SLURM_CONF=...`.
#   scripts/slurm-cluster.sh down DIR   cancels every job, stops the daemons by their PID files,
#                                       leaves nothing running.
# Everything lives under DIR (config, state, spool, logs, munge socket, fake GPU devices), so
# several clusters can exist one after another without touching /etc. Nodes: n1 and n2 on
# localhost (slurmd ports 17001/17002, slurmctld 17000; TAGBENCH_SLURM_PORT moves all three),
# 4 CPUs and 2 fake GPUs each (character devices made with mknod, listed in gres.conf), so that
# Slurm hands each step its own CUDA_VISIBLE_DEVICES.
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    echo "usage: $0 up|down DIR" >&2
    exit 2
fi
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"
export SLURM_CONF="$conf"
port="${TAGBENCH_SLURM_PORT:-17000}"

# sinfo/squeue hang for a long time when slurmctld is down: always bounded.
q() { timeout 5 "$@" 2>/dev/null; }

# Stops the processes whose ids are in the files given: SIGTERM to all at once, then SIGKILL to
# those still there after 5 s (a slurmd stuck registering ignores SIGTERM).
stop_pidfiles() {
    local f pid pids=()
    for f in "$@"; do
        [ -s "$f" ] || continue
        pid="$(cat "$f")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$f"
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && return 0
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.2
}

down() {
    if [ -f "$conf" ] && [ -s "$dir/run/slurmctld.pid" ]; then
        # Jobs first, so that no slurmstepd (reparented to init) outlives its slurmd.
        q scancel --full --signal=KILL --user="$(id -un)" || true
        q scancel --user="$(id -un)" || true
        for _ in $(seq 50); do
            [ -z "$(q squeue -h -o %i)" ] && break
            sleep 0.2
        done
    fi
    stop_pidfiles "$dir/run/slurmd-n1.pid" "$dir/run/slurmd-n2.pid" "$dir/run/slurmctld.pid"
    stop_pidfiles "$dir/munge/munged.pid"
}

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "error: slurm-wlm and munge are not installed; run \`sudo apt-get install slurm-wlm munge\`" >&2
        exit 1
    fi
    echo "installing slurm-wlm and munge (Debian packages)" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
    local host user
    host="$(hostname -s)"
    user="$(id -un)"
    mkdir -p "$dir"/{state,spool/n1,spool/n2,log,run,munge,dev}
    chmod 700 "$dir/munge"
    # Fake GPUs: Slurm only needs device files to exist to count and hand them out.
    for i in 0 1 2 3; do
        [ -e "$dir/dev/gpu$i" ] || mknod "$dir/dev/gpu$i" c 195 "$i" 2>/dev/null || touch "$dir/dev/gpu$i"
    done
    cat >"$conf" <<EOF
ClusterName=tagbench
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=2
MinJobAge=2
InactiveLimit=0
SlurmctldTimeout=10
SlurmdTimeout=10
GresTypes=gpu
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 1)) CPUs=4 Gres=gpu:2 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=4 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$dir/gres.conf" <<EOF
AutoDetect=off
NodeName=n1 Name=gpu File=$dir/dev/gpu[0-1]
NodeName=n2 Name=gpu File=$dir/dev/gpu[2-3]
EOF
}

up() {
    install_if_missing
    # A previous cluster in the same directory goes first.
    down
    write_config
    if [ ! -s "$dir/munge/munge.key" ]; then
        dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
        chmod 400 "$dir/munge/munge.key"
    fi
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
        --seed-file="$dir/munge/munged.seed"
    slurmctld -c -f "$conf"
    slurmd -N n1 -f "$conf"
    slurmd -N n2 -f "$conf"
    for _ in $(seq 150); do
        local idle
        idle="$(q sinfo -h -N -o '%N %t' | awk '$2 == "idle" {print $1}' | sort -u | tr '\n' ' ')"
        if [ "$idle" = "n1 n2 " ]; then
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.2
    done
    echo "error: the Slurm nodes did not become idle within 30 s; sinfo says:" >&2
    q sinfo -N >&2 || true
    tail -n 5 "$dir"/log/*.log >&2 || true
    down
    exit 1
}

case "$cmd" in
up) up ;;
down) down ;;
*)
    echo "usage: $0 up|down DIR" >&2
    exit 2
    ;;
esac
