"""FAME against a float64 reference, across implementations and configurations."""
import copy
import inspect
import math

import pytest
import torch
from torch import nn

from cases import (CONFIGS, DEVICES, HAS_CUDA, HAS_TRITON, IMPLS, assert_same, lockstep,
                   make_params, max_err, needs_cpu_kernel, settings, twins, usable)
from e2e import run_outside_triton_interpreter
from mmfame import FAME
from mmfame.optim import _cpu_kernel, _triton_fame
from mmfame.optim import fame as fame_module
from reference import ReferenceFAME

# implementation -> (param dtype, tolerance against the float64 reference): the default runs
# fp32 (the compiled C loop on CPU, the fused kernel on CUDA), the others float64.
PRECISION = {'forloop': (torch.float64, 1e-12), 'foreach': (torch.float64, 1e-12),
             'fused': (torch.float64, 1e-12), 'default': (torch.float32, 2e-5)}


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('config', CONFIGS)
def test_matches_float64_reference(device, impl, config):
    """Params, step and every state buffer equal the spec after every step, a None grad
    included; in fp32 the large tensor is split across the C loop's threads."""
    usable(impl, device)
    if impl == 'default' and device == 'cpu':
        needs_cpu_kernel()
    dtype, tol = PRECISION[impl]
    params = make_params(device, dtype)
    ref = ReferenceFAME(params, **settings(config))
    opt = FAME(params, **settings(config), **IMPLS[impl])

    def compare(step, grads):
        ref.step(grads)
        for i, p in enumerate(params):
            assert max_err(p, ref.p[i]) < tol, (step, i)
            assert float(opt.state[p]['step']) == ref.t[i]
            for key, value in ref.state(i).items():
                scale = max(1.0, value.abs().max().item()) if dtype == torch.float32 else 1.0
                assert max_err(opt.state[p][key], value) < tol * scale, (step, i, key)

    lockstep([(opt, params)], steps=6, seed=1, skip=lambda step: [1] * (step == 3), each=compare)
    expected = {'step', 'exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq'}
    if CONFIGS[config].get('amsgrad'):
        expected.add('max_exp_avg_sq')
    if CONFIGS[config].get('sq_betas'):
        expected |= {'exp_avg_sq_2', 'exp_avg_sq_3'}
    assert set(opt.state[params[0]]) == expected


@pytest.mark.parametrize('decoupled, torch_cls', [(False, torch.optim.Adam),
                                                  (True, torch.optim.AdamW)])
@pytest.mark.parametrize('impl', IMPLS)
def test_beta3_beta4_zero_is_adam(decoupled, torch_cls, impl):
    """With beta3 = beta4 = 0, TEMA = m1 and FAME is exactly Adam (L2) or AdamW."""
    usable(impl, 'cpu')
    params = make_params('cpu')
    copies = twins(params)
    opt = FAME(params, lr=1e-2, beta3=0.0, beta4=0.0, weight_decay=0.1,
               decoupled_weight_decay=decoupled, **IMPLS[impl])
    adam = torch_cls(copies, lr=1e-2, weight_decay=0.1, foreach=False)
    lockstep([(opt, params), (adam, copies)], steps=8, seed=2)
    for p, q in zip(params, copies):
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
    copies = twins(params)
    fused = FAME(params, lr=1e-3, weight_decay=0.05, fused=True)
    loop = FAME(copies, lr=1e-3, weight_decay=0.05, foreach=False)
    lockstep([(fused, params), (loop, copies)], steps=5)
    for p, q in zip(params, copies):
        assert fused.state[p]['exp_avg'].dtype == torch.float32
        assert p.dtype == dtype
    assert_same((fused, params), (loop, copies), tol=tol, state_tol=1e-5)


