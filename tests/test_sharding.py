"""FAME's state sharded across 2 gloo CPU ranks through tools/dist_train.sh, against plain DDP.

The detection demo config trains 2N iterations with checkpoints every N, four ways: DDP (the
reference), ZeRO-1 (the config form of docs/sharding.md, with the Runner and with FlexibleRunner's
DDPStrategy) and FSDP through FlexibleRunner. Each sharded run must match DDP bit for bit (weights
and FAME state), hold about half the state per rank, save the full state in its checkpoint and
resume from it bit-identically; ZeRO and FSDP checkpoints also resume into one rank. Sharding
configs that cannot work fail at build time, naming the fix.
"""
import os.path as osp
import sys
import textwrap

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from e2e import (REPO, N, dist_train, rank_config, rank_reports,  # noqa: E402
                 run_outside_triton_interpreter)

from mmfame.optim._compat import TORCH_VERSION  # noqa: E402

if osp.join(REPO, 'tools', 'analysis_tools') not in sys.path:
    sys.path.insert(0, osp.join(REPO, 'tools', 'analysis_tools'))
import state_memory  # noqa: E402

FAME_BYTES = state_memory.BYTES_PER_ELEMENT['FAME']

# What each sharded run adds to the demo config (docs/sharding.md shows the same forms); the
# DDP reference is conftest.py's ddp_run.
SETTINGS = {
    'zero': '''\
        optim_wrapper = dict(constructor='FAMEOptimWrapperConstructor',
                             optimizer=dict(type='ZeroRedundancyOptimizer', optimizer_type='FAME'))
        ''',
    'zero-flexible': '''\
        runner_type = 'FlexibleRunner'
        strategy = dict(type='DDPStrategy')
        optim_wrapper = dict(constructor='FAMEOptimWrapperConstructor',
                             optimizer=dict(type='mmfame.ZeroRedundancyOptimizer',
                                            optimizer_type='FAME'))
        custom_hooks = [dict(type='RankStateHook'), dict(type='mmfame.ZeroCheckpointHook')]
        ''',
    'fsdp': '''\
        runner_type = 'FlexibleRunner'
        strategy = dict(type='mmfame.FSDPStrategy', state_dict_cfg='full')
        ''',
}
SHARDED = tuple(SETTINGS)
FSDP_ON_CPU = TORCH_VERSION >= (2, 2)
FSDP_REASON = "torch 2.1's FSDP creates CUDA streams: FSDP without a GPU needs a newer torch"


