"""What a work dir trains: a matrix of runs (configs x settings x seeds), each run's folder and
child config.

Layout: ``<work_dir>/matrix.json`` (what the matrix is) and per run its child config
``<work_dir>/<config stem>/<setting>/seed_<S>.py``
(:func:`mmfame.experiments.configs.child_config_text`; beside the run's folder, because the Runner
dumps the expanded config into its work dir under the config's file name) and its folder
``<work_dir>/<config stem>/<setting>/seed_<S>/``, whose records :mod:`.state` reads.
"""
import json
import os
import os.path as osp
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from .configs import (REPO, child_config_text, config_stem, load_config, optimizer_cfg,
                      parse_setting, run_name, setting_options)

__all__ = ['DATASETS', 'Matrix', 'Run', 'child_path', 'child_text', 'prepare', 'run_dir',
           'write_json']

DATASETS = {'mmdet': 'coco', 'mmseg': 'ade20k', 'mmyolo': 'coco'}  # default_scope -> --data-root


def write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON under ``path``, whole or not at all (mmfame's atomic write)."""
    from mmfame.runtime.protocol import write_atomic
    write_atomic(path, json.dumps(obj, indent=1).encode())


@dataclass(frozen=True)
class Run:
    config: str  # repository-relative shipped config
    setting: str
    seed: int

    @property
    def key(self) -> str:
        return f'{config_stem(self.config)}/{run_name(self.setting)}/seed_{self.seed}'

    @property
    def job_name(self) -> str:
        return f'{config_stem(self.config)}.{run_name(self.setting)}.s{self.seed}'


@dataclass
class Matrix:
    """What a work dir trains: every config with every setting and seed, with one budget."""
    configs: List[str]
    settings: List[str]
    seeds: List[int]
    quick: Optional[int] = None  # iteration budget of a smoke run; None: the configs' schedules
    cfg_options: List[str] = field(default_factory=list)  # passed to every run's train.py
    data_roots: Dict[str, str] = field(default_factory=dict)  # 'coco'/'ade20k' -> dataset root
    amp: bool = False  # train.py --amp (fp16 with a dynamic loss scale) for every run

    def __post_init__(self):
        for spec in self.settings:
            parse_setting(spec)
        unknown = set(self.data_roots) - set(DATASETS.values())
        if unknown:
            known = ' and '.join(dict.fromkeys(DATASETS.values()))
            raise ValueError(f'--data-root takes {known}=PATH, got {", ".join(sorted(unknown))}')
        if self.quick is not None and self.quick < 1:
            raise ValueError(f'--quick must be a positive number of iterations, got {self.quick}')

    @property
    def runs(self) -> List[Run]:
        seen, out = set(), []
        for config in self.configs:
            for setting in self.settings:
                for seed in self.seeds:
                    run = Run(config, setting, seed)
                    if run.key not in seen:  # aliases (tema = fame) share their runs
                        seen.add(run.key)
                        out.append(run)
        return out

    def bind(self, work_dir: str) -> None:
        """Record the matrix in ``work_dir``, or refuse one that holds another matrix's runs."""
        path = osp.join(work_dir, 'matrix.json')
        mine = asdict(self)
        if osp.exists(path):
            theirs = _read_matrix(path)
            if theirs != mine:
                diff = ', '.join(f'{k}: {theirs.get(k)!r} there, {v!r} now'
                                 for k, v in mine.items() if theirs.get(k) != v)
                raise ValueError(
                    f'{work_dir} holds runs of another matrix ({diff}). Rerun with the arguments '
                    'that started it to continue it, or choose another --work-dir.')
            return
        os.makedirs(work_dir, exist_ok=True)
        write_json(path, mine)

    @classmethod
    def load(cls, work_dir: str) -> 'Matrix':
        path = osp.join(work_dir, 'matrix.json')
        if not osp.exists(path):
            raise ValueError(f'{work_dir} holds no matrix of runs (no matrix.json): start one with '
                             '`tools/reproduce.py launch`')
        return cls(**_read_matrix(path))


# matrix.json's keys: the type each must have, in words, and a check
_MATRIX_TYPES = {
    'configs': ('a list of config paths', lambda v: _list_of(v, str)),
    'settings': ('a list of settings', lambda v: _list_of(v, str)),
    'seeds': ('a list of integers', lambda v: _list_of(v, int)),
    'quick': ('an integer or null', lambda v: v is None or _list_of([v], int)),
    'cfg_options': ('a list of strings', lambda v: _list_of(v, str)),
    'data_roots': ('an object of dataset: path strings',
                   lambda v: isinstance(v, dict) and _list_of([*v, *v.values()], str)),
    'amp': ('true or false', lambda v: isinstance(v, bool)),
}
_MATRIX_FIX = ('restore it, or delete it and rerun `tools/reproduce.py launch` with the arguments '
               'that started the matrix (finished runs are kept)')


def _list_of(values, kind) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in values)