@pytest.mark.parametrize('dtype', [torch.complex128, torch.complex64])
@pytest.mark.parametrize('impl', IMPLS)
def test_complex_params_behave_like_their_real_view(impl, dtype):
    """complex64 on the default CPU path is the C loop's complex path (its real view)."""
    usable(impl, 'cpu')
    torch.manual_seed(0)
    z = torch.randn(6, 4, dtype=dtype, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z = FAME([z], lr=1e-2, weight_decay=0.1, **IMPLS[impl])
    opt_r = FAME([r], lr=1e-2, weight_decay=0.1, **IMPLS[impl])
    for _ in range(4):
        gz = torch.randn(6, 4, dtype=dtype)
        z.grad, r.grad = gz, torch.view_as_real(gz).clone()
        opt_z.step()
        opt_r.step()
    assert max_err(torch.view_as_real(z), r) < (1e-14 if dtype == torch.complex128 else 1e-7)
    assert opt_z.state[z]['exp_avg_2'].is_complex()
    if impl == 'default' and dtype == torch.complex64 and _cpu_kernel.load():
        assert fame_module._choose_impl([z], [z.grad], [[z]] * 4, None, None)[0] is (
            _cpu_kernel.cpu_kernel_fame)


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
    copies = twins(params)
    opt_t = FAME(params, lr=torch.tensor(1e-2), **IMPLS[impl])
    opt_f = FAME(copies, lr=1e-2, **IMPLS[impl])
    lockstep([(opt_t, params), (opt_f, copies)], steps=3)
    assert_same((opt_t, params), (opt_f, copies))


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


# (params, grads, states, foreach, fused) -> the implementation the dispatcher picks on CPU
W32 = [torch.ones(3), torch.ones(5, 2)]
CONV = [torch.ones(2, 3, 4, 4)]
CPU_CHOICES = {
    'fp32: the C loop': ((W32, W32, [W32], None, None), 'cpu_kernel_fame'),
    'fp32, fused=False: the C loop': ((W32, W32, [W32], None, False), 'cpu_kernel_fame'),
    'fp32, foreach=True': ((W32, W32, [W32], True, None), '_multi_tensor_fame'),
    'fp32, foreach=False': ((W32, W32, [W32], False, None), '_single_tensor_fame'),
    'fp64: foreach': (([t.double() for t in W32],) * 2 + ([[t.double() for t in W32]], None,
                                                          None), '_multi_tensor_fame'),
    'strided: foreach': (([torch.ones(4, 6).t()],) * 2 + ([[torch.ones(4, 6).t()]], None, None),
                         '_multi_tensor_fame'),
    # the C loop walks raw memory: state of another layout or shape is not for it
    'channels_last state': ((CONV, CONV, [CONV, [CONV[0].to(memory_format=torch.channels_last)]],
                             None, None), '_multi_tensor_fame'),
    'state of another shape': ((CONV, CONV, [[torch.ones(2, 3, 16)]], None, None),
                               '_multi_tensor_fame'),
}


@pytest.mark.parametrize('case', CPU_CHOICES)
def test_dispatcher_choice_on_cpu(case):
    from mmfame.optim.fame import _choose_impl
    args, expected = CPU_CHOICES[case]
    if expected == 'cpu_kernel_fame':
        needs_cpu_kernel()
    impl, fused = _choose_impl(*args)
    assert (impl.__name__, fused) == (expected, False)


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


def test_cpu_blocks_cover_every_element_once_in_cache_sized_batches():
    """The CPU foreach chain's slices: each element of each list once, in the same position of
    every list, batches of about CPU_BLOCK_NUMEL elements, a scalar per slice."""
    from mmfame.optim import fame
    block = fame.CPU_BLOCK_NUMEL
    shapes = [p.shape for p in make_params('cpu')]
    first = [torch.arange(float(torch.Size(s).numel())).view(s) for s in shapes]
    first.append(torch.arange(6.).view(2, 3).t())  # strided: stays whole
    lists = [first, None, [t + 10 for t in first]]
    scalars = [[float(i) for i in range(len(first))]]
    seen = [torch.zeros(t.numel()) for t in first]
    for batch in fame._cpu_blocks(lists, scalars):
        assert batch[1] is None
        assert sum(t.numel() for t in batch[0]) < 2 * block
        for a, b, scalar in zip(batch[0], batch[2], batch[3]):
            i = int(scalar)
            assert torch.equal(b, a + 10)  # pieces pair up across the lists
            assert a.numel() <= block or a.shape == first[i].shape
            index = a.reshape(-1).long()
            seen[i].index_add_(0, index, torch.ones(len(index)))
    assert all(torch.equal(s, torch.ones_like(s)) for s in seen)
    assert max(t.numel() for t in first) > 4 * block  # cut into several slices


def test_construction_errors():
    w = torch.zeros(2, requires_grad=True)
    with pytest.raises(TypeError):
        FAME(w)
    with pytest.raises(ValueError, match='more than one'):
        FAME([{'params': [w]}, {'params': [w]}])
    with pytest.raises(RuntimeError, match='cannot be `True` together'):
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
    """torch's wording first (its generic optimizer tests match it), then FAME's hint; raised
    when the optimizer is built, before any state exists."""
    code = ('import torch; from mmfame import FAME\n'
            'w = torch.zeros(3, requires_grad=True); w.grad = torch.ones(3)\n'
            'FAME([w], fused=True)\n')
    out = run_outside_triton_interpreter(code)
    assert out.returncode != 0
    message = out.stderr.strip().splitlines()[-1]
    assert message.startswith("RuntimeError: `fused=True` requires all the params to be floating "
                              "point Tensors of supported devices: ['cuda'].")
    assert 'TRITON_INTERPRET=1' in message


@pytest.mark.parametrize('strided', ['param', 'grad'])
def test_a_failed_fused_check_creates_no_state(strided):
    """The dispatcher decides before state is made: a refused fused step leaves the optimizer
    as it was (torch's Adam leaves its state empty too)."""
    usable('fused', 'cpu')
    w = (torch.randn(4, 6).t() if strided == 'param' else torch.randn(6, 4)).requires_grad_()
    w.grad = torch.ones(4, 6).t() if strided == 'grad' else torch.ones_like(w)
    opt = FAME([w], fused=True)
    with pytest.raises(RuntimeError, match='contiguous'):
        opt.step()
    assert len(opt.state) == 0


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


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or not HAS_TRITON, reason='needs CUDA and Triton >= 3.0')
def test_default_path_on_cuda_is_fused_and_matches_foreach(monkeypatch):
    params = make_params('cuda', torch.float32)
    copies = twins(params)
    default, foreach = FAME(params, lr=1e-2), FAME(copies, lr=1e-2, foreach=True)
    lockstep([(default, params), (foreach, copies)], steps=3)
    assert default._step_supports_amp_scaling  # GradScaler leaves unscaling to the kernel
    assert default.state[params[0]]['step'].is_cuda  # the fused path keeps step on the device
    for p, q in zip(params, copies):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.cuda
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
    """A ViT-B/16 with layer decay: about 25 groups of equal size with distinct lr. Each batch
    keeps its own device tables: one build per batch, not one per batch and step."""
    usable('fused', 'cuda' if HAS_CUDA else 'cpu')
    device = 'cuda' if HAS_CUDA else 'cpu'
    builds = []

    class CountingPlan(_triton_fame._Plan):
        def __init__(self, lists, launch):
            builds.append(len(lists[0]))
            super().__init__(lists, launch)

    monkeypatch.setattr(_triton_fame, '_Plan', CountingPlan)
    layers = [[torch.randn(8, device=device, requires_grad=True) for _ in range(4)]
              for _ in range(25)]
    opt = FAME([dict(params=ps, lr=1e-3 * 0.65**i) for i, ps in enumerate(layers)], fused=True)
    for p in (p for ps in layers for p in ps):  # the same grads every step, as the allocator
        p.grad = torch.ones_like(p)             # gives them
    for _ in range(3):
        opt.step()
    assert builds == [4] * 25
    assert float(opt.state[layers[-1][0]]['step']) == 3


