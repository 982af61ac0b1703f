"""The LR range test (mmfame/engine/lr_finder.py, tools/analysis_tools/lr_finder.py).

* The curve analysis, as tables: smoothing, the divergence stop, each rule's suggestion, and the
  refusals (too few points, unknown rule, bad bounds).
* The sweep's config: an exponential lr from start to end over an iteration loop, no
  validation, no checkpoints, the recipe's own lr hook replaced, the preemption hook dropped.
* In process, on a toy model with plain SGD (any optimizer): the model and optimizer state are
  given back, the lrs are the exponential sweep, the files are written to the sweep's work dir.
* End to end (slow) on the demo detector and segmentor: their AdamW twins converted by
  convert_recipe.py, then swept on one process with ``--apply``; two gloo ranks that diverge
  and must stop together, under torchrun and under Slurm (one rank on each node of the private
  cluster, as the other Slurm tests: CI=true).
"""
import importlib.util
import json
import math
import os
import os.path as osp

import pytest

pytest.importorskip('mmengine', reason='mmengine is not installed')

import e2e  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

from mmfame.engine.lr_finder import (RULES, boundary_warning, diverged,  # noqa: E402
                                     range_test_config, smooth, suggest)

LRS = [10**(-6 + 5 * i / 49) for i in range(50)]  # 1e-6 .. 1e-1
VALLEY = [2 - math.tanh(math.log10(lr) + 3.5) + (max(0, math.log10(lr) + 2))**2 * 20
          for lr in LRS]  # falls around 3e-4, lowest near 1e-2, then explodes


def test_smoothing_is_bias_corrected():
    assert smooth([3.0] * 5) == pytest.approx([3.0] * 5)
    assert smooth([1.0, 3.0], beta=0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / 0.75])


@pytest.mark.parametrize('curve,expected', [([1.0, 1.0, 3.9], False), ([1.0, 1.0, 4.1], True),
                                            ([1.0, float('nan')], True),
                                            ([1.0, float('inf')], True)])
def test_divergence(curve, expected):
    assert diverged(curve) is expected


@pytest.mark.parametrize('rule,low,high', [('min/10', 5e-4, 2e-3), ('steepest', 1e-4, 1e-3)])
def test_rules_pick_from_the_valley(rule, low, high):
    lr, why = suggest(LRS, smooth(VALLEY, beta=0.5), rule)
    assert low < lr < high and RULES[rule] in why


@pytest.mark.parametrize('lrs,curve,rule,words', [
    (LRS[:2], VALLEY[:2], 'min/10', 'too few'),
    (LRS, VALLEY, 'valley', "known rules"),
    (LRS[:5], [1.0, 2.0, 3.0, 4.0, 5.0], 'steepest', 'no descent'),
])
def test_suggest_refuses(lrs, curve, rule, words):
    with pytest.raises(ValueError, match=words):
        suggest(lrs, curve, rule)


FALLING = [3.0 - i / 50 for i in range(50)]


@pytest.mark.parametrize('curve,threshold,warns', [
    (VALLEY, 4.0, False),  # turned up and diverged
    (FALLING, 4.0, True),  # still falling at the end
    (FALLING[:40] + [2.3 + i / 4 for i in range(10)], 4.0, False),  # turned up
    (FALLING[:49] + [1e3], 4.0, False),  # diverged at the last iteration
    (FALLING[:49] + [1e3], 100.0, True),  # not by the hook's own threshold: lowest at 49 of 50
])
def test_warns_when_the_curve_never_turned_up(curve, threshold, warns):
    warning = boundary_warning(LRS, smooth(curve), threshold)
    assert (warning is not None) is warns
    if warns:
        assert f'of {len(curve)}' in warning and '--end-lr' in warning


