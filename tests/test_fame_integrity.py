"""Inputs that must never crash FAME, corrupt memory, step a parameter twice or differ silently from
the for-loop reference: loaded state that does not fit, tensor layouts the fast paths cannot walk,
non-finite values, duplicated parameters. Every case runs on every implementation."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from cases import IMPLS, stepped, usable
from mmfame import FAME

# ------------------------------------------------------------------------- loaded state
def saved_state(shape=(3, 4), steps=2, **kwargs):
    w = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    return stepped([w], 'forloop', steps, **kwargs).state_dict()


def tamper(key, value):
    def edit(sd):
        sd['state'][0][key] = value
        return sd
    return edit


def regroup(sd):
    sd['param_groups'] = [dict(sd['param_groups'][0], params=[]), sd['param_groups'][0]]
    return sd


# (edit of a (3, 4) parameter's saved state, regex of the error)
BAD_STATE = {
    'num_classes 3 -> 5': (tamper('exp_avg', torch.zeros(5, 4)), r"'exp_avg' \(shape \(5, 4\)"
                           r".*does not fit parameter 0 of group 0 \(shape \(3, 4\).*load_from"),
    'num_classes 3 -> 2': (tamper('exp_avg_sq', torch.zeros(2, 4)), r"'exp_avg_sq' \(shape \(2, 4\)"),
    'same numel, other shape': (tamper('exp_avg_2', torch.zeros(4, 3)), r"'exp_avg_2' \(shape \(4, 3\)"),
    'integer state': (tamper('exp_avg_3', torch.zeros(3, 4, dtype=torch.int64)), r'torch.int64'),
    'complex state': (tamper('exp_avg', torch.zeros(3, 4, dtype=torch.complex64)), 'complex64'),
    'not a tensor': (tamper('exp_avg', [0.0] * 12), r"'exp_avg' \(list\)"),
    'step -1': (tamper('step', torch.tensor(-1.0)), r'step .* finite number >= 0, got tensor\(-1.'),
    'step nan': (tamper('step', torch.tensor(float('nan'))), r'finite number >= 0'),
    'step str': (tamper('step', '3'), r"finite number >= 0, got '3'"),
    'grouping changed': (regroup, r'2 parameter groups of sizes \[0, 1\], this optimizer 1 of '
                         r'sizes \[1\]: the parameter grouping changed.*merge_groups'),
}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', BAD_STATE)
def test_state_that_does_not_fit_is_refused_and_nothing_changes(case, impl):
    usable(impl)
    edit, match = BAD_STATE[case]
    w = nn.Parameter(torch.randn(3, 4))
    opt = stepped([w], impl)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(edit(saved_state()))
    after = opt.state_dict()
    assert after['param_groups'] == before['param_groups']
    for key, value in before['state'][0].items():
        assert torch.equal(torch.as_tensor(after['state'][0][key]), torch.as_tensor(value)), key


@pytest.mark.parametrize('impl', IMPLS)
def test_loaded_state_takes_the_parameter_layout(impl):
    """State saved from a channels_last conv, loaded for a contiguous one, pairs up element by
    element (the C loop walks raw memory) and steps like the reference."""
    usable(impl)
    torch.manual_seed(0)
    w_cl = nn.Parameter(torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
    sd = stepped([w_cl], 'forloop', steps=2).state_dict()
    assert not sd['state'][0]['exp_avg'].is_contiguous()
    ref = nn.Parameter(w_cl.detach().clone())  # channels_last, as saved
    ref_opt = FAME([ref], lr=1e-2, foreach=False)
    ref_opt.load_state_dict(sd)
    w = nn.Parameter(w_cl.detach().contiguous())
    opt = FAME([w], lr=1e-2, **IMPLS[impl])
    opt.load_state_dict(sd)
    assert opt.state[w]['exp_avg'].is_contiguous()
    g = torch.randn(2, 3, 4, 4)
    ref.grad, w.grad = g.to(memory_format=torch.channels_last), g.clone()
    ref_opt.step()
    opt.step()
    assert (w - ref).abs().max().item() < 1e-6


@pytest.mark.parametrize('impl', IMPLS)
def test_param_made_contiguous_after_its_state_steps_like_the_reference(impl):
    """A conv trained in channels_last, then made contiguous: its state keeps the old layout."""
    usable(impl)
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last))
    ref = nn.Parameter(w.detach().clone())
    if impl == 'fused':  # asked for explicitly, the kernel refuses strided tensors up front
        with pytest.raises(RuntimeError, match='needs contiguous parameters, gradients and state'):
            stepped([w], impl)
        assert not FAME([w], fused=True).state
        return
    opts = [stepped([w], impl, steps=2), stepped([ref], 'forloop', steps=2)]
    w.data = w.data.contiguous()
    ref.data = ref.data.contiguous()
    g = torch.randn(4, 3, 3, 3)
    for p, opt in zip((w, ref), opts):
        p.grad = g.clone()
        opt.step()
    assert (w - ref).abs().max().item() < 1e-6


# ------------------------------------------------------------------------- non-finite values
# (config, state key, value, what the ten elements become): NaN reaches the square root only
# through the state; an overflowed v (inf) gives no step, as in AdamW, also in full FAME, whose
# 3v - 3v2 + v3 would otherwise be inf - inf = NaN.
NON_FINITE = {
    'full FAME, inf - inf under the clamp': (dict(sq_betas=(0.3, 0.7)), 'exp_avg_sq_2',
                                             float('inf'), 'unchanged'),
    'amsgrad, NaN running max': (dict(amsgrad=True), 'max_exp_avg_sq', float('nan'), 'NaN'),
}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('case', NON_FINITE)
def test_non_finite_state_gives_what_the_reference_gives(case, impl):
    usable(impl)
    config, key, value, becomes = NON_FINITE[case]
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(1000))
    ref = nn.Parameter(w.detach().clone())
    opt, ref_opt = stepped([w], impl, **config), stepped([ref], 'forloop', **config)
    before = [p.detach().clone() for p in (w, ref)]
    for o, p in ((opt, w), (ref_opt, ref)):
        o.state[p][key][:10] = value
        if key == 'exp_avg_sq_2':
            o.state[p]['exp_avg_sq'][:10] = value
        p.grad = torch.ones(1000)
        o.step()
    if becomes == 'NaN':
        assert torch.isnan(ref[:10]).all()
    else:
        assert torch.equal(w[:10], before[0][:10]) and torch.equal(ref[:10], before[1][:10])
    assert torch.equal(torch.isnan(w), torch.isnan(ref))
    assert (w[10:] - ref[10:]).abs().max().item() < 1e-6


# ------------------------------------------------------------------------- duplicates
def test_a_parameter_twice_in_one_group_is_refused_and_not_added():
    w = nn.Parameter(torch.zeros(3))
    opt = FAME([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r'more than once .*stepped twice.*bypass_duplicate'):
        opt.add_param_group(dict(params=[w, w]))
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match='more than once'):
        FAME([w, w])


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


@pytest.mark.parametrize('impl', IMPLS)
def test_tied_weight_through_the_merging_constructor(impl):
    usable(impl)
    cfg = dict(type='OptimWrapper', constructor='FAMEOptimWrapperConstructor',
               optimizer=dict(type='FAME', lr=1e-2, weight_decay=0.05, **IMPLS[impl]),
               paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.))
    with pytest.raises(ValueError, match=r'more than one parameter group .*bypass_duplicate=True'):
        build_optim_wrapper(Tied(), copy.deepcopy(cfg))
    cfg['paramwise_cfg']['bypass_duplicate'] = True
    model = Tied()
    wrapper = build_optim_wrapper(model, cfg)
    params = [p for g in wrapper.optimizer.param_groups for p in g['params']]
    assert len(params) == len({id(p) for p in params}) == 1
    model.embed.weight.grad = torch.ones(5, 3)
    wrapper.step()
    assert float(wrapper.optimizer.state[model.embed.weight]['step']) == 1
