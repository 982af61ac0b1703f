"""Who trains a run, and what state it is in, read from its folder and, for Slurm runs, from Slurm.

A run's folder (:func:`mmfame.experiments.matrix.run_dir`) holds, beside the Runner's own files
(checkpoints, ``<timestamp>/vis_data/scalars.json``):

* ``job.json``: its last launch. A Slurm run's names the batch job it was submitted as
  (``slurm_job``): whether that job trains the run is Slurm's answer (``squeue``), and the job's
  own record (:data:`mmfame.runtime.protocol.JOB_RECORD`) tells how its last start ended once
  Slurm has forgotten it. A local or torchrun launch's names its host and pids and, once it
  ended, its exit status, whether it was preempted and whether it made progress;
* ``lock.json``: held while a local or torchrun launch trains the run (host, pids, a token). Its
  time is refreshed every :data:`mmfame.runtime.lease.HEARTBEAT_S` by the training process itself,
  so a stalled launcher cannot let a second one in. A holder on this host is alive while one of
  its pids is; on another host, until :data:`STALE_AFTER_S` without a refresh;
* ``done.json``: written once training exited 0; a run holding it is never launched again;
* ``launch.log`` (local, torchrun) or ``slurm-JOBID.out`` (Slurm): what every start printed.
"""
import os
import os.path as osp
import socket
import subprocess
import time
from typing import Optional, Sequence

from mmfame.runtime.protocol import JOB_RECORD, read_json, read_record

from . import logs
from .matrix import Run, run_dir, write_json
from .metrics import METRICS, logged_tasks

__all__ = ['STALE_AFTER_S', 'STATES', 'describe', 'final_metrics', 'holder', 'lock_path',
           'read_lock', 'slurm_job_state', 'state']

STATES = ('pending', 'running', 'finished', 'interrupted', 'failed')
STALE_AFTER_S = 600  # a lock on another host unrefreshed this long: its trainer is gone
CLOCK_SLACK_S = 5  # a lock written further in this host's future: its writer's clock is ahead
_UNLOCK = 'delete it if no launch of this run is alive (`tools/reproduce.py status` lists them)'


def _alive(pid) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_job(d: str) -> Optional[dict]:
    """The run's job.json (None if there is none), or an error that names the file, what is
    wrong and the fix."""
    path = osp.join(d, 'job.json')
    if not osp.exists(path):
        return None
    job = read_json(path)
    fix = ('delete it if no launch of this run is alive (the run then shows as interrupted or '
           'pending, and the next launch resumes it)')
    if not isinstance(job, dict):
        raise ValueError(f'{path} is not a JSON object: {fix}')
    # a Slurm job: its id; an ended launch: its exit status; one in flight: its host and pid
    if 'slurm_job' in job:
        must = dict(slurm_job=(str, 'a Slurm job id'))
    elif 'returncode' in job:
        must = dict(returncode=(int, 'an exit status'))
    else:
        must = dict(host=(str, 'a host name'), pid=(int, 'a pid'))
    for key, (kind, words) in must.items():
        value = job.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f'{path}: {key} must be {words}, got {value!r}: {fix}')
    return job