def _recipe(**extra):
    return Config(dict(
        optim_wrapper=dict(optimizer=dict(type='FAME', lr=1e-3)), train_cfg=dict(max_epochs=3),
        val_dataloader=dict(batch_size=1), val_cfg=dict(), param_scheduler=[dict(type='MultiStepLR')],
        default_hooks=dict(param_scheduler=dict(type='YOLOv5ParamSchedulerHook', lr_factor=0.01),
                           checkpoint=dict(type='CheckpointHook', interval=1)),
        custom_hooks=[dict(type='EMAHook'), dict(type='mmfame.PreemptionHook')], **extra))


def test_sweep_config():
    cfg = _recipe(resume=True, auto_scale_lr=dict(enable=True, base_batch_size=16))
    range_test_config(cfg, start_lr=1e-6, end_lr=1.0, num_iters=61, rule='min/10',
                      work_dir='w')
    assert cfg.optim_wrapper.optimizer.lr == 1e-6 and cfg.resume is False and cfg.work_dir == 'w'
    assert cfg.auto_scale_lr.enable is False
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=61, val_interval=62)
    assert cfg.val_dataloader is None and cfg.val_cfg is None
    (sched, ) = cfg.param_scheduler
    assert sched['type'] == 'ExponentialLR' and sched['gamma']**60 == pytest.approx(1e6)
    assert cfg.default_hooks.param_scheduler == dict(type='ParamSchedulerHook')
    assert cfg.default_hooks.checkpoint is None and cfg.default_hooks.logger.interval == 1
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'mmfame.LRRangeTestHook']


@pytest.mark.parametrize('kwargs,words', [
    (dict(start_lr=1.0, end_lr=1e-3), 'start_lr < end_lr'),
    (dict(num_iters=2), 'at least 3'),
    (dict(rule='fastest'), 'known rules'),
])
def test_sweep_config_refuses(kwargs, words):
    args = dict(start_lr=1e-6, end_lr=1.0, num_iters=10, rule='min/10', work_dir='w')
    with pytest.raises(ValueError, match=words):
        range_test_config(_recipe(), **{**args, **kwargs})


@pytest.mark.parametrize('setup,args,words', [
    ('iter_8.pth', [], 'holds checkpoints'),
    ('last_checkpoint', [], 'holds checkpoints'),
    ('', ['--apply'], '"base_lr = ..." (as convert_recipe.py writes), found 0'),
])
def test_the_tool_refuses_before_training(setup, args, words, tmp_path):
    """A work dir with checkpoints (a training run's) is not written into; --apply on a config
    without a base_lr line is refused before the sweep, not after it."""
    pytest.importorskip('mmdet', reason='the demo config is an mmdet config')
    import runpy
    work = tmp_path / 'work'
    work.mkdir()
    if setup:
        (work / setup).write_text('')
    tool = osp.join(e2e.REPO, 'tools', 'analysis_tools', 'lr_finder.py')
    with pytest.raises(SystemExit) as e:
        module = runpy.run_path(tool)
        module['main']([e2e.DET_CFG, '--work-dir', str(work), *args])
    assert words in str(e.value.code)
    assert sorted(os.listdir(work)) == ([setup] if setup else [])


