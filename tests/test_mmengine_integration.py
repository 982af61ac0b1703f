"""FAME inside mmengine: registries and scopes, OptimWrapper features, schedulers, resume."""
import io
import subprocess
import sys

import pytest
import torch
from mmengine.optim import (CosineAnnealingLR, CosineAnnealingMomentum, LinearLR, LinearMomentum,
                            OptimWrapper, build_optim_wrapper)
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS, DefaultScope
from torch import nn

import mmfame
from mmfame import FAME, FAMEOptimWrapperConstructor
from mmfame import registry
from mmfame.engine.optimizers import build_fame
from mmfame.optim import _triton_fame

LR = 1e-2
CUSTOM = dict(custom_keys={'head': dict(lr_mult=0.1)})  # two groups, so a pseudo group too


def make_model(seed=0):
    torch.manual_seed(seed)
    return Model()


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.body(x))


def batches(n, seed=1, device='cpu'):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 6, generator=g).to(device) for _ in range(n)]


def loss_fn(model, x):
    return model(x).square().mean() * 100


def make_wrapper(model, paramwise_cfg=None, **kwargs):
    optimizer = dict(type='FAME', lr=LR, weight_decay=0.01, **kwargs.pop('optimizer', {}))
    return build_optim_wrapper(model, dict(optimizer=optimizer, paramwise_cfg=paramwise_cfg,
                                           **kwargs))


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_bitwise(model_a, model_b):
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


# --- registries -------------------------------------------------------------------------------

@pytest.mark.parametrize('scope', ['mmengine', 'mmdet', 'mmseg'])
@pytest.mark.parametrize('constructor', [None, 'FAMEOptimWrapperConstructor',
                                         'mmfame.FAMEOptimWrapperConstructor'])
@pytest.mark.parametrize('name', ['FAME', 'mmfame.FAME'])
def test_builds_by_name_under_default_scope(scope, constructor, name):
    cfg = dict(optimizer=dict(type=name, lr=LR, beta3=0.5))
    if constructor:
        cfg['constructor'] = constructor
    with DefaultScope.overwrite_default_scope(scope):
        assert DefaultScope.get_current_instance().scope_name == scope
        wrapper = build_optim_wrapper(make_model(), cfg)
    assert type(wrapper.optimizer) is FAME
    assert wrapper.optimizer.defaults['beta3'] == 0.5


def test_fresh_interpreter_import_registers():
    """`import mmfame` alone (or custom_imports) makes type='FAME' resolve, under mmdet's scope."""
    code = '''
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.utils import import_modules_from_strings
import_modules_from_strings(['mmfame'])
init_default_scope('mmdet')
w = build_optim_wrapper(torch.nn.Linear(2, 2), dict(
    constructor='FAMEOptimWrapperConstructor', optimizer=dict(type='FAME', lr=1e-3)))
print(type(w.optimizer).__module__, type(w.optimizer).__name__)
'''
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ['mmfame.optim.fame', 'FAME']


def test_root_registration_is_idempotent_and_never_overrides():
    assert registry.register_in_root(registry.OPTIMIZERS, 'FAME', build_fame)
    assert registry.register_in_root(registry.OPTIMIZERS, 'FAME', build_fame)
    assert OPTIMIZERS.get('FAME') is build_fame
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('FAMEOptimWrapperConstructor') is (
        FAMEOptimWrapperConstructor)

    class Impostor(FAME):
        pass

    with pytest.warns(UserWarning, match="type='mmfame.DefaultOptimWrapperConstructor'"):
        assert not registry.register_in_root(registry.OPTIM_WRAPPER_CONSTRUCTORS,
                                             'DefaultOptimWrapperConstructor', Impostor)
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('DefaultOptimWrapperConstructor') is not Impostor


# --- OptimWrapper features --------------------------------------------------------------------

