"""A matrix of runs (configs x settings x seeds) in one work dir: writing, launching, resuming and
reading back each run.

Layout: ``<work_dir>/matrix.json`` (what the matrix is) and per run its child config
``<work_dir>/<config stem>/<setting>/seed_<S>.py``
(:func:`mmfame.experiments.configs.child_config_text`; beside the run's folder, because the Runner
dumps the expanded config into its work dir under the config's file name) and its folder
``<work_dir>/<config stem>/<setting>/seed_<S>/``, holding

* ``lock.json``: held while a launch trains the run (host and pid of the launch and of its
  job, Slurm job name; its time refreshed every :data:`HEARTBEAT_S`): a second launch, from this
  host or another, leaves the run alone and says who holds it; a lock whose holder is gone (pids
  dead on this host; on another, no refresh for :data:`STALE_AFTER_S` and no Slurm job of the
  run's name) is taken over;
* ``job.json``: the last launch (launcher, command, host, pid, start, end, exit status, and
  whether it was preempted or made progress);
* ``done.json``: written once training exited 0; a run holding it is never launched again;
* ``launch.log``: what every launch printed; the Runner's own files (checkpoints,
  ``<timestamp>/vis_data/scalars.json``) as ``tools/train.py --work-dir`` leaves them.

Every launch passes ``--resume``: the run continues from its newest whole checkpoint, or starts from
scratch where there is none. A preempted run (SIGTERM/SIGUSR1: ``tools/train.py`` saves at the end
of the iteration and exits with 75) loses at most that iteration; one killed outright loses at
most a checkpoint interval. A launch that ended without a new checkpoint and was not preempted
failed in a way a rerun would repeat: it is shown as failed with its log, never retried.
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
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from . import logs
from .configs import (REPO, child_config_text, config_stem, load_config, optimizer_cfg,
                      parse_setting, run_name)

STATES = ('pending', 'running', 'finished', 'interrupted', 'failed')
HEARTBEAT_S = 30  # how often a launch refreshes the locks of the runs it trains
STALE_AFTER_S = 600  # a lock on another host unrefreshed this long: its launch is gone
PREEMPTED_EXIT = 75  # tools/train.py's exit status after a checkpoint on SIGTERM/SIGUSR1
PREEMPTION_RECORD = 'preempted.json'  # ...and the record it leaves in the run's work dir
LAUNCHERS = ('local', 'dist', 'slurm')
DATASETS = {'mmdet': 'coco', 'mmseg': 'ade20k'}  # default_scope -> the --data-root key


@dataclass(frozen=True)
class Run:
    config: str  # repository-relative shipped config
    setting: str
    seed: int

    @property
    def key(self) -> str:
        return f'{config_stem(self.config)}/{run_name(self.setting)}/seed_{self.seed}'

    @property
    def job_name(self) -> str:
        return f'{config_stem(self.config)}.{run_name(self.setting)}.s{self.seed}'


@dataclass
class Matrix:
    """What a work dir trains: every config with every setting and seed, with one budget."""
    configs: List[str]
    settings: List[str]
    seeds: List[int]
    quick: Optional[int] = None  # iteration budget of a smoke run; None: the configs' schedules
    cfg_options: List[str] = field(default_factory=list)  # passed to every run's train.py
    data_roots: Dict[str, str] = field(default_factory=dict)  # 'coco'/'ade20k' -> dataset root
    amp: bool = False  # train.py --amp (fp16 with a dynamic loss scale) for every run

    def __post_init__(self):
        for spec in self.settings:
            parse_setting(spec)
        unknown = set(self.data_roots) - set(DATASETS.values())
        if unknown:
            raise ValueError(f'--data-root takes {" and ".join(DATASETS.values())}=PATH, got '
                             f'{", ".join(sorted(unknown))}')
        if self.quick is not None and self.quick < 1:
            raise ValueError(f'--quick must be a positive number of iterations, got {self.quick}')

    @property
    def runs(self) -> List[Run]:
        seen, out = set(), []
        for config in self.configs:
            for setting in self.settings:
                for seed in self.seeds:
                    run = Run(config, setting, seed)
                    if run.key not in seen:  # aliases (tema = fame) share their runs
                        seen.add(run.key)
                        out.append(run)
        return out

    def bind(self, work_dir: str) -> None:
        """Record the matrix in ``work_dir``, or refuse one that holds another matrix's runs."""
        path = osp.join(work_dir, 'matrix.json')
        mine = asdict(self)
        if osp.exists(path):
            theirs = _read_matrix(path)
            if theirs != mine:
                diff = ', '.join(f'{k}: {theirs.get(k)!r} there, {v!r} now'
                                 for k, v in mine.items() if theirs.get(k) != v)
                raise ValueError(
                    f'{work_dir} holds runs of another matrix ({diff}). Rerun with the arguments '
                    'that started it to continue it, or choose another --work-dir.')
            return
        os.makedirs(work_dir, exist_ok=True)
        _write_json(path, mine)

    @classmethod
    def load(cls, work_dir: str) -> 'Matrix':
        path = osp.join(work_dir, 'matrix.json')
        if not osp.exists(path):
            raise ValueError(f'{work_dir} holds no matrix of runs (no matrix.json): start one with '
                             '`tools/reproduce.py launch`')
        return cls(**_read_matrix(path))


