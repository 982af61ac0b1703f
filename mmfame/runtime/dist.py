"""Distributed training with OpenMMLab's launchers on machines without CUDA.

mmengine 0.10.x assumes a GPU per process in four places. Without CUDA
(``torch.cuda.is_available()`` is False), :func:`setup_cpu_distributed` changes exactly these and
nothing else:

1. ``env_cfg.dist_cfg.backend``: ``'nccl'`` (the default of every mmdet/mmseg runtime) becomes
   ``'gloo'``. Any other backend a config names is kept.
2. ``mmengine.dist.init_dist`` calls ``torch.cuda.set_device(local_rank)`` unconditionally for the
   pytorch, slurm and mpi launchers (a CPU torch raises there). Its private launcher functions
   ``_init_dist_{pytorch,slurm,mpi}`` are wrapped so that ``torch.cuda.set_device`` is a no-op
   *while they run* (:func:`init_dist_without_cuda_set_device`: the one change mmfame makes to
   mmengine, by ``tools/train.py``/``test.py`` without CUDA, said in their log);
   everything else they do (RANK/WORLD_SIZE/LOCAL_RANK, and for slurm MASTER_ADDR from
   ``scontrol show hostname $SLURM_NODELIST`` and MASTER_PORT) is upstream's.
3. ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to ``MMDistributedDataParallel``, which
   DDP refuses for a CPU module: ``model_wrapper_cfg`` is pointed at ``mmfame.MMFameCPUDDP``, a
   builder registered in mmfame's ``MODEL_WRAPPERS`` that returns a plain ``MMDistributedDataParallel``
   built without ``device_ids`` (same ``broadcast_buffers=False`` and ``find_unused_parameters``
   defaults as upstream; a config's own options are kept).
4. SyncBN refuses CPU tensors: the builder reverts SyncBN layers (torch's and mmcv's) to BatchNorm,
   after ``Runner`` applied ``cfg.sync_bn``, as ``Runner`` itself does for non-distributed runs.

``FlexibleRunner`` configs get the same: its ``DDPStrategy`` wraps with ``MMFameCPUDDP``, and
``FSDPStrategy``, which passes ``device_id=LOCAL_RANK`` (a CUDA index), wraps with
``MMFameCPUFSDP``: ``MMFullyShardedDataParallel`` on ``device_id=torch.device('cpu')``. Its
``state_dict_cfg='full'`` offloads to the CPU, which for CPU tensors crashes torch 2.13 in
``state_dict()`` (a segfault): it becomes the same full, rank-0 state dict without offloading.

:func:`finalize_distributed` adds a ``dist.barrier()`` before ``destroy_process_group()`` at the end
of a CPU run (gloo otherwise aborts sporadically when one rank exits first).

With CUDA available, or with ``launcher='none'``, every function here returns without changing
anything: GPU runs behave exactly as upstream's tools.
"""
import functools
from typing import Any, Optional

import torch
from mmengine.logging import print_log

from mmfame.optim._compat import TORCH_VERSION
from mmfame.registry import MODEL_WRAPPERS

__all__ = [
    'cuda_available', 'setup_cpu_distributed', 'patch_init_dist_for_cpu',
    'finalize_distributed', 'MMFameCPUDDP', 'MMFameCPUFSDP', 'CPU_DDP_TYPE', 'CPU_FSDP_TYPE'
]

CPU_DDP_TYPE = 'mmfame.MMFameCPUDDP'
CPU_FSDP_TYPE = 'mmfame.MMFameCPUFSDP'
_DDP_TYPES = ('MMDistributedDataParallel', 'mmengine.MMDistributedDataParallel')
_FSDP_TYPES = ('MMFullyShardedDataParallel', 'mmengine.MMFullyShardedDataParallel')
# FlexibleRunner strategies: their default wrapper, and the CPU builder that replaces it.
# (mmfame's resumable strategies of the same names wrap alike.)
_STRATEGY_WRAPPERS = {'DDPStrategy': ('MMDistributedDataParallel', _DDP_TYPES, CPU_DDP_TYPE),
                      'FSDPStrategy': ('MMFullyShardedDataParallel', _FSDP_TYPES, CPU_FSDP_TYPE)}


def cuda_available() -> bool:
    """The one switch between upstream behaviour (True) and the CPU adaptations (False)."""
    return torch.cuda.is_available()


@MODEL_WRAPPERS.register_module()
class MMFameCPUDDP:
    """Builds ``MMDistributedDataParallel(module, device_ids=None, ...)`` for a CPU module.

    Not a ``DistributedDataParallel`` subclass on purpose: ``Runner.wrap_model`` adds
    ``device_ids=[LOCAL_RANK]`` only for those. ``__new__`` returns the real
    ``MMDistributedDataParallel``: checkpoints, hooks and ``is_model_wrapper`` see the usual type.
    """

    def __new__(cls, module, **kwargs):  # type: ignore[misc]
        from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
        module = revert_sync_batchnorm(module)
        kwargs.pop('device_ids', None)
        kwargs.pop('output_device', None)
        return MMDistributedDataParallel(module=module, device_ids=None, **kwargs)


