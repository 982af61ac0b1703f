"""From an OpenMMLab training recipe to FAME: the rules the shipped configs were written by.

:func:`convert` reads a recipe's loaded config (mmdet, mmseg, mmyolo, mmpretrain; SGD, AdamW or
Adam; the default, layer-decay or YOLOv5 constructor) and returns the FAME delta over it, with
each rule it applied and why; :func:`render` writes that delta as a short ``_base_`` config.
Converting the upstream base of every shipped FAME config gives back that config's optimizer,
constructor, schedulers and hooks (``tests/test_recipe.py``). What no rule here covers (another
optimizer or constructor, a scheduler whose absolute values cannot be rescaled, a momentum
scheduler) raises :class:`RecipeError` naming the key, its value and what to do instead.

The delta keeps its learning rate in one top-level ``base_lr`` (as mmdet's YOLOX and RTMDet
configs do), and writes every absolute lr floor as a ratio of it, so :func:`write_lr` (the LR
range test's ``--apply``) changes the lr and its floors with one line.
"""
import math
import os
import os.path as osp
import re
from typing import Any, List, NamedTuple, Optional

from mmfame.optim.fame import DEFAULTS

__all__ = ['RecipeError', 'Conversion', 'convert', 'render', 'write_lr', 'differences',
           'BASE_LR', 'COMPARED']

BASE_LR = 'base_lr'
FAME_KEYS = dict(betas=DEFAULTS['betas'], beta3=DEFAULTS['beta3'], beta4=DEFAULTS['beta4'],
                 eps=DEFAULTS['eps'])
HOOKS = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
COMPARED = ('optim_wrapper', 'optimizer', 'param_scheduler', 'default_hooks', 'custom_hooks',
            'custom_imports', 'train_dataloader.collate_fn')  # what a conversion decides


class SGDRule(NamedTuple):
    lr: float
    ref_batch: Optional[int]  # the lr is scaled linearly from this total batch; None: not scaled
    weight_decay: float  # decoupled, effective
    paramwise_cfg: dict  # added where the recipe has none
    why: str


SGD_RULES = {  # from an SGD recipe, per package (and for mmdet, pre-trained or from scratch)
    'mmdet': SGDRule(
        1e-4, 16, 0.05, dict(norm_decay_mult=0., bypass_duplicate=True),
        "mmdet's own AdamW recipes for ImageNet-pre-trained detectors (resnet_strikes_back, "
        'Swin-T Mask R-CNN, DINO): lr 1e-4 at a total batch of 16, decoupled wd 0.05, no decay '
        'on norm layers'),
    'mmdet-scratch': SGDRule(
        4e-3, 256, 0.05, dict(norm_decay_mult=0., bias_decay_mult=0., bypass_duplicate=True),
        "mmdet's own AdamW recipe for a one-stage detector trained from scratch (RTMDet): lr "
        '0.004 at a total batch of 256, decoupled wd 0.05, no decay on norms and biases'),
    'mmseg': SGDRule(
        1e-4, None, 0.01, dict(norm_decay_mult=0.),
        "lr 1e-4, the FAME authors' lr for DeepLabV3+; decoupled wd 0.01, mmseg's AdamW ADE20K "
        'recipes (SegFormer, Swin and ViT UperNet), no decay on norm layers'),
    'mmyolo': SGDRule(
        1e-3, None, 0.05, {},
        "YOLOv5's own lr0 for Adam (its hyp files: SGD=1E-2, Adam=1E-3); an effective decoupled "
        'wd of 0.05 (SGD\'s 5e-4 as decoupled decay would be almost none)'),
}
WARMUP = dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500)
WARMUP_TYPES = ('LinearLR', 'QuadraticWarmupLR')
FACTOR_SCHEDULERS = ('LinearLR', 'ConstantLR', 'MultiStepLR', 'StepLR', 'ExponentialLR',
                     'QuadraticWarmupLR')  # they scale each group's own lr: nothing to rescale
ABSOLUTE_KEYS = {'PolyLR': 'eta_min', 'CosineAnnealingLR': 'eta_min',
                 'CosineRestartLR': 'eta_min', 'OneCycleLR': 'eta_max'}  # absolute lr values
KEPT_CONSTRUCTORS = ('DefaultOptimWrapperConstructor', 'YOLOv5OptimizerConstructor',
                     'LearningRateDecayOptimWrapperConstructor', 'FAMEOptimWrapperConstructor')
MMSEG_DECAY_CONSTRUCTORS = ('LayerDecayOptimizerConstructor',
                            'LearningRateDecayOptimizerConstructor')


