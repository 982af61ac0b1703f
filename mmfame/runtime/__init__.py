"""A run kit for mmengine, with nothing FAME-specific: checkpoint on a cluster's stop signal and
resume inside an epoch, load Runner checkpoints under torch >= 2.6, resume FSDP, write
checkpoints whole or not at all, pick the checkpoint a bare ``--resume`` takes, and run the
distributed launchers on machines without CUDA.

Importing it registers its hooks, strategy and model wrappers in :mod:`mmfame.registry` and the
``mmfame_atomic_local`` file backend, and changes nothing else. A config opts in to each:

* ``custom_hooks=[dict(type='mmfame.PreemptionHook')]``: :mod:`.preemption`;
* ``custom_hooks=[dict(type='mmfame.WeightsOnlyLoadHook')]``: :mod:`.checkpoint`;
* ``strategy=dict(type='mmfame.DDPStrategy' or 'mmfame.FSDPStrategy', ...)`` for a
  FlexibleRunner, which loads its checkpoint before any hook runs: :mod:`.strategies`.

Two things act on a runner or on mmengine rather than through a registry, each only where asked
and said in the log: ``WeightsOnlyLoadHook`` wraps its own runner's ``resume`` and
``load_checkpoint`` in the allowlist; ``tools/train.py``/``test.py`` without CUDA run mmengine's
``init_dist`` with ``torch.cuda.set_device`` a no-op (:func:`.dist.setup_cpu_distributed`).
"""
from .checkpoint import WeightsOnlyLoadHook, checkpoint_allowlist
from .dist import finalize_distributed, setup_cpu_distributed
from .fileio import check_work_dir, use_atomic_checkpoints
from .preemption import PREEMPTED_EXIT, PREEMPTION_RECORD, Preempted, PreemptionHook
from .resume import resume_checkpoint
from .runners import (add_custom_hooks, build_runner, drop_custom_hooks, use_amp,
                      use_resumable_strategy)
from .strategies import DDPStrategy, FSDPStrategy

__all__ = ['PreemptionHook', 'Preempted', 'PREEMPTED_EXIT', 'PREEMPTION_RECORD',
           'WeightsOnlyLoadHook', 'checkpoint_allowlist', 'DDPStrategy', 'FSDPStrategy',
           'resume_checkpoint', 'add_custom_hooks', 'drop_custom_hooks', 'use_resumable_strategy',
           'build_runner', 'check_work_dir', 'use_atomic_checkpoints', 'setup_cpu_distributed',
           'finalize_distributed', 'use_amp']
