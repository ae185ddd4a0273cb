#!/usr/bin/env bash
# A real SLURM cluster on this machine: one controller and two compute nodes (node1, node2), to
# rehearse launch/gpu_slurm.sbatch (multi-node start-up, FSDP across processes, requeue and
# preemption) before a GPU cluster sees it. Needs root (Debian/Ubuntu: apt-get, munged, slurmd).
#
#   bash launch/slurm_local.sh start     # idempotent: install if missing, configure, start, wait for idle nodes
#   bash launch/slurm_local.sh status    # sinfo and the queue
#   bash launch/slurm_local.sh stop      # stop the daemons (the configuration and state stay)
#
# Rehearse a job on it from the root of the checkout (./launch/test.sh has made .venv); the CPU
# environment is picked by FUNGIZSL_SETUP=test (or main), and each process gets one CPU device:
#
#   FUNGIZSL_SETUP=test XLA_FLAGS=--xla_force_host_platform_device_count=1 \
#     sbatch --nodes=2 launch/gpu_slurm.sbatch --config=configs/fungalzsl.py:arch=tiny,runlocal,captions=templates \
#       --config.data.image_size=32 --config.mesh.fsdp=2 --config.total_steps=400 --workdir=/tmp/rehearsal
#   squeue; tail -f slurm-fungizsl-<job>.out logs/fungizsl-<job>/task-*.log
#   scontrol requeue <job>                      # a preemption: the job saves, comes back and resumes
#   scancel --batch --signal=USR1 <job>         # the time-limit warning: the script requeues itself
#
# What `start` does (and changes on this machine):
#   * apt-get install slurm-wlm munge, when slurmctld is missing;
#   * appends "127.0.0.1 node1 node2" to /etc/hosts when node1 does not resolve: JAX's SLURM
#     detection takes the coordinator's address from the first node's name;
#   * creates /etc/munge/munge.key (owner munge, mode 400) when absent and starts munged;
#   * points /etc/slurm/slurm.conf at the configuration (a link), so sinfo, sbatch and scontrol
#     need no SLURM_CONF, unless that file is another cluster's (then export SLURM_CONF as told);
#   * writes slurm.conf and gres.conf under $FUNGIZSL_SLURM_DIR (default /tmp/fungizsl-slurm; state,
#     spool, logs and pid files go there too) and starts slurmctld and `slurmd -N node1|node2`,
#     each node on its own port. Each node claims 32 CPUs and 8 `gpu` GRES whose device files are
#     links to /dev/null (SlurmdParameters=config_overrides), so the very same script, with its
#     --gpus-per-node=8 and --cpus-per-task=32, is accepted; nothing is bound, JAX runs on the CPU.
#   * KillWait=60: after SIGTERM (scancel, requeue, preemption) a job has 60 s to save before SIGKILL;
#     AuthInfo=cred_expire=5: SLURM holds a requeued job until its credentials expire (BeginTime =
#     end + cred_expire + 1 s; 121 s with the default), so here it starts again about 7 s later.
# A running cluster started with the same configuration is left as it is (a changed one is
# restarted). Other settings: FUNGIZSL_SLURM_PORT (slurmctld's port, default 16817; the nodes use
# 17001 and 17002), FUNGIZSL_SLURM_TIMEOUT (the wait for idle nodes, default 60 s).
set -euo pipefail

DIR=${FUNGIZSL_SLURM_DIR:-/tmp/fungizsl-slurm}
CONF=$DIR/etc/slurm.conf
NODES=(node1 node2)
CTLD_PORT=${FUNGIZSL_SLURM_PORT:-16817}
TIMEOUT=${FUNGIZSL_SLURM_TIMEOUT:-60}
export SLURM_CONF=$CONF

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: $*" >&2; exit 1; }

