#!/usr/bin/env bash
# Stop what tests/slurm/start.sh STATE_DIR started, by pid file only: the slurmds, slurmctld, and
# munged if (and only if) start.sh started it.
set -uo pipefail
STATE=${1:?usage: stop.sh STATE_DIR}

stop_pid() {  # stop_pid PIDFILE: SIGTERM, wait up to 10 s, then SIGKILL
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$f"
}

for f in "$STATE"/slurmd-*.pid; do stop_pid "$f"; done
stop_pid "$STATE/slurmctld.pid"
if [ -f "$STATE/munged.ours" ]; then
  stop_pid /run/munge/munged.pid
  rm -f "$STATE/munged.ours"
fi
exit 0