def test_fused_reads_a_tensor_lr_on_the_device(monkeypatch):
    """A Tensor lr on the params' device is copied into the kernel's arguments on the device:
    no .item() or float() (on CUDA a host read that waits for the GPU), batched by identity."""
    usable('fused', 'cuda' if HAS_CUDA else 'cpu')
    device = 'cuda' if HAS_CUDA else 'cpu'
    params = make_params(device, torch.float32)
    copies = twins(params)
    opt_t = FAME(params, lr=torch.tensor(1e-2, device=device), fused=True)
    opt_f = FAME(copies, lr=1e-2, fused=True)
    reads = []
    monkeypatch.setattr(torch.Tensor, 'item', lambda t: reads.append('item'))
    monkeypatch.setattr(torch.Tensor, '__float__', lambda t: reads.append('float'))
    lockstep([(opt_t, params)], steps=3)
    monkeypatch.undo()
    assert reads == []
    lockstep([(opt_f, copies)], steps=3)
    assert_same((opt_t, params), (opt_f, copies))


def test_adam_positional_call_means_what_it_means_for_adam():
    """torch's positional order for Adam's arguments, FAME's own keyword-only: an Adam-style
    call sets eps and weight_decay, never beta3/beta4."""
    w = torch.zeros(2, requires_grad=True)
    group = FAME([w], 1e-3, (0.8, 0.99), 1e-6, 0.01, True).param_groups[0]
    adam = torch.optim.Adam([w], 1e-3, (0.8, 0.99), 1e-6, 0.01, True).param_groups[0]
    for key in ('lr', 'betas', 'eps', 'weight_decay', 'amsgrad'):
        assert group[key] == adam[key], key
    assert (group['beta3'], group['beta4']) == (0.3, 0.7)
    with pytest.raises(TypeError, match='positional'):
        FAME([w], 1e-3, (0.9, 0.999), 1e-8, 0.0, False, 0.3)