# matrix.json's keys: the type each must have, in words, and a check
_MATRIX_TYPES = {
    'configs': ('a list of config paths', lambda v: _list_of(v, str)),
    'settings': ('a list of settings', lambda v: _list_of(v, str)),
    'seeds': ('a list of integers', lambda v: _list_of(v, int)),
    'quick': ('an integer or null', lambda v: v is None or _list_of([v], int)),
    'cfg_options': ('a list of strings', lambda v: _list_of(v, str)),
    'data_roots': ('an object of dataset: path strings',
                   lambda v: isinstance(v, dict) and _list_of([*v, *v.values()], str)),
    'amp': ('true or false', lambda v: isinstance(v, bool)),
}
_MATRIX_FIX = ('restore it, or delete it and rerun `tools/reproduce.py launch` with the arguments '
               'that started the matrix (finished runs are kept)')


def _list_of(values, kind) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values)


def _read_matrix(path: str) -> dict:
    """matrix.json's keys, or an error that names the file, what is wrong and the fix."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError as e:
        raise ValueError(f'{path} is not valid JSON ({e}): {_MATRIX_FIX}') from None
    if not isinstance(saved, dict):
        raise ValueError(f'{path} holds {type(saved).__name__}, not an object: {_MATRIX_FIX}')
    unknown = set(saved) - set(Matrix.__dataclass_fields__)
    if unknown:
        raise ValueError(f'{path} was written by another version of mmfame (it has '
                         f'{", ".join(sorted(unknown))}): use that version to continue it')
    for key in ('configs', 'settings', 'seeds'):
        if key not in saved:
            raise ValueError(f'{path} has no {key!r}: {_MATRIX_FIX}')
    for key, value in saved.items():
        must, ok = _MATRIX_TYPES[key]
        if not ok(value):
            raise ValueError(f'{path}: {key} must be {must}, got {value!r} '
                             f'({type(value).__name__}): {_MATRIX_FIX}')
    return saved


# ------------------------------------------------------------------------- writing a run
def child_text(run: Run, matrix: Matrix) -> str:
    """The child config of a run: the config as it is (``fame`` of a FAME config), its upstream
    base unchanged (``baseline``) or the config with the setting's optimizer; with the budget."""
    name = parse_setting(run.setting)[0]
    shipped = osp.join(REPO, run.config)
    if name == 'baseline':
        from .upstream import upstream_base
        base = upstream_base(shipped)
        if base is None:
            raise ValueError(f'{run.config} names no mmdet::/mmseg:: base: it has no baseline')
    else:
        base = shipped
    base_cfg = load_config(base)
    current = dict(base_cfg.optim_wrapper.get('optimizer', {}))
    as_it_is = name == 'baseline' or (run.setting in ('fame', 'tema') and
                                      current.get('type') == 'FAME')
    optimizer = None if as_it_is else optimizer_cfg(run.setting, current)
    quick = matrix.quick
    return child_config_text(
        base, base_cfg, optimizer=optimizer, iters=quick,
        checkpoint_interval=None if quick is None else max(1, quick // 4),
        data_root=matrix.data_roots.get(DATASETS.get(base_cfg.get('default_scope'))),
        imports=name != 'baseline')


def run_dir(work_dir: str, run: Run) -> str:
    return osp.join(work_dir, run.key)


def child_path(work_dir: str, run: Run) -> str:
    return run_dir(work_dir, run) + '.py'


def prepare(work_dir: str, run: Run, matrix: Matrix) -> str:
    """Write the run's folder and child config; returns the child config's path."""
    d = run_dir(work_dir, run)
    os.makedirs(d, exist_ok=True)
    path = child_path(work_dir, run)
    text = child_text(run, matrix)
    if osp.exists(path):
        with open(path) as f:
            if f.read() != text:  # e.g. the shipped config was edited under a started run
                raise ValueError(f'{path} differs from the config this matrix would write now; '
                                 'continue with the config it started with or use another '
                                 '--work-dir')
    else:
        with open(path, 'w') as f:
            f.write(text)
    return path


# ------------------------------------------------------------------------ reading a run
def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj) -> None:
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_job(d: str) -> Optional[dict]:
    """The run's job.json (None if there is none), or an error that names the file, what is
    wrong and the fix."""
    path = osp.join(d, 'job.json')
    if not osp.exists(path):
        return None
    job = _read_json(path)
    fix = ('delete it if no launch of this run is alive (the run then shows as interrupted or '
           'pending, and the next launch resumes it)')
    if not isinstance(job, dict):
        raise ValueError(f'{path} is not a JSON object: {fix}')
    # an ended launch has its exit status; one in flight, the host and pid that run it
    must = dict(returncode=(int, 'an exit status')) if 'returncode' in job else dict(
        host=(str, 'a host name'), pid=(int, 'a pid'))
    for key, (kind, words) in must.items():
        value = job.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f'{path}: {key} must be {words}, got {value!r}: {fix}')
    return job


