"""Shared pieces of the end-to-end tests of tools/ (test_tools.py, test_reproduce.py): the
interpreter and environment the tool scripts run with, tiny-run ``--cfg-options`` for the demo
configs, and how the private Slurm of tests/slurm is started (the fixtures are in conftest.py)."""
import glob
import json
import os
import os.path as osp
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TESTS = osp.join(REPO, 'tests')
PY = sys.executable
TOOL_TIMEOUT = 900  # seconds per tool run (generous: CI machines are slow and shared)
SLURM_DIR = osp.join(TESTS, 'slurm')
N = 2  # iterations between checkpoints of the end-to-end runs; they train 2N
DET_CFG = osp.join(REPO, 'configs', 'demo', 'retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py')
SEG_CFG = osp.join(REPO, 'configs', 'demo',
                   'segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py')


def free_ports(n):
    """n distinct free TCP ports (the sockets are held open together until all are chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port():
    return free_ports(1)[0]


def tool_env(**extra):
    """The environment the tool scripts run in: this interpreter as `python`, no inherited
    weights_only overrides."""
    env = dict(os.environ)
    # the tool scripts call `python`/`srun python`: make it this interpreter
    env['PATH'] = osp.dirname(PY) + os.pathsep + env.get('PATH', '')
    env['PYTHON'] = PY
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)  # the safe-globals path must do the work
    env.pop('TORCH_FORCE_WEIGHTS_ONLY_LOAD', None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def slurm_env(slurm_conf, **extra):
    """tool_env for a Slurm client of the private cluster, without an outer allocation's or
    rendezvous' variables (SLURM_*, MASTER_ADDR), which would redirect its jobs."""
    env = tool_env(SLURM_CONF=slurm_conf, **extra)
    for k in [k for k in env if k.startswith('SLURM_') and k != 'SLURM_CONF'] + ['MASTER_ADDR']:
        env.pop(k, None)
    return env


def run_outside_triton_interpreter(code, *argv, timeout=300):
    """``python -c code argv...`` with no GPU and without TRITON_INTERPRET (which the suite sets
    without a GPU): where the fused kernel must refuse CPU tensors."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['CUDA_VISIBLE_DEVICES'] = ''
    return subprocess.run([PY, '-c', code, *argv], env=env, capture_output=True, text=True,
                          timeout=timeout)


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` every half second; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f'timed out after {timeout} s waiting for {what}')
        time.sleep(0.5)


def run_tool(cmd, env=None, timeout=TOOL_TIMEOUT):
    """Run a tool from the repository root; fail with the tail of its output if it fails."""
    proc = subprocess.run(cmd, cwd=REPO, env=env or tool_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f'{" ".join(map(str, cmd))} exited {proc.returncode}:\n'
                    + proc.stdout[-6000:])
    return proc.stdout


def rank_config(path, text=''):
    """Write a child of the detection demo config whose ranks report what they hold at the end
    (tests/rank_state_hook.py): ``text`` adds settings; without an ``optim_wrapper`` of its own
    the run uses FAMEOptimWrapperConstructor (the same groups in every run)."""
    text = textwrap.dedent(text)
    if 'optim_wrapper' not in text:
        text += "optim_wrapper = dict(constructor='FAMEOptimWrapperConstructor')\n"
    with open(path, 'w') as f:
        f.write(f'_base_ = {DET_CFG!r}\n'
                "custom_imports = dict(imports=['mmfame', 'rank_state_hook'], "
                'allow_failed_imports=False)\n'
                "custom_hooks = [dict(type='RankStateHook')]\n" + text)
    return str(path)


def rank_env(**extra):
    """tool_env in which a rank_config's hook module imports."""
    return tool_env(PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''), **extra)


def dist_train(cfg, data, work, nproc=2, extra=()):
    """tools/dist_train.sh CONFIG NPROC: 2N iterations, checkpoints every N."""
    run_tool(['bash', 'tools/dist_train.sh', cfg, str(nproc), '--work-dir', work, *extra]
             + cfg_options(cfg, data, max_iters=2 * N, ckpt_interval=N, size=64),
             env=rank_env(PORT=free_port()))


