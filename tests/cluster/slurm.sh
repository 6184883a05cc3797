#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for brightseg's tests (Debian packages, root, no
# systemd). Usage: tests/cluster/slurm.sh start|stop|status
#
# Env: BRIGHTSEG_SLURM_STATE (state dir, default /tmp/brightseg-slurm),
#      BRIGHTSEG_SLURM_GPUS (fake GPUs declared as gres, default 2).
#
# Pitfalls this script handles (learnt the hard way):
# - the config must live in /etc/slurm: the Snakemake slurm job-step plugin drops SLURM_CONF;
# - a gres GPU needs File= on a character device, so fake GPUs are mknod copies of /dev/null
#   (file-less GPUs are dropped and the node goes INVAL);
# - PID 1 here does not reap zombies, so liveness is read from /proc/PID/stat (Z = dead);
# - sinfo/scancel can hang while the controller starts: always wrapped in timeout;
# - accounting is off (no slurmdbd): Snakemake must use `slurm-status-command: squeue`
#   or it polls sacct forever (see profiles/slurm/config.yaml).
set -euo pipefail
S=${BRIGHTSEG_SLURM_STATE:-/tmp/brightseg-slurm}
C=/etc/slurm
H=$(hostname -s)
NGPU=${BRIGHTSEG_SLURM_GPUS:-2}

live() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }
alive() { live "$(cat "$1" 2>/dev/null || true)"; }

install_packages() {
  local want="slurmctld slurmd slurm-client munge"
  # shellcheck disable=SC2086
  dpkg -s $want >/dev/null 2>&1 && return 0
  echo "installing $want (Debian packages)"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want >/dev/null
}

write_config() {
  mkdir -p "$C" "$S/ctld" "$S/d"
  cat > "$C/slurm.conf" <<CONF
ClusterName=brightseg
SlurmctldHost=$H(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$S/ctld
SlurmdSpoolDir=$S/d
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerParameters=defer_batch
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$(slurmd -C | head -1) NodeAddr=127.0.0.1 Gres=gpu:fake:$NGPU State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo AutoDetect=off > "$C/gres.conf"
  local i
  for ((i = 0; i < NGPU; i++)); do
    [ -c "$S/fakegpu$i" ] || { rm -f "$S/fakegpu$i"; mknod -m 666 "$S/fakegpu$i" c 1 3; }
    echo "NodeName=$H Name=gpu Type=fake File=$S/fakegpu$i" >> "$C/gres.conf"
  done
}

start() {
  install_packages
  if alive "$S/slurmctld.pid" && alive "$S/slurmd.pid" \
    && timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm already up"
    return 0
  fi
  write_config
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; }
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  alive "$S/slurmctld.pid" || slurmctld -c -i   # -c: discard stale state (e.g. DRAIN)
  alive "$S/slurmd.pid" || slurmd
  local _
  for _ in $(seq 1 300); do
    if ! alive "$S/slurmctld.pid" || ! alive "$S/slurmd.pid"; then break; fi
    case $(timeout 5 sinfo -h -o %T 2>/dev/null || true) in
      idle) echo "slurm up: $(timeout 5 sinfo -h -o '%P %T %G')"; return 0 ;;
      drain* | inval*) timeout 5 scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  echo "slurm did not come up" >&2
  tail -n 20 "$S"/*.log >&2 || true
  return 1
}

stop_pid() { # pidfile: wait on the PID itself (slurmd drops its pidfile before exiting)
  local p _
  p=$(cat "$1" 2>/dev/null) || return 0
  if live "$p"; then
    kill "$p" || true
    for _ in $(seq 1 50); do live "$p" || break; sleep 0.1; done
    live "$p" && kill -9 "$p"
  fi
  rm -f "$1"
}

stop() {
  alive "$S/slurmctld.pid" && { timeout 5 scancel --user="$(id -un)" 2>/dev/null || true; }
  local f
  for f in "$S/slurmd.pid" "$S/slurmctld.pid" /run/munge/munged.pid; do stop_pid "$f"; done
  echo "slurm stopped"
}

status() {
  alive "$S/slurmctld.pid" && alive "$S/slurmd.pid" && timeout 5 sinfo -h -o '%P %T %G'
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
