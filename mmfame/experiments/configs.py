"""What a run trains: shipped configs chosen by group, name or glob; named optimizer settings; and
the small child config each run is written as (its base config with only the optimizer, the budget
and the data root replaced).

Settings (:data:`SETTINGS`, the one place they are defined; ``docs/results.md``'s table is
:func:`settings_table`): ``lr``, weight decay, betas and eps come from the config's own optimizer
unless a setting overrides them (``NAME:key=value``, values are Python literals; a dotted key
sets that key of the run's config instead, as ``--cfg-options`` does:
``sgd:momentum=0.937:default_hooks.param_scheduler.warmup_bias_lr=0.1``); FAME's own decays are
read from :class:`mmfame.FAME`'s defaults.
"""
import ast
import copy
import difflib
import fnmatch
import glob
import os.path as osp
from typing import Callable, List, NamedTuple, Optional, Sequence

from mmfame.optim.fame import DEFAULTS as FAME_DEFAULTS

from .ablation import PRIVATE_NAME

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
GROUPS = {  # name -> glob of shipped configs (the demo group: the FAME configs, not their twins)
    'coco': 'configs/coco/*.py',
    'ade20k': 'configs/ade20k/*.py',
    'demo': 'configs/demo/*_fame_*.py',
    'mmyolo': 'configs/mmyolo/*_coco.py',  # the COCO recipes, not the demo-data one
}
B3, B4 = FAME_DEFAULTS['beta3'], FAME_DEFAULTS['beta4']


class Setting(NamedTuple):
    short: str  # the description in result tables
    doc: str  # the settings table's (docs/results.md)
    optimizer: Optional[Callable[[dict], dict]]  # the config's lr/betas/eps/wd -> optimizer dict
    options: Optional[dict] = None  # other config keys the setting sets (nested dicts)


SETTINGS = {
    'fame': Setting(f'FAME (beta3={B3}, beta4={B4}), decoupled wd',
                    f'FAME defaults: beta3 = {B3}, beta4 = {B4}, decoupled weight decay; lr, betas '
                    'and wd from the config', lambda c: dict(type='FAME', **c)),
    'fame-full': Setting(f'FAME + TEMA on v, sq_betas=({B3}, {B4})',
                         f'FAME with `sq_betas=({B3}, {B4})` (TEMA cascade on the second moment '
                         'too)', lambda c: dict(type='FAME', **c, sq_betas=(B3, B4))),
    'fame-authors': Setting("FAME as the authors' code runs it: eps 1e-5, L2 wd",
                            "FAME as its authors' code (2024) runs it: eps 1e-5, the weight decay "
                            f'as coupled L2, beta3 = {B3}, beta4 = {B4}; lr and the decay\'s value '
                            'are the config\'s', lambda c: dict(type='FAME', **dict(c, eps=1e-5),
                                                               beta3=B3, beta4=B4,
                                                               decoupled_weight_decay=False)),
    'adamw': Setting('torch AdamW', '`torch.optim.AdamW`, same lr / betas / wd',
                     lambda c: dict(type='AdamW', **c)),
    'adam': Setting('torch Adam, wd as L2', '`torch.optim.Adam`, same lr / betas; the config\'s '
                    'wd applied as **L2** (coupled)', lambda c: dict(type='Adam', **c)),
    'sgd': Setting('torch SGD, momentum 0.9, L2 wd', '`torch.optim.SGD`, lr 0.01, momentum 0.9, '
                   'L2 wd 1e-4 (not tuned)', None),  # its own lr and decay: optimizer_cfg
    'yolov5-sgd': Setting("mmyolo's YOLOv5 SGD recipe",
                          "mmyolo's YOLOv5 recipe: `torch.optim.SGD`, lr 0.01, momentum 0.937, "
                          'nesterov, L2 wd 5e-4 (scaled by `YOLOv5OptimizerConstructor`), the bias '
                          'lr warmed down from 0.1 (YOLOv5 configs only)',
                          lambda c: dict(type='SGD', lr=0.01, momentum=0.937, weight_decay=5e-4,
                                         nesterov=True),
                          options=dict(default_hooks=dict(
                              param_scheduler=dict(warmup_bias_lr=0.1)))),
    'ema': Setting('FAME beta3=beta4=0 (= AdamW)', 'FAME with beta3 = beta4 = 0: mathematically '
                   'AdamW, different floating-point operations',
                   lambda c: dict(type='FAME', **c, beta3=0.0, beta4=0.0)),
    'dema': Setting(f'2m1-m2, decay {B3} (ablation)',
                    f'2·m1 − m2, m2 = EMA of m1 with decay {B3} (tool-private optimizer)',
                    lambda c: dict(type=PRIVATE_NAME, **c, decays=(B3, ))),
    'tema': Setting('3m1-3m2+m3 (= fame)', '= `fame` (3·m1 − 3·m2 + m3); shares its runs',
                    lambda c: dict(type='FAME', **c)),
    'qema': Setting(f'4m1-6m2+4m3-m4, decays ({B3},{B4},{B4}) (ablation)',
                    f'4·m1 − 6·m2 + 4·m3 − m4, cascade decays ({B3}, {B4}, {B4}) — **this '
                    'project\'s choice**: no source gives the talk\'s QEMA decays (tool-private '
                    'optimizer)', lambda c: dict(type=PRIVATE_NAME, **c, decays=(B3, B4, B4))),
    'baseline': Setting('the upstream config, unchanged', 'the shipped config\'s upstream '
                        '`mmdet::`/`mmseg::` base, unchanged', None),
}
DOC_SETTINGS = {name: setting.short for name, setting in SETTINGS.items()}
ALIASES = {'tema': 'fame'}  # same optimizer config: runs are shared
ADAPTIVE_KEYS = ('lr', 'betas', 'eps', 'weight_decay')


