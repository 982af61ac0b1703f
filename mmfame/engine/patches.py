"""Every change mmfame makes to another library, in one place.

:data:`PATCHES` lists each: its target, why it is needed, which upstream versions need it and the
test that shows it working. :func:`apply` makes each only where it is needed: on the versions
that need it; for what needs it (the ZeRO hook joins only runners whose optimizer is ZeRO-1, the
checkpoint allowlist holds only inside mmengine's checkpoint loading); and not before its target
is imported. ``import mmfame`` imports neither ``mmengine.optim`` nor ``mmengine.runner`` (with
them, ``torch.distributed.optim`` and FSDP): what concerns them is done right after their first
import (:func:`when_imported`), or at once when they are imported already, as upstream tools
do before a config's ``custom_imports``. So ``custom_imports=['mmfame']`` alone makes upstream
tools, ``mim`` and ZeRO/FSDP runs work. Registering ``FAME``, its constructor, hooks and the
atomic file backend in mmengine's registries is registration, not a patch.
``tests/test_patches.py`` checks that importing mmfame changes exactly what :func:`apply`
reports, and that it is listed here.
"""
import functools
import importlib.abc
import inspect
import sys
from typing import Any, Callable, Dict, List, NamedTuple

import torch

from ..optim import FAME
from ..optim._compat import TORCH_VERSION
from .checkpoint import checkpoint_allowlist
from .sharding import asks_for_zero


class Patch(NamedTuple):
    target: str
    why: str
    needed_by: str
    test: str


_ZERO_HOOK = ('mmengine saves checkpoints on rank 0 only, but gathering a '
              "ZeroRedundancyOptimizer's shards needs every rank: without ZeroCheckpointHook the "
              'first checkpoint of a ZeRO-1 run hangs. The hook is added to runners whose '
              'optimizer is ZeRO-1 only.')
PATCHES = (
    Patch('torch.optim.FAME',
          "mmengine's ZeroRedundancyOptimizer resolves optimizer_type='FAME' with "
          'getattr(torch.optim, ...) only, under any constructor and with or without a runner; '
          "set right after mmengine.optim's import, which registers every torch.optim class as "
          "an optimizer type (FAME's is mmfame's builder); an added attribute, never a replaced "
          'one',
          'mmengine 0.10', 'tests/test_sharding.py::test_zero_config_form_builds_fame_shards'),
    Patch('mmengine.runner.Runner.register_hooks', _ZERO_HOOK, 'mmengine 0.10',
          'tests/test_sharding.py::test_zero_runners_get_the_checkpoint_hook_once'),
    Patch('mmengine.runner.FlexibleRunner.register_hooks', _ZERO_HOOK, 'mmengine 0.10',
          'tests/test_sharding.py::test_zero_runners_get_the_checkpoint_hook_once'),
    Patch('mmengine._strategy.FSDPStrategy.load_optim_state_dict',
          "mmengine passes FSDP.optim_state_dict_to_load its arguments in torch 2.0's order, "
          'which later torch reads as (model, optim, optim_state_dict): every FSDP resume '
          'fails; they are passed by name',
          'mmengine 0.10 with torch >= 2.1',
          'tests/test_sharding.py::test_sharded_resume_is_bit_identical'),
    Patch('mmengine.runner.checkpoint.CheckpointLoader.load_checkpoint',
          "torch.load's weights_only=True default refuses a Runner checkpoint's HistoryBuffer "
          "and numpy scalars: mmengine's checkpoint loading (resume, load_from, upstream tools, "
          "mim) runs with mmfame's narrow allowlist (mmfame.engine.checkpoint); no other "
          'torch.load in the process is affected',
          'torch >= 2.6 with mmengine 0.10',
          'tests/test_tools.py::test_runner_checkpoint_loads_weights_only'),
    Patch('mmengine.dist.utils._init_dist_pytorch, _init_dist_slurm, _init_dist_mpi',
          'they call torch.cuda.set_device(local_rank), which a CPU torch refuses: while they '
          'run, torch.cuda.set_device does nothing. Made by tools/train.py and tools/test.py '
          'for a distributed launcher on a machine without CUDA, never at import '
          '(mmfame.engine.dist.setup_cpu_distributed)',
          'mmengine 0.10 without CUDA',
          'tests/test_tools.py::test_two_ranks_agree_on_the_iteration_they_stop_at'),
    Patch('sys.meta_path',
          'a finder that runs the registrations and patches above that concern mmengine.optim and '
          'mmengine.runner right after their first import, when mmfame is imported before them; '
          'it finds no module itself and leaves sys.meta_path once both are imported',
          'any mmengine', 'tests/test_patches.py::test_import_defers_what_concerns_the_runner'),
)
_MARK = '_mmfame_patch'


_APPLIED: List[str] = []


def apply() -> List[str]:
    """Make the patches this process needs (idempotent), each once its target's module is
    imported. Returns the targets patched so far."""
    when_imported('mmengine.optim', _patch_torch_optim)
    when_imported('mmengine.runner', _patch_runners)
    return list(_APPLIED) + (['sys.meta_path'] if _finder() else [])


def _record(*targets: str) -> None:
    _APPLIED.extend(t for t in targets if t and t not in _APPLIED)


def _patch_torch_optim() -> None:
    _record(_expose_fame_in_torch_optim())


def _patch_runners() -> None:
    if torch.distributed.is_available():
        from mmengine.runner import FlexibleRunner, Runner
        _record(_add_zero_hook(Runner), _add_zero_hook(FlexibleRunner))
    _record(_fsdp_resume_by_name(), _load_checkpoints_with_allowlist())


