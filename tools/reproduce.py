"""Reproduce the shipped COCO / ADE20K experiments: FAME against its upstream baseline, on Slurm,
with torchrun or locally; resumable; gathered into tables, metafiles and a plot.

Commands (``--work-dir`` holds one matrix of runs; default ``work_dirs/reproduce``)::

    # launch every COCO config, FAME and the unchanged upstream config, 3 seeds, on Slurm
    python tools/reproduce.py launch coco --settings fame baseline --seeds 0 1 2 \\
        --launcher slurm --partition PART --gpus 8 --gpus-per-node 8 --cpus-per-task 5
    python tools/reproduce.py status            # every run: pending/running/finished/failed
    python tools/reproduce.py gather            # tables, metafiles, configs/README.md, plot
    python tools/reproduce.py cost coco ade20k  # GPU-hours and memory before launching

``launch`` is idempotent: rerun the same command after a ``scancel`` or a crash and finished runs
are left alone, interrupted ones continue from their newest checkpoint (every launch passes
``--resume``), pending ones start. With ``--launcher slurm`` each run is submitted as a batch job
that checkpoints on the stop signal and requeues itself, and the command returns: Slurm owns the
runs (``status`` asks it). Locally and with torchrun the command waits for the runs it started;
a run trains once: a launch holds a lock per run whose lease the training process keeps, a second
launch (from any host) leaves held runs alone, saying who holds them, and takes over those whose
trainer is gone. SIGTERM to a waiting launch stops its jobs with a checkpoint. ``--retries K``
relaunches a local run that was preempted or stopped after making progress up to K times; one
that failed without a new checkpoint is reported with its log, not retried. Configs are groups (``coco``,
``ade20k``, ``demo``), config names or paths, or globs (``'*retinanet*'``). Settings are
``mmfame.experiments.configs.SETTINGS`` (``--help`` lists them): ``fame`` is the shipped config
as it is, ``baseline`` its ``mmdet::``/``mmseg::`` base unchanged, the others replace the
optimizer keeping the config's lr, betas, eps, weight decay and schedule. Epoch-based configs
keep their schedule; ``--quick N`` makes every
run N iterations long (a smoke run, checkpoints every N/4).
"""
import argparse
import os.path as osp
import sys

from mmfame.experiments import configs, runs

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

DEFAULT_WORK_DIR = osp.join(REPO, 'work_dirs', 'reproduce')
COST_MARKERS = ('<!-- cost-table:start -->', '<!-- cost-table:end -->')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n', 2)[2])
    sub = p.add_subparsers(dest='command', required=True)

    def work_dir(q):
        q.add_argument('--work-dir', default=DEFAULT_WORK_DIR,
                       help='the matrix\'s runs (default: work_dirs/reproduce)')

    q = sub.add_parser('launch', help='train the runs of a matrix that are not finished')
    q.add_argument('configs', nargs='+', help='groups (coco, ade20k, demo), names, paths, globs')
    q.add_argument('--settings', nargs='+', default=['fame', 'baseline'],
                   help=f'default: fame baseline; known: {", ".join(configs.DOC_SETTINGS)}')
    q.add_argument('--seeds', nargs='+', type=int, default=[0])
    q.add_argument('--quick', type=int, default=None, metavar='ITERS',
                   help='an ITERS-iteration smoke budget for every run (default: the schedules)')
    q.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='passed to every run (part of the matrix: a rerun must repeat them)')
    q.add_argument('--amp', action='store_true',
                   help='train every run with train.py --amp (fp16, dynamic loss scale)')
    q.add_argument('--data-root', nargs='+', default=[], metavar='DATASET=PATH',
                   help='dataset roots: coco=PATH for the mmdet configs, ade20k=PATH for the '
                   "mmseg ones (default: the configs' data/coco/, data/ade/...)")
    work_dir(q)
    q.add_argument('--launcher', choices=runs.LAUNCHERS, default='local',
                   help='local: tools/train.py; dist: tools/dist_train.sh; slurm: '
                   'tools/slurm_train.sh')
    q.add_argument('--partition', help='Slurm partition (--launcher slurm)')
    q.add_argument('--gpus', type=int, help='GPUS of slurm_train.sh / processes of dist_train.sh')
    q.add_argument('--gpus-per-node', type=int, help='GPUS_PER_NODE of slurm_train.sh')
    q.add_argument('--cpus-per-task', type=int, help='CPUS_PER_TASK of slurm_train.sh')
    q.add_argument('--srun-args', help='SRUN_ARGS of slurm_train.sh (e.g. "--quotatype=auto")')
    q.add_argument('--max-jobs', type=int, default=1,
                   help='local/dist runs at the same time (default 1; Slurm runs are all '
                   'submitted)')
    q.add_argument('--retries', type=int, default=0,
                   help='relaunch a local/dist run that was preempted or stopped after making '
                   'progress up to this many times (Slurm runs requeue themselves)')

    q = sub.add_parser('status', help='list every run of the matrix and its state')
    work_dir(q)

    q = sub.add_parser('gather', help='tables, metafiles, README columns and plot of the runs')
    work_dir(q)
    q.add_argument('--docs-root', default=None,
                   help='where configs/README.md, configs/*/metafile.yml and model-index.yml are '
                   'updated (default: this repository, except for a --quick matrix)')

    q = sub.add_parser('cost', help='expected GPU-hours and memory per config (upstream numbers)')
    q.add_argument('configs', nargs='*', default=['coco', 'ade20k'])
    q.add_argument('--measured', metavar='WORK_DIR',
                   help='s/iter and GPU-hours from the FAME runs of a matrix in WORK_DIR (e.g. a '
                   '--quick one on your cluster): upstream publishes no training times')
    q.add_argument('--write', action='store_true',
                   help="replace the table in configs/README.md's cost section")
    return p.parse_args(argv)


