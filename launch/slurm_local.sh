#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for trying launch/slurm.sbatch and for its tests.
#
#   launch/slurm_local.sh start     # writes DIR/slurm.conf for this host, starts munged, slurmctld and slurmd
#   export SLURM_CONF=DIR/slurm.conf  # (start prints it) then sbatch / squeue / scontrol as usual
#   launch/slurm_local.sh status    # the node's state, and the queue
#   launch/slurm_local.sh stop      # ends exactly the daemons start started (by their pid files)
#
# DIR is $SLURM_LOCAL_DIR, by default ~/.cache/reft-jax/slurm: the config, munge key, state, spool, logs and pid
# files all live there, nothing in /etc. Daemons run as the current user (root in a container: Slurm's jobs then
# run as root too). Needs slurm-wlm and munge (Debian/Ubuntu: apt-get install slurm-wlm munge).
# $SLURM_LOCAL_PORT moves the daemons' ports (default 6817 and 6818); $SLURM_LOCAL_KILL_WAIT sets KillWait, the
# seconds a job's tasks get between SIGTERM and SIGKILL (default 30, Slurm's own); $SLURM_LOCAL_REQUEUE_WAIT sets
# how long a requeued job waits before it may start again (AuthInfo cred_expire; default 120, Slurm's own).
set -euo pipefail

dir=${SLURM_LOCAL_DIR:-$HOME/.cache/reft-jax/slurm}
conf=$dir/slurm.conf
host=$(hostname -s)

die() { echo "slurm_local.sh: $*" >&2; exit 2; }

need_slurm() {
  for cmd in munged slurmctld slurmd sbatch sinfo; do
    command -v "$cmd" >/dev/null || die "$cmd not found: install Slurm with: apt-get install slurm-wlm munge"
  done
}

write_conf() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) * 9 / 10 / 1024 ))  # leave the OS a tenth
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat > "$conf" <<EOF
ClusterName=reftlocal
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket,cred_expire=${SLURM_LOCAL_REQUEUE_WAIT:-120}
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=${SLURM_LOCAL_PORT:-6817}
SlurmdPort=$(( ${SLURM_LOCAL_PORT:-6817} + 1 ))
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=${SLURM_LOCAL_KILL_WAIT:-30}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  need_slurm
  if running "$dir/slurmctld.pid"; then
    echo "slurm_local.sh: already running ($conf)"; echo "export SLURM_CONF=$conf"; return 0
  fi
  write_conf
  if [[ ! -f $dir/munge.key ]]; then
    head -c 1024 /dev/urandom > "$dir/munge.key"
    chmod 400 "$dir/munge.key"
  fi
  chmod 700 "$dir"
  munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munged.seed"
  slurmctld -f "$conf"
  slurmd -f "$conf"
  export SLURM_CONF=$conf
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 1
  done
  [[ $state == idle ]] || die "the node did not become idle in 60 s (state: ${state:-none}); see $dir/log/"
  echo "slurm_local.sh: one node ($host, $(nproc) CPUs) idle in partition 'local'"
  echo "export SLURM_CONF=$conf"
}

stop() {
  local name
  for name in slurmd slurmctld munged; do
    if running "$dir/$name.pid"; then
      kill "$(cat "$dir/$name.pid")"
      for _ in $(seq 30); do running "$dir/$name.pid" || break; sleep 0.5; done
      # Still there after 15 s (a loaded machine): stopped for good, so that no daemon outlives `stop`.
      if running "$dir/$name.pid"; then kill -9 "$(cat "$dir/$name.pid")" 2>/dev/null || true; fi
    fi
    rm -f "$dir/$name.pid"
  done
  echo "slurm_local.sh: stopped"
}

status() {
  need_slurm
  running "$dir/slurmctld.pid" || die "not running (start it with: launch/slurm_local.sh start)"
  SLURM_CONF=$conf sinfo
  SLURM_CONF=$conf squeue
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: launch/slurm_local.sh start|stop|status" ;;
esac
