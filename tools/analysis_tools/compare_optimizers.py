"""Compare optimizers on one MMDetection / MMSegmentation config: same budget, same seeds.

Every optimizer setting x seed is one run of the experiment engine (``mmfame.experiments``): a
child config ``<work-dir>/<config>/<setting>/seed_<S>.py`` (the given config with only
the optimizer and the budget replaced; clipping, paramwise rules, schedule shape and data kept),
trained by ``tools/train.py --resume --cfg-options randomness.seed=S``. From mmengine's logged
scalars it writes

* ``<out>.png``: training loss, mean +- std over seeds per optimizer, and the final validation
  metric per optimizer (each seed a dot, mean +- std as an error bar);
* ``<out>.md``: the final metric, the final training loss (mean over the last 10 % of the
  iterations) and the seconds per iteration, mean +- sample std (ddof=1) over the seeds, the
  paired difference to a reference optimizer (same seed = same initialisation and data order),
  and a per-seed table;
* ``<out>.json``: everything in the tables, per seed.

Usage::

    python tools/analysis_tools/compare_optimizers.py \\
        --config configs/demo/segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py \\
        --optimizers fame fame-full adamw adam sgd --seeds 0 1 2 --iters 300 \\
        --threads 1 --jobs 2 --work-dir work_dirs/compare/seg --out docs/results/seg_demo
    # re-plot / re-tabulate from the runs already there, without training:
    python tools/analysis_tools/compare_optimizers.py ... --summary-only

Settings (``--optimizers``) are ``mmfame.experiments.configs.SETTINGS`` (``--help`` lists them),
with ``NAME:key=value`` overrides (``sgd:lr=0.02``, ``fame:beta3=0.5:beta4=0.5``). Finished runs are reused; a work dir
holds one comparison (another set of settings, seeds or budget needs another ``--work-dir``).
"""
import argparse
import os
import os.path as osp
import sys
import time

from mmfame.experiments import logs, report, runs
from mmfame.experiments.configs import (DOC_SETTINGS, load_config, parse_setting,
                                        select_configs)


def collect(work_dir, matrix, metrics=None):
    """The run records of the matrix and the metric keys shown (``metrics``, else detected from
    the finished runs: coco/bbox_mAP or mIoU first)."""
    records = [runs.describe(work_dir, runs.Run(config, setting, seed), metrics or ())
               for config in matrix.configs for setting in matrix.settings
               for seed in matrix.seeds]  # an alias (tema = fame) gets its rows from shared runs
    if not metrics:
        metrics = logs.detect_metrics([r['metrics'] for r in records if r['state'] == 'finished'])
    return records, list(metrics)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', required=True, help='mmdet/mmseg config')
    p.add_argument('--optimizers', nargs='+', default=['fame', 'adamw'],
                   help=f'settings: {", ".join(s for s in DOC_SETTINGS if s != "baseline")}; '
                   'NAME:key=value overrides keys')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=None,
                   help='training iterations per run (schedule scaled to it); default: config')
    p.add_argument('--work-dir', required=True,
                   help='runs go to WORK_DIR/<config>/<setting>/seed_<S>')
    p.add_argument('--out', required=True, help='output prefix: writes OUT.md, OUT.png, OUT.json')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='passed to every tools/train.py run (key=value)')
    p.add_argument('--data-root', default=None,
                   help="dataset root of the config's dataloaders and evaluators")
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
                   help='runs trained at the same time (e.g. --jobs 2 --threads 1 on 2 cores)')
    p.add_argument('--title', default='')
    p.add_argument('--summary-only', action='store_true',
                   help='no training: tabulate and plot the runs already in --work-dir')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work_dir = osp.abspath(args.work_dir)
    out = osp.splitext(osp.abspath(args.out))[0] if args.out.endswith(
        ('.md', '.png', '.json')) else osp.abspath(args.out)
    data_roots = {}
    if args.data_root:
        scope = load_config(args.config).get('default_scope')
        data_roots = {runs.DATASETS[scope]: osp.abspath(args.data_root)}
    for spec in args.optimizers:
        if parse_setting(spec)[0] == 'baseline':
            sys.exit('compare_optimizers: `baseline` needs a shipped config; use '
                     'tools/reproduce.py')
    matrix = runs.Matrix(configs=select_configs([args.config]), settings=list(args.optimizers),
                         seeds=list(args.seeds), quick=args.iters,
                         cfg_options=list(args.cfg_options), data_roots=data_roots)
    t_all = time.time()
    if not args.summary_only:
        if args.threads:
            os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(args.threads)
        os.environ.setdefault('PYTHONWARNINGS', 'ignore')
        runs.launch(matrix, work_dir, runs.Launcher('local'), max_jobs=args.jobs,
                    echo=lambda s: print(s.replace('[reproduce]', '[compare]'), flush=True))
    records, metrics = collect(work_dir, matrix, args.metric)
    missing = [r['key'] for r in records if r['state'] != 'finished']
    if missing:
        print(f'[compare] no finished runs for: {", ".join(missing)}', flush=True)
    if len(missing) == len(records):
        sys.exit(f'compare_optimizers: no finished runs under {work_dir}')
    reference = args.reference if args.reference in matrix.settings else matrix.settings[0]
    rows = [row for row in report.summarize(records, baseline=reference) if row['finished']]
    seconds = {r['key']: r['seconds'] for r in records if r['state'] == 'finished'}
    table = report.comparison_markdown(rows, metrics, args.title, describe=DOC_SETTINGS)
    report.write_outputs(out, rows, records, table, curve='loss', spread=True, title=args.title,
                         metric=metrics[0] if metrics else None,
                         extra=dict(config=args.config, iters=args.iters, seeds=args.seeds,
                                    metrics=metrics, reference=reference, run_seconds=seconds,
                                    total_run_seconds=round(sum(
                                        v for v in seconds.values() if v), 1)))
    print(table)
    print(f'[compare] wrote {out}.md, {out}.png, {out}.json '
          f'({time.time() - t_all:.0f} s this invocation)')
    return rows


if __name__ == '__main__':
    main()