def _read_matrix(path: str) -> dict:
    """matrix.json's keys, or an error that names the file, what is wrong and the fix."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except ValueError as e:
        raise ValueError(f'{path} is not valid JSON ({e}): {_MATRIX_FIX}') from None
    if not isinstance(saved, dict):
        raise ValueError(f'{path} holds {type(saved).__name__}, not an object: {_MATRIX_FIX}')
    unknown = set(saved) - set(Matrix.__dataclass_fields__)
    if unknown:
        raise ValueError(f'{path} was written by another version of mmfame (it has '
                         f'{", ".join(sorted(unknown))}): use that version to continue it')
    for key in ('configs', 'settings', 'seeds'):
        if key not in saved:
            raise ValueError(f'{path} has no {key!r}: {_MATRIX_FIX}')
    for key, value in saved.items():
        must, ok = _MATRIX_TYPES[key]
        if not ok(value):
            raise ValueError(f'{path}: {key} must be {must}, got {value!r} '
                             f'({type(value).__name__}): {_MATRIX_FIX}')
    return saved


# ------------------------------------------------------------------------- writing a run
def child_text(run: Run, matrix: Matrix) -> str:
    """The child config of a run: the config as it is (``fame`` of a FAME config), its upstream
    base unchanged (``baseline``) or the config with the setting's optimizer; with the budget."""
    name = parse_setting(run.setting)[0]
    shipped = osp.join(REPO, run.config)
    if name == 'baseline':
        from .upstream import upstream_base
        base = upstream_base(shipped)
        if base is None:
            raise ValueError(f'{run.config} names no mmdet::/mmseg:: base: it has no baseline')
    else:
        base = shipped
    base_cfg = load_config(base)
    current = dict(base_cfg.optim_wrapper.get('optimizer', {}))
    as_it_is = name == 'baseline' or (run.setting in ('fame', 'tema') and
                                      current.get('type') == 'FAME')
    optimizer = None if as_it_is else optimizer_cfg(run.setting, current)
    quick = matrix.quick
    return child_config_text(
        base, base_cfg, optimizer=optimizer, iters=quick,
        checkpoint_interval=None if quick is None else max(1, quick // 4),
        data_root=matrix.data_roots.get(DATASETS.get(base_cfg.get('default_scope'))),
        imports=name != 'baseline', options=setting_options(run.setting))


def run_dir(work_dir: str, run: Run) -> str:
    return osp.join(work_dir, run.key)


def child_path(work_dir: str, run: Run) -> str:
    return run_dir(work_dir, run) + '.py'


def prepare(work_dir: str, run: Run, matrix: Matrix) -> str:
    """Write the run's folder and child config; returns the child config's path."""
    d = run_dir(work_dir, run)
    os.makedirs(d, exist_ok=True)
    path = child_path(work_dir, run)
    text = child_text(run, matrix)
    if osp.exists(path):
        with open(path) as f:
            if f.read() != text:  # e.g. the shipped config was edited under a started run
                raise ValueError(f'{path} differs from the config this matrix would write now; '
                                 'continue with the config it started with or use another '
                                 '--work-dir')
    else:
        with open(path, 'w') as f:
            f.write(text)
    return path