class RecipeError(ValueError):
    """A recipe no rule converts: the message names the key, the value and the way out."""


class Expr(str):
    """Config text written as is (``base_lr * 0.05``), not as a literal."""

    def __repr__(self):
        return str(self)


class Conversion(NamedTuple):
    base: str  # the delta's _base_
    keys: dict  # top-level key -> value (dicts merge into the base's, as in any delta config)
    rules: List[str]  # what was changed and why, in order
    lr: float  # the FAME lr (the value of base_lr)


def _type(cfg) -> str:
    name = cfg.get('type', '') if isinstance(cfg, dict) else ''
    return name if isinstance(name, str) else getattr(name, '__name__', str(name))


def _bare(name: str) -> str:
    return name.rsplit('.', 1)[-1]


def _round(x: float) -> float:
    return float(f'{x:.6g}')


def _pretrained(cfg) -> bool:
    model = cfg.get('model', {})
    inits = [model.get('init_cfg'), model.get('backbone', {}).get('init_cfg')]
    return bool(cfg.get('load_from') or model.get('pretrained') or any(
        isinstance(i, dict) and i.get('type') == 'Pretrained' for i in inits))


def total_batch(cfg, name: str, gpus: Optional[int]) -> int:
    """The recipe's total batch: ``gpus`` x its per-GPU batch, else the ``{N}xb{B}`` of its file
    name (OpenMMLab's convention), else ``auto_scale_lr.base_batch_size``."""
    per_gpu = cfg.get('train_dataloader', {}).get('batch_size')
    if gpus and per_gpu:
        return gpus * per_gpu
    found = re.search(r'(\d+)xb(\d+)', osp.basename(name))
    if found:
        return int(found.group(1)) * int(found.group(2))
    base = cfg.get('auto_scale_lr', {}).get('base_batch_size')
    if base:
        return int(base)
    raise RecipeError(f'{name}: cannot tell the total batch size (no NxbB in the file name, no '
                      'auto_scale_lr.base_batch_size): pass --gpus N')


def _sgd_rule(cfg, scope: str) -> tuple:
    key = scope
    if scope == 'mmdet' and not _pretrained(cfg):
        key = 'mmdet-scratch'
    if key not in SGD_RULES:
        raise RecipeError(
            f"optim_wrapper.optimizer.type='SGD' in a {scope or 'unscoped'} recipe: no rule gives "
            f'its FAME lr and weight decay (rules exist for {", ".join(SGD_RULES)}): pass --lr '
            'and --weight-decay')
    return key, SGD_RULES[key]


def _constructor(wrapper, rules) -> dict:
    """The optim_wrapper keys the constructor needs (none when it is kept)."""
    name = wrapper.get('constructor') or 'DefaultOptimWrapperConstructor'
    if _bare(name) in KEPT_CONSTRUCTORS:
        return {}
    if _bare(name) in MMSEG_DECAY_CONSTRUCTORS:
        pw = wrapper.get('paramwise_cfg', {})
        decay = dict(_delete_=True, decay_rate=pw['layer_decay_rate'],
                     decay_type=pw.get('decay_type', 'layer_wise'), num_layers=pw['num_layers'])
        rules.append(f"constructor: mmseg's {_bare(name)} -> FAMEOptimWrapperConstructor with "
                     f'decay_rate={decay["decay_rate"]}, num_layers={decay["num_layers"]}: the '
                     'same per-parameter lrs, and pos_embed / cls_token really get no decay '
                     '(mmseg compares the full parameter name with them and never matches)')
        return dict(constructor='FAMEOptimWrapperConstructor', paramwise_cfg=decay)
    raise RecipeError(
        f'optim_wrapper.constructor={name!r}: no rule converts it (known: '
        f'{", ".join(KEPT_CONSTRUCTORS + MMSEG_DECAY_CONSTRUCTORS)}). A constructor that builds '
        'the optimizer from its type works with FAME as it is: write '
        "optimizer=dict(type='FAME', ...) by hand, or convert with a known constructor")


