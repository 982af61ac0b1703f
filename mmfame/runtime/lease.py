"""The lease on a run's lock, held by the training process itself.

A launcher that must keep a second trainer out of a work dir (``tools/reproduce.py launch``,
local or torchrun) claims ``lock.json`` and passes its path and token in :data:`LEASE_ENV`. Rank
0 of ``tools/train.py`` then refreshes the lock every :data:`HEARTBEAT_S` from a daemon thread
(and adds its pid), so the lock stays fresh exactly as long as training goes on, whatever
happens to the launcher; a launcher that stalls cannot let another launch in. Should the lock
be taken over anyway (this process stopped for longer than the stale window), the heartbeat
ends the process without saving, leaving the run to its new trainer.
"""
import json
import os
import socket
import sys
import threading
from typing import Optional

from .protocol import read_json, write_atomic

__all__ = ['HEARTBEAT_S', 'LEASE_ENV', 'LEASE_LOST_EXIT', 'hold_run_lease']

LEASE_ENV = 'MMFAME_RUN_LEASE'  # "<token>:<path of lock.json>"
HEARTBEAT_S = 30.0
LEASE_LOST_EXIT = 3


def _lost(path: str, lock: Optional[dict]) -> None:
    who = f'{lock.get("host", "?")} pid {lock.get("pid", "?")}' if lock else 'nobody'
    print(f'mmfame: the lease on {path} is held by {who} now: another launch trains this run; '
          'stopping without saving.', file=sys.stderr, flush=True)
    os._exit(LEASE_LOST_EXIT)  # no handler, no save: the run is someone else's


def hold_run_lease(environ=os.environ, interval: float = HEARTBEAT_S):
    """On rank 0, where :data:`LEASE_ENV` is set: check the lock is this launch's, add this
    process to it and start its heartbeat thread (returned; None where there is no lease)."""
    value = environ.get(LEASE_ENV)
    if not value or int(environ.get('RANK', environ.get('SLURM_PROCID', 0)) or 0) != 0:
        return None
    token, path = value.split(':', 1)
    lock = read_json(path)
    if not lock or lock.get('token') != token:
        _lost(path, lock)
    lock.update(trainer_pid=os.getpid(), trainer_host=socket.gethostname())
    write_atomic(path, json.dumps(lock).encode())
    stop = threading.Event()

    def beat():
        while not stop.wait(interval):
            current = read_json(path)  # None: being replaced, or gone (the next beat sees who)
            if current is not None and current.get('token') != token:
                _lost(path, current)
            try:
                os.utime(path)
            except OSError:
                pass

    thread = threading.Thread(target=beat, name='mmfame-run-lease', daemon=True)
    thread.stop = stop
    thread.start()
    return thread