def rank_reports(work_dir, world_size):
    """What each rank's RankStateHook wrote, in rank order."""
    reports = []
    for r in range(world_size):
        with open(osp.join(work_dir, f'state_rank{r}.json')) as f:
            reports.append(json.load(f))
        assert reports[-1]['world_size'] == world_size
    return reports


def pipeline_resize_options(prefix, pipeline, size):
    """cfg-options setting the scale of every (Random)Resize/RandomCrop in a pipeline."""
    opts = []
    for i, t in enumerate(pipeline):
        kind = t.get('type', '')
        if kind in ('Resize', 'RandomResize'):
            opts.append(f'{prefix}.{i}.scale=({size},{size})')
            if kind == 'RandomResize':
                opts.append(f'{prefix}.{i}.ratio_range=(1.0,1.0)')
        elif kind == 'RandomCrop':
            opts.append(f'{prefix}.{i}.crop_size=({size},{size})')
    return opts


def cfg_options(cfg_path, data, *, max_iters, ckpt_interval, size, extra=()):
    """``--cfg-options`` that point a demo config at the tmp demo data and make the run tiny.

    Derived from the config itself (pipeline indices, data_root keys), so the tests follow edits
    of the demo configs. Data loaders without workers, batch 2, seed 0, validation at the end.
    """
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    scope = cfg.get('default_scope')
    root = data['coco' if scope == 'mmdet' else 'ade']['data_root'].rstrip('/') + '/'
    opts = []
    for split in ('train', 'val', 'test'):
        key = f'{split}_dataloader'
        if key not in cfg:
            continue
        opts += [f'{key}.dataset.data_root={root}', f'{key}.num_workers=0',
                 f'{key}.persistent_workers=False']
        if split == 'train':
            opts.append(f'{key}.batch_size=2')
        else:
            opts.append(f'{key}.batch_size=1')
        pipeline = cfg[key].dataset.get('pipeline', [])
        opts += pipeline_resize_options(f'{key}.dataset.pipeline', pipeline, size)
    for split in ('val', 'test'):
        ev = cfg.get(f'{split}_evaluator')
        if isinstance(ev, dict) and 'ann_file' in ev:
            opts.append(f'{split}_evaluator.ann_file={root}annotations/'
                        + osp.basename(ev['ann_file']))
    if scope == 'mmdet':
        # random init scores sit near the 0.01 prior: keep them so that mAP is computed
        opts.append('model.test_cfg.score_thr=0.0')
    if scope == 'mmseg' and 'data_preprocessor' in cfg.model and \
            cfg.model.data_preprocessor.get('size') is not None:
        opts.append(f'model.data_preprocessor.size=({size},{size})')
    opts += [
        f'train_cfg.max_iters={max_iters}', 'train_cfg.val_interval=1000',
        f'default_hooks.checkpoint.interval={ckpt_interval}',
        'default_hooks.checkpoint.max_keep_ckpts=-1', 'default_hooks.logger.interval=1',
        'randomness.seed=0'
    ]
    return ['--cfg-options', *opts, *extra]


def slurm_mode():
    """'install' under CI=true (start.sh installs Slurm and munge if needed; not starting is a
    failure), 'installed' where Slurm is already installed and we are root (start it, install
    nothing), else the reason to skip: a local pytest never installs system packages."""
    if os.environ.get('CI') == 'true':
        return 'install'
    root = hasattr(os, 'geteuid') and os.geteuid() == 0
    path = os.environ.get('PATH', '') + os.pathsep + '/usr/sbin'  # where start.sh looks too
    if root and shutil.which('slurmctld', path=path) and shutil.which('slurmd', path=path):
        return 'installed'
    return ('Slurm (slurmctld, slurmd) is not installed' if root else 'a private Slurm needs root'
            ) + ', and tests/slurm/start.sh installs Slurm and munge only under CI=true'


# ------------------------------------------------- what the end-to-end runs leave, compared
def load_trusted(path):
    """A checkpoint the tests wrote (trusted: no allowlist needed in the test process)."""
    return torch.load(path, map_location='cpu', weights_only=False)


