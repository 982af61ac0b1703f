"""Starting runs: a Slurm run is submitted as a self-requeuing batch job and left to Slurm; a local
or torchrun run is started here and waited for.

``launch`` trains every run of a matrix that is not finished or held. ``--launcher slurm``
submits each through ``REQUEUE=1 tools/slurm_train.sh`` and records the job id in the run's
``job.json``: the job checkpoints on the stop signal, requeues itself and resumes at each start,
so nothing on the login node waits for it (``status`` asks Slurm). ``local`` and ``dist`` runs
are started here, ``max_jobs`` at a time, each under a lock whose lease the training process
itself keeps (:mod:`mmfame.runtime.lease`); a run preempted or stopped after making progress is
relaunched up to ``retries`` times, one that failed without a new checkpoint is not.

Every launch passes ``--resume``: the run continues from its newest whole checkpoint, or starts
from scratch where there is none. The exit status and records of a preempted start are
:mod:`mmfame.runtime.protocol`'s.
"""
import glob
import json
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from mmfame.runtime.lease import LEASE_ENV
from mmfame.runtime.protocol import PREEMPTED_EXIT, PREEMPTION_RECORD

from . import logs
from .configs import REPO
from .matrix import Matrix, Run, child_path, prepare, run_dir, write_json
from .state import holder, lock_path, read_lock, state

__all__ = ['LAUNCHERS', 'Launcher', 'claim', 'evaluate', 'launch', 'release']

LAUNCHERS = ('local', 'dist', 'slurm')


