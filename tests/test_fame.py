"""FAME against a float64 reference, across implementations and configurations (checklist A-C)."""
import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mmfame import FAME
from mmfame.optim import _triton_fame
from reference import ReferenceFAME

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = _triton_fame.triton is not None
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not HAS_CUDA, reason='no CUDA'))]
IMPLS = {
    'forloop': dict(foreach=False),
    'foreach': dict(foreach=True),
    'fused': dict(fused=True),
    # the default: the compiled CPU kernel for fp32 CPU tensors, the fused kernel on CUDA
    'default': dict(),
}
CONFIGS = {
    'default': dict(),
    'lr': dict(lr=3e-2, eps=1e-5),
    'wd_decoupled': dict(weight_decay=0.1),
    'wd_l2': dict(weight_decay=0.1, decoupled_weight_decay=False),
    'maximize': dict(maximize=True, weight_decay=0.05, decoupled_weight_decay=False),
    'amsgrad': dict(amsgrad=True, weight_decay=0.05),
    'tema_0': dict(beta3=0.0, beta4=0.0),
    'tema_half': dict(beta3=0.5, beta4=0.5),
    'tema_099': dict(beta3=0.99, beta4=0.99, betas=(0.8, 0.99)),
    'full': dict(sq_betas=(0.3, 0.7), weight_decay=0.05),
    # equal decays make TEMA's weights go negative: exercises the clamp at 0
    'full_equal_amsgrad': dict(sq_betas=(0.9, 0.9), amsgrad=True, betas=(0.5, 0.5)),
}


def usable(impl, device):
    if impl == 'fused':
        if not HAS_TRITON:
            pytest.skip('Triton >= 3.0 is not installed')
        if device == 'cpu' and not _triton_fame.INTERPRET:
            pytest.skip('fused on CPU runs only under TRITON_INTERPRET=1')


def needs_cpu_kernel():
    from mmfame.optim import _cpu_kernel
    if _cpu_kernel.load() is None:
        pytest.skip('no C compiler here: the CPU kernel cannot be built (FAME uses foreach)')


