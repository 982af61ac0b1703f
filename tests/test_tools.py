"""End-to-end tests of tools/ (train.py, test.py, dist_train.sh, slurm_train.sh) on CPU.

Everything runs for real on the synthetic demo data (mmfame.datasets.demo) with the demo configs
(configs/demo, random init): a few iterations on a handful of small images, data loaders without
workers. The end-to-end tests are marked ``slow`` (deselected by the quick tier, -m "not slow");
those marked ``smoke`` run on every tested stack.

* train/test of one detection and one segmentation config through tools/train.py and tools/test.py
  (one 2N-iteration run of each, shared by the tests that test, resume or compare against it);
* ``--resume`` (bare: auto-resume the latest checkpoint) continues bit-identically: weights and the
  FAME optimizer state after resuming at N (from a copy of that run's checkpoint) equal those of
  the uninterrupted 2N run;
* the same with upstream mmdet's and mmseg's own packaged train.py/test.py (what ``mim train``
  runs), which find FAME through the config's ``custom_imports`` and mmfame's hooks through its
  ``custom_hooks`` (under ``mim train`` a SIGTERM saves and stops with 75 as under ours);
* ``tools/dist_train.sh CONFIG 2`` (torchrun, gloo; conftest.py's ddp_run, which the sharding
  tests compare against too) trains 2 processes to the same weights, and
  ``tools/slurm_train.sh`` on a real two-node Slurm (slurmctld, a slurmd per node on its own
  loopback address, munge; started by tests/slurm/start.sh as root, which installs them only
  under CI=true) trains the same 2 ranks, on one node or across both, to the very same weights;
* mmfame.runtime: checkpoints load with ``torch.load(weights_only=True)`` inside
  ``checkpoint_allowlist()`` (what ``mmfame.WeightsOnlyLoadHook`` wraps a runner's loading in) and
  nowhere else, even once mmfame is imported; the CPU adaptations are no-ops with CUDA.
"""
import copy
import glob
import json
import os
import os.path as osp
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')
pytest.importorskip('mmseg', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

import torch  # noqa: E402
from e2e import (DET_CFG, MIM, PY, REPO, SEG_CFG, SLURM_DIR, TESTS, TOOL_TIMEOUT, N,  # noqa: E402
                 assert_preempted_at, assert_same_checkpoint, cfg_options, free_port, last_log,
                 load_trusted, rank_config, rank_env, rank_reports, run_tool, signalled_run,
                 slurm_env, slurm_mode, tool_env, upstream_tool, wait_for)
from mmengine.config import Config  # noqa: E402

TOOLS = osp.join(REPO, 'tools')


# ------------------------------------------------------------------------------ helpers
# The shipped FAME demo configs the end-to-end runs train (a missing one fails, never skips).


def _need(cfg):
    assert osp.isfile(cfg), f'shipped demo config {osp.relpath(cfg, REPO)} is missing'
    return cfg


@pytest.mark.parametrize('cfg', [DET_CFG, SEG_CFG], ids=osp.basename)
def test_demo_configs_exist(cfg):
    _need(cfg)


@pytest.fixture(scope='module')
def det_run(demo_data, tmp_path_factory):
    """tools/train.py on the detection demo config: 2N iterations, checkpoints every N."""
    cfg = _need(DET_CFG)
    work = str(tmp_path_factory.mktemp('det_run'))
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work] + cfg_options(
        cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64))
    return dict(cfg=cfg, work_dir=work, stdout=out)


# mmengine re-seeds torch's RNG on resume instead of restoring it: drop path and dropout would
# draw other masks after the resume, so they are off in the segmentation run resumes compare to.
SEG_NO_DROPOUT = ['model.backbone.drop_path_rate=0.0', 'model.decode_head.dropout_ratio=0.0']


def seg_options(data, iters):
    return cfg_options(SEG_CFG, data, max_iters=iters, ckpt_interval=N, size=64,
                       extra=SEG_NO_DROPOUT)


@pytest.fixture(scope='module')
def seg_run(demo_data, tmp_path_factory):
    """tools/train.py on the segmentation demo config: 2N iterations, checkpoints every N."""
    cfg = _need(SEG_CFG)
    work = str(tmp_path_factory.mktemp('seg_run'))
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work] + seg_options(demo_data, 2 * N))
    return dict(cfg=cfg, work_dir=work, stdout=out)


def stopped_at(run, iteration, work_dir):
    """A work dir as a run stopped after ``iteration`` leaves it: that checkpoint, named in
    ``last_checkpoint`` (what bare ``--resume`` reads), copied from ``run``, which went on
    training; the resume tests continue from it instead of training the first half again."""
    os.makedirs(work_dir)
    ckpt = shutil.copy(osp.join(run['work_dir'], f'iter_{iteration}.pth'), work_dir)
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(ckpt)
    return str(work_dir)


# ------------------------------------------------------------------------------ train / test
@pytest.mark.slow
@pytest.mark.smoke
def test_train_detection(det_run):
    work = det_run['work_dir']
    assert osp.isfile(osp.join(work, f'iter_{N}.pth'))
    assert osp.isfile(osp.join(work, f'iter_{2 * N}.pth'))
    log = last_log(work)
    assert f'Iter(train) [{2 * N}/{2 * N}]' in log
    assert "type='FAME'" in log
    assert 'coco/bbox_mAP' in log  # validation at the end
    ckpt = load_trusted(osp.join(work, f'iter_{2 * N}.pth'))
    state = ckpt['optimizer']['state']
    assert state and all({'exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq', 'step'} <= set(s)
                         for s in state.values())
    assert all(float(s['step']) == 2 * N for s in state.values())


