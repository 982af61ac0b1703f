# Copyright (c) OpenMMLab. All rights reserved. Adapted for mmfame.
"""Test (and evaluate) an MMDetection or MMSegmentation checkpoint.

MMDetection 3.x's ``tools/test.py`` argument surface; the config's ``default_scope`` picks the
package. Scope-dependent behaviour follows each package's own test.py:

* ``--out``: mmdet dumps the predictions to a ``.pkl`` file (``DumpDetResults``); mmseg writes
  prediction maps into a directory (``test_evaluator.output_dir`` with ``keep_results``);
* ``--tta``: mmdet falls back to a default ``DetTTAModel``/flip pipeline when the config has none;
  mmseg uses the config's ``tta_model``/``tta_pipeline``;
* ``--show``/``--show-dir``: each package's visualization hook.

Checkpoints are loaded with ``weights_only=True`` (torch >= 2.6) through mmfame's allowlist
(``mmfame.WeightsOnlyLoadHook``, added to a config without it); without CUDA the distributed
launchers run on gloo.
"""
import argparse
import os
import os.path as osp
import warnings
from copy import deepcopy

from mmengine import ConfigDict
from mmengine.config import Config, DictAction

import mmfame  # noqa: F401  (registers FAME)
from mmfame.runtime import (add_custom_hooks, build_runner, finalize_distributed,
                            setup_cpu_distributed, use_resumable_strategy)


# TODO: support fuse_conv_bn and format_only
def parse_args():
    parser = argparse.ArgumentParser(
        description='Test (and eval) a detector or a segmentor')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='the directory to save the file containing evaluation metrics')
    parser.add_argument(
        '--out',
        type=str,
        help='mmdet: dump predictions to a pickle file for offline evaluation; '
        'mmseg: the directory to save output prediction maps')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. '
        'If specified, it will be automatically saved '
        'to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
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
    parser.add_argument('--tta', action='store_true', help='Test time augmentation')
    # When using PyTorch version >= 2.0.0, the `torch.distributed.launch`
    # will pass the `--local-rank` parameter to `tools/train.py` instead
    # of `--local_rank`.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def trigger_visualization_hook_mmseg(cfg, args):
    """mmseg 1.x tools/test.py's ``trigger_visualization_hook``."""
    default_hooks = cfg.default_hooks
    if 'visualization' in default_hooks:
        visualization_hook = default_hooks['visualization']
        # Turn on visualization
        visualization_hook['draw'] = True
        if args.show:
            visualization_hook['show'] = True
            visualization_hook['wait_time'] = args.wait_time
        if args.show_dir:
            visualizer = cfg.visualizer
            visualizer['save_dir'] = args.show_dir
    else:
        raise RuntimeError(
            'VisualizationHook must be included in default_hooks.'
            'refer to usage '
            '"visualization=dict(type=\'VisualizationHook\')"')
    return cfg


def setup_mmdet_tta(cfg):
    """mmdet 3.x tools/test.py's ``--tta`` handling (default TTA model and flip pipeline)."""
    if 'tta_model' not in cfg:
        warnings.warn('Cannot find ``tta_model`` in config, '
                      'we will set it as default.')
        cfg.tta_model = dict(
            type='DetTTAModel',
            tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('Cannot find ``tta_pipeline`` in config, '
                      'we will set it as default.')
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(test_data_cfg.pipeline)
        flip_tta = dict(
            type='TestTimeAug',
            transforms=[
                [
                    dict(type='RandomFlip', prob=1.),
                    dict(type='RandomFlip', prob=0.)
                ],
                [
                    dict(
                        type='PackDetInputs',
                        meta_keys=('img_id', 'img_path', 'ori_shape',
                                   'img_shape', 'scale_factor', 'flip',
                                   'flip_direction'))
                ],
            ])
        cfg.tta_pipeline[-1] = flip_tta
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg


def main():
    args = parse_args()

    # load config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    is_mmdet = cfg.get('default_scope', None) == 'mmdet'

    if is_mmdet:
        # Reduce the number of repeated compilations and improve
        # testing speed.
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

    cfg.load_from = args.checkpoint

    if args.show or args.show_dir:
        if is_mmdet:
            from mmdet.engine.hooks.utils import trigger_visualization_hook
            cfg = trigger_visualization_hook(cfg, args)
        else:
            cfg = trigger_visualization_hook_mmseg(cfg, args)

    if args.tta:
        if is_mmdet:
            cfg = setup_mmdet_tta(cfg)
        else:
            cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
            cfg.tta_model.module = cfg.model
            cfg.model = cfg.tta_model

    if args.out is not None and not is_mmdet:
        # mmseg: --out is a directory of prediction maps
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True

    # CPU launchers (no-op with CUDA)
    setup_cpu_distributed(cfg)

    # checkpoints that load under torch >= 2.6, unless the config lists the hook itself
    add_custom_hooks(cfg, 'mmfame.WeightsOnlyLoadHook')
    use_resumable_strategy(cfg)  # a FlexibleRunner loads before hooks run: its strategy does
    # build the runner from config (with runner_type: from the config's package's RUNNERS)
    runner = build_runner(cfg)

    # mmdet: add `DumpResults` dummy metric
    if args.out is not None and is_mmdet:
        assert args.out.endswith(('.pkl', '.pickle')), \
            'The dump file must be a pkl file.'
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))

    # start testing
    runner.test()
    finalize_distributed()


if __name__ == '__main__':
    main()
