"""tools/reproduce.py and mmfame.experiments: choosing configs and settings, the child configs of
each setting, launch commands, refusing bad input, and the whole matrix end to end.

End to end (demo configs on the tiny synthetic data, a few iterations): 2 configs x 2 settings x 1
seed locally and on the private Slurm of tests/slurm, where one job is cancelled with ``scancel``
mid-run (its ranks save the iteration in flight) and finished by rerunning the command (resumed
from that checkpoint, finished runs left alone); ``gather``'s table and metafile are checked against the runs' logs.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

pytest.importorskip('mmengine', reason='mmfame.experiments needs mmengine')

from e2e import DET_CFG, PY, REPO, SEG_CFG, slurm_env, tool_env, wait_for  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmfame.experiments import configs, logs, runs  # noqa: E402

HAS_OPENMMLAB = all(importlib.util.find_spec(m) for m in ('mmdet', 'mmseg', 'mmcv'))
needs_openmmlab = pytest.mark.skipif(not HAS_OPENMMLAB, reason='needs mmdet, mmseg and mmcv')
REPRODUCE = osp.join(REPO, 'tools', 'reproduce.py')
COCO_RETINANET = 'configs/coco/retinanet_r50_fpn_fame_8xb2-1x_coco.py'
ADE_SEGFORMER = 'configs/ade20k/segformer_mit-b0_fame_8xb2-160k_ade20k-512x512.py'
DEMO = [osp.relpath(DET_CFG, REPO), osp.relpath(SEG_CFG, REPO)]
DEMO_GROUP = DEMO + ['configs/demo/yolox_tiny_fame_1xb8-300i_demo-coco.py']
QUICK = 8  # iterations per end-to-end run; checkpoints every QUICK // 4


# ----------------------------------------------------------------------- choosing configs
SELECT_CASES = {  # id: (specs, configs that must be chosen, count or None)
    'group': (['demo'], DEMO_GROUP, 3),
    'two_groups': (['coco', 'ade20k'], [COCO_RETINANET, ADE_SEGFORMER], 17),
    'stem': (['retinanet_r50_fpn_fame_8xb2-1x_coco'], [COCO_RETINANET], 1),
    'file_name': (['retinanet_r50_fpn_fame_8xb2-1x_coco.py'], [COCO_RETINANET], 1),
    'path': ([COCO_RETINANET], [COCO_RETINANET], 1),
    'glob': (['*segformer*'], [ADE_SEGFORMER], None),
    'deduplicated': (['demo', DEMO[0]], DEMO_GROUP, 3),
    'mmyolo': (['mmyolo'], ['configs/mmyolo/yolov5_n-v61_fame_syncbn_fast_8xb16-300e_coco.py',
                            'configs/mmyolo/yolov5_s-v61_fame_syncbn_fast_8xb16-300e_coco.py'], 2),
}


@pytest.mark.parametrize('case', SELECT_CASES)
def test_select_configs(case):
    specs, must, count = SELECT_CASES[case]
    chosen = configs.select_configs(specs)
    assert set(must) <= set(chosen)
    assert len(chosen) == len(set(chosen))
    if count is not None:
        assert len(chosen) == count
    assert all(osp.isfile(osp.join(REPO, c)) for c in chosen)


BAD_INPUT = {  # id: (call, words the error must contain)
    'config': (lambda: configs.select_configs(['retinanet_r50_fpn_fame_8xb2-1x_coc']),
               ['no shipped config matches', 'did you mean retinanet_r50_fpn_fame_8xb2-1x_coco']),
    'setting': (lambda: runs.Matrix(DEMO, ['fame', 'lion'], [0]),
                ["unknown setting 'lion'", 'baseline', 'adamw']),
    'setting_key': (lambda: runs.Matrix(DEMO, ['sgd:0.1'], [0]), ['expected key=value']),
    'baseline_override': (lambda: runs.Matrix(DEMO, ['baseline:lr=1'], [0]),
                          ['upstream config unchanged']),
    'quick': (lambda: runs.Matrix(DEMO, ['fame'], [0], quick=0), ['--quick must be a positive number of iterations']),
    'data_root': (lambda: runs.Matrix(DEMO, ['fame'], [0], data_roots={'voc': '/x'}),
                  ['--data-root takes coco and ade20k=PATH', 'voc']),
    'launcher': (lambda: runs.Launcher('mpi'), ["unknown launcher 'mpi'", 'slurm']),
    'partition': (lambda: runs.Launcher('slurm'), ['--launcher slurm needs --partition']),
}


@pytest.mark.parametrize('case', BAD_INPUT)
def test_bad_input_names_the_fix(case):
    call, words = BAD_INPUT[case]
    with pytest.raises(ValueError) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_a_work_dir_of_another_matrix_is_refused(tmp_path):
    runs.Matrix(DEMO, ['fame', 'adamw'], [0]).bind(str(tmp_path))
    runs.Matrix(DEMO, ['fame', 'adamw'], [0]).bind(str(tmp_path))  # the same matrix: fine
    with pytest.raises(ValueError, match='holds runs of another matrix .*seeds: \\[0\\] there, '
                       '\\[0, 1\\] now.*another --work-dir'):
        runs.Matrix(DEMO, ['fame', 'adamw'], [0, 1]).bind(str(tmp_path))


def test_a_matrix_of_another_version_is_refused(tmp_path):
    runs.Matrix(DEMO, ['fame'], [0]).bind(str(tmp_path))
    saved = json.loads((tmp_path / 'matrix.json').read_text())
    (tmp_path / 'matrix.json').write_text(json.dumps(dict(saved, sharding='zero1')))
    with pytest.raises(ValueError, match='another version of mmfame .*sharding'):
        runs.Matrix.load(str(tmp_path))


def test_runs_of_aliases_are_shared_and_named_for_slurm():
    matrix = runs.Matrix(DEMO[:1], ['fame', 'tema', 'adamw'], [0, 1])
    keys = [r.key for r in matrix.runs]
    assert len(keys) == 4 and len(set(keys)) == 4
    stem = configs.config_stem(DEMO[0])
    assert keys[0] == f'{stem}/fame/seed_0' and matrix.runs[0].job_name == f'{stem}.fame.s0'


def _dead_pid():
    proc = subprocess.Popen(['true'])
    proc.wait()
    return proc.pid


def _whole_checkpoint(path):
    """A file resume takes for a whole checkpoint (a zip with data.pkl, as torch.save writes)."""
    import zipfile
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('archive/data.pkl', b'')


# id: (files in the run folder, state). 'ckpt': a whole checkpoint named in last_checkpoint;
# 'cut': a newer one cut short, named instead; lock.json 'alive'/'dead': held by this host's
# pid that is alive/gone; a (lock, age in seconds) pair: that lock, refreshed that long ago
STATE_CASES = {
    'pending': ({}, 'pending'),
    'finished': ({'done.json': {}, 'job.json': dict(returncode=0)}, 'finished'),
    'running': ({'lock.json': 'alive'}, 'running'),
    'running_elsewhere': ({'lock.json': (dict(host='another-node', pid=1), 60)}, 'running'),
    'launch_gone_elsewhere': ({'lock.json': (dict(host='another-node', pid=1), 3600),
                               'ckpt': True}, 'interrupted'),
    'launch_died_no_checkpoint': ({'lock.json': 'dead', 'job.json': 'dead'}, 'failed'),
    'launch_died_with_checkpoint': ({'lock.json': 'dead', 'job.json': 'dead', 'ckpt': True},
                                    'interrupted'),
    'job_json_alive_without_lock': ({'job.json': 'alive', 'ckpt': True}, 'interrupted'),
    'cancelled': ({'job.json': dict(returncode=143), 'ckpt': True}, 'interrupted'),
    'preempted': ({'job.json': dict(returncode=1, preempted=True, progress=False),
                   'ckpt': True}, 'interrupted'),
    'failed_again_without_progress': ({'job.json': dict(returncode=1, progress=False),
                                       'ckpt': True}, 'failed'),
    'failed': ({'job.json': dict(returncode=1)}, 'failed'),
    'trained_by_hand': ({'ckpt': True}, 'interrupted'),
    'newest_checkpoint_cut_short': ({'ckpt': True, 'cut': True}, 'interrupted'),
}


@pytest.mark.parametrize('case', STATE_CASES)
def test_run_states(case, tmp_path):
    files, expected = STATE_CASES[case]
    here = dict(host=socket.gethostname())
    if files.get('ckpt'):
        _whole_checkpoint(tmp_path / 'iter_4.pth')
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    if files.get('cut'):
        (tmp_path / 'iter_8.pth').write_bytes(b'PK\x03\x04 cut short')
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_8.pth'))
    for name, content in files.items():
        if name in ('ckpt', 'cut'):
            continue
        age = 0
        if isinstance(content, tuple):
            content, age = content
        elif content == 'alive':
            content = dict(here, pid=os.getpid())
        elif content == 'dead':
            content = dict(here, pid=_dead_pid())
        (tmp_path / name).write_text(json.dumps(content))
        os.utime(tmp_path / name, (time.time() - age,) * 2)
    assert runs.state(str(tmp_path)) == expected
    if files.get('ckpt'):  # what the next --resume takes, past a checkpoint cut short
        assert logs.latest_checkpoint(str(tmp_path)) == str(tmp_path / 'iter_4.pth')


CLAIMS = {  # id: (the lock a launch finds, its age in seconds, whether the launch takes the run)
    'none': (None, 0, True),
    'this host, alive': ('alive', 0, False),
    'this host, gone': ('dead', 0, True),
    'this host, launch gone, its job alive': ('job alive', 0, False),
    'another host, refreshed': (dict(host='another-node', pid=1), 60, False),
    'another host, silent': (dict(host='another-node', pid=1), 3600, True),
    'half written, recent': ('', 0, False),
}


@pytest.mark.parametrize('case', CLAIMS)
def test_a_run_is_trained_by_one_launch(case, tmp_path):
    """A launch claims a run's lock; a live holder (this host: its pids; another host: its
    refreshes) keeps it, a gone one is taken over, saying so."""
    lock, age, taken = CLAIMS[case]
    here = dict(host=socket.gethostname())
    path = tmp_path / 'lock.json'
    other = subprocess.Popen(['sleep', '600'])  # a live process of another launch
    try:
        if lock == 'alive':
            lock = dict(here, pid=other.pid)
        elif lock == 'dead':
            lock = dict(here, pid=_dead_pid())
        elif lock == 'job alive':
            lock = dict(here, pid=_dead_pid(), job_pid=other.pid)
        _claim(lock, age, taken, path, tmp_path)
    finally:
        other.kill()
        other.wait()


def _claim(lock, age, taken, path, tmp_path):
    if lock is not None:
        path.write_text(lock if isinstance(lock, str) else json.dumps(lock))
        os.utime(path, (time.time() - age,) * 2)
    said = []
    launcher, run = runs.Launcher('local'), runs.Run(DEMO[0], 'fame', 0)
    held = runs.claim(str(tmp_path), launcher, run, echo=said.append)
    assert (held is None) == taken, held
    if taken:
        mine = json.loads(path.read_text())
        assert mine['pid'] == os.getpid() and runs.state(str(tmp_path)) == 'running'
        assert ('taking over' in ''.join(said)) == (lock is not None)
        assert not list(tmp_path.glob('lock.json.stale.*'))
        runs.release(str(tmp_path))
        assert not path.exists()
    else:
        assert runs.state(str(tmp_path)) == 'running'
        assert runs.claim(str(tmp_path), launcher, run) is not None  # still held
        assert json.loads(path.read_text() or '{}').get('pid') != os.getpid()


# A stand-in for tools/train.py in launch()'s loop: what each attempt of a run does, by setting
FAKE_TRAIN = textwrap.dedent('''\
    import json, os, sys, zipfile
    d, plan = sys.argv[1], sys.argv[2].split(',')
    with open(os.path.join(d, 'attempts'), 'a') as f:
        f.write('x')
    attempt = os.path.getsize(os.path.join(d, 'attempts'))
    step = plan[min(attempt, len(plan)) - 1]
    if step in ('preempted', 'progress'):  # a new checkpoint, then the way it stopped
        path = os.path.join(d, f'iter_{attempt}.pth')
        with zipfile.ZipFile(path, 'w') as z:
            z.writestr('archive/data.pkl', b'')
        open(os.path.join(d, 'last_checkpoint'), 'w').write(path)
        if step == 'preempted':  # as torchrun reports it: its own status, the hook's record
            open(os.path.join(d, 'preempted.json'), 'w').write('{}')
    sys.exit(0 if step == 'done' else 1)
    ''')
PLANS = {'fame': 'preempted,progress,done', 'adamw': 'fail'}  # attempts of each setting


class FakeLauncher(runs.Launcher):
    def command(self, run, child, d, cfg_options, port, amp=False):
        return [PY, '-c', FAKE_TRAIN, d, PLANS[run.setting]], {}


@needs_openmmlab
def test_launch_retries_progress_never_a_repeated_failure_and_leaves_held_runs(tmp_path):
    """--retries 3: the preempted run and the one that stopped after a new checkpoint are
    resumed until done; one that fails without a new checkpoint is failed after one launch (a
    rerun would fail the same way); a run another live launch holds is left alone."""
    work = str(tmp_path)
    matrix = runs.Matrix(configs=DEMO, settings=['fame', 'adamw'], seeds=[0])
    held = runs.run_dir(work, runs.Run(DEMO[1], 'fame', 0))
    os.makedirs(held)
    other = subprocess.Popen(['sleep', '600'])
    try:
        with open(osp.join(held, 'lock.json'), 'w') as f:
            json.dump(dict(host=socket.gethostname(), pid=other.pid), f)
        said = []
        states = runs.launch(matrix, work, FakeLauncher('local'), retries=3, echo=said.append)
    finally:
        other.kill()
        other.wait()
    text = '\n'.join(said)
    attempts = {r.key: len(open(osp.join(runs.run_dir(work, r), 'attempts')).read())
                for r in matrix.runs if r.config == DEMO[0]}
    fame, adamw = (runs.Run(DEMO[0], s, 0).key for s in ('fame', 'adamw'))
    assert attempts == {fame: 3, adamw: 1}, text
    assert states[fame] == 'finished' and states[adamw] == 'failed', text
    assert f'{fame}: interrupted (exit 1 preempted' in text
    assert f'{adamw}: failed (exit 1' in text and 'so it is not retried' in text
    assert states[runs.Run(DEMO[1], 'fame', 0).key] == 'running'
    assert 'left alone (held by ' in text and not osp.exists(osp.join(held, 'attempts'))
    assert not any(osp.exists(osp.join(runs.run_dir(work, r), 'lock.json'))
                   for r in matrix.runs if r.config == DEMO[0])  # released


# id: (Slurm's state of the job, the job's own record, a checkpoint, the run's state). Slurm
# owns a submitted run: it trains while Slurm has its job (or cannot be asked); then its record
# tells how its last start ended.
SLURM_STATES = {
    'queued': ('PENDING', None, False, 'running'),
    'requeued after a preemption': ('REQUEUED', dict(returncode=75, requeued=True), True,
                                    'running'),
    'slurm cannot be asked': (None, None, False, 'running'),
    'finished': ('', dict(returncode=0), True, 'finished'),
    'preempted, not requeued': ('', dict(returncode=75, requeued=False), True, 'interrupted'),
    'failed at once': ('', dict(returncode=1), False, 'failed'),
    'cancelled before its record': ('', None, True, 'interrupted'),
    "another job's record": ('', dict(returncode=0, job='11'), True, 'interrupted'),
}


@pytest.mark.parametrize('case', SLURM_STATES)
def test_slurm_runs_are_the_schedulers(case, tmp_path, monkeypatch):
    from mmfame.experiments import state
    slurm, record, ckpt, expected = SLURM_STATES[case]
    monkeypatch.setattr(state, 'slurm_job_state', lambda job: slurm)
    (tmp_path / 'job.json').write_text(json.dumps(dict(slurm_job='12')))
    if record is not None:
        (tmp_path / 'slurm_job.json').write_text(json.dumps(
            dict(dict(job='12', restarts=0, start=100, end=160), **record)))
    if ckpt:
        _whole_checkpoint(tmp_path / 'iter_4.pth')
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    assert runs.state(str(tmp_path)) == expected
    if expected == 'running':
        assert runs.holder(str(tmp_path))['who'].startswith('Slurm job 12 (')
    assert (tmp_path / 'done.json').exists() == (expected == 'finished')
    if expected == 'finished':
        assert json.loads((tmp_path / 'done.json').read_text())['seconds'] == 60


class SubmitLauncher(runs.Launcher):
    """--launcher slurm with sbatch's answer stood in: a job id per run."""

    def check(self):
        pass

    def command(self, run, child, d, cfg_options, port, amp=False):
        return [PY, '-c', f'import os; assert os.environ["REQUEUE"] == "1"; '
                f'print({100 + run.seed})'], {}