class _WhenImported(importlib.abc.MetaPathFinder):
    """Runs callbacks right after a module's first import: the module is found by the finders
    after this one, and its loader's ``exec_module`` is wrapped for that one import."""

    def __init__(self) -> None:
        self.pending: Dict[str, List[Callable[[], Any]]] = {}

    def find_spec(self, fullname, path=None, target=None):
        callbacks = self.pending.pop(fullname, None)
        if callbacks is None:
            return None
        for finder in sys.meta_path:
            spec = (None if finder is self or not hasattr(finder, 'find_spec')
                    else finder.find_spec(fullname, path, target))
            if spec is not None:
                break
        loader = getattr(spec, 'loader', None)
        if not hasattr(loader, 'exec_module'):
            self.pending[fullname] = callbacks  # not a module this finder can follow
            return None
        exec_module = loader.exec_module

        def exec_then_call(module):
            del loader.exec_module
            try:
                exec_module(module)
            except BaseException:
                self.pending[fullname] = callbacks  # a later import tries again
                raise
            if not self.pending and self in sys.meta_path:
                sys.meta_path.remove(self)
            for callback in callbacks:
                callback()

        loader.exec_module = exec_then_call
        return spec


def _finder():
    return next((f for f in sys.meta_path if isinstance(f, _WhenImported)), None)


def when_imported(name: str, callback: Callable[[], Any]) -> None:
    """Call ``callback`` now if module ``name`` is imported, else right after its first import."""
    if name in sys.modules:
        callback()
        return
    finder = _finder()
    if finder is None:
        finder = _WhenImported()
        sys.meta_path.insert(0, finder)
    callbacks = finder.pending.setdefault(name, [])
    if callback not in callbacks:
        callbacks.append(callback)


def _patched(function, target: str):
    setattr(function, _MARK, target)
    return function


def _expose_fame_in_torch_optim() -> str:
    existing = getattr(torch.optim, 'FAME', None)
    if existing is not None and (existing.__module__, existing.__qualname__) != (
            FAME.__module__, FAME.__qualname__):
        raise KeyError(f'torch.optim.FAME already exists ({existing.__module__}); mmfame will '
                       'not override it')
    torch.optim.FAME = FAME
    return 'torch.optim.FAME'


def _add_zero_hook(runner_cls) -> str:
    target = f'mmengine.runner.{runner_cls.__name__}.register_hooks'
    original = runner_cls.register_hooks
    if getattr(original, _MARK, None):
        return target
    from .hooks import ZeroCheckpointHook

    @functools.wraps(original)
    def register_hooks(self, default_hooks=None, custom_hooks=None):
        original(self, default_hooks, custom_hooks)
        if asks_for_zero(self.optim_wrapper) and not any(
                isinstance(hook, ZeroCheckpointHook) for hook in self.hooks):
            self.register_hook(ZeroCheckpointHook())

    runner_cls.register_hooks = _patched(register_hooks, target)
    return target


def _fsdp_resume_by_name() -> str:
    target = 'mmengine._strategy.FSDPStrategy.load_optim_state_dict'
    try:
        from mmengine._strategy import FSDPStrategy
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    except ImportError:
        return ''
    if getattr(FSDPStrategy.load_optim_state_dict, _MARK, None):
        return target
    if list(inspect.signature(FSDP.optim_state_dict_to_load).parameters)[:1] != ['model']:
        return ''  # the torch whose argument order mmengine was written for

    def load_optim_state_dict(self, state_dict: dict) -> None:
        optim_state_dict = FSDP.optim_state_dict_to_load(
            model=self.model, optim=self.optim_wrapper.optimizer, optim_state_dict=state_dict)
        self.optim_wrapper.load_state_dict(optim_state_dict)

    FSDPStrategy.load_optim_state_dict = _patched(load_optim_state_dict, target)
    return target


def _load_checkpoints_with_allowlist() -> str:
    target = 'mmengine.runner.checkpoint.CheckpointLoader.load_checkpoint'
    if TORCH_VERSION < (2, 6):
        return ''  # torch.load does not default to weights_only=True
    from mmengine.runner.checkpoint import CheckpointLoader
    original = CheckpointLoader.load_checkpoint.__func__
    if getattr(original, _MARK, None):
        return target

    @functools.wraps(original)
    def load_checkpoint(cls, filename, map_location=None, logger='current'):
        with checkpoint_allowlist():
            return original(cls, filename, map_location, logger)

    CheckpointLoader.load_checkpoint = classmethod(_patched(load_checkpoint, target))
    return target


def _noop_set_device(device: Any) -> None:
    return None


def _without_cuda_set_device(fn):
    """Wrap an mmengine launcher function: ``torch.cuda.set_device`` is a no-op during the call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        original = torch.cuda.set_device
        torch.cuda.set_device = _noop_set_device
        try:
            return fn(*args, **kwargs)
        finally:
            torch.cuda.set_device = original

    return wrapper


def init_dist_without_cuda_set_device() -> None:
    """Wrap mmengine's launcher functions so that ``torch.cuda.set_device`` does nothing while
    they run (idempotent); :func:`mmfame.engine.dist.patch_init_dist_for_cpu` calls it on a
    machine without CUDA."""
    from mmengine.dist import utils as dist_utils
    for name in ('_init_dist_pytorch', '_init_dist_slurm', '_init_dist_mpi'):
        fn = getattr(dist_utils, name, None)
        if fn is not None and not getattr(fn, _MARK, None):
            setattr(dist_utils, name, _patched(_without_cuda_set_device(fn),
                                               f'mmengine.dist.utils.{name}'))
