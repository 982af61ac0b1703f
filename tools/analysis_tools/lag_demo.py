"""How far do EMA, DEMA and TEMA gradient estimates lag a trending gradient? No dataset, seconds.

Part 1, estimators on synthetic gradient streams ``g_t = trend(t) + sigma * noise_t`` (the noise is
Gaussian and white; the estimators are linear, so their output is the filtered trend plus the
filtered noise):

* ``linear drift``: ``trend(t) = a * t`` (per coordinate, random unit direction);
* ``step change``: ``trend(t) = 0`` before ``t0``, ``A`` from ``t0`` on;
* ``rotating quadratic``: the gradient of ``0.5 * ||x - c(t)||^2`` at ``x = 0``, i.e. ``-c(t)``,
  with the optimum ``c(t)`` moving on a circle (radius R, period P steps).

Estimators (all states start at zero, and, as in FAME, the combination is divided by
``1 - beta1**t``): a cascade ``m1 = EMA_beta1(g)``, ``m2 = EMA_d2(m1)``, ``m3 = EMA_d3(m2)``, ...
combined with the binomial coefficients (EMA: m1; DEMA: 2 m1 - m2; TEMA: 3 m1 - 3 m2 + m3; QEMA:
4 m1 - 6 m2 + 4 m3 - m4). FAME's cascade uses *different* decays: beta1 = 0.9, then beta3 = 0.3,
beta4 = 0.7. The classic DEMA/TEMA of finance (all decays equal) are listed for reference.

Measured: ``lag`` = the time shift tau that best aligns the estimate with the true gradient,
``argmin_tau mean_t ||est_t - trend(t - tau)||^2`` over the second half of the stream (with the
noise), next to the closed-form steady-state lag on a ramp, ``sum_k c_k * (sum_{j<=k} d_j /
(1 - d_j))``; for the step, the steps until the noise-free estimate first reaches 90 % of the
jump, and its overshoot; ``RMSE`` of the noisy estimate against the true gradient; the noise gain
(output std / input std for pure white noise, ``sqrt(sum_k w_k^2)`` of the impulse response).

Part 2, the effect on optimization: ``x`` follows a moving optimum ``c(t)`` (linear drift, or the
circle) of ``f_t(x) = 0.5 * ||x - c(t)||^2`` under noisy gradients ``x - c(t) + sigma * noise``,
with Adam (``mmfame.FAME`` with beta3 = beta4 = 0, which is exactly Adam), a DEMA variant (the
ablation ``CascadeAdam`` of ``mmfame.experiments.ablation``, decay 0.3) and FAME (TEMA, defaults),
plus FAME with beta3 = beta4 = 0.5 (the authors' constructor default) and the classic equal-decay
TEMA (FAME with beta3 = beta4 = 0.9). Reported: the mean tracking
distance ``||x_t - c(t)||`` after a burn-in, mean +- std over independent runs (seeds; the runs are
rows of one tensor, which the element-wise optimizers treat independently), for several lr.

Writes ``<out>.png`` and ``<out>.md`` (default ``docs/results/lag_demo``)::

    python tools/analysis_tools/lag_demo.py [--out docs/results/lag_demo] [--seed 0]
"""
import argparse
import math
import os
import os.path as osp
import time
from typing import Callable, Dict, Sequence

import numpy as np
import torch

from mmfame import FAME
from mmfame.experiments.ablation import CascadeAdam, cascade_coeffs

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# name: (cascade decays (beta1, d2, ...), label)
ESTIMATORS = {
    'ema': ((0.9, ), 'EMA, beta1=0.9 (Adam)'),
    'dema': ((0.9, 0.3), 'DEMA, FAME cascade (0.9, 0.3)'),
    'tema': ((0.9, 0.3, 0.7), 'TEMA, FAME defaults (0.9, 0.3, 0.7)'),
    'qema': ((0.9, 0.3, 0.7, 0.7), 'QEMA, FAME cascade + 0.7'),
    'tema-0.5': ((0.9, 0.5, 0.5), 'TEMA, (0.9, 0.5, 0.5): authors\' constructor default'),
    'dema-eq': ((0.9, 0.9), 'DEMA, equal decays 0.9 (classic)'),
    'tema-eq': ((0.9, 0.9, 0.9), 'TEMA, equal decays 0.9 (classic)'),
}


