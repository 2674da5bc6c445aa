#!/usr/bin/env bash
# Start (or stop) a single-node Slurm cluster on this machine, for testing the launch scripts.
#
# Usage: slurm_local_cluster.sh start DIR [CPUS]   -> writes DIR/env (source it: SLURM_CONF ...)
#        slurm_local_cluster.sh stop DIR
# Everything (munge key and socket, slurm.conf, state, spool, logs, pid files) lives under DIR;
# the daemons started here are the only ones stopped. Needs root and Debian's slurm-wlm, munge.
set -euo pipefail
cmd=${1:?usage: slurm_local_cluster.sh start|stop DIR [CPUS]}
DIR=${2:?usage: slurm_local_cluster.sh start|stop DIR [CPUS]}
CPUS=${3:-2}

stop() {
    for pidfile in "$DIR"/slurmd.pid "$DIR"/slurmctld.pid "$DIR"/munged.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

if [ "$cmd" = stop ]; then stop; exit 0; fi
[ "$cmd" = start ] || { echo "unknown command $cmd (start|stop)" >&2; exit 2; }
for tool in munged slurmctld slurmd srun; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install slurm-wlm munge" >&2; exit 3; }
done

mkdir -p "$DIR"/{state,spool,munge}
chmod 700 "$DIR/munge"
DIR=$(cd "$DIR" && pwd)
host=$(hostname -s)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port)
slurmd_port=$(free_port)
sock="$DIR/munge/munge.socket"

dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$DIR/munge/munge.key"
munged --force --socket="$sock" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed"

cat > "$DIR/slurm.conf" <<CONF
ClusterName=mmdccnext-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$DIR/slurm.conf"
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
echo "export SLURM_CONF=$SLURM_CONF" > "$DIR/env"
for _ in $(seq 100); do
    if sinfo -h -o '%t' 2>/dev/null | grep -q '^idle'; then echo "slurm ready: $SLURM_CONF"; exit 0; fi
    sleep 0.2
done
echo "slurm did not become idle; logs in $DIR" >&2
sinfo >&2 || true
stop
exit 1
