#!/usr/bin/env bash
# tools/local_slurm.sh start|stop [--wipe]|status -- a real SLURM cluster on this one machine.
#
# Debian's slurm-wlm 22.05: munged, slurmctld, one slurmd per emulated node (node1..nodeN, each in
# its own UTS namespace with its own hostname, on loopback address 127.0.10.<i>), and slurmdbd on
# MariaDB so that `sacct` (and submitit's job polling) works. Two partitions:
#   batch   default, PriorityTier=1, PreemptMode=REQUEUE: jobs here can be preempted (requeued)
#   urgent  PriorityTier=2: a job here preempts batch jobs whose resources it needs
# Each node advertises fake GPUs (GRES gpu:N on character devices that are not GPUs), so
# `--gpus-per-node` works as on a GPU cluster; the ranks find no CUDA and use gloo on CPU.
#
#   sudo tools/local_slurm.sh start      # installs the packages with apt if missing; idempotent
#   sbatch -N2 --ntasks-per-node=2 --gpus-per-node=2 --cpus-per-task=1 slurm/pretrain.sh debug
#   tools/local_slurm.sh status          # exit 0 when the cluster answers and all nodes are up
#   tools/local_slurm.sh config          # print the slurm.conf that start would write (no root, no daemons)
#   sudo tools/local_slurm.sh stop       # --wipe also drops job state, logs and the accounting DB
#
# Needs root (daemons run as root, jobs run as the submitting user). Owns /etc/slurm/*.conf while
# running and refuses to overwrite a slurm.conf it did not write. Knobs (environment):
#   LOCAL_SLURM_NODES=2      emulated nodes            LOCAL_SLURM_GPUS=2     fake GPUs per node (0: none)
#   LOCAL_SLURM_CPUS=nproc --all  CPUs per node (may exceed the machine: nodes share its cores)
#   LOCAL_SLURM_GRACE=30     seconds a preempted job has to save before SIGTERM/SIGKILL
#   LOCAL_SLURM_KILLWAIT=5   seconds between SIGTERM and SIGKILL (real clusters: 30)
#   LOCAL_SLURM_TIMEOUT=60   seconds to wait for the nodes to come up
set -euo pipefail
shopt -u patsub_replacement 2> /dev/null || true  # bash 5.2: '&' in a substitution is literal

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TEMPLATES=$HERE/slurm
NODES=${LOCAL_SLURM_NODES:-2}
GPUS=${LOCAL_SLURM_GPUS:-2}
CPUS=${LOCAL_SLURM_CPUS:-$(nproc --all)}  # --all: plain nproc honours OMP_NUM_THREADS
GRACE=${LOCAL_SLURM_GRACE:-30}
KILLWAIT=${LOCAL_SLURM_KILLWAIT:-5}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
ETC=/etc/slurm
RUN=/run/bigtrain-slurm
STATE=/var/spool/bigtrain-slurm
LOG=/var/log/bigtrain-slurm
MARK="bigtrain-local-slurm"
DB_PASS=bigtrain-local
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

T0=$(date +%s)
say() { echo "[local_slurm $(( $(date +%s) - T0 ))s] $*"; }
die() { echo "local_slurm: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (it installs packages and runs the SLURM daemons)"; }
nodes_up() { sinfo -h -p batch -t idle,alloc,mix,comp -o '%D' 2>/dev/null | awk '{n += $1} END {print n + 0}'; }