# ----------------------------------------------------------------------------- estimators
def cascade_estimate(g: np.ndarray, decays: Sequence[float], coeffs=None,
                     bias_correction: bool = True) -> np.ndarray:
    """The combined cascade estimate for every step of a stream ``g`` of shape (T, ...)."""
    g = np.asarray(g, dtype=np.float64)
    coeffs = cascade_coeffs(len(decays)) if coeffs is None else coeffs
    ms = [np.zeros(g.shape[1:]) for _ in decays]
    out = np.empty_like(g)
    for t in range(g.shape[0]):
        prev = g[t]
        for k, d in enumerate(decays):
            ms[k] = d * ms[k] + (1 - d) * prev
            prev = ms[k]
        est = sum(c * m for c, m in zip(coeffs, ms))
        out[t] = est / (1 - decays[0]**(t + 1)) if bias_correction else est
    return out


def analytic_ramp_lag(decays: Sequence[float], coeffs=None) -> float:
    """Steady-state delay (steps) of the combination on a ramp: sum_k c_k L_k, where L_k, the
    delay of the k-th cascade output, adds d/(1-d) per EMA."""
    coeffs = cascade_coeffs(len(decays)) if coeffs is None else coeffs
    lag, total = 0.0, 0.0
    for c, d in zip(coeffs, decays):
        lag += d / (1 - d)
        total += c * lag
    return total


def impulse_response(decays: Sequence[float], n: int = 60) -> np.ndarray:
    """Steady-state weights w_k of g_{t-k} (no bias correction)."""
    g = np.zeros(n)
    g[0] = 1.0
    return cascade_estimate(g[:, None], decays, bias_correction=False)[:, 0]


def fit_lag(trend: Callable[[np.ndarray], np.ndarray], est: np.ndarray, t_index: np.ndarray,
            taus: np.ndarray = np.arange(-5.0, 30.0001, 0.01)) -> float:
    """The shift tau minimising mean ||est_t - trend(t - tau)||^2 over ``t_index``."""
    errs = [np.mean(np.sum((est[t_index] - trend(t_index - tau)) ** 2,
                           axis=tuple(range(1, est.ndim)))) for tau in taus]
    return float(taus[int(np.argmin(errs))])


def step_metrics(est: np.ndarray, t0: int, jump: float):
    """Steps from the jump until the estimate first reaches 90 % of it; overshoot (%)."""
    after = est[t0:] / jump
    reached = np.nonzero(after >= 0.9)[0]
    t90 = int(reached[0]) + 1 if len(reached) else None
    return t90, float(max(0.0, after.max() - 1.0) * 100)


