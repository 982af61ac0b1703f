"""The shipped FAME configs (configs/coco, configs/ade20k): they load, name FAME without SGD
leftovers, build their model (random init, nothing downloaded) and a FAME optimizer whose param
groups carry the config's hyper-parameters."""
import ast
import copy
import glob
import inspect
import os
import re
import socket

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')
pytest.importorskip('mmseg', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

import torch  # noqa: E402
from mmengine import Config  # noqa: E402
from mmengine.hub import get_config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

import mmfame  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS = {'coco': 'mmdet', 'ade20k': 'mmseg'}  # configs/<dataset>/ -> upstream package
# The shipped configs: a missing one fails test_config_exists (and its other tests), never skips.
SHIPPED = [
    'configs/coco/atss_r50_fpn_fame_8xb2-1x_coco.py',
    'configs/coco/dino-4scale_r50_fame_8xb2-12e_coco.py',
    'configs/coco/faster-rcnn_r50_fpn_fame_8xb2-1x_coco.py',
    'configs/coco/mask-rcnn_r50_fpn_fame_8xb2-1x_coco.py',
    'configs/coco/mask-rcnn_swin-t-p4-w7_fpn_fame_8xb2-1x_coco.py',
    'configs/coco/retinanet_r50_fpn_fame_8xb2-1x_coco.py',
    'configs/coco/rtmdet_tiny_fame_8xb32-300e_coco.py',
    'configs/coco/yolox_s_fame_8xb8-300e_coco.py',
    'configs/coco/yolox_tiny_fame_8xb8-300e_coco.py',
    'configs/ade20k/deeplabv3plus_r50-d8_fame_4xb4-160k_ade20k-512x512.py',
    'configs/ade20k/mae-base_upernet_fame_8xb2-amp-160k_ade20k-512x512.py',
    'configs/ade20k/mask2former_r50_fame_8xb2-160k_ade20k-512x512.py',
    'configs/ade20k/pspnet_r50-d8_fame_4xb4-160k_ade20k-512x512.py',
    'configs/ade20k/segformer_mit-b0_fame_8xb2-160k_ade20k-512x512.py',
    'configs/ade20k/segmenter_vit-t_mask_fame_8xb1-160k_ade20k-512x512.py',
    'configs/ade20k/swin-tiny-patch4-window7-in1k-pre_upernet_fame_8xb2-160k_ade20k-512x512.py',
    'configs/ade20k/upernet_r50_fame_4xb4-160k_ade20k-512x512.py',
]
FOUND = {os.path.relpath(p, ROOT) for d in DATASETS
         for p in glob.glob(os.path.join(ROOT, 'configs', d, '*.py'))}
CONFIGS = sorted(set(SHIPPED) | FOUND)  # a config added next to them is tested too
# {algo}_{backbone}_fame_{N}xb{B}-{schedule}_{dataset}[-{crop}].py
NAME_RE = re.compile(r'^[a-z0-9][a-z0-9.+-]*(_[a-z0-9.+-]+)*_fame_\d+xb\d+-[a-z0-9-]+_'
                     r'(coco|ade20k)(-\d+x\d+)?\.py$')
FAME_KEYS = set(list(inspect.signature(mmfame.FAME).parameters)[1:])
FAME_DEFAULTS = {k: p.default for k, p in inspect.signature(mmfame.FAME).parameters.items()
                 if k != 'params'}
SGD_KEYS = ('momentum', 'nesterov', 'dampening')
# FAMEOptimWrapperConstructor's own paramwise_cfg keys (the rest are mmengine's).
FAME_PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'merge_groups')


def test_configs_exist():
    names = {os.path.basename(p) for p in FOUND}
    assert sum(p.startswith('configs/coco/') for p in FOUND) >= 7, names
    assert sum(p.startswith('configs/ade20k/') for p in FOUND) >= 7, names


@pytest.mark.parametrize('path', SHIPPED, ids=os.path.basename)
def test_config_exists(path):
    assert os.path.isfile(os.path.join(ROOT, path)), f'shipped config {path} is missing'


