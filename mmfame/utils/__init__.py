"""Helpers for running OpenMMLab tools with mmfame: CPU-only distributed launchers and loading
mmengine Runner checkpoints under torch >= 2.6 (``weights_only=True`` by default).

Importing this package changes nothing; tools/train.py and tools/test.py call the helpers.
"""
from .checkpoint import (checkpoint_safe_globals, history_buffer_getattr,
                         register_checkpoint_safe_globals)
from .dist import (CPU_DDP_TYPE, MMFameCPUDDP, cuda_available, finalize_distributed,
                   patch_init_dist_for_cpu, setup_cpu_distributed)

__all__ = [
    'checkpoint_safe_globals', 'history_buffer_getattr', 'register_checkpoint_safe_globals',
    'CPU_DDP_TYPE', 'MMFameCPUDDP',
    'cuda_available', 'finalize_distributed', 'patch_init_dist_for_cpu', 'setup_cpu_distributed'
]
