"""mmfame: the FAME optimizer for PyTorch and OpenMMLab.

``mmfame.FAME`` needs torch only. With mmengine installed (``pip install "mmfame[mmengine]"``),
importing mmfame also registers FAME's mmengine integration (:mod:`mmfame.engine`: ``type='FAME'``,
``FAMEOptimWrapperConstructor``, ZeRO-1) and a run kit (:mod:`mmfame.runtime`: preemption,
resume, checkpoint loading) in mmengine's registries (:mod:`mmfame.registry`), and changes nothing
else in torch or mmengine: a config opts in to each piece by name.
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
    from . import engine, runtime  # noqa: F401  (each registers its classes)
    from .engine import FAMEOptimWrapperConstructor
    __all__ = ['FAME', 'FAMEOptimWrapperConstructor', 'fame', '__version__']
else:
    __all__ = ['FAME', 'fame', '__version__']

    def __getattr__(name):
        """Without mmengine, its integration names the extra that installs it."""
        if name != 'FAMEOptimWrapperConstructor':
            raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
        raise ImportError(
            f'mmfame.{name} needs mmengine, which is not installed: '
            'pip install "mmfame[mmengine]" (or "mmfame[openmmlab]" for the OpenMMLab stack)',
            name=__name__)
