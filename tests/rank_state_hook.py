"""Test helper imported by the sharding tests' configs: at the end of a run every rank writes the
bytes of optimizer state it holds (its shard under ZeRO or FSDP, all of it under DDP)."""
import json
import os

from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankStateHook(Hook):

    def after_run(self, runner):
        optimizer = runner.optim_wrapper.optimizer
        local = getattr(optimizer, 'optim', optimizer)  # ZeroRedundancyOptimizer's own shard
        nbytes = sum(v.numel() * v.element_size() for state in local.state.values()
                     for k, v in state.items() if k != 'step')
        path = os.path.join(runner.work_dir, f'state_rank{get_rank()}.json')
        with open(path, 'w') as f:
            json.dump(dict(world_size=get_world_size(), state_bytes=nbytes,
                           optimizer=type(optimizer).__name__), f)
