"""mmfame's registries: children of mmengine's root registries under the scope ``mmfame``.

As mmdet's and mmpretrain's ``registry.py``: every mmfame class is registered here, so a config
of any package names it ``type='mmfame.PreemptionHook'`` and no other package's class of the
same name can collide with it (mmengine finds this module and the ``locations`` by the prefix:
``custom_imports`` is not even needed for them). The product's own names, ``type='FAME'`` and
``constructor='FAMEOptimWrapperConstructor'``, are also registered in mmengine's root registries
(:func:`register_in_root`), so that every scope finds them without the prefix; where another
package already holds one of those names, it keeps it and ``mmfame.FAME`` still reaches ours.
"""
import warnings

from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import Registry

__all__ = ['OPTIMIZERS', 'OPTIM_WRAPPER_CONSTRUCTORS', 'HOOKS', 'MODEL_WRAPPERS', 'STRATEGIES',
           'register_in_root']

OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope='mmfame',
                      locations=['mmfame.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='mmfame',
    locations=['mmfame.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmfame',
                 locations=['mmfame.engine', 'mmfame.runtime'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope='mmfame',
                          locations=['mmfame.runtime'])
STRATEGIES = Registry('strategy', parent=MMENGINE_STRATEGIES, scope='mmfame',
                      locations=['mmfame.runtime'])


def register_in_root(registry: Registry, name: str, module) -> bool:
    """Register ``module`` under ``name`` in ``registry``'s root (where every scope finds it),
    unless another package's class holds the name: that one is kept, with a warning naming
    ``mmfame.<name>``, which always reaches ours. Idempotent. Returns whether ours is there."""
    root = registry._get_root_registry()
    existing = root.module_dict.get(name)
    if existing is not None and (existing.__module__, existing.__qualname__) != (
            module.__module__, module.__qualname__):
        warnings.warn(f"{name!r} in mmengine's {root.name} registry is {existing.__module__}'s, "
                      f"not mmfame's: write type='mmfame.{name}' for mmfame's", stacklevel=2)
        return False
    root.register_module(name=name, module=module, force=True)  # ours, maybe from a reimport
    return True
