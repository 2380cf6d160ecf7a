#!/usr/bin/env bash
# A single-node Slurm cluster on this host, from Debian's packages (as root), for the Slurm runner's
# tests and benchmark: munged, slurmctld and slurmd, no accounting database (the runner needs none).
# Idempotent and quick once set up; recovers a stale state (daemons gone after a machine restart,
# leftover pid files, the node DOWN or DRAINED), then proves the cluster works with one tiny job.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
say() { printf '[setup-slurm] %s\n' "$*"; }
die() { printf '[setup-slurm] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"

conf=/etc/slurm/slurm.conf
log=/tmp/setup-slurm.log

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    cand=$(apt-cache policy slurm-wlm 2>/dev/null | awk '/Candidate:/{print $2}')
    if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then apt-get update -q >"$log" 2>&1; fi
    apt-get install -y -q --no-install-recommends slurm-wlm munge >>"$log" 2>&1 \
        || { tail -20 "$log"; die "apt-get install slurm-wlm munge failed"; }
    say "installed: $(dpkg-query -W -f '${Version}' slurm-wlm)"
fi

# 2. folders, munge key
mkdir -p /etc/slurm /var/log/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /run/munge
chown slurm:slurm /var/log/slurm /var/lib/slurm/slurmctld
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    # The package's postinst makes the key; make it here if that step was skipped.
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key

# 3. slurm.conf for this host: slurmd -C reports what slurmd sees; keep some memory for the host.
host=$(hostname -s)
node_line=$(slurmd -C | head -1)
real_mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
[ -n "$real_mem" ] || die "slurmd -C did not report RealMemory: $node_line"
headroom=$(( real_mem / 10 > 1024 ? real_mem / 10 : 1024 ))
node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$(( real_mem - headroom ))/; s/^NodeName=[^ ]*/NodeName=$host/" \
            <<<"$node_line")
wanted=$(cat <<EOF
# Written by jobgraph's scripts/setup-slurm.sh: a single-node cluster for tests and benchmarks.
ClusterName=jobgraph
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# Jobs take cores and memory, not the whole node, so several run at once.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
# Schedule each submission at once rather than in bursts a few seconds apart.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
# A node that was DOWN comes back by itself once its slurmd registers.
ReturnToService=2
# A job over its --mem is killed and ends OUT_OF_MEMORY (polled every second).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
$node_line State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=no
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$wanted" ]; then
    printf '%s\n' "$wanted" >"$conf"
    changed=yes
    say "wrote $conf ($node_line)"
fi

# 4. daemons: a pid file only counts when its process is alive and is that daemon.
alive() {  # alive PIDFILE NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "$what not ready after ${limit}s; see /var/log/slurm/ and $log"
}
stop() {  # stop PIDFILE NAME: by its own pid, never by name
    local pid
    alive "$1" "$2" || return 0
    pid=$(cat "$1")
    kill "$pid"
    wait_for 20 "$2 to stop" test ! -d "/proc/$pid"
}

munge_works() { munge -n </dev/null | unmunge >/dev/null; }
if ! munge_works 2>/dev/null; then
    # --force: a socket left by a munged that died is removed rather than refused.
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 munged munge_works
    say "started munged"
fi

if [ "$changed" = yes ]; then
    # A changed SelectType needs a restart, not a reconfigure.
    stop /run/slurmd.pid slurmd
    stop /run/slurmctld.pid slurmctld
fi
if ! alive /run/slurmctld.pid slurmctld && ! scontrol ping >/dev/null 2>&1; then
    rm -f /run/slurmctld.pid
    slurmctld || die "slurmctld did not start; see /var/log/slurm/slurmctld.log"
    say "started slurmctld"
fi
wait_for 30 slurmctld scontrol ping
if ! alive /run/slurmd.pid slurmd; then
    rm -f /run/slurmd.pid
    slurmd || die "slurmd did not start; see /var/log/slurm/slurmd.log"
    say "started slurmd"
fi

# 5. the node: resume it if a crash left it DOWN or DRAINED, then wait until it takes jobs.
node_state() { sinfo -h -N -n "$host" -o '%t' 2>/dev/null | head -1; }
node_ready() { case "$(node_state)" in idle|mix|alloc|comp) return 0 ;; *) return 1 ;; esac; }
for ((i = 0; i < 300; i++)); do
    node_ready && break
    case "$(node_state)" in
        down*|drain*|drng*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.1
done
node_ready || die "node $host is '$(node_state)' after 30 s: $(scontrol show node "$host" | grep -o 'Reason=.*')"

# 6. prove it: one tiny job, run to its end (polled here: `sbatch --wait` sleeps 2 s, then 8 s).
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
chmod 755 "$probe"
job=$(sbatch --parsable --job-name=jobgraph-setup-probe --time=1 --output="$probe/out" --chdir="$probe" \
      --wrap 'echo slurm-ok') || die "sbatch refused the probe job"
job_state() { scontrol show job -o "$job" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
for ((i = 0; i < 600; i++)); do
    case "$(job_state)" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.1
done
state=$(job_state)
if [ "$state" != COMPLETED ] || [ "$(cat "$probe/out" 2>/dev/null)" != slurm-ok ]; then
    scancel "$job" 2>/dev/null || true
    die "the probe job $job ended '${state:-unknown}' (output: '$(cat "$probe/out" 2>/dev/null)'); see /var/log/slurm/"
fi
say "ready: $(sinfo -h -N -o '%N %t CPUs=%c Memory=%m MB')"
