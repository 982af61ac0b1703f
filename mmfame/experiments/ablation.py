"""Ablation optimizers for experiments: Adam with a k-fold cascaded-EMA first moment.

DEMA (k=2) and QEMA (k=4) next to FAME's TEMA (k=3), for the estimator ablations of
``tools/analysis_tools/compare_optimizers.py`` and ``lag_demo.py``. Not part of mmfame's API, and
importing it registers nothing: child configs that train with it import
:mod:`.register_ablation` (``custom_imports``), which registers :class:`CascadeAdam` in mmengine's
root ``OPTIMIZERS`` under the private name ``_AnalysisCascadeAdam``.
"""
import math
from typing import List

import torch
from torch.optim import Optimizer

PRIVATE_NAME = '_AnalysisCascadeAdam'


def cascade_coeffs(k: int) -> List[int]:
    """Coefficients of the k-fold EMA combination (k=2: DEMA 2, -1; 3: TEMA 3, -3, 1; 4: QEMA
    4, -6, 4, -1): those of 1 - (1 - E)**k, which cancel the lag of a cascade of equal EMAs."""
    return [(-1) ** j * math.comb(k, j + 1) for j in range(k)]


class CascadeAdam(Optimizer):
    """Tool-private Adam variant whose first moment is a k-fold cascaded-EMA combination.

    ``m1 = EMA_beta1(g)``, ``m_{j+1} = EMA_{decays[j-1]}(m_j)`` (FAME's cascade: with
    ``decays=(beta3, beta4)`` it is FAME), first moment ``sum_j coeffs[j] * m_{j+1}`` with the
    binomial coefficients of :func:`cascade_coeffs` unless ``coeffs`` is given; Adam's second
    moment, bias corrections ``1 - beta1**t`` / ``1 - beta2**t`` as in FAME, decoupled (AdamW)
    weight decay by default, L2 with ``decoupled_weight_decay=False``. ``decays=()`` is Adam/AdamW.
    A plain for-loop: for ablations, not for speed.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), decays=(0.3, ), coeffs=None,
                 eps=1e-8, weight_decay=0.0, decoupled_weight_decay=True):
        decays = tuple(float(d) for d in decays)
        if coeffs is None:
            coeffs = cascade_coeffs(len(decays) + 1)
        coeffs = tuple(float(c) for c in coeffs)
        if len(coeffs) != len(decays) + 1:
            raise ValueError(f'CascadeAdam: {len(decays)} decays need {len(decays) + 1} coeffs, '
                             f'got {coeffs}')
        for d in (*betas, *decays):
            if not 0.0 <= d < 1.0:
                raise ValueError(f'CascadeAdam: decays must be in [0, 1), got {d}')
        defaults = dict(lr=lr, betas=tuple(betas), decays=decays, coeffs=coeffs, eps=eps,
                        weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group['betas']
            lr, wd, eps = group['lr'], group['weight_decay'], group['eps']
            decays, coeffs = group['decays'], group['coeffs']
            for p in group['params']:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state['step'] = 0
                    state['exp_avg_sq'] = torch.zeros_like(p)
                    state['cascade'] = [torch.zeros_like(p) for _ in range(len(decays) + 1)]
                state['step'] += 1
                t = state['step']
                if wd:
                    if group['decoupled_weight_decay']:
                        p.mul_(1 - lr * wd)
                    else:
                        grad = grad.add(p, alpha=wd)
                ms = state['cascade']
                ms[0].lerp_(grad, 1 - beta1)
                for j, d in enumerate(decays):
                    ms[j + 1].lerp_(ms[j], 1 - d)
                v = state['exp_avg_sq']
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                first = ms[0] * coeffs[0]
                for c, m in zip(coeffs[1:], ms[1:]):
                    first.add_(m, alpha=c)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                p.addcdiv_(first, denom, value=-lr / (1 - beta1**t))
        return loss
