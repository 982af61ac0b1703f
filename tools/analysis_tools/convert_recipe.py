"""Convert an OpenMMLab recipe (SGD, AdamW or Adam) to FAME: write the delta config, print the rules.

Usage::

    python tools/analysis_tools/convert_recipe.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py \\
        configs/my/faster-rcnn_r50_fpn_fame_1x_coco.py
    python tools/analysis_tools/convert_recipe.py my_configs/my_retinanet.py my_configs/my_fame.py \\
        --lr 2e-4 --gpus 4

The written config is a short ``_base_`` delta; its lr is one line, ``base_lr = ...``, which
``tools/analysis_tools/lr_finder.py --apply`` sets from an LR range test. The rules live in
``mmfame/recipe.py``; what they cannot convert is refused with the key, its value and what to do.
"""
import argparse
import os.path as osp
import sys

from mmfame.experiments.configs import load_config
from mmfame.recipe import RecipeError, convert, render


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', help='the recipe: a config file, or pkg::path (mmdet::, mmseg::, ...)')
    p.add_argument('out', help='the FAME config to write (not overwritten without --force)')
    p.add_argument('--lr', type=float, help="FAME's lr instead of the rule's")
    p.add_argument('--weight-decay', type=float, help="FAME's weight decay instead of the rule's")
    p.add_argument('--gpus', type=int,
                   help='GPUs the run uses, for the total batch (default: from the NxbB name)')
    p.add_argument('--force', action='store_true', help='overwrite OUT')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.out) and not args.force:
        sys.exit(f'{args.out} exists: pass --force to overwrite it')
    base = args.config
    if '::' not in base:  # a local base, relative to the written config (as mmengine reads it)
        base = osp.relpath(osp.abspath(base), osp.dirname(osp.abspath(args.out)))
    try:
        cfg = load_config(args.config)
        conversion = convert(cfg, base, lr=args.lr, weight_decay=args.weight_decay,
                             gpus=args.gpus)
    except (RecipeError, ValueError) as e:
        sys.exit(f'cannot convert {args.config}: {e}')
    text = render(conversion, args.config)
    if osp.dirname(args.out):
        import os
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'wrote {args.out} (FAME lr {conversion.lr:g}); rules applied:')
    for rule in conversion.rules:
        print(f'  - {rule}')


if __name__ == '__main__':
    main()