def test_every_setting_has_one_default_and_is_documented():
    """The signature is the table: group defaults, __setstate__ and the argument check read it,
    and the docstring names every argument and every state key."""
    import inspect

    from mmfame.optim._core import TENSOR_KEYS
    from mmfame.optim.fame import DEFAULTS
    names = [n for n in inspect.signature(FAME).parameters if n != 'params']
    assert list(DEFAULTS) == names
    w = torch.zeros(2, requires_grad=True)
    opt = FAME([w])
    assert {k: opt.defaults[k] for k in names} == DEFAULTS
    opt.__setstate__({'state': {}, 'param_groups': [{'params': [w]}]})
    assert {k: opt.param_groups[0][k] for k in names} == DEFAULTS
    for name in [*names, 'step', *TENSOR_KEYS]:
        assert f'{name} (' in FAME.__doc__ or f'``{name}``' in FAME.__doc__, name


def test_functional_fame_picks_what_the_class_picks():
    """One dispatcher: on fp32 CPU tensors both take the C loop and agree bitwise."""
    from mmfame.optim.fame import fame
    needs_cpu_kernel()
    params = make_params('cpu', torch.float32)
    copies = twins(params)
    opt = FAME(copies, lr=1e-2, weight_decay=0.1)
    state = [[torch.zeros_like(p) for p in params] for _ in range(4)]
    steps = [torch.tensor(0.0) for _ in params]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in params]
        for q, grad in zip(copies, grads):
            q.grad = grad.clone()
        opt.step()
        with torch.no_grad():
            fame(params, grads, *state, [], [], [], steps, amsgrad=False, beta1=0.9, beta2=0.999,
                 beta3=0.3, beta4=0.7, lr=1e-2, weight_decay=0.1, eps=1e-8,
                 decoupled_weight_decay=True, maximize=False)
    for p, q in zip(params, copies):
        assert torch.equal(p, q)


def test_a_subclass_takes_its_own_keyword_and_shows_its_own_signature():
    """FAME subclasses like any torch optimizer: no keyword check of FAME's own in the way."""
    class Clipped(FAME):
        def __init__(self, params, max_update=1.0, **kwargs):
            super().__init__(params, **kwargs)
            self.max_update = max_update

    opt = Clipped([nn.Parameter(torch.zeros(2))], max_update=0.5, lr=1e-2)
    assert opt.max_update == 0.5 and opt.defaults['lr'] == 1e-2
    assert list(inspect.signature(Clipped).parameters) == ['params', 'max_update', 'kwargs']
    assert list(inspect.signature(FAME).parameters)[:3] == ['params', 'lr', 'betas']
    with pytest.raises(TypeError, match="unexpected keyword argument 'momentum'"):
        Clipped([nn.Parameter(torch.zeros(2))], momentum=0.9)


# id: (implementation, whether the second layer is bf16, how it is compiled, settings). While
# dynamo traces, torch groups every tensor under one (None, None) key, so the foreach chain gets
# mixed dtypes and no device in its key; the step count is a tensor (reading it would break the
# graph); the default path takes foreach (the C loop's ctypes call cannot be traced).
COMPILED = {
    'default, fp32 + bf16, step': ('default', True, 'step', {}),
    'default, fp32, function': ('default', False, 'function', {}),
    'foreach, fp32 + bf16, function': ('foreach', True, 'function', {}),
    'for-loop, fp32, step': ('forloop', False, 'step', {}),
    'for-loop, fp32 + bf16, function': ('forloop', True, 'function', {}),
    'default, full FAME + amsgrad + maximize': ('default', False, 'step',
                                                dict(sq_betas=(0.5, 0.6), amsgrad=True,
                                                     maximize=True)),
    'foreach, L2 decay, tensor lr': ('foreach', False, 'step',
                                     dict(decoupled_weight_decay=False, lr=torch.tensor(1e-2))),
    'for-loop, tensor lr': ('forloop', True, 'step', dict(lr=torch.tensor(1e-2))),
    'fused': ('fused', False, 'step', {}),
}