def _schedulers(schedulers, old_lr: float, from_sgd: bool, rules: List[str]):
    """The recipe's lr schedulers for FAME, or None when they stay as they are."""
    out, changed = [], False
    for i, sch in enumerate(schedulers or []):
        name = _bare(_type(sch))
        if 'Momentum' in name or sch.get('param_name', 'lr') != 'lr':
            raise RecipeError(
                f'param_scheduler[{i}].type={_type(sch)!r} schedules momentum, which FAME does '
                'not have (its betas are fixed): remove that scheduler before converting')
        sch = {k: v for k, v in sch.items() if k != '_scope_'}  # written in the delta's scope
        key = ABSOLUTE_KEYS.get(name)
        if key and sch.get(key) and f'{key}_ratio' not in sch:
            ratio = _round(sch[key] / old_lr)
            rules.append(f'param_scheduler[{i}] {name}.{key}={sch[key]:g} is an absolute lr '
                         f'({ratio:g} x the recipe\'s lr): written as {BASE_LR} * {ratio:g}')
            sch[key] = Expr(f'{BASE_LR} * {ratio!r}')
            changed = True
        elif name not in FACTOR_SCHEDULERS and not key:
            raise RecipeError(
                f'param_scheduler[{i}].type={_type(sch)!r}: no rule says whether it holds '
                f'absolute lr values (known: {", ".join(FACTOR_SCHEDULERS + tuple(ABSOLUTE_KEYS))})'
                ': convert without it, then add it back with FAME-scale values')
        out.append(sch)
    if from_sgd and out and _bare(_type(out[0])) not in WARMUP_TYPES:
        for sch in out:
            if not sch.get('by_epoch', True) and sch.get('begin', 0) == 0:
                sch['begin'] = WARMUP['end']
        out.insert(0, dict(WARMUP))
        rules.append("param_scheduler: the recipe has no warm-up; an Adam-type optimizer gets "
                     "mmseg's AdamW recipes' 1500-iteration linear warm-up, and iteration-based "
                     'schedulers that began at 0 begin after it')
        changed = True
    return out if changed else None


def _from_sgd(cfg, base, scope, lr, weight_decay, gpus, rules):
    """FAME's optimizer dict, optim_wrapper keys and lr for an SGD recipe."""
    wrapper = cfg.optim_wrapper
    old = wrapper.optimizer
    name, rule = _sgd_rule(cfg, scope) if lr is None or weight_decay is None else (None, None)
    if lr is not None:
        rules.append(f'lr {lr:g}: given (--lr)')
    elif rule.ref_batch:
        batch = total_batch(cfg, base, gpus)
        lr = _round(rule.lr * batch / rule.ref_batch)
        rules.append(f'lr {lr:g}: {rule.lr:g} x total batch {batch} / {rule.ref_batch}, from '
                     f'{rule.why}')
    else:
        lr = rule.lr
        rules.append(f'lr {lr:g}: {rule.why}')
    wd = weight_decay
    if wd is not None:
        rules.append(f'weight_decay {wd:g}, decoupled: given (--weight-decay)')
    else:
        wd = rule.weight_decay if old.get('weight_decay') else 0.0
        rules.append(f'weight_decay {wd:g}, decoupled: '
                     + (f'{name} rule' if wd else "the recipe's is 0, kept"))
    optimizer = dict(_delete_=True, type='FAME', lr=Expr(BASE_LR), **FAME_KEYS, weight_decay=wd)
    rules.append("optimizer: replaced (_delete_), so SGD's momentum / nesterov cannot reach "
                 "FAME; betas, beta3, beta4, eps written out at FAME's defaults")
    if 'batch_size_per_gpu' in old:  # YOLOv5OptimizerConstructor scales the decay by batch
        batch = total_batch(cfg, base, gpus)
        scale = batch * max(round(64 / batch), 1) / 64
        optimizer['weight_decay'] = _round(wd / scale)
        optimizer['batch_size_per_gpu'] = old['batch_size_per_gpu']
        rules.append(f'weight_decay written as {optimizer["weight_decay"]:g}: '
                     f'YOLOv5OptimizerConstructor multiplies it by {scale:g} (total batch '
                     f'{batch} / 64, with its accumulation) and gives it to conv weights only')
    wrapper_keys = {}
    if wd and not wrapper.get('paramwise_cfg') and rule and rule.paramwise_cfg:
        wrapper_keys['paramwise_cfg'] = dict(rule.paramwise_cfg)
        rules.append(f'paramwise_cfg {rule.paramwise_cfg}: {name} rule')
    return optimizer, wrapper_keys, lr