@pytest.fixture(scope='module')
def runs(ddp_run, demo_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('sharding')
    out = dict(ddp=ddp_run)
    for setting in SETTINGS:
        if setting == 'fsdp' and not FSDP_ON_CPU:
            continue
        cfg = rank_config(tmp / f'det_{setting}.py', SETTINGS[setting])
        work = str(tmp / setting)
        dist_train(cfg, demo_data, work)
        out[setting] = dict(cfg=cfg, work_dir=work)
    return out


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def _state(ckpt, names):
    """The checkpoint's FAME state by parameter name: DDP and ZeRO key it by index, FSDP by name;
    ``names`` maps (group, position) to the name."""
    optim = ckpt['optimizer']
    return {names[(gi, pi)]: optim['state'][key]
            for gi, group in enumerate(optim['param_groups'])
            for pi, key in enumerate(group['params'])}


def _weights(ckpt):
    """The checkpoint's weights; FlexibleRunner's DDPStrategy saves the wrapper's keys
    (``module.`` first) and strips them again on load."""
    return {k.removeprefix('module.'): v for k, v in ckpt['state_dict'].items()}


def _assert_same(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), f'weight {k} differs'
    # the same constructor made the same groups in both; FSDP's groups name their members
    names = {}
    for ckpt in (a, b):
        for gi, group in enumerate(ckpt['optimizer']['param_groups']):
            for pi, key in enumerate(group['params']):
                if isinstance(key, str) or (gi, pi) not in names:
                    names[(gi, pi)] = key if isinstance(key, str) else (gi, pi)
    sa, sb = _state(a, names), _state(b, names)
    assert sa.keys() == sb.keys() and len(sa) > 0
    for name in sa:
        assert sa[name].keys() == sb[name].keys(), name
        for k in sa[name]:
            assert torch.equal(sa[name][k].float(), sb[name][k].float()), f'{name}.{k} differs'


def _need(setting):
    if setting == 'fsdp' and not FSDP_ON_CPU:
        pytest.skip(FSDP_REASON)


@pytest.mark.slow
@pytest.mark.parametrize('setting', SHARDED)
def test_sharded_run_equals_ddp(runs, setting):
    """Same gradients (all-reduce vs reduce-scatter of 2 ranks), same elementwise update: the
    weights and the FAME state saved at N and 2N iterations equal DDP's exactly."""
    _need(setting)
    for it in (N, 2 * N):
        ddp = _load(osp.join(runs['ddp']['work_dir'], f'iter_{it}.pth'))
        sharded = _load(osp.join(runs[setting]['work_dir'], f'iter_{it}.pth'))
        _assert_same(ddp, sharded)


@pytest.mark.slow
@pytest.mark.parametrize('setting', SHARDED)
def test_each_rank_holds_about_half_the_state(runs, setting):
    _need(setting)
    def rank_bytes(work):
        return [r['state_bytes'] for r in rank_reports(work, 2)]

    full = rank_bytes(runs['ddp']['work_dir'])
    assert full[0] == full[1] > 0
    shards = rank_bytes(runs[setting]['work_dir'])
    assert sum(shards) == full[0], (shards, full)  # every element's state held exactly once
    assert all(0.3 * full[0] < s < 0.7 * full[0] for s in shards), (shards, full)
    # what tools/analysis_tools/state_memory.py computes for the docs' table, from the config
    groups = state_memory.model_groups(runs['ddp']['cfg'])
    assert state_memory.trained_elements(groups) * FAME_BYTES == full[0]
    if setting.startswith('zero'):
        expected = [n * FAME_BYTES for n in state_memory.zero_shards(groups, 2)]
    else:
        total = state_memory.trained_elements(groups)
        expected = [n * FAME_BYTES for n in (-(-total // 2), total - -(-total // 2))]
    assert shards == expected, (shards, expected)


@pytest.mark.slow
@pytest.mark.parametrize('setting', SHARDED)
def test_sharded_resume_is_bit_identical(runs, demo_data, tmp_path, setting):
    _need(setting)
    run = runs[setting]
    work = str(tmp_path / 'resumed')
    dist_train(run['cfg'], demo_data, work, extra=['--resume', osp.join(run['work_dir'],
                                                                       f'iter_{N}.pth')])
    _assert_same(_load(osp.join(run['work_dir'], f'iter_{2 * N}.pth')),
                 _load(osp.join(work, f'iter_{2 * N}.pth')))


@pytest.mark.slow
@pytest.mark.parametrize('setting', ('zero', 'fsdp'))
def test_checkpoint_resumes_into_one_rank(runs, demo_data, tmp_path, setting):
    """A 2-rank checkpoint holds the full state: one rank loads all of it and continues (the
    global batch halves, so the run differs from the 2-rank one by design)."""
    _need(setting)
    run = runs[setting]
    work = str(tmp_path / 'one_rank')
    dist_train(run['cfg'], demo_data, work, nproc=1,
               extra=['--resume', osp.join(run['work_dir'], f'iter_{N}.pth')])
    rank_reports(work, 1)
    state = _load(osp.join(work, f'iter_{2 * N}.pth'))['optimizer']['state']
    reference = _load(osp.join(run['work_dir'], f'iter_{2 * N}.pth'))['optimizer']['state']
    assert state.keys() == reference.keys()
    assert all(float(s['step']) == 2 * N for s in state.values())


# ------------------------------------------------------------------------------ bad input
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)


def _build(model, optimizer, constructor='FAMEOptimWrapperConstructor', **wrapper):
    import mmfame  # noqa: F401
    from mmengine.optim import build_optim_wrapper
    return build_optim_wrapper(model, dict(type='OptimWrapper', optimizer=optimizer,
                                           constructor=constructor, **wrapper))


def _fsdp(use_orig_params):
    from mmengine.model import MMFullyShardedDataParallel
    return MMFullyShardedDataParallel(_Net(), device_id=torch.device('cpu'),
                                      use_orig_params=use_orig_params)


ZERO = dict(type='ZeroRedundancyOptimizer', lr=1e-3)
BAD = {
    # case: (model, optimizer, wrapper options, error, words the message must hold)
    'zero unknown optimizer_type': (_Net, dict(ZERO, optimizer_type='Nope'), {}, ValueError,
                                    ['optimizer_type', "'Nope'", "optimizer_type='FAME'"]),
    'zero misspelt FAME': (_Net, dict(ZERO, optimizer_type='Fame'), {}, ValueError,
                           ["did you mean 'FAME'"]),
    'zero without optimizer_type': (_Net, ZERO, {}, ValueError, ['optimizer_type']),
    'zero SGD leftover': (_Net, dict(ZERO, optimizer_type='FAME', momentum=0.9), {}, TypeError,
                          ['momentum', '_delete_=True', "type='ZeroRedundancyOptimizer'"]),
    'fsdp flat params with paramwise_cfg': (
        lambda: _fsdp(False), dict(type='FAME', lr=1e-3, weight_decay=0.05),
        dict(paramwise_cfg=dict(norm_decay_mult=0.)), ValueError,
        ['use_orig_params=True', 'paramwise_cfg']),
}


@pytest.mark.parametrize('case', BAD, ids=list(BAD))
def test_sharding_configs_that_cannot_work_fail_at_build(one_rank_group, case):
    model, optimizer, wrapper, error, words = BAD[case]
    if case.startswith('fsdp'):
        _need('fsdp')
    with pytest.raises(error) as info:
        _build(model(), dict(optimizer), **wrapper)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


ZERO_FUSED_ON_CPU = textwrap.dedent('''\
    import sys, torch.distributed as dist, torch.nn as nn
    import mmfame
    from mmengine.optim import build_optim_wrapper
    dist.init_process_group('gloo', init_method='file://' + sys.argv[1], rank=0, world_size=1)
    build_optim_wrapper(nn.Linear(3, 4), dict(type='OptimWrapper', optimizer=dict(
        type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME', lr=1e-3, fused=True)))
    ''')


def test_zero_fused_on_cpu_tensors_fails_at_build(tmp_path):
    """Each rank builds FAME on its shard: fused=True on CPU tensors is refused right there
    (outside Triton's interpreter, which the rest of the suite runs under without a GPU)."""
    out = run_outside_triton_interpreter(ZERO_FUSED_ON_CPU, str(tmp_path / 'store'))
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    assert 'RuntimeError:' in message and 'fused=True' in message, out.stderr[-2000:]
    # the fix: the default path on CPU tensors, or (without Triton 3) which Triton it needs
    assert 'use the default path' in message or 'Triton >= 3.0' in message, message


@pytest.mark.parametrize('constructor, kind', [
    ('FAMEOptimWrapperConstructor', 'ZeroRedundancyOptimizer'),  # mmengine's, built through ours
    ('FAMEOptimWrapperConstructor', 'mmfame.ZeroRedundancyOptimizer'),
    ('DefaultOptimWrapperConstructor', 'mmfame.ZeroRedundancyOptimizer')])
def test_zero_config_form_builds_fame_shards(one_rank_group, constructor, kind):
    from mmfame import FAME
    wrapper = _build(_Net(), dict(type=kind, lr=1e-3, optimizer_type='FAME', weight_decay=0.05),
                     constructor=constructor, paramwise_cfg=dict(norm_decay_mult=0.))
    zero = wrapper.optimizer
    assert isinstance(zero.optim, FAME)
    decays = sorted(g['weight_decay'] for g in zero.param_groups)
    assert decays[0] == 0 and decays[-1] == 0.05  # the constructor's groups reach ZeRO


HOOK_CASES = {
    # case: (optimizer type, hooks the config lists, ZeroCheckpointHooks tools/train.py gives it)
    'ZeRO': ('ZeroRedundancyOptimizer', [], 1),
    "mmfame's ZeRO": ('mmfame.ZeroRedundancyOptimizer', [], 1),
    'ZeRO, hook listed': ('ZeroRedundancyOptimizer', ['mmfame.ZeroCheckpointHook'], 1),
    'FAME': ('FAME', [], 0),
}


@pytest.mark.parametrize('case', HOOK_CASES, ids=list(HOOK_CASES))
def test_train_gives_zero_runs_the_checkpoint_hook_once(case):
    """Without ZeroCheckpointHook a ZeRO run hangs at its first checkpoint: tools/train.py adds
    it to a ZeRO config that does not list it, and never a second one."""
    from mmengine.config import Config

    from mmfame.engine import asks_for_zero
    from mmfame.runtime import add_custom_hooks
    optimizer_type, hooks, expected = HOOK_CASES[case]
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type=optimizer_type)),
                      custom_hooks=[dict(type=h) for h in hooks]))
    if asks_for_zero(cfg.optim_wrapper):
        add_custom_hooks(cfg, 'mmfame.ZeroCheckpointHook')
    assert [h['type'] for h in cfg.custom_hooks].count('mmfame.ZeroCheckpointHook') == expected