@needs_openmmlab
def test_a_slurm_launch_submits_and_returns(tmp_path, monkeypatch):
    """Each run goes to Slurm as a self-requeuing batch job whose id job.json records; the
    launch waits for nothing, and a second launch leaves submitted runs to their jobs."""
    from mmfame.experiments import state
    monkeypatch.setattr(state, 'slurm_job_state', lambda job: 'RUNNING')
    work = str(tmp_path)
    matrix = runs.Matrix(configs=DEMO[:1], settings=['fame'], seeds=[0, 1])
    said = []
    states = runs.launch(matrix, work, SubmitLauncher('slurm', partition='p'), echo=said.append)
    assert set(states.values()) == {'running'}, said
    for run in matrix.runs:
        d = runs.run_dir(work, run)
        assert json.load(open(osp.join(d, 'job.json')))['slurm_job'] == str(100 + run.seed)
        assert not osp.exists(osp.join(d, 'lock.json'))  # nothing holds a Slurm run but Slurm
        assert f'{run.key}: starting as Slurm job {100 + run.seed}' in '\n'.join(said)
    said.clear()
    runs.launch(matrix, work, SubmitLauncher('slurm', partition='p'), echo=said.append)
    assert sum('running, left alone (held by Slurm job' in line for line in said) == 2, said


