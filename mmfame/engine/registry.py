"""Register mmfame's optimizer and constructor in mmengine's ROOT registry, so every OpenMMLab scope
finds them.

mmdet/mmseg/mmpretrain registries are children of the root: ``type='FAME'`` resolves under any
``default_scope`` (to :func:`build_fame`: FAME, after naming the fix for an unknown argument).
The constructor and the hooks subclass classes of ``mmengine.optim`` and ``mmengine.hooks``, whose
import pulls in ``torch.distributed.optim``: their modules register them, and are imported right
after ``mmengine.optim`` and ``mmengine.runner`` are (at once if they are already), never for
``import mmfame``. A module that is mid-import when that happens registers when it finishes.
Registration is idempotent (repeated imports, pytest collection) and never overrides another
package's ``FAME``; what mmfame changes in other libraries is in :mod:`mmfame.engine.patches`.
"""
import importlib

from mmengine.fileio.backends import backends, register_backend
from mmengine.registry import OPTIMIZERS, Registry

from .fileio import ATOMIC_BACKEND, AtomicLocalBackend
from .optimizers import build_fame
from .patches import when_imported


def register(registry: Registry, name: str, module) -> None:
    existing = registry.module_dict.get(name)
    if existing is module:
        return
    if existing is not None and (existing.__module__, existing.__qualname__) != (
            module.__module__, module.__qualname__):
        raise KeyError(f'{name!r} is already registered in {registry.name} by '
                       f'{existing.__module__}; mmfame will not override it')
    # Absent, or our own class from a re-imported module: (re)register it.
    registry.register_module(name=name, module=module, force=True)


def register_all() -> None:
    register(OPTIMIZERS, 'FAME', build_fame)  # FAME, with the unknown-argument check
    existing = backends.get(ATOMIC_BACKEND)
    if existing is None or existing.__qualname__ == AtomicLocalBackend.__qualname__:
        register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)
    when_imported('mmengine.optim', _register_constructor)
    when_imported('mmengine.runner', _register_hooks)


def _register_constructor() -> None:
    importlib.import_module('mmfame.engine.optimizers.constructor')  # registers itself


def _register_hooks() -> None:
    for module in ('mmfame.engine.hooks', 'mmfame.engine.preemption'):
        importlib.import_module(module)  # each registers its hook