# ---------------------------------------------------------------------------------- configs
def select_configs(specs: Sequence[str], repo: str = REPO) -> List[str]:
    """Shipped configs named by groups (``coco``, ``ade20k``, ``demo``), file names or stems,
    paths, or globs over those, repository-relative; any other existing config file by its path.
    In the order given, each once."""
    shipped = sorted(osp.relpath(p, repo) for p in glob.glob(osp.join(repo, 'configs', '*', '*.py')))
    stems = {osp.splitext(osp.basename(p))[0]: p for p in shipped}
    chosen = []
    for spec in specs:
        if spec in GROUPS:
            found = sorted(osp.relpath(p, repo) for p in glob.glob(osp.join(repo, GROUPS[spec])))
        elif osp.isfile(spec):
            path = osp.abspath(spec)
            found = [osp.relpath(path, repo) if path.startswith(repo + osp.sep) else path]
        else:
            name = osp.splitext(osp.basename(spec))[0]
            found = [p for p in shipped if fnmatch.fnmatch(p, spec) or
                     fnmatch.fnmatch(osp.splitext(osp.basename(p))[0], name)]
        if not found:
            near = difflib.get_close_matches(osp.splitext(osp.basename(spec))[0], stems, n=3)
            raise ValueError(
                f'no shipped config matches {spec!r}: use a group ({", ".join(GROUPS)}), a config '
                f'name or path under configs/, or a glob'
                + (f'; did you mean {", ".join(near)}?' if near else ''))
        chosen.extend(p for p in found if p not in chosen)
    return chosen


def config_stem(config: str) -> str:
    return osp.splitext(osp.basename(config))[0]


def load_config(path: str):
    """``Config.fromfile`` of a path or of an installed package's ``mmdet::``/``mmseg::`` config
    (found in the package's ``.mim/configs``; nothing is installed), without custom imports."""
    from mmengine.config import Config
    if '::' in path:
        from mmengine.utils import get_installed_path
        package, rel = path.split('::', 1)
        try:
            found = osp.join(get_installed_path(package), '.mim', 'configs', rel)
        except Exception:  # mmengine raises its own errors for a package that is not installed
            found = None
        if found is None or not osp.isfile(found):
            raise ValueError(f'{path}: no such config in the installed {package} '
                             f'(pip install {package} at the version the configs name)')
        path = found
    return Config.fromfile(path, import_custom_modules=False)


# --------------------------------------------------------------------------------- settings
def parse_setting(spec: str):
    """``'sgd:lr=0.02:weight_decay=0'`` -> ('sgd', {'lr': 0.02, 'weight_decay': 0})."""
    name, *pairs = spec.split(':')
    if name not in DOC_SETTINGS:
        raise ValueError(f'unknown setting {name!r}; known: {", ".join(DOC_SETTINGS)}')
    overrides = {}
    for pair in pairs:
        if '=' not in pair:
            raise ValueError(f'setting {spec!r}: expected key=value after ":", got {pair!r}')
        key, value = pair.split('=', 1)
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    if name == 'baseline' and overrides:
        raise ValueError(f'setting {spec!r}: the baseline is the upstream config unchanged; '
                         'it takes no key=value overrides')
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
    if name == 'sgd':
        cfg = dict(type='SGD', lr=sgd_lr, momentum=0.9, weight_decay=sgd_wd)
    elif SETTINGS[name].optimizer is None:
        raise ValueError(f'setting {name!r} does not replace the optimizer')
    else:
        cfg = SETTINGS[name].optimizer(common)
    cfg.update((k, v) for k, v in overrides.items() if '.' not in k)
    return dict(_delete_=True, **cfg)


def setting_options(spec: str) -> dict:
    """The config keys a setting sets besides its optimizer, its own and its dotted overrides',
    nested: ``'sgd:a.b=1'`` -> ``{'a': {'b': 1}}``."""
    name, overrides = parse_setting(spec)
    nested = copy.deepcopy(SETTINGS[name].options or {})
    for key, value in overrides.items():
        if '.' in key:
            *parents, leaf = key.split('.')
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return nested


def settings_table() -> str:
    """The markdown table of the settings (docs/results.md)."""
    aliases = {target: name for name, target in ALIASES.items()}
    rows = [f'| `{name}`' + (f' (= `{aliases[name]}`)' if name in aliases else '')
            + f' | {setting.doc} |' for name, setting in SETTINGS.items()
            if name not in ALIASES and name != 'baseline']
    return '\n'.join(['| setting | optimizer |', '|---|---|', *rows]) + '\n'