# ------------------------------------------------------------------------ who trains a run
def slurm_job_state(job_id: str) -> Optional[str]:
    """Slurm's state of a job ('PENDING', 'RUNNING', ...; '' once Slurm has forgotten it, None
    where Slurm cannot be asked)."""
    try:
        proc = subprocess.run(['squeue', '--noheader', '--jobs', str(job_id), '--format', '%T'],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ''
    return '' if 'invalid job id' in (proc.stderr or '').lower() else None


def lock_path(d: str) -> str:
    return osp.join(d, 'lock.json')


def read_lock(d: str) -> Optional[dict]:
    """The run's lock (None: none), with ``age`` (seconds since its last refresh), ``alive``,
    and ``problem`` where it is damaged or written in this host's future."""
    path = lock_path(d)
    try:
        age = time.time() - osp.getmtime(path)
    except OSError:
        return None
    lock = read_json(path)
    problem = None
    if not isinstance(lock, dict):  # empty or cut short: held until it is stale, then taken over
        lock = {}
        problem = (f'{path} is damaged (empty or not JSON): it counts as held until '
                   f'{STALE_AFTER_S // 60} minutes after its last change; {_UNLOCK}')
    elif age < -CLOCK_SLACK_S:
        problem = (f'{path} was refreshed {-age:.0f} s in this host\'s future: the clock of '
                   f'{lock.get("host", "its host")} is ahead; it counts as held until '
                   f'{STALE_AFTER_S // 60} minutes after that time. Fix the clock, or {_UNLOCK}')
    if lock.get('host') == socket.gethostname():
        alive = any(_alive(lock.get(k)) for k in ('pid', 'job_pid', 'trainer_pid'))
    else:
        alive = age < STALE_AFTER_S
    return dict(lock, age=round(age), alive=alive, problem=problem)


def holder(d: str) -> Optional[dict]:
    """Who trains the run now: ``who`` (in words) and ``alive``; None where nobody does or did.
    A Slurm run is held by its batch job while Slurm has it (or cannot be asked); a local one
    by its lock while the lock's holder lives."""
    job = read_job(d)
    if job and 'slurm_job' in job and not osp.exists(osp.join(d, 'done.json')):
        st = slurm_job_state(job['slurm_job'])
        if st != '':
            return dict(who=f"Slurm job {job['slurm_job']} ({st or 'Slurm cannot be asked'})",
                        alive=True)
    lock = read_lock(d)
    if lock is None:
        return None
    who = (f'{lock.get("host", "?")} pid {lock.get("pid", "?")}'
           f'{", trainer pid " + str(lock["trainer_pid"]) if lock.get("trainer_pid") else ""}, '
           f'refreshed {lock["age"]} s ago')
    return dict(who=lock['problem'] or who, alive=lock['alive'])


# ------------------------------------------------------------------------ what state it is in
def state(d: str) -> str:
    """pending, running (a live launch or Slurm job trains it), finished, interrupted
    (preempted, or stopped after making progress: a rerun resumes it) or failed (a rerun would
    fail again). A Slurm run found finished gets its ``done.json`` here."""
    if osp.exists(osp.join(d, 'done.json')):
        return 'finished'
    held = holder(d)
    if held is not None and held['alive']:
        return 'running'
    job = read_job(d)
    checkpoint = logs.latest_checkpoint(d)
    if job is not None and 'slurm_job' in job:
        record = read_record(d, JOB_RECORD) or {}
        if str(record.get('job')) != job['slurm_job']:
            return 'interrupted' if checkpoint else 'failed'  # cancelled before its record
        if record.get('returncode') == 0:
            write_json(osp.join(d, 'done.json'), dict(
                returncode=0, seconds=_seconds(record), metrics=final_metrics(d),
                last_iter=logs.last_logged_iter(d)))
            return 'finished'
        return 'interrupted' if checkpoint else 'failed'
    if job is None or 'returncode' not in job:  # never launched here, or its launch died
        return 'interrupted' if checkpoint else ('failed' if job else 'pending')
    if job.get('preempted'):
        return 'interrupted'
    return 'interrupted' if checkpoint and job.get('progress', True) else 'failed'


def _seconds(record: dict):
    start, end = record.get('start'), record.get('end')
    return round(end - start, 1) if isinstance(start, int) and isinstance(end, int) else None


def describe(work_dir: str, run: Run, metric_keys: Sequence[str] = ()) -> dict:
    """A run as every report reads it (:func:`mmfame.experiments.report.summarize`) and status
    shows it: state, progress, the final value of each metric (``metric_keys``, else those of
    the known tasks that were logged; a finished run's only), the metric curves and the
    training loss curve (``curve['loss']``), the final loss and the seconds per iteration."""
    d = run_dir(work_dir, run)
    records = logs.all_scalars(d)
    logged = set().union(*records) if records else set()
    keys = list(metric_keys) or [k for task in logged_tasks(logged) for k in task]
    st = state(d)
    held = holder(d)
    done = read_json(osp.join(d, 'done.json')) or {}
    train = logs.summarize_run(records, keys)
    curve = {k: logs.metric_curve(records, k) for k in keys}
    curve['loss'] = [list(p) for p in zip(train['iters'], train['losses'])]
    return dict(
        config=run.config, setting=run.setting, seed=run.seed, state=st, key=run.key,
        metrics=train['metrics'] if st == 'finished' else {}, curve=curve,
        step_unit='epoch' if logs.by_epoch(records) else 'iter',
        final_loss=train['final_loss'], sec_per_iter=train['sec_per_iter'],
        last_iter=train.get('last_iter'), seconds=done.get('seconds'),
        checkpoint=logs.latest_checkpoint(d), work_dir=d,
        holder=held['who'] if held else None, holder_alive=bool(held and held['alive']),
        log_tail=_log_tail(d) if st in ('failed', 'interrupted') else '')


def _log_tail(d: str) -> str:
    """The end of what the run's last start printed."""
    outs = sorted((p for p in os.listdir(d) if p.startswith('slurm-') and p.endswith('.out')),
                  key=lambda p: osp.getmtime(osp.join(d, p))) if osp.isdir(d) else []
    return logs.tail(osp.join(d, outs[-1] if outs else 'launch.log'))


def final_metrics(d: str) -> dict:
    """The last logged value of every known metric (:data:`.metrics.METRICS`) the run logged."""
    records = logs.all_scalars(d)
    out = {}
    for m in METRICS:
        values = [r[m.key] for r in records if m.key in r]
        if values:
            out[m.key] = values[-1]
    return out
