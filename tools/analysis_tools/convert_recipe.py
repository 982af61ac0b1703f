"""Convert an OpenMMLab recipe (SGD, AdamW or Adam) to FAME: write the delta config, print the rules.

Usage::

    python tools/analysis_tools/convert_recipe.py mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py \\
        configs/my/faster-rcnn_r50_fpn_fame_1x_coco.py
    python tools/analysis_tools/convert_recipe.py my_configs/my_retinanet.py my_configs/my_fame.py \\
        --lr 2e-4 --gpus 4

    # every shipped config: convert its upstream base, compare with it, print a Markdown table
    python tools/analysis_tools/convert_recipe.py --shipped

The written config is a short ``_base_`` delta; its lr is one line, ``base_lr = ...``, which
``tools/analysis_tools/lr_finder.py --apply`` sets from an LR range test. The rules live in
``mmfame/recipe.py``; what they cannot convert is refused with the key, its value and what to do.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

from mmfame.experiments.configs import REPO, load_config, select_configs
from mmfame.experiments.upstream import upstream_base
from mmfame.recipe import RecipeError, convert, differences, render

SHIPPED = ('ade20k', 'coco', 'mmyolo')  # the shipped recipes' groups (not the demo configs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config', nargs='?',
                   help='the recipe: a config file, or pkg::path (mmdet::, mmseg::, ...)')
    p.add_argument('out', nargs='?',
                   help='the FAME config to write (not overwritten without --force)')
    p.add_argument('--shipped', action='store_true',
                   help="convert every shipped config's upstream base and compare (a table)")
    p.add_argument('--lr', type=float, help="FAME's lr instead of the rule's")
    p.add_argument('--weight-decay', type=float, help="FAME's weight decay instead of the rule's")
    p.add_argument('--gpus', type=int,
                   help='GPUs the run uses, for the total batch (default: from the NxbB name)')
    p.add_argument('--force', action='store_true', help='overwrite OUT')
    args = p.parse_args(argv)
    if not args.shipped and not (args.config and args.out):
        p.error('give CONFIG and OUT (or --shipped)')
    return args


def shipped_table() -> str:
    """Each shipped config's upstream base, converted and compared with the shipped config."""
    rows = ['| config | upstream base | recipe | FAME lr | weight decay | rules | same as shipped |',
            '|---|---|---|---|---|---|---|']
    for path in (osp.join(REPO, p) for p in select_configs(SHIPPED)):
        base = upstream_base(path)
        name = osp.relpath(path, REPO)
        try:
            recipe = load_config(base)
        except ValueError as e:  # mmyolo's bases ship inside mmyolo
            rows.append(f'| {name} | `{base}` | | | | | not checked: {e} |')
            continue
        conversion = convert(recipe, base)
        with tempfile.TemporaryDirectory() as tmp:
            out = osp.join(tmp, 'fame.py')
            with open(out, 'w') as f:
                f.write(render(conversion, base))
            shipped = load_config(path)
            diff = differences(load_config(out), shipped)
        optimizer = recipe.optim_wrapper.optimizer
        wd = shipped.optim_wrapper.optimizer.get('weight_decay', '')
        rows.append(f"| {name} | `{base}` | {optimizer.type} lr {optimizer.lr:g} | "
                    f'{conversion.lr:g} | {wd} | {len(conversion.rules)} | '
                    + ('yes' if not diff else 'NO: ' + '; '.join(diff)) + ' |')
    return '\n'.join(rows)


def main(argv=None):
    args = parse_args(argv)
    if args.shipped:
        table = shipped_table()
        print(table)
        sys.exit(1 if '| NO: ' in table else 0)
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
        os.makedirs(osp.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    print(f'wrote {args.out} (FAME lr {conversion.lr:g}); rules applied:')
    for rule in conversion.rules:
        print(f'  - {rule}')


if __name__ == '__main__':
    main()
