"""Finished runs as tables, metafiles and plots.

Two inputs: ``tools/analysis_tools/compare_optimizers.py``'s runs of one config
(``{setting: {seed: summary}}``, :func:`write_outputs`), and the run records of a
``tools/reproduce.py`` matrix (plain dicts with ``config``, ``setting``, ``seed``, ``state``,
``metrics``, ``curve``, ``step_unit``, ``work_dir``): :func:`matrix_rows` reduces those to one row
per (config, setting), from which :func:`matrix_markdown`, :func:`update_readme` and
:func:`write_metafiles` write. Only finished seeds count: a number is never shown for a run that
is pending, running, interrupted or failed.
"""
import json
import math
import os
import os.path as osp
import re
from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence

from .runs import STATES

PRIMARY = ('coco/bbox_mAP', 'coco/segm_mAP', 'mIoU')  # what the README and the metafiles show
LABELS = {'coco/bbox_mAP': 'box AP', 'coco/segm_mAP': 'mask AP'}
TASKS = {'coco/bbox_mAP': 'Object Detection', 'coco/segm_mAP': 'Instance Segmentation',
         'mIoU': 'Semantic Segmentation'}
# configs/<folder>/ -> its metafile collection and the data its configs train on
FOLDERS = {
    'coco': dict(collection='FAME COCO', data='COCO'),
    'ade20k': dict(collection='FAME ADE20K', data='ADE20K'),
    'demo': dict(collection='FAME demo', data='synthetic shapes demo data'),
}
PAPER = dict(URL='https://arxiv.org/abs/2306.01423',
             Title='Break a Lag: Triple Exponential Moving Average for Enhanced Optimization')


# --------------------------------------------------------------------- statistics over seeds
def mean_std(values: Sequence[float]):
    values = [v for v in values if v is not None and not (isinstance(v, float) and
                                                          math.isnan(v))]
    if not values:
        return None, None, 0
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None, len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var), len(values)


def paired_difference(values: Mapping, reference: Mapping) -> dict:
    """``values - reference`` over the seeds both have (``{seed: value}``, None values left
    out): mean, sample std, n and the seeds where ``values`` is higher."""
    diffs = [v - reference[s] for s, v in values.items()
             if v is not None and reference.get(s) is not None]
    return dict(zip(('mean', 'std', 'n'), mean_std(diffs)), wins=sum(d > 0 for d in diffs))


def fmt(mean, std, digits=4):
    if mean is None:
        return 'n/a'
    if std is None:
        return f'{mean:.{digits}g}'
    return f'{mean:.{digits}g} ± {std:.2g}'


# ---------------------------------------------------------- compare_optimizers: one config
def build_summary(runs: Dict[str, Dict[int, dict]], metrics: Sequence[str],
                  reference: Optional[str] = None) -> dict:
    """Mean/std over seeds per setting, and paired differences to ``reference``."""
    primary = metrics[0] if metrics else None
    if reference not in runs:
        reference = next(iter(runs), None)
    rows = {}
    for spec, per in runs.items():
        row = dict(n=len(per), seeds=sorted(per))
        for key in metrics:
            row[key] = mean_std([r['metrics'].get(key) for r in per.values()])[:2]
        row['final_loss'] = mean_std([r['final_loss'] for r in per.values()])[:2]
        row['sec_per_iter'] = mean_std([r['sec_per_iter'] for r in per.values()])[:2]
        if primary and reference and spec != reference:
            diff = paired_difference(
                {s: r['metrics'].get(primary) for s, r in per.items()},
                {s: r['metrics'].get(primary) for s, r in runs[reference].items()})
            row['paired_diff'] = diff['mean'], diff['std']
            row['paired_n'], row['paired_wins'] = diff['n'], diff['wins']
        rows[spec] = row
    return dict(metrics=list(metrics), reference=reference, rows=rows,
                per_seed={spec: {str(seed): dict(metrics=r['metrics'], final_loss=r['final_loss'],
                                                 sec_per_iter=r['sec_per_iter'],
                                                 last_iter=r.get('last_iter'))
                                 for seed, r in per.items()} for spec, per in runs.items()})


