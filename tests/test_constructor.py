"""FAMEOptimWrapperConstructor, and FAME under the upstream OpenMMLab constructors."""
import copy

import pytest
import torch
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper, build_optim_wrapper
from torch import nn

import mmfame
from mmfame import FAME, FAMEOptimWrapperConstructor

LR, WD = 1e-3, 0.05
FAME_CFG = dict(type='FAME', lr=LR, weight_decay=WD)
NO_STACK = 'the OpenMMLab stack (mmcv, mmdet, mmseg) is not installed'


class TinyConvNeXt(nn.Module):
    """mmpretrain ConvNeXt names: downsample_layers.N, stages.N.M (depths 1, 1, 4, 1)."""

    def __init__(self, dims=(4, 8, 8, 8), depths=(1, 1, 4, 1)):
        super().__init__()
        self.downsample_layers = nn.ModuleList()
        self.stages = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            prev = 3 if i == 0 else dims[i - 1]
            k = 2 if i else 1
            self.downsample_layers.append(nn.Sequential(nn.GroupNorm(1, prev),
                                                        nn.Conv2d(prev, dim, k, k)))
            self.stages.append(nn.Sequential(*(nn.Sequential(
                nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GroupNorm(1, dim),
                nn.Conv2d(dim, dim, 1, bias=False)) for _ in range(depth))))

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return x