def make_params(device, dtype=torch.float64, seed=0):
    """Shapes that cover a scalar, a non-square matrix, a conv kernel and a tensor larger than
    one CPU cache block (so the foreach path slices it)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(), (7, 3), (4, 3, 3, 3), (300_001,)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]


def max_err(a, b):
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', ['forloop', 'foreach', 'fused'])
@pytest.mark.parametrize('config', CONFIGS)
def test_matches_float64_reference(device, impl, config):
    """Params and all four (five with amsgrad) state buffers equal the spec, every step."""
    usable(impl, device)
    kwargs = dict(lr=1e-2, **CONFIGS[config]) if 'lr' not in CONFIGS[config] else CONFIGS[config]
    params = make_params(device)
    ref = ReferenceFAME(params, **kwargs)
    opt = FAME(params, **kwargs, **IMPLS[impl])
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(device) for p in params]
        if step == 3:
            grads[1] = None  # skipped: neither the param nor its state moves
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
        ref.step(grads)
        for i, p in enumerate(params):
            assert max_err(p, ref.p[i]) < 1e-12, (step, i)
            state = opt.state[p]
            assert float(state['step']) == ref.t[i]
            for key, value in ref.state(i).items():
                assert max_err(state[key], value) < 1e-12, (step, i, key)
    expected = {'step', 'exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq'}
    if kwargs.get('amsgrad'):
        expected.add('max_exp_avg_sq')
    if kwargs.get('sq_betas'):
        expected |= {'exp_avg_sq_2', 'exp_avg_sq_3'}
    assert set(opt.state[params[0]]) == expected


@pytest.mark.parametrize('decoupled, torch_cls', [(False, torch.optim.Adam),
                                                  (True, torch.optim.AdamW)])
@pytest.mark.parametrize('impl', IMPLS)
def test_beta3_beta4_zero_is_adam(decoupled, torch_cls, impl):
    """With beta3 = beta4 = 0, TEMA = m1 and FAME is exactly Adam (L2) or AdamW."""
    usable(impl, 'cpu')
    params = make_params('cpu')
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt = FAME(params, lr=1e-2, beta3=0.0, beta4=0.0, weight_decay=0.1,
               decoupled_weight_decay=decoupled, **IMPLS[impl])
    adam = torch_cls(twins, lr=1e-2, weight_decay=0.1, foreach=False)
    g = torch.Generator().manual_seed(2)
    for _ in range(8):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            q.grad = p.grad.clone()
        opt.step()
        adam.step()
    for p, q in zip(params, twins):
        assert max_err(p, q) < 1e-13
        assert max_err(opt.state[p]['exp_avg_sq'], adam.state[q]['exp_avg_sq']) < 1e-15


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', ['foreach', 'fused'])
def test_paths_agree_on_a_model_with_none_grads_and_freeze(device, impl):
    """foreach/fused == for-loop in float64 on a model plus a 0-dim param, over 7 steps with a
    None grad and a layer frozen mid-training; params and states compared every step."""
    usable(impl, device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)).double().to(device)
    model.register_parameter('scale', nn.Parameter(torch.tensor(1.5, dtype=torch.float64,
                                                                device=device)))
    twin = copy.deepcopy(model)
    opts = [FAME(m.parameters(), lr=1e-2, weight_decay=0.01, **kw)
            for m, kw in ((model, IMPLS[impl]), (twin, IMPLS['forloop']))]
    x = torch.randn(8, 5, dtype=torch.float64, device=device)
    for step in range(7):
        for m, opt in zip((model, twin), opts):
            opt.zero_grad()
            (m(x).pow(2).mean() * m.scale).backward()
            if step == 2:
                m[0].bias.grad = None
            if step >= 4:  # freeze the first layer
                m[0].weight.grad = None
            opt.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert max_err(p, q) < 1e-13
            for key in opts[1].state[q]:
                assert max_err(opts[0].state[p][key], opts[1].state[q][key]) < 1e-13
    assert float(opts[0].state[model[0].weight]['step']) == 4


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_fused_matches_forloop_in_low_precision(device, dtype):
    """Low-precision params keep fp32 state on every path; paths agree to one rounding of the
    param dtype (each path computes in fp32 and rounds the param once per step)."""
    tol = 4e-7 if dtype == torch.float32 else torch.finfo(dtype).eps
    usable('fused', device)
    torch.manual_seed(0)
    params = [torch.randn(s, device=device).to(dtype).requires_grad_()
              for s in [(), (33, 7), (5000,)]]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fused = FAME(params, lr=1e-3, weight_decay=0.05, fused=True)
    loop = FAME(twins, lr=1e-3, weight_decay=0.05, foreach=False)
    for _ in range(5):
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        fused.step()
        loop.step()
    for p, q in zip(params, twins):
        assert fused.state[p]['exp_avg'].dtype == torch.float32
        assert p.dtype == dtype
        assert max_err(p, q) <= tol * max(1.0, q.abs().max().item())
        for key in ('exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq'):
            assert max_err(fused.state[p][key], loop.state[q][key]) < 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_complex_params_behave_like_their_real_view(impl):
    usable(impl, 'cpu')
    torch.manual_seed(0)
    z = torch.randn(6, 4, dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z = FAME([z], lr=1e-2, weight_decay=0.1, **IMPLS[impl])
    opt_r = FAME([r], lr=1e-2, weight_decay=0.1, **IMPLS[impl])
    for _ in range(4):
        gz = torch.randn(6, 4, dtype=torch.complex128)
        z.grad, r.grad = gz, torch.view_as_real(gz).clone()
        opt_z.step()
        opt_r.step()
    assert max_err(torch.view_as_real(z), r) < 1e-14
    assert opt_z.state[z]['exp_avg_2'].is_complex()


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('contiguous', [True, False])
@pytest.mark.parametrize('maximize', [False, True])
def test_least_squares_loss_moves_the_right_way(impl, contiguous, maximize):
    usable(impl, 'cpu')
    if impl == 'fused' and not contiguous:
        pytest.skip('fused requires contiguous tensors (checked in test_errors)')
    torch.manual_seed(0)
    a, b = torch.randn(32, 10), torch.randn(32, 4)
    w = torch.randn(4, 10) if contiguous else torch.randn(10, 4).t()
    w.requires_grad_()
    opt = FAME([w], lr=5e-2, maximize=maximize, **IMPLS[impl])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (a @ w.t() - b).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    assert (losses[-1] > 2 * losses[0]) if maximize else (losses[-1] < 0.5 * losses[0])


def test_rosenbrock_approaches_its_minimum():
    xy = torch.tensor([1.5, 1.5], dtype=torch.float64, requires_grad=True)
    opt = FAME([xy], lr=1e-2)
    for _ in range(5000):
        opt.zero_grad()
        x, y = xy
        ((1 - x)**2 + 100 * (y - x**2)**2).backward()
        opt.step()
    assert torch.allclose(xy.detach(), torch.ones(2, dtype=torch.float64), atol=3e-2)


@pytest.mark.parametrize('impl', IMPLS)
def test_groups_with_different_lr_and_a_tiny_lr_group_is_bitwise_frozen(impl):
    usable(impl, 'cpu')
    torch.manual_seed(0)
    fast, slow, frozen = (torch.randn(5, 5, requires_grad=True) for _ in range(3))
    start = [t.detach().clone() for t in (fast, slow, frozen)]
    opt = FAME([{'params': [fast], 'lr': 1e-1}, {'params': [slow], 'lr': 1e-3},
                {'params': [frozen], 'lr': 1e-28}], **IMPLS[impl])
    for _ in range(3):
        for t in (fast, slow, frozen):
            t.grad = torch.ones_like(t)
        opt.step()
    moved = [(t - s).abs().max().item() for t, s in zip((fast, slow), start)]
    assert moved[0] > 50 * moved[1] > 0
    assert torch.equal(frozen, start[2])


@pytest.mark.parametrize('impl', IMPLS)
def test_tensor_lr_matches_float_lr(impl):
    usable(impl, 'cpu')
    params = make_params('cpu', torch.float32)
    twins = [p.detach().clone().requires_grad_() for p in params]
    opt_t = FAME(params, lr=torch.tensor(1e-2), **IMPLS[impl])
    opt_f = FAME(twins, lr=1e-2, **IMPLS[impl])
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt_t.step()
        opt_f.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


@pytest.mark.parametrize('impl', IMPLS)
def test_zero_grads_leave_params_bitwise_unchanged(impl):
    usable(impl, 'cpu')
    params = make_params('cpu', torch.float32)
    start = [p.detach().clone() for p in params]
    opt = FAME(params, **IMPLS[impl])
    for _ in range(3):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(p, s) for p, s in zip(params, start))


@pytest.mark.parametrize('impl', IMPLS)
def test_step_returns_closure_loss(impl):
    usable(impl, 'cpu')
    w = torch.ones(3, requires_grad=True)
    opt = FAME([w], **IMPLS[impl])

    def closure():
        opt.zero_grad()
        loss = (w * 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 6.0


def test_default_path_on_cpu_is_the_compiled_kernel_for_fp32_else_foreach():
    from mmfame.optim import _cpu_kernel
    from mmfame.optim.fame import _default_impl, _multi_tensor_fame
    needs_cpu_kernel()
    w32 = [torch.ones(3), torch.ones(5, 2)]
    assert _default_impl(w32, w32, [w32]) is _cpu_kernel.cpu_kernel_fame
    w64 = [t.double() for t in w32]
    assert _default_impl(w64, w64, [w64]) is _multi_tensor_fame
    strided = [torch.ones(4, 6).t()]
    assert _default_impl(strided, strided, [strided]) is _multi_tensor_fame
    # the C loop walks raw memory: state of another layout or shape is not for it
    conv = [torch.ones(2, 3, 4, 4)]
    channels_last = [conv[0].to(memory_format=torch.channels_last)]
    assert _default_impl(conv, conv, [conv, channels_last]) is _multi_tensor_fame
    assert _default_impl(conv, conv, [[torch.ones(2, 3, 16)]]) is _multi_tensor_fame


@pytest.mark.parametrize('config', CONFIGS)
def test_cpu_kernel_matches_float64_reference_in_fp32(config):
    """The compiled single-pass CPU kernel (the CPU default for fp32) against the spec: params
    and every state buffer, each step, to fp32 rounding; the large tensor is split across
    threads."""
    needs_cpu_kernel()
    kwargs = dict(lr=1e-2, **CONFIGS[config]) if 'lr' not in CONFIGS[config] else CONFIGS[config]
    params = make_params('cpu', torch.float32)
    ref = ReferenceFAME(params, **kwargs)
    opt = FAME(params, **kwargs)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        if step == 3:
            grads[1] = None
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
        ref.step(grads)
        for i, p in enumerate(params):
            assert max_err(p, ref.p[i]) < 2e-5, (step, i)
            for key, value in ref.state(i).items():
                assert max_err(opt.state[p][key], value) < 2e-5 * max(1, value.abs().max()), key


def test_cpu_kernel_work_split_covers_every_element_once():
    from mmfame.optim._cpu_kernel import _split
    numels = [5, 0, 17, 1, 40]
    for workers in (1, 2, 3, 7):
        parts = _split(numels, workers)
        assert len(parts) <= workers
        seen = [[0] * n for n in numels]
        for part in parts:
            for t, begin, end in part:
                for i in range(begin, end):
                    seen[t][i] += 1
        assert all(x == 1 for row in seen for x in row)


def test_construction_errors():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError):
        FAME(w)
    with pytest.raises(ValueError, match='more than one'):
        FAME([{'params': [w]}, {'params': [w]}])
    with pytest.raises(RuntimeError, match='cannot both be True'):
        FAME([w], foreach=True, fused=True)


@pytest.mark.parametrize('impl', IMPLS)
def test_sparse_gradients_are_refused_by_name(impl):
    usable(impl, 'cpu')
    emb = nn.Embedding(10, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match='FAME does not support sparse'):
        FAME(emb.parameters(), **IMPLS[impl]).step()


@pytest.mark.skipif(not HAS_TRITON, reason='Triton >= 3.0 is not installed')
def test_fused_on_cpu_without_interpreter_says_fused_is_for_cuda():
    code = ('import torch; from mmfame import FAME\n'
            'w = torch.zeros(3, requires_grad=True); w.grad = torch.ones(3)\n'
            'FAME([w], fused=True).step()\n')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['CUDA_VISIBLE_DEVICES'] = ''
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert 'runs a Triton kernel on CUDA tensors' in out.stderr


def test_fused_refuses_strided_tensors():
    usable('fused', 'cpu')
    w = torch.randn(6, 4).t().contiguous().t().requires_grad_()  # non-contiguous view
    w.grad = torch.ones_like(w)
    with pytest.raises(RuntimeError, match='contiguous'):
        FAME([w], fused=True).step()


def test_groups_with_equal_hyper_parameters_share_one_call(monkeypatch):
    """mmengine's paramwise_cfg makes one group per param: the fast path must batch them."""
    from mmfame.optim import fame as fame_module
    calls = []
    real = fame_module._multi_tensor_fame
    monkeypatch.setattr(fame_module, '_multi_tensor_fame',
                        lambda params, *a, **k: (calls.append(len(params)),
                                                 real(params, *a, **k)))
    params = [torch.zeros(3, requires_grad=True) for _ in range(6)]
    for p in params:
        p.grad = torch.ones(3)
    groups = [{'params': [p], 'lr_mult': 1.0, 'decay_mult': 1.0} for p in params[:4]]
    groups += [{'params': params[4:], 'lr': 5e-4}]
    FAME(groups, lr=1e-3, foreach=True).step()
    assert sorted(calls) == [2, 4]


