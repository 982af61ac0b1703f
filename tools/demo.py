"""The mmfame demo: FAME against AdamW on a detector and a segmentor, on CPU, in minutes.

Writes the synthetic shapes data (``mmfame.datasets.demo``) under ``--data-root`` if missing,
trains the FAME configs of ``configs/demo`` with the experiment engine's ``fame`` and ``adamw``
settings (AdamW with the config's lr, betas, eps, weight decay and schedule: the shipped AdamW
twins), tests each run and writes the engine's summary of them: ``<work-dir>/summary.md`` (the
test metric's paired difference to AdamW), ``summary.json`` and the loss curves,
``summary.png``::

    .venv/bin/python tools/demo.py                      # everything, ~10 minutes on 2 CPU cores
    .venv/bin/python tools/demo.py --only det --iters 100

Runs lie in ``<work-dir>/<config stem>/<setting>/seed_<S>/`` (``launch.log``, ``test.log``;
the child config beside it, ``seed_<S>.py``); a rerun reuses finished runs and their tests, other arguments need another
``--work-dir``.
"""
import argparse
import functools
import os
import os.path as osp
import sys
import time
import warnings

from mmfame.experiments import logs, metrics, report, runs

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

TASKS = {  # --only choice -> (FAME config, its task in mmfame.experiments.metrics.METRICS)
    'det': ('configs/demo/retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py', 'Object Detection'),
    'seg': ('configs/demo/segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py',
            'Semantic Segmentation'),
}
SETTINGS = {'fame': 'FAME', 'adamw': 'AdamW'}
DEFAULT_DATA = osp.join(REPO, 'data', 'demo')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='FAME vs AdamW on the synthetic demo data, on CPU; reruns reuse finished runs')
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'demo'),
                        help='runs, summary.md, .json and .png (default: work_dirs/demo)')
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='demo data root, generated if missing (default: data/demo)')
    parser.add_argument('--only', choices=tuple(TASKS),
                        help='run only the detector (det) or only the segmentor (seg)')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations per run (default: the configs\' 300)')
    parser.add_argument('--seed', type=int, default=0, help='randomness.seed of every run')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads per run (OMP_NUM_THREADS). Default: torch\'s choice on '
                        'an idle machine, the free cores (at least 1) when the load average '
                        'shows other work: oversubscribed threads slow training down 10-60x')
    return parser.parse_args(argv)


def choose_threads(requested):
    """Threads per run: ``requested``, else None (torch's default) unless other work runs."""
    if requested:
        return requested, f'{requested} (--threads)'
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None, 'torch default'
    if load < 0.5:
        return None, f'torch default (load average {load:.1f} on {cores} cores)'
    threads = max(1, int(cores - load))
    return threads, (f'{threads} (load average {load:.1f} on {cores} cores: other work shares '
                     'them; --threads overrides)')


def record(work_dir, run, task):
    """A finished run as the reports read it (:func:`runs.describe`), with its test's metrics
    of the task's keys (tested once) as its metrics."""
    d, keys = runs.run_dir(work_dir, run), metrics.task_keys(TASKS[task][1])
    key, info = keys[0], metrics.metric_info(keys[0])
    try:
        tested = logs.test_metrics(osp.join(d, 'test'))
    except FileNotFoundError:
        tested = runs.evaluate(work_dir, run)
    r = runs.describe(work_dir, run)
    r.update(metrics={k: float(tested.get(k, 0.0)) for k in keys if k in tested or k == key},
             test_metrics=tested)
    losses = r['curve']['loss']
    loss = f'{losses[0][1]:.3f} -> {losses[-1][1]:.3f}' if losses else 'not logged'
    note = '' if key in tested else f'; no {key} in the test results: counted as 0'
    print(f'[demo] {task}/{SETTINGS[run.setting]}: {info.label} = {info.format(r["metrics"][key])} '
          f'(train {r["seconds"]:.0f} s, loss {loss}{note})', flush=True)
    return r


def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings('ignore', message='.*pkg_resources.*')  # mmengine's config lookup
    t_all = time.time()
    work_dir, data_root = osp.abspath(args.work_dir), osp.abspath(args.data_root)
    tasks = [args.only] if args.only else list(TASKS)
    threads, why = choose_threads(args.threads)
    print(f'[demo] CPU threads per run: {why}', flush=True)
    if threads:  # the engine's children inherit this environment
        os.environ['OMP_NUM_THREADS'] = os.environ['MKL_NUM_THREADS'] = str(threads)
    os.environ.setdefault('PYTHONWARNINGS', 'ignore')

    from mmfame.datasets.demo import make_ade20k_demo, make_coco_demo
    make = {'det': ('coco', make_coco_demo), 'seg': ('ade20k', make_ade20k_demo)}
    roots = {make[t][0]: make[t][1](data_root)['data_root'] for t in tasks}
    matrix = runs.Matrix(configs=[TASKS[t][0] for t in tasks], settings=list(SETTINGS),
                         seeds=[args.seed], quick=args.iters,
                         data_roots={} if data_root == DEFAULT_DATA else roots)
    try:
        states = runs.launch(matrix, work_dir, runs.Launcher('local'), max_jobs=1,
                             echo=functools.partial(print, flush=True))
        failed = [key for key, st in states.items() if st != 'finished']
        if failed:
            raise RuntimeError(f'{", ".join(failed)} did not finish:\n'
                               + logs.tail(osp.join(work_dir, failed[0], 'launch.log')))
        records = [record(work_dir, runs.Run(TASKS[t][0], s, args.seed), t)
                   for t in tasks for s in SETTINGS]
    except (ValueError, RuntimeError) as e:  # another matrix in work_dir, a failed run or test
        sys.exit(f'demo: {e}')

    rows = report.summarize(records, baseline='adamw')
    report.write_outputs(osp.join(work_dir, 'summary'), rows, records,
                         report.matrix_markdown(rows), curve='loss',
                         title='FAME vs AdamW on the synthetic shapes demo data (random init, CPU)',
                         extra=dict(threads=threads, total_seconds=round(time.time() - t_all, 1)))
    print(f'[demo] summary.md, summary.json and the loss curves (summary.png) in {work_dir} '
          f'({time.time() - t_all:.0f} s)')


if __name__ == '__main__':
    main()
