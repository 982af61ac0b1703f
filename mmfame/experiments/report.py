"""Runs as one summary, and that summary as tables, README cells, metafiles and plots.

The demo, ``tools/analysis_tools/compare_optimizers.py`` and ``tools/reproduce.py`` all hand over
run records (:func:`mmfame.experiments.runs.describe`); :func:`summarize` reduces them to one row
per (config, setting): mean ± std over seeds, paired differences to a baseline setting, curves.
From the rows :func:`matrix_markdown` and :func:`comparison_markdown` write tables,
:func:`update_readme` the README cells, :func:`write_metafiles` the metafiles and :func:`plot`
the plots (:func:`write_outputs` the table, the rows as JSON and the plot at once). Only
finished seeds count: a number is never shown for a run that is pending, running, interrupted
or failed.
"""
import json
import math
import os
import os.path as osp
import re
from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence

from .metrics import PRIMARY, metric_info
from .runs import STATES

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


def _stat(values: Mapping) -> dict:
    """mean, sample std and n of ``{seed: value}`` (None and NaN left out), and the values."""
    return dict(zip(('mean', 'std', 'n'), mean_std(list(values.values()))), values=dict(values))


def fmt(mean, std, digits=4):
    if mean is None:
        return 'n/a'
    if std is None:
        return f'{mean:.{digits}g}'
    return f'{mean:.{digits}g} ± {std:.2g}'


# -------------------------------------------------------------------------- the summary
def summarize(records: Sequence[dict], baseline: str = 'baseline') -> List[dict]:
    """One row per (config, setting), in first-seen order: what every table, README cell,
    metafile and plot of the demo, compare_optimizers and reproduce is written from.

    A record is a run as :func:`mmfame.experiments.runs.describe` gives it: ``config``,
    ``setting``, ``seed``, ``state``, ``metrics``, ``curve`` (``{key: [[step, value], ...]}``,
    the training loss under ``'loss'``), ``step_unit``, and where logged ``final_loss`` and
    ``sec_per_iter``. A row holds ``config``, ``setting``, ``baseline`` (the setting differences
    are taken to), ``seeds`` (all), ``finished`` (the finished seeds), ``states``
    ({state: count}); over the finished seeds ``metrics`` ({key: stat} for the metric keys the
    config's finished runs logged), ``final_loss`` and ``sec_per_iter`` (stats: ``mean``,
    ``std`` (the sample std, None for one seed), ``n`` and ``values`` {seed: value}); ``delta``
    ({key: dict(mean, std, n, wins)}: the paired difference to the ``baseline`` setting of the
    same config over the seeds finished in both; empty for the baseline itself or without one);
    and ``curves`` ({key: dict(steps, mean, std, n, unfinished)}: a curve's mean and std over
    the seeds that logged it, finished or not, at the steps all of them logged).
    """
    groups: Dict[tuple, Dict[int, dict]] = {}
    for r in records:
        groups.setdefault((r['config'], r['setting']), {})[r['seed']] = r

    def finished(per):
        return {s: r for s, r in per.items() if r['state'] == 'finished'}

    def values(per, key):
        return {s: r['metrics'].get(key) for s, r in finished(per).items()
                if r['metrics'].get(key) is not None}

    keys: Dict[str, List[str]] = {}
    for (config, _), per in groups.items():
        found = keys.setdefault(config, [])
        for r in finished(per).values():
            found.extend(k for k in r['metrics'] if k not in found)
    rows = []
    for (config, setting), per in groups.items():
        counts = Counter(r['state'] for r in per.values())
        done = finished(per)
        row = dict(config=config, setting=setting, baseline=baseline, seeds=list(per),
                   finished=list(done), states={st: counts[st] for st in STATES if counts[st]},
                   metrics={}, delta={},
                   final_loss=_stat({s: r.get('final_loss') for s, r in done.items()}),
                   sec_per_iter=_stat({s: r.get('sec_per_iter') for s, r in done.items()}),
                   curves=_curves(per.values()))
        ref = groups.get((config, baseline)) if setting != baseline else None
        for key in keys[config]:
            row['metrics'][key] = _stat(values(per, key))
            if ref is not None:
                row['delta'][key] = paired_difference(values(per, key), values(ref, key))
        rows.append(row)
    return rows


