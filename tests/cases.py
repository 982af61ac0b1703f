"""The optimizer tests' tables and their shared runner (as torch's OptimizerInfo and
pytorch_optimizer's tests/constants.py): implementations x configurations x devices, the
parameters they run on, and one body that steps optimizers in lockstep and compares them."""
import pytest
import torch

from mmfame import FAME
from mmfame.optim import _cpu_kernel, _triton_fame

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = _triton_fame.triton is not None
DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not HAS_CUDA, reason='no CUDA'))]
IMPLS = {
    'forloop': dict(foreach=False),
    'foreach': dict(foreach=True),
    'fused': dict(fused=True),
    # the default: the compiled C loop for contiguous fp32 CPU tensors, the fused kernel on CUDA
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


def settings(config: str) -> dict:
    """A configuration's FAME arguments, with lr 1e-2 unless it sets its own."""
    return {'lr': 1e-2, **CONFIGS[config]}


def usable(impl: str, device: str = 'cpu') -> None:
    """Skip, saying why, where this machine cannot run ``impl`` on ``device``."""
    if impl == 'fused':
        if not HAS_TRITON:
            pytest.skip('Triton >= 3.0 is not installed')
        if device == 'cpu' and not _triton_fame.INTERPRET:
            pytest.skip('fused on CPU runs only under TRITON_INTERPRET=1')


def needs_cpu_kernel() -> None:
    if _cpu_kernel.load() is None:
        pytest.skip('no C compiler here: the CPU kernel cannot be built (FAME uses foreach)')


# The foreach chain's CPU cache block in the tests (mmfame.optim.fame.CPU_BLOCK_NUMEL, set by
# conftest.py): small, so that its slicing runs on tensors Triton's interpreter walks quickly.
TEST_CPU_BLOCK_NUMEL = 1024


def make_params(device, dtype=torch.float64, seed=0):
    """Shapes that cover a scalar, a non-square matrix, a conv kernel and a tensor that spans
    several CPU cache blocks (so the foreach path slices it) and two fused-kernel chunks of
    4,096 elements (a whole one and a masked tail)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(), (7, 3), (4, 3, 3, 3), (5_001,)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device).requires_grad_() for s in shapes]


def twins(params):
    """Independent copies of ``params`` for a second optimizer."""
    return [p.detach().clone().requires_grad_() for p in params]


def max_err(a, b) -> float:
    return (a.to(torch.float64) - b.to(torch.float64)).abs().max().item()


def lockstep(runs, steps: int = 1, seed: int = 0, skip=None, each=None) -> None:
    """Step every ``(optimizer, params)`` of ``runs`` on the same seeded gradients.

    Gradients are drawn in float64 and cast to each param; ``skip(step)`` may name param
    indices whose grad is None that step; ``each(step, grads)`` runs after every step with that
    step's float64 gradients (to step a reference and compare).
    """
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in runs[0][1]]
        for i in skip(step) if skip else ():
            grads[i] = None
        for opt, params in runs:
            for p, grad in zip(params, grads):
                p.grad = None if grad is None else grad.to(p.device, p.dtype)
            opt.step()
        if each:
            each(step, grads)


def assert_same(run_a, run_b, tol: float = 0.0, state_tol=None) -> None:
    """Params and every state tensor of ``run_b`` equal ``run_a``'s (within ``tol``)."""
    (opt_a, params_a), (opt_b, params_b) = run_a, run_b
    state_tol = tol if state_tol is None else state_tol
    for i, (p, q) in enumerate(zip(params_a, params_b)):
        assert max_err(p, q) <= tol * max(1.0, q.abs().max().item()), i
        assert set(opt_a.state[p]) == set(opt_b.state[q]), i
        for key, value in opt_b.state[q].items():
            assert max_err(opt_a.state[p][key].cpu(), value.cpu()) <= state_tol, (i, key)


def stepped(params, impl: str, steps: int = 1, seed: int = 0, **kwargs):
    """A FAME over ``params`` after ``steps`` steps on seeded gradients."""
    opt = FAME(params, **{'lr': 1e-2, **kwargs}, **IMPLS[impl])
    lockstep([(opt, params)], steps, seed)
    return opt
