"""ZeRO-1 over FAME in an mmengine run: the optimizer type and the hook its checkpoints need.

``type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME'``: mmengine's own
``ZeroRedundancyOptimizer`` looks ``optimizer_type`` up in ``torch.optim`` only, where FAME is not
(mmfame adds nothing to torch); this subclass also takes ``'FAME'`` (checking its arguments as
``type='FAME'`` does). ``FAMEOptimWrapperConstructor`` builds mmengine's form with FAME through it.

``custom_hooks=[dict(type='mmfame.ZeroCheckpointHook')]``: mmengine saves checkpoints on rank 0
only, but gathering a ZeRO optimizer's shards needs every rank, so without the hook the first
checkpoint of any ZeRO run hangs (AdamW's too). This optimizer warns at its first step when no such
hook has joined the run.
"""
import functools
import logging

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import ZeroRedundancyOptimizer as MMEngineZeroRedundancyOptimizer

from mmfame.optim.fame import FAME, check_arguments

from ..registry import HOOKS, OPTIMIZERS
from .sharding import optimizer_class

__all__ = ['ZeroCheckpointHook', 'ZeroRedundancyOptimizer']

_HOOKED = '_mmfame_zero_hook'  # set on the optimizer by the hook
_OWN_ARGUMENTS = ('process_group', 'parameters_as_bucket_view', 'overlap_with_ddp')
HOOK_FIX = "custom_hooks=[dict(type='mmfame.ZeroCheckpointHook')]"


@OPTIMIZERS.register_module()
class ZeroRedundancyOptimizer(MMEngineZeroRedundancyOptimizer):
    """mmengine's ZeRO-1 optimizer, whose ``optimizer_type`` may also be ``'FAME'``."""

    def __init__(self, params, optimizer_type: str, **kwargs):
        cls = optimizer_class(optimizer_type)
        if cls is None:
            raise ValueError(f'mmfame.ZeroRedundancyOptimizer: optimizer_type must be \'FAME\' or '
                             f'the name of a torch.optim optimizer, got {optimizer_type!r}')
        if cls is FAME:
            check_arguments([k for k in kwargs if k not in _OWN_ARGUMENTS],
                            where='optim_wrapper.optimizer')
        # torch's ZeroRedundancyOptimizer, skipping mmengine's torch.optim-only lookup
        torch.distributed.optim.ZeroRedundancyOptimizer.__init__(self, list(params), cls,
                                                                 **kwargs)
        self._mmfame_warned = False

    def step(self, *args, **kwargs):
        if not self._mmfame_warned and not getattr(self, _HOOKED, False):
            self._mmfame_warned = True
            print_log('A ZeroRedundancyOptimizer without ZeroCheckpointHook: the first '
                      f'checkpoint of this run will hang. Add {HOOK_FIX} to the config.',
                      logger='current', level=logging.WARNING)
        return super().step(*args, **kwargs)


def _zero_optimizer(runner):
    """The runner's ZeroRedundancyOptimizer, or None."""
    optimizer = getattr(getattr(runner, 'optim_wrapper', None), 'optimizer', None)
    zero = torch.distributed.optim.ZeroRedundancyOptimizer
    return optimizer if isinstance(optimizer, zero) else None


@HOOKS.register_module()
class ZeroCheckpointHook(Hook):
    """Gathers a ZeroRedundancyOptimizer's shards on rank 0 before every checkpoint.

    ``Runner.save_checkpoint`` runs on rank 0 only, and mmengine's wrapper gathers the shards in
    ``state_dict()`` there: a collective the other ranks never join. This hook makes this
    runner's ``save_checkpoint`` (every rank calls it, from ``CheckpointHook``) gather on every
    rank first; rank 0 then saves the full state and frees the gathered copy. Does nothing
    without ZeRO.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        optimizer = _zero_optimizer(runner)
        if optimizer is None or getattr(runner.save_checkpoint, _HOOKED, False):
            return
        setattr(optimizer, _HOOKED, True)
        save = runner.save_checkpoint

        @functools.wraps(save)
        def save_checkpoint(*args, **kwargs):
            optimizer.consolidate_state_dict(to=0)  # every rank
            optimizer.consolidate_state_dict = _gathered  # state_dict() must not gather again
            try:
                return save(*args, **kwargs)  # rank 0 only
            finally:
                del optimizer.consolidate_state_dict
                optimizer._all_state_dicts = []

        setattr(save_checkpoint, _HOOKED, True)
        runner.save_checkpoint = save_checkpoint


def _gathered(to: int = 0) -> None:
    """Stands in for ``consolidate_state_dict`` while the gathered shards are saved."""