def markdown_table(summary: dict, title: str = '',
                   describe: Optional[Mapping[str, str]] = None) -> str:
    """The summary's tables; ``describe`` maps a setting's name to its 'what' cell."""
    describe = describe or {}
    metrics, ref = summary['metrics'], summary['reference']
    primary = metrics[0] if metrics else None
    head = ['optimizer', 'what', 'n seeds'] + [f'{m} (final)' for m in metrics] + [
        'final train loss', 's/iter']
    if primary:
        head.append(f'Δ {primary} vs {ref} (paired)')
    lines = [f'### {title}', ''] if title else []
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for spec, row in summary['rows'].items():
        name = spec.split(':')[0]
        cells = [f'`{spec}`', describe.get(name, ''), str(row['n'])]
        cells += [fmt(*row[m]) for m in metrics]
        cells += [fmt(*row['final_loss']), fmt(*row['sec_per_iter'], digits=3)]
        if primary:
            if 'paired_diff' in row:
                cells.append(f'{fmt(*row["paired_diff"], digits=3)} '
                             f'({row["paired_wins"]}/{row["paired_n"]} seeds higher)')
            else:
                cells.append('reference')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'mean ± sample standard deviation (ddof=1) over seeds; final train loss = mean '
              'of the logged losses over the last 10 % of the iterations; s/iter = median logged '
              'iteration time.']
    if primary:
        lines += ['', f'Per seed ({primary} / final train loss):', '']
        seeds = sorted({s for per in summary['per_seed'].values() for s in per}, key=int)
        lines += ['| optimizer | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
                  '|---|' + '---|' * len(seeds)]
        for spec, per in summary['per_seed'].items():
            cells = []
            for s in seeds:
                r = per.get(s)
                m = None if r is None else r['metrics'].get(primary)
                cells.append('—' if r is None else
                             f'{"n/a" if m is None else f"{m:.4g}"} / {r["final_loss"]:.4g}')
            lines.append(f'| `{spec}` | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot(runs, summary, out_png: str, title: str = '') -> None:
    import numpy as np
    plt = _pyplot()

    metrics = summary['metrics']
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw=dict(width_ratios=[1.5, 1]))
    ax = axes[0]
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for k, (spec, per) in enumerate(runs.items()):
        color = colors[k % len(colors)]
        curves = [dict(zip(r['iters'], r['losses'])) for r in per.values() if r['iters']]
        if not curves:
            continue
        common = sorted(set.intersection(*(set(c) for c in curves)))
        arr = np.array([[c[i] for i in common] for c in curves])
        mean = arr.mean(0)
        ax.plot(common, mean, color=color, label=f'{spec} (n={len(curves)})')
        if len(curves) > 1:
            std = arr.std(0, ddof=1)
            ax.fill_between(common, mean - std, mean + std, color=color, alpha=0.2)
    ax.set_yscale('log')
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss (logged window mean)')
    ax.set_title('training loss, mean ± std over seeds', fontsize=10)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    if metrics:
        primary = metrics[0]
        names = list(runs)
        for k, spec in enumerate(names):
            vals = [r['metrics'].get(primary) for r in runs[spec].values()]
            vals = [v for v in vals if v is not None]
            color = colors[k % len(colors)]
            ax.scatter([k] * len(vals), vals, color=color, alpha=0.5, s=18)
            mean, std = summary['rows'][spec][primary]
            if mean is not None:
                ax.errorbar([k + 0.15], [mean], yerr=[std or 0], fmt='o', color=color,
                            capsize=4, markersize=6)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha='right', fontsize=8)
        ax.set_ylabel(primary)
        ax.set_title(f'final {primary}: seeds (dots), mean ± std', fontsize=10)
        ax.grid(True, axis='y', alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def write_outputs(runs, metrics, out: str, reference: Optional[str] = None, title: str = '',
                  extra: Optional[dict] = None, make_plot: bool = True,
                  describe: Optional[Mapping[str, str]] = None) -> dict:
    """``<out>.md``, ``<out>.json`` and (``make_plot``) ``<out>.png``; returns the summary."""
    summary = build_summary(runs, metrics, reference)
    if extra:
        summary.update(extra)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out + '.md', 'w') as f:
        f.write(markdown_table(summary, title, describe))
    with open(out + '.json', 'w') as f:
        json.dump(summary, f, indent=1)
    if make_plot:
        plot(runs, summary, out + '.png', title)
    return summary