def _upstream_base(path):
    """The config's `_base_` (one upstream 'mmdet::...' / 'mmseg::...' file)."""
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f'{path} has no _base_')


def _imports(cfg):
    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    return [imports] if isinstance(imports, str) else list(imports)


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config(path):
    name = os.path.basename(path)
    dataset = path.split('/')[1]
    cfg = Config.fromfile(os.path.join(ROOT, path))

    # Named after the upstream file with `_fame` inserted (mmdet's 1x names also gain `8xb2-`).
    assert NAME_RE.match(name), name
    base = _upstream_base(path)
    package = DATASETS[dataset]
    assert isinstance(base, str) and base.startswith(f'{package}::'), base
    upstream = os.path.basename(base)
    assert upstream in (name.replace('_fame', ''), name.replace('_fame_8xb2-', '_')), (
        name, upstream)
    assert cfg.default_scope == package

    # custom_imports is replaced on inheritance: mmfame plus everything the base imported.
    assert cfg.custom_imports.allow_failed_imports is False
    imports = _imports(cfg)
    assert 'mmfame' in imports
    base_cfg = get_config(base)
    assert set(_imports(base_cfg)) <= set(imports), (_imports(base_cfg), imports)

    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'FAME'
    assert not [k for k in SGD_KEYS if k in opt], opt
    assert set(opt) - {'type', '_scope_'} <= FAME_KEYS, opt
    assert opt.get('lr'), 'lr must be explicit (lr_mult and schedulers scale it)'
    # A top-level `optimizer` that the child redefines (mmseg SGD bases) must be FAME too.
    if 'optimizer' in cfg and cfg.optimizer.get('type') != base_cfg.get('optimizer', {}).get(
            'type'):
        assert cfg.optimizer.type == 'FAME' and not [k for k in SGD_KEYS if k in cfg.optimizer]

    # Same kind of optimizer wrapper as upstream: clip_grad kept when the base clipped.
    base_clip = base_cfg.optim_wrapper.get('clip_grad')
    if base_clip:
        assert cfg.optim_wrapper.get('clip_grad') == base_clip

    # Schedules must fit the new lr: a floor at or above the lr would freeze or raise it, and a
    # floor (an absolute lr upstream) keeps its upstream ratio to the lr.
    base_opt = base_cfg.optim_wrapper.optimizer
    base_scheds = base_cfg.get('param_scheduler') or []
    for i, sched in enumerate(cfg.param_scheduler):
        if 'eta_min' in sched:
            assert sched.eta_min < opt.lr, (sched, opt.lr)
            theirs = base_scheds[i] if i < len(base_scheds) else {}
            if theirs.get('type') == sched.type and theirs.get('eta_min') and base_opt.get('lr'):
                assert sched.eta_min / opt.lr == pytest.approx(
                    theirs['eta_min'] / base_opt.lr), (sched, opt.lr)


