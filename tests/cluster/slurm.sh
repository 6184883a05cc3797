#!/usr/bin/env bash
# A one-node Slurm cluster on localhost for brightseg's tests and CI (Debian packages, root,
# no systemd). Usage: tests/cluster/slurm.sh start|stop|status
#
# Env: BRIGHTSEG_SLURM_STATE (state dir, default /tmp/brightseg-slurm),
#      BRIGHTSEG_SLURM_GPUS (fake GPUs declared as gres, default 2).
#
# The cluster: one node in two partitions, `cpu` (default) and `gpu`, like a real site's CPU
# and GPU partitions (the tests put them into the profile's cpu_partition/gpu_partition
# placeholders), MaxTime 1 day on both with EnforcePartLimits=ALL (a rule asking for more is
# refused at submission). Accounting is off (no slurmdbd): `sacct` fails, so the profile must
# use `slurm-status-command: squeue`, which is safe here because MinJobAge (3600 s, long
# enough to read every job back with `scontrol show job` after the demo) is >= 300 s.
#
# Pitfalls this script handles (learnt the hard way):
# - the config must live in /etc/slurm: the Snakemake slurm job-step plugin drops SLURM_CONF;
# - a gres GPU needs File= on a character device, so fake GPUs are mknod copies of /dev/null
#   (file-less GPUs are dropped and the node goes INVAL);
# - PID 1 here does not reap zombies, so liveness is read from /proc/PID/stat (Z = dead);
# - a daemon writes its pidfile just after it forks: no pidfile yet means "starting", not dead;
# - a node running jobs is up (mixed/allocated/completing), not only an idle one;
# - sinfo/scancel can hang while the controller starts: always wrapped in timeout.
set -euo pipefail
S=${BRIGHTSEG_SLURM_STATE:-/tmp/brightseg-slurm}
C=/etc/slurm
H=$(hostname -s)
NGPU=${BRIGHTSEG_SLURM_GPUS:-2}

live() { [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat"; }
alive() { live "$(cat "$1" 2>/dev/null || true)"; }
# Dead: the pidfile is there but its process is not (a missing pidfile is still starting).
dead() { [ -s "$1" ] && ! alive "$1"; }

install_packages() {
  local want="slurmctld slurmd slurm-client munge"
  # shellcheck disable=SC2086
  dpkg -s $want >/dev/null 2>&1 && return 0
  echo "installing $want (Debian packages)"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $want >/dev/null
}

slurm_conf() {
  cat <<CONF
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
EnforcePartLimits=ALL
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$(slurmd -C | head -1) NodeAddr=127.0.0.1 Gres=gpu:fake:$NGPU State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=1-00:00:00 State=UP
PartitionName=gpu Nodes=ALL MaxTime=1-00:00:00 State=UP
CONF
}

write_config() {
  mkdir -p "$C" "$S/ctld" "$S/d"
  slurm_conf > "$C/slurm.conf"
  echo AutoDetect=off > "$C/gres.conf"
  local i
  for ((i = 0; i < NGPU; i++)); do
    [ -c "$S/fakegpu$i" ] || { rm -f "$S/fakegpu$i"; mknod -m 666 "$S/fakegpu$i" c 1 3; }
    echo "NodeName=$H Name=gpu Type=fake File=$S/fakegpu$i" >> "$C/gres.conf"
  done
}

node_state() { timeout 5 sinfo -h -N -n "$H" -o %T 2>/dev/null | head -n 1 || true; }
is_up() { case $(node_state) in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

start() {
  install_packages
  if alive "$S/slurmctld.pid" && alive "$S/slurmd.pid" && is_up; then
    if [ "$(slurm_conf)" = "$(cat "$C/slurm.conf" 2>/dev/null)" ]; then
      echo "slurm already up: $(timeout 5 sinfo -h -o '%P %T %G %l' | tr '\n' ' ')"
      return 0
    fi
    echo "slurm.conf changed: restarting"
    stop
  fi
  write_config
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --force; chown munge:munge /etc/munge/munge.key; }
  alive /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
  alive "$S/slurmctld.pid" || { rm -f "$S/slurmctld.pid"; slurmctld -c -i; }  # -c: drop stale state
  alive "$S/slurmd.pid" || { rm -f "$S/slurmd.pid"; slurmd; }
  local _
  for _ in $(seq 1 300); do # 60 s at most
    if dead "$S/slurmctld.pid" || dead "$S/slurmd.pid"; then break; fi
    if alive "$S/slurmctld.pid" && alive "$S/slurmd.pid" && is_up; then
      echo "slurm up: $(timeout 5 sinfo -h -o '%P %T %G %l' | tr '\n' ' ')"
      return 0
    fi
    case $(node_state) in
      drain* | inval*) timeout 5 scontrol update nodename="$H" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  echo "slurm did not come up (node state: '$(node_state)')" >&2
  tail -n 20 "$S"/*.log >&2 || true
  return 1
}

stop_pid() { # pidfile: wait on the PID itself (slurmd drops its pidfile before exiting)
  local p _
  p=$(cat "$1" 2>/dev/null) || return 0
  if live "$p"; then
    kill "$p" || true
    for _ in $(seq 1 50); do live "$p" || break; sleep 0.1; done
    if live "$p"; then kill -9 "$p" || true; fi
  fi
  rm -f "$1"
}

stop() {
  if alive "$S/slurmctld.pid"; then timeout 5 scancel --user="$(id -un)" 2>/dev/null || true; fi
  local f
  for f in "$S/slurmd.pid" "$S/slurmctld.pid" /run/munge/munged.pid; do stop_pid "$f"; done
  echo "slurm stopped"
}

status() {
  alive "$S/slurmctld.pid" && alive "$S/slurmd.pid" && is_up \
    && timeout 5 sinfo -h -o '%P %T %G %l'
}

case ${1:-start} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