def test_step_size_math_matches_adam_bias_correction():
    """One step from zero state moves each weight by lr * TEMA-factor: a closed form check."""
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    w.grad = torch.full((4,), 2.0, dtype=torch.float64)
    FAME([w], lr=0.1, betas=(0.9, 0.999), beta3=0.3, beta4=0.7, eps=0.0).step()
    m1 = 0.1 * 2.0
    m2 = 0.7 * m1
    m3 = 0.3 * m2
    tema = 3 * m1 - 3 * m2 + m3
    v = 0.001 * 4.0
    expected = -0.1 / 0.1 * tema / (math.sqrt(v) / math.sqrt(0.001))
    assert torch.allclose(w, torch.full((4,), expected, dtype=torch.float64), rtol=1e-14)


@pytest.mark.skipif(not HAS_CUDA or not HAS_TRITON, reason='needs CUDA and Triton >= 3.0')
def test_default_path_on_cuda_is_fused_and_matches_foreach(monkeypatch):
    params = make_params('cuda', torch.float32)
    twins = [p.detach().clone().requires_grad_() for p in params]
    default, foreach = FAME(params, lr=1e-2), FAME(twins, lr=1e-2, foreach=True)
    assert default._step_supports_amp_scaling  # GradScaler leaves unscaling to the kernel
    run_steps = [(default, params), (foreach, twins)]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for opt, ps in run_steps:
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    assert default.state[params[0]]['step'].is_cuda  # the fused path keeps step on the device
    for p, q in zip(params, twins):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.skipif(not HAS_CUDA or not HAS_TRITON, reason='needs CUDA and Triton >= 3.0')