def _strip_pretrained(node):
    """Drop every Pretrained init_cfg and `pretrained` path, in place; SyncBN -> BN (CPU)."""
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        if node.get('pretrained') is not None:
            node['pretrained'] = None
        init_cfg = node.get('init_cfg')
        if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
            node['init_cfg'] = None
        elif isinstance(init_cfg, (list, tuple)):
            kept = [c for c in init_cfg if c.get('type') != 'Pretrained']
            node['init_cfg'] = kept or None
        for value in node.values():
            _strip_pretrained(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _strip_pretrained(value)


def _mentions(node, word):
    if isinstance(node, dict):
        return any(_mentions(v, word) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_mentions(v, word) for v in node)
    return node == word


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt (weights by URL, torchvision://, open-mmlab://) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f'network access attempted: {args!r}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setattr(socket, 'create_connection', refuse)


@pytest.fixture(scope='module')
def registries():
    import mmdet.utils
    import mmseg.utils
    mmdet.utils.register_all_modules(init_default_scope=False)
    mmseg.utils.register_all_modules(init_default_scope=False)


def _settings(optimizer, names):
    """param name -> (lr, weight_decay) for every parameter in the optimizer's groups."""
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            assert name not in out, f'{name} is in two param groups'
            out[name] = (group['lr'], group['weight_decay'])
    return out


def _expected_settings(model, cfg, names):
    """What mmengine's (or mmseg's layer-decay) constructor makes of the same paramwise_cfg,
    for a plain torch optimizer: the groups FAME must receive."""
    ow = copy.deepcopy(cfg.optim_wrapper.to_dict())
    opt = ow['optimizer']
    ow['optimizer'] = dict(type='SGD', lr=opt['lr'],
                           weight_decay=opt.get('weight_decay', FAME_DEFAULTS['weight_decay']))
    paramwise = ow.get('paramwise_cfg') or {}
    if ow.get('constructor') == 'FAMEOptimWrapperConstructor':
        if 'decay_rate' in paramwise:
            assert paramwise.get('decay_type', 'layer_wise') == 'layer_wise'
            ow['constructor'] = 'LayerDecayOptimizerConstructor'  # mmseg's, for ViT/BEiT/MAE
            ow['paramwise_cfg'] = dict(num_layers=paramwise['num_layers'],
                                       layer_decay_rate=paramwise['decay_rate'])
        else:
            ow['constructor'] = 'DefaultOptimWrapperConstructor'
            ow['paramwise_cfg'] = {
                k: v for k, v in paramwise.items() if k not in FAME_PARAMWISE_KEYS}
    return _settings(build_optim_wrapper(model, ow).optimizer, names)


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_build(path, registries, no_network):
    cfg = Config.fromfile(os.path.join(ROOT, path))
    import_modules_from_strings(**cfg.custom_imports)  # what the Runner does, mmfame included
    init_default_scope(cfg.default_scope)

    model_cfg = copy.deepcopy(cfg.model)  # a ConfigDict: models read attributes of their cfgs
    _strip_pretrained(model_cfg)
    assert not _mentions(model_cfg, 'Pretrained') and not _mentions(model_cfg, 'SyncBN')
    if cfg.default_scope == 'mmseg':
        assert model_cfg['data_preprocessor'].get('size'), 'mmseg needs data_preprocessor.size'
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    torch.manual_seed(0)
    # Built modules hold random weights; init_weights() (where Pretrained would load) is not
    # called: it is half the cost here, and no Pretrained/pretrained is left to act on.
    model = MODELS.build(model_cfg)

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    optimizer = optim_wrapper.optimizer
    assert isinstance(optimizer, mmfame.FAME)
    clip = cfg.optim_wrapper.get('clip_grad')
    assert (optim_wrapper.clip_grad_kwargs or None) == (dict(clip) if clip else None)

    opt = {k: v for k, v in cfg.optim_wrapper.optimizer.items() if k not in ('type', '_scope_')}
    expected = {**FAME_DEFAULTS, **opt}
    expected['betas'] = tuple(expected['betas'])
    assert optimizer.defaults == expected

    names = {id(p): n for n, p in model.named_parameters()}
    got = _settings(optimizer, names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable <= set(got), sorted(trainable - set(got))[:5]
    for group in optimizer.param_groups:  # no per-group FAME keys in the shipped configs
        for key in ('betas', 'beta3', 'beta4', 'eps', 'decoupled_weight_decay'):
            assert group[key] == expected[key], (key, group[key])

    paramwise = cfg.optim_wrapper.get('paramwise_cfg')
    if not paramwise:
        assert len(optimizer.param_groups) == 1
        assert (optimizer.param_groups[0]['lr'], optimizer.param_groups[0]['weight_decay']) == (
            expected['lr'], expected['weight_decay'])
        return
    want = _expected_settings(model, cfg, names)
    for name in sorted(trainable):
        lr, wd = got[name]
        want_lr, want_wd = want[name]
        assert lr == pytest.approx(want_lr, rel=1e-12), (name, lr, want_lr)
        if 'decay_rate' in paramwise and name.split('.')[-1] in ('pos_embed', 'cls_token'):
            # mmseg compares the full name with 'pos_embed'/'cls_token', so never matches and
            # decays the tokens; FAMEOptimWrapperConstructor exempts them as intended.
            assert wd == 0.0, (name, wd)
        else:
            assert wd == pytest.approx(want_wd, rel=1e-12), (name, wd, want_wd)
    # The recipe's multipliers are really in effect (not all groups at the base values).
    custom = paramwise.get('custom_keys', {})
    if any('lr_mult' in v and v['lr_mult'] != 1 for v in custom.values()) or (
            'decay_rate' in paramwise):
        assert len({lr for lr, _ in got.values()}) > 1
    if expected['weight_decay'] and (any('decay_mult' in v for v in custom.values()) or any(
            paramwise.get(k) is not None for k in ('norm_decay_mult', 'bias_decay_mult'))
                                     or 'decay_rate' in paramwise):
        assert {wd for _, wd in got.values()} >= {0.0, expected['weight_decay']}


# ---------------------------------------------------------------- mmyolo's YOLOv5 (docs/mmyolo.md)
MMYOLO = sorted(os.path.relpath(p, ROOT)
                for p in glob.glob(os.path.join(ROOT, 'configs', 'mmyolo', '*.py')))


def _mmyolo_or_skip():
    """mmyolo, or a skip that says why: 0.6.0 asserts mmcv < 2.1.0 when it is imported."""
    try:
        import mmyolo.utils
    except (ImportError, AssertionError) as e:
        pytest.skip(f'mmyolo cannot be imported here ({type(e).__name__}: {e})')
    mmyolo.utils.register_all_modules(init_default_scope=False)


def test_mmyolo_recipes_are_shipped():
    assert [os.path.basename(p) for p in MMYOLO] == [
        'yolov5_n-v61_fame_1xb8-30e_demo-coco.py',
        'yolov5_n-v61_fame_syncbn_fast_8xb16-300e_coco.py',
        'yolov5_s-v61_fame_syncbn_fast_8xb16-300e_coco.py']


@pytest.mark.parametrize('path', MMYOLO, ids=os.path.basename)
def test_mmyolo_recipe(path, no_network):
    """With mmyolo importable: YOLOv5OptimizerConstructor gives FAME its three groups (decay on
    conv weights only), no group has a momentum for YOLOv5ParamSchedulerHook to write, and the
    bias warm-up starts at 0, not at SGD's 0.1."""
    _mmyolo_or_skip()
    from mmyolo.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, path))
    init_default_scope('mmyolo')
    model_cfg = copy.deepcopy(cfg.model)
    _strip_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    assert isinstance(optimizer, mmfame.FAME) and len(optimizer.param_groups) == 3
    decays = [g['weight_decay'] for g in optimizer.param_groups]
    assert decays[0] > 0 and decays[1:] == [0.0, 0.0]
    assert not any('momentum' in g or 'nesterov' in g for g in optimizer.param_groups)
    assert cfg.default_hooks.param_scheduler.warmup_bias_lr == 0.0


# ------------------------------------------------- typed dicts that upstream passes on as kwargs
DEMO = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'configs', 'demo',
                                                                        '*.py')))


@pytest.mark.parametrize('path', CONFIGS + DEMO + MMYOLO, ids=os.path.basename)
def test_collate_fn_takes_every_key_its_config_gives(path, registries):
    """mmengine's ``Runner.build_dataloader`` calls ``partial(collate_fn, **rest of its dict)``,
    and mmengine adds ``_scope_`` to every typed dict of a base loaded as ``mmyolo::``/``mmdet::``:
    a collate function that does not take a key the config gives fails at the first batch
    (``yolov5_collate() got an unexpected keyword argument '_scope_'``)."""
    from mmengine.registry import FUNCTIONS
    if path in MMYOLO:
        _mmyolo_or_skip()
    cfg = Config.fromfile(os.path.join(ROOT, path))
    for split in ('train', 'val', 'test'):
        collate = dict(cfg.get(f'{split}_dataloader', {}).get('collate_fn') or {})
        if not collate:
            continue  # mmengine's pseudo_collate, called without keywords
        function = collate.pop('type')
        if isinstance(function, str):
            with FUNCTIONS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
                function = registry.get(function)
        try:
            inspect.signature(function).bind_partial(**collate)
        except TypeError as e:
            pytest.fail(f'{split}_dataloader.collate_fn: {e} (keys {sorted(collate)})')
