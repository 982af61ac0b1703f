"""FAME in mmengine (needs mmengine): ``type='FAME'``, ``FAMEOptimWrapperConstructor``, and FAME's
state sharded by ZeRO-1 and FSDP. Importing it registers these in :mod:`mmfame.registry` and
changes nothing else; an LR range test for any optimizer (:mod:`.lr_finder`); the general run kit
(preemption, resume, checkpoint loading, CPU launchers) is :mod:`mmfame.runtime`."""
from .lr_finder import LRRangeTestHook
from .optimizers import FAMEOptimWrapperConstructor, build_fame
from .sharding import asks_for_zero
from .zero import ZeroCheckpointHook, ZeroRedundancyOptimizer

__all__ = ['FAMEOptimWrapperConstructor', 'build_fame', 'asks_for_zero', 'ZeroCheckpointHook',
           'ZeroRedundancyOptimizer', 'LRRangeTestHook']