@pytest.mark.slow
@pytest.mark.smoke
def test_test_detection(det_run, demo_data, tmp_path):
    cfg = det_run['cfg']
    out_pkl = str(tmp_path / 'results.pkl')
    out = run_tool([PY, 'tools/test.py', cfg, osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'),
                    '--work-dir', str(tmp_path / 'test'), '--out', out_pkl] + cfg_options(
                        cfg, demo_data, max_iters=1, ckpt_interval=1, size=64))
    assert 'Load checkpoint from' in out
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert key in out
    import pickle
    with open(out_pkl, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 2 and 'pred_instances' in results[0]


@pytest.mark.slow
@pytest.mark.smoke
def test_train_segmentation(seg_run):
    work = seg_run['work_dir']
    log = last_log(work)
    assert f'Iter(train) [{2 * N}/{2 * N}]' in log and "type='FAME'" in log
    assert 'mIoU' in log and 'aAcc' in log
    assert osp.isfile(osp.join(work, f'iter_{N}.pth'))
    assert osp.isfile(osp.join(work, f'iter_{2 * N}.pth'))


@pytest.mark.slow
@pytest.mark.smoke
def test_test_segmentation(seg_run, demo_data, tmp_path):
    cfg = seg_run['cfg']
    out_dir = tmp_path / 'pred'
    out = run_tool([PY, 'tools/test.py', cfg, osp.join(seg_run['work_dir'], f'iter_{2 * N}.pth'),
                    '--work-dir', str(tmp_path / 'test'), '--out', str(out_dir)]
                   + seg_options(demo_data, 1))
    assert 'Load checkpoint from' in out
    assert 'mIoU' in out and 'aAcc' in out
    assert len(list(out_dir.glob('*.png'))) == 2  # mmseg: --out is a directory of label maps


YOLOX_TINY = osp.join(REPO, 'configs', 'coco', 'yolox_tiny_fame_8xb8-300e_coco.py')


@pytest.mark.slow
def test_train_yolox_tiny_with_its_recipe(demo_data, tmp_path):
    """The YOLOX-tiny FAME config trains one epoch (4 iterations) on the demo data with its
    whole recipe (Mosaic/MixUp at 640, quadratic warm-up, EMA, mode switch, SyncNorm hooks), then
    validates: FAME's state is in the checkpoint, the lr is warming up toward FAME's lr."""
    root = demo_data['coco']['data_root'].rstrip('/') + '/'
    cfg = tmp_path / 'yolox_demo.py'
    cfg.write_text(textwrap.dedent(f"""\
        _base_ = {YOLOX_TINY!r}
        metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'))
        model = dict(bbox_head=dict(num_classes=3), test_cfg=dict(score_thr=0.0))
        train_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(dataset=dict(data_root={root!r}, metainfo=metainfo,
                                      ann_file='annotations/instances_train2017.json',
                                      data_prefix=dict(img='train2017/'))))
        val_dataloader = dict(
            batch_size=1, num_workers=0, persistent_workers=False,
            dataset=dict(data_root={root!r}, metainfo=metainfo,
                         ann_file='annotations/instances_val2017.json',
                         data_prefix=dict(img='val2017/')))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file={root + 'annotations/instances_val2017.json'!r})
        test_evaluator = val_evaluator
        train_cfg = dict(max_epochs=1, val_interval=1)
        default_hooks = dict(logger=dict(interval=1))
        randomness = dict(seed=0)
        """))
    work = str(tmp_path / 'work')
    out = run_tool([PY, 'tools/train.py', str(cfg), '--work-dir', work])
    log = last_log(work)
    assert 'Epoch(train) [1][4/4]' in log and "type='FAME'" in log and 'coco/bbox_mAP' in log
    for hook in ('YOLOXModeSwitchHook', 'SyncNormHook', 'EMAHook', 'PreemptionHook'):
        assert hook in out, hook
    ckpt = load_trusted(osp.join(work, 'epoch_1.pth'))
    state = ckpt['optimizer']['state']
    assert state and all(float(s['step']) == 4 for s in state.values())
    lrs = {g['lr'] for g in ckpt['optimizer']['param_groups']}
    assert max(lrs) < 1e-3  # still in the quadratic warm-up toward FAME's lr


# ------------------------------------------------------------------------------ resume
@pytest.mark.slow
@pytest.mark.smoke
@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_resume_is_bit_identical(task, request, demo_data, tmp_path):
    """Stopped at N, then bare --resume to 2N == the uninterrupted 2N run (det_run, seg_run)."""
    run = request.getfixturevalue({'detection': 'det_run', 'segmentation': 'seg_run'}[task])
    cfg = run['cfg']
    options = (lambda iters: seg_options(demo_data, iters)) if task == 'segmentation' else (
        lambda iters: cfg_options(cfg, demo_data, max_iters=iters, ckpt_interval=N, size=64))
    work = stopped_at(run, N, tmp_path / 'resume')
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + options(2 * N))
    assert f'Auto resumed from the latest checkpoint {osp.join(work, f"iter_{N}.pth")}' in out
    assert f'resumed epoch: 0, iter: {N}' in out

    assert_same_checkpoint(osp.join(run['work_dir'], f'iter_{2 * N}.pth'),
                           osp.join(work, f'iter_{2 * N}.pth'))


# id: what a stopped run's work dir holds beyond iter_N.pth, and what bare --resume says of it
DAMAGED_WORK_DIRS = {
    'newest checkpoint gone': 'iter_{2N}.pth: it does not exist',
    'newest checkpoint cut short': 'iter_{2N}.pth: it is cut short',
    'copied work dir': 'outside this work dir: resuming from its copy here',
}


