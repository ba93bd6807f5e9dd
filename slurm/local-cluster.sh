#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests that submit through submitit.
#
#   bash slurm/local-cluster.sh start    install (Debian packages), configure and start; idempotent
#   bash slurm/local-cluster.sh stop     stop the daemons this script started
#   bash slurm/local-cluster.sh status   say whether it is up (exit 0) or not (exit 1)
#
# Needs root (it installs packages and runs slurmctld/slurmd as root). State, spool, logs and pid
# files live in $SCNET_SLURM_DIR (default /var/tmp/scnet-slurm); the config is written to Slurm's
# default path /etc/slurm/slurm.conf so that sbatch, squeue and submitit find it with no
# environment. An /etc/slurm/slurm.conf this script did not write is never overwritten.
set -euo pipefail

STATE_DIR="${SCNET_SLURM_DIR:-/var/tmp/scnet-slurm}"
PARTITION="${SCNET_SLURM_PARTITION:-debug}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by scnet slurm/local-cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge)

say() { echo "local-cluster: $*"; }
die() { echo "local-cluster: error: $1" >&2; exit "${2:-1}"; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "must run as root (it installs ${PACKAGES[*]} and starts slurmctld/slurmd); try: sudo bash $0 $1" 3
    fi
}

pid_alive() {  # pid_alive PIDFILE (via /proc, so that 'status' works for any user)
    [ -s "$1" ] && [ -d "/proc/$(cat "$1")" ]
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them (Debian/Ubuntu only)"
    say "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    say "starting munged"
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    munged --force
    touch "$STATE_DIR/munged.ours"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged started but 'munge -n | unmunge' still fails; see /var/log/munge/munged.log"
}

node_name() { hostname -s; }

write_config() {
    local node cpus mem_kb mem_mb def_mem tmp
    node="$(node_name)"
    cpus="$(nproc)"
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    # Below the machine's memory, so slurmd never finds less than it was promised.
    mem_mb=$(( mem_kb * 85 / 100 / 1024 ))
    def_mem=$(( mem_mb / cpus ))
    if [ -e "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; refusing to overwrite a real cluster's config"
    fi
    mkdir -p "$CONF_DIR" "$STATE_DIR"/{state,spool,log}
    tmp="$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")"
    cat >"$tmp" <<EOF
$MARKER
# One-node test cluster; state in $STATE_DIR. Regenerated on each 'start'.
ClusterName=scnet-local
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
# Short kill wait and job memory, so requeue tests take seconds, not minutes.
KillWait=5
MinJobAge=300
DefMemPerCPU=$def_mem
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
    if [ -e "$CONF" ] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    chmod 644 "$tmp"
    mv "$tmp" "$CONF"
    say "wrote $CONF (node $node: $cpus CPUs, ${mem_mb} MB)"
    return 0
}

daemons_up() {
    pid_alive "$STATE_DIR/slurmctld.pid" && pid_alive "$STATE_DIR/slurmd.pid"
}

stop_daemons() {
    local name pidfile pid
    for name in slurmd slurmctld; do
        pidfile="$STATE_DIR/$name.pid"
        if pid_alive "$pidfile"; then
            pid="$(cat "$pidfile")"
            say "stopping $name (pid $pid)"
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                kill -9 "$pid" 2>/dev/null || true
            fi
        fi
        rm -f "$pidfile"
    done
}

wait_for_node() {
    local node state
    node="$(node_name)"
    for _ in $(seq 120); do
        state="$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n1 || true)"
        case "$state" in
            idle*|mixed*|allocated*|completing*)
                return 0 ;;
            down*|drain*|fail*)
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    die "node $node did not become available (last state: '${state:-none}'); see $STATE_DIR/log/"
}

start() {
    need_root start
    install_packages
    mkdir -p "$STATE_DIR"
    start_munge
    local changed=0
    write_config && changed=1
    if [ "$changed" -eq 1 ] && daemons_up; then
        say "configuration changed; restarting the daemons"
        stop_daemons
    fi
    if ! pid_alive "$STATE_DIR/slurmctld.pid"; then
        say "starting slurmctld"
        slurmctld || die "slurmctld failed to start; see $STATE_DIR/log/slurmctld.log"
    fi
    if ! pid_alive "$STATE_DIR/slurmd.pid"; then
        say "starting slurmd"
        slurmd || die "slurmd failed to start; see $STATE_DIR/log/slurmd.log"
    fi
    wait_for_node
    say "up: partition '$PARTITION' on node $(node_name); config $CONF, state $STATE_DIR"
}

stop() {
    need_root stop
    stop_daemons
    if [ -e "$STATE_DIR/munged.ours" ] && [ -s /run/munge/munged.pid ]; then
        say "stopping munged"
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$STATE_DIR/munged.ours"
    fi
    say "stopped"
}

status() {
    if daemons_up && sinfo -h >/dev/null 2>&1; then
        say "up (config $CONF, state $STATE_DIR)"
        sinfo
        return 0
    fi
    say "down"
    return 1
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: bash $0 start|stop|status" >&2; exit 2 ;;
esac