@dataclass
class Launcher:
    """How a run is started: ``local`` (tools/train.py), ``dist`` (tools/dist_train.sh with
    ``gpus`` processes) or ``slurm`` (tools/slurm_train.sh on ``partition``; ``gpus``,
    ``gpus_per_node``, ``cpus_per_task`` and ``srun_args`` as that script takes them)."""
    kind: str = 'local'
    partition: Optional[str] = None
    gpus: Optional[int] = None
    gpus_per_node: Optional[int] = None
    cpus_per_task: Optional[int] = None
    srun_args: Optional[str] = None
    python: str = sys.executable

    def __post_init__(self):
        if self.kind not in LAUNCHERS:
            raise ValueError(f'unknown launcher {self.kind!r}; use one of {", ".join(LAUNCHERS)}')
        if self.kind == 'slurm' and not self.partition:
            raise ValueError('--launcher slurm needs --partition (the Slurm partition to run on)')

    def command(self, run: Run, child: str, d: str, cfg_options: Sequence[str], port: int,
                amp: bool = False):
        """(argv, extra environment) of one launch; always ``--resume``."""
        tail = ['--amp'] * amp + ['--resume', '--cfg-options', f'randomness.seed={run.seed}',
                                  *cfg_options]
        env = dict(PYTHON=self.python)
        if self.kind == 'local':
            return [self.python, osp.join(REPO, 'tools', 'train.py'), child, '--work-dir', d,
                    *tail], env
        if self.kind == 'dist':
            env['PORT'] = str(port)
            return ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), child, str(self.gpus or 1),
                    '--work-dir', d, *tail], env
        env['MASTER_PORT'] = str(port)  # jobs sharing a node must not share mmengine's 29500
        for name, value in (('GPUS', self.gpus), ('GPUS_PER_NODE', self.gpus_per_node),
                            ('CPUS_PER_TASK', self.cpus_per_task), ('SRUN_ARGS', self.srun_args)):
            if value is not None:
                env[name] = str(value)
        return ['bash', osp.join(REPO, 'tools', 'slurm_train.sh'), self.partition, run.job_name,
                child, d, *tail], env

    def check(self) -> None:
        """Fail before launching anything where Slurm rejects the partition (its own words)."""
        if self.kind != 'slurm':
            return
        try:
            proc = subprocess.run(['scontrol', 'show', 'partition', self.partition],
                                  capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            raise RuntimeError('--launcher slurm: scontrol is not on PATH (no Slurm client here)')
        if proc.returncode != 0:
            raise RuntimeError(f'Slurm rejects partition {self.partition!r}: '
                               f'{(proc.stderr or proc.stdout).strip()}')



# ------------------------------------------------------------------------ the lock of a run
def claim(d: str, launcher: Launcher, run: Run, echo=print) -> Optional[dict]:
    """Take the run's lock for this launch; returns None once it is ours, else who holds it
    (:func:`mmfame.experiments.state.holder`). A lock whose holder is gone is taken over,
    saying so."""
    path = lock_path(d)
    mine = dict(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                launcher=launcher.kind, started=time.time())
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            lock = read_lock(d)
            if lock is None:
                continue  # released meanwhile
            if lock['alive']:
                return holder(d)
            echo(f'[reproduce] {run.key}: taking over from a launch that is gone '
                 f'({holder(d)["who"]})')
            try:  # aside, not deleted: only one of two launches taking over can move it
                os.replace(path, f'{path}.stale.{mine["token"]}')
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(mine, f)
        time.sleep(0.2)  # a launch that took over the same stale lock at the same time
        lock = read_lock(d) or {}
        if lock.get('token') == mine['token']:
            for stale in glob.glob(f'{path}.stale.*'):
                os.remove(stale)
            return None
    return holder(d) or dict(who='another launch', alive=True)


def _lease(d: str) -> str:
    """The value of :data:`~mmfame.runtime.lease.LEASE_ENV` for the trainer of a claimed run."""
    with open(lock_path(d)) as f:
        return f'{json.load(f)["token"]}:{lock_path(d)}'


def _update_lock(d: str, **changes) -> None:
    lock = read_lock(d)
    if lock is not None and lock.get('pid') == os.getpid():
        write_json(lock_path(d), {k: v for k, v in dict(lock, **changes).items()
                                  if k not in ('age', 'alive', 'problem')})


def release(d: str) -> None:
    lock = read_lock(d)
    if lock is not None and lock.get('pid') == os.getpid() and \
            lock.get('host') == socket.gethostname():
        os.remove(lock_path(d))


# --------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _child_env(extra: Dict[str, str]) -> Dict[str, str]:
    """This process's environment with ``extra``, the repository first on PYTHONPATH (children
    import mmfame and the configs' custom_imports from this checkout)."""
    env = dict(os.environ)
    env.update(extra)
    env['PYTHONPATH'] = os.pathsep.join(
        [REPO] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    return env


def _checkpoint_mark(d: str):
    path = logs.latest_checkpoint(d)
    return (path, osp.getmtime(path)) if path else None


def _submit(run: Run, d: str, argv: List[str], env: Dict[str, str]) -> str:
    """Submit a Slurm run as a self-requeuing batch job (``REQUEUE=1 slurm_train.sh``); its id."""
    with open(osp.join(d, 'launch.log'), 'a') as log:
        log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} submitted: {" ".join(argv)}\n')
    proc = subprocess.run(argv, cwd=REPO, env=_child_env(dict(env, REQUEUE='1')),
                          capture_output=True, text=True, timeout=300)
    lines = proc.stdout.strip().splitlines()
    job = lines[-1].split(';')[0] if lines else ''
    if proc.returncode != 0 or not job.isdigit():
        raise RuntimeError(f'{run.key}: sbatch did not take the job (exit {proc.returncode}): '
                           f'{(proc.stderr or proc.stdout).strip()[-2000:]}')
    write_json(osp.join(d, 'job.json'), dict(
        slurm_job=job, argv=argv, env=env, host=socket.gethostname(), submitted=time.time()))
    return job


class _Job:
    """A local or torchrun launch of a run, started here; the lease goes to its trainer."""

    def __init__(self, run: Run, d: str, argv: List[str], env: Dict[str, str], attempt: int):
        self.run, self.dir, self.attempt, self.start = run, d, attempt, time.time()
        self.before = _checkpoint_mark(d)
        self.log = open(osp.join(d, 'launch.log'), 'a')
        self.log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} attempt {attempt}: '
                       f'{" ".join(argv)}\n')
        self.log.flush()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=_child_env(dict(env, **{
            LEASE_ENV: _lease(d)})), stdout=self.log, stderr=subprocess.STDOUT)
        _update_lock(d, job_pid=self.proc.pid)
        self.job = dict(argv=argv, env=env, host=socket.gethostname(), pid=self.proc.pid,
                        started=self.start, attempt=attempt)
        write_json(osp.join(d, 'job.json'), self.job)

    def finish(self) -> int:
        rc = self.proc.returncode
        self.log.close()
        seconds = round(time.time() - self.start, 1)
        record = osp.join(self.dir, PREEMPTION_RECORD)
        # the exit status of tools/train.py, or its record where torchrun reports its own
        preempted = rc == PREEMPTED_EXIT or (osp.exists(record) and
                                             osp.getmtime(record) >= self.start - 1)
        self.job.update(returncode=rc, ended=time.time(), seconds=seconds, preempted=preempted,
                        progress=_checkpoint_mark(self.dir) != self.before)
        write_json(osp.join(self.dir, 'job.json'), self.job)
        if rc == 0:
            from .state import final_metrics
            write_json(osp.join(self.dir, 'done.json'),
                       dict(returncode=0, seconds=seconds, metrics=final_metrics(self.dir),
                            last_iter=logs.last_logged_iter(self.dir)))
        release(self.dir)
        return rc


