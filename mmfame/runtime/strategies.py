"""``type='mmfame.DDPStrategy'`` and ``type='mmfame.FSDPStrategy'``: mmengine's FlexibleRunner
strategies, resumable.

A FlexibleRunner loads its checkpoint before any hook runs, so only its strategy can make that
load work under torch >= 2.6, whose ``torch.load`` refuses a Runner checkpoint's non-tensor
contents: both strategies load inside :func:`mmfame.runtime.checkpoint.checkpoint_allowlist`.
mmengine 0.10's ``FSDPStrategy.load_optim_state_dict`` also passes
``FSDP.optim_state_dict_to_load`` its arguments in torch 2.0's order, which torch >= 2.1 reads as
``(model, optim, optim_state_dict)``: every FSDP resume fails. mmfame's passes them by name.
"""
from mmengine._strategy import DDPStrategy as MMEngineDDPStrategy
from mmengine._strategy import FSDPStrategy as MMEngineFSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

from mmfame.registry import STRATEGIES

from .checkpoint import checkpoint_allowlist

__all__ = ['DDPStrategy', 'FSDPStrategy', 'RESUMABLE']


class _LoadsWithAllowlist:
    """A strategy whose ``load_checkpoint`` (resume and ``load_from``) runs in the allowlist."""

    def load_checkpoint(self, filename: str, **kwargs) -> dict:
        with checkpoint_allowlist():
            return super().load_checkpoint(filename, **kwargs)


@STRATEGIES.register_module()
class DDPStrategy(_LoadsWithAllowlist, MMEngineDDPStrategy):
    """mmengine's DDPStrategy whose checkpoints load under torch >= 2.6."""


@STRATEGIES.register_module()
class FSDPStrategy(_LoadsWithAllowlist, MMEngineFSDPStrategy):
    """mmengine's FSDPStrategy whose resume works on torch >= 2.1 and loads under >= 2.6."""

    def load_optim_state_dict(self, state_dict: dict) -> None:
        optim_state_dict = FSDP.optim_state_dict_to_load(
            model=self.model, optim=self.optim_wrapper.optimizer, optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)


# mmengine's strategy types and mmfame's resumable ones (tools/train.py swaps them)
RESUMABLE = {'DDPStrategy': 'mmfame.DDPStrategy', 'FSDPStrategy': 'mmfame.FSDPStrategy'}