# ------------------------------------------------------------------------ who trains a run
def _lock_path(d: str) -> str:
    return osp.join(d, 'lock.json')


def _slurm_job_alive(name: Optional[str]) -> Optional[bool]:
    """Whether Slurm still has a job of this name (None: no name or no Slurm client here)."""
    if not name:
        return None
    try:
        proc = subprocess.run(['squeue', '--noheader', '--name', name, '--format', '%i'],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(proc.stdout.strip()) if proc.returncode == 0 else None


def _lock_alive(lock: dict, age: float) -> bool:
    if lock.get('host') == socket.gethostname():
        return any(isinstance(p, int) and _alive(p) for p in (lock.get('pid'), lock.get('job_pid')))
    if age < STALE_AFTER_S:
        return True
    return bool(_slurm_job_alive(lock.get('slurm_job')))


def holder(d: str) -> Optional[dict]:
    """The lock of the launch that trains the run now (with ``age``: seconds since its last
    refresh), or None where there is no lock or its holder is gone."""
    lock = _lock(d)
    return lock if lock is not None and lock['alive'] else None


def _lock(d: str) -> Optional[dict]:
    path = _lock_path(d)
    try:
        age = time.time() - osp.getmtime(path)
    except OSError:
        return None
    lock = _read_json(path)
    if not isinstance(lock, dict):  # being written, or damaged: held until it goes stale
        lock = {}
        alive = age < STALE_AFTER_S
    else:
        alive = _lock_alive(lock, age)
    return dict(lock, age=round(age), alive=alive)


def describe_holder(lock: dict) -> str:
    who = f'{lock.get("host", "?")} pid {lock.get("pid", "?")}'
    if lock.get('slurm_job'):
        who += f', Slurm job {lock["slurm_job"]}'
    return f'{who}, refreshed {lock["age"]} s ago'


def claim(d: str, launcher: 'Launcher', run: 'Run', echo=print) -> Optional[dict]:
    """Take the run's lock for this launch; returns None once it is ours, else the live lock of
    the launch that holds it. A lock whose holder is gone is taken over, saying so."""
    path = _lock_path(d)
    mine = dict(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                launcher=launcher.kind, started=time.time(),
                slurm_job=run.job_name if launcher.kind == 'slurm' else None)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            lock = _lock(d)
            if lock is None:
                continue  # released meanwhile
            if lock['alive']:
                return lock
            echo(f'[reproduce] {run.key}: taking over from a launch that is gone '
                 f'({describe_holder(lock)})')
            try:  # aside, not deleted: only one of two launches taking over can move it
                os.replace(path, f'{path}.stale.{mine["token"]}')
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(mine, f)
        time.sleep(0.2)  # a launch that took over the same stale lock at the same time
        if (_read_json(path) or {}).get('token') == mine['token']:
            for stale in glob.glob(f'{path}.stale.*'):
                os.remove(stale)
            return None
    lock = _lock(d)
    return lock or dict(host='?', pid='?', age=0, alive=True)


def _update_lock(d: str, **changes) -> None:
    lock = _read_json(_lock_path(d))
    if isinstance(lock, dict) and lock.get('pid') == os.getpid():
        _write_json(_lock_path(d), dict(lock, **changes))


def release(d: str) -> None:
    lock = _read_json(_lock_path(d))
    if isinstance(lock, dict) and lock.get('pid') == os.getpid() and \
            lock.get('host') == socket.gethostname():
        os.remove(_lock_path(d))


def state(d: str) -> str:
    """pending, running (a live launch holds its lock), finished, interrupted (preempted, or
    stopped after making progress: a rerun resumes it) or failed (a rerun would fail again)."""
    if osp.exists(osp.join(d, 'done.json')):
        return 'finished'
    if holder(d) is not None:
        return 'running'
    job = _read_job(d)
    checkpoint = logs.latest_checkpoint(d)
    if job is None or 'returncode' not in job:  # never launched here, or its launch died
        return 'interrupted' if checkpoint else ('failed' if job else 'pending')
    if job.get('preempted'):
        return 'interrupted'
    return 'interrupted' if checkpoint and job.get('progress', True) else 'failed'


def describe(work_dir: str, run: Run, metric_keys: Sequence[str] = ()) -> dict:
    """A run as every report reads it (:func:`mmfame.experiments.report.summarize`) and status
    shows it: state, progress, the final value of each metric (``metric_keys``, else those of
    the known tasks that were logged; a finished run's only), the metric curves and the
    training loss curve (``curve['loss']``), the final loss and the seconds per iteration."""
    d = run_dir(work_dir, run)
    records = logs.all_scalars(d)
    logged = set().union(*records) if records else set()
    keys = list(metric_keys) or [k for group in logs.KNOWN_METRICS if group[0] in logged
                                 for k in group if k in logged]
    st = state(d)
    lock = _lock(d)
    done = _read_json(osp.join(d, 'done.json')) or {}
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
        holder=describe_holder(lock) if lock else None, holder_alive=bool(lock and lock['alive']),
        log_tail=logs.tail(osp.join(d, 'launch.log')) if st in ('failed', 'interrupted') else '')