class _Stop:
    """SIGTERM/SIGHUP to a launch: pass SIGTERM on to the jobs it runs (each saves a checkpoint
    and exits), start nothing more, and record how they ended."""

    def __init__(self, active: List[_Job], echo):
        self.active, self.echo, self.signal = active, echo, None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM,
                                                                     signal.SIGHUP)}
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name
        self.echo(f'[reproduce] {self.signal}: stopping {len(self.active)} running job(s); '
                  'each saves a checkpoint, and the same command resumes them')
        for job in self.active:
            if job.proc.poll() is None:
                job.proc.send_signal(signal.SIGTERM)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def launch(matrix: Matrix, work_dir: str, launcher: Launcher, max_jobs: int = 1,
           retries: int = 0, echo=print) -> Dict[str, str]:
    """Train every run of the matrix that is not finished or held by another launch: submit
    each to Slurm and return, or train ``max_jobs`` at a time here, relaunching a run that was
    preempted or stopped after making progress up to ``retries`` times. Returns {run key:
    state} of every run."""
    work_dir = osp.abspath(work_dir)
    matrix.bind(work_dir)
    launcher.check()
    queue = []
    for run in matrix.runs:
        d = run_dir(work_dir, run)
        st = state(d)
        if st == 'finished':
            echo(f'[reproduce] {run.key}: finished, left alone')
            continue
        if st == 'running':
            echo(f'[reproduce] {run.key}: running, left alone (held by {holder(d)["who"]})')
            continue
        queue.append((run, prepare(work_dir, run, matrix), 0))
    if launcher.kind == 'slurm':
        _submit_all(queue, work_dir, launcher, matrix, echo)
    else:
        _train_here(queue, work_dir, launcher, matrix, max_jobs, retries, echo)
    return {run.key: state(run_dir(work_dir, run)) for run in matrix.runs}


def _starting(d: str) -> str:
    resumed = logs.latest_checkpoint(d)
    return f'resuming from {osp.basename(resumed)}' if resumed else 'starting'


def _submit_all(queue, work_dir, launcher, matrix, echo) -> None:
    """Submit each queued run as a batch job: its lock is held only while it is submitted
    (a second launch submitting the same run at the same time leaves it alone)."""
    for run, child, _ in queue:
        d = run_dir(work_dir, run)
        held = claim(d, launcher, run, echo)
        if held is not None:
            echo(f'[reproduce] {run.key}: held by another launch ({held["who"]}), left alone')
            continue
        try:
            argv, env = launcher.command(run, child, d, matrix.cfg_options, _free_port(),
                                         matrix.amp)
            what = _starting(d)
            job = _submit(run, d, argv, env)
        finally:
            release(d)
        echo(f'[reproduce] {run.key}: {what} as Slurm job {job} (it requeues itself when '
             'preempted; `tools/reproduce.py status` follows it)')


def _train_here(queue, work_dir, launcher, matrix, max_jobs, retries, echo) -> None:
    active: List[_Job] = []
    with _Stop(active, echo) as stop:
        while (queue and not stop.signal) or active:
            while queue and len(active) < max(1, max_jobs) and not stop.signal:
                run, child, attempt = queue.pop(0)
                d = run_dir(work_dir, run)
                held = claim(d, launcher, run, echo)
                if held is not None:
                    echo(f'[reproduce] {run.key}: held by another launch ({held["who"]}), '
                         'left alone')
                    continue
                argv, env = launcher.command(run, child, d, matrix.cfg_options, _free_port(),
                                             matrix.amp)
                echo(f'[reproduce] {run.key}: {_starting(d)}')
                active.append(_Job(run, d, argv, env, attempt))
            time.sleep(1)
            for job in [j for j in active if j.proc.poll() is not None]:
                active.remove(job)
                rc = job.finish()
                st = state(job.dir)
                why = ' preempted' if job.job['preempted'] else ''
                echo(f'[reproduce] {job.run.key}: {st} (exit {rc}{why}, '
                     f'{job.job["seconds"]:.0f} s)')
                if st == 'failed' and job.attempt < retries:
                    echo(f'[reproduce] {job.run.key}: no new checkpoint since the launch and '
                         'not preempted: a rerun would fail the same way, so it is not retried')
                if st == 'interrupted' and job.attempt < retries and not stop.signal:
                    queue.append((job.run, child_path(work_dir, job.run), job.attempt + 1))


def evaluate(work_dir: str, run: Run, python: str = sys.executable) -> dict:
    """Test a run's latest checkpoint with ``tools/test.py`` on its own child config (output in
    ``<run dir>/test.log``, results in ``<run dir>/test``); returns the metrics it wrote."""
    d = run_dir(osp.abspath(work_dir), run)
    checkpoint = logs.latest_checkpoint(d)
    if checkpoint is None:
        raise RuntimeError(f'{run.key}: no checkpoint to test in {d}')
    test_dir, log_path = osp.join(d, 'test'), osp.join(d, 'test.log')
    argv = [python, osp.join(REPO, 'tools', 'test.py'), d + '.py', checkpoint,
            '--work-dir', test_dir]
    with open(log_path, 'w') as log:
        log.write(' '.join(argv) + '\n\n')
        log.flush()
        rc = subprocess.run(argv, cwd=REPO, env=_child_env({}), stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f'{run.key}: tools/test.py exited {rc} (full log {log_path}):\n'
                           + logs.tail(log_path))
    return logs.test_metrics(test_dir)