def run_name(spec: str) -> str:
    """Folder name of a setting's runs (aliases share their target's runs)."""
    name = ALIASES.get(spec, spec)
    return ''.join(c if c.isalnum() or c in '-_.=' else '_' for c in name)


# ---------------------------------------------------------------------------- child configs
def scale_schedulers(schedulers, base_iters: int, iters: int):
    """An iteration-based param_scheduler with begin/end/T_max scaled by ``iters / base_iters``
    (warm-up and decay keep their proportions)."""
    single = isinstance(schedulers, dict)
    out = []
    for sch in ([schedulers] if single else list(schedulers or [])):
        sch = dict(sch)
        if sch.get('by_epoch', True) and not sch.get('convert_to_iter_based', False):
            raise ValueError(f'an iteration budget needs iteration-based schedulers, got {sch}')
        for key in ('begin', 'end', 'T_max'):
            if isinstance(sch.get(key), (int, float)) and sch[key] < 10**8:
                sch[key] = int(round(sch[key] * iters / base_iters))
        if 'begin' in sch and 'end' in sch and sch['end'] <= sch['begin']:
            sch['end'] = sch['begin'] + 1
        out.append(sch)
    return out[0] if single else out


def budget_lines(base_cfg, iters: int) -> List[str]:
    """Config lines that make a run ``iters`` iterations long, validated at the end.

    An iteration-based schedule is scaled to the new length. An epoch-based one (mmdet's 1x)
    becomes an ``IterBasedTrainLoop`` with a linear warm-up over the first 10 %: a smoke-run
    budget, not a shortened recipe.
    """
    base_iters = int(base_cfg.train_cfg.get('max_iters', 0) or 0)
    if base_iters:
        lines = [f'train_cfg = dict(max_iters={iters}, val_interval={iters})']
        if base_cfg.get('param_scheduler') is not None:
            sched = scale_schedulers(base_cfg.param_scheduler, base_iters, iters)
            lines.append(f'param_scheduler = {_plain(sched)!r}')
        return lines
    warmup = max(1, iters // 10)
    return [
        f"train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters}, "
        f'val_interval={iters})',
        f"param_scheduler = [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, "
        f'end={warmup})]',
        'log_processor = dict(by_epoch=False)',
    ]


def child_config_text(base: str, base_cfg, optimizer: Optional[dict] = None,
                      iters: Optional[int] = None, checkpoint_interval: Optional[int] = None,
                      data_root: Optional[str] = None, imports: bool = True,
                      options: Optional[dict] = None,
                      written_by: str = 'mmfame.experiments') -> str:
    """A child config of ``base`` (a path or an ``mmdet::``/``mmseg::`` name).

    ``optimizer`` replaces the optimizer (clip_grad, paramwise_cfg and constructor are kept);
    ``iters`` sets an iteration budget (:func:`budget_lines`, logging at least every tenth of
    it); ``checkpoint_interval`` saves every
    that many iterations (keeping 2, the last always), ``0`` saves none (metrics are logged);
    ``data_root`` moves the dataloaders and evaluators; ``imports`` adds ``mmfame`` (and the
    ablation optimizers where the optimizer needs them) to ``custom_imports``; ``options`` (nested
    dicts, :func:`setting_options`) are merged into the config.
    """
    base = base if '::' in base else osp.abspath(base)
    lines = [f'# Written by {written_by}: the config below with only what follows replaced.',
             f'_base_ = {base!r}', '']
    if imports:
        names = list(base_cfg.get('custom_imports', {}).get('imports', []) or [])
        wanted = ['mmfame'] + (['mmfame.experiments.register_ablation']
                               if optimizer and optimizer.get('type') == PRIVATE_NAME else [])
        names += [m for m in wanted if m not in names]
        lines.append(f'custom_imports = dict(imports={names!r}, allow_failed_imports=False)')
    if optimizer is not None:
        lines.append(f'optim_wrapper = dict(optimizer={optimizer!r})')
    options = dict(options or {})
    hooks = dict(options.pop('default_hooks', {}))
    if iters is not None:
        lines.extend(budget_lines(base_cfg, iters))
        interval = base_cfg.get('default_hooks', {}).get('logger', {}).get('interval', 50)
        hooks['logger'] = dict(type='LoggerHook', interval=max(1, min(interval, iters // 10)))
    if checkpoint_interval == 0:  # metrics are logged; no weights needed
        hooks['checkpoint'] = dict(type='CheckpointHook', by_epoch=False, interval=-1,
                                   save_last=False)
    elif checkpoint_interval is not None:
        hooks['checkpoint'] = dict(type='CheckpointHook', by_epoch=False,
                                   interval=checkpoint_interval, max_keep_ckpts=2, save_last=True)
    if hooks:
        lines.append(f'default_hooks = {hooks!r}')
    lines.extend(f'{key} = {value!r}' for key, value in options.items())
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
