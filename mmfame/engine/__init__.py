"""mmfame's OpenMMLab integration (needs mmengine): the optim wrapper constructor and its
registration, CPU-only distributed launchers, loading mmengine Runner checkpoints under
torch >= 2.6 (``weights_only=True`` by default), which checkpoint a bare ``--resume`` takes,
the hook that checkpoints on a cluster's stop signal, checkpoint files written atomically, and
the runner a config asks for.

Its modules do nothing when imported but register the classes they define: ``import mmfame``
calls :func:`register_all` and :func:`patches.apply` (every change to another library is listed
in :mod:`.patches`), tools/train.py and tools/test.py the dist helpers. The constructor and the
hooks import mmengine's optimizer and runner packages, so they load when first asked for.
"""
import importlib

from . import patches
from .checkpoint import (checkpoint_allowlist, checkpoint_safe_globals, history_buffer_getattr,
                         register_checkpoint_safe_globals)
from .dist import (CPU_DDP_TYPE, CPU_FSDP_TYPE, MMFameCPUDDP, MMFameCPUFSDP, cuda_available,
                   finalize_distributed, patch_init_dist_for_cpu, setup_cpu_distributed)
from .fileio import ATOMIC_BACKEND, AtomicLocalBackend, check_work_dir, use_atomic_checkpoints
from .registry import register_all
from .resume import resume_checkpoint, unreadable_reason
from .runners import build_runner

_ON_FIRST_USE = {
    'FAMEOptimWrapperConstructor': '.optimizers.constructor',
    'ZeroCheckpointHook': '.hooks',
    'PREEMPTED_EXIT': '.preemption',
    'PREEMPTION_RECORD': '.preemption',
    'PreemptionHook': '.preemption',
}

__all__ = [
    'FAMEOptimWrapperConstructor', 'register_all',
    'checkpoint_allowlist', 'checkpoint_safe_globals', 'history_buffer_getattr',
    'register_checkpoint_safe_globals', 'patches',
    'CPU_DDP_TYPE', 'CPU_FSDP_TYPE', 'MMFameCPUDDP', 'MMFameCPUFSDP',
    'cuda_available', 'finalize_distributed', 'patch_init_dist_for_cpu', 'setup_cpu_distributed',
    'resume_checkpoint', 'unreadable_reason', 'PREEMPTED_EXIT', 'PREEMPTION_RECORD',
    'PreemptionHook', 'ZeroCheckpointHook', 'ATOMIC_BACKEND', 'AtomicLocalBackend',
    'check_work_dir', 'use_atomic_checkpoints', 'build_runner'
]


def __getattr__(name):
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name], __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