# ------------------------------------------------------------ reproduce: a matrix of runs
def matrix_rows(runs: Sequence[dict], baseline: str = 'baseline') -> List[dict]:
    """One row per (config, setting), in first-seen order.

    A row holds ``config``, ``setting``, ``baseline`` (the setting differences are taken to),
    ``seeds`` (all), ``finished`` (the finished seeds), ``states`` ({state: count}),
    ``metrics`` ({key: dict(mean, std, n)} over the finished seeds, for the metric keys the
    config's finished runs logged; std is the sample std, None for one seed) and ``delta``
    ({key: dict(mean, std, n)}: the paired difference to the ``baseline`` setting of the same
    config over the seeds finished in both; empty for the baseline itself or without one).
    """
    groups: Dict[tuple, Dict[int, dict]] = {}
    for r in runs:
        groups.setdefault((r['config'], r['setting']), {})[r['seed']] = r

    def finished_values(per, key):
        return {s: r['metrics'].get(key) for s, r in per.items()
                if r['state'] == 'finished' and r['metrics'].get(key) is not None}

    keys: Dict[str, List[str]] = {}
    for (config, _), per in groups.items():
        found = keys.setdefault(config, [])
        for r in per.values():
            if r['state'] == 'finished':
                found.extend(k for k in r['metrics'] if k not in found)
    rows = []
    for (config, setting), per in groups.items():
        counts = Counter(r['state'] for r in per.values())
        row = dict(config=config, setting=setting, baseline=baseline, seeds=list(per),
                   finished=[s for s, r in per.items() if r['state'] == 'finished'],
                   states={st: counts[st] for st in STATES if counts[st]}, metrics={}, delta={})
        ref = groups.get((config, baseline)) if setting != baseline else None
        for key in keys[config]:
            values = finished_values(per, key)
            row['metrics'][key] = dict(zip(('mean', 'std', 'n'), mean_std(list(values.values()))))
            if ref is not None:
                diff = paired_difference(values, finished_values(ref, key))
                row['delta'][key] = {k: diff[k] for k in ('mean', 'std', 'n')}
        rows.append(row)
    return rows


def metric_label(key: str) -> str:
    """'coco/bbox_mAP' -> 'box AP', 'coco/segm_mAP_50' -> 'mask AP_50', 'mIoU' -> 'mIoU'."""
    for prefix, label in LABELS.items():
        if key.startswith(prefix):
            return label + key[len(prefix):]
    return key


def _scale(key: str):
    """(factor, decimals) of a metric as OpenMMLab tables print it: COCO fractions as percent
    with one decimal, mmseg's percentages with two."""
    return (100.0, 1) if key.startswith('coco/') else (1.0, 2)


def _stat_text(key: str, stat: dict, signed: bool = False) -> str:
    factor, digits = _scale(key)
    sign = '+' if signed else ''
    text = f'{stat["mean"] * factor:{sign}.{digits}f}'
    return text if stat['std'] is None else f'{text} ± {stat["std"] * factor:.{digits}f}'


def _others(row: dict) -> str:
    """'1 running, 1 failed': the states of the seeds that did not finish."""
    return ', '.join(f'{n} {st}' for st, n in row['states'].items() if st != 'finished')


def _progress(row: dict) -> str:
    k, n, others = len(row['finished']), len(row['seeds']), _others(row)
    if not k:
        return f'not finished ({k}/{n}: {others})'
    return f'{k}/{n}' + (f' ({others})' if others else '')


def matrix_markdown(rows: Sequence[dict]) -> str:
    """One table of the matrix: per (config, setting) the finished seeds, each metric's
    mean ± std over them and its paired difference to the baseline setting."""
    keys = []
    for row in rows:
        keys.extend(k for k in row['metrics'] if k not in keys)
    baselines = sorted({row['baseline'] for row in rows})
    head = (['config', 'setting', 'seeds finished'] + [metric_label(k) for k in keys]
            + [f'Δ {metric_label(k)} vs {"/".join(baselines)} (paired)' for k in keys])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        cells = [f'`{osp.splitext(osp.basename(row["config"]))[0]}`', f'`{row["setting"]}`',
                 _progress(row)]
        for k in keys:
            stat = row['metrics'].get(k)
            text = '—' if not stat or not stat['n'] else _stat_text(k, stat)
            if stat and 0 < stat['n'] < len(row['finished']):
                text += f' (n={stat["n"]})'
            cells.append(text)
        for k in keys:
            d = row['delta'].get(k)
            if row['setting'] == row['baseline'] and k in row['metrics']:
                cells.append('reference')
            elif not d or not d['n']:
                cells.append('—')
            else:
                cells.append(f'{_stat_text(k, d, signed=True)} (n={d["n"]})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'mean ± sample standard deviation (ddof=1) over the finished seeds; Δ = paired '
              'difference (same seed) to the baseline setting of the same config, over the seeds '
              'finished in both, n pairs; COCO AP ×100. Unfinished seeds are not counted.']
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------- configs/README.md
_LINK = re.compile(r'^\| \[[^\]]*\]\(([^)]+)\)')
_LAST_CELL = re.compile(r'^(.*\| )[^|]*( \|)[ \t]*$')