@pytest.mark.slow
@pytest.mark.parametrize('case', DAMAGED_WORK_DIRS)
def test_resume_goes_past_a_damaged_newest_checkpoint(case, det_run, demo_data, tmp_path):
    """last_checkpoint names a file that is gone, one cut short (killed while writing it), or the
    original of a copied work dir: bare --resume continues from the work dir's own newest whole
    checkpoint, says so, and ends bit-identical to the uninterrupted run."""
    cfg = det_run['cfg']
    work = stopped_at(det_run, N, tmp_path / 'work')
    newest = osp.join(work, f'iter_{2 * N}.pth')
    named = newest
    if case == 'newest checkpoint cut short':
        with open(osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'), 'rb') as f:
            data = f.read()
        with open(newest, 'wb') as f:
            f.write(data[:len(data) // 2])
    elif case == 'copied work dir':
        named = osp.join(det_run['work_dir'], f'iter_{N}.pth')
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(named)
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + cfg_options(
        cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64))
    assert DAMAGED_WORK_DIRS[case].replace('{2N}', str(2 * N)) in out, out[-3000:]
    assert f'resumed epoch: 0, iter: {N}' in out
    assert_same_checkpoint(osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'), newest)


@pytest.mark.slow
@pytest.mark.parametrize('num_classes', [5, 2])
def test_resume_into_a_changed_model_fails_clearly(det_run, demo_data, tmp_path, num_classes):
    """num_classes 3 -> 5 or 2 since the checkpoint: FAME's state no longer fits the head.
    A clear error naming the fix and rc 1: no signal, no run on wrongly shaped state."""
    cfg = det_run['cfg']
    proc = subprocess.run(
        [PY, 'tools/train.py', cfg, '--work-dir', str(tmp_path / 'changed'), '--resume',
         osp.join(det_run['work_dir'], f'iter_{N}.pth')] + cfg_options(
             cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64,
             extra=[f'model.bbox_head.num_classes={num_classes}']),
        cwd=REPO, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=TOOL_TIMEOUT)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert 'does not fit parameter' in proc.stdout and 'load_from=' in proc.stdout, \
        proc.stdout[-3000:]
    assert not glob.glob(str(tmp_path / 'changed' / 'iter_*.pth'))


KILL_DURING_SAVE = '''\
"""Test helper: SIGKILL this process once the checkpoint MMFAME_KILL_AT is written, before it
takes its name (the last moment of a write a kill can interrupt)."""
import os
import signal

_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(os.environ['MMFAME_KILL_AT']):
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = replace
'''


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_leaves_one_to_resume(det_run, demo_data, tmp_path):
    """A SIGKILL while iter_2N.pth is written (tools/train.py writes checkpoints under a
    temporary name, then renames them) leaves no iter_2N.pth at all, only the demo config's
    kept iter_N.pth, which --resume picks up; the resumed run ends bit-identical to the
    uninterrupted one (det_run)."""
    cfg = det_run['cfg']
    keep = Config.fromfile(cfg, import_custom_modules=False).default_hooks.checkpoint.max_keep_ckpts
    (tmp_path / 'mmfame_kill_during_save.py').write_text(KILL_DURING_SAVE)
    (tmp_path / 'killed.py').write_text(textwrap.dedent(f'''\
        _base_ = {cfg!r}
        custom_imports = dict(imports=['mmfame', 'mmfame_kill_during_save'],
                              allow_failed_imports=False)
        '''))
    work = str(tmp_path / 'work')

    def options(iters):
        return cfg_options(cfg, demo_data, max_iters=iters, ckpt_interval=N, size=64,
                           extra=[f'default_hooks.checkpoint.max_keep_ckpts={keep}'])

    env = tool_env(MMFAME_KILL_AT=f'iter_{2 * N}.pth',
               PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([PY, 'tools/train.py', str(tmp_path / 'killed.py'), '--work-dir', work]
                          + options(2 * N), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TOOL_TIMEOUT)
    assert proc.returncode == -9, proc.stdout[-3000:]  # killed mid-write, as meant
    assert not osp.exists(osp.join(work, f'iter_{2 * N}.pth'))  # never a file cut short
    assert len(glob.glob(osp.join(work, f'.iter_{2 * N}.pth.*.part'))) == 1
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + options(2 * N))
    assert f'resumed epoch: 0, iter: {N}' in out
    assert 'resume: removed 1 temporary file(s) of checkpoint writes that were killed' in out
    assert not glob.glob(osp.join(work, '.*.part'))
    assert_same_checkpoint(osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'),
                           osp.join(work, f'iter_{2 * N}.pth'))


# ------------------------------------------------------------------------------ preemption
def paused_config(path, text=''):
    """The detection demo config, its own hooks (mmfame's PreemptionHook among them) and
    tests/rank_state_hook.py's PauseAtHook and EndsHook."""
    with open(path, 'w') as f:
        f.write(f'_base_ = {DET_CFG!r}\n'
                "custom_imports = dict(imports=['mmfame', 'rank_state_hook'], "
                'allow_failed_imports=False)\n'
                "custom_hooks = _base_.custom_hooks + [dict(type='PauseAtHook'), "
                "dict(type='EndsHook')]\n" + textwrap.dedent(text))
    return str(path)


EPOCH_BASED = """\
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=2)
train_dataloader = dict(sampler=dict(_delete_=True, type='DefaultSampler', shuffle=True))
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))
"""
# id: (config text, iterations per run, iteration to stop at, signal, final checkpoint)
PREEMPTIONS = {
    'iteration-based': ('', 2 * N, N - 1, signal.SIGTERM, f'iter_{2 * N}.pth'),
    'epoch-based': (EPOCH_BASED, 8, 6, signal.SIGUSR1, 'epoch_2.pth'),
}


def signal_storm(pid, sig):
    """One preemption as a rank under ``srun torchrun`` gets it: Slurm's signal, torchrun's
    forwarded copy milliseconds later, and one more."""
    for _ in range(3):
        os.kill(pid, sig)
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize('case', PREEMPTIONS)
def test_a_preempted_run_saves_at_the_signal_and_resumes_exactly(case, det_run, demo_data,
                                                                 tmp_path):
    """SIGTERM/SIGUSR1 mid-interval: tools/train.py saves the iteration in flight and exits 75;
    --resume ends with the weights and FAME state of the uninterrupted run. The epoch-based run
    (4 batches an epoch, AspectRatioBatchSampler, shuffled, random flips) stops inside its second
    epoch and resumes there, drawing the flips the uninterrupted run drew."""
    text, iters, stop, sig, final = PREEMPTIONS[case]
    cfg = paused_config(tmp_path / 'paused.py', text)
    options = cfg_options(cfg, demo_data, max_iters=iters, ckpt_interval=N, size=64)
    if text:  # the loop, schedule and checkpoints are the config's own
        options = [o for o in options if not o.startswith(('train_cfg.', 'default_hooks.chec'))]
        reference = str(tmp_path / 'uninterrupted')
        run_tool([PY, 'tools/train.py', cfg, '--work-dir', reference] + options,
                 env=rank_env())
    else:
        reference = det_run['work_dir']
    work = str(tmp_path / 'preempted')
    rc, out = signalled_run([PY, 'tools/train.py', cfg, '--work-dir', work] + options,
                            rank_env(MMFAME_PAUSE_AT=stop), work, 1,
                            lambda pids: signal_storm(pids[0], sig))
    assert rc == 75, out[-3000:]
    assert f'{sig.name}: saving a checkpoint at the end of this iteration' in out
    assert '(2 repeated signals were the same preemption)' in out, out[-3000:]
    assert_preempted_at(work, stop, out)
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + options,
                   env=rank_env())
    assert f'resumed epoch: {stop // 4 if text else 0}, iter: {stop}' in out
    if text:
        assert f'Resuming epoch 2 after its first {stop - 4} batches' in out
        assert "Resuming the random states of the stopped run's 1 rank(s)." in out
    assert_same_checkpoint(osp.join(reference, final), osp.join(work, final))


@pytest.mark.slow
def test_a_preemption_during_validation_saves_and_validates_again_on_resume(det_run, demo_data,
                                                                             tmp_path):
    """SIGTERM while the validation after iteration N runs: the validation stops, the state
    after N is saved (marked to validate first) and the run exits 75; --resume runs that
    validation, then trains on to the weights of the uninterrupted run (det_run)."""
    cfg = paused_config(tmp_path / 'paused.py')
    options = cfg_options(cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64,
                          extra=[f'train_cfg.val_interval={N}'])
    work = str(tmp_path / 'preempted')
    rc, out = signalled_run([PY, 'tools/train.py', cfg, '--work-dir', work] + options,
                            rank_env(MMFAME_PAUSE_IN_VAL=1), work, 1,
                            lambda pids: os.kill(pids[0], signal.SIGTERM))
    assert rc == 75, out[-3000:]
    assert f'Preempted during validation: saved {work}/iter_{N}.pth' in out, out[-3000:]
    assert_preempted_at(work, N, out)
    assert load_trusted(osp.join(work, f'iter_{N}.pth'))['meta']['validate_first'] is True
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + options,
                   env=rank_env())
    resumed = out.index(f'resumed epoch: 0, iter: {N}')
    validated = out.index('Resuming with the validation the stopped run was preempted in.')
    assert resumed < validated < out.index(f'Iter(val) [1/', validated) < \
        out.index(f'Iter(train) [{N + 1}/'), out[-3000:]
    assert_same_checkpoint(osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'),
                           osp.join(work, f'iter_{2 * N}.pth'))


@pytest.mark.slow
def test_a_resume_with_other_ranks_and_batch_trains_each_sample_once(demo_data, tmp_path):
    """An epoch-based run of 2 ranks x batch 2 stopped inside its second epoch, resumed on 1
    rank x batch 3: that epoch trains each of its 8 images once, the first epoch is untouched,
    and the log says what the resume did."""
    cfg = rank_config(tmp_path / 'layout.py', EPOCH_BASED + "custom_hooks = [dict(type="
                      "'PauseAtHook'), dict(type='SampleLogHook'), dict(type='EndsHook')]\n")
    options = [o for o in cfg_options(cfg, demo_data, max_iters=0, ckpt_interval=N, size=64)
               if not o.startswith(('train_cfg.', 'default_hooks.chec'))]
    work = str(tmp_path / 'layout')
    rc, out = signalled_run(
        ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work] + options,
        rank_env(PORT=free_port(), MMFAME_PAUSE_AT=3), work, 2,
        lambda pids: os.kill(pids[0], signal.SIGTERM))
    assert rc != 0, out[-3000:]
    assert_preempted_at(work, 3, out, ranks=2)
    states = load_trusted(osp.join(work, 'iter_3.pth'))['meta']['random_states']
    assert len(states) == 2  # each rank's, gathered for rank 0's save
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'] + options
                   + ['train_dataloader.batch_size=3'], env=rank_env())
    assert 'the checkpoint holds the random states of 2 rank(s), this run has 1' in out
    assert 'Resuming epoch 2 with another layout: the stopped run trained 4 of its 8 samples ' \
        'on 2 ranks x batch 2' in out and 'this run trains the other 4 on 1 rank x batch 3' \
        in out, out[-3000:]
    trained = {0: [], 1: []}
    for path in glob.glob(osp.join(work, 'samples_rank*.jsonl')):
        for line in open(path):
            record = json.loads(line)
            trained[record['epoch']] += record['images']
    assert len(trained[0]) == len(set(trained[0])) == 8, trained
    assert sorted(trained[1]) == sorted(trained[0]), trained


# id: (launcher, who gets the signal)
TWO_RANK_PREEMPTIONS = {
    'torchrun, rank 0 alone signalled': 'dist_train.sh',
    'slurm, scancel --signal USR1 to the job': 'slurm_train.sh',
}