def _from_adam(cfg, base, scope, lr, weight_decay, gpus, rules):
    """FAME's optimizer dict, optim_wrapper keys and lr for an AdamW or Adam recipe: the type
    changes, everything else is inherited."""
    old = cfg.optim_wrapper.optimizer
    kind = _bare(_type(old))
    optimizer = dict(type='FAME', lr=Expr(BASE_LR))
    given = lr is not None
    lr = lr if given else old.get('lr', DEFAULTS['lr'])
    rules.append(f'optimizer: {kind} -> FAME, keeping its weight decay, betas, eps, clip_grad '
                 f'and paramwise_cfg; lr {lr:g}' + (' (given, --lr)' if given else ' kept'))
    if weight_decay is not None:
        optimizer['weight_decay'] = weight_decay
        rules.append(f'weight_decay {weight_decay:g}: given (--weight-decay)')
    if kind == 'Adam' and (weight_decay or old.get('weight_decay')):
        optimizer['decoupled_weight_decay'] = False
        rules.append("decoupled_weight_decay=False: Adam's weight_decay is L2 (coupled)")
    return optimizer, {}, lr


def convert(cfg, base: str, *, lr: Optional[float] = None,
            weight_decay: Optional[float] = None, gpus: Optional[int] = None) -> Conversion:
    """The FAME delta over the loaded recipe ``cfg``, written over ``base`` (its ``_base_``).
    ``lr`` / ``weight_decay`` replace the rules' values; ``gpus`` sets the total batch."""
    scope = base.split('::', 1)[0] if '::' in base else (cfg.get('default_scope') or '')
    wrapper = cfg.get('optim_wrapper')
    if not isinstance(wrapper, dict) or not isinstance(wrapper.get('optimizer'), dict):
        raise RecipeError(f'{base}: optim_wrapper.optimizer is missing: not a training recipe')
    old = dict(wrapper['optimizer'])
    kind = _bare(_type(old))
    rules, keys = [], {}
    if kind not in ('SGD', 'AdamW', 'Adam'):
        raise RecipeError(
            f'optim_wrapper.optimizer.type={_type(old)!r}: the converter knows SGD, AdamW and '
            "Adam recipes; write optimizer=dict(type='FAME', lr=..., weight_decay=...) by hand "
            '(docs/openmmlab.md)' + (' — this recipe is FAME already' if kind == 'FAME' else ''))
    constructor_keys = _constructor(wrapper, rules)
    imports = cfg.get('custom_imports', {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    keys['custom_imports'] = dict(imports=imports + ['mmfame'] * ('mmfame' not in imports),
                                  allow_failed_imports=False)
    convert_optimizer = _from_sgd if kind == 'SGD' else _from_adam
    optimizer, wrapper_keys, new_lr = convert_optimizer(cfg, base, scope, lr, weight_decay, gpus,
                                                        rules)
    wrapper_keys.update(constructor_keys)
    top = cfg.get('optimizer')
    if isinstance(top, dict) and top == wrapper['optimizer']:
        keys['optimizer'] = optimizer
        keys['optim_wrapper'] = dict(optimizer=Expr('optimizer'), **wrapper_keys)
        rules.append('top-level optimizer: the dict optim_wrapper.optimizer was built from, '
                     'switched too, so no stale optimizer is left in the config')
    else:
        keys['optim_wrapper'] = dict(optimizer=optimizer, **wrapper_keys)
    schedulers = _schedulers(cfg.get('param_scheduler'), old.get('lr', new_lr), kind == 'SGD',
                             rules)
    if schedulers is not None:
        keys['param_scheduler'] = schedulers
    hook = cfg.get('default_hooks', {}).get('param_scheduler', {})
    bias_lr = hook.get('warmup_bias_lr', 0.1)  # 0.1: YOLOv5ParamSchedulerHook's default
    if _bare(_type(hook)) == 'YOLOv5ParamSchedulerHook' and kind == 'SGD' and bias_lr:
        keys['default_hooks'] = dict(param_scheduler=dict(warmup_bias_lr=0.0))
        rules.append(f'YOLOv5ParamSchedulerHook.warmup_bias_lr {bias_lr:g} -> 0: an absolute '
                     f"bias lr ({bias_lr / old['lr']:g} x SGD's lr); the bias lr warms up from 0 "
                     'like the others')
    collate = cfg.get('train_dataloader', {}).get('collate_fn')
    if scope == 'mmyolo' and isinstance(collate, dict) and '_scope_' in collate:
        keys['train_dataloader'] = dict(collate_fn=dict(_delete_=True, type=collate['type']))
        rules.append(f"train_dataloader.collate_fn: {collate['type']} redefined without the "
                     "_scope_ key mmengine adds to an mmyolo:: base's dicts, which the Runner "
                     'would pass to the function as a keyword')
    hooks = cfg.get('custom_hooks') or []
    missing = [h for h in HOOKS if _bare(h['type']) not in {_bare(_type(x)) for x in hooks}]
    if missing:
        keys['custom_hooks'] = Expr('_base_.custom_hooks + ' + _fmt(missing)) if hooks else missing
        rules.append('custom_hooks: mmfame.PreemptionHook (checkpoint on a stop signal) and '
                     'mmfame.WeightsOnlyLoadHook (resume under torch >= 2.6)')
    return Conversion(base, keys, rules, float(new_lr))


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        if all(isinstance(k, str) and k.isidentifier() for k in value):
            return f'dict({", ".join(f"{k}={_flat(v)}" for k, v in value.items())})'
        return '{' + ', '.join(f'{k!r}: {_flat(v)}' for k, v in value.items()) + '}'
    if isinstance(value, list):
        return '[' + ', '.join(_flat(v) for v in value) + ']'
    return repr(value)


def _fmt(value: Any, indent: int = 0) -> str:
    """Config text of ``value``: on one line where it fits in 96 columns, else one item a line."""
    flat = _flat(value)
    if len(flat) + indent <= 96 or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = ' ' * (indent + 4)
    if isinstance(value, list):
        items, open_, close = [_fmt(v, indent + 4) for v in value], '[', ']'
    elif all(isinstance(k, str) and k.isidentifier() for k in value):
        items = [f'{k}={_fmt(v, indent + 4)}' for k, v in value.items()]
        open_, close = 'dict(', ')'
    else:
        items = [f'{k!r}: {_fmt(v, indent + 4)}' for k, v in value.items()]
        open_, close = '{', '}'
    return open_ + '\n' + ''.join(f'{pad}{i},\n' for i in items) + ' ' * indent + close


def render(conversion: Conversion, source: str) -> str:
    """The delta config's text: the rules as comments, then ``_base_`` and the keys."""
    lines = [f'# FAME delta over {source}, written by tools/analysis_tools/convert_recipe.py.',
             '# Rules applied:']
    lines += [f'# - {r}' for r in conversion.rules]
    lines += ['', f'_base_ = {conversion.base!r}', '']
    for key, value in conversion.keys.items():
        lines.append(f'{key} = {_fmt(value)}')
        if key == 'custom_imports':
            lines.append(f'{BASE_LR} = {conversion.lr!r}')
    return '\n'.join(lines) + '\n'


_LR_LINE = re.compile(rf'^{BASE_LR} = [^\n]*$', re.M)


def check_lr_line(path: str) -> str:
    """The text of ``path`` if it has the one ``base_lr = ...`` line :func:`write_lr` sets."""
    with open(path) as f:
        text = f.read()
    found = _LR_LINE.findall(text)
    if len(found) != 1:
        raise RecipeError(f'{path}: expected one line "{BASE_LR} = ..." (as convert_recipe.py '
                          f'writes), found {len(found)}: set the lr by hand')
    return text


def write_lr(path: str, lr: float, why: str) -> None:
    """Set the ``base_lr = ...`` line of a delta config written by :func:`render` (its absolute
    lr floors follow, being written as ratios of it)."""
    text = check_lr_line(path)
    if not (math.isfinite(lr) and lr > 0):
        raise RecipeError(f'lr={lr!r}: not a positive finite learning rate')
    text = _LR_LINE.sub(f'{BASE_LR} = {_round(lr)!r}  # {why}', text)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _get(cfg, dotted: str):
    for key in dotted.split('.'):
        cfg = cfg.get(key) if hasattr(cfg, 'get') else None
    return cfg


def _diff(got, want, where: str) -> List[str]:
    if isinstance(want, dict) and isinstance(got, dict):  # _scope_: where mmengine read a dict
        got, want = ({k: v for k, v in d.items() if k != '_scope_'} for d in (got, want))
        if set(got) != set(want):
            return [f'{where}: keys {sorted(got)} != {sorted(want)}']
        return [d for k in want for d in _diff(got[k], want[k], f'{where}.{k}')]
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(want):
            return [f'{where}: {got!r} != {want!r}']
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _diff(g, w, f'{where}[{i}]')]
    if isinstance(want, float) or isinstance(got, float):
        same = isinstance(got, (int, float)) and isinstance(want, (int, float)) and math.isclose(
            got, want, rel_tol=1e-9)
        return [] if same else [f'{where}: {got!r} != {want!r}']
    return [] if got == want else [f'{where}: {got!r} != {want!r}']


def differences(got, want, keys=COMPARED) -> List[str]:
    """Where two loaded configs differ in ``keys`` (dotted): floats compared to 1e-9, the
    ``_scope_`` mmengine adds to a base's dicts ignored."""
    return [d for key in keys for d in _diff(_get(got, key), _get(want, key), key)]
