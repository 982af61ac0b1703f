"""Optimizer-state bytes per rank of the shipped configs: FAME vs AdamW under DDP, ZeRO-1, FSDP.

    python tools/analysis_tools/state_memory.py [--ranks 1 8 64] [CONFIG ...]

Builds each config's model (random init, nothing downloaded) to count its trainable parameters.
Per element FAME keeps 4 fp32 tensors (m1, m2, m3, v: 16 B; 24 with ``sq_betas``), AdamW 2 (8 B);
the per-parameter ``step`` scalars are left out. DDP keeps all of it on every rank; ZeRO-1
(torch's ``ZeroRedundancyOptimizer``) gives whole parameters to ranks, largest first to the least
loaded rank (all parameters taken as one group), so the table shows its fullest rank; FSDP shards the flat parameters evenly (padded to
a multiple of the world size).
"""
import argparse
import glob
import os.path as osp
import sys

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

BYTES_PER_ELEMENT = {'FAME': 16, 'AdamW': 8}


def zero_shards(groups, world_size):
    """Elements per rank under ZeroRedundancyOptimizer's partition: group by group, largest
    parameter first, each to the rank holding the fewest elements so far."""
    loads = [0] * world_size
    for numels in groups:
        for n in sorted(numels, reverse=True):
            loads[loads.index(min(loads))] += n
    return loads


def per_rank_elements(numels, world_size):
    """Optimizer-state elements on the fullest rank: {'DDP', 'ZeRO-1', 'FSDP'}."""
    total = sum(numels)
    return {'DDP': total, 'ZeRO-1': max(zero_shards([numels], world_size)),
            'FSDP': -(-total // world_size)}


def model_numels(config):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from mmfame.experiments.configs import load_config
    cfg = load_config(config) if not isinstance(config, Config) else config
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model)
    return [p.numel() for p in model.parameters() if p.requires_grad]


def table(rows, ranks):
    head = ['config', 'params', 'optimizer'] + [f'{s} ×{r}' for s in ('DDP', 'ZeRO-1', 'FSDP')
                                                 for r in ranks]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, numels in rows:
        per = {r: per_rank_elements(numels, r) for r in ranks}
        for opt, b in BYTES_PER_ELEMENT.items():
            cells = [f'{per[r][s] * b / 2**20:,.1f}' for s in ('DDP', 'ZeRO-1', 'FSDP')
                     for r in ranks]
            lines.append(f'| {name} | {sum(numels) / 1e6:.1f} M | {opt} | ' + ' | '.join(cells)
                         + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', help='default: configs/coco and configs/ade20k')
    parser.add_argument('--ranks', nargs='+', type=int, default=[1, 8, 64])
    args = parser.parse_args()
    import mmfame  # noqa: F401  (registers FAME for the configs)
    configs = args.configs or sorted(glob.glob(osp.join(_REPO, 'configs', 'coco', '*.py'))
                                     + glob.glob(osp.join(_REPO, 'configs', 'ade20k', '*.py')))
    rows = [(osp.splitext(osp.basename(c))[0], model_numels(c)) for c in configs]
    print('Optimizer state per rank, MiB (fullest rank)\n')
    print(table(rows, args.ranks))


if __name__ == '__main__':
    main()