class Net(nn.Module):
    """A backbone, a neck (BatchNorm, a frozen parameter) and a head: names like mmdet models'."""

    def __init__(self, backbone=None):
        super().__init__()
        self.backbone = backbone or TinyConvNeXt()
        self.neck = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.neck[0].bias.requires_grad_(False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.backbone(x)
        x = x[-1] if isinstance(x, (tuple, list)) else x
        return self.head(self.neck(x[:, :8]).mean((2, 3)))


def make_net(backbone=None, seed=0):
    torch.manual_seed(seed)
    return Net(backbone)


def train(model, wrapper, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(2, 3, 16, 16, generator=g)
        wrapper.update_params(model(x).square().mean())


def build(model, paramwise_cfg=None, optimizer=FAME_CFG, constructor=FAMEOptimWrapperConstructor,
          **wrapper):
    cfg = dict(type='OptimWrapper', optimizer=dict(optimizer), **wrapper)
    return constructor(cfg, copy.deepcopy(paramwise_cfg))(model)


def per_param(optimizer, model):
    """name -> hyper-parameters of its group (what the optimizer will use)."""
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: {k: v for k, v in group.items() if k not in ('params', 'param_names')}
            for group in optimizer.param_groups for p in group['params']}


def group_names(optimizer, model):
    names = {p: n for n, p in model.named_parameters()}
    return [[names[p] for p in group['params']] for group in optimizer.param_groups]


# Every DefaultOptimWrapperConstructor key (dcn_offset_lr_mult needs DCN; mmcv's DCN is CUDA-only).
PARAMWISE = {
    'custom_keys': dict(custom_keys={'head': dict(lr_mult=0.1, decay_mult=0.5),
                                     'backbone.stages.2': dict(lr_mult=0.5)}),
    'mults': dict(bias_lr_mult=2., bias_decay_mult=0., norm_decay_mult=0., dwconv_decay_mult=0.5,
                  flat_decay_mult=0.3),
    'all': dict(custom_keys={'head': dict(lr_mult=0.1)}, bias_lr_mult=2., norm_decay_mult=0.,
                bypass_duplicate=True),
}


@pytest.mark.parametrize('name', PARAMWISE)
def test_merge_keeps_every_default_rule(name):
    """Merged groups give every parameter the hyper-parameters the default constructor gives it;
    groups are few, ordered by first appearance, and built identically twice."""
    model = make_net()
    if name == 'all':
        model.shared = model.head  # a shared module: bypass_duplicate must skip it
    reference = build(model, PARAMWISE[name], constructor=DefaultOptimWrapperConstructor)
    ours = build(model, PARAMWISE[name]).optimizer
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(reference.optimizer.param_groups) == len(trainable)
    assert per_param(ours, model) == per_param(reference.optimizer, model)

    expected = {}  # distinct settings, in order of first appearance
    for n, settings in per_param(reference.optimizer, model).items():
        expected.setdefault(repr(sorted(settings.items())), []).append(n)
    assert group_names(ours, model) == list(expected.values())
    assert 1 < len(ours.param_groups) <= 6 < len(trainable)
    twin = copy.deepcopy(model)
    assert group_names(build(twin, PARAMWISE[name]).optimizer, twin) == group_names(ours, model)


def test_merge_groups_false_keeps_one_group_per_param():
    model = make_net()
    optimizer = build(model, dict(merge_groups=False, norm_decay_mult=0.)).optimizer
    assert len(optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_no_paramwise_cfg_is_one_group():
    model = make_net()
    assert len(build(model).optimizer.param_groups) == 1


def test_resume_after_merge_continues_bitwise():
    """Saved after 3 steps, loaded into a freshly built wrapper: the next 3 steps are identical."""
    cfg = PARAMWISE['custom_keys']
    model = make_net()
    wrapper = build(model, cfg)
    assert len(wrapper.optimizer.param_groups) == 3
    train(model, wrapper, 3)
    saved_model, saved_optim = copy.deepcopy(model.state_dict()), copy.deepcopy(
        wrapper.state_dict())
    train(model, wrapper, 3, seed=2)

    resumed = make_net(seed=5)
    resumed.load_state_dict(saved_model)
    resumed_wrapper = build(resumed, cfg)
    resumed_wrapper.load_state_dict(saved_optim)
    train(resumed, resumed_wrapper, 3, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for group in resumed_wrapper.optimizer.param_groups:
        for p in group['params']:
            assert int(resumed_wrapper.optimizer.state[p]['step']) == 6


def test_custom_keys_fame_keys_reach_the_optimizer():
    model = make_net()
    cfg = dict(custom_keys={'head': dict(beta3=0.5, beta4=0.1, betas=[0.8, 0.99], eps=1e-6)})
    wrapper = build(model, cfg)
    groups = wrapper.optimizer.param_groups
    assert len(groups) == 2
    head = groups[1]
    assert [id(p) for p in head['params']] == [id(p) for p in model.head.parameters()]
    assert head['betas'] == (0.8, 0.99) and isinstance(head['betas'], tuple)
    assert (head['beta3'], head['beta4'], head['eps']) == (0.5, 0.1, 1e-6)
    assert (groups[0]['beta3'], groups[0]['betas']) == (0.3, (0.9, 0.999))

    # The update of the head is the one of a FAME built with those keys.
    reference_model = copy.deepcopy(model)
    rest = [p for n, p in reference_model.named_parameters()
            if p.requires_grad and not n.startswith('head')]
    reference = FAME([dict(params=rest),
                      dict(params=list(reference_model.head.parameters()), beta3=0.5, beta4=0.1,
                           betas=(0.8, 0.99), eps=1e-6)], lr=LR, weight_decay=WD)
    train(model, wrapper, 2)
    train(reference_model, OptimWrapper(reference), 2)
    for a, b in zip(model.parameters(), reference_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize('key', ['momentum', 'nesterov', 'dampening'])
def test_sgd_leftovers_are_refused(key):
    with pytest.raises(TypeError, match=r"SGD base .*_delete_=True, type='FAME'") as info:
        build(make_net(), optimizer=dict(FAME_CFG, **{key: 0.9}))
    assert key in str(info.value)


def test_unknown_fame_key_lists_the_valid_keys():
    with pytest.raises(TypeError, match=r"unknown arguments \['beta_3'\]") as info:
        build(make_net(), optimizer=dict(FAME_CFG, beta_3=0.5))
    for key in ('lr', 'betas', 'beta3', 'beta4', 'decoupled_weight_decay', 'fused'):
        assert repr(key) in str(info.value)


@pytest.mark.parametrize('paramwise_cfg, named', [
    (dict(norm_decay_mult=0.5), 'norm_decay_mult'),
    (dict(bias_decay_mult=2.), 'bias_decay_mult'),
    (dict(dwconv_decay_mult=0.5), 'dwconv_decay_mult'),
    (dict(flat_decay_mult=0.5), 'flat_decay_mult'),
    (dict(custom_keys={'head': dict(decay_mult=0.5)}), "custom_keys['head'].decay_mult"),
])
@pytest.mark.parametrize('weight_decay', [0., None])
def test_decay_mults_without_weight_decay_are_refused(paramwise_cfg, named, weight_decay):
    optimizer = dict(type='FAME', lr=LR)
    if weight_decay is not None:
        optimizer['weight_decay'] = weight_decay
    with pytest.raises(ValueError, match='set weight_decay in optim_wrapper.optimizer') as info:
        build(make_net(), paramwise_cfg, optimizer=optimizer)
    assert named in str(info.value)


def test_zero_mults_without_weight_decay_are_fine():
    """norm_decay_mult=0 with weight_decay 0 asks for what it gets (common in inherited cfgs)."""
    build(make_net(), dict(norm_decay_mult=0.), optimizer=dict(type='FAME', lr=LR,
                                                               weight_decay=0.))


def test_other_optimizers_skip_the_fame_checks():
    """SGD keeps its momentum; AdamW with a decay mult and no weight decay builds as upstream."""
    model = make_net()
    sgd = build(model, dict(norm_decay_mult=0.), optimizer=dict(
        type='SGD', lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4))
    assert sgd.optimizer.param_groups[0]['momentum'] == 0.9
    reference = build(model, dict(flat_decay_mult=0.), optimizer=dict(type='AdamW', lr=LR),
                      constructor=DefaultOptimWrapperConstructor)
    ours = build(model, dict(flat_decay_mult=0.), optimizer=dict(type='AdamW', lr=LR))
    assert per_param(ours.optimizer, model) == per_param(reference.optimizer, model)
    with pytest.raises(TypeError):  # the optimizer's own error, not ours
        build(model, optimizer=dict(type='AdamW', lr=LR, beta3=0.5))


def test_registered_and_built_by_name():
    model = make_net()
    wrapper = build_optim_wrapper(model, dict(
        constructor='FAMEOptimWrapperConstructor', optimizer=FAME_CFG,
        paramwise_cfg=dict(norm_decay_mult=0.)))
    assert isinstance(wrapper.optimizer, FAME)
    assert len(wrapper.optimizer.param_groups) == 2
    assert mmfame.engine.FAMEOptimWrapperConstructor is FAMEOptimWrapperConstructor


def test_log_lists_groups_and_non_default_keys(monkeypatch):
    from mmfame.engine.optimizers import constructor
    logged = []
    monkeypatch.setattr(constructor, 'print_log', lambda msg, logger=None: logged.append(msg))
    model = make_net()
    build(model, dict(custom_keys={'head': dict(lr_mult=0.1, beta3=0.5)}))
    (text,) = logged
    rest = sum(p.requires_grad for p in model.parameters()) - 2
    assert text.splitlines() == [
        'FAME: 2 param groups',
        f'  group 0: {rest} params, lr=0.001, weight_decay=0.05',  # all else is default
        '  group 1: 2 params, lr=0.0001, weight_decay=0.05, lr_mult=0.1, beta3=0.5']


# --- layer-wise learning-rate decay ------------------------------------------------------------

def upstream_groups(model, paramwise_cfg, package, name='LearningRateDecayOptimizerConstructor'):
    pytest.importorskip(package, reason=NO_STACK)
    module = __import__(f'{package}.engine.optimizers', fromlist=[name])
    return per_param(build(model, paramwise_cfg, constructor=getattr(module, name)).optimizer,
                     model)


def lr_wd(settings):
    return {n: (s['lr'], s['weight_decay']) for n, s in settings.items()}


@pytest.mark.parametrize('package', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('paramwise_cfg', [
    dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6),
    dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12),
])
def test_convnext_decay_matches_upstream(package, paramwise_cfg):
    model = make_net()
    expected = lr_wd(upstream_groups(model, paramwise_cfg, package))
    optimizer = build(model, paramwise_cfg).optimizer
    assert lr_wd(per_param(optimizer, model)) == expected
    assert len(set(expected.values())) == len(optimizer.param_groups)


def test_convnext_layer_ids():
    """Independent of upstream: ids 0 (stem), 1 (stage 0), 2, 3 + block // 3, num_layers."""
    model = make_net()
    got = lr_wd(per_param(build(model, dict(decay_rate=0.5, num_layers=6)).optimizer, model))
    scale = {'backbone.downsample_layers.0.1.weight': 0.5**7,
             'backbone.stages.0.0.2.weight': 0.5**6,
             'backbone.downsample_layers.1.1.weight': 0.5**5,
             'backbone.stages.2.2.2.weight': 0.5**4,
             'backbone.stages.2.3.2.weight': 0.5**3,
             'backbone.stages.3.0.2.weight': 0.5**1,
             'neck.0.weight': 1., 'head.weight': 1.}
    for name, s in scale.items():
        assert got[name] == (LR * s, WD), name
    assert got['backbone.stages.2.3.0.bias'] == (LR * 0.5**3, 0.)  # bias: no decay
    assert got['backbone.stages.2.3.1.weight'] == (LR * 0.5**3, 0.)  # 1-D norm weight
    assert got['head.bias'][1] == 0.


def test_vit_decay_matches_mmseg():
    """mmseg's BEiT/MAE layer_wise; upstream's 'no decay' for pos_embed/cls_token compares the
    full name with the bare one and never fires, we give them weight_decay 0 as intended."""
    pytest.importorskip('mmseg', reason=NO_STACK)
    from mmseg.models.backbones import MAE
    model = make_net(MAE(img_size=16, patch_size=4, embed_dims=8, num_layers=3, num_heads=2,
                         mlp_ratio=1, out_indices=(2,), init_cfg=None))
    cfg = dict(decay_rate=0.8, decay_type='layer_wise', num_layers=3)
    expected = lr_wd(upstream_groups(model, cfg, 'mmseg'))
    got = lr_wd(per_param(build(model, cfg).optimizer, model))
    for name in ('backbone.pos_embed', 'backbone.cls_token'):
        assert expected.pop(name) == (LR * 0.8**4, WD)
        assert got.pop(name) == (LR * 0.8**4, 0.)
    assert got == expected
    assert got['backbone.layers.1.attn.qkv.weight'] == (LR * 0.8**2, WD)
    assert got['backbone.patch_embed.projection.weight'] == (LR * 0.8**4, WD)


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
def test_swin_decay(decay_type):
    pytest.importorskip('mmdet', reason=NO_STACK)
    from mmdet.models.backbones import SwinTransformer
    model = make_net(SwinTransformer(embed_dims=4, depths=(1, 2, 1, 1), num_heads=(1, 1, 1, 1),
                                     window_size=2, init_cfg=None))
    got = lr_wd(per_param(build(model, dict(decay_rate=0.5, decay_type=decay_type,
                                            num_layers=5)).optimizer, model))
    ids = {'backbone.patch_embed.projection.weight': 0,
           'backbone.stages.0.blocks.0.attn.w_msa.qkv.weight': 1,
           'backbone.stages.0.downsample.reduction.weight': 1,
           'backbone.stages.1.blocks.0.attn.w_msa.qkv.weight': 2,
           'backbone.stages.1.blocks.1.attn.w_msa.qkv.weight': 3,
           'backbone.stages.1.downsample.reduction.weight': 3,
           'backbone.stages.3.blocks.0.ffn.layers.1.weight': 5,
           'head.weight': 6}
    if decay_type == 'stage_wise':
        ids.update({k: int(k.split('.')[2]) + 1 for k in ids if k.startswith('backbone.stages')})
    for name, lid in ids.items():
        assert got[name] == (LR * 0.5**(6 - lid), WD), name
    assert got['backbone.norm0.weight'] == (LR, 0.)
    train(model, build(model, dict(decay_rate=0.5, num_layers=5)), 2)


def test_decay_composes_with_custom_keys():
    model = make_net()
    got = lr_wd(per_param(build(model, dict(decay_rate=0.5, num_layers=6, custom_keys={
        'head': dict(lr_mult=10.), 'backbone.stages.3': dict(decay_mult=0.)})).optimizer, model))
    assert got['head.weight'] == (LR * 10., WD)
    assert got['backbone.stages.3.0.2.weight'] == (LR * 0.5, 0.)


@pytest.mark.parametrize('paramwise_cfg, match', [
    (dict(decay_rate=0.9), 'needs an int paramwise_cfg.num_layers'),
    (dict(decay_rate=0.9, num_layers=6, decay_type='layer_wise_vit'), 'must be one of'),
    (dict(decay_rate=0.9, num_layers=2), r'backbone.stages.2.3.0.weight has layer id 4 > '
                                         r'num_layers \+ 1'),
])
def test_decay_config_errors(paramwise_cfg, match):
    with pytest.raises(ValueError, match=match):
        build(make_net(), paramwise_cfg)


def test_decay_unsupported_backbone():
    pytest.importorskip('mmseg', reason=NO_STACK)
    from mmseg.models.backbones import MAE
    model = make_net(MAE(img_size=16, patch_size=4, embed_dims=8, num_layers=1, num_heads=2,
                         init_cfg=None))
    with pytest.raises(ValueError, match='stage_wise supports ConvNeXt and Swin'):
        build(model, dict(decay_rate=0.9, decay_type='stage_wise', num_layers=1))
    model.backbone = nn.Linear(1, 1)
    with pytest.raises(ValueError, match='not supported for backbone Linear'):
        build(model, dict(decay_rate=0.9, num_layers=1))
    with pytest.raises(ValueError, match='needs an explicit optimizer lr'):
        build(model, dict(decay_rate=0.9, num_layers=1), optimizer=dict(type='FAME'))


# --- FAME under the upstream constructors ------------------------------------------------------

def beit():
    from mmseg.models.backbones import BEiT
    return BEiT(img_size=16, patch_size=4, embed_dims=8, num_layers=2, num_heads=2, mlp_ratio=1,
                out_indices=(1,), init_cfg=None)


UPSTREAM = {
    'mmengine.Default': (DefaultOptimWrapperConstructor, None,
                         dict(norm_decay_mult=0., custom_keys={'head': dict(lr_mult=0.1)})),
    'mmdet.LearningRateDecay': ('mmdet', None, dict(decay_rate=0.7, num_layers=6)),
    'mmseg.LearningRateDecay': ('mmseg', beit, dict(decay_rate=0.9, num_layers=2)),
    'mmseg.LayerDecay': ('mmseg.LayerDecayOptimizerConstructor', beit,
                         dict(layer_decay_rate=0.9, num_layers=2)),
    'mmseg.ForceDefault': ('mmseg.ForceDefaultOptimWrapperConstructor', None,
                           dict(custom_keys={'head': dict(lr_mult=0.1)}, norm_decay_mult=0.,
                                force_default_settings=True)),
}


@pytest.mark.parametrize('name', UPSTREAM)
def test_fame_steps_under_upstream_constructors(name):
    constructor, backbone, paramwise_cfg = UPSTREAM[name]
    if isinstance(constructor, str):
        package, _, cls = constructor.partition('.')
        pytest.importorskip(package, reason=NO_STACK)
        module = __import__(f'{package}.engine.optimizers', fromlist=['x'])
        constructor = getattr(module, cls or 'LearningRateDecayOptimizerConstructor')
    model = make_net(backbone() if backbone else None)
    wrapper = build(model, paramwise_cfg, constructor=constructor)
    optimizer = wrapper.optimizer
    assert isinstance(optimizer, FAME) and len(optimizer.param_groups) > 1
    if name == 'mmengine.Default':  # one group per parameter
        assert len(optimizer.param_groups) == sum(p.requires_grad for p in model.parameters())
    before = copy.deepcopy(model.state_dict())
    train(model, wrapper, 2)
    moved = [n for n, p in model.named_parameters()
             if p.requires_grad and not torch.equal(p, before[n])]
    assert len(moved) > len(list(model.parameters())) // 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    stepped = [s for s in optimizer.state.values() if s]
    assert stepped and all(int(s['step']) == 2 and 'exp_avg_3' in s for s in stepped)
