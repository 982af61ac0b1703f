"""An LR range test on mmengine, for any optimizer: a short run whose lr grows exponentially.

What mmengine has no tool for (Lightning's ``Tuner.lr_find``, fastai's ``lr_find``): the training
config becomes a sweep (:func:`range_test_config`): an ``IterBasedTrainLoop`` of ``num_iters``
iterations, mmengine's ``ExponentialLR`` taking every group's lr from ``start_lr`` to ``end_lr``
(``lr_mult`` ratios kept), no validation, no checkpoints, a log line per iteration, and
:class:`LRRangeTestHook`, which records each iteration's loss (averaged over the ranks, so every
rank sees the same curve and stops at the same iteration), smooths it, stops the loop once the
smoothed loss diverges, gives the model and optimizer back as they were, and writes the curve
(JSON, CSV), a plot (PNG) and the suggested lr with the rule that picked it.
"""
import copy
import csv
import json
import logging
import math
import os.path as osp
import time
from typing import List, Optional, Sequence, Tuple

import torch
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log

from mmfame.registry import HOOKS
from mmfame.runtime.runners import drop_custom_hooks

SMOOTHING = 0.98  # EMA factor of the loss (fastai, Lightning)
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this x its minimum (Lightning's threshold)
RULES = {
    'min/10': "the lr of the lowest smoothed loss / 10 (fastai's rule of thumb)",
    'steepest': "the steepest descent of the smoothed loss over log(lr) before its lowest point "
                "(Lightning's rule)",
}


def smooth(losses: Sequence[float], beta: float = SMOOTHING) -> List[float]:
    """Bias-corrected exponential moving average of ``losses``."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta**i))
    return out


def diverged(smoothed: Sequence[float], threshold: float = DIVERGENCE) -> bool:
    """Whether the last smoothed loss is not finite or above ``threshold`` x the lowest so far."""
    last = smoothed[-1]
    return not math.isfinite(last) or last > threshold * min(smoothed)


def suggest(lrs: Sequence[float], smoothed: Sequence[float], rule: str) -> Tuple[float, str]:
    """The lr ``rule`` (a key of :data:`RULES`) picks from the curve, and why, in words."""
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if len(finite) < 3:
        raise ValueError(f'{len(finite)} finite losses: too few to suggest an lr (raise '
                         '--num-iters or lower --start-lr)')
    if rule == 'min/10':
        best = min(finite, key=lambda i: smoothed[i])
        return lrs[best] / 10, (f'{RULES[rule]}: lowest smoothed loss {smoothed[best]:.4g} at lr '
                                f'{lrs[best]:.3g} (iteration {best + 1})')
    if rule == 'steepest':  # on the descent: after the first 10 %, up to the lowest loss
        low = min(finite, key=lambda i: smoothed[i])
        descent = [i for i in finite if i <= low]
        span = range(max(1, len(descent) // 10), len(descent) - 1)
        if not span:
            raise ValueError(f'the smoothed loss is lowest at iteration {low + 1}: no descent '
                             'before it to take the steepest point of (lower --start-lr)')
        slopes = {descent[j]: (smoothed[descent[j + 1]] - smoothed[descent[j - 1]])
                  / (math.log(lrs[descent[j + 1]]) - math.log(lrs[descent[j - 1]]))
                  for j in span}
        best = min(slopes, key=slopes.get)
        return lrs[best], (f'{RULES[rule]}: slope {slopes[best]:.3g} per e-fold of lr at lr '
                           f'{lrs[best]:.3g} (iteration {best + 1})')
    raise ValueError(f'rule={rule!r}: known rules are {", ".join(RULES)}')


def boundary_warning(lrs: Sequence[float], smoothed: Sequence[float],
                     threshold: float = DIVERGENCE) -> Optional[str]:
    """A warning where the smoothed loss is lowest in the last tenth of a sweep that did not
    diverge (by ``threshold``): the curve never turned up, so no rule saw where the lr stops
    helping."""
    finite = [i for i, s in enumerate(smoothed) if math.isfinite(s)]
    if not finite or diverged(smoothed, threshold):
        return None
    low = min(finite, key=lambda i: smoothed[i])
    if low < 0.9 * len(smoothed):
        return None
    return (f'the smoothed loss was still at its lowest near the end of the sweep (iteration '
            f'{low + 1} of {len(smoothed)}, lr {lrs[low]:.3g}): it never turned up, so the '
            'suggestion is where the sweep ended, not where the lr stops helping; raise --end-lr '
            'or read the curve before using it')


def range_test_config(cfg, *, start_lr: float, end_lr: float, num_iters: int, rule: str,
                      work_dir: str) -> None:
    """Turn a training config (in place) into the LR range test's run in ``work_dir``."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f'start_lr={start_lr!r}, end_lr={end_lr!r}: need 0 < start_lr < end_lr')
    if num_iters < 3:
        raise ValueError(f'num_iters={num_iters!r}: need at least 3 iterations to suggest an lr')
    if rule not in RULES:
        raise ValueError(f'rule={rule!r}: known rules are {", ".join(RULES)}')
    cfg.work_dir = work_dir
    cfg.resume = False  # a sweep starts from the config's weights (load_from), never resumes
    cfg.optim_wrapper.optimizer.lr = start_lr
    if cfg.get('auto_scale_lr'):  # the recorded lrs are the lrs trained with, unscaled
        cfg.auto_scale_lr.enable = False
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=num_iters,
                         val_interval=num_iters + 1)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    gamma = (end_lr / start_lr)**(1 / (num_iters - 1))
    cfg.param_scheduler = [dict(type='ExponentialLR', gamma=gamma, by_epoch=False, begin=0,
                                end=num_iters)]
    hooks = dict(cfg.get('default_hooks') or {})  # replaced, not merged (ConfigDict.update is)
    hooks.update(param_scheduler=dict(type='ParamSchedulerHook'),  # not a recipe's own lr hook
                 checkpoint=None, logger=dict(type='LoggerHook', interval=1))
    cfg.default_hooks = hooks
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    drop_custom_hooks(cfg, 'PreemptionHook')  # a sweep saves nothing, stopped or not
    cfg.custom_hooks.append(dict(type='mmfame.LRRangeTestHook', start_lr=start_lr, end_lr=end_lr,
                                 num_iters=num_iters, rule=rule))


