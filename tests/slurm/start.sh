#!/usr/bin/env bash
# Start a private two-node Slurm (slurmctld + one slurmd per node, munge auth) for the launcher
# tests.
#
# Usage: [MMFAME_SLURM_NO_INSTALL=1] [MMFAME_SLURMCTLD_PORT=P] [MMFAME_SLURMD_PORTS="P1 P2"]
#        tests/slurm/start.sh STATE_DIR
#   Installs Debian's slurmctld/slurmd/slurm-client/munge with apt-get when missing (with
#   MMFAME_SLURM_NO_INSTALL=1 it installs nothing and exits 2 naming what is missing), writes
#   STATE_DIR/slurm.conf (private ports, pid files, spool and logs all under STATE_DIR), starts
#   munged (unless one already answers), slurmctld and the slurmds, and waits until every node
#   is idle.
#   Clients must run with SLURM_CONF=STATE_DIR/slurm.conf. tests/slurm/stop.sh STATE_DIR undoes it.
#   Needs root. Exit status 2 means "cannot be done here" (not root, Slurm/munge missing and not
#   to be installed, no apt-get, install failed); any other failure is an error. The tests install
#   only under CI=true, where every failure to start fails them (see slurm_cluster in
#   tests/test_tools.py).
#
# The nodes mmfame-n1 and mmfame-n2 are two slurmds on this machine (slurmd -N), each on its own
# loopback address (127.0.0.2, 127.0.0.3, named in /etc/hosts) and port, so a job across them
# resolves MASTER_ADDR and its ranks from the node list as on a real cluster, with traffic only
# on loopback.
# Each node advertises Gres=gpu:8 (character-device stand-ins) and 16 CPUs (SlurmdParameters=
# config_overrides), so OpenMMLab's slurm_train.sh defaults (--gres=gpu:8, --cpus-per-task=5) are
# accepted even on a CPU-only machine; CUDA_VISIBLE_DEVICES set by the gres plugin is harmless.
set -euo pipefail

STATE=${1:?usage: start.sh STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
CTLD_PORT=${MMFAME_SLURMCTLD_PORT:-6917}
read -r -a SLURMD_PORTS <<< "${MMFAME_SLURMD_PORTS:-6918 6919}"   # one per node
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

# --- host names ------------------------------------------------------------------------------
HOST=$(hostname -s)
if ! getent hosts "$HOST" >/dev/null; then
  echo "127.0.0.1 $HOST" >> /etc/hosts
fi
NODES=(mmfame-n1 mmfame-n2)
ADDRS=(127.0.0.2 127.0.0.3)
if [ ${#SLURMD_PORTS[@]} != ${#NODES[@]} ]; then
  echo "slurm: MMFAME_SLURMD_PORTS needs ${#NODES[@]} ports" >&2
  exit 1
fi
for i in "${!NODES[@]}"; do
  addr=$(getent hosts "${NODES[$i]}" | awk '{print $1}' || true)
  if [ -z "$addr" ]; then
    echo "${ADDRS[$i]} ${NODES[$i]}" >> /etc/hosts
  elif [ "$addr" != "${ADDRS[$i]}" ]; then
    echo "slurm: ${NODES[$i]} resolves to $addr, not ${ADDRS[$i]} (see /etc/hosts)" >&2
    exit 1
  fi
done

# --- configuration ---------------------------------------------------------------------------
mkdir -p "$STATE/state" "$STATE/dev"
for n in "${NODES[@]}"; do mkdir -p "$STATE/spool/$n"; done
for i in 0 1 2 3 4 5 6 7; do
  [ -c "$STATE/dev/gpu$i" ] || mknod -m 666 "$STATE/dev/gpu$i" c 1 3
done
cat > "$STATE/slurm.conf" <<CONF
ClusterName=mmfame
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again once its credential expired (Slurm's default: 2 minutes)
AuthInfo=cred_expire=10
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
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
InactiveLimit=0
KillWait=30
MinJobAge=30
SlurmctldTimeout=30
SlurmdTimeout=30
$(for i in "${!NODES[@]}"; do
    echo "NodeName=${NODES[$i]} NodeAddr=${ADDRS[$i]} Port=${SLURMD_PORTS[$i]}" \
         "CPUs=$NODE_CPUS Gres=gpu:8 State=UNKNOWN"
  done)
PartitionName=mmfame Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP
CONF
{
  echo "AutoDetect=off"
  for n in "${NODES[@]}"; do
    for i in 0 1 2 3 4 5 6 7; do echo "NodeName=$n Name=gpu File=$STATE/dev/gpu$i"; done
  done
} > "$STATE/gres.conf"
export SLURM_CONF=$STATE/slurm.conf

# --- daemons ---------------------------------------------------------------------------------
slurmctld -c -f "$SLURM_CONF"
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
for n in "${NODES[@]}"; do slurmd -f "$SLURM_CONF" -N "$n"; done
states=""
for _ in $(seq 200); do
  states=$(sinfo -h -N -o %T 2>/dev/null | sort | uniq -c | xargs || true)
  [ "$states" = "${#NODES[@]} idle" ] && break
  sleep 0.1
done
if [ "$states" != "${#NODES[@]} idle" ]; then
  echo "slurm: the nodes did not all become idle (states: '$states'); logs in $STATE" >&2
  tail -n 20 "$STATE"/slurm*.log >&2 || true
  exit 1
fi
echo "SLURM_CONF=$SLURM_CONF"