class ToyModel(torch.nn.Module):
    """An mmengine model: a linear regression whose loss train_step returns."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)

    def forward(self, inputs, targets, mode='loss'):
        inputs, targets = (t.to(self.linear.weight.device) for t in (inputs, targets))
        return dict(loss=((self.linear(inputs) - targets)**2).mean())

    def train_step(self, data, optim_wrapper):
        losses = self(**data)
        optim_wrapper.update_params(losses['loss'])
        return dict(loss=losses['loss'].detach())


def _toy_sweep(work_dir, amp=False):
    """A 20-iteration sweep of the toy model with torch SGD (momentum), in this process."""
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    from mmfame.runtime import use_amp
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = [dict(inputs=x[i:i + 8], targets=x[i:i + 8].sum(1, keepdim=True)) for i in
            range(0, 64, 8)]
    cfg = Config(dict(
        work_dir=work_dir, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        default_hooks=dict(), train_cfg=dict(by_epoch=True, max_epochs=1)))
    if amp:
        use_amp(cfg)
    range_test_config(cfg, start_lr=1e-4, end_lr=10.0, num_iters=20, rule='min/10',
                      work_dir=cfg.work_dir)
    runner = Runner(model=ToyModel(), train_dataloader=DataLoader(data, collate_fn=lambda b: b[0]),
                    **{k: v for k, v in cfg.items() if v is not None})
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'LRRangeTestHook')
    for key, value in runner.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not runner.optim_wrapper.optimizer.state  # no momentum buffers left behind
    lrs = [c['lr'] for c in hook.result['curve']]
    assert lrs[0] == pytest.approx(1e-4)
    assert all(b / a == pytest.approx(1e5**(1 / 19)) for a, b in zip(lrs, lrs[1:]))
    return hook.result


def test_in_process_sweep_gives_the_model_back(tmp_path):
    """Any optimizer (torch SGD here), in process: the model's weights and the optimizer state
    after the sweep are those before it; the recorded lrs are the exponential sweep."""
    result = _toy_sweep(str(tmp_path / 'sweep'))
    assert result['optimizer'] == 'SGD'
    for name in ('lr_finder.json', 'lr_finder.csv', 'lr_finder.png'):
        assert osp.isfile(osp.join(tmp_path, 'sweep', name)), name


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='AmpOptimWrapper needs a GPU')
def test_in_process_sweep_under_amp(tmp_path):
    """--amp's wrapper on a GPU: the sweep runs in mixed precision, the model is given back."""
    result = _toy_sweep(str(tmp_path / 'sweep'), amp=True)
    assert all(math.isfinite(c['loss']) for c in result['curve'][:10])


# ------------------------------------------------------------------------------ end to end
needs_stack = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ('mmdet', 'mmseg', 'mmcv')),
    reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')


def _finder(cfg, work, *args):
    return [e2e.PY, 'tools/analysis_tools/lr_finder.py', str(cfg), '--work-dir', str(work),
            *args]


def _result(work, num_iters, start_lr, end_lr):
    with open(osp.join(work, 'lr_finder.json')) as f:
        result = json.load(f)
    lrs = [c['lr'] for c in result['curve']]
    assert 3 <= len(lrs) <= num_iters and lrs[0] == pytest.approx(start_lr)
    ratio = (end_lr / start_lr)**(1 / (num_iters - 1))
    assert all(b / a == pytest.approx(ratio) for a, b in zip(lrs, lrs[1:]))
    assert osp.isfile(osp.join(work, 'lr_finder.png')) and osp.isfile(osp.join(work,
                                                                           'lr_finder.csv'))
    assert not [n for n in os.listdir(work) if n.endswith('.pth')]  # no checkpoints
    return result


@pytest.mark.slow
@needs_stack
@pytest.mark.parametrize('task', ['detection', 'segmentation'])
def test_sweep_one_process(task, demo_data, tmp_path):
    """The two commands of docs/openmmlab.md on the demo config's AdamW twin: convert_recipe.py
    writes the FAME delta, lr_finder.py --apply sweeps 8 iterations (a log line each, with the
    smoothed loss; curve and plot in its own work dir) and writes the suggestion into it."""
    base = e2e.DET_CFG if task == 'detection' else e2e.SEG_CFG
    delta = tmp_path / 'fame.py'
    e2e.run_tool([e2e.PY, 'tools/analysis_tools/convert_recipe.py',
                  base.replace('_fame_', '_adamw_'), str(delta)])
    work = tmp_path / 'sweep'
    out = e2e.run_tool(_finder(delta, work, '--num-iters', '8', '--start-lr', '1e-5', '--end-lr',
                               '0.1', '--apply')
                       + e2e.cfg_options(base, demo_data, max_iters=8, ckpt_interval=8, size=64))
    result = _result(str(work), 8, 1e-5, 0.1)
    assert result['optimizer'] == 'FAME' and result['world_size'] == 1
    steps = [line for line in out.splitlines() if 'Iter(train) [' in line]
    assert len(steps) == len(result['curve']) and all('smoothed_loss' in s for s in steps)
    lr = result['suggested_lr']
    assert 1e-6 <= lr <= 0.1 and result['rule'] == 'min/10'
    cfg = Config.fromfile(str(delta), import_custom_modules=False)
    assert cfg.optim_wrapper.optimizer.type == 'FAME'
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(lr, rel=1e-5)
    assert f'set base_lr = {lr:.3g}' in out