@pytest.mark.slow
@pytest.mark.parametrize('case', TWO_RANK_PREEMPTIONS)
def test_two_ranks_agree_on_the_iteration_they_stop_at(case, ddp_run, demo_data, request,
                                                       tmp_path):
    """A signal to one rank (torchrun) or to the job's every task (Slurm's, across two nodes)
    mid-interval: both ranks stop after the same iteration, one checkpoint is saved, and the
    same launcher's --resume ends with the weights of the uninterrupted 2-rank run (ddp_run)."""
    cfg = rank_config(tmp_path / 'paused.py', "custom_hooks = [dict(type='RankStateHook'), "
                      "dict(type='PauseAtHook'), dict(type='EndsHook')]\n")
    options = cfg_options(cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64)
    work = str(tmp_path / 'preempted')
    if TWO_RANK_PREEMPTIONS[case] == 'dist_train.sh':
        def launch(*extra, **env):
            return ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work, *extra,
                    *options], rank_env(PORT=free_port(), **env)

        def send(pids):
            os.kill(pids[0], signal.SIGTERM)
    else:
        cluster = request.getfixturevalue('slurm_cluster')
        name = f'mmfame-preempt-{os.getpid()}'

        def launch(*extra, **env):
            return ['bash', 'tools/slurm_train.sh', cluster['partition'], name, cfg, work,
                    *extra, *options], slurm_env(
                        cluster['SLURM_CONF'], GPUS=2, GPUS_PER_NODE=1, CPUS_PER_TASK=1,
                        MASTER_PORT=free_port(), OMP_NUM_THREADS=1,
                        PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''), **env)

        def send(pids):
            subprocess.run(['scancel', '--signal=USR1', '--name', name], check=True,
                           env=launch()[1], timeout=60)
    cmd, env = launch(MMFAME_PAUSE_AT=N - 1)
    rc, out = signalled_run(cmd, env, work, 2, send)
    assert rc != 0, out[-3000:]
    assert_preempted_at(work, N - 1, out, ranks=2)
    cmd, env = launch('--resume')
    out = run_tool(cmd, env=env)
    assert f'resumed epoch: 0, iter: {N - 1}' in out
    assert {r['weights'] for r in rank_reports(work, 2)} == {
        r['weights'] for r in rank_reports(ddp_run['work_dir'], 2)}
    assert_same_checkpoint(osp.join(ddp_run['work_dir'], f'iter_{2 * N}.pth'),
                           osp.join(work, f'iter_{2 * N}.pth'))


# id: (how the job is submitted, how it is stopped and requeued)
REQUEUES = {
    'REQUEUE=1, a B: warning passed on by its batch shell': 'slurm_train.sh',
    "the user's #SBATCH --requeue script, scontrol requeue": 'user script',
}


