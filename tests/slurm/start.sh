#!/usr/bin/env bash
# Start a private single-node Slurm (slurmctld + slurmd, munge auth) for the launcher tests.
#
# Usage: [MMFAME_SLURM_NO_INSTALL=1] tests/slurm/start.sh STATE_DIR
#   Installs Debian's slurmctld/slurmd/slurm-client/munge with apt-get when missing (with
#   MMFAME_SLURM_NO_INSTALL=1 it installs nothing and exits 2 naming what is missing), writes
#   STATE_DIR/slurm.conf (private ports, pid files, spool and logs all under STATE_DIR), starts
#   munged (unless one already answers) and the two Slurm daemons, and waits until the node is idle.
#   Clients must run with SLURM_CONF=STATE_DIR/slurm.conf. tests/slurm/stop.sh STATE_DIR undoes it.
#   Needs root. Exit status 2 means "cannot be done here" (not root, Slurm/munge missing and not
#   to be installed, no apt-get, install failed); any other failure is an error. The tests install
#   only under CI=true, where every failure to start fails them (see slurm_cluster in
#   tests/test_tools.py).
#
# The node advertises Gres=gpu:8 (character-device stand-ins) and 16 CPUs (SlurmdParameters=
# config_overrides), so OpenMMLab's slurm_train.sh defaults (--gres=gpu:8, --cpus-per-task=5) are
# accepted even on a CPU-only machine; CUDA_VISIBLE_DEVICES set by the gres plugin is harmless.
set -euo pipefail

STATE=${1:?usage: start.sh STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
CTLD_PORT=${MMFAME_SLURMCTLD_PORT:-6917}
SLURMD_PORT=${MMFAME_SLURMD_PORT:-6918}
NODE_CPUS=${MMFAME_SLURM_CPUS:-16}

cannot() { echo "slurm: cannot run here: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "not root"

missing=()
for b in slurmctld slurmd srun scontrol sinfo munged munge unmunge; do
  command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || missing+=("$b")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${MMFAME_SLURM_NO_INSTALL:-0}" = 1 ]; then
    cannot "missing ${missing[*]} (MMFAME_SLURM_NO_INSTALL=1: not installing slurm/munge)"
  fi
  command -v apt-get >/dev/null 2>&1 || cannot "slurm/munge missing and no apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge \
       >"$STATE/apt.log" 2>&1; then
    # Empty or stale package lists: refresh once and retry.
    apt-get update -q >>"$STATE/apt.log" 2>&1 || cannot "apt-get update failed (see $STATE/apt.log)"
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge \
      >>"$STATE/apt.log" 2>&1 || cannot "apt-get install failed (see $STATE/apt.log)"
  fi
fi
export PATH=$PATH:/usr/sbin:/sbin

# --- munge -----------------------------------------------------------------------------------
if ! (munge -n 2>/dev/null | unmunge >/dev/null 2>&1); then
  id munge >/dev/null 2>&1 || cannot "no munge user (broken munge package)"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key --force
    else
      dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 0755 /run/munge
  # munged refuses to run as root ("Logfile is insecure"): run it as its own user.
  runuser -u munge -- /usr/sbin/munged
  echo started > "$STATE/munged.ours"   # stop.sh only stops a munged that we started
  for _ in $(seq 50); do
    (munge -n 2>/dev/null | unmunge >/dev/null 2>&1) && break
    sleep 0.1
  done
  (munge -n | unmunge >/dev/null) || { echo "slurm: munged did not come up" >&2; exit 1; }
fi

# --- host name -------------------------------------------------------------------------------
NODE=$(hostname -s)
if ! getent hosts "$NODE" >/dev/null; then
  echo "127.0.0.1 $NODE" >> /etc/hosts
fi

# --- configuration ---------------------------------------------------------------------------
mkdir -p "$STATE/state" "$STATE/spool" "$STATE/dev"
for i in 0 1 2 3 4 5 6 7; do
  [ -c "$STATE/dev/gpu$i" ] || mknod -m 666 "$STATE/dev/gpu$i" c 1 3
done
cat > "$STATE/slurm.conf" <<CONF
ClusterName=mmfame
SlurmctldHost=$NODE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
InactiveLimit=0
KillWait=5
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS Gres=gpu:8 State=UNKNOWN
PartitionName=mmfame Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
{
  echo "AutoDetect=off"
  for i in 0 1 2 3 4 5 6 7; do echo "NodeName=$NODE Name=gpu File=$STATE/dev/gpu$i"; done
} > "$STATE/gres.conf"
export SLURM_CONF=$STATE/slurm.conf

# --- daemons ---------------------------------------------------------------------------------
slurmctld -c -f "$SLURM_CONF"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
slurmd -f "$SLURM_CONF"
state=""
for _ in $(seq 200); do
  state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
  [ "$state" = idle ] && break
  sleep 0.1
done
if [ "$state" != idle ]; then
  echo "slurm: node did not become idle (state '$state'); logs in $STATE" >&2
  tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
  exit 1
fi
echo "SLURM_CONF=$SLURM_CONF"