# id: (lock.json text, seconds since its last change, what holder() says)
LOCK_PROBLEMS = {
    'empty': ('', 10, 'is damaged (empty or not JSON): it counts as held until 10 minutes'),
    'cut short': ('{"host": "n", "pi', 10, 'is damaged (empty or not JSON)'),
    "a host's clock ahead": (json.dumps(dict(host='fast-node', pid=1)), -3600,
                             "in this host's future: the clock of fast-node is ahead"),
}


@pytest.mark.parametrize('case', LOCK_PROBLEMS)
def test_a_damaged_or_future_lock_is_named_with_the_fix(case, tmp_path):
    text, age, words = LOCK_PROBLEMS[case]
    (tmp_path / 'lock.json').write_text(text)
    os.utime(tmp_path / 'lock.json', (time.time() - age,) * 2)
    held = runs.holder(str(tmp_path))
    assert held['alive'] and words in held['who'] and 'delete it if no launch' in held['who']
    assert runs.state(str(tmp_path)) == 'running'


LEASE_HOLDER = textwrap.dedent('''\
    import time
    from mmfame.runtime.lease import hold_run_lease
    hold_run_lease(interval=0.2)
    time.sleep(30)
    ''')


def test_the_trainer_keeps_the_lease_and_leaves_when_it_is_taken(tmp_path):
    """The training process refreshes the run's lock (not the launcher) and adds its pid; once
    another launch has taken the lock it stops at once, saving nothing."""
    lock = tmp_path / 'lock.json'
    lock.write_text(json.dumps(dict(host=socket.gethostname(), pid=1, token='mine')))
    os.utime(lock, (time.time() - 500,) * 2)
    proc = subprocess.Popen([PY, '-c', LEASE_HOLDER], env=tool_env(
        MMFAME_RUN_LEASE=f'mine:{lock}', RANK=0), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: json.loads(lock.read_text()).get('trainer_pid') == proc.pid, 60,
                 'the trainer to join the lock')
        wait_for(lambda: time.time() - osp.getmtime(lock) < 5, 60, 'a refresh')
        lock.write_text(json.dumps(dict(host='another-node', pid=7, token='theirs')))
        assert proc.wait(timeout=60) == 3
    finally:
        proc.kill()
    assert 'is held by another-node pid 7 now: another launch trains this run; stopping ' \
        'without saving' in proc.stderr.read()