def _train(make_optimizer, device, bf16, how):
    """Three steps of a two-layer model, eager (how=None) or compiled: the compiled optimizer's
    step, or a compiled function that calls it. Returns (params, optimizer, graph breaks)."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).to(device)
    if bf16:
        model[1].to(torch.bfloat16)
    opt = make_optimizer(model.parameters())
    step = {None: opt.step, 'step': torch.compile(opt.step),
            'function': torch.compile(lambda: opt.step())}[how]
    for i in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(i)).to(p)
        step()
    return list(model.parameters()), opt, sum(counters['graph_break'].values())


@pytest.fixture(scope='module')
def adamw_graph_breaks():
    """torch's AdamW, compiled the same ways: the number of graph breaks FAME must not exceed."""
    return {how: _train(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1), 'cpu', False,
                        how)[2] for how in ('step', 'function')}


@pytest.mark.skipif(
    tuple(map(int, torch.__version__.split('.')[:2])) < (2, 2),
    reason="torch 2.1's inductor has no kernel for the foreach ops with a list of scalars "
           "(_foreach_add_.ScalarList) of FAME's per-tensor bias correction, and compiling a "
           "step there (AdamW's too) leaves optimizer hooks uncalled afterwards")
@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('case', COMPILED)
def test_a_compiled_step_matches_the_eager_step(case, device, adamw_graph_breaks):
    """torch.compile runs FAME on each path, dtype mix and setting and matches eager: fp32 to a
    few ulps, bf16 params to one ulp of bf16; with no more graph breaks than torch's AdamW
    compiled the same way."""
    impl, bf16, how, settings = COMPILED[case]
    usable(impl, device)
    settings = {'lr': 1e-2, 'weight_decay': 0.1, **settings}
    # compiled, the default is the foreach chain (the C loop and the kernel stay out of graphs)
    eager, eager_opt, _ = _train(lambda params: FAME(params, **settings, **IMPLS[
        'foreach' if impl == 'default' else impl]), device, bf16, None)
    compiled, compiled_opt, breaks = _train(lambda params: FAME(params, **settings,
                                                                **IMPLS[impl]), device, bf16, how)
    for a, b in zip(eager, compiled):
        assert a.dtype == b.dtype
        # ulps of the weight, or of the step (lr) where the weight is smaller: inductor's fused
        # loop rounds the chain's intermediates differently
        one_ulp = torch.finfo(a.dtype).eps * a.detach().float().abs().clamp_min(1e-2)
        assert ((a.detach().float() - b.detach().float()).abs() <= 4 * one_ulp * (
            a.dtype == torch.float32) + one_ulp * (a.dtype != torch.float32)).all(), case
    for p, q in zip(eager, compiled):
        assert float(eager_opt.state[p]['step']) == float(compiled_opt.state[q]['step']) == 3
    # the fused kernel runs outside the graph (its launcher keeps address tables): one break
    assert breaks <= adamw_graph_breaks[how] + (impl == 'fused'), (breaks, adamw_graph_breaks)


@pytest.mark.skipif(not HAS_TRITON, reason='Triton >= 3.0 is not installed')
def test_fused_on_the_meta_device_constructs_and_fails_at_step():
    """torch's deferred-initialisation contract: fused=True on meta parameters constructs; the
    step, which would need real tensors, fails in torch's words and makes no state."""
    with torch.device('meta'):
        model = nn.Linear(4, 2)
    opt = FAME(model.parameters(), fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.raises(RuntimeError, match='`fused=True` requires all the params to be floating '
                       'point Tensors of supported devices'):
        opt.step()
    assert not opt.state


@pytest.mark.parametrize('impl', IMPLS)
def test_full_fame_keeps_a_weight_finite_when_v_overflows(impl):
    """One finite gradient element whose (1-beta2)*g^2 overflows fp32: v is inf, and so are v2
    and v3 once the cascade takes it in; 3v - 3v2 + v3 would be inf - inf = NaN. Every path keeps
    v's TEMA at inf (no step for that element, as AdamW's inf v gives none) and the weight
    finite; the other elements step as usual."""
    usable(impl, 'cpu')
    w = torch.zeros(3, requires_grad=True)
    opt = FAME([w], lr=1e-3, sq_betas=(0.3, 0.7), **IMPLS[impl])
    adamw_w = torch.zeros(3, requires_grad=True)
    adamw = torch.optim.AdamW([adamw_w], lr=1e-3, weight_decay=0.0)
    for _ in range(3):
        for p in (w, adamw_w):
            p.grad = torch.tensor([1e21, 1.0, -1.0])
        opt.step()
        adamw.step()
    assert torch.isfinite(adamw_w).all() and adamw_w[0] == 0
    assert torch.isfinite(w).all(), w
    assert w[0] == 0 and w[1] < 0 < w[2]
