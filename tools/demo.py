"""The mmfame demo: FAME against AdamW on a detector and a segmentor, on CPU, in minutes.

1. writes the synthetic shapes data (``mmfame.datasets.demo``) under ``data/demo`` if missing;
2. trains the FAME detector and segmentor of ``configs/demo`` and their AdamW twins through
   ``tools/train.py`` (same iterations, same seed: ``--cfg-options randomness.seed=0``);
3. evaluates each final checkpoint with ``tools/test.py`` (COCO bbox mAP, ADE20K-style mIoU);
4. prints the metrics, writes ``<work-dir>/summary.json`` and plots the training loss per
   iteration of FAME and AdamW (from mmengine's ``vis_data/scalars.json``) to
   ``<work-dir>/loss_curves.png``.

Usage (from anywhere; relative paths are taken from the current directory)::

    .venv/bin/python tools/demo.py                      # everything, ~10 minutes on 2 CPU cores
    .venv/bin/python tools/demo.py --only det --iters 100

Each run's full log lies in ``<work-dir>/<task>_<optimizer>/train.log`` and ``test.log``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
import warnings

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TASKS = {
    'det': dict(
        name='detection (RetinaNet R-18, COCO layout)',
        configs={
            'fame': 'configs/demo/retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py',
            'adamw': 'configs/demo/retinanet_r18_fpn_adamw_1xb8-300i_demo-coco.py',
        },
        layout='coco',
        metric='coco/bbox_mAP',
        metric_name='bbox mAP'),
    'seg': dict(
        name='segmentation (SegFormer MiT-B0, ADE20K layout)',
        configs={
            'fame': 'configs/demo/segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py',
            'adamw': 'configs/demo/segformer_mit-b0_adamw_1xb8-300i_demo-ade20k-128x128.py',
        },
        layout='ade',
        metric='mIoU',
        metric_name='mIoU (%)'),
}
OPTIMIZERS = ('fame', 'adamw')
LABELS = {'fame': 'FAME', 'adamw': 'AdamW'}
DEFAULT_DATA = osp.join(REPO, 'data', 'demo')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train and test FAME vs AdamW on the synthetic demo data (CPU friendly).')
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'demo'),
                        help='where runs, summary.json and loss_curves.png go '
                        '(default: work_dirs/demo in the repository)')
    parser.add_argument('--data-root', default=DEFAULT_DATA,
                        help='demo data root, generated if missing (default: data/demo)')
    parser.add_argument('--only', choices=tuple(TASKS), default=None,
                        help='run only the detector (det) or only the segmentor (seg)')
    parser.add_argument('--iters', type=int, default=None,
                        help='training iterations per run (default: the configs\' 300)')
    parser.add_argument('--seed', type=int, default=0, help='randomness.seed of every run')
    parser.add_argument('--threads', type=int, default=None,
                        help='CPU threads per run (OMP_NUM_THREADS). Default: torch\'s choice on '
                        'an idle machine, the free cores (at least 1) when the load average '
                        'shows other work: oversubscribed threads slow training down 10-60x')
    parser.add_argument('--skip-existing', action='store_true',
                        help='reuse a run whose final checkpoint exists instead of retraining')
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------- helpers
def data_options(cfg_path, layout, data_root):
    """``--cfg-options`` that point a demo config at ``data_root`` (none for the default)."""
    if osp.abspath(data_root) == osp.abspath(DEFAULT_DATA):
        return []
    from mmengine.config import Config
    cfg = Config.fromfile(cfg_path, import_custom_modules=False)
    root = (osp.join(data_root, 'coco') if layout == 'coco' else
            osp.join(data_root, 'ade', 'ADEChallengeData2016'))
    root = osp.abspath(root) + '/'
    opts = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    for split in ('val', 'test'):
        ev = cfg.get(f'{split}_evaluator')
        if isinstance(ev, dict) and 'ann_file' in ev:
            opts.append(f'{split}_evaluator.ann_file={root}annotations/'
                        f'{osp.basename(ev["ann_file"])}')
    return opts


def iter_options(iters):
    """Shorten (or lengthen) a run: loop, cosine schedule, warm-up and checkpoint together."""
    if iters is None:
        return []
    warmup = min(30, max(1, iters // 10))
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={iters}', f'default_hooks.checkpoint.interval={iters}']


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


def run_logged(cmd, log_path, threads=None):
    """Run ``cmd`` in the repository root, output to ``log_path``; seconds taken, or exit."""
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = env['MKL_NUM_THREADS'] = str(threads)
    env.setdefault('PYTHONWARNINGS', 'ignore')
    start = time.time()
    with open(log_path, 'w') as log:
        log.write(' '.join(cmd) + '\n\n')
        log.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.readlines()[-40:]
        sys.stderr.write(''.join(tail))
        sys.exit(f'demo: command failed (exit {proc.returncode}), full log: {log_path}\n'
                 f'  {" ".join(cmd)}')
    return seconds


def newest_timestamp_dir(work_dir, must_have):
    """The newest ``<work_dir>/<YYYYmmdd_HHMMSS>`` run folder that holds ``must_have``."""
    found = sorted(d for d in glob.glob(osp.join(work_dir, '[0-9]' * 8 + '_' + '[0-9]' * 6))
                   if glob.glob(osp.join(d, must_have)))
    if not found:
        raise FileNotFoundError(f'no run folder with {must_have} in {work_dir}')
    return found[-1]


def final_checkpoint(work_dir, iters):
    last = osp.join(work_dir, 'last_checkpoint')
    if osp.exists(last):
        with open(last) as f:
            path = f.read().strip()
        if path and not osp.isabs(path):
            path = osp.join(REPO, path)
        if osp.exists(path):
            return path
    path = osp.join(work_dir, f'iter_{iters}.pth')
    if osp.exists(path):
        return path
    raise FileNotFoundError(f'no final checkpoint in {work_dir}')


def read_losses(work_dir):
    """(iterations, losses) of the newest training run of ``work_dir``."""
    run = newest_timestamp_dir(work_dir, osp.join('vis_data', 'scalars.json'))
    its, losses = [], []
    with open(osp.join(run, 'vis_data', 'scalars.json')) as f:
        for line in f:
            rec = json.loads(line)
            if 'loss' in rec and 'iter' in rec:
                its.append(rec['iter'])
                losses.append(rec['loss'])
    return its, losses


def read_test_metrics(test_dir):
    run = newest_timestamp_dir(test_dir, '*.json')
    with open(glob.glob(osp.join(run, '*.json'))[0]) as f:
        return json.load(f)


def config_iters(cfg_path):
    from mmengine.config import Config
    return int(Config.fromfile(cfg_path, import_custom_modules=False).train_cfg.max_iters)


def plot(results, tasks, out_path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(max(7.5, 6.5 * len(tasks)), 4.5),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        spec = TASKS[task]
        for opt, style in zip(OPTIMIZERS, ('-', '--')):
            r = results[task][opt]
            ax.plot(r['iters'], r['losses'], style,
                    label=f'{LABELS[opt]} ({spec["metric_name"]} {r["metric"]:.3g})')
        ax.set_yscale('log')
        ax.set_xlabel('iteration')
        ax.set_ylabel('training loss (mean of 10 iterations)')
        ax.set_title(spec['name'], fontsize=10)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend()
    fig.suptitle('FAME vs AdamW on the synthetic shapes demo data (random init, CPU)',
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    warnings.filterwarnings('ignore', message='.*pkg_resources.*')  # mmengine's config lookup
    work_dir = osp.abspath(args.work_dir)
    data_root = osp.abspath(args.data_root)
    tasks = [args.only] if args.only else list(TASKS)
    os.makedirs(work_dir, exist_ok=True)
    t_all = time.time()
    threads, why = choose_threads(args.threads)
    print(f'[demo] CPU threads per run: {why}', flush=True)

    t0 = time.time()
    from mmfame.datasets.demo import make_ade20k_demo, make_coco_demo
    if 'det' in tasks:
        make_coco_demo(data_root)
    if 'seg' in tasks:
        make_ade20k_demo(data_root)
    print(f'[demo] data ready in {data_root} ({time.time() - t0:.1f} s)', flush=True)

    python = sys.executable
    results = {}
    for task in tasks:
        spec = TASKS[task]
        results[task] = {}
        for opt in OPTIMIZERS:
            cfg = osp.join(REPO, spec['configs'][opt])
            run_dir = osp.join(work_dir, f'{task}_{opt}')
            os.makedirs(run_dir, exist_ok=True)
            iters = args.iters or config_iters(cfg)
            opts = data_options(cfg, spec['layout'], data_root)
            train_opts = [f'randomness.seed={args.seed}', *opts, *iter_options(args.iters)]

            ckpt = osp.join(run_dir, f'iter_{iters}.pth')
            if args.skip_existing and osp.exists(ckpt):
                train_s = None
                print(f'[demo] {task}/{LABELS[opt]}: reusing {ckpt}', flush=True)
            else:
                print(f'[demo] {task}/{LABELS[opt]}: training {iters} iterations '
                      f'({osp.basename(cfg)}) ...', flush=True)
                train_s = run_logged(
                    [python, osp.join(REPO, 'tools', 'train.py'), cfg, '--work-dir', run_dir,
                     '--cfg-options', *train_opts], osp.join(run_dir, 'train.log'), threads)
                ckpt = final_checkpoint(run_dir, iters)
            test_dir = osp.join(run_dir, 'test')
            test_s = run_logged(
                [python, osp.join(REPO, 'tools', 'test.py'), cfg, ckpt, '--work-dir', test_dir,
                 *(['--cfg-options', *opts] if opts else [])], osp.join(run_dir, 'test.log'),
                threads)
            metrics = read_test_metrics(test_dir)
            its, losses = read_losses(run_dir)
            if not losses:  # fewer iterations than the logging interval (10)
                its, losses = [iters], [float('nan')]
            if spec['metric'] in metrics:
                value = float(metrics[spec['metric']])
            else:  # e.g. CocoMetric with no detection above the score threshold: nothing found
                print(f'[demo] {task}/{LABELS[opt]}: no {spec["metric"]} in the test results '
                      f'(no predictions kept?): counted as 0', flush=True)
                value = 0.0
            results[task][opt] = dict(
                config=spec['configs'][opt], checkpoint=ckpt, iterations=iters,
                metric_key=spec['metric'], metric=value, test_metrics=metrics,
                train_seconds=None if train_s is None else round(train_s, 1),
                test_seconds=round(test_s, 1), iters=its, losses=losses)
            timing = 'reused' if train_s is None else f'{train_s:.0f} s'
            print(f'[demo] {task}/{LABELS[opt]}: {spec["metric_name"]} = {value:.4g} '
                  f'(train {timing}, test {test_s:.0f} s, loss {losses[0]:.3f} -> '
                  f'{losses[-1]:.3f})', flush=True)

    plot_path = osp.join(work_dir, 'loss_curves.png')
    plot(results, tasks, plot_path)
    summary = {task: {opt: {k: v for k, v in r.items() if k not in ('iters', 'losses')}
                      for opt, r in res.items()} for task, res in results.items()}
    summary['threads'] = threads
    summary['total_seconds'] = round(time.time() - t_all, 1)
    with open(osp.join(work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)

    print('\n' + '=' * 78)
    print(f'{"task":<5} {"metric":<12} {"FAME":>10} {"AdamW":>10}   final loss FAME / AdamW')
    for task in tasks:
        spec = TASKS[task]
        f, a = results[task]['fame'], results[task]['adamw']
        print(f'{task:<5} {spec["metric_name"]:<12} {f["metric"]:>10.4g} {a["metric"]:>10.4g}'
              f'   {f["losses"][-1]:.4f} / {a["losses"][-1]:.4f}')
    print('=' * 78)
    print(f'loss curves: {plot_path}')
    print(f'summary:     {osp.join(work_dir, "summary.json")}')
    print(f'total time:  {time.time() - t_all:.0f} s')


if __name__ == '__main__':
    main()
