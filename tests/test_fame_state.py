"""state_dict, AMP, hooks and copying."""
import copy
import io

import pytest
import torch
from torch import nn

from mmfame import FAME
from mmfame.optim import _triton_fame
from cases import DEVICES, HAS_CUDA, IMPLS, lockstep, make_params, twins, usable


def run(opt, params, steps, seed):
    lockstep([(opt, params)], steps, seed)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', IMPLS)
def test_resume_is_bitwise_identical(device, impl):
    """Save after 10 steps, torch.save/load(weights_only=True), load into a fresh optimizer and
    continue: identical to the uninterrupted run."""
    usable(impl, device)
    params = make_params(device, torch.float32)
    copies = twins(params)
    kw = dict(lr=1e-2, weight_decay=0.1, amsgrad=True, **IMPLS[impl])
    straight = FAME(params, **kw)
    run(straight, params, 10, seed=0)
    first = FAME(copies, **kw)
    run(first, copies, 10, seed=0)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = FAME(copies, **kw)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    run(straight, params, 10, seed=1)
    run(resumed, copies, 10, seed=1)
    for p, q in zip(params, copies):
        assert torch.equal(p, q)
        for key, value in straight.state[p].items():
            assert torch.equal(value.cpu(), resumed.state[q][key].cpu()), key
            assert value.device == resumed.state[q][key].device


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_fp32_state_across_save_and_load(device, dtype):
    params = [p.detach().to(dtype).requires_grad_() for p in make_params(device)]
    opt = FAME(params, lr=1e-3)
    run(opt, params, 3, seed=0)
    saved = copy.deepcopy(opt.state_dict())
    fresh = FAME(params, lr=1e-3)
    fresh.load_state_dict(saved)
    for p in params:
        for key in ('exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq'):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], opt.state[p][key])


@pytest.mark.parametrize('other', [torch.optim.Adam, torch.optim.AdamW])
def test_loading_another_optimizers_state_says_what_to_do(other):
    model = nn.Linear(3, 2)
    adam = other(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    adam.step()
    with pytest.raises(ValueError, match=r"exp_avg_2.*load_from"):
        FAME(model.parameters()).load_state_dict(adam.state_dict())


def test_old_state_dicts_without_later_flags_load_with_defaults():
    params = make_params('cpu', torch.float32)
    opt = FAME(params)
    run(opt, params, 2, seed=0)
    state = opt.state_dict()
    for group in state['param_groups']:
        for key in ('beta3', 'beta4', 'foreach', 'fused', 'decoupled_weight_decay'):
            del group[key]
    fresh = FAME(params, beta3=0.9)
    fresh.load_state_dict(state)
    group = fresh.param_groups[0]
    assert (group['beta3'], group['beta4'], group['decoupled_weight_decay']) == (0.3, 0.7, True)
    run(fresh, params, 1, seed=1)
    assert float(fresh.state[params[0]]['step']) == 3


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason='no CUDA')
@pytest.mark.parametrize('impl', IMPLS)
def test_cpu_state_dict_loads_into_a_cuda_optimizer(impl):
    usable(impl, 'cuda')
    cpu_params = make_params('cpu', torch.float32)
    opt = FAME(cpu_params, foreach=False)
    run(opt, cpu_params, 3, seed=0)
    cuda_params = [p.detach().cuda().requires_grad_() for p in cpu_params]
    cuda_opt = FAME(cuda_params, **IMPLS[impl])
    cuda_opt.load_state_dict(opt.state_dict())
    run(cuda_opt, cuda_params, 2, seed=1)
    run(opt, cpu_params, 2, seed=1)
    for p, q in zip(cpu_params, cuda_params):
        assert torch.allclose(p, q.cpu(), atol=1e-6)


def test_fused_state_dict_loads_into_foreach_with_cpu_step():
    usable('fused', 'cpu')
    params = make_params('cpu', torch.float32)
    fused = FAME(params, fused=True)
    run(fused, params, 2, seed=0)
    foreach = FAME(params, foreach=True)
    foreach.load_state_dict(fused.state_dict())
    run(foreach, params, 1, seed=1)
    assert float(foreach.state[params[0]]['step']) == 3


@pytest.mark.parametrize('device', DEVICES)
def test_found_inf_makes_a_fused_step_change_nothing(device):
    usable('fused', device)
    params = make_params(device, torch.float32)
    opt = FAME(params, fused=True)
    run(opt, params, 2, seed=0)
    before = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()['state'])
    for p in params:
        p.grad = torch.randn_like(p)
    opt.grad_scale = torch.tensor(1024.0, device=device)
    opt.found_inf = torch.tensor(1.0, device=device)
    opt.step()
    del opt.grad_scale, opt.found_inf
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    for i, p in enumerate(params):
        for key, value in opt.state[p].items():
            assert torch.equal(value, state[i][key]), key


def amp_device():
    return 'cuda' if HAS_CUDA else 'cpu'


def grad_scaler(device, **kwargs):
    """torch.amp.GradScaler (torch >= 2.3, also on CPU), else CUDA's own."""
    if hasattr(torch.amp, 'GradScaler'):
        return torch.amp.GradScaler(device, **kwargs)
    if device != 'cuda':
        pytest.skip('a GradScaler on CPU needs torch >= 2.3 (torch.amp.GradScaler)')
    return torch.cuda.amp.GradScaler(**kwargs)