@HOOKS.register_module()
class LRRangeTestHook(Hook):
    """Records the sweep of :func:`range_test_config`, stops it on divergence, writes its result.

    Runs before ``ParamSchedulerHook`` (priority LOW) steps the lr, so each loss is recorded with
    the lr it was trained at; the lr is ``start_lr`` times the first group's growth.
    """
    priority = 'NORMAL'

    def __init__(self, start_lr: float, end_lr: float, num_iters: int, rule: str = 'min/10',
                 smoothing: float = SMOOTHING, divergence: float = DIVERGENCE):
        self.start_lr, self.end_lr, self.num_iters = start_lr, end_lr, num_iters
        self.rule, self.smoothing, self.divergence = rule, smoothing, divergence
        self.lrs: List[float] = []
        self.losses: List[float] = []
        self.stopped = f'completed {num_iters} iterations'
        self.result: Optional[dict] = None

    def before_train(self, runner) -> None:
        self._saved = (copy.deepcopy(runner.model.state_dict()),
                       copy.deepcopy(runner.optim_wrapper.state_dict()))
        self._first_lr = runner.optim_wrapper.optimizer.param_groups[0]['lr']
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not isinstance(outputs, dict) or 'loss' not in outputs:
            raise KeyError("LRRangeTestHook: the model's train_step returned no 'loss' (got "
                           f'{sorted(outputs) if isinstance(outputs, dict) else outputs!r})')
        loss = torch.tensor([float(outputs['loss'])], dtype=torch.float64)
        all_reduce(loss, op='mean')  # every rank: the same curve, the same stop
        group = runner.optim_wrapper.optimizer.param_groups[0]
        self.lrs.append(self.start_lr * group['lr'] / self._first_lr)
        self.losses.append(loss.item())
        smoothed = smooth(self.losses, self.smoothing)
        runner.message_hub.update_scalar('train/smoothed_loss', smoothed[-1])
        if diverged(smoothed, self.divergence):
            self.stopped = (f'diverged at iteration {len(self.losses)} (lr {self.lrs[-1]:.3g}): '
                            f'smoothed loss {smoothed[-1]:.4g} > {self.divergence:g} x its '
                            f'minimum {min(smoothed):.4g}')
            runner.train_loop.stop_training = True

    def after_train(self, runner) -> None:
        model_state, optim_state = self._saved
        runner.model.load_state_dict(model_state)  # in-process callers get their model back
        runner.optim_wrapper.load_state_dict(optim_state)
        smoothed = smooth(self.losses, self.smoothing)
        suggestions = {}
        for rule in RULES:
            try:
                suggestions[rule] = suggest(self.lrs, smoothed, rule)
            except ValueError as e:  # written down, not raised: the curve is still worth having
                suggestions[rule] = (None, f'no suggestion: {e}')
        lr, why = suggestions[self.rule]
        warning = boundary_warning(self.lrs, smoothed, self.divergence)
        self.result = dict(
            suggested_lr=lr, rule=self.rule, why=why, warning=warning,
            suggestions={rule: value for rule, (value, _) in suggestions.items()},
            stopped=self.stopped, start_lr=self.start_lr, end_lr=self.end_lr,
            num_iters=self.num_iters, world_size=get_world_size(),
            seconds=round(time.perf_counter() - self._start, 2),
            optimizer=runner.optim_wrapper.optimizer.__class__.__name__,
            curve=[dict(iter=i + 1, lr=lr_, loss=loss, smoothed_loss=s) for i, (lr_, loss, s)
                   in enumerate(zip(self.lrs, self.losses, smoothed))])
        if is_main_process():
            write_result(self.result, runner.work_dir)
            picked = f'suggested lr {lr:.3g} ({why})' if lr else why
            print_log(f'LR range test: {self.stopped}; {picked}; curve and plot in '
                      f'{runner.work_dir}/lr_finder.{{json,csv,png}}', logger='current')
            if warning:
                print_log(f'LR range test: {warning}', logger='current', level=logging.WARNING)