def last_log(work_dir):
    logs = sorted(glob.glob(osp.join(work_dir, '*', '*.log')))
    assert logs, f'no log under {work_dir}'
    with open(logs[-1]) as f:
        return f.read()


def signalled_run(cmd, env, work, ranks, send):
    """Run ``cmd`` (paused after iteration MMFAME_PAUSE_AT by PauseAtHook), call ``send`` with
    the pids of its ranks once all wait there, let the ranks that got no signal go on; returns
    (exit status, output)."""
    log = osp.join(osp.dirname(work), osp.basename(work) + '.log')
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    paused = [osp.join(work, f'paused_rank{r}') for r in range(ranks)]
    try:
        wait_for(lambda: all(map(osp.exists, paused)) or proc.poll() is not None, 600,
                 'the ranks to pause')
        assert proc.poll() is None, open(log).read()[-3000:]
        send([int(open(p).read()) for p in paused])
        time.sleep(2)
        open(osp.join(work, 'go'), 'w').close()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, open(log).read()


def assert_preempted_at(work, iteration, out, ranks=1):
    """What the stop left: the checkpoint of the iteration in flight, named in last_checkpoint,
    no partial file, the record the engine reads; every hook's after_train and after_run ran, as
    at the end of a run (EndsHook)."""
    assert 'exiting with 75' in out, out[-3000:]
    for rank in range(ranks):
        with open(osp.join(work, f'ends_rank{rank}')) as f:
            assert f.read().split() == ['after_train', 'after_run'], rank
    path = osp.join(work, f'iter_{iteration}.pth')
    assert open(osp.join(work, 'last_checkpoint')).read() == path
    assert load_trusted(path)['meta']['iter'] == iteration
    assert not glob.glob(osp.join(work, '.*.part'))
    with open(osp.join(work, 'preempted.json')) as f:
        assert json.load(f)['iter'] == iteration


def assert_same_checkpoint(full_path, resumed_path):
    """Weights, FAME state, param groups, schedulers and the EMA model (where an EMAHook saved
    one) of two Runner checkpoints are equal."""
    full, resumed = load_trusted(full_path), load_trusted(resumed_path)
    assert full['meta']['iter'] == resumed['meta']['iter']

    w_full, w_res = full['state_dict'], resumed['state_dict']
    assert w_full.keys() == w_res.keys()
    diff = [k for k in w_full if not torch.equal(w_full[k], w_res[k])]
    assert not diff, f'weights differ after resume: {diff[:5]}'

    o_full, o_res = full['optimizer'], resumed['optimizer']
    assert o_full['state'].keys() == o_res['state'].keys()
    for idx, s_full in o_full['state'].items():
        s_res = o_res['state'][idx]
        assert s_full.keys() == s_res.keys()
        assert {'exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq', 'step'} <= s_full.keys()
        for key in s_full:
            assert torch.equal(torch.as_tensor(s_full[key]), torch.as_tensor(s_res[key])), \
                (idx, key)
    groups_full = [{k: v for k, v in g.items() if k != 'params'} for g in o_full['param_groups']]
    groups_res = [{k: v for k, v in g.items() if k != 'params'} for g in o_res['param_groups']]
    assert groups_full == groups_res
    assert full.get('param_schedulers') == resumed.get('param_schedulers')
    assert full.keys() == resumed.keys()
    if 'ema_state_dict' in full:  # mmengine's EMAHook: the averaged model and its step count
        ema_full, ema_res = full['ema_state_dict'], resumed['ema_state_dict']
        assert ema_full.keys() == ema_res.keys()
        diff = [k for k in ema_full if not torch.equal(ema_full[k], ema_res[k])]
        assert not diff, f'EMA weights differ after resume: {diff[:5]}'


def upstream_tool(package, name):
    """mmdet's/mmseg's own packaged tools/<name>.py: what `mim train/test <package>` runs."""
    path = osp.join(osp.dirname(__import__(package).__file__), '.mim', 'tools', f'{name}.py')
    assert osp.isfile(path), f'{package} has no packaged {name}.py at {path}'
    return path


MIM = osp.join(osp.dirname(PY), 'mim')
