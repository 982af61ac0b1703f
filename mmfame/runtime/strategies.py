"""``type='mmfame.FSDPStrategy'``: mmengine's FSDPStrategy, resumable.

mmengine 0.10's ``FSDPStrategy.load_optim_state_dict`` passes ``FSDP.optim_state_dict_to_load``
its arguments in torch 2.0's order, which torch >= 2.1 reads as ``(model, optim,
optim_state_dict)``: every FSDP resume fails. This subclass passes them by name, and loads
checkpoints inside :func:`mmfame.runtime.checkpoint.checkpoint_allowlist` (torch >= 2.6 refuses a
Runner checkpoint's non-tensor contents otherwise).
"""
from mmengine._strategy import FSDPStrategy as MMEngineFSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from mmfame.registry import STRATEGIES

from .checkpoint import checkpoint_allowlist

__all__ = ['FSDPStrategy']


@STRATEGIES.register_module()
class FSDPStrategy(MMEngineFSDPStrategy):
    """mmengine's FSDPStrategy whose resume works on torch >= 2.1."""

    def load_optim_state_dict(self, state_dict: dict) -> None:
        optim_state_dict = FSDP.optim_state_dict_to_load(
            model=self.model, optim=self.optim_wrapper.optimizer, optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)

    def load_checkpoint(self, filename: str, **kwargs) -> dict:
        with checkpoint_allowlist():
            return super().load_checkpoint(filename, **kwargs)
