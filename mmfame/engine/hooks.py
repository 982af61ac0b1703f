"""``ZeroCheckpointHook``: checkpoints of a ZeRO-1 run (see :mod:`mmfame.engine.sharding`).

Kept apart from the sharding checks because it subclasses mmengine's ``Hook``, whose package
imports mmengine's model and optimizer packages: the checks load with the constructor, this hook
with ``mmengine.runner``.
"""
import functools

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from .registry import register


def _zero_optimizer(runner):
    """The runner's ZeroRedundancyOptimizer, or None."""
    try:
        from torch.distributed.optim import ZeroRedundancyOptimizer
    except ImportError:
        return None
    optimizer = getattr(getattr(runner, 'optim_wrapper', None), 'optimizer', None)
    return optimizer if isinstance(optimizer, ZeroRedundancyOptimizer) else None


class ZeroCheckpointHook(Hook):
    """Gathers a ZeroRedundancyOptimizer's shards on rank 0 before every checkpoint.

    ``Runner.save_checkpoint`` runs on rank 0 only, and mmengine's wrapper gathers the shards in
    ``state_dict()`` there: a collective the other ranks never join. This hook makes every
    rank's ``save_checkpoint`` call (all ranks make it, from ``CheckpointHook``) gather first;
    rank 0 then saves the full state and frees the gathered copy. Does nothing without ZeRO.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        optimizer = _zero_optimizer(runner)
        if optimizer is None or getattr(runner.save_checkpoint, '_mmfame_zero', False):
            return
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

        save_checkpoint._mmfame_zero = True  # type: ignore[attr-defined]
        runner.save_checkpoint = save_checkpoint


def _gathered(to: int = 0) -> None:
    """Stands in for ``consolidate_state_dict`` while the gathered shards are saved."""


register(HOOKS, 'ZeroCheckpointHook', ZeroCheckpointHook)