def test_clip_grad_clips_what_fame_sees():
    model, reference = make_model(), make_model()
    wrapper = make_wrapper(model, clip_grad=dict(max_norm=0.1))
    optimizer = FAME(reference.parameters(), lr=LR, weight_decay=0.01)
    for x in batches(3):
        wrapper.backward(loss_fn(model, x))
        wrapper.step()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        assert norm <= 0.1 + 1e-6
        wrapper.zero_grad()

        loss_fn(reference, x).backward()
        assert torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1) > 1  # it did clip
        optimizer.step()
        optimizer.zero_grad()
    assert_bitwise(model, reference)


def test_accumulative_counts_steps_every_n():
    model = make_model()
    wrapper = make_wrapper(model, accumulative_counts=3)
    before = params_of(model)
    for i, x in enumerate(batches(6), 1):
        wrapper.update_params(loss_fn(model, x))
        moved = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert moved == (i % 3 == 0), i
        before = params_of(model)
    assert {int(s['step']) for s in wrapper.optimizer.state.values()} == {2}


@pytest.mark.parametrize('scheduler', ['cosine', 'linear'])
def test_momentum_schedulers_drive_beta1(scheduler):
    model = make_model()
    wrapper = make_wrapper(model, CUSTOM,
                           optimizer=dict(betas=(0.9, 0.99)))
    if scheduler == 'cosine':
        sched = CosineAnnealingMomentum(wrapper, T_max=4, eta_min=0.5, by_epoch=False)
    else:
        sched = LinearMomentum(wrapper, start_factor=1., end_factor=0.6, by_epoch=False, end=4)
    sched.step()
    sched.step()
    beta1 = wrapper.optimizer.param_groups[0]['betas'][0]
    assert 0.5 < beta1 < 0.9
    for group in wrapper.param_groups:  # the pseudo group included
        assert isinstance(group['betas'], tuple) and len(group['betas']) == 2
        assert group['betas'] == (beta1, 0.99)

    # First FAME step from zero state: exp_avg = (1 - beta1) * g with the scheduled beta1.
    x = batches(1)[0]
    wrapper.backward(loss_fn(model, x))
    grads = [p.grad.clone() for p in model.parameters()]
    wrapper.step()
    for p, g in zip(model.parameters(), grads):
        exp_avg = wrapper.optimizer.state[p]['exp_avg']
        torch.testing.assert_close(exp_avg, (1 - beta1) * g)
        assert not torch.allclose(exp_avg, 0.1 * g)
    for x in batches(4, seed=3):  # keeps working past the schedule's end
        wrapper.zero_grad()
        wrapper.update_params(loss_fn(model, x))
        sched.step()
    assert all(isinstance(g['betas'], tuple) for g in wrapper.param_groups)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_lr_schedulers_set_the_lr_fame_uses():
    model, reference = make_model(), make_model()
    wrapper = make_wrapper(model, CUSTOM, constructor='FAMEOptimWrapperConstructor')
    assert len(wrapper.optimizer.param_groups) == 2
    schedulers = [LinearLR(wrapper, start_factor=0.1, by_epoch=False, begin=0, end=3),
                  CosineAnnealingLR(wrapper, T_max=5, eta_min=1e-5, by_epoch=False, begin=3,
                                    end=8)]
    head = set(reference.head.parameters())
    optimizer = FAME([dict(params=[p for p in reference.parameters() if p not in head]),
                      dict(params=list(head))], lr=LR, weight_decay=0.01)
    lrs = []
    for x in batches(8):
        lrs.append([g['lr'] for g in wrapper.optimizer.param_groups])
        wrapper.update_params(loss_fn(model, x))
        for s in schedulers:
            s.step()
        for group, lr in zip(optimizer.param_groups, lrs[-1]):
            group['lr'] = lr
        loss_fn(reference, x).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert_bitwise(model, reference)
    body = [lr[0] for lr in lrs]
    assert body[0] == pytest.approx(0.1 * LR) and body[3] == pytest.approx(LR)
    assert body[:4] == sorted(body[:4]) and body[3:] == sorted(body[3:], reverse=True)
    assert body[-1] < 0.5 * LR
    assert all(lr[1] == pytest.approx(0.1 * lr[0]) for lr in lrs[:4])  # LinearLR scales