def test_train_py_under_a_lease_of_another_launch_stops_before_building(tmp_path):
    lock = tmp_path / 'lock.json'
    lock.write_text(json.dumps(dict(host='another-node', pid=7, token='theirs')))
    proc = subprocess.run([PY, 'tools/train.py', DET_CFG, '--work-dir', str(tmp_path / 'w')],
                          cwd=REPO, env=tool_env(MMFAME_RUN_LEASE=f'mine:{lock}'),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3 and 'another launch trains this run' in proc.stderr
    assert not (tmp_path / 'w').exists()


JOB_CASES = {  # id: (job.json text, what the error must say)
    'half_written': ('{"host": "h", "pi', 'is not a JSON object'),
    'pid_a_string': (json.dumps(dict(host='h', pid='12')), "pid must be a pid, got '12'"),
    'no_host': (json.dumps(dict(pid=12)), 'host must be a host name, got None'),
    'returncode_a_string': (json.dumps(dict(returncode='0')), "returncode must be an exit status"),
}


@pytest.mark.parametrize('case', JOB_CASES)
def test_a_bad_job_json_is_named_with_the_fix(case, tmp_path):
    text, words = JOB_CASES[case]
    (tmp_path / 'job.json').write_text(text)
    with pytest.raises(ValueError) as info:
        runs.state(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / 'job.json') in message and words in message, message
    assert 'delete it if no launch of this run is alive' in message


MATRIX_EDITS = {  # id: (edit of a good matrix.json's text, what the error must say)
    'truncated': (lambda text: text[:len(text) // 2], 'is not valid JSON'),
    'not_an_object': (lambda text: '[]', 'holds list, not an object'),
    'no_configs': (lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                                            if k != 'configs'}), "has no 'configs'"),
    'seeds_a_string': (lambda text: json.dumps(dict(json.loads(text), seeds='0')),
                       "seeds must be a list of integers, got '0' (str)"),
    'seed_a_bool': (lambda text: json.dumps(dict(json.loads(text), seeds=[True])),
                    'seeds must be a list of integers'),
    'quick_a_string': (lambda text: json.dumps(dict(json.loads(text), quick='8')),
                       "quick must be an integer or null, got '8'"),
    'data_roots_a_list': (lambda text: json.dumps(dict(json.loads(text), data_roots=['/d'])),
                          'data_roots must be an object of dataset: path strings'),
    'amp_a_string': (lambda text: json.dumps(dict(json.loads(text), amp='yes')),
                     'amp must be true or false'),
}


@pytest.mark.parametrize('case', MATRIX_EDITS)
def test_a_damaged_matrix_json_is_named_with_the_fix(case, tmp_path):
    """Reading it back (status, gather) and launching into it again both refuse it, naming the
    file, what is wrong and the fix."""
    edit, words = MATRIX_EDITS[case]
    matrix = runs.Matrix(DEMO, ['fame'], [0])
    matrix.bind(str(tmp_path))
    path = tmp_path / 'matrix.json'
    path.write_text(edit(path.read_text()))
    for call in (lambda: runs.Matrix.load(str(tmp_path)), lambda: matrix.bind(str(tmp_path))):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert str(path) in message and words in message, message
        assert 'rerun `tools/reproduce.py launch` with the arguments' in message, message


SCALARS_CASES = {  # id: (scalars.json text, records read, what the warning or error says)
    'whole': ('{"loss": 1.0, "iter": 4}\n{"mIoU": 40.0, "step": 4}\n',
              [dict(loss=1.0, iter=4), dict(mIoU=40.0, step=4)], None),
    'half_written_last_line': ('{"mIoU": 40.0, "step": 4}\n{"loss": 0.5, "it',
                               [dict(mIoU=40.0, step=4)], 'skipped a half-written last line'),
    'damaged_line_before_the_last': ('{"loss": 1.0, "iter": 4}\n{"lo\n{"mIoU": 40.0}\n', None,
                                     'line 2, is not a JSON record'),
    'not_a_record': ('{"loss": 1.0, "iter": 4}\n[1, 2]\n', None, 'line 2, holds list'),
}


@pytest.mark.parametrize('case', SCALARS_CASES)
def test_scalars_with_a_half_written_last_line_read_up_to_it(case, tmp_path):
    """A Runner killed while logging leaves a half-written last record: readers (status,
    gather, recording a finished run) skip it and say so; damage before it is an error."""
    text, records, words = SCALARS_CASES[case]
    vis = tmp_path / '20261203_120000' / 'vis_data'
    vis.mkdir(parents=True)
    (vis / 'scalars.json').write_text(text)
    if records is None:
        with pytest.raises(ValueError) as info:
            logs.all_scalars(str(tmp_path))
        assert str(vis / 'scalars.json') in str(info.value) and words in str(info.value)
        assert 'move the file aside' in str(info.value)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert logs.all_scalars(str(tmp_path)) == records
        assert runs.final_metrics(str(tmp_path)) == {'mIoU': 40.0}
    said = [str(w.message) for w in caught]
    if words is None:
        assert not said
    else:
        assert said and all(str(vis / 'scalars.json') in m and words in m for m in said), said


CURVE_CASES = {  # id: (scalars records, curve of 'm')
    'iteration_loop_mmseg': ([dict(loss=1, iter=4, step=4), dict(m=1, step=4),
                              dict(loss=1, iter=8, step=8), dict(m=2, step=8)], [[4, 1], [8, 2]]),
    # mmdet logs validation under the epoch, 0 in an iteration loop
    'iteration_loop_mmdet': ([dict(loss=1, iter=4, step=4), dict(m=1, step=0),
                              dict(loss=1, iter=8, step=8), dict(m=2, step=0)], [[4, 1], [8, 2]]),
    'epoch_loop': ([dict(loss=1, iter=7, epoch=1, step=7), dict(m=1, step=1),
                    dict(loss=1, iter=14, epoch=2, step=14), dict(m=2, step=2)], [[1, 1], [2, 2]]),
    'resumed_repeats_a_step': ([dict(m=1, step=4), dict(m=3, step=4)], [[4, 3]]),
}


@pytest.mark.parametrize('case', CURVE_CASES)
def test_metric_curves(case):
    records, curve = CURVE_CASES[case]
    assert logs.metric_curve(records, 'm') == curve


LAUNCH_CASES = {  # id: (launcher, argv head after the interpreter/script, environment it sets)
    'local': (dict(kind='local'), ['tools/train.py'], {}),
    'dist': (dict(kind='dist', gpus=2), ['tools/dist_train.sh'], dict(PORT='1234')),
    'slurm': (dict(kind='slurm', partition='part', gpus=16, gpus_per_node=8, cpus_per_task=5,
                   srun_args='--quotatype=auto'),
              ['tools/slurm_train.sh', 'part'],
              dict(GPUS='16', GPUS_PER_NODE='8', CPUS_PER_TASK='5', SRUN_ARGS='--quotatype=auto',
                   MASTER_PORT='1234')),
}


@pytest.mark.parametrize('case', LAUNCH_CASES)
def test_launch_commands_resume_and_pass_the_seed(case):
    kw, head, env_set = LAUNCH_CASES[case]
    run = runs.Run(DEMO[0], 'fame', 3)
    argv, env = runs.Launcher(**kw).command(run, '/w/config.py', '/w', ['a=1'], 1234)
    script = [a for a in argv if a.endswith(('.py', '.sh'))][0]
    assert osp.relpath(script, REPO) == head[0]
    assert argv[argv.index(script) + 1:][:len(head) - 1] == head[1:]
    assert argv[-4:] == ['--resume', '--cfg-options', 'randomness.seed=3', 'a=1']
    assert '/w/config.py' in argv and '/w' in argv
    for k, v in env_set.items():
        assert env[k] == v
    if case == 'slurm':
        assert run.job_name in argv
    if case == 'dist':
        assert argv[argv.index(script) + 2] == '2'  # processes
    amp, _ = runs.Launcher(**kw).command(run, '/w/config.py', '/w', [], 1234, amp=True)
    assert amp[amp.index('--resume') - 1] == '--amp'


# --------------------------------------------------------------------------- child configs
def _unscoped(obj):
    """A config value without the ``_scope_`` keys mmengine adds below a ``mmdet::`` base."""
    if isinstance(obj, dict):
        return {k: _unscoped(v) for k, v in obj.items() if k != '_scope_'}
    return [_unscoped(v) for v in obj] if isinstance(obj, list) else obj


def _child(run, matrix, tmp_path):
    from mmengine.config import Config
    path = tmp_path / f'{run.setting}.py'
    path.write_text(runs.child_text(run, matrix))
    return Config.fromfile(str(path), import_custom_modules=False)


@needs_openmmlab
@pytest.mark.parametrize('config', [COCO_RETINANET, ADE_SEGFORMER], ids=osp.basename)
def test_child_configs_of_the_settings(config, tmp_path):
    from mmengine.config import Config

    from mmfame.experiments.upstream import upstream_base
    shipped = Config.fromfile(osp.join(REPO, config), import_custom_modules=False)
    upstream = configs.load_config(upstream_base(osp.join(REPO, config)))
    sgd = 'sgd:momentum=0.937:nesterov=True:default_hooks.logger.interval=7:env_cfg.x.y=1'
    full = runs.Matrix([config], ['fame', 'baseline', 'adamw', 'fame-full', sgd, 'yolov5-sgd'],
                       [0])
    quick = runs.Matrix([config], ['fame', 'baseline'], [0], quick=40,
                        data_roots={'coco': '/d/coco', 'ade20k': '/d/ade'})
    fame = _child(runs.Run(config, 'fame', 0), full, tmp_path)
    assert fame.optim_wrapper == shipped.optim_wrapper and fame.train_cfg == shipped.train_cfg
    base = _child(runs.Run(config, 'baseline', 0), full, tmp_path)
    assert _unscoped(base.optim_wrapper) == _unscoped(upstream.optim_wrapper)
    assert _unscoped(base.train_cfg) == _unscoped(upstream.train_cfg)
    assert base.get('custom_imports') == upstream.get('custom_imports')
    adamw = _child(runs.Run(config, 'adamw', 0), full, tmp_path).optim_wrapper
    fame_opt = shipped.optim_wrapper.optimizer
    assert adamw.optimizer.type == 'AdamW' and 'beta3' not in adamw.optimizer
    assert adamw.optimizer.lr == fame_opt.lr and adamw.optimizer.weight_decay == fame_opt.get(
        'weight_decay', adamw.optimizer.weight_decay)
    assert adamw.get('paramwise_cfg') == shipped.optim_wrapper.get('paramwise_cfg')
    full_fame = _child(runs.Run(config, 'fame-full', 0), full, tmp_path).optim_wrapper.optimizer
    assert full_fame.sq_betas == (0.3, 0.7) and full_fame.type == 'FAME'
    # dotted keys of a setting set the config, the others the optimizer
    with_keys = _child(runs.Run(config, sgd, 0), full, tmp_path)
    assert dict(with_keys.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.01, momentum=0.937, weight_decay=1e-4, nesterov=True)
    assert with_keys.default_hooks.logger.interval == 7
    assert with_keys.default_hooks.checkpoint == shipped.default_hooks.checkpoint  # merged
    assert with_keys.env_cfg.x.y == 1 and with_keys.env_cfg.dist_cfg == shipped.env_cfg.dist_cfg
    yolo = _child(runs.Run(config, 'yolov5-sgd', 0), full, tmp_path)  # a setting's own keys
    assert dict(yolo.optim_wrapper.optimizer) == dict(
        type='SGD', lr=0.01, momentum=0.937, weight_decay=5e-4, nesterov=True)
    assert yolo.default_hooks.param_scheduler.warmup_bias_lr == 0.1
    # the quick budget: 40 iterations whatever the schedule, checkpoints every 10, data moved
    for setting in ('fame', 'baseline'):
        cfg = _child(runs.Run(config, setting, 0), quick, tmp_path)
        assert cfg.train_cfg.type == 'IterBasedTrainLoop' and cfg.train_cfg.max_iters == 40
        assert cfg.train_cfg.val_interval == 40
        assert cfg.default_hooks.checkpoint.interval == 10
        assert not cfg.default_hooks.checkpoint.by_epoch
        assert cfg.train_dataloader.dataset.data_root.startswith('/d/')
        for sch in (cfg.param_scheduler if isinstance(cfg.param_scheduler, list)
                    else [cfg.param_scheduler]):
            assert not sch.get('by_epoch', True) and sch.get('end', 0) <= 40


# ------------------------------------------------------------------------------ end to end
def reproduce(*args, env=None, check=True, timeout=1200):
    proc = subprocess.run([PY, REPRODUCE, *args], cwd=REPO, env=env or tool_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f'reproduce.py {" ".join(args)} exited {proc.returncode}:\n'
                    + proc.stdout[-6000:])
    return proc


def matrix_args(demo_data, work_dir, settings=('fame', 'adamw')):
    """The tiny 2 configs x settings x 1 seed matrix on the test's demo data: workers off, batch
    2, detections kept down to score 0 (random-init scores sit near the prior)."""
    return ['launch', *DEMO, '--settings', *settings, '--seeds', '0', '--quick', str(QUICK),
            '--work-dir', work_dir, '--data-root', f'coco={demo_data["coco"]["data_root"]}',
            f'ade20k={demo_data["ade"]["data_root"]}', '--cfg-options',
            'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False', 'model.test_cfg.score_thr=0.0']


def check_gathered(work_dir, docs_root):
    """gather's table and the demo metafile hold each finished run's last logged metrics."""
    import yaml
    reproduce('gather', '--work-dir', work_dir, '--docs-root', docs_root)
    matrix = runs.Matrix.load(work_dir)
    table = open(osp.join(work_dir, 'results.md')).read()
    assert osp.getsize(osp.join(work_dir, 'results.png')) > 0
    meta = yaml.safe_load(open(osp.join(docs_root, 'configs', 'demo', 'metafile.yml')))
    models = {m['Name']: m for m in meta['Models']}
    for run in matrix.runs:
        d = runs.run_dir(work_dir, run)
        records = logs.all_scalars(d)
        key = 'coco/bbox_mAP' if 'coco' in run.config else 'mIoU'
        value = [r[key] for r in records if key in r][-1]
        shown = f'{value * 100:.1f}' if key.startswith('coco/') else f'{value:.2f}'
        row = [line for line in table.splitlines()
               if configs.config_stem(run.config) in line and f'| `{run.setting}` |' in line]
        assert row and shown in row[0], (run.key, shown, row)
        if run.setting == 'fame':
            metrics = models[configs.config_stem(run.config)]['Results'][0]['Metrics']
            assert pytest.approx(float(shown), abs=0.051) in [float(v) for v in metrics.values()]
    return table


@pytest.mark.slow
@needs_openmmlab
def test_local_matrix_runs_once_and_gathers(demo_data, tmp_path):
    """FAME as shipped, as its authors' code runs it, and AdamW side by side, locally."""
    work = str(tmp_path / 'local')
    settings = ('fame', 'fame-authors', 'adamw')
    out = reproduce(*matrix_args(demo_data, work, settings)).stdout
    assert out.count(': starting') == 6 and '6 finished of 6 runs' in out
    done = {r.key: open(osp.join(runs.run_dir(work, r), 'done.json')).read()
            for r in runs.Matrix.load(work).runs}
    authors = Config.fromfile(runs.child_path(work, runs.Run(DEMO[0], 'fame-authors', 0)),
                              import_custom_modules=False).optim_wrapper.optimizer
    assert (authors.eps, authors.decoupled_weight_decay) == (1e-5, False), authors
    again = reproduce(*matrix_args(demo_data, work, settings)).stdout  # nothing retrained
    assert again.count('finished, left alone') == 6 and ': starting' not in again
    assert done == {r.key: open(osp.join(runs.run_dir(work, r), 'done.json')).read()
                    for r in runs.Matrix.load(work).runs}
    docs = tmp_path / 'docs'
    (docs / 'configs').mkdir(parents=True)
    check_gathered(work, str(docs))
    status = reproduce('status', '--work-dir', work).stdout
    assert status.count('finished') >= 6
    # the bill from the runs' own iteration times (upstream publishes none)
    cost = reproduce('cost', 'demo', '--measured', work).stdout
    for config in DEMO:
        records = logs.all_scalars(runs.run_dir(work, runs.Run(config, 'fame', 0)))
        seconds = logs.summarize_run(records, [])['sec_per_iter']
        row = [line for line in cost.splitlines() if osp.basename(config) in line][0]
        assert f'| {seconds:g} (measured) |' in row, (seconds, row)
        assert f'| {seconds * 300 / 3600:,.0f} |' in row  # 300 iterations on 1 GPU


@pytest.mark.slow
@needs_openmmlab
def test_slurm_matrix_survives_scancel(slurm_cluster, demo_data, tmp_path, monkeypatch):
    """launch submits every run as a self-requeuing batch job and returns; Slurm trains them
    with nothing left on the login node. One job is cancelled mid-run (its ranks save the
    iteration in flight); the same command resubmits that run alone, which resumes there."""
    env = slurm_env(slurm_cluster['SLURM_CONF'], OMP_NUM_THREADS=1)
    monkeypatch.setenv('SLURM_CONF', slurm_cluster['SLURM_CONF'])  # this process asks Slurm too
    work = str(tmp_path / 'slurm')
    args = matrix_args(demo_data, work) + [
        '--launcher', 'slurm', '--partition', slurm_cluster['partition'], '--gpus', '1',
        '--gpus-per-node', '1', '--cpus-per-task', '1']
    # a partition Slurm does not know: its own message, nothing launched
    bad = reproduce(*[a if a != slurm_cluster['partition'] else 'nope' for a in args], env=env,
                    check=False)
    assert bad.returncode != 0 and "Slurm rejects partition 'nope'" in bad.stdout
    assert 'not found' in bad.stdout.lower() or 'invalid' in bad.stdout.lower(), bad.stdout
    assert not glob_runs(work)

    victim = runs.Run(DEMO[0], 'fame', 0)
    victim_dir = runs.run_dir(work, victim)
    out = reproduce(*args, env=env).stdout  # submits and returns
    assert out.count('as Slurm job') == 4 and '4 running of 4 runs' in out, out

    def states():
        return [runs.state(runs.run_dir(work, r)) for r in runs.Matrix.load(work).runs]

    try:
        wait_for(lambda: logs.latest_checkpoint(victim_dir), 600, 'a first checkpoint')
        cancelled_at = int(osp.basename(logs.latest_checkpoint(victim_dir))[5:-4])
        subprocess.run(['scancel', '--name', victim.job_name], env=env, check=True, timeout=60)
        wait_for(lambda: 'running' not in states(), 900, 'the jobs to end')
    finally:
        subprocess.run(['scancel', '--partition', slurm_cluster['partition']], env=env,
                       timeout=60)
    status = reproduce('status', '--work-dir', work, env=env).stdout
    assert '3 finished, 1 interrupted of 4 runs' in status, status
    assert f'--- {victim.key} (interrupted)' in status
    before = {r.key: open(osp.join(runs.run_dir(work, r), 'done.json')).read()
              for r in runs.Matrix.load(work).runs if r != victim}

    again = reproduce(*args, env=env).stdout  # the same command finishes the matrix
    assert again.count('finished, left alone') == 3, again
    assert again.count('resuming from iter_') == 1 and again.count('as Slurm job') == 1, again
    wait_for(lambda: 'running' not in states(), 900, 'the resubmitted job')
    assert '4 finished of 4 runs' in reproduce('status', '--work-dir', work, env=env).stdout
    first, second = sorted(glob.glob(osp.join(victim_dir, 'slurm-*.out')),
                           key=lambda p: int(p.split('-')[-1][:-4]))
    second = open(second).read()
    step = int(second.split('resumed epoch: ')[1].split('iter: ')[1].split()[0].rstrip(','))
    # scancel's SIGTERM saved the iteration in flight, and the resubmitted job resumed there
    assert step >= cancelled_at >= 1 and f'after iteration {step}' in open(first).read()
    assert before == {r.key: open(osp.join(runs.run_dir(work, r), 'done.json')).read()
                      for r in runs.Matrix.load(work).runs if r != victim}
    for r in runs.Matrix.load(work).runs:
        outs = glob.glob(osp.join(runs.run_dir(work, r), 'slurm-*.out'))
        assert len(outs) == (2 if r == victim else 1), r.key
    docs = tmp_path / 'docs'
    (docs / 'configs').mkdir(parents=True)
    shutil.copy(osp.join(REPO, 'configs', 'README.md'), docs / 'configs' / 'README.md')
    check_gathered(work, str(docs))
    # the shipped README has no demo rows: gathering demo runs leaves it as it was
    assert (docs / 'configs' / 'README.md').read_text() == open(
        osp.join(REPO, 'configs', 'README.md')).read()


def glob_runs(work_dir):
    return [p for p in (os.listdir(work_dir) if osp.isdir(work_dir) else []) if p != 'matrix.json']


def test_cli_errors_exit_with_the_message(tmp_path):
    proc = reproduce('launch', 'nonexistent_config', '--work-dir', str(tmp_path), check=False)
    assert proc.returncode != 0 and 'reproduce: no shipped config matches' in proc.stdout
    proc = reproduce('launch', 'demo', '--settings', 'lion', '--work-dir', str(tmp_path),
                     check=False)
    assert proc.returncode != 0 and "unknown setting 'lion'" in proc.stdout
    proc = reproduce('status', '--work-dir', str(tmp_path / 'none'), check=False)
    assert proc.returncode != 0 and 'holds no matrix of runs' in proc.stdout
    (tmp_path / 'matrix.json').write_text('{"configs": ["configs/demo/x.py"], "seeds": [0')
    proc = reproduce('status', '--work-dir', str(tmp_path), check=False)
    assert proc.returncode != 0 and 'matrix.json is not valid JSON' in proc.stdout, proc.stdout
