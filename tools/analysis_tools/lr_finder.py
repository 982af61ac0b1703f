"""LR range test: train a few iterations with an exponentially growing lr, suggest an lr.

Works on any mmdet / mmseg / mmyolo training config and any optimizer (FAME, AdamW, SGD: run it
on your baseline too and compare the curves), on one process, under torchrun
(``--launcher pytorch``) and under Slurm (``--launcher slurm``), where every rank averages the
loss, so all stop at the same iteration. Writes ``lr_finder.{json,csv,png}`` and the run's log to
its own work dir (``work_dirs/lr_finder/<config>``): the config's work dir and checkpoints are
not touched. With ``--apply`` it sets the suggested lr in a config written by
``convert_recipe.py`` (its ``base_lr = ...`` line).

Usage::

    python tools/analysis_tools/convert_recipe.py mmdet::retinanet/retinanet_r50_fpn_1x_coco.py \\
        configs/my/retinanet_fame.py
    python tools/analysis_tools/lr_finder.py configs/my/retinanet_fame.py --apply
    python -m torch.distributed.run --nproc_per_node 8 tools/analysis_tools/lr_finder.py \
        configs/my/retinanet_fame.py --launcher pytorch                      # 8 GPUs, torchrun
    srun -N 2 --ntasks-per-node 8 --gpus-per-task 1 python tools/analysis_tools/lr_finder.py \
        configs/my/retinanet_fame.py --launcher slurm                        # 16 GPUs, Slurm
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction

import mmfame  # noqa: F401  (registers FAME and LRRangeTestHook)
from mmfame.engine.lr_finder import RULES, range_test_config
from mmfame.recipe import RecipeError, check_lr_line, write_lr
from mmfame.runtime import (add_custom_hooks, build_runner, check_work_dir, finalize_distributed,
                            setup_cpu_distributed, use_amp)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='train config file path')
    p.add_argument('--work-dir',
                   help='where the sweep writes (default work_dirs/lr_finder/<config>)')
    p.add_argument('--start-lr', type=float, default=1e-7)
    p.add_argument('--end-lr', type=float, default=1.0)
    p.add_argument('--num-iters', type=int, default=100, help='iterations of the sweep at most')
    p.add_argument('--rule', choices=list(RULES), default='min/10',
                   help='; '.join(f'{k}: {v}' for k, v in RULES.items()))
    p.add_argument('--apply', action='store_true',
                   help="write the suggested lr into CONFIG's base_lr line (convert_recipe.py's)")
    p.add_argument('--amp', action='store_true', help='mixed precision, as tools/train.py --amp')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config keys, key=value (as tools/train.py)')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    work_dir = args.work_dir or osp.join('work_dirs', 'lr_finder',
                                         osp.splitext(osp.basename(args.config))[0])
    if osp.isdir(work_dir) and any(n.endswith('.pth') or n == 'last_checkpoint'
                                   for n in os.listdir(work_dir)):
        sys.exit(f'--work-dir {work_dir} holds checkpoints (a training run\'s work dir?): the '
                 'LR range test writes its own; pick a new directory')
    check_work_dir(work_dir)
    if args.apply:  # refused now, not after the sweep
        try:
            check_lr_line(args.config)
        except RecipeError as e:
            sys.exit(f'--apply: {e}')
    if args.amp:
        use_amp(cfg)
    try:
        range_test_config(cfg, start_lr=args.start_lr, end_lr=args.end_lr,
                          num_iters=args.num_iters, rule=args.rule, work_dir=work_dir)
    except ValueError as e:
        sys.exit(str(e))
    add_custom_hooks(cfg, 'mmfame.WeightsOnlyLoadHook')  # load_from under torch >= 2.6
    setup_cpu_distributed(cfg)
    runner = build_runner(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if type(h).__name__ == 'LRRangeTestHook')
    if args.apply and runner.rank == 0:
        if hook.result['suggested_lr'] is None:
            sys.exit(f"--apply: {hook.result['why']}; {args.config} is unchanged")
        try:
            write_lr(args.config, hook.result['suggested_lr'],
                     f"lr_finder.py, {hook.result['rule']} ({work_dir}/lr_finder.png)")
        except RecipeError as e:
            sys.exit(str(e))
        print(f"set base_lr = {hook.result['suggested_lr']:.3g} in {args.config}")
    finalize_distributed()


if __name__ == '__main__':
    main()