def _curves(records) -> Dict[str, dict]:
    names: List[str] = []
    for r in records:
        names.extend(k for k, c in (r.get('curve') or {}).items() if c and k not in names)
    out = {}
    for name in names:
        used = [r for r in records if (r.get('curve') or {}).get(name)]
        points = [dict((s, v) for s, v in r['curve'][name]) for r in used]
        steps = sorted(set.intersection(*(set(p) for p in points)))
        stats = [mean_std([p[s] for p in points]) for s in steps]
        units = {'iter' if name == 'loss' else r.get('step_unit') for r in used}
        out[name] = dict(steps=steps, mean=[m for m, _, _ in stats], std=[d for _, d, _ in stats],
                         n=len(used), unfinished=sum(r['state'] != 'finished' for r in used),
                         unit=units.pop() if len(units) == 1 else None)
    return out


def write_outputs(out: str, rows: Sequence[dict], records: Sequence[dict], markdown: str,
                  curve: str, spread: bool = False, title: str = '',
                  extra: Optional[dict] = None, metric: Optional[str] = None) -> None:
    """``<out>.md`` (``markdown``), ``<out>.json`` (the rows, the run records and ``extra``) and
    ``<out>.png`` (:func:`plot` of ``curve``, ``spread``, ``title`` and ``metric``)."""
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    with open(out + '.md', 'w') as f:
        f.write(markdown)
    with open(out + '.json', 'w') as f:
        json.dump(dict(extra or {}, rows=rows, runs=records), f, indent=1)
    plot(rows, out + '.png', curve, spread, title, metric)