def test_zero_without_its_checkpoint_hook_warns_at_the_first_step(one_rank_group, monkeypatch):
    from mmfame.engine import zero
    logged = []
    monkeypatch.setattr(zero, 'print_log', lambda msg, **kw: logged.append(msg))
    wrappers = [_build(_Net(), dict(type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME',
                                    lr=1e-3)) for _ in range(2)]
    hooked = type('Runner', (), dict(optim_wrapper=wrappers[1], save_checkpoint=lambda: None))()
    zero.ZeroCheckpointHook().before_train(hooked)
    for wrapper in wrappers:
        for _ in range(2):
            wrapper.optimizer.step()
    assert len(logged) == 1 and zero.HOOK_FIX in logged[0]  # once, and only without the hook


@pytest.mark.skipif(not FSDP_ON_CPU, reason=FSDP_REASON)
def test_fsdp_clips_by_the_norm_over_all_shards(one_rank_group):
    wrapper = _build(_fsdp(True), dict(type='FAME', lr=1e-3),
                     clip_grad=dict(max_norm=1.0))
    assert wrapper.clip_func is not torch.nn.utils.clip_grad_norm_
    assert wrapper.clip_func.__qualname__.startswith('fsdp_clip_func')


def test_cpu_strategy_rewrite(monkeypatch):
    """Without CUDA a FlexibleRunner's FSDP strategy wraps on the CPU and gathers its full state
    dict without offloading; on a torch whose FSDP needs CUDA it is refused before it starts."""
    from mmengine.config import Config

    from mmfame.runtime import dist as mmfame_dist
    monkeypatch.setattr(mmfame_dist, 'cuda_available', lambda: False)
    monkeypatch.setattr(mmfame_dist, 'patch_init_dist_for_cpu', lambda: True)

    def cfg():
        return Config(dict(launcher='pytorch', runner_type='FlexibleRunner',
                           strategy=dict(type='mmfame.FSDPStrategy', state_dict_cfg='full')))

    monkeypatch.setattr(mmfame_dist, 'TORCH_VERSION', (2, 13))
    c = cfg()
    assert mmfame_dist.setup_cpu_distributed(c)
    assert c.strategy.model_wrapper.type == mmfame_dist.CPU_FSDP_TYPE
    assert c.strategy.state_dict_cfg.state_dict_config.offload_to_cpu is False
    assert c.env_cfg.dist_cfg.backend == 'gloo'
    monkeypatch.setattr(mmfame_dist, 'TORCH_VERSION', (2, 1, 2))
    with pytest.raises(RuntimeError, match='ZeroRedundancyOptimizer'):
        mmfame_dist.setup_cpu_distributed(cfg())