def test_paramwise_mults_and_extra_group_keys_are_ignored_by_fame():
    """One group per parameter carrying lr_mult/decay_mult/unknown keys == plain FAME groups."""
    model, reference = make_model(), make_model()
    wrapper = make_wrapper(model, dict(custom_keys={
        'head': dict(lr_mult=0.5, decay_mult=0., group_name='head', lr_scale=3.0, foo='bar')},
        norm_decay_mult=0.))
    assert len(wrapper.optimizer.param_groups) == 6
    assert wrapper.optimizer.param_groups[-1]['foo'] == 'bar'
    body, norm = list(reference.body[0].parameters()), list(reference.body[1].parameters())
    optimizer = FAME([dict(params=body), dict(params=norm, weight_decay=0.),
                      dict(params=list(reference.head.parameters()), lr=LR * 0.5,
                           weight_decay=0.)], lr=LR, weight_decay=0.01)
    reference_wrapper = OptimWrapper(optimizer)
    for x in batches(3):
        wrapper.update_params(loss_fn(model, x))
        reference_wrapper.update_params(loss_fn(reference, x))
    assert_bitwise(model, reference)


@pytest.mark.parametrize('paramwise_cfg', [None, CUSTOM])
def test_state_dict_resume_is_bitwise(paramwise_cfg):
    model = make_model()
    wrapper = make_wrapper(model, paramwise_cfg, optimizer=dict(amsgrad=True))
    data = batches(10)
    for x in data[:5]:
        wrapper.update_params(loss_fn(model, x))
    buffer = io.BytesIO()
    torch.save(dict(model=model.state_dict(), optim=wrapper.state_dict()), buffer)
    for x in data[5:]:
        wrapper.update_params(loss_fn(model, x))

    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)  # plain values only, pseudo group too
    assert ('base_param_settings' in checkpoint['optim']) == (paramwise_cfg is not None)
    resumed = make_model(seed=7)
    resumed.load_state_dict(checkpoint['model'])
    resumed_wrapper = make_wrapper(resumed, paramwise_cfg, optimizer=dict(amsgrad=True))
    resumed_wrapper.load_state_dict(checkpoint['optim'])
    for x in data[5:]:
        resumed_wrapper.update_params(loss_fn(resumed, x))
    assert_bitwise(model, resumed)
    assert all(int(s['step']) == 10 for s in resumed_wrapper.optimizer.state.values())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="mmengine 0.10.7's AmpOptimWrapper refuses CPU")
def test_amp_optim_wrapper_fused_and_default():
    """fp16 autocast + dynamic loss scale: FAME(fused=True) consumes GradScaler's found_inf and
    follows the default (unscale, then step) path, skipped steps included."""
    if _triton_fame.triton is None:
        pytest.skip('Triton >= 3.0 is not installed')
    results = {}
    for fused in (None, True):
        model = make_model().cuda()
        wrapper = make_wrapper(model, CUSTOM, type='AmpOptimWrapper', loss_scale='dynamic',
                               optimizer=dict(fused=fused))
        assert wrapper.optimizer.defaults['fused'] is fused
        for x in batches(12, device='cuda'):
            with wrapper.optim_context(model):
                loss = loss_fn(model, x)  # its fp16 grads overflow at the first loss scales
            wrapper.update_params(loss)
        steps = {int(s['step']) for s in wrapper.optimizer.state.values()}
        results[fused] = (params_of(model), steps, wrapper.loss_scaler.get_scale())
    (default, steps, scale), (fused, fused_steps, fused_scale) = results[None], results[True]
    assert steps == fused_steps and scale == fused_scale
    assert len(steps) == 1 and 0 < max(steps) < 12  # some steps skipped on inf, some taken
    for a, b in zip(default, fused):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
