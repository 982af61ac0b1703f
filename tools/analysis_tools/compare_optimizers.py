"""Compare optimizers on one MMDetection / MMSegmentation config: same budget, same seeds.

For every optimizer setting the tool writes a small child config next to its runs
(``<work-dir>/<setting>/<setting>.py``: ``_base_`` = the given config, the optimizer replaced with
``_delete_=True``, iterations / schedule / checkpointing / data root set), trains it once per seed
through ``tools/train.py`` (the normal mmengine Runner, ``--cfg-options randomness.seed=S``), reads
mmengine's logged scalars (``<run>/<timestamp>/vis_data/scalars.json``: training loss per logging
interval, the validation metrics after the last iteration) and writes

* ``<out>.png``: training loss, mean +- std over seeds per optimizer, and the final validation
  metric per optimizer (each seed a dot, mean +- std as an error bar);
* ``<out>.md``: a table of the final metric, the final training loss (mean over the last 10 % of
  the iterations) and the seconds per iteration, mean +- sample std (ddof=1) over the seeds, the
  paired difference to a reference optimizer (same seed = same initialisation and data order),
  and a per-seed table;
* ``<out>.json``: everything in the tables, per seed.

Usage::

    python tools/analysis_tools/compare_optimizers.py \
        --config configs/demo/segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py \
        --optimizers fame fame-full adamw adam sgd --seeds 0 1 2 --iters 300 \
        --threads 1 --jobs 2 --work-dir work_dirs/compare/seg --out docs/results/seg_demo
    # re-plot / re-tabulate from the runs already there, without training:
    python tools/analysis_tools/compare_optimizers.py ... --summary-only

Named settings (``--optimizers``). lr, weight decay, betas and eps are taken from the config's
optimizer unless said otherwise; ``--lr`` replaces the lr of every adaptive setting:

=============  ==============================================================================
``fame``       FAME, its defaults (beta3=0.3, beta4=0.7), decoupled weight decay
``fame-full``  FAME with the TEMA cascade on the second moment too, ``sq_betas=(0.3, 0.7)``
``adamw``      torch AdamW
``adam``       torch Adam; the config's weight decay is applied as L2 (added to the gradient)
``sgd``        torch SGD, momentum 0.9, lr ``--sgd-lr`` (default 0.01), weight decay
               ``--sgd-wd`` (default 1e-4, L2); betas/eps are not used
``ema``        FAME with beta3 = beta4 = 0 (first moment = m1: exactly AdamW)
``dema``       2*m1 - m2, m2 = EMA(m1) with decay 0.3 (FAME's beta3)   [tool-private optimizer]
``tema``       = ``fame`` (3*m1 - 3*m2 + m3); reuses the ``fame`` runs when both are listed
``qema``       4*m1 - 6*m2 + 4*m3 - m4, cascade decays (0.3, 0.7, 0.7): FAME's cascade plus
               one more EMA with FAME's last decay (this project's choice: no source gives the
               QEMA decays)   [tool-private optimizer]
=============  ==============================================================================

A setting may override optimizer keys: ``sgd:lr=0.02``, ``adam:weight_decay=0``,
``fame:beta3=0.5:beta4=0.5`` (values are Python literals; the name becomes the whole string).

DEMA/QEMA use :class:`CascadeAdam`, defined here and registered in mmengine's root ``OPTIMIZERS``
under the private name ``_AnalysisCascadeAdam`` when this module is imported (the child configs
import it through ``custom_imports``; the tool puts ``tools/analysis_tools`` on ``PYTHONPATH`` of
its training processes). It is not part of mmfame's API.

Finished runs are reused: a run whose stamp (``run.json``: child config, seed, options) matches
and whose scalars hold the metric is not trained again (``--rerun`` forces it).
"""
import argparse
import ast
import glob
import hashlib
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional, Sequence

