# Copyright (c) OpenMMLab. All rights reserved. Adapted for mmfame.
"""Train an MMDetection or MMSegmentation model (with FAME or any other optimizer).

MMDetection 3.x's ``tools/train.py`` argument surface. The config's ``default_scope``
(``mmdet``/``mmseg``) decides which package's registries the Runner uses, so one script serves
both. Differences from upstream:

* ``import mmfame`` registers ``type='FAME'`` and mmfame's hooks; a config without them gets
  ``mmfame.WeightsOnlyLoadHook`` (``--resume`` loads Runner checkpoints under torch >= 2.6),
  ``mmfame.PreemptionHook`` (below) and, for ZeRO-1, ``mmfame.ZeroCheckpointHook``; with
  upstream's train.py a config lists them itself (docs/openmmlab.md);
* without CUDA, the distributed launchers run on gloo (``mmfame.runtime.setup_cpu_distributed``);
* a bare ``--resume`` continues from the newest whole checkpoint of the work dir, also where
  ``last_checkpoint`` names a file that is gone, cut short or in another (copied) work dir
  (``mmfame.runtime.resume``);
* SIGTERM or SIGUSR1 (a cluster's preemption, time limit or early warning) saves a checkpoint at
  the end of the current iteration (or of the validation in progress) on every rank and exits
  with 75, "resume me"; a resume inside an epoch continues on the samples that epoch had not
  trained, also on another number of GPUs or batch size (``mmfame.runtime.PreemptionHook``;
  ``--no-preemption-hook`` leaves the signals alone, also where the config lists the hook);
* local checkpoints are written to a temporary name and renamed (``mmfame.runtime.fileio``), and a
  work dir that cannot be written is one line with the fix;
* started by ``tools/reproduce.py``, rank 0 keeps the run's lock fresh (``mmfame.runtime.lease``).
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
import mmfame  # noqa: F401  (registers FAME)
from mmfame.engine import asks_for_zero
from mmfame.runtime import (add_custom_hooks, build_runner, check_work_dir, drop_custom_hooks,
                            finalize_distributed, resume_checkpoint, setup_cpu_distributed, use_amp,
                            use_atomic_checkpoints, use_resumable_strategy)
from mmfame.runtime.lease import hold_run_lease


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector or a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp',
        action='store_true',
        default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='enable automatically scaling LR.')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='If specify checkpoint path, resume from it, while if not '
        'specify, try to auto resume from the latest checkpoint '
        'in the work directory.')
    parser.add_argument(
        '--no-preemption-hook',
        action='store_true',
        help='do not checkpoint and exit with 75 on SIGTERM/SIGUSR1 (PreemptionHook)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)

    return args


def main():
    args = parse_args()
    # launched by tools/reproduce.py: this process keeps the run's lock (mmfame.runtime.lease)
    hold_run_lease()

    # load config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('default_scope', None) == 'mmdet':
        # Reduce the number of repeated compilations and improve
        # training speed.
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()

    # work_dir is determined in this priority: CLI > segment in file > filename
    if args.work_dir is not None:
        # update configs according to CLI args if args.work_dir is not None
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        # use config filename as default work_dir if cfg.work_dir is None
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])

    # a work dir that cannot be written: one line with the fix, before anything is built
    check_work_dir(cfg.work_dir)

    # enable automatic-mixed-precision training
    if args.amp is True:
        use_amp(cfg)

    # enable automatically scaling LR
    if args.auto_scale_lr:
        if 'auto_scale_lr' in cfg and \
                'enable' in cfg.auto_scale_lr and \
                'base_batch_size' in cfg.auto_scale_lr:
            cfg.auto_scale_lr.enable = True
        else:
            raise RuntimeError('Can not find "auto_scale_lr" or '
                               '"auto_scale_lr.enable" or '
                               '"auto_scale_lr.base_batch_size" in your'
                               ' configuration file.')

    # resume is determined in this priority: resume from > auto_resume
    if args.resume == 'auto':
        # the newest whole checkpoint of this work dir (mmengine's own choice, last_checkpoint,
        # may name another work dir's file or one cut short)
        cfg.resume = True
        cfg.load_from = resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    # what a config can list itself: checkpoints that load under torch >= 2.6, a checkpoint on a
    # cluster's stop signal (unless turned off), ZeRO-1 checkpoints that gather every rank's shard
    hooks = ['mmfame.WeightsOnlyLoadHook']
    if args.no_preemption_hook:
        drop_custom_hooks(cfg, 'mmfame.PreemptionHook')
    else:
        hooks.append('mmfame.PreemptionHook')
    if asks_for_zero(cfg.optim_wrapper):
        hooks.append('mmfame.ZeroCheckpointHook')
    add_custom_hooks(cfg, *hooks)
    use_resumable_strategy(cfg)  # a FlexibleRunner loads before hooks run: its strategy does
    # checkpoints written under a temporary name, then renamed: whole or absent, never cut short
    use_atomic_checkpoints(cfg)

    # No CUDA + a distributed launcher: gloo, no device_ids, no SyncBN. No-op with CUDA.
    setup_cpu_distributed(cfg)

    # build the runner from config (with runner_type: from the config's package's RUNNERS)
    runner = build_runner(cfg)

    # start training
    runner.train()
    finalize_distributed()


if __name__ == '__main__':
    main()
