"""A float64 FAME written line by line from the update in the paper (arXiv 2306.01423) and
FAME's docstring (mmfame/optim/fame.py), for the tests to trust."""
import math

import torch


class ReferenceFAME:
    """Plain-tensor FAME on float64 copies; returns params and every state buffer per step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), beta3=0.3, beta4=0.7, eps=1e-8,
                 weight_decay=0.0, decoupled_weight_decay=True, amsgrad=False, maximize=False,
                 sq_betas=None):
        self.p = [p.detach().to(torch.float64).clone() for p in params]
        self.h = dict(lr=lr, b1=betas[0], b2=betas[1], b3=beta3, b4=beta4, eps=eps,
                      wd=weight_decay, decoupled=decoupled_weight_decay, amsgrad=amsgrad,
                      maximize=maximize, sq_betas=sq_betas)
        zeros = lambda: [torch.zeros_like(p) for p in self.p]  # noqa: E731
        self.m1, self.m2, self.m3, self.v, self.vmax = zeros(), zeros(), zeros(), zeros(), zeros()
        self.v2, self.v3 = zeros(), zeros()
        self.t = [0] * len(self.p)

    def step(self, grads):
        h = self.h
        for i, g in enumerate(grads):
            if g is None:
                continue
            g = g.to(torch.float64)
            p = self.p[i]
            self.t[i] += 1
            t = self.t[i]
            if h['maximize']:
                g = -g
            if h['wd'] and h['decoupled']:
                p = p * (1 - h['lr'] * h['wd'])
            if h['wd'] and not h['decoupled']:
                g = g + h['wd'] * p
            self.m1[i] = h['b1'] * self.m1[i] + (1 - h['b1']) * g
            self.m2[i] = h['b3'] * self.m2[i] + (1 - h['b3']) * self.m1[i]
            self.m3[i] = h['b4'] * self.m3[i] + (1 - h['b4']) * self.m2[i]
            self.v[i] = h['b2'] * self.v[i] + (1 - h['b2']) * g * g
            v = self.v[i]
            if h['sq_betas'] is not None:  # full FAME: the same cascade on v, clamped at 0
                b, c = h['sq_betas']
                self.v2[i] = b * self.v2[i] + (1 - b) * v
                self.v3[i] = c * self.v3[i] + (1 - c) * self.v2[i]
                # an overflowed v (inf) stays inf: inf - inf would make it NaN
                v = torch.where(v.isinf(), v, (3 * v - 3 * self.v2[i] + self.v3[i]).clamp_min(0))
            if h['amsgrad']:
                self.vmax[i] = torch.maximum(self.vmax[i], v)
                v = self.vmax[i]
            tema = 3 * self.m1[i] - 3 * self.m2[i] + self.m3[i]
            denom = v.sqrt() / math.sqrt(1 - h['b2']**t) + h['eps']
            self.p[i] = p - h['lr'] / (1 - h['b1']**t) * tema / denom

    def state(self, i):
        state = dict(exp_avg=self.m1[i], exp_avg_2=self.m2[i], exp_avg_3=self.m3[i],
                     exp_avg_sq=self.v[i])
        if self.h['amsgrad']:
            state['max_exp_avg_sq'] = self.vmax[i]
        if self.h['sq_betas'] is not None:
            state['exp_avg_sq_2'], state['exp_avg_sq_3'] = self.v2[i], self.v3[i]
        return state