@MODEL_WRAPPERS.register_module()
class MMFameCPUFSDP:
    """Builds ``MMFullyShardedDataParallel(module, device_id=torch.device('cpu'), ...)``.

    ``FSDPStrategy`` passes ``device_id=LOCAL_RANK``, which FSDP takes for a CUDA device.
    """

    def __new__(cls, module, **kwargs):  # type: ignore[misc]
        from mmengine.model import MMFullyShardedDataParallel, revert_sync_batchnorm
        kwargs.pop('device_id', None)
        return MMFullyShardedDataParallel(module=revert_sync_batchnorm(module),
                                          device_id=torch.device('cpu'), **kwargs)


_MARK = '_mmfame_without_set_device'


def _without_cuda_set_device(fn):
    """``fn`` with ``torch.cuda.set_device`` a no-op while it runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        original = torch.cuda.set_device
        torch.cuda.set_device = _noop_set_device
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_device = original

    setattr(wrapper, _MARK, True)
    return wrapper


def _noop_set_device(device: Any) -> None:
    return None


def init_dist_without_cuda_set_device() -> None:
    """Wrap mmengine's launcher functions so that ``torch.cuda.set_device`` does nothing while
    they run (idempotent): item 2 above."""
    from mmengine.dist import utils as dist_utils
    names = [n for n in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi')
             if hasattr(dist_utils, n) and not getattr(getattr(dist_utils, n), _MARK, False)]
    for name in names:
        setattr(dist_utils, name, _without_cuda_set_device(getattr(dist_utils, name)))
    if names:
        print_log('No CUDA: mmengine.dist.init_dist runs with torch.cuda.set_device a no-op '
                  '(mmfame.runtime.dist).', logger='current')


def patch_init_dist_for_cpu() -> bool:
    """Make ``mmengine.dist.init_dist`` work without CUDA (item 2 above). Only acts when CUDA is
    unavailable; idempotent. Returns whether the change is in place."""
    if cuda_available():
        return False
    init_dist_without_cuda_set_device()
    return True


def setup_cpu_distributed(cfg) -> bool:
    """Adapt a Runner config for a distributed launcher on a machine without CUDA.

    Does nothing (returns False) when CUDA is available or ``cfg.launcher`` is ``'none'``.
    Otherwise rewrites ``env_cfg.dist_cfg.backend`` and ``model_wrapper_cfg`` in place, patches
    ``init_dist`` and returns True.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher in (None, 'none') or cuda_available():
        return False
    from mmengine.config import ConfigDict

    # (Config/ConfigDict may copy a dict on assignment: re-read what was stored)
    if cfg.get('env_cfg') is None:
        cfg['env_cfg'] = ConfigDict()
    env_cfg = cfg['env_cfg']
    if env_cfg.get('dist_cfg') is None:
        env_cfg['dist_cfg'] = ConfigDict()
    dist_cfg = env_cfg['dist_cfg']
    if dist_cfg.get('backend', 'nccl') == 'nccl':  # mmengine's default is nccl
        dist_cfg['backend'] = 'gloo'

    strategy = cfg.get('strategy')
    if cfg.get('runner_type') is not None and strategy is not None:
        _adapt_strategy(strategy)
    wrapper_cfg: Optional[dict] = cfg.get('model_wrapper_cfg')
    if wrapper_cfg is None:
        cfg['model_wrapper_cfg'] = ConfigDict(
            type=CPU_DDP_TYPE,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    elif wrapper_cfg.get('type', 'MMDistributedDataParallel') in _DDP_TYPES:
        wrapper_cfg['type'] = CPU_DDP_TYPE
    # Other wrappers (DeepSpeed, ...) are left alone: they have their own device handling.

    patch_init_dist_for_cpu()
    return True


def _adapt_strategy(strategy) -> None:
    """A FlexibleRunner ``strategy`` dict: its DDP/FSDP model wrapper becomes the CPU builder."""
    name = strategy.get('type')
    if isinstance(name, str) and name.startswith('mmfame.'):
        name = name[len('mmfame.'):]
    if name not in _STRATEGY_WRAPPERS:
        return
    if name == 'FSDPStrategy' and TORCH_VERSION < (2, 2):
        raise RuntimeError(
            f"FSDPStrategy without CUDA needs a newer torch than {torch.__version__}: its FSDP "
            "creates CUDA streams (tested on CPU: torch 2.13). Use DDP or ZeRO-1 there: "
            "optimizer=dict(type='mmfame.ZeroRedundancyOptimizer', optimizer_type='FAME', ...)")
    default, types, cpu_type = _STRATEGY_WRAPPERS[name]
    if strategy.get('model_wrapper') is None:
        strategy['model_wrapper'] = dict(type=default)
        if name == 'DDPStrategy':  # DDPStrategy's own default
            strategy['model_wrapper']['broadcast_buffers'] = False
    wrapper = strategy['model_wrapper']
    if wrapper.get('type', default) in types:
        wrapper['type'] = cpu_type
    if name == 'FSDPStrategy' and strategy.get('state_dict_cfg') == 'full':
        strategy['state_dict_cfg'] = dict(
            state_dict_type='FULL_STATE_DICT',
            state_dict_config=dict(type='FullStateDictConfig', rank0_only=True,
                                   offload_to_cpu=False),
            optim_state_dict_config=dict(type='FullOptimStateDictConfig', rank0_only=True,
                                         offload_to_cpu=False))


def finalize_distributed() -> None:
    """At the end of a CPU run: ``barrier()`` then ``destroy_process_group()``.

    Upstream tools never destroy the process group; with CUDA this does nothing.
    """
    if cuda_available():
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