@pytest.mark.slow
@pytest.mark.parametrize('case', REQUEUES)
def test_a_requeued_slurm_job_resumes_by_itself(case, slurm_cluster, ddp_run, demo_data,
                                                tmp_path):
    """A batch job stopped mid-interval is requeued, its ranks having saved, and its next start
    resumes with no command rerun, ending with the weights of the uninterrupted 2-rank run
    (ddp_run): REQUEUE=1 slurm_train.sh with SIGNAL=B:USR1 (the warning reaches the batch shell
    alone, which passes it on to the ranks; the job requeues itself), and a user's own
    ``#SBATCH --requeue`` script calling slurm_train.sh, requeued by ``scontrol requeue`` (what
    PreemptMode=REQUEUE does: SIGTERM to every process, then the job back in the queue)."""
    cfg = rank_config(tmp_path / 'paused.py', "custom_hooks = [dict(type='RankStateHook'), "
                      "dict(type='PauseAtHook')]\n")
    work = str(tmp_path / 'requeued')
    env = slurm_env(slurm_cluster['SLURM_CONF'], GPUS=2, GPUS_PER_NODE=1, CPUS_PER_TASK=1,
                    MASTER_PORT=free_port(), OMP_NUM_THREADS=1, MMFAME_PAUSE_AT=N - 1,
                    PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
    train = ['bash', 'tools/slurm_train.sh', slurm_cluster['partition'], 'mmfame-requeue', cfg,
             work] + cfg_options(cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64)
    if REQUEUES[case] == 'slurm_train.sh':
        out = run_tool(train, env=dict(env, REQUEUE='1', SIGNAL='B:USR1@90'))
        stop = ['scancel', '--batch', '--signal=USR1']
    else:
        os.makedirs(work)
        script = tmp_path / 'job.sh'
        script.write_text('#!/usr/bin/env bash\n#SBATCH --requeue\n'
                          f'cd {shlex.quote(REPO)}\n{shlex.join(train)}\n')
        out = run_tool(['sbatch', '--parsable', '--open-mode=append', '-p',
                        slurm_cluster['partition'], '--gres=gpu:1', '--ntasks=2',
                        '--ntasks-per-node=1', '--cpus-per-task=1',
                        f'--output={work}/slurm-%j.out', str(script)], env=env)
        stop = ['scontrol', 'requeue']
    job = out.strip().splitlines()[-1]
    assert job.isdigit(), out

    def queued():
        proc = subprocess.run(['squeue', '--noheader', '--jobs', job, '--format', '%T'],
                              env=env, capture_output=True, text=True, timeout=60)
        return proc.returncode == 0 and proc.stdout.strip()

    try:
        wait_for(lambda: all(osp.exists(osp.join(work, f'paused_rank{r}')) for r in range(2))
                 or not queued(), 600, 'the ranks to pause')
        subprocess.run(stop + [job], env=env, check=True, timeout=60)
        wait_for(lambda: not queued(), 900, 'the requeued job to finish')
    finally:
        subprocess.run(['scancel', job], env=env, timeout=60)
    log = open(osp.join(work, f'slurm-{job}.out')).read()
    assert 'exiting with 75' in log and f'resumed epoch: 0, iter: {N - 1}' in log, log[-3000:]
    assert f'stopped this config after iteration {N - 1}: resuming it' in log, log[-3000:]
    assert {r['weights'] for r in rank_reports(work, 2)} == {
        r['weights'] for r in rank_reports(ddp_run['work_dir'], 2)}
    assert_same_checkpoint(osp.join(ddp_run['work_dir'], f'iter_{2 * N}.pth'),
                           osp.join(work, f'iter_{2 * N}.pth'))


# ------------------------------------------------------------------------------ upstream tools
@pytest.mark.slow
def test_upstream_mim_train_checkpoints_on_sigterm_and_resumes_bit_identically(det_run, demo_data,
                                                                               tmp_path):
    """`mim train mmdet` (mmdet's packaged train.py, which adds no hook) of the shipped demo
    config: SIGTERM during iteration N - 1 saves that iteration and stops with 75 through the
    config's own mmfame.PreemptionHook, after every hook's after_train/after_run; `mim train
    --resume` (mmfame.WeightsOnlyLoadHook: torch >= 2.6 loads it) to 2N equals our
    uninterrupted 2N run; mmdet's test.py and `mim test mmdet` load the resumed checkpoint."""
    if not osp.isfile(MIM):
        pytest.skip('openmim is not installed (tools/setup_env.sh installs it)')
    cfg = paused_config(tmp_path / 'paused.py')
    options = cfg_options(cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64)
    work = str(tmp_path / 'upstream')
    train = [MIM, 'train', 'mmdet', cfg, '--gpus', '0', '--work-dir', work]
    rc, out = signalled_run(train + options, rank_env(MMFAME_PAUSE_AT=N - 1), work, 1,
                            lambda pids: os.kill(pids[0], signal.SIGTERM))
    assert rc != 0 and 'returned non-zero exit status 75' in out, out[-3000:]  # mim's words
    assert_preempted_at(work, N - 1, out)
    out = run_tool(train + ['--resume'] + options, env=rank_env())
    assert f'resumed epoch: 0, iter: {N - 1}' in out
    resumed = osp.join(work, f'iter_{2 * N}.pth')
    assert_same_checkpoint(osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'), resumed)
    test = upstream_tool('mmdet', 'test')
    for cmd in ([PY, test, cfg, resumed],
                [MIM, 'test', 'mmdet', cfg, '--checkpoint', resumed, '--gpus', '0']):
        out = run_tool(cmd + ['--work-dir', str(tmp_path / 'test')]
                       + cfg_options(cfg, demo_data, max_iters=1, ckpt_interval=N, size=64),
                       env=rank_env())
        assert 'Load checkpoint from' in out and 'coco/bbox_mAP' in out, cmd[:3]


@pytest.mark.slow
def test_upstream_mmseg_tools_resume_bit_identically_and_test(seg_run, demo_data, tmp_path):
    """mmseg's packaged train.py --resume from N to 2N equals our uninterrupted 2N run; its
    test.py loads the resumed checkpoint."""
    cfg = seg_run['cfg']
    train, test = upstream_tool('mmseg', 'train'), upstream_tool('mmseg', 'test')
    part = stopped_at(seg_run, N, tmp_path / 'part')
    out = run_tool([PY, train, cfg, '--work-dir', part, '--resume']
                   + seg_options(demo_data, 2 * N))
    assert f'resumed epoch: 0, iter: {N}' in out
    resumed = osp.join(part, f'iter_{2 * N}.pth')
    assert_same_checkpoint(osp.join(seg_run['work_dir'], f'iter_{2 * N}.pth'), resumed)
    out = run_tool([PY, test, cfg, resumed, '--work-dir', str(tmp_path / 'test')]
                   + seg_options(demo_data, 1))
    assert 'Load checkpoint from' in out and 'mIoU' in out


# ------------------------------------------------------------------------------ launchers
@pytest.mark.slow
def test_dist_train_two_processes(ddp_run):
    log = last_log(ddp_run['work_dir'])
    assert 'Distributed launcher: pytorch' in log and 'GPU number: 2' in log
    ranks = rank_reports(ddp_run['work_dir'], 2)
    assert {r['wrapper'] for r in ranks} == {'MMDistributedDataParallel'}
    assert len({r['weights'] for r in ranks}) == 1, 'ranks ended with different weights'
    assert osp.isfile(osp.join(ddp_run['work_dir'], f'iter_{2 * N}.pth'))


# The same 2 ranks through tools/slurm_train.sh on the private cluster (tests/slurm/start.sh):
# GPUS_PER_NODE, and the nodes the ranks must land on in rank order.
SLURM_LAYOUTS = {
    'one node': (2, ['mmfame-n1', 'mmfame-n1']),
    'two nodes': (1, ['mmfame-n1', 'mmfame-n2']),
}


@pytest.mark.slow
@pytest.mark.parametrize('layout', SLURM_LAYOUTS)
def test_slurm_train_equals_one_node(layout, slurm_cluster, demo_data, ddp_run, tmp_path):
    """Ranks placed by Slurm (MASTER_ADDR resolved from the node list by mmengine's slurm
    launcher) train to the very weights of the one-node torchrun run."""
    per_node, nodes = SLURM_LAYOUTS[layout]
    cfg = ddp_run['cfg']
    work = str(tmp_path / 'slurm')
    env = slurm_env(slurm_cluster['SLURM_CONF'], GPUS=2, GPUS_PER_NODE=per_node,
                    CPUS_PER_TASK=1, MASTER_PORT=free_port(), OMP_NUM_THREADS=1,
                    PYTHONPATH=TESTS + os.pathsep + os.environ.get('PYTHONPATH', ''))
    cmd = ['timeout', '-k', '30', '600', 'bash', 'tools/slurm_train.sh', slurm_cluster['partition'],
           'mmfame-test', cfg, work] + cfg_options(
               cfg, demo_data, max_iters=2 * N, ckpt_interval=N, size=64)
    run_tool(cmd, env=env, timeout=700)
    log = last_log(work)
    assert 'Distributed launcher: slurm' in log and 'GPU number: 2' in log
    ranks = rank_reports(work, 2)
    assert {r['wrapper'] for r in ranks} == {'MMDistributedDataParallel'}
    assert [r['node'] for r in ranks] == nodes
    assert {r['master_addr'] for r in ranks} == {'mmfame-n1'}, 'MASTER_ADDR is not the first node'
    assert {r['weights'] for r in ranks} == {r['weights'] for r in
                                             rank_reports(ddp_run['work_dir'], 2)}, (
        f'Slurm on {layout} ended with other weights than the one-node torchrun run')
    assert osp.isfile(osp.join(work, f'iter_{2 * N}.pth'))


@pytest.mark.slow
def test_dist_test_two_processes(det_run, demo_data, tmp_path):
    cfg = det_run['cfg']
    out = run_tool(['bash', 'tools/dist_test.sh', cfg,
                    osp.join(det_run['work_dir'], f'iter_{2 * N}.pth'), '2',
                    '--work-dir', str(tmp_path / 'test')] + cfg_options(
                        cfg, demo_data, max_iters=1, ckpt_interval=1, size=64),
                   env=tool_env(PORT=free_port()))
    assert 'coco/bbox_mAP' in out
    assert 'Distributed launcher: pytorch' in last_log(str(tmp_path / 'test'))


def _processes_with(marker):
    """Pids of the live processes whose command line holds ``marker``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if marker.encode() in f.read():
                    pids.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return pids


@pytest.mark.slow
def test_a_signal_to_dist_train_stops_every_rank(demo_data, tmp_path):
    """SIGTERM to tools/dist_train.sh's own pid (what `timeout` or a container's PID 1 sends)
    stops torchrun and both ranks: nothing goes on training orphaned."""
    cfg = _need(DET_CFG)
    work = str(tmp_path / 'signalled')
    log = tmp_path / 'out.log'
    cmd = ['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work] + cfg_options(
        cfg, demo_data, max_iters=10**6, ckpt_interval=10**6, size=64)
    with open(log, 'w') as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=tool_env(PORT=free_port()), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: 'Iter(train)' in log.read_text() or proc.poll() is not None, 300,
                  'the ranks to train')
        assert proc.poll() is None, log.read_text()[-3000:]
        assert len(_processes_with(work)) >= 3  # torchrun and 2 ranks
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
        wait_for(lambda: not _processes_with(work), 60, 'every rank to stop')
    finally:  # clean-up only (torchrun starts each rank in a session of its own)
        for pid in [proc.pid] * (proc.poll() is None) + _processes_with(work):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_slurm_is_installed_only_under_ci(monkeypatch):
    monkeypatch.setattr(os, 'geteuid', lambda: 0)
    monkeypatch.setattr(shutil, 'which', lambda name, path=None: None)
    for ci in (None, 'false', '1'):
        if ci is None:
            monkeypatch.delenv('CI', raising=False)
        else:
            monkeypatch.setenv('CI', ci)
        reason = slurm_mode()
        assert reason not in ('install', 'installed') and 'CI=true' in reason, (ci, reason)
    monkeypatch.setattr(shutil, 'which', lambda name, path=None: f'/usr/sbin/{name}')
    assert slurm_mode() == 'installed'
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    assert 'needs root' in slurm_mode()
    monkeypatch.setenv('CI', 'true')
    assert slurm_mode() == 'install'


SLURM_BINARIES = ('slurmctld', 'slurmd', 'srun', 'scontrol', 'sinfo', 'munged', 'munge', 'unmunge')


def test_slurm_start_with_no_install_installs_nothing(tmp_path):
    """start.sh as (a stand-in) root with Slurm missing: MMFAME_SLURM_NO_INSTALL=1 exits 2 naming
    what is missing and never calls apt-get; without it, it calls apt-get (a stand-in here)."""
    stubs = tmp_path / 'bin'
    stubs.mkdir()
    (stubs / 'id').write_text('#!/bin/sh\necho 0\n')
    (stubs / 'apt-get').write_text('#!/bin/sh\necho "$@" >> "$MMFAME_APT_LOG"\nexit 1\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    path = f'{stubs}{os.pathsep}/usr/bin{os.pathsep}/bin'
    if all(shutil.which(b, path=path) or osp.exists(f'/usr/sbin/{b}') for b in SLURM_BINARIES):
        pytest.skip('Slurm and munge are installed: start.sh does not reach its install step')
    apt_log = tmp_path / 'apt-get.log'

    def start(**extra):
        env = dict(PATH=path, HOME=str(tmp_path), MMFAME_APT_LOG=str(apt_log), **extra)
        return subprocess.run([shutil.which('bash'), osp.join(SLURM_DIR, 'start.sh'),
                               str(tmp_path / 'state')], env=env, capture_output=True,
                              text=True, timeout=60)

    proc = start(MMFAME_SLURM_NO_INSTALL='1')
    assert proc.returncode == 2, proc.stderr
    assert 'MMFAME_SLURM_NO_INSTALL=1' in proc.stderr and 'slurmctld' in proc.stderr
    assert not apt_log.exists()
    proc = start()
    assert proc.returncode == 2, proc.stderr
    calls = apt_log.read_text().splitlines()
    assert calls[0].startswith('install ') and 'slurmd' in calls[0].split(), calls


# ---------------------------------------------------------------------------- mmfame.runtime
CHECK_SAFE_GLOBALS = r'''
import io, pickle, sys
import torch
path = sys.argv[1]
try:
    torch.load(path, map_location='cpu', weights_only=True)
except pickle.UnpicklingError as e:
    print('BEFORE: fails:', [l for l in str(e).splitlines() if 'Unsupported global' in l])
else:
    print('BEFORE: loads')
import mmfame  # changes nothing in torch.load
try:
    torch.load(path, map_location='cpu', weights_only=True)
    print('IMPORTED: torch.load loads')
except pickle.UnpicklingError:
    print('IMPORTED: torch.load fails')
from mmengine.runner.checkpoint import _load_checkpoint
from mmfame.runtime import checkpoint_allowlist
with checkpoint_allowlist():
    hub = _load_checkpoint(path, map_location='cpu')['message_hub']['log_scalars']
print('MMENGINE: loads', type(hub['train/loss']).__name__)
allowlist = checkpoint_allowlist()
allowlist.__enter__()
ckpt = torch.load(path, map_location='cpu', weights_only=True)
hub = ckpt['message_hub']['log_scalars']
print('AFTER: loads', type(hub['train/loss']).__name__, float(hub['train/loss'].mean()))

# weights_only is still on: other globals stay refused, getattr is restricted
import argparse
from mmengine.logging import HistoryBuffer
for name, obj in (('Namespace', argparse.Namespace(a=1)),
                  ('getattr', {'m': getattr(HistoryBuffer, 'mean'), 'x': print})):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    try:
        torch.load(buf, weights_only=True)
        print('OTHER', name, 'loads')
    except pickle.UnpicklingError:
        print('OTHER', name, 'refused')
from mmfame.runtime.checkpoint import history_buffer_getattr
try:
    history_buffer_getattr(torch, 'load')
    print('GETATTR torch.load allowed')
except pickle.UnpicklingError:
    print('GETATTR torch.load refused')
'''


@pytest.mark.slow
def test_runner_checkpoint_loads_weights_only(det_run):
    from mmfame.optim._compat import TORCH_VERSION
    if TORCH_VERSION < (2, 6):
        pytest.skip('torch < 2.6 does not load with weights_only=True by default')
    path = osp.join(det_run['work_dir'], f'iter_{N}.pth')
    proc = subprocess.run([PY, '-c', CHECK_SAFE_GLOBALS, path], env=tool_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    out = proc.stdout
    assert 'BEFORE: fails' in out, out
    assert 'IMPORTED: torch.load fails' in out, out  # no process-wide allowlist
    assert 'MMENGINE: loads HistoryBuffer' in out, out
    assert 'AFTER: loads HistoryBuffer' in out, out
    assert 'OTHER Namespace refused' in out, out
    assert 'OTHER getattr refused' in out, out  # `print` is not allowlisted
    assert 'GETATTR torch.load refused' in out, out


NO_CUDA_ONLY = 'the CPU adaptations act only on a machine without CUDA'


def _dist_utils_functions():
    from mmengine.dist import utils as du
    return {n: getattr(du, n) for n in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi')}


def _launcher_cfg(launcher='pytorch', **kw):
    return Config(dict(launcher=launcher, env_cfg=dict(dist_cfg=dict(backend='nccl')), **kw))


def test_cpu_compat_is_a_noop_with_cuda(monkeypatch):
    from mmfame.runtime import dist as mdist
    monkeypatch.setattr(mdist, 'cuda_available', lambda: True)
    before = _dist_utils_functions()
    cfg = _launcher_cfg()
    snapshot = copy.deepcopy(cfg.to_dict())
    assert mdist.setup_cpu_distributed(cfg) is False
    assert cfg.to_dict() == snapshot
    assert mdist.patch_init_dist_for_cpu() is False
    assert _dist_utils_functions() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA_ONLY)
def test_cpu_compat_config_rewrite(monkeypatch):
    from mmengine.dist import utils as du

    from mmfame.runtime.dist import CPU_DDP_TYPE, setup_cpu_distributed
    for name, fn in _dist_utils_functions().items():
        monkeypatch.setattr(du, name, fn)  # restored at teardown

    cfg = _launcher_cfg('none')
    assert setup_cpu_distributed(cfg) is False and 'model_wrapper_cfg' not in cfg

    cfg = _launcher_cfg('pytorch', find_unused_parameters=True)
    assert setup_cpu_distributed(cfg) is True
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type=CPU_DDP_TYPE, broadcast_buffers=False,
                                         find_unused_parameters=True)
    assert all(getattr(fn, '_mmfame_without_set_device', None)
               for fn in _dist_utils_functions().values())

    cfg = _launcher_cfg('slurm', model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                                        broadcast_buffers=True))
    cfg.env_cfg.dist_cfg.backend = 'mpi'
    setup_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == 'mpi'  # an explicit non-nccl backend is kept
    assert cfg.model_wrapper_cfg == dict(type=CPU_DDP_TYPE, broadcast_buffers=True)

    cfg = _launcher_cfg('pytorch', model_wrapper_cfg=dict(type='MMFullyShardedDataParallel'))
    setup_cpu_distributed(cfg)
    assert cfg.model_wrapper_cfg.type == 'MMFullyShardedDataParallel'


INIT_DIST_CPU = r'''
import os, sys
import torch
from mmengine.dist import init_dist, get_world_size
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmfame.runtime.dist import CPU_DDP_TYPE, finalize_distributed, setup_cpu_distributed
from mmengine.config import Config

os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
                  MASTER_PORT=sys.argv[1])
cfg = Config(dict(launcher='pytorch'))
assert setup_cpu_distributed(cfg)
init_dist('pytorch', **cfg.env_cfg.dist_cfg)   # upstream would call torch.cuda.set_device
assert get_world_size() == 1 and torch.distributed.get_backend() == 'gloo'
assert torch.cuda.set_device.__name__ == 'set_device'  # restored after init_dist

model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.SyncBatchNorm(4))
wrapped = MODEL_WRAPPERS.build(dict(cfg.model_wrapper_cfg), default_args=dict(module=model))
assert type(wrapped) is MMDistributedDataParallel, type(wrapped)
assert wrapped.device_ids is None
assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in wrapped.modules())
out = wrapped(torch.randn(2, 3, 8, 8))
out.sum().backward()
finalize_distributed()
assert not torch.distributed.is_initialized()
print('OK')
'''


@pytest.mark.skipif(torch.cuda.is_available(), reason=NO_CUDA_ONLY)
def test_init_dist_and_ddp_on_cpu():
    """In a subprocess: init_dist would set the start method and a process group here."""
    proc = subprocess.run([PY, '-c', INIT_DIST_CPU, str(free_port())], env=tool_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0 and 'OK' in proc.stdout, proc.stdout[-4000:]


def _load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'mmfame_tools_{name}',
                                                  osp.join(TOOLS, f'{name}.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('argv,resume,local_rank', [
    ([], None, 0),
    (['--resume'], 'auto', 0),
    (['--resume', 'w/iter_4.pth'], 'w/iter_4.pth', 0),
    (['--local-rank', '3'], None, 3),
    (['--local_rank=2'], None, 2),
])
def test_train_argument_surface(monkeypatch, argv, resume, local_rank):
    train = _load_tool('train')
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    monkeypatch.setattr(sys, 'argv', ['train.py', 'cfg.py', '--work-dir', 'w', '--amp',
                                      '--auto-scale-lr', '--launcher', 'slurm'] + argv
                        + ['--cfg-options', 'a.b=1', 'c=[1,2]'])
    args = train.parse_args()
    assert (args.config, args.work_dir, args.amp, args.auto_scale_lr) == ('cfg.py', 'w', True, True)
    assert args.resume == resume and args.launcher == 'slurm'
    assert args.local_rank == local_rank and os.environ['LOCAL_RANK'] == str(local_rank)
    assert args.cfg_options == {'a.b': 1, 'c': [1, 2]}


PRE, LOAD, ZERO_HOOK = 'mmfame.PreemptionHook', 'mmfame.WeightsOnlyLoadHook', 'mmfame.ZeroCheckpointHook'
# id: (what the child config adds to the shipped demo config, train.py's flags, the hooks the
# runner is built with)
TRAIN_HOOKS = {
    'a shipped config lists its own': ('', [], [PRE, LOAD]),
    'a config without them': ('custom_hooks = []\n', [], [LOAD, PRE]),
    '--no-preemption-hook drops the listed one': ('', ['--no-preemption-hook'], [LOAD]),
    'ZeRO gets the checkpoint hook': (
        "custom_hooks = []\noptim_wrapper = dict(optimizer=dict(_delete_=True, "
        "type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME', lr=1e-3))\n", [],
        [LOAD, PRE, ZERO_HOOK]),
}


@pytest.mark.parametrize('case', TRAIN_HOOKS)
def test_train_gives_a_config_the_hooks_it_lacks(case, monkeypatch, tmp_path):
    text, flags, expected = TRAIN_HOOKS[case]
    cfg = tmp_path / 'child.py'
    cfg.write_text(f'_base_ = {DET_CFG!r}\n' + text)
    train = _load_tool('train')

    class Built(Exception):
        pass

    def build_runner(config):
        raise Built([h['type'] for h in config.custom_hooks])

    monkeypatch.setattr(train, 'build_runner', build_runner)
    monkeypatch.setattr(sys, 'argv', ['train.py', str(cfg), '--work-dir', str(tmp_path / 'w')]
                        + flags)
    with pytest.raises(Built) as built:
        train.main()
    assert built.value.args[0] == expected


def test_test_argument_surface(monkeypatch):
    test = _load_tool('test')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', 'cfg.py', 'ckpt.pth', '--work-dir', 'w', '--out', 'r.pkl', '--show',
        '--show-dir', 'vis', '--wait-time', '0.5', '--launcher', 'pytorch', '--tta',
        '--cfg-options', 'x=1'
    ])
    args = test.parse_args()
    assert (args.config, args.checkpoint, args.work_dir, args.out) == ('cfg.py', 'ckpt.pth', 'w',
                                                                      'r.pkl')
    assert args.show and args.show_dir == 'vis' and args.wait_time == 0.5
    assert args.launcher == 'pytorch' and args.tta and args.cfg_options == {'x': 1}


# A stand-in for `python` and `srun`: records the program name, PYTHONPATH and argv it was given.
ARGV_STUB = '#!/bin/sh\nprintf \'%s\\0\' "${0##*/}" "$PYTHONPATH" "$@" > "$MMFAME_ARGV_LOG"\n'
TRAIN_PY, TEST_PY = osp.join(TOOLS, 'train.py'), osp.join(TOOLS, 'test.py')
TORCHRUN_DEFAULTS = ['-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0',
                     '--master_addr=127.0.0.1', '--nproc_per_node=2', '--master_port=29500']
TORCHRUN_ENV = dict(NNODES=2, NODE_RANK=1, PORT=1234, MASTER_ADDR='10.1.2.3', PYTHON='mypython')
TORCHRUN_SET = ['-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
                '--master_addr=10.1.2.3', '--nproc_per_node=2', '--master_port=1234']
SRUN_DEFAULTS = ['-p', 'part', '--job-name=job', '--gres=gpu:8', '--ntasks=8',
                 '--ntasks-per-node=8', '--cpus-per-task=5', '--kill-on-bad-exit=1']
SRUN_ENV = dict(GPUS=4, GPUS_PER_NODE=2, CPUS_PER_TASK=1, SRUN_ARGS='--quotatype=auto',
                PYTHON='mypython')
SRUN_SET = ['-p', 'part', '--job-name=job', '--gres=gpu:2', '--ntasks=4', '--ntasks-per-node=2',
            '--cpus-per-task=1', '--kill-on-bad-exit=1', '--quotatype=auto']
SBATCH_DEFAULTS = ['--parsable', '--requeue', '--open-mode=append', '-p', 'part',
                   '--job-name=job', '--gres=gpu:8', '--ntasks=8', '--ntasks-per-node=8',
                   '--cpus-per-task=5', '--signal=USR1@90', '--output=w/slurm-%j.out']
LAUNCHER_CASES = {  # id: (script, args, env, program, argv it must run)
    'dist_train': ('dist_train.sh', ['cfg.py', '2', '--work-dir', 'w', '--amp'], {}, 'python',
                   TORCHRUN_DEFAULTS + [TRAIN_PY, 'cfg.py', '--launcher', 'pytorch',
                                        '--work-dir', 'w', '--amp']),
    'dist_train env': ('dist_train.sh', ['cfg.py', '2'], TORCHRUN_ENV, 'mypython',
                       TORCHRUN_SET + [TRAIN_PY, 'cfg.py', '--launcher', 'pytorch']),
    'dist_test': ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2', '--out', 'r.pkl'], {}, 'python',
                  TORCHRUN_DEFAULTS + [TEST_PY, 'cfg.py', 'ckpt.pth', '--launcher', 'pytorch',
                                       '--out', 'r.pkl']),
    'dist_test env': ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2'], TORCHRUN_ENV, 'mypython',
                      TORCHRUN_SET + [TEST_PY, 'cfg.py', 'ckpt.pth', '--launcher', 'pytorch']),
    'slurm_train': ('slurm_train.sh', ['part', 'job', 'cfg.py', 'w', '--amp'], {}, 'srun',
                    SRUN_DEFAULTS + ['--signal=USR1@90', 'python', '-u', TRAIN_PY, 'cfg.py',
                                     '--work-dir=w', '--launcher=slurm', '--amp']),
    'slurm_train env': ('slurm_train.sh', ['part', 'job', 'cfg.py', 'w'],
                        dict(SRUN_ENV, SIGNAL='USR2@300'), 'srun',
                        SRUN_SET[:-1] + ['--signal=USR2@300', '--quotatype=auto', 'mypython',
                                         '-u', TRAIN_PY, 'cfg.py', '--work-dir=w',
                                         '--launcher=slurm']),
    'slurm_train requeue': ('slurm_train.sh', ['part', 'job', 'cfg.py', 'w'], dict(REQUEUE=1),
                            'sbatch', SBATCH_DEFAULTS),
    'slurm_test': ('slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth', '--out', 'r.pkl'], {},
                   'srun', SRUN_DEFAULTS + ['python', '-u', TEST_PY, 'cfg.py', 'ckpt.pth',
                                            '--launcher=slurm', '--out', 'r.pkl']),
    'slurm_test env': ('slurm_test.sh', ['part', 'job', 'cfg.py', 'ckpt.pth'], SRUN_ENV, 'srun',
                       SRUN_SET + ['mypython', '-u', TEST_PY, 'cfg.py', 'ckpt.pth',
                                   '--launcher=slurm']),
}


@pytest.mark.parametrize('case', LAUNCHER_CASES)
def test_launcher_scripts_run_upstream_command_lines(case, tmp_path):
    """Each launcher, run as an executable with stand-ins for python/srun first on PATH, runs
    upstream's command line (defaults GPUS=8, GPUS_PER_NODE=8, CPUS_PER_TASK=5, port 29500;
    the env overrides), with the repository on PYTHONPATH. The real runs (torchrun, Slurm) are
    test_dist_train_two_processes, test_dist_test_two_processes and
    test_slurm_train_equals_one_node."""
    script, args, env_set, program, argv = LAUNCHER_CASES[case]
    path = osp.join(TOOLS, script)
    assert os.access(path, os.X_OK), f'{script} is not executable'
    proc = subprocess.run(['bash', '-n', path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    stubs = tmp_path / 'bin'
    stubs.mkdir()
    for name in ('python', 'mypython', 'srun', 'sbatch'):
        (stubs / name).write_text(ARGV_STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / 'argv'
    env = dict(PATH=f'{stubs}{os.pathsep}{os.environ["PATH"]}', HOME=str(tmp_path),
               MMFAME_ARGV_LOG=str(log), **{k: str(v) for k, v in env_set.items()})
    proc = subprocess.run([path, *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    ran, pythonpath, *ran_argv = log.read_text().split('\0')[:-1]
    assert (ran, ran_argv) == (program, argv)
    assert osp.realpath(pythonpath.split(os.pathsep)[0]) == REPO, pythonpath


def run_launcher(tmp_path, args, env_set):
    """tools/slurm_train.sh ARGS with stand-ins for srun/sbatch (and the real python first on
    PATH): (process, the argv srun or sbatch got, or None)."""
    stubs = tmp_path / 'bin'
    stubs.mkdir(exist_ok=True)
    for name in ('srun', 'sbatch'):
        (stubs / name).write_text(ARGV_STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / 'argv'
    env = dict(PATH=f'{stubs}{os.pathsep}{os.environ["PATH"]}', HOME=str(tmp_path),
               PYTHON=PY, MMFAME_ARGV_LOG=str(log), **{k: str(v) for k, v in env_set.items()})
    proc = subprocess.run([osp.join(TOOLS, 'slurm_train.sh'), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    return proc, log.read_text().split('\0')[2:-1] if log.exists() else None


# id: (work dir files, env, extra args, whether a bare --resume is added)
RESUMES = {
    'a fresh work dir': ({}, {}, [], False),
    'a preemption record of this config': ({'preempted.json': 'cfg.py', 'last_checkpoint': None},
                                           {}, [], True),
    'a record of another config': ({'preempted.json': 'other.py', 'last_checkpoint': None}, {},
                                   [], False),
    'a requeued job with a checkpoint': ({'last_checkpoint': None},
                                         dict(SLURM_RESTART_COUNT=1), [], True),
    'a requeued job without one': ({}, dict(SLURM_RESTART_COUNT=1), [], False),
    'the arguments choose': ({'preempted.json': 'cfg.py', 'last_checkpoint': None}, {},
                             ['--resume', 'x.pth'], False),
}


@pytest.mark.parametrize('case', RESUMES)
def test_slurm_train_resumes_a_preempted_or_requeued_run_of_its_config(case, tmp_path):
    """However the job was requeued (REQUEUE=1, the user's #SBATCH --requeue script, scontrol
    requeue), srun's train.py gets a bare --resume where the work dir holds this config's
    preemption record or a restarted job finds a checkpoint."""
    files, env, extra, resumes = RESUMES[case]
    work = tmp_path / 'w'
    work.mkdir()
    (tmp_path / 'cfg.py').write_text('')
    for name, config in files.items():
        text = json.dumps(dict(config=str(tmp_path / config))) if config else 'iter_2.pth'
        (work / name).write_text(text)
    proc, argv = run_launcher(tmp_path, ['part', 'job', 'cfg.py', 'w', *extra], env)
    assert proc.returncode == 0, proc.stderr
    expected = ['--launcher=slurm', *extra] + ['--resume'] * resumes
    assert argv[-len(expected):] == expected, argv
    assert ('resuming' in proc.stdout) == resumes, proc.stdout


@pytest.mark.parametrize('signal_arg, requeue, refused', [
    ('B:USR1@90', 0, 'signals the batch shell alone'),
    ('USR1', 0, 'expected [R:][B:]SIG@SECONDS'),
    ('USR1@soon', 0, 'expected [R:][B:]SIG@SECONDS'),
    ('B:USR1@90', 1, None),
    ('R:TERM@60', 0, None),
])
def test_slurm_train_checks_its_signal(signal_arg, requeue, refused, tmp_path):
    """SIGNAL has Slurm's form and B: (the batch shell alone) is taken only where a batch shell
    of slurm_train.sh's own passes it on (REQUEUE=1); a signal the ranks do not save on by
    default is said."""
    proc, argv = run_launcher(tmp_path, ['part', 'job', 'cfg.py', 'w'],
                              dict(SIGNAL=signal_arg, REQUEUE=requeue))
    if refused:
        assert proc.returncode == 2 and refused in proc.stderr and argv is None, proc.stderr
        assert 'slurm_train.sh: SIGNAL=' in proc.stderr.splitlines()[-1]
    else:
        assert proc.returncode == 0, proc.stderr
        assert f'--signal={signal_arg}' in argv and 'slurm_train.sh:' not in proc.stderr


def test_slurm_train_says_when_the_ranks_would_not_save_on_its_signal(tmp_path):
    proc, argv = run_launcher(tmp_path, ['part', 'job', 'cfg.py', 'w'], dict(SIGNAL='USR2@300'))
    assert proc.returncode == 0 and '--signal=USR2@300' in argv, proc.stderr
    assert 'PreemptionHook(signals=...) must name USR2' in proc.stderr


def test_amp_flag_refuses_to_replace_another_optim_wrapper(tmp_path):
    """--amp turns an OptimWrapper into an AmpOptimWrapper, as mmdet's tools/train.py; another
    wrapper type is refused, naming it, before anything is built (mmdet asserts)."""
    proc = subprocess.run(
        [PY, 'tools/train.py', DET_CFG, '--amp', '--work-dir', str(tmp_path),
         '--cfg-options', 'optim_wrapper.type=OptimWrapperDict'],
        cwd=REPO, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=TOOL_TIMEOUT)
    assert proc.returncode != 0
    assert "ValueError: --amp turns optim_wrapper.type OptimWrapper into AmpOptimWrapper, got " \
           "optim_wrapper.type='OptimWrapperDict'" in proc.stdout, proc.stdout[-3000:]
    assert not list(tmp_path.iterdir())  # nothing built, no log written


def test_a_work_dir_that_cannot_be_written_is_one_line_with_the_fix(tmp_path):
    (tmp_path / 'file').write_text('')
    work = str(tmp_path / 'file' / 'work')  # under a file: no user can create it, root neither
    proc = subprocess.run([PY, 'tools/train.py', DET_CFG, '--work-dir', work], cwd=REPO,
                          env=tool_env(), capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f'work_dir {work} cannot be written (Not a directory): choose another with --work-dir, '
        'or make it writable')