# ------------------------------------------------------------------------------ the streams
def make_streams(T: int = 600, dim: int = 8, sigma: float = 0.5, seed: int = 0):
    """{name: (trend(t), noisy gradients (T, dim), description)}."""
    rng = np.random.default_rng(seed)
    t = np.arange(T, dtype=np.float64)
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    slope = 0.01

    def linear(tt):
        return slope * np.asarray(tt, dtype=np.float64)[..., None] * u

    t0, jump = T // 2, 1.0

    def step(tt):
        return (np.asarray(tt, dtype=np.float64)[..., None] >= t0) * jump * np.ones(dim)

    radius, period = 1.0, 100.0
    phases = rng.uniform(0, 2 * np.pi, dim // 2)

    def rotating(tt):
        ang = 2 * np.pi * np.asarray(tt, dtype=np.float64)[..., None] / period + phases
        c = np.concatenate([np.cos(ang), np.sin(ang)], axis=-1) * radius
        return -c  # gradient of 0.5 ||x - c||^2 at x = 0

    streams = {}
    for name, fn, desc in (
            ('linear drift', linear, f'g = {slope} t u (|u| = 1)'),
            ('step change', step, f'g jumps 0 -> {jump} at t = {t0}'),
            ('rotating quadratic', rotating,
             f'g = -c(t), c on circles of radius {radius}, period {period:g} steps')):
        noise = sigma * rng.standard_normal((T, dim))
        streams[name] = (fn, fn(t) + noise, desc)
    return streams, dict(T=T, dim=dim, sigma=sigma, seed=seed, t0=t0, jump=jump,
                         slope=slope, radius=radius, period=period)


def estimator_table(streams, info, estimators=ESTIMATORS) -> Dict[str, dict]:
    T = info['T']
    window = np.arange(T // 2, T)  # steady state (for the step: the part after the jump)
    rows = {}
    for name, (decays, label) in estimators.items():
        row = dict(label=label, decays=decays, ramp_lag=analytic_ramp_lag(decays),
                   noise_gain=float(np.sqrt(np.sum(impulse_response(decays, 400) ** 2))))
        for sname, (trend, g, _) in streams.items():
            est = cascade_estimate(g, decays)
            idx = window if sname != 'step change' else np.arange(info['t0'], T)
            row[f'{sname}/rmse'] = float(np.sqrt(np.mean(np.sum(
                (est[idx] - trend(idx)) ** 2, axis=1) / g.shape[1])))
            if sname == 'step change':
                clean = cascade_estimate(trend(np.arange(T)), decays)
                row['step/t90'], row['step/overshoot'] = step_metrics(
                    clean[:, 0], info['t0'], info['jump'])
            else:
                row[f'{sname}/lag'] = fit_lag(trend, est, window)
        rows[name] = row
    return rows


# ---------------------------------------------------------------------- the optimizer runs
def make_optimizer(kind: str, params, lr: float):
    if kind == 'adam':
        return FAME(params, lr=lr, beta3=0.0, beta4=0.0)  # == torch.optim.Adam
    if kind == 'dema':
        return CascadeAdam(params, lr=lr, decays=(0.3, ))
    if kind == 'fame':
        return FAME(params, lr=lr)
    if kind == 'fame-0.5':
        return FAME(params, lr=lr, beta3=0.5, beta4=0.5)
    if kind == 'tema-eq':
        return FAME(params, lr=lr, beta3=0.9, beta4=0.9)
    raise ValueError(kind)


OPTIMIZERS = {
    'adam': 'Adam (EMA; FAME beta3=beta4=0)',
    'dema': 'DEMA (2m1-m2, decay 0.3)',
    'fame': 'FAME (TEMA 0.9/0.3/0.7)',
    'fame-0.5': 'FAME beta3=beta4=0.5',
    'tema-eq': 'TEMA equal decays (FAME beta3=beta4=0.9)',
}


def track(kind: str, problem: str, lr: float, steps: int = 3000, runs: int = 16, dim: int = 2,
          sigma: float = 0.5, seed: int = 0, burn_in: int = 1000, speed: float = 0.01,
          period: float = 400.0, record: int = 0):
    """Mean distance ||x_t - c(t)|| over t >= burn_in for each of ``runs`` independent runs
    (rows), and (``record`` > 0) the first run's x and c for ``record`` steps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(runs, dim, dtype=torch.float64, requires_grad=True)
    opt = make_optimizer(kind, [x], lr)
    dist_sum = torch.zeros(runs, dtype=torch.float64)
    direction = torch.ones(dim, dtype=torch.float64) / math.sqrt(dim)
    trace = []
    for t in range(steps):
        if problem == 'drift':
            c = (speed * t) * direction
        else:
            ang = 2 * math.pi * t / period
            c = torch.tensor([math.cos(ang), math.sin(ang)] * (dim // 2), dtype=torch.float64)
        noise = torch.randn(runs, dim, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            if t >= burn_in:
                dist_sum += (x - c).norm(dim=1)
            if record and t < record:
                trace.append((x[0].clone().numpy(), c.clone().numpy()))
        x.grad = (x.detach() - c) + sigma * noise
        opt.step()
    return (dist_sum / (steps - burn_in)).numpy(), trace


def tracking_table(lrs=(0.003, 0.01, 0.03, 0.1), problems=('drift', 'circle'), **kw):
    """{(problem, optimizer, lr): (mean distance, std over runs, runs closer than Adam,
    mean ratio to Adam's distance)}; every optimizer sees the same noise (paired runs)."""
    rows = {}
    for problem in problems:
        for lr in lrs:
            dists = {kind: track(kind, problem, lr, **kw)[0] for kind in OPTIMIZERS}
            for kind, d in dists.items():
                rows[(problem, kind, lr)] = (float(d.mean()), float(d.std(ddof=1)),
                                             int(np.sum(d < dists['adam'])),
                                             float(np.mean(d / dists['adam'])))
    return rows


# ---------------------------------------------------------------------------------- output
def write_markdown(path, rows, info, trows, tkw, lrs, seconds):
    L = ['# Lag demo: EMA vs DEMA vs TEMA on trending gradients', '',
         'Written by `python tools/analysis_tools/lag_demo.py` (deterministic, seed '
         f'{info["seed"]}; {seconds:.1f} s on this machine).', '',
         f'## 1. Estimators on gradient streams (T = {info["T"]}, {info["dim"]} coordinates, '
         f'white noise sigma = {info["sigma"]})', '',
         'lag: shift (steps) that best aligns the noisy estimate with the true gradient over '
         'the second half; ramp lag (closed form): steady-state delay on a noise-free ramp; '
         't90: steps after the jump until the noise-free estimate reaches 90 %; RMSE vs the '
         'true (noise-free) gradient, per coordinate; noise gain: output/input std for white '
         'noise.', '',
         '| estimator | cascade decays | ramp lag (closed form) | linear drift: lag | linear '
         'drift: RMSE | step: t90 | step: overshoot | step: RMSE | rotation: lag | rotation: '
         'RMSE | noise gain |',
         '|---|---|---|---|---|---|---|---|---|---|---|']
    for name, r in rows.items():
        L.append(f'| {r["label"]} | {r["decays"]} | {r["ramp_lag"]:.3f} | '
                 f'{r["linear drift/lag"]:.2f} | {r["linear drift/rmse"]:.4f} | '
                 f'{r["step/t90"]} | {r["step/overshoot"]:.1f} % | {r["step change/rmse"]:.4f} | '
                 f'{r["rotating quadratic/lag"]:.2f} | {r["rotating quadratic/rmse"]:.4f} | '
                 f'{r["noise_gain"]:.3f} |')
    L += ['', 'Streams: ' + '; '.join(f'{k}: {v[2]}' for k, v in info['streams'].items()) + '.',
          '', f'## 2. Following a moving optimum with noisy gradients (sigma = {tkw["sigma"]})',
          '', f'f_t(x) = 0.5 ||x - c(t)||^2, x in R^{tkw["dim"]}, {tkw["steps"]} steps, distance '
          f'averaged over steps >= {tkw["burn_in"]}, mean ± std over {tkw["runs"]} runs. drift: '
          f'c(t) moves {tkw["speed"]} per step in a straight line; circle: c(t) on the unit '
          f'circle, period {tkw["period"]:g} steps ({2 * math.pi / tkw["period"]:.4f} per step).',
          '']
    for problem in ('drift', 'circle'):
        L += [f'**{problem}**: mean tracking distance ||x - c(t)|| (lower is better)', '',
              '| optimizer | ' + ' | '.join(f'lr={lr:g}' for lr in lrs) + ' |',
              '|---|' + '---|' * len(lrs)]
        for kind, label in OPTIMIZERS.items():
            cells = []
            for lr in lrs:
                m, s, wins, _ = trows[(problem, kind, lr)]
                best = min(trows[(problem, k, lr)][0] for k in OPTIMIZERS)
                cell = f'{m:.4f} ± {s:.4f}'
                if kind != 'adam':
                    cell += f' ({wins}/{tkw["runs"]})'
                cells.append(f'**{cell}**' if m == best else cell)
            L.append(f'| {label} | ' + ' | '.join(cells) + ' |')
        L.append('')
    L += ['Bold: lowest mean per column. (k/n): runs in which the optimizer stayed closer '
          'than Adam; every optimizer sees the same noise sequence in run i, so the comparison '
          'is paired.', '']
    with open(path, 'w') as f:
        f.write('\n'.join(L))


# One colour per filter in every panel (optimizers take their first moment's colour).
COLORS = {'ema': 'C0', 'adam': 'C0', 'dema': 'C1', 'tema': 'C2', 'fame': 'C2', 'tema-eq': 'C3',
          'qema': 'C4', 'tema-0.5': 'C5', 'fame-0.5': 'C5', 'dema-eq': 'C6'}


def plot(path, streams, info, rows, trows, lrs, tkw):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    show = ['ema', 'dema', 'tema', 'tema-eq']
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    T = info['T']
    # noise-free ramp from t = 0: how many steps behind each estimate is
    ax = axes[0, 0]
    ramp = np.arange(T, dtype=np.float64)[:, None]
    win = np.arange(1, 120)
    for name in show + ['qema', 'tema-0.5']:
        est = cascade_estimate(ramp, ESTIMATORS[name][0])[:, 0]
        ax.plot(win, (ramp[win, 0] - est[win]), color=COLORS[name], label=f'{name}: steady state '
                f'{rows[name]["ramp_lag"]:.2f}, fitted (noisy) '
                f'{rows[name]["linear drift/lag"]:.2f}')
    ax.axhline(0, color='0.5', lw=0.8)
    ax.set_title('linear drift g = a t: delay (true - estimate) / a, in steps', fontsize=9)
    ax.set_xlabel('step')
    ax.set_ylabel('steps behind')
    ax.legend(fontsize=7)
    # step response
    ax = axes[0, 1]
    trend, g, _ = streams['step change']
    win = np.arange(info['t0'] - 10, info['t0'] + 50)
    ax.plot(win, trend(win)[:, 0], 'k-', lw=2, label='true gradient')
    for name in show:
        clean = cascade_estimate(trend(np.arange(T)), ESTIMATORS[name][0])
        r = rows[name]
        ax.plot(win, clean[win, 0], color=COLORS[name], label=f'{name}: t90={r["step/t90"]}')
    ax.axhline(0.9, color='0.6', ls=':', lw=1)
    ax.set_title('step change: noise-free response', fontsize=9)
    ax.set_xlabel('step')
    ax.legend(fontsize=7)
    # rotating quadratic: coordinate 0, noisy estimates
    ax = axes[0, 2]
    trend, g, _ = streams['rotating quadratic']
    win = np.arange(T - 150, T)
    ax.plot(win, g[win, 0], '.', color='0.7', ms=3, label='noisy gradient')
    ax.plot(win, trend(win)[:, 0], 'k-', lw=2, label='true gradient')
    for name in show:
        est = cascade_estimate(g, ESTIMATORS[name][0])
        ax.plot(win, est[win, 0], lw=1, color=COLORS[name],
                label=f'{name}: lag {rows[name]["rotating quadratic/lag"]:.1f}, '
                f'RMSE {rows[name]["rotating quadratic/rmse"]:.3f}')
    ax.set_title('rotating quadratic (coordinate 0): noisy estimates', fontsize=9)
    ax.set_xlabel('step')
    ax.legend(fontsize=7)
    # impulse responses
    ax = axes[1, 0]
    for name in show + ['qema', 'tema-0.5']:
        w = impulse_response(ESTIMATORS[name][0], 40)
        ax.plot(np.arange(40), w, marker='.', ms=3, color=COLORS[name],
                label=f'{name}: ramp lag {rows[name]["ramp_lag"]:.2f}, noise gain '
                f'{rows[name]["noise_gain"]:.2f}')
    ax.axhline(0, color='0.5', lw=0.8)
    ax.set_title('weights of g_{t-k} (impulse response)', fontsize=9)
    ax.set_xlabel('k (steps back)')
    ax.legend(fontsize=7)
    # tracking distance relative to Adam (paired: the same noise for every optimizer)
    for ax, problem in zip(axes[1, 1:], ('drift', 'circle')):
        for kind, label in OPTIMIZERS.items():
            ratio = [trows[(problem, kind, lr)][3] for lr in lrs]
            ax.plot(lrs, ratio, marker='o', color=COLORS[kind], label=label)
        ax.axhline(1.0, color='0.5', lw=0.8)
        ax.set_xscale('log')
        ax.set_xlabel('lr')
        ax.set_ylabel('mean ||x - c(t)|| / Adam\'s (paired runs)')
        ax.set_title(f'moving optimum ({problem}), sigma={tkw["sigma"]}: distance / Adam\'s '
                     '(< 1: closer)', fontsize=9)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('Lag of EMA / DEMA / TEMA gradient estimates (FAME cascade decays vs '
                 'equal decays)', fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', default=osp.join(REPO, 'docs', 'results', 'lag_demo'),
                   help='output prefix: OUT.png and OUT.md')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--sigma', type=float, default=0.5, help='gradient noise std')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start = time.time()
    streams, info = make_streams(sigma=args.sigma, seed=args.seed)
    info['streams'] = streams
    rows = estimator_table(streams, info)
    lrs = (0.003, 0.01, 0.03, 0.1)
    tkw = dict(steps=3000, runs=16, dim=2, sigma=args.sigma, seed=args.seed, burn_in=1000,
               speed=0.01, period=400.0)
    trows = tracking_table(lrs, **tkw)
    seconds = time.time() - start
    out = osp.splitext(args.out)[0] if args.out.endswith(('.md', '.png')) else args.out
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    write_markdown(out + '.md', rows, info, trows, tkw, lrs, seconds)
    plot(out + '.png', streams, info, rows, trows, lrs, tkw)
    with open(out + '.md') as f:
        print(f.read())
    print(f'wrote {out}.md and {out}.png ({time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