def readme_cell(row: dict) -> str:
    """The 'FAME metric' cell of a FAME row: the primary metrics over the finished seeds and
    their paired difference to the baseline, or how far the runs are."""
    k, n = len(row['finished']), len(row['seeds'])
    keys = [key for key in PRIMARY if row['metrics'].get(key, {}).get('n')]
    if not keys:
        return f'running: {k}/{n} seeds finished' if 'running' in row['states'] else \
            'not yet measured'
    values = ', '.join(f'{metric_label(key)} {_stat_text(key, row["metrics"][key])}'
                       for key in keys)
    seeds = f'{k} seed{"s" * (k != 1)}' if k == n else f'{k} of {n} seeds, {_others(row)}'
    deltas = [(key, row['delta'][key]) for key in keys if row['delta'].get(key, {}).get('n')]
    if deltas:
        against = 'upstream config' if row['baseline'] == 'baseline' else f'`{row["baseline"]}`'
        parts = [(f'{metric_label(key)} ' if len(keys) > 1 else '')
                 + _stat_text(key, d, signed=True) + (f' over {d["n"]} pairs' if d['n'] != k
                                                      else '')
                 for key, d in deltas]
        seeds += f'; Δ vs {against} {", ".join(parts)}, our runs'
    return f'{values} ({seeds})'


def update_readme(text: str, rows: Sequence[dict]) -> str:
    """configs/README.md's text with the 'FAME metric' cell (the last column of the tables that
    have one) of every config with a ``fame`` row replaced by :func:`readme_cell`; configs are
    matched by the file name of the first cell's link, everything else is left as it is."""
    cells = {osp.basename(row['config']): readme_cell(row) for row in rows
             if row['setting'] == 'fame'}
    out, in_table = [], False
    for line in text.splitlines(keepends=True):
        body = line.rstrip('\r\n')
        if body.startswith('|'):
            in_table = in_table or body.rstrip(' |').endswith('FAME metric')
        else:
            in_table = False
        link = _LINK.match(body) if in_table else None
        name = osp.basename(link.group(1)) if link else None
        if name in cells:
            line = _LAST_CELL.sub(lambda m: m.group(1) + cells[name] + m.group(2), body) + \
                line[len(body):]
        out.append(line)
    return ''.join(out)


# --------------------------------------------------------------------------- metafiles
def _model_entry(repo_root: str, folder: str, path: str, fame_row: Optional[dict]) -> dict:
    from mmengine.config import Config
    name = osp.splitext(osp.basename(path))[0]
    data = FOLDERS[folder]['data']
    meta = {'Training Data': data}
    size = re.search(r'_(\d+)xb(\d+)', name)
    if size:
        meta['Training Resources'] = f'{size.group(1)}x GPUs'
        meta['Batch Size'] = int(size.group(1)) * int(size.group(2))
    train_cfg = Config.fromfile(osp.join(repo_root, path), import_custom_modules=False).train_cfg
    if train_cfg.get('max_epochs'):
        meta['Epochs'] = int(train_cfg['max_epochs'])
    elif train_cfg.get('max_iters'):
        meta['Iterations'] = int(train_cfg['max_iters'])
    entry = {'Name': name, 'In Collection': FOLDERS[folder]['collection'], 'Config': path,
             'Metadata': meta}
    results = []
    for key in PRIMARY:
        stat = (fame_row or {}).get('metrics', {}).get(key)
        if stat and stat['n']:
            factor, digits = _scale(key)
            results.append({'Task': TASKS[key], 'Dataset': data,
                            'Metrics': {metric_label(key): round(stat['mean'] * factor, digits)}})
    if results:
        entry['Results'] = results
    return entry