@pytest.mark.cuda
@pytest.mark.parametrize('impl', IMPLS)
def test_grad_scaler_equals_manual_unscale_and_step(impl):
    """GradScaler end to end; the fused path consumes grad_scale/found_inf itself."""
    device = amp_device()
    usable(impl, device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(device)
    twin = copy.deepcopy(model)
    opt = FAME(model.parameters(), lr=1e-2, **IMPLS[impl])
    ref = FAME(twin.parameters(), lr=1e-2, **IMPLS[impl])
    scaler = grad_scaler(device, init_scale=2.0**10)
    x = torch.randn(32, 8, device=device)
    for step in range(4):
        opt.zero_grad()
        ref.zero_grad()
        loss = model(x).pow(2).mean()
        scaler.scale(loss).backward()
        if step == 2:  # an overflow: the step must be skipped
            next(model.parameters()).grad[0, 0] = float('inf')
        scaler.step(opt)
        scaler.update()
        twin(x).pow(2).mean().backward()
        if step != 2:
            ref.step()
    assert opt._step_supports_amp_scaling == (impl == 'fused' or (impl == 'default'
                                                                 and device == 'cuda'))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5)
        assert float(opt.state[p]['step']) == 3


@pytest.mark.cuda
@pytest.mark.parametrize('impl', IMPLS)
def test_unscale_clip_and_step(impl):
    device = amp_device()
    usable(impl, device)
    torch.manual_seed(0)
    model = nn.Linear(8, 4).to(device)
    opt = FAME(model.parameters(), lr=1e-2, **IMPLS[impl])
    scaler = grad_scaler(device, init_scale=2.0**8)
    scaler.scale(model(torch.randn(16, 8, device=device)).pow(2).sum()).backward()
    scaler.unscale_(opt)
    norm = nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    assert norm > 0.1
    before = model.weight.detach().clone()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(before, model.weight)
    assert float(opt.state[model.weight]['step']) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason='autocast fp16 training needs CUDA')
@pytest.mark.parametrize('impl', IMPLS)
def test_autocast_fp16_training_reduces_loss(impl):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1)).cuda()
    opt = FAME(model.parameters(), lr=1e-2, **IMPLS[impl])
    scaler = grad_scaler('cuda')
    x, y = torch.randn(256, 32, device='cuda'), torch.randn(256, 1, device='cuda')
    losses = []
    for _ in range(50):
        opt.zero_grad()
        with torch.autocast('cuda', dtype=torch.float16):
            loss = (model(x) - y).pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_hooks_deepcopy_and_repr():
    params = make_params('cpu', torch.float32)
    opt = FAME(params, beta3=0.5)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append('pre'))
    opt.register_step_post_hook(lambda o, a, k: seen.append('post'))
    opt.register_state_dict_post_hook(lambda o, sd: seen.append('sd') or sd)
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append('load') or sd)
    run(opt, params, 1, seed=0)
    opt.load_state_dict(opt.state_dict())
    assert seen == ['pre', 'post', 'sd', 'load']
    clone = copy.deepcopy(opt)
    assert torch.equal(clone.state[clone.param_groups[0]['params'][0]]['exp_avg'],
                       opt.state[params[0]]['exp_avg'])
    assert 'FAME' in repr(opt) and 'beta3: 0.5' in repr(opt)


def test_state_has_exactly_four_fp32_buffers_per_param():
    params = [p.detach().float().requires_grad_() for p in make_params('cpu')]
    opt = FAME(params)
    run(opt, params, 1, seed=0)
    for p in params:
        buffers = [v for k, v in opt.state[p].items() if k != 'step']
        assert len(buffers) == 4
        assert sum(b.numel() * b.element_size() for b in buffers) == 16 * p.numel()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason='no CUDA')
@pytest.mark.parametrize('impl', ['foreach', 'fused'])
def test_peak_memory_of_a_step_is_bounded(impl):
    params = [torch.randn(1 << 20, device='cuda', requires_grad=True) for _ in range(16)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = FAME(params, weight_decay=0.1, decoupled_weight_decay=False, **IMPLS[impl])
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    opt.step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 2 * sum(p.numel() * 4 for p in params)
    if impl == 'fused':
        assert extra < 0.01 * sum(p.numel() * 4 for p in params)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or _triton_fame.triton is None, reason='needs CUDA and Triton >= 3.0')
def test_fused_indexing_beyond_2_pow_31_elements():
    free, _ = torch.cuda.mem_get_info()
    numel = (1 << 31) + 4096 + 3
    if free < 7 * numel * 4:
        pytest.skip('not enough GPU memory for a 2**31-element parameter')
    p = torch.zeros(numel, device='cuda', requires_grad=True)
    p.grad = torch.ones(numel, device='cuda')
    opt = FAME([p], lr=1e-3, fused=True)
    opt.step()
    torch.cuda.synchronize()
    tail = p.detach()[-5000:]
    assert torch.allclose(tail, torch.full_like(tail, p.detach()[0].item()))
    assert p.detach()[0].item() < 0


@pytest.mark.parametrize('device', DEVICES)
def test_zero_on_one_rank_steps_as_fame(one_rank_group, device):
    """torch's ZeroRedundancyOptimizer over FAME on one rank holds every parameter: its steps
    equal FAME's, bit for bit, on CPU and on CUDA tensors (the fused kernel there)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    models = []
    for zero in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).to(device)
        kwargs = dict(lr=1e-3, weight_decay=0.05)
        opt = (ZeroRedundancyOptimizer(model.parameters(), optimizer_class=FAME, **kwargs)
               if zero else FAME(model.parameters(), **kwargs))
        for i in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(i)).to(p)
            opt.step()
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        assert a.device.type == device and torch.equal(a, b)
