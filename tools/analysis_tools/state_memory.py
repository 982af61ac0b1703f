"""Optimizer-state bytes per rank of the shipped configs: FAME vs AdamW under DDP, ZeRO-1, FSDP.

    python tools/analysis_tools/state_memory.py [--ranks 1 8 64] [CONFIG ...]

Builds each config's model (random init, nothing downloaded) and its parameter groups (the
config's own constructor and ``paramwise_cfg``). Per trained element FAME keeps 4 fp32 tensors
(m1, m2, m3, v: 16 B; 24 with ``sq_betas``), AdamW 2 (8 B); frozen parameters hold none, and the
per-parameter ``step`` scalars are left out. DDP keeps all of it on every rank; ZeRO-1 (torch's
``ZeroRedundancyOptimizer``) gives whole parameters to ranks, group by group, largest first to
the least loaded rank (frozen ones count towards the load), so the table shows its fullest rank;
FSDP shards the flat parameters evenly (padded to a multiple of the world size).
"""
import argparse
import glob
import os.path as osp

from mmfame.optim._core import STATE_BYTES

_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

BYTES_PER_ELEMENT = {name: STATE_BYTES[name] for name in ('FAME', 'AdamW')}


def zero_shards(groups, world_size):
    """State elements per rank under ZeroRedundancyOptimizer's partition: group by group, largest
    parameter first, each to the rank holding the fewest elements so far. ``groups`` lists each
    group's parameters as ``(numel, trained)``: frozen ones are placed too but hold no state."""
    loads, state = [0] * world_size, [0] * world_size
    for group in groups:
        for numel, trained in sorted(group, key=lambda p: p[0], reverse=True):
            rank = loads.index(min(loads))
            loads[rank] += numel
            state[rank] += numel if trained else 0
    return state


def per_rank_elements(groups, world_size):
    """Optimizer-state elements on the fullest rank: {'DDP', 'ZeRO-1', 'FSDP'}."""
    total = trained_elements(groups)
    return {'DDP': total, 'ZeRO-1': max(zero_shards(groups, world_size)),
            'FSDP': -(-total // world_size)}


def trained_elements(groups):
    return sum(numel for group in groups for numel, trained in group if trained)


def model_groups(config):
    """The config's parameter groups as ``[[(numel, trained), ...], ...]``."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope

    from mmfame.experiments.configs import load_config
    cfg = load_config(config) if not isinstance(config, Config) else config
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model)
    model.train()  # backbones freeze their stems here (``frozen_stages``), as in training
    # the groups alone: a plain OptimWrapper (AmpOptimWrapper needs a GPU to be built)
    wrapper_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')
    for key in ('loss_scale', 'dtype', 'use_fsdp'):
        wrapper_cfg.pop(key, None)
    optimizer = build_optim_wrapper(model, wrapper_cfg).optimizer
    return [[(p.numel(), p.requires_grad) for p in group['params']]
            for group in optimizer.param_groups]


def table(rows, ranks):
    head = ['config', 'params', 'optimizer'] + [f'{s} ×{r}' for s in ('DDP', 'ZeRO-1', 'FSDP')
                                                 for r in ranks]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, groups in rows:
        per = {r: per_rank_elements(groups, r) for r in ranks}
        for opt, b in BYTES_PER_ELEMENT.items():
            cells = [f'{per[r][s] * b / 2**20:,.1f}' for s in ('DDP', 'ZeRO-1', 'FSDP')
                     for r in ranks]
            lines.append(f'| {name} | {trained_elements(groups) / 1e6:.1f} M | {opt} | '
                         + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('configs', nargs='*', help='default: configs/coco and configs/ade20k')
    parser.add_argument('--ranks', nargs='+', type=int, default=[1, 8, 64])
    args = parser.parse_args()
    import mmfame  # noqa: F401  (registers FAME for the configs)
    configs = args.configs or sorted(glob.glob(osp.join(_REPO, 'configs', 'coco', '*.py'))
                                     + glob.glob(osp.join(_REPO, 'configs', 'ade20k', '*.py')))
    rows = [(osp.splitext(osp.basename(c))[0], model_groups(c)) for c in configs]
    print('Optimizer state per rank, MiB (fullest rank)\n')
    print(table(rows, args.ranks))


if __name__ == '__main__':
    main()
