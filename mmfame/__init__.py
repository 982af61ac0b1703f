"""mmfame: the FAME optimizer for PyTorch and OpenMMLab.

``mmfame.FAME`` needs torch only. With mmengine installed (``pip install "mmfame[mmengine]"``),
importing mmfame also registers ``type='FAME'`` and ``FAMEOptimWrapperConstructor`` in mmengine's
root registries and makes the changes to mmengine and torch listed in :mod:`mmfame.engine.patches`,
those that concern mmengine's optimizer and runner packages once they are imported: importing
mmfame does not import them.
"""
from .optim import FAME
from .optim.fame import fame

try:
    import mmengine  # noqa: F401
except ModuleNotFoundError as e:
    if e.name != 'mmengine':
        raise
    mmengine = None

__version__ = '0.1.0'

if mmengine is not None:
    from .engine import patches, register_all

    register_all()
    # What upstream tools, `mim` and ZeRO/FSDP runs need of mmengine and torch, listed (and
    # applied only where needed) in mmfame.engine.patches.
    patches.apply()
    __all__ = ['FAME', 'FAMEOptimWrapperConstructor', 'fame', '__version__']
else:
    __all__ = ['FAME', 'fame', '__version__']


def __getattr__(name):
    """The constructor loads on first use: it imports mmengine's optimizer package."""
    if name != 'FAMEOptimWrapperConstructor':
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    if mmengine is None:
        raise ImportError(
            f'mmfame.{name} needs mmengine, which is not installed: '
            'pip install "mmfame[mmengine]" (or "mmfame[openmmlab]" for the OpenMMLab stack)',
            name=__name__)
    from .engine.optimizers.constructor import FAMEOptimWrapperConstructor
    return FAMEOptimWrapperConstructor