def final_metrics(d: str) -> dict:
    """The metrics of the last validation of every known task's keys."""
    records = logs.all_scalars(d)
    out = {}
    for group in logs.KNOWN_METRICS:
        for key in group:
            values = [r[key] for r in records if key in r]
            if values:
                out[key] = values[-1]
    return out


# --------------------------------------------------------------------------- launching
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


class _Job:
    def __init__(self, run: Run, d: str, argv: List[str], env: Dict[str, str], attempt: int):
        self.run, self.dir, self.attempt, self.start = run, d, attempt, time.time()
        self.before = _checkpoint_mark(d)
        self.log = open(osp.join(d, 'launch.log'), 'a')
        self.log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} attempt {attempt}: '
                       f'{" ".join(argv)}\n')
        self.log.flush()
        self.proc = subprocess.Popen(argv, cwd=REPO, env=_child_env(env), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        _update_lock(d, job_pid=self.proc.pid)
        self.job = dict(argv=argv, env=env, host=socket.gethostname(), pid=self.proc.pid,
                        started=self.start, attempt=attempt)
        _write_json(osp.join(d, 'job.json'), self.job)

    def finish(self) -> int:
        rc = self.proc.returncode
        self.log.close()
        seconds = round(time.time() - self.start, 1)
        record = osp.join(self.dir, PREEMPTION_RECORD)
        # the exit status of tools/train.py, or its record where torchrun/srun report their own
        preempted = rc == PREEMPTED_EXIT or (osp.exists(record) and
                                             osp.getmtime(record) >= self.start - 1)
        self.job.update(returncode=rc, ended=time.time(), seconds=seconds, preempted=preempted,
                        progress=_checkpoint_mark(self.dir) != self.before)
        _write_json(osp.join(self.dir, 'job.json'), self.job)
        if rc == 0:
            _write_json(osp.join(self.dir, 'done.json'),
                        dict(returncode=0, seconds=seconds, metrics=final_metrics(self.dir),
                             last_iter=logs.last_logged_iter(self.dir)))
        release(self.dir)
        return rc


class _Stop:
    """SIGTERM/SIGHUP to a launch: pass SIGTERM on to the jobs it runs (each saves a checkpoint
    and exits), start nothing more, and record how they ended."""

    def __init__(self, active: List['_Job'], echo):
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
    """Train every run of the matrix that is not finished or held by another launch,
    ``max_jobs`` at a time; a run that was preempted or stopped after making progress is
    relaunched (resumed) up to ``retries`` times. Returns {run key: state} of every run."""
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
            echo(f'[reproduce] {run.key}: running, left alone (held by '
                 f'{describe_holder(holder(d) or dict(age="?"))})')
            continue
        queue.append((run, prepare(work_dir, run, matrix), 0))
    active: List[_Job] = []
    beat = time.time()
    with _Stop(active, echo) as stop:
        while (queue and not stop.signal) or active:
            while queue and len(active) < max(1, max_jobs) and not stop.signal:
                run, child, attempt = queue.pop(0)
                d = run_dir(work_dir, run)
                held = claim(d, launcher, run, echo)
                if held is not None:
                    echo(f'[reproduce] {run.key}: held by another launch '
                         f'({describe_holder(held)}), left alone')
                    continue
                argv, env = launcher.command(run, child, d, matrix.cfg_options, _free_port(),
                                             matrix.amp)
                resumed = logs.latest_checkpoint(d)
                echo(f'[reproduce] {run.key}: ' + (f'resuming from {osp.basename(resumed)}'
                                                   if resumed else 'starting'))
                active.append(_Job(run, d, argv, env, attempt))
            time.sleep(1)
            if time.time() - beat > HEARTBEAT_S:
                beat = time.time()
                for job in active:
                    try:
                        os.utime(_lock_path(job.dir))
                    except OSError:
                        pass
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
    return {run.key: state(run_dir(work_dir, run)) for run in matrix.runs}


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