def cmd_launch(args) -> int:
    bad = [x for x in args.data_root if '=' not in x]
    if bad:
        raise ValueError(f'--data-root takes DATASET=PATH (coco=..., ade20k=...), got {bad[0]!r}')
    matrix = runs.Matrix(configs=configs.select_configs(args.configs),
                         settings=list(args.settings), seeds=list(args.seeds), quick=args.quick,
                         cfg_options=list(args.cfg_options), amp=args.amp,
                         data_roots={k: osp.abspath(v) for k, v in
                                     (x.split('=', 1) for x in args.data_root)})
    launcher = runs.Launcher(args.launcher, partition=args.partition, gpus=args.gpus,
                             gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                             srun_args=args.srun_args)
    states = runs.launch(matrix, args.work_dir, launcher, args.max_jobs, args.retries,
                         echo=lambda s: print(s, flush=True))
    print_status(args.work_dir)
    ok = ('finished', 'running') if args.launcher == 'slurm' else ('finished',)  # Slurm's now
    return 0 if all(s in ok for s in states.values()) else 1


def print_status(work_dir: str) -> None:
    matrix = runs.Matrix.load(work_dir)
    rows = [runs.describe(work_dir, run) for run in matrix.runs]
    width = max(len(r['key']) for r in rows)
    print(f'{"run":<{width}}  {"state":<11}  progress')
    for r in rows:
        progress = [f'iter {r["last_iter"]}' if r['last_iter'] is not None else '',
                    f'checkpoint {osp.basename(r["checkpoint"])}' if r['checkpoint'] else '',
                    ', '.join(f'{k} {v:.4g}' for k, v in r['metrics'].items() if v is not None)]
        if r['holder']:
            progress.append(f'held by {r["holder"]}' if r['holder_alive'] else
                            f'its launch is gone ({r["holder"]}): the next launch takes it over')
        print(f'{r["key"]:<{width}}  {r["state"]:<11}  {"; ".join(x for x in progress if x)}')
    counts = {s: sum(r['state'] == s for r in rows) for s in runs.STATES}
    print(', '.join(f'{n} {s}' for s, n in counts.items() if n), f'of {len(rows)} runs')
    for r in rows:
        if r['state'] in ('failed', 'interrupted'):
            print(f'\n--- {r["key"]} ({r["state"]}), last lines of {r["work_dir"]}/launch.log:')
            print(r['log_tail'].rstrip())


def cmd_status(args) -> int:
    print_status(osp.abspath(args.work_dir))
    return 0


def cmd_gather(args) -> int:
    from mmfame.experiments import report
    work_dir = osp.abspath(args.work_dir)
    matrix = runs.Matrix.load(work_dir)
    records = [runs.describe(work_dir, run) for run in matrix.runs]
    baseline = next((s for s in ('baseline', 'adamw') if s in matrix.settings), 'baseline')
    rows = report.summarize(records, baseline=baseline)
    table = report.matrix_markdown(rows)
    report.write_outputs(osp.join(work_dir, 'results'), rows, records, table, curve='metric')
    print(table)
    print(f'wrote {work_dir}/results.md, results.json and results.png')
    docs = args.docs_root or (None if matrix.quick else REPO)
    if docs is None:
        print('a --quick matrix is a smoke run: its numbers do not go into configs/README.md or '
              'the metafiles (give --docs-root DIR to write them there)')
        return 0
    readme = osp.join(docs, 'configs', 'README.md')
    if osp.exists(readme):
        with open(readme) as f:
            text = f.read()
        with open(readme, 'w') as f:
            f.write(report.update_readme(text, rows))
        print(f'updated {readme}')
    written = report.write_metafiles(rows, REPO, out_root=docs)
    print('wrote ' + ', '.join(map(str, written)))
    return 0


def cmd_cost(args) -> int:
    from mmfame.experiments import logs, upstream
    rows = upstream.cost_rows(configs.select_configs(args.configs))
    if args.measured:
        work_dir = osp.abspath(args.measured)
        seconds = {}
        for run in runs.Matrix.load(work_dir).runs:
            if configs.parse_setting(run.setting)[0] == 'fame':
                records = logs.all_scalars(runs.run_dir(work_dir, run))
                s = logs.summarize_run(records, [])['sec_per_iter']
                if s is not None:
                    seconds.setdefault(run.config, []).append(s)
        rows = upstream.add_measured_times(
            rows, {c: sorted(v)[len(v) // 2] for c, v in seconds.items()})
    table = upstream.cost_markdown(rows)
    print(table)
    if args.write:
        path = osp.join(REPO, 'configs', 'README.md')
        with open(path) as f:
            text = f.read()
        start, end = COST_MARKERS
        if start not in text or end not in text:
            sys.exit(f'{path} has no {start} ... {end} section to replace')
        head, rest = text.split(start, 1)
        with open(path, 'w') as f:
            f.write(head + start + '\n' + table.strip() + '\n' + end + rest.split(end, 1)[1])
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    commands = dict(launch=cmd_launch, status=cmd_status, gather=cmd_gather, cost=cmd_cost)
    try:
        return commands[args.command](args)
    except (ValueError, RuntimeError) as e:
        sys.exit(f'reproduce: {e}')


if __name__ == '__main__':
    sys.exit(main())