def write_result(result: dict, out_dir: str) -> None:
    """``lr_finder.json`` (everything), ``lr_finder.csv`` (the curve), ``lr_finder.png``."""
    with open(osp.join(out_dir, 'lr_finder.json'), 'w') as f:
        json.dump(result, f, indent=1)
    with open(osp.join(out_dir, 'lr_finder.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['iter', 'lr', 'loss', 'smoothed_loss'])
        writer.writeheader()
        writer.writerows(result['curve'])
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print_log('matplotlib is not installed: no lr_finder.png', logger='current')
        return
    curve = result['curve']
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([c['lr'] for c in curve], [c['loss'] for c in curve], color='0.75', label='loss')
    ax.plot([c['lr'] for c in curve], [c['smoothed_loss'] for c in curve], label='smoothed loss')
    for rule, lr in result['suggestions'].items():
        if lr is None:
            continue
        ax.axvline(lr, linestyle='--' if rule == result['rule'] else ':', color='C3',
                   label=f'{rule}: {lr:.2g}' + (' (suggested)' if rule == result['rule'] else ''))
    finite = [c['smoothed_loss'] for c in curve if math.isfinite(c['smoothed_loss'])]
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), DIVERGENCE * min(finite)) * 1.1)
    ax.set(xscale='log', xlabel='learning rate', ylabel='training loss',
           title=f"LR range test ({result['optimizer']}, {len(curve)} iterations)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(osp.join(out_dir, 'lr_finder.png'), dpi=100)
    plt.close(fig)