def test_default_falls_back_to_foreach_for_a_strided_grad_but_fused_true_refuses():
    w = torch.randn(6, 4, device='cuda', requires_grad=True)
    w.grad = torch.randn(4, 6, device='cuda').t()  # contiguous param, strided grad
    opt = FAME([w])
    opt.step()
    opt.step()
    assert not opt.state[w]['step'].is_cuda and float(opt.state[w]['step']) == 2
    with pytest.raises(RuntimeError, match='contiguous'):
        FAME([w], fused=True).step()


@pytest.mark.parametrize('impl', IMPLS)
def test_full_fame_clamps_a_negative_second_moment_tema(impl):
    """A burst then silence drives 3*v - 3*v2 + v3 below zero; every path clamps it at 0
    (before the square root) exactly like the reference."""
    usable(impl, 'cpu')
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    kwargs = dict(lr=1e-3, betas=(0.5, 0.5), sq_betas=(0.9, 0.9), eps=1e-3)
    ref = ReferenceFAME([w], **kwargs)
    opt = FAME([w], **kwargs, **IMPLS[impl])
    saw_negative = False
    for step in range(8):
        g = torch.full((3,), 10.0 if step == 0 else 1e-3, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        ref.step([g])
        raw = 3 * ref.v[0] - 3 * ref.v2[0] + ref.v3[0]
        saw_negative |= bool((raw < 0).any())
        assert max_err(w, ref.p[0]) < 1e-12
        assert max_err(opt.state[w]['exp_avg_sq_3'], ref.v3[0]) < 1e-15
    assert saw_negative


def test_full_fame_is_off_by_default_and_validated():
    w = torch.zeros(2, requires_grad=True)
    assert FAME([w]).defaults['sq_betas'] is None
    with pytest.raises(ValueError, match='sq_betas'):
        FAME([w], sq_betas=(0.5,))
    with pytest.raises(ValueError, match=r'sq_betas\[1\]'):
        FAME([w], sq_betas=(0.5, 1.0))
    opt = FAME([{'params': [w], 'sq_betas': [0.3, 0.7]}])
    assert opt.param_groups[0]['sq_betas'] == (0.3, 0.7)


def test_fused_tables_are_built_once_per_batch_of_equal_size(monkeypatch):
    """Per-layer lr groups of equal size (layer decay) keep their own device tables: one build
    per batch, not one per batch and step."""
    usable('fused', 'cuda' if HAS_CUDA else 'cpu')
    device = 'cuda' if HAS_CUDA else 'cpu'
    builds = []

    class CountingPlan(_triton_fame._Plan):
        def __init__(self, lists):
            builds.append(len(lists[0]))
            super().__init__(lists)

    monkeypatch.setattr(_triton_fame, '_Plan', CountingPlan)
    params = [torch.randn(8, device=device, requires_grad=True) for _ in range(4)]
    opt = FAME([dict(params=params[:2], lr=1e-2), dict(params=params[2:], lr=1e-3)], fused=True)
    for p in params:  # the same grad tensors every step, as the caching allocator gives them
        p.grad = torch.ones_like(p)
    for _ in range(3):
        opt.step()
    assert builds == [2, 2]