def write_metafiles(rows: Sequence[dict], repo_root: str,
                    out_root: Optional[str] = None) -> List[str]:
    """OpenMMLab metafiles of the shipped FAME configs: ``configs/<folder>/metafile.yml`` for
    coco, ade20k (and demo when ``rows`` hold a demo config) and ``model-index.yml`` importing
    them, under ``out_root`` (default ``repo_root``). A model's ``Results`` are the means over its
    finished ``fame`` seeds; a model without any has none, unless the metafile there already
    publishes results for a config ``rows`` do not hold (gathered from another work dir): those
    are kept. Returns the paths written."""
    import yaml
    out_root = out_root or repo_root
    fame = {row['config']: row for row in rows if row['setting'] == 'fame'}
    folders = [f for f in FOLDERS if f != 'demo' or
               any(osp.basename(osp.dirname(row['config'])) == 'demo' for row in rows)]
    written, imports = [], []
    for folder in folders:
        found = sorted(n for n in os.listdir(osp.join(repo_root, 'configs', folder))
                       if n.endswith('.py') and '_fame_' in n)
        paths = [f'configs/{folder}/{n}' for n in found]
        rel = f'configs/{folder}/metafile.yml'
        kept = _published_results(osp.join(out_root, rel), yaml)
        models = []
        for p in paths:
            model = _model_entry(repo_root, folder, p, fame.get(p))
            if p not in fame and p in kept:  # gathered from another work dir before: keep it
                model['Results'] = kept[p]
            models.append(model)
        doc = {
            'Collections': [{'Name': FOLDERS[folder]['collection'],
                             'Metadata': {'Training Techniques': ['FAME']},
                             'Paper': dict(PAPER), 'README': 'configs/README.md'}],
            'Models': models,
        }
        written.append(_write_yaml(osp.join(out_root, rel), doc, yaml))
        imports.append(rel)
    written.append(_write_yaml(osp.join(out_root, 'model-index.yml'), {'Import': imports}, yaml))
    return written


def _published_results(path: str, yaml) -> Dict[str, list]:
    """{Config: Results} of the models an existing metafile already publishes results for."""
    try:
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
    except OSError:
        return {}
    return {m['Config']: m['Results'] for m in doc.get('Models', []) if m.get('Results')}


def _write_yaml(path: str, doc: dict, yaml) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        yaml.safe_dump(doc, f, sort_keys=False, allow_unicode=True, width=100)
    return path


# -------------------------------------------------------------------------------- plots
def plot_curves(runs: Sequence[dict], out_png: str) -> None:
    """Validation curves of a matrix: one subplot per config, its primary metric against the
    step, one line per setting (mean over the seeds that logged the curve, at the steps all of
    them logged; ± std band with two or more seeds)."""
    import numpy as np
    plt = _pyplot()

    by_config: Dict[str, Dict[str, List[dict]]] = {}
    for r in runs:
        by_config.setdefault(r['config'], {}).setdefault(r['setting'], []).append(r)
    panels = []
    for config, settings in by_config.items():
        logged = [k for recs in settings.values() for r in recs for k, c in r['curve'].items()
                  if c]
        key = next((k for k in PRIMARY if k in logged), logged[0] if logged else None)
        if key:
            panels.append((config, settings, key))
    cols = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    settings_seen: List[str] = []
    for ax, (config, settings, key) in zip(axes.flat, panels):
        factor = _scale(key)[0]
        units = set()
        for setting, recs in settings.items():
            if setting not in settings_seen:
                settings_seen.append(setting)
            color = colors[settings_seen.index(setting) % len(colors)]
            curves = [dict((s, v) for s, v in r['curve'].get(key) or []) for r in recs]
            used = [r for r, c in zip(recs, curves) if c]
            curves = [c for c in curves if c]
            if not curves:
                continue
            units.update(r['step_unit'] for r in used)
            common = sorted(set.intersection(*(set(c) for c in curves)))
            arr = np.array([[c[s] * factor for s in common] for c in curves], dtype=float)
            mean = arr.mean(0)
            unfinished = sum(r['state'] != 'finished' for r in used)
            ax.plot(common, mean, marker='.', color=color,
                    label=f'{setting} (n={len(curves)}'
                    + (f', {unfinished} unfinished)' if unfinished else ')'))
            if len(curves) > 1:
                std = arr.std(0, ddof=1)
                ax.fill_between(common, mean - std, mean + std, color=color, alpha=0.2)
        unit = units.pop() if len(units) == 1 else None
        ax.set_xlabel({'epoch': 'epoch', 'iter': 'iteration'}.get(unit, 'step'))
        ax.set_ylabel(metric_label(key))
        ax.set_title(osp.splitext(osp.basename(config))[0], fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    if not panels:
        axes[0][0].text(0.5, 0.5, 'no validation curves logged yet', ha='center', va='center')
    fig.suptitle('validation metric per step, mean ± std over seeds', fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
