"""What a run of a shipped config costs, as far as the upstream model zoo says: the ``mmdet::`` /
``mmseg::`` base a config names, that base's entry in the installed package's metafile
(``<package>/.mim/configs/<algo>/metafile.y[a]ml``, what mim reads), and a table of GPUs, schedule,
memory per GPU and training time for ``tools/reproduce.py cost``.

What the metafiles hold (mmdet 3.3.0: 589 models; mmseg 1.2.2: 626): memory per GPU as
``Training Memory (GB)`` (mmdet, 431 models) or ``Memory (GB)`` (mmseg, 434), the hardware as
``Training Resources`` (e.g. ``8x V100 GPUs``), inference time (mmdet, 202 models), and **no
training time at all**. So the expected GPU-hours are left empty, saying why, rather than guessed
(inference time is no measure of training time); a metafile giving ``training time (s/iter)``
would fill them.
"""
import ast
import glob
import importlib.util
import math
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence

import yaml

from mmfame.optim._core import MOMENT_KEYS, STATE_BYTES

from .configs import REPO

MEMORY_KEYS = ('Training Memory (GB)', 'Memory (GB)')  # mmdet's, mmseg's
TIME_KEY = 'training time (s/iter)'  # compared lower-case; no installed metafile has one
# Training images per epoch, by annotation file: the full train2017 split. mmdet's
# filter_empty_gt leaves 117,266 of them, so epoch-based COCO iterations are an upper bound
# (0.9 % high).
TRAIN_IMAGES = {'instances_train2017.json': 118_287}
GPUS_RE = re.compile(r'_(\d+)xb(\d+)-')  # mmengine's {N}xb{B}: N GPUs, batch B per GPU
FAME_EXTRA_STATE = STATE_BYTES['FAME'] - STATE_BYTES['AdamW']  # bytes/param


def _base_value(path: str):
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def upstream_base(config_path: str) -> Optional[str]:
    """The ``scope::path`` base a config file's ``_base_`` names (a string or the first of a
    list that is one), following local bases (``'./x.py'``) until one does; None if none does."""
    bases = _base_value(config_path)
    for base in [bases] if isinstance(bases, str) else bases or []:
        if '::' in base:
            return base
        found = upstream_base(osp.join(osp.dirname(config_path), base))
        if found:
            return found
    return None


def _metafile_entries(path: str) -> tuple:
    """``(collections by name, models)`` of one metafile (objects365's is a bare model list)."""
    with open(path) as f:
        data = yaml.safe_load(f)
    if isinstance(data, list):
        return {}, data
    return {c['Name']: c for c in data.get('Collections') or []}, data.get('Models') or []


def upstream_model(base: str) -> Optional[dict]:
    """The metafile entry (``Name``, ``Config``, ``Metadata``, ``Results``, ...) of an upstream
    ``mmdet::``/``mmseg::`` config, its collection's ``Metadata`` merged under its own; None if
    the package is not installed or no metafile of the config's folder lists it."""
    scope, _, path = base.partition('::')
    spec = importlib.util.find_spec(scope)  # the package's folder, without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = osp.join(spec.submodule_search_locations[0], '.mim', 'configs', osp.dirname(path))
    for metafile in sorted(glob.glob(osp.join(folder, 'metafile.y*ml'))):
        collections, models = _metafile_entries(metafile)
        for model in models:
            if model.get('Config', '').endswith('/' + path):
                collection = collections.get(model.get('In Collection'), {})
                metadata = {**(collection.get('Metadata') or {}), **(model.get('Metadata') or {})}
                return {**model, 'Metadata': metadata}
    return None


def _lookup(metadata: dict, keys: Sequence[str]) -> Optional[float]:
    """The first of ``keys`` (compared lower-case) the metadata has, as a float."""
    lower = {k.lower(): v for k, v in metadata.items()}
    for key in keys:
        if key.lower() in lower:
            return float(lower[key.lower()])
    return None