# ---------------------------------------------------------- compare_optimizers: one config
def comparison_markdown(rows: Sequence[dict], metrics: Sequence[str], title: str = '',
                        describe: Optional[Mapping[str, str]] = None) -> str:
    """The tables of one config's rows: per setting the finished seeds, each of ``metrics``, the
    final training loss and s/iter (mean ± std), the paired difference of the first metric to
    the baseline setting; then the first metric and final loss per seed. ``describe`` maps a
    setting's name to its 'what' cell."""
    describe = describe or {}
    primary = metrics[0] if metrics else None
    head = ['optimizer', 'what', 'n seeds'] + [f'{m} (final)' for m in metrics] + [
        'final train loss', 's/iter']
    if primary:
        head.append(f'Δ {primary} vs {rows[0]["baseline"]} (paired)')
    lines = [f'### {title}', ''] if title else []
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def cell(stat, digits=4):
        return fmt(stat['mean'], stat['std'], digits) if stat else 'n/a'

    for row in rows:
        spec = row['setting']
        cells = [f'`{spec}`', describe.get(spec.split(':')[0], ''), str(len(row['finished']))]
        cells += [cell(row['metrics'].get(m)) for m in metrics]
        cells += [cell(row['final_loss']), cell(row['sec_per_iter'], digits=3)]
        if primary:
            d = row['delta'].get(primary)
            if spec == row['baseline']:
                cells.append('reference')
            else:
                cells.append(f'{fmt(d["mean"], d["std"], digits=3)} ({d["wins"]}/{d["n"]} seeds '
                             'higher)' if d and d['n'] else '—')
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'mean ± sample standard deviation (ddof=1) over seeds; final train loss = mean '
              'of the logged losses over the last 10 % of the iterations; s/iter = median logged '
              'iteration time.']
    if primary:
        lines += ['', f'Per seed ({primary} / final train loss):', '']
        seeds = sorted({s for row in rows for s in row['finished']})
        lines += ['| optimizer | ' + ' | '.join(f'seed {s}' for s in seeds) + ' |',
                  '|---|' + '---|' * len(seeds)]
        for row in rows:
            metric = (row['metrics'].get(primary) or {}).get('values', {})
            loss = row['final_loss']['values']
            cells = []
            for s in seeds:
                m, fl = metric.get(s), loss.get(s)
                cells.append('—' if s not in row['finished'] else
                             f'{"n/a" if m is None else f"{m:.4g}"} / '
                             f'{"n/a" if fl is None else f"{fl:.4g}"}')
            lines.append(f'| `{row["setting"]}` | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------ reproduce: a matrix of runs
def metric_label(key: str) -> str:
    """'coco/bbox_mAP' -> 'box AP', 'coco/segm_mAP_75' -> 'mask AP_75', 'mIoU' -> 'mIoU'
    (:func:`.metrics.metric_info`)."""
    return metric_info(key).label


def _stat_text(key: str, stat: dict, signed: bool = False) -> str:
    """mean ± std of a metric as its row (:func:`.metrics.metric_info`) prints it."""
    info = metric_info(key)
    text = info.format(stat['mean'], signed)
    return text if stat['std'] is None else f'{text} ± {info.format(stat["std"])}'


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
            info = metric_info(key)
            results.append({'Task': info.task, 'Dataset': data,
                            'Metrics': {info.label: round(stat['mean'] * info.scale, info.digits)}})
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
def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _primary(rows: Sequence[dict]) -> Optional[str]:
    logged = [k for row in rows for k, stat in row['metrics'].items() if stat['n']]
    return next((k for k in PRIMARY if k in logged), logged[0] if logged else None)


def plot(rows: Sequence[dict], out_png: str, curve: str = 'metric', spread: bool = False,
         title: str = '', metric: Optional[str] = None) -> None:
    """Per config a panel of ``curve``: ``'loss'``, the training loss per iteration (log scale),
    or ``'metric'``, the primary validation metric per step; one line per setting, the mean over
    the seeds that logged it with a ± std band for two or more. ``spread`` adds per config a
    panel of the final primary metric: each finished seed a dot, mean ± std a bar. The primary
    metric is ``metric``, else the config's first of :data:`.metrics.PRIMARY` logged."""
    import numpy as np
    plt = _pyplot()

    by_config: Dict[str, List[dict]] = {}
    for row in rows:
        by_config.setdefault(row['config'], []).append(row)
    panels = []
    for config, group in by_config.items():
        primary = metric or _primary(group)
        logged = [k for row in group for k in row['curves'] if k != 'loss']
        key = ('loss' if any('loss' in row['curves'] for row in group) else None
               ) if curve == 'loss' else (primary if primary in logged else
                                           next(iter(logged), None))
        if key:
            panels.append((config, group, key, primary, False))
        if spread and primary:
            panels.append((config, group, primary, primary, True))
    cols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.5 * nrows), squeeze=False)
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    settings = list(dict.fromkeys(row['setting'] for row in rows))
    for ax, (config, group, key, primary, dots) in zip(axes.flat, panels):
        factor = 1.0 if key == 'loss' else metric_info(key).scale
        stem = osp.splitext(osp.basename(config))[0]
        if dots:
            for k, row in enumerate(group):
                stat = row['metrics'].get(key)
                if not stat or not stat['n']:
                    continue
                color = colors[settings.index(row['setting']) % len(colors)]
                ax.scatter([k] * stat['n'], [v * factor for v in stat['values'].values()],
                           color=color, alpha=0.5, s=18)
                ax.errorbar([k + 0.15], [stat['mean'] * factor],
                            yerr=[(stat['std'] or 0) * factor], fmt='o', color=color,
                            capsize=4, markersize=6)
            ax.set_xticks(range(len(group)))
            ax.set_xticklabels([row['setting'] for row in group], rotation=30, ha='right',
                               fontsize=8)
            ax.set_ylabel(metric_label(key))
            ax.set_title(f'{stem}: final {metric_label(key)}, seeds (dots), mean ± std',
                         fontsize=8)
            ax.grid(True, axis='y', alpha=0.3)
            continue
        for row in group:
            c = row['curves'].get(key)
            if not c:
                continue
            color = colors[settings.index(row['setting']) % len(colors)]
            mean = np.array([np.nan if m is None else m * factor for m in c['mean']])
            label = f'{row["setting"]} (n={c["n"]}' + (
                f', {c["unfinished"]} unfinished)' if c['unfinished'] else ')')
            stat = row['metrics'].get(primary) if primary else None
            if key == 'loss' and stat and stat['n']:
                label += f': {metric_label(primary)} {_stat_text(primary, stat)}'
            ax.plot(c['steps'], mean, marker=None if key == 'loss' else '.', color=color,
                    label=label)
            if c['n'] > 1:
                std = np.array([np.nan if d is None else d * factor for d in c['std']])
                ax.fill_between(c['steps'], mean - std, mean + std, color=color, alpha=0.2)
        if key == 'loss':
            ax.set_yscale('log')
        unit = next((row['curves'][key]['unit'] for row in group if key in row['curves']), None)
        ax.set_xlabel({'epoch': 'epoch', 'iter': 'iteration'}.get(unit, 'step'))
        ax.set_ylabel('training loss' if key == 'loss' else metric_label(key))
        ax.set_title(stem, fontsize=8)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    if not panels:
        axes[0][0].text(0.5, 0.5, 'nothing logged yet', ha='center', va='center')
    fig.suptitle(title or ('training loss' if curve == 'loss' else 'validation metric')
                 + ' per step, mean ± std over seeds', fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