import torch
from torch.optim import Optimizer

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(osp.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The tables and plots live in mmfame.experiments.report; the names stay attributes of this module.
from mmfame.experiments.report import (build_summary, fmt, markdown_table,  # noqa: E402,F401
                                       mean_std, plot, write_outputs)

PRIVATE_NAME = '_AnalysisCascadeAdam'
MODULE_NAME = 'compare_optimizers'  # importable name for custom_imports (HERE on PYTHONPATH)


# ------------------------------------------------------------------ the tool-private optimizer
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


def _register_private_optimizer() -> None:
    try:
        from mmengine.registry import OPTIMIZERS
    except ImportError:  # plain-PyTorch use of this module (e.g. lag_demo without mmengine)
        return
    OPTIMIZERS.register_module(name=PRIVATE_NAME, module=CascadeAdam, force=True)


_register_private_optimizer()


# ------------------------------------------------------------------------------ the settings
DOC_SETTINGS = {
    'fame': 'FAME (beta3=0.3, beta4=0.7), decoupled wd',
    'fame-full': 'FAME + TEMA on v, sq_betas=(0.3, 0.7)',
    'adamw': 'torch AdamW',
    'adam': 'torch Adam, wd as L2',
    'sgd': 'torch SGD, momentum 0.9, L2 wd',
    'ema': 'FAME beta3=beta4=0 (= AdamW)',
    'dema': '2m1-m2, decay 0.3 (private)',
    'tema': '3m1-3m2+m3 (= fame)',
    'qema': '4m1-6m2+4m3-m4, decays (0.3,0.7,0.7) (private)',
}
ALIASES = {'tema': 'fame'}  # same optimizer config: runs are shared
ADAPTIVE_KEYS = ('lr', 'betas', 'eps', 'weight_decay')


def parse_setting(spec: str):
    """``'sgd:lr=0.02:weight_decay=0'`` -> ('sgd', {'lr': 0.02, 'weight_decay': 0})."""
    name, *pairs = spec.split(':')
    if name not in DOC_SETTINGS:
        raise ValueError(f'unknown optimizer setting {name!r}; known: {", ".join(DOC_SETTINGS)}')
    overrides = {}
    for pair in pairs:
        if '=' not in pair:
            raise ValueError(f'setting {spec!r}: expected key=value after ":", got {pair!r}')
        key, value = pair.split('=', 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, overrides


def optimizer_cfg(spec: str, base_optimizer: dict, lr: Optional[float] = None,
                  sgd_lr: float = 0.01, sgd_wd: float = 1e-4) -> dict:
    """The optimizer dict (with ``_delete_=True``) of a named setting, from the config's own
    optimizer dict ``base_optimizer`` (lr, betas, eps, weight_decay are carried over)."""
    name, overrides = parse_setting(spec)
    common = {k: base_optimizer[k] for k in ADAPTIVE_KEYS if k in base_optimizer}
    if 'betas' in common:
        common['betas'] = tuple(common['betas'])
    if lr is not None:
        common['lr'] = lr
    common.setdefault('lr', 1e-3)
    if name in ('fame', 'tema'):
        cfg = dict(type='FAME', **common)
    elif name == 'fame-full':
        cfg = dict(type='FAME', **common, sq_betas=(0.3, 0.7))
    elif name == 'ema':
        cfg = dict(type='FAME', **common, beta3=0.0, beta4=0.0)
    elif name == 'adamw':
        cfg = dict(type='AdamW', **common)
    elif name == 'adam':
        cfg = dict(type='Adam', **common)
    elif name == 'sgd':
        cfg = dict(type='SGD', lr=sgd_lr, momentum=0.9, weight_decay=sgd_wd)
    elif name == 'dema':
        cfg = dict(type=PRIVATE_NAME, **common, decays=(0.3, ))
    elif name == 'qema':
        cfg = dict(type=PRIVATE_NAME, **common, decays=(0.3, 0.7, 0.7))
    else:  # pragma: no cover - parse_setting rejects unknown names
        raise AssertionError(name)
    cfg.update(overrides)
    return dict(_delete_=True, **cfg)


def run_name(spec: str) -> str:
    """Folder name of a setting's runs (aliases share their target's runs)."""
    name = ALIASES.get(spec, spec)
    return ''.join(c if c.isalnum() or c in '-_.=' else '_' for c in name)


def scale_schedulers(schedulers, base_iters: int, iters: int):
    """The config's iteration-based param_scheduler with begin/end/T_max scaled by
    ``iters / base_iters`` (warm-up and decay keep their proportions)."""
    single = isinstance(schedulers, dict)
    out = []
    for sch in ([schedulers] if single else list(schedulers or [])):
        sch = dict(sch)
        if sch.get('by_epoch', True) and not sch.get('convert_to_iter_based', False):
            raise ValueError(f'compare_optimizers: --iters needs iteration-based schedulers, '
                             f'got {sch}')
        for key in ('begin', 'end', 'T_max'):
            if isinstance(sch.get(key), (int, float)) and sch[key] < 10**8:
                sch[key] = int(round(sch[key] * iters / base_iters))
        if 'begin' in sch and 'end' in sch and sch['end'] <= sch['begin']:
            sch['end'] = sch['begin'] + 1
        out.append(sch)
    return out[0] if single else out


def child_config_text(base_config: str, optimizer: dict, base_cfg, iters: Optional[int],
                      keep_checkpoints: bool = False, data_root: Optional[str] = None) -> str:
    """A child config: the base config with only the optimizer (and the budget) replaced."""
    lines = [
        '# Written by tools/analysis_tools/compare_optimizers.py: the config below with only the',
        '# optimizer replaced (clip_grad, paramwise_cfg, constructor are kept) and the budget set.',
        '# Train it by hand with tools/analysis_tools on PYTHONPATH (for the private optimizer):',
        '#   PYTHONPATH=tools/analysis_tools python tools/train.py THIS --cfg-options '
        'randomness.seed=S',
        f'_base_ = {osp.abspath(base_config)!r}',
        '',
    ]
    imports = list(base_cfg.get('custom_imports', {}).get('imports', []) or [])
    for mod in ('mmfame', MODULE_NAME):
        if mod not in imports:
            imports.append(mod)
    lines.append(f'custom_imports = dict(imports={imports!r}, allow_failed_imports=False)')
    lines.append(f'optim_wrapper = dict(optimizer={optimizer!r})')
    if iters is not None:
        base_iters = int(base_cfg.train_cfg.get('max_iters', 0) or 0)
        if not base_iters:
            raise ValueError('compare_optimizers: --iters needs a config with an iteration-based '
                             'train_cfg (max_iters)')
        lines.append(f'train_cfg = dict(max_iters={iters}, val_interval={iters})')
        if base_cfg.get('param_scheduler') is not None:
            sched = scale_schedulers(base_cfg.param_scheduler, base_iters, iters)
            lines.append(f'param_scheduler = {_plain(sched)!r}')
    if not keep_checkpoints:
        lines.append("default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False,"
                     ' interval=-1, save_last=False))  # metrics are logged; no weights needed')
    if data_root is not None:
        lines.extend(_data_root_lines(base_cfg, data_root))
    return '\n'.join(lines) + '\n'


def _plain(obj):
    """ConfigDict/tuples -> plain dicts/lists/tuples that repr() as Python literals."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def _data_root_lines(base_cfg, data_root: str) -> List[str]:
    root = osp.abspath(data_root).rstrip('/') + '/'
    old = str(base_cfg.get('data_root', '') or '')
    lines = []
    for split in ('train', 'val', 'test'):
        if base_cfg.get(f'{split}_dataloader') is not None:
            lines.append(f'{split}_dataloader = dict(dataset=dict(data_root={root!r}))')
    for split in ('val', 'test'):
        ev = base_cfg.get(f'{split}_evaluator')
        if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str):
            ann = ev['ann_file']
            ann = root + ann[len(old):].lstrip('/') if old and ann.startswith(old) else ann
            lines.append(f'{split}_evaluator = dict(ann_file={ann!r})')
    return lines


# ------------------------------------------------------------------------- reading the runs
def read_scalars(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def newest_scalars(run_dir: str) -> Optional[str]:
    found = sorted(glob.glob(osp.join(run_dir, '[0-9]' * 8 + '_' + '[0-9]' * 6, 'vis_data',
                                      'scalars.json')))
    return found[-1] if found else None


KNOWN_METRICS = (('coco/bbox_mAP', 'coco/bbox_mAP_50'), ('mIoU', 'mAcc'),
                 ('coco/segm_mAP', 'coco/segm_mAP_50'), ('accuracy/top1', ))


def detect_metrics(records: Sequence[dict]) -> List[str]:
    keys = set().union(*(r.keys() for r in records)) if records else set()
    for group in KNOWN_METRICS:
        if group[0] in keys:
            return [k for k in group if k in keys]
    return []


def summarize_run(records: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Loss curve, final loss (mean of the logged losses over the last 10 % of the iterations),
    median seconds/iteration and the last value of each metric."""
    train = [r for r in records if 'loss' in r and 'iter' in r]
    iters = [r['iter'] for r in train]
    losses = [r['loss'] for r in train]
    out = dict(iters=iters, losses=losses, final_loss=None, sec_per_iter=None, metrics={})
    if train:
        last = max(iters)
        tail = [l for i, l in zip(iters, losses) if i > 0.9 * last] or losses[-1:]
        out['final_loss'] = sum(tail) / len(tail)
        times = sorted(r['time'] for r in train if 'time' in r)
        if times:
            out['sec_per_iter'] = times[len(times) // 2]
        out['last_iter'] = last
    for key in metrics:
        values = [r[key] for r in records if key in r]
        out['metrics'][key] = values[-1] if values else None
    return out


def collect(work_dir: str, settings: Sequence[str], seeds: Sequence[int],
            metrics: Optional[Sequence[str]] = None):
    """{setting: {seed: summary}} from the runs under ``work_dir`` and the metric keys used."""
    raw = {}
    for spec in settings:
        raw[spec] = {}
        for seed in seeds:
            path = newest_scalars(osp.join(work_dir, run_name(spec), f'seed_{seed}'))
            raw[spec][seed] = read_scalars(path) if path else None
    if not metrics:
        found = [r for per in raw.values() for r in per.values() if r]
        metrics = detect_metrics([x for recs in found for x in recs])
    runs = {spec: {seed: summarize_run(recs, metrics) for seed, recs in per.items() if recs}
            for spec, per in raw.items()}
    return runs, list(metrics)


# -------------------------------------------------------------------------------- training
def _stamp(child_text: str, seed: int, cfg_options: Sequence[str], threads=None) -> str:
    h = hashlib.sha256(child_text.encode())
    h.update(repr((seed, list(cfg_options), threads)).encode())
    return h.hexdigest()


def run_complete(run_dir: str, stamp: str, metric: Optional[str]) -> bool:
    try:
        with open(osp.join(run_dir, 'run.json')) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    if info.get('stamp') != stamp or info.get('returncode') != 0:
        return False
    path = newest_scalars(run_dir)
    if path is None:
        return False
    records = read_scalars(path)
    keys = [metric] if metric else [g[0] for g in KNOWN_METRICS]
    return any(k in r for r in records for k in keys)


def train_one(child: str, run_dir: str, seed: int, cfg_options: Sequence[str], stamp: str,
              threads: Optional[int]) -> float:
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), child, '--work-dir', run_dir,
           '--cfg-options', f'randomness.seed={seed}', *cfg_options]
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([HERE, REPO] + ([env['PYTHONPATH']]
                                                        if env.get('PYTHONPATH') else []))
    if threads:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(threads)
    env.setdefault('PYTHONWARNINGS', 'ignore')
    log_path = osp.join(run_dir, 'train.log')
    start = time.time()
    with open(log_path, 'w') as log:
        log.write(' '.join(cmd) + '\n\n')
        log.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    with open(osp.join(run_dir, 'run.json'), 'w') as f:
        json.dump(dict(stamp=stamp, seed=seed, cmd=cmd, returncode=proc.returncode,
                       seconds=round(seconds, 1), threads=threads), f, indent=1)
    if proc.returncode != 0:
        with open(log_path) as f:
            sys.stderr.write(''.join(f.readlines()[-30:]))
        raise RuntimeError(f'training failed (exit {proc.returncode}); log: {log_path}')
    return seconds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='mmdet/mmseg config (iteration-based)')
    p.add_argument('--optimizers', nargs='+', default=['fame', 'adamw'],
                   help=f'settings: {", ".join(DOC_SETTINGS)}; NAME:key=value overrides keys')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=None,
                   help='training iterations per run (schedule scaled to it); default: config')
    p.add_argument('--lr', type=float, default=None, help='lr of every adaptive setting')
    p.add_argument('--sgd-lr', type=float, default=0.01, help='lr of `sgd` (default 0.01)')
    p.add_argument('--sgd-wd', type=float, default=1e-4, help='L2 weight decay of `sgd`')
    p.add_argument('--work-dir', required=True, help='runs go to WORK_DIR/<setting>/seed_<S>')
    p.add_argument('--out', required=True,
                   help='output prefix: writes OUT.md, OUT.png, OUT.json')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='passed to every tools/train.py run (key=value)')
    p.add_argument('--data-root', default=None,
                   help="dataset root of the config's dataloaders (replaces the config's "
                   'data_root in the dataloaders and evaluator ann_file)')
    p.add_argument('--metric', nargs='+', default=None,
                   help='metric keys in scalars.json, first = primary (default: detected, '
                   'coco/bbox_mAP or mIoU)')
    p.add_argument('--reference', default='adamw',
                   help='setting the paired differences are taken against (default adamw, '
                   'else the first)')
    p.add_argument('--threads', type=int, default=None,
                   help='OMP_NUM_THREADS of each run (use 1 on a shared CPU: oversubscribed '
                   'threads slow training down many times over; results depend on it)')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs trained at the same time (default 1); e.g. --jobs 2 --threads 1 '
                   'on 2 cores')
    p.add_argument('--keep-checkpoints', action='store_true',
                   help="keep the config's checkpointing (default: no checkpoints saved)")
    p.add_argument('--title', default='')
    p.add_argument('--summary-only', action='store_true',
                   help='no training: tabulate and plot the runs already in --work-dir')
    p.add_argument('--rerun', action='store_true', help='retrain runs that look complete')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for spec in args.optimizers:
        parse_setting(spec)
    work_dir = osp.abspath(args.work_dir)
    out = osp.abspath(args.out)
    if out.endswith(('.md', '.png', '.json')):
        out = osp.splitext(out)[0]
    t_all = time.time()
    timing = {}
    if not args.summary_only:
        from mmengine.config import Config
        base_cfg = Config.fromfile(args.config, import_custom_modules=False)
        base_opt = dict(base_cfg.optim_wrapper.get('optimizer', {}))
        todo = {}  # run_dir -> (spec, child, seed, stamp); aliases share one run
        for spec in args.optimizers:
            name = run_name(spec)
            set_dir = osp.join(work_dir, name)
            os.makedirs(set_dir, exist_ok=True)
            child = osp.join(set_dir, f'{name}.py')
            text = child_config_text(
                args.config,
                optimizer_cfg(spec, base_opt, args.lr, args.sgd_lr, args.sgd_wd), base_cfg,
                args.iters, args.keep_checkpoints, args.data_root)
            with open(child, 'w') as f:
                f.write(text)
            for seed in args.seeds:
                run_dir = osp.join(set_dir, f'seed_{seed}')
                stamp = _stamp(text, seed, args.cfg_options, args.threads)
                metric = args.metric[0] if args.metric else None
                if run_dir in todo:
                    continue
                if not args.rerun and run_complete(run_dir, stamp, metric):
                    print(f'[compare] {spec} seed {seed}: done before, reused', flush=True)
                    continue
                todo[run_dir] = (spec, child, seed, stamp)

        def work(item):
            run_dir, (spec, child, seed, stamp) = item
            print(f'[compare] {spec} seed {seed}: training ...', flush=True)
            sec = train_one(child, run_dir, seed, args.cfg_options, stamp, args.threads)
            print(f'[compare] {spec} seed {seed}: {sec:.0f} s', flush=True)
            return f'{spec}/seed_{seed}', round(sec, 1)

        if args.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(args.jobs) as pool:
                timing.update(pool.map(work, todo.items()))
        else:
            timing.update(map(work, todo.items()))
        print(f'[compare] trained {len(todo)} runs in {time.time() - t_all:.0f} s', flush=True)
    runs, metrics = collect(work_dir, args.optimizers, args.seeds, args.metric)
    missing = [f'{s}/seed_{seed}' for s in args.optimizers for seed in args.seeds
               if seed not in runs.get(s, {})]
    if missing:
        print(f'[compare] no runs found for: {", ".join(missing)}', flush=True)
    runs = {s: per for s, per in runs.items() if per}
    if not runs:
        sys.exit(f'compare_optimizers: no finished runs under {work_dir}')
    seconds = {}
    for spec in runs:
        for seed in runs[spec]:
            try:
                with open(osp.join(work_dir, run_name(spec), f'seed_{seed}', 'run.json')) as f:
                    seconds[f'{spec}/seed_{seed}'] = json.load(f).get('seconds')
            except (OSError, ValueError):
                pass
    summary = write_outputs(runs, metrics, out, args.reference, args.title,
                            extra=dict(config=args.config, iters=args.iters, seeds=args.seeds,
                                       run_seconds=seconds,
                                       total_run_seconds=round(sum(
                                           v for v in seconds.values() if v), 1)),
                            describe=DOC_SETTINGS)
    print(open(out + '.md').read())
    print(f'[compare] wrote {out}.md, {out}.png, {out}.json '
          f'({time.time() - t_all:.0f} s this invocation)')
    return summary


if __name__ == '__main__':
    main()