def cost_rows(config_paths: Sequence[str]) -> List[dict]:
    """One row per config (paths absolute or relative to the repository): ``config``, ``base``,
    ``gpus`` and ``batch`` (from the name's ``{N}xb{B}``), ``epochs`` or ``iters`` (the
    config's ``train_cfg``), ``total_iters``, the upstream ``memory_gb`` (per GPU),
    ``s_per_iter`` and ``hardware``, ``gpu_hours`` (s/iter x total_iters x gpus / 3600) and
    ``missing``: for each of those numbers that is None, why."""
    from mmengine.config import Config

    rows = []
    for config in config_paths:
        path = osp.join(REPO, config)
        name = osp.basename(path)
        match = GPUS_RE.search(name)
        if match is None:
            raise ValueError(f'{name} has no {{N}}xb{{B}} part: GPUs and batch are unknown')
        gpus, batch = map(int, match.groups())
        cfg = Config.fromfile(path, import_custom_modules=False)
        epochs, iters = cfg.train_cfg.get('max_epochs'), cfg.train_cfg.get('max_iters')
        base = upstream_base(path)
        model = upstream_model(base) if base else None
        metadata = (model or {}).get('Metadata', {})
        total_iters = iters
        if epochs is not None:
            dataset = cfg.train_dataloader.dataset
            while 'ann_file' not in dataset and isinstance(dataset.get('dataset'), dict):
                dataset = dataset.dataset  # a wrapper (MultiImageMixDataset, RepeatDataset)
            images = TRAIN_IMAGES.get(osp.basename(dataset.get('ann_file') or ''))
            total_iters = None if images is None else epochs * math.ceil(images / (gpus * batch))
        memory, s_per_iter = _lookup(metadata, MEMORY_KEYS), _lookup(metadata, (TIME_KEY, ))
        gpu_hours = None
        if s_per_iter is not None and total_iters is not None:
            gpu_hours = s_per_iter * total_iters * gpus / 3600
        missing = {}
        if memory is None:
            missing['memory_gb'] = 'no memory in upstream metafile'
        if s_per_iter is None:
            missing['s_per_iter'] = 'no training time in upstream metafile'
        if model is None:
            missing = dict.fromkeys(missing, 'no upstream metafile entry')
        if total_iters is None:
            missing['total_iters'] = 'training set size unknown'
        if gpu_hours is None:
            missing['gpu_hours'] = '; '.join(
                missing[k] for k in ('s_per_iter', 'total_iters') if k in missing)
        rows.append(dict(
            config=osp.relpath(path, REPO) if path.startswith(REPO + osp.sep) else path,
            base=base, gpus=gpus, batch=batch, epochs=epochs, iters=iters,
            total_iters=total_iters, memory_gb=memory, s_per_iter=s_per_iter,
            hardware=metadata.get('Training Resources'), gpu_hours=gpu_hours, missing=missing))
    return rows


def _cell(value: Optional[float], fmt: str = '{:g}') -> str:
    return '—' if value is None else fmt.format(value)


def add_measured_times(rows: Sequence[dict], seconds: Dict[str, float]) -> List[dict]:
    """``rows`` with s/iter, and so GPU-hours, from your own runs where upstream gives no time.

    ``seconds`` maps a config to its median logged seconds per iteration, e.g. of a ``--quick``
    matrix on the cluster the full runs will use. Each GPU of a DDP run processes its own
    per-GPU batch, so a run on fewer GPUs at the same per-GPU batch estimates the s/iter of the
    full run, communication aside.
    """
    out = []
    for row in rows:
        row = dict(row, missing=dict(row['missing']))
        measured = seconds.get(row['config'])
        if measured is not None and row['s_per_iter'] is None:
            row.update(s_per_iter=measured, time_source='measured')
            row['missing'].pop('s_per_iter', None)
            if row['total_iters'] is not None:
                row['gpu_hours'] = measured * row['total_iters'] * row['gpus'] / 3600
                row['missing'].pop('gpu_hours', None)
        out.append(row)
    return out


def cost_markdown(rows: Sequence[dict]) -> str:
    """:func:`cost_rows` as a Markdown table and a note on where its numbers come from."""
    lines = ['| config | upstream base | GPUs x batch | schedule | memory/GPU (GB, upstream) '
             '| s/iter | expected GPU-hours per run |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        if row['epochs'] is None:
            schedule = f'{row["iters"]:,} iters'
        else:
            schedule = f'{row["epochs"]} epochs' + (
                f' ({row["total_iters"]:,} iters)' if row['total_iters'] is not None else '')
        hours = _cell(row['gpu_hours'], '{:,.0f}')
        if row['gpu_hours'] is None:
            hours += f' ({row["missing"]["gpu_hours"]})'
        lines.append(
            f'| `{osp.basename(row["config"])}` | `{row["base"]}` | {row["gpus"]} x {row["batch"]} '
            f'| {schedule} | {_cell(row["memory_gb"])} | {_cell(row["s_per_iter"])}'
            + (' (measured)' if row.get('time_source') == 'measured' else '') + f' | {hours} |')
    hardware = sorted({row['hardware'].replace('GPUS', 'GPUs') for row in rows if row['hardware']})
    timed = any(row['s_per_iter'] is not None and row.get('time_source') != 'measured'
                for row in rows)
    measured = any(row.get('time_source') == 'measured' for row in rows)
    lines += ['', (
        'Numbers from the model-zoo metafiles of the installed mmdet/mmseg '
        '(`.mim/configs/<algo>/metafile.y[a]ml`), measured with the upstream optimizer on '
        f'{", ".join(hardware) or "unstated hardware"}; — marks a number they do not give'
        + ('' if timed else ', and they give no training time at all')
        + ('; s/iter marked (measured) is the median logged iteration time of your own runs '
           '(`tools/reproduce.py cost --measured WORK_DIR`), GPU-hours = s/iter x iterations x '
           'GPUs' if measured else ', so no GPU-hours without `--measured WORK_DIR`')
        + f'. A FAME run keeps {FAME_EXTRA_STATE} bytes/param more optimizer state than AdamW '
        f'({len(MOMENT_KEYS)} fp32 tensors per param, {", ".join(MOMENT_KEYS)}: '
        f"{STATE_BYTES['FAME']} B/param against {STATE_BYTES['AdamW']}). Epoch-based COCO "
        'iterations count the full train2017 split (118,287 images; 117,266 after '
        'filter_empty_gt).')]
    return '\n'.join(lines) + '\n'
