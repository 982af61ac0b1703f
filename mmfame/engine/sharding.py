"""FAME's state sharded across ranks: what mmengine's ZeRO-1 wrapper and FSDPStrategy need.

* ZeRO-1: ``optimizer=dict(type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME', ...)``
  (:mod:`mmfame.engine.zero`), or mmengine's ``type='ZeroRedundancyOptimizer'`` under
  ``FAMEOptimWrapperConstructor``, which builds it through mmfame's. :func:`check_zero_cfg` names
  the fix for an ``optimizer_type`` that cannot resolve, at build time. Its checkpoints need
  ``custom_hooks=[dict(type='mmfame.ZeroCheckpointHook')]``.
* FSDP (``FlexibleRunner`` + ``FSDPStrategy``): the optimizer is built on the wrapped model. With
  ``use_orig_params=False`` it sees flat parameters that no ``paramwise_cfg`` rule can tell apart,
  and mmengine's gradient clipping by norm would take each rank's norm of its own shard:
  :func:`check_fsdp_model` refuses the first and :func:`fsdp_clip_func` clips by the global norm.
  Resuming needs ``strategy=dict(type='mmfame.FSDPStrategy')`` (:mod:`mmfame.runtime.strategies`).
"""
import difflib
from typing import Callable, Optional

import torch
import torch.nn as nn

from mmfame.optim.fame import FAME

MMENGINE_ZERO_TYPES = ('ZeroRedundancyOptimizer', 'mmengine.ZeroRedundancyOptimizer')
MMFAME_ZERO_TYPE = 'mmfame.ZeroRedundancyOptimizer'
ZERO_TYPES = (*MMENGINE_ZERO_TYPES, MMFAME_ZERO_TYPE)
_USE_ORIG = "model_wrapper=dict(type='MMFullyShardedDataParallel', use_orig_params=True)"


def zero_inner_type(optimizer_cfg: dict) -> Optional[str]:
    """The ``optimizer_type`` of a ZeRO optimizer config, or None if it is not one."""
    if optimizer_cfg.get('type') not in ZERO_TYPES:
        return None
    return optimizer_cfg.get('optimizer_type')


def optimizer_class(optimizer_type) -> Optional[type]:
    """The class a ZeRO ``optimizer_type`` names: ``'FAME'`` or a ``torch.optim`` optimizer;
    else None."""
    if optimizer_type == 'FAME':
        return FAME
    found = getattr(torch.optim, optimizer_type, None) if isinstance(optimizer_type, str) else None
    return found if isinstance(found, type) and issubclass(found, torch.optim.Optimizer) else None


def check_zero_cfg(optimizer_cfg: dict, where: str = 'optim_wrapper.optimizer') -> None:
    """Refuse a ZeRO config whose ``optimizer_type`` is neither FAME nor a torch.optim class."""
    if optimizer_cfg.get('type') not in ZERO_TYPES:
        return
    name = optimizer_cfg.get('optimizer_type')
    if optimizer_class(name) is not None:
        return
    names = [n for n in ['FAME', *dir(torch.optim)] if optimizer_class(n) is not None]
    lower = {n.lower(): n for n in names}
    hint = [lower[n] for n in difflib.get_close_matches(str(name).lower(), lower, n=1)]
    raise ValueError(
        f'{where}: ZeroRedundancyOptimizer needs optimizer_type, \'FAME\' or the name of a '
        f'torch.optim optimizer, got {name!r}' + (f': did you mean {hint[0]!r}?' if hint else '')
        + " (e.g. optimizer=dict(type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME', "
        'lr=...))')


def _fsdp(model: nn.Module):
    """The model as torch's FSDP (1) wrapper, or None."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch without distributed
        return None
    return model if isinstance(model, FullyShardedDataParallel) else None


def check_fsdp_model(model: nn.Module, paramwise_cfg: dict) -> None:
    """Refuse parameter-wise rules on an FSDP model whose parameters are flattened."""
    fsdp = _fsdp(model)
    if fsdp is None or getattr(fsdp, '_use_orig_params', True) or not paramwise_cfg:
        return
    raise ValueError(
        'optim_wrapper.paramwise_cfg cannot apply to an FSDP model with use_orig_params=False: '
        'the optimizer sees flat parameters, not the layers the rules name (norm and bias decay '
        f'mults, custom_keys), so they would be silently ignored. Set {_USE_ORIG} in the '
        "strategy (mmengine's default), or remove paramwise_cfg.")


def fsdp_clip_func(model: nn.Module) -> Optional[Callable]:
    """For an FSDP model, a ``clip_grad_norm_`` that takes the norm over all ranks' shards.

    ``torch.nn.utils.clip_grad_norm_`` (mmengine's ``clip_grad``) would take each rank's norm of
    its own shard and scale the shards differently; FSDP's own method reduces the norm first.
    """
    fsdp = _fsdp(model)
    if fsdp is None:
        return None

    def clip_grad_norm_(params, max_norm, norm_type=2.0, **kwargs):
        return fsdp.clip_grad_norm_(max_norm, norm_type)

    return clip_grad_norm_


def asks_for_zero(optim_wrapper_cfg: dict) -> bool:
    """Whether an ``optim_wrapper`` config's optimizer is ZeRO-1 (by name or by class)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    kind = (optim_wrapper_cfg.get('optimizer') or {}).get('type')
    return kind in ZERO_TYPES or (isinstance(kind, type)
                                  and issubclass(kind, ZeroRedundancyOptimizer))