# id: (runner_type, strategy type, the type train.py/test.py build it with)
STRATEGIES = {
    'DDP': ('FlexibleRunner', 'DDPStrategy', 'mmfame.DDPStrategy'),
    'FSDP, scoped': ('FlexibleRunner', 'mmengine.FSDPStrategy', 'mmfame.FSDPStrategy'),
    "mmfame's": ('FlexibleRunner', 'mmfame.FSDPStrategy', 'mmfame.FSDPStrategy'),
    'another strategy': ('FlexibleRunner', 'DeepSpeedStrategy', 'DeepSpeedStrategy'),
    'no FlexibleRunner': (None, 'DDPStrategy', 'DDPStrategy'),
}


@pytest.mark.parametrize('case', STRATEGIES)
def test_flexible_runners_get_a_strategy_that_resumes(case):
    """A FlexibleRunner loads its checkpoint before any hook runs: only mmfame's strategies load
    it under torch >= 2.6 (and resume FSDP on torch >= 2.1)."""
    from mmengine.config import Config

    from mmfame.runtime import use_resumable_strategy
    runner_type, strategy, expected = STRATEGIES[case]
    cfg = Config(dict(strategy=dict(type=strategy), **(
        dict(runner_type=runner_type) if runner_type else {})))
    use_resumable_strategy(cfg)
    assert cfg.strategy.type == expected