@pytest.mark.slow
@needs_stack
def test_sweep_two_ranks_stop_together(demo_data, tmp_path):
    """torchrun, 2 gloo ranks, an lr range made to diverge: the ranks average the loss, so they
    stop at the same iteration (a rank that went on would wait for the other in DDP's gradient
    all-reduce, and the run would not end); rank 0 writes the result."""
    work = tmp_path / 'sweep'
    cmd = [e2e.PY, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port',
           str(e2e.free_port())] + _finder(e2e.DET_CFG, work, '--launcher', 'pytorch',
                                           '--num-iters', '16', '--start-lr', '1e-3',
                                           '--end-lr', '1e4')[1:]
    e2e.run_tool(cmd + e2e.cfg_options(e2e.DET_CFG, demo_data, max_iters=16, ckpt_interval=16,
                                       size=64), timeout=600)
    result = _result(str(work), 16, 1e-3, 1e4)
    assert result['world_size'] == 2
    assert result['stopped'].startswith('diverged') and len(result['curve']) < 16


@pytest.mark.parametrize('wrapper,expected', [
    (dict(type='OptimWrapper'), dict(type='AmpOptimWrapper', loss_scale='dynamic')),
    (dict(), dict(type='AmpOptimWrapper', loss_scale='dynamic')),
    (dict(type='AmpOptimWrapper', loss_scale=512.), dict(type='AmpOptimWrapper', loss_scale=512.)),
    (dict(type='MyWrapper'), "optim_wrapper.type='MyWrapper'"),
])
def test_amp_as_train_py_does_it(wrapper, expected):
    """--amp of lr_finder.py and train.py (mmfame.runtime.use_amp); AmpOptimWrapper itself
    needs a GPU, so the sweep under --amp runs on GPU machines only."""
    from mmfame.runtime import use_amp
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='FAME'), **wrapper)))
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected.replace('(', r'\(')):
            use_amp(cfg)
        return
    use_amp(cfg)
    assert {k: v for k, v in cfg.optim_wrapper.items() if k != 'optimizer'} == expected


@pytest.mark.slow
@needs_stack
def test_sweep_under_slurm_on_two_nodes(slurm_cluster, demo_data, tmp_path):
    """srun, one rank on each node of the private Slurm cluster (mmengine's slurm launcher):
    the same agreed stop as under torchrun."""
    work = tmp_path / 'sweep'
    env = e2e.slurm_env(slurm_cluster['SLURM_CONF'], MASTER_PORT=e2e.free_port(),
                        OMP_NUM_THREADS=1)
    srun = ['timeout', '-k', '30', '600', 'srun', '-p', slurm_cluster['partition'],
            '--gres=gpu:1', '--ntasks=2', '--ntasks-per-node=1', '--cpus-per-task=1',
            '--kill-on-bad-exit=1']
    cmd = srun + _finder(e2e.DET_CFG, work, '--launcher', 'slurm', '--num-iters', '16',
                         '--start-lr', '1e-3', '--end-lr', '1e4')
    e2e.run_tool(cmd + e2e.cfg_options(e2e.DET_CFG, demo_data, max_iters=16, ckpt_interval=16,
                                       size=64), env=env, timeout=700)
    result = _result(str(work), 16, 1e-3, 1e4)
    assert result['world_size'] == 2
    assert result['stopped'].startswith('diverged') and len(result['curve']) < 16