alive() {  # the process whose id is in pid file $1 is running
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_config() {  # writes the configuration into $1 (a folder)
  local etc=$1
  cat >"$etc/slurm.conf" <<EOF
# Written by launch/slurm_local.sh: a local rehearsal cluster, two nodes on this machine.
ClusterName=fungizsl-local
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
KillWait=60
MinJobAge=600
InactiveLimit=0
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
NodeName=node1 NodeHostname=localhost Port=17001 CPUs=32 RealMemory=4000 Gres=gpu:8 State=UNKNOWN
NodeName=node2 NodeHostname=localhost Port=17002 CPUs=32 RealMemory=4000 Gres=gpu:8 State=UNKNOWN
PartitionName=local Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  # Stand-in GPUs: SLURM drops a GPU without a device file, so each is a link to /dev/null. Nothing
  # is bound or hidden (task/none); JAX runs on the CPU.
  echo "NodeName=node[1-2] Name=gpu File=$DIR/dev/gpu[0-7]" >"$etc/gres.conf"
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: install them (apt-get install slurm-wlm munge) or run as root"
  command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and there is no apt-get: install SLURM (slurmctld, slurmd) and munge"
  say "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq slurm-wlm munge >/dev/null; } \
    || die "apt-get install slurm-wlm munge failed"
}

client_config() {  # sinfo, sbatch, scontrol without SLURM_CONF: /etc/slurm/slurm.conf -> ours
  local link=/etc/slurm/slurm.conf
  if [ -L "$link" ] || [ ! -e "$link" ]; then
    mkdir -p /etc/slurm
    ln -sfn "$CONF" "$link"
  elif [ "$(readlink -f "$link")" != "$(readlink -f "$CONF")" ]; then
    say "$link is another cluster's: export SLURM_CONF=$CONF before sinfo, sbatch, scontrol"
  fi
}

hosts() {
  if ! getent hosts node1 >/dev/null || ! getent hosts node2 >/dev/null; then
    say "adding '127.0.0.1 node1 node2' to /etc/hosts (JAX finds the coordinator by the first node's name)"
    echo "127.0.0.1 node1 node2" >>/etc/hosts
  fi
}

munge_up() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key >/dev/null
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
  fi
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  if id munge >/dev/null 2>&1; then  # as Debian runs it: the munge user owns its key, log and socket
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
    su -s /bin/sh munge -c "munged --force" || munged --force
  else
    munged --force
  fi
  local i
  for i in $(seq 50); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "munged did not start (see /var/log/munge/munged.log)"
}

nodes_idle() {  # every node is up (idle, or running jobs)
  local states
  states=$(sinfo -h -N -o "%N %t" 2>/dev/null | sort -u) || return 1
  [ "$(echo "$states" | grep -cE '^node[12] (idle|alloc|mix|comp)$')" = 2 ]
}

start() {
  local began
  began=$(date +%s%N)
  [ "$(id -u)" = 0 ] || die "start needs root (munged and slurmd run as root here)"
  install
  hosts
  mkdir -p "$DIR"/{etc,state,run,log,dev} "$DIR"/spool-node1 "$DIR"/spool-node2
  local i
  for i in 0 1 2 3 4 5 6 7; do
    ln -sfn /dev/null "$DIR/dev/gpu$i"
  done
  local fresh
  fresh=$(mktemp -d)
  write_config "$fresh"
  local same=0
  cmp -s "$fresh/slurm.conf" "$CONF" && cmp -s "$fresh/gres.conf" "$DIR/etc/gres.conf" && same=1
  if [ "$same" = 1 ] && alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd-node1.pid" \
      && alive "$DIR/run/slurmd-node2.pid" && nodes_idle; then
    rm -rf "$fresh"
    say "already running ($DIR); $(sinfo -h -o '%D nodes %t' | paste -sd' ')"
    return
  fi
  [ "$same" = 1 ] || stop_daemons || true  # another configuration: start again
  mv "$fresh/slurm.conf" "$fresh/gres.conf" "$DIR/etc/" && rm -rf "$fresh"
  munge_up
  if ! alive "$DIR/run/slurmctld.pid"; then
    slurmctld -f "$CONF"
  fi
  local node
  for node in "${NODES[@]}"; do
    alive "$DIR/run/slurmd-$node.pid" || slurmd -f "$CONF" -N "$node"
  done
  local deadline=$((SECONDS + TIMEOUT))
  until nodes_idle; do
    if [ $SECONDS -ge $deadline ]; then
      sinfo -N >&2 || true
      die "the nodes are not idle after ${TIMEOUT}s; logs in $DIR/log"
    fi
    # A node that was down comes back by itself (ReturnToService=2); an explicit resume is quicker.
    scontrol update nodename=node1,node2 state=resume >/dev/null 2>&1 || true
    sleep 0.5
  done
  client_config
  say "up in $(( ($(date +%s%N) - began) / 1000000 )) ms: $(sinfo -h -o '%D nodes %t in partition %P' | paste -sd' '); config $CONF"
}

stop_daemons() {
  local pidfile pid any=0
  for pidfile in "$DIR"/run/slurmd-node1.pid "$DIR"/run/slurmd-node2.pid "$DIR"/run/slurmctld.pid; do
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill "$pid"
      any=1
      local i
      for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
  done
  return $((1 - any))
}

case "${1:-}" in
  start) start ;;
  stop)
    if stop_daemons; then say "stopped (configuration and state kept in $DIR)"; else say "not running"; fi ;;
  status)
    if alive "$DIR/run/slurmctld.pid"; then
      sinfo -N
      squeue
    else
      say "not running ($DIR)"
      exit 3
    fi ;;
  *) echo "usage: bash launch/slurm_local.sh start|stop|status   (FUNGIZSL_SLURM_DIR=$DIR)" >&2; exit 2 ;;
esac