# Substitute @NAME@ placeholders of a template from the shell variables of the same name.
render() {
  local text name
  text=$(cat "$1")
  for name in CTL_HOST STATE RUN LOG KILLWAIT GRACE ACCOUNTING DB_PASS LAST_GPU; do
    text=${text//@$name@/${!name:-}}
  done
  text=${text//@NODES@/${NODES_LINES:-}}
  printf '%s\n' "$text"
}

# Write $2 to file $1 if it changed; returns 0 (true) when it did.
update_file() {
  if [ "$2" != "$(cat "$1" 2>/dev/null)" ]; then
    printf '%s\n' "$2" > "$1"
    return 0
  fi
  return 1
}

install_packages() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d: the packages' own service scripts must not start daemons; this script starts them
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends $missing > /dev/null || { rm -f /usr/sbin/policy-rc.d; die "apt-get install failed"; }
  rm -f /usr/sbin/policy-rc.d
}

setup_hosts() {
  # the controller's name must resolve; every node name must resolve on every node
  local ctl=$1 lines i
  lines=$(grep -v "# $MARK\$" /etc/hosts || true)
  getent hosts "$ctl" > /dev/null || lines+=$'\n'"127.0.0.1 $ctl  # $MARK"
  for i in $(seq 1 "$NODES"); do lines+=$'\n'"127.0.10.$i node$i  # $MARK"; done
  # rewrite in place: /etc/hosts may be a bind mount that cannot be replaced
  [ "$lines" = "$(cat /etc/hosts)" ] || printf '%s\n' "$lines" > /etc/hosts
}

start_munge() {
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key --force
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
  if ! munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
    touch "$RUN/started-munged"
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge > /dev/null 2>&1 && break; sleep 0.1; done
  fi
  munge -n | unmunge > /dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
}

start_accounting() {
  if ! mysqladmin ping > /dev/null 2>&1; then
    /etc/init.d/mariadb start > /dev/null || die "could not start mariadb"
    touch "$RUN/started-mariadb"
    for _ in $(seq 1 100); do mysqladmin ping > /dev/null 2>&1 && break; sleep 0.1; done
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS bigtrain_slurm_acct;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON bigtrain_slurm_acct.* TO 'slurm'@'localhost';"
  if update_file $ETC/slurmdbd.conf "$(render "$TEMPLATES/slurmdbd.conf.in")"; then
    chmod 600 $ETC/slurmdbd.conf
    alive $RUN/slurmdbd.pid && kill "$(cat $RUN/slurmdbd.pid)" && sleep 1
  fi
  if ! alive $RUN/slurmdbd.pid; then
    slurmdbd
    for _ in $(seq 1 100); do (exec 3<> /dev/tcp/127.0.0.1/6819) 2> /dev/null && break; sleep 0.1; done
  fi
}

# The variables slurm.conf.in needs (no side effects: `config` prints the result).
conf_vars() {
  local i gres=""
  ACCOUNTING="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
  MEM=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  if [ "$GPUS" -gt 0 ]; then
    gres="Gres=gpu:$GPUS "
    LAST_GPU=$((GPUS - 1))
  fi
  NODES_LINES=""
  for i in $(seq 1 "$NODES"); do
    NODES_LINES+="NodeName=node$i NodeHostname=node$i NodeAddr=127.0.10.$i Port=$((17000 + i)) CPUs=$CPUS RealMemory=$MEM ${gres}State=UNKNOWN"$'\n'
  done
  NODES_LINES=${NODES_LINES%$'\n'}
}

write_slurm_conf() {
  local i
  conf_vars
  if [ "$GPUS" -gt 0 ]; then
    install -d $RUN/dev
    # slurmd insists that a gres File= is a device; major 195 is NVIDIA's, but nothing drives them here
    for i in $(seq 0 "$LAST_GPU"); do [ -c $RUN/dev/nvidia$i ] || mknod $RUN/dev/nvidia$i c 195 "$i"; done
    update_file $ETC/gres.conf "$(render "$TEMPLATES/gres.conf.in")" && CHANGED=1
  else
    [ -e $ETC/gres.conf ] && rm -f $ETC/gres.conf && CHANGED=1
  fi
  update_file $ETC/slurm.conf "$(render "$TEMPLATES/slurm.conf.in")" && CHANGED=1
  return 0
}

stop_daemons() {  # SIGTERM by pid file, wait up to 15 s (slurmctld saves its state), then SIGKILL
  local f pids="" p left
  for f in "$@"; do alive "$f" && pids="$pids $(cat "$f")"; done
  [ -n "$pids" ] && kill $pids 2> /dev/null
  for _ in $(seq 1 150); do
    left=""; for p in $pids; do kill -0 "$p" 2> /dev/null && left="$left $p"; done
    [ -z "$left" ] && break; sleep 0.1
  done
  for p in $pids; do kill -0 "$p" 2> /dev/null && kill -9 "$p"; done
  rm -f "$@"
}

start_slurm() {
  local i up=1
  alive $RUN/slurmctld.pid || up=0
  for i in $(seq 1 "$NODES"); do alive $RUN/slurmd-node$i.pid || up=0; done
  if [ "$CHANGED" = 1 ] || [ $up = 0 ]; then
    stop_daemons $RUN/slurmd-*.pid $RUN/slurmctld.pid
    slurmctld -i
    for _ in $(seq 1 100); do scontrol ping 2> /dev/null | grep -q 'is UP' && break; sleep 0.1; done
    for i in $(seq 1 "$NODES"); do
      install -d $STATE/node$i
      if unshare --uts true 2> /dev/null; then
        # own hostname per node; slurmd daemonizes and keeps the namespace
        unshare --uts sh -c "hostname node$i && exec slurmd -N node$i"
      else  # no CAP_SYS_ADMIN (some containers): the nodes share this machine's hostname
        slurmd -N node$i
      fi
    done
  fi
  scontrol update nodename="node[1-$NODES]" state=resume > /dev/null 2>&1 || true  # clear DOWN/DRAIN
  for _ in $(seq 1 $((TIMEOUT * 5))); do [ "$(nodes_up)" = "$NODES" ] && break; sleep 0.2; done
  if [ "$(nodes_up)" != "$NODES" ]; then
    sinfo -N -l >&2 || true
    tail -n 20 $LOG/slurmctld.log $LOG/slurmd-*.log >&2 || true
    die "nodes not up after ${TIMEOUT}s (logs: $LOG)"
  fi
}

cmd_start() {
  need_root start
  if [ -e $ETC/slurm.conf ] && ! grep -q "$MARK" $ETC/slurm.conf; then
    die "$ETC/slurm.conf exists and was not written by this script: refusing to replace a real cluster's config"
  fi
  install_packages
  install -d -m 755 $ETC $RUN $STATE $STATE/ctld $LOG
  CTL_HOST=$(hostname -s)
  CHANGED=0
  setup_hosts "$CTL_HOST"
  start_munge
  start_accounting
  write_slurm_conf
  start_slurm
  say "up: slurm $(dpkg-query -W -f='${Version}' slurmctld); $(sinfo -h -o '%P(%D nodes, %t)' | tr '\n' ' ')"
}

cmd_stop() {
  need_root stop
  local wipe=0
  [ "${1:-}" = --wipe ] && wipe=1
  if alive $RUN/slurmctld.pid && [ -n "$(squeue -h -o %i 2> /dev/null)" ]; then
    # cancel jobs first so that job processes do not outlive their slurmd
    scancel --quiet --full --user=root 2> /dev/null || true
    scancel --quiet --full 2> /dev/null || true
    for _ in $(seq 1 100); do [ -z "$(squeue -h -t R,CG,S -o %i 2> /dev/null)" ] && break; sleep 0.1; done
  fi
  stop_daemons $RUN/slurmd-*.pid $RUN/slurmctld.pid
  stop_daemons $RUN/slurmdbd.pid
  if [ $wipe = 1 ] && mysqladmin ping > /dev/null 2>&1; then
    mysql -e "DROP DATABASE IF EXISTS bigtrain_slurm_acct" || true
  fi
  if [ -e $RUN/started-mariadb ]; then /etc/init.d/mariadb stop > /dev/null || true; rm -f $RUN/started-mariadb; fi
  if [ -e $RUN/started-munged ]; then stop_daemons /run/munge/munged.pid; rm -f $RUN/started-munged; fi
  if [ $wipe = 1 ]; then
    rm -rf $STATE $LOG $RUN
    for f in slurm.conf slurmdbd.conf gres.conf; do grep -qs "$MARK" $ETC/$f && rm -f $ETC/$f; done
    local lines; lines=$(grep -v "# $MARK\$" /etc/hosts || true); printf '%s\n' "$lines" > /etc/hosts
  fi
  say "stopped${1:+ ($1)}"
}

cmd_status() {
  if ! command -v sinfo > /dev/null || ! alive $RUN/slurmctld.pid || ! scontrol ping 2> /dev/null | grep -q 'is UP'; then
    echo "local SLURM: not running (start it with: sudo tools/local_slurm.sh start)"; return 1
  fi
  sinfo -o '%10P %5a %6D %8t %N'
  squeue -o '%8i %9P %12j %8T %10M %6D %R' | head -20
  local n; n=$(grep -c '^NodeName=' $ETC/slurm.conf)
  [ "$(nodes_up)" = "$n" ] || { echo "local SLURM: only $(nodes_up)/$n nodes up"; return 1; }
}

case "${1:-}" in
  start) cmd_start ;;
  stop) shift; cmd_stop "$@" ;;
  status) cmd_status ;;
  config) CTL_HOST=$(hostname -s); conf_vars; render "$TEMPLATES/slurm.conf.in" ;;
  *) echo "usage: $0 start|stop [--wipe]|status|config" >&2; exit 2 ;;
esac
