#!/usr/bin/env bash
# Runs a command with a throwaway single-node Slurm cluster and SLURM_CONF pointing at it:
#
#   scripts/with-slurm.sh python3 ../shared/conformance/run.py --osmo target/debug/osmo --backend slurm
#   scripts/with-slurm.sh cargo test -p osmo --test slurm_backend
#
# Installs slurm-wlm and munge with apt-get when missing, writes slurm.conf into a temp dir
# (the node is this host, `hostname`), starts munged, slurmctld and slurmd in the foreground of
# background jobs (no systemd needed), waits until the node is idle, runs the command, then stops
# the daemons by PID and removes the temp dir; exits with the command's status. Must run as root
# (slurmd needs it). OSMO_SLURM_KEEP=1 keeps the temp dir (logs) for inspection.
#
# Tuned for throughput (Slurm's high-throughput guide), for a test cluster of trivial jobs:
#   SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,default_queue_depth=1000,
#                       max_rpc_cnt=150   : schedule at every submit/completion, no batching delay
#   CPUs=16 on the node, OverSubscribe=FORCE:4 : up to 64 one-CPU jobs at once on a 2-core box
#   SlurmdParameters=config_overrides : the node may claim more CPUs than it has
#   MinJobAge=60        : finished jobs leave slurmctld's memory after a minute (default 300)
#   MessageTimeout=30, JobAcctGatherType=none, AccountingStorageType=none, ProctrackType=linuxproc,
#   TaskPlugin=none, PriorityType=priority/basic, SlurmctldDebug/SlurmdDebug=error (less logging),
#   KillWait=5 (SIGTERM → SIGKILL on cancel/requeue; default 30), CompleteWait=0.
# Partition gang3: at most 3 CPUs of the node, not oversubscribed, so a group of three one-CPU
# tasks fits once at a time (the gang allocation test).
# GPUs: the node has four fake ones (GresTypes=gpu, Gres=gpu:4, gres.conf naming character
# devices made with mknod in the temp dir, copies of /dev/null), so `--gres=gpu:N` is really
# allocated and jobs get SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES. Without mknod (no CAP_MKNOD)
# the node has no GPUs and says so.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]  (e.g. $0 cargo test -p osmo --test slurm_backend)" >&2
    exit 2
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "with-slurm: must run as root (slurmd runs jobs as their users)" >&2
    exit 1
fi

export PATH="$PATH:/usr/sbin:/sbin"
missing=0
for tool in munged slurmctld slurmd sbatch squeue scancel scontrol sinfo; do
    command -v "$tool" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 1 ]; then
    echo "with-slurm: installing slurm-wlm and munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
MUNGED=$(command -v munged)
SLURMCTLD=$(command -v slurmctld)
SLURMD=$(command -v slurmd)

HOST=$(hostname -s)
if ! getent hosts "$HOST" >/dev/null 2>&1; then
    echo "127.0.0.1 $HOST" >>/etc/hosts
fi
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge: /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
fi
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)

T=$(mktemp -d /tmp/osmo-slurm.XXXXXX)
chmod 755 "$T"
mkdir -p "$T/state" "$T/spool" "$T/log" "$T/munge" "$T/dev"
chown munge: "$T/munge"
GRES=""
if for i in 0 1 2 3; do mknod "$T/dev/nvidia$i" c 1 3 || exit 1; done 2>/dev/null; then
    GRES="Gres=gpu:4"
    echo "NodeName=$HOST Name=gpu File=$T/dev/nvidia[0-3]" >"$T/gres.conf"
else
    echo "with-slurm: cannot mknod fake GPU devices; the test node has no GPUs" >&2
fi
export SLURM_CONF="$T/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=osmotest
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmctldDebug=error
SlurmdDebug=error
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$T/log/jobcomp.log
PriorityType=priority/basic
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,default_queue_depth=1000,max_rpc_cnt=150,bf_interval=1
MinJobAge=60
MessageTimeout=30
KillWait=5
CompleteWait=0
GresTypes=gpu
NodeName=$HOST CPUs=16 RealMemory=$MEM_MB $GRES State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
PartitionName=gang3 Nodes=$HOST MaxTime=INFINITE State=UP OverSubscribe=NO MaxCPUsPerNode=3
EOF

pids=()
cleanup() {
    local pid ids
    # Jobs first (osmo exec waiting for a server that is gone would otherwise
    # outlive the cluster): cancel all, give them KillWait to end.
    ids=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$ids" ]; then
        # shellcheck disable=SC2086
        scancel $ids 2>/dev/null || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.1
        done
    fi
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Up to ~5 s each, then SIGKILL.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    # A step daemon of this cluster still running (its job never ended): end it and its job.
    for pid in $(pgrep -x slurmstepd || true); do
        if ls -l "/proc/$pid/fd" 2>/dev/null | grep -q "$T/"; then
            # shellcheck disable=SC2046
            kill -9 $(pgrep -P "$pid") "$pid" 2>/dev/null || true
        fi
    done
    if [ "${OSMO_SLURM_KEEP:-0}" = 1 ]; then
        echo "with-slurm: kept $T" >&2
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

runuser -u munge -- "$MUNGED" -F --socket="$T/munge/munge.socket.2" --pid-file="$T/munge/munged.pid" \
    --seed-file="$T/munge/munged.seed" --log-file="$T/log/munged.log" >"$T/log/munged.out" 2>&1 &
pids+=($!)
# Slurm's auth/munge finds munged at its default socket; point it at ours.
echo "AuthInfo=socket=$T/munge/munge.socket.2" >>"$SLURM_CONF"
for _ in $(seq 100); do [ -S "$T/munge/munge.socket.2" ] && break; sleep 0.05; done

"$SLURMCTLD" -D -f "$SLURM_CONF" >"$T/log/slurmctld.out" 2>&1 &
pids+=($!)
"$SLURMD" -D -f "$SLURM_CONF" >"$T/log/slurmd.out" 2>&1 &
pids+=($!)

ok=0
for _ in $(seq 300); do
    if sinfo -h -o %T 2>/dev/null | grep -q idle; then ok=1; break; fi
    sleep 0.1
done
if [ "$ok" != 1 ]; then
    echo "with-slurm: the node did not become idle within 30 s" >&2
    tail -n 20 "$T"/log/*.log "$T"/log/*.out >&2 || true
    exit 1
fi
echo "with-slurm: Slurm up in $T (node $HOST, SLURM_CONF=$SLURM_CONF)" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
