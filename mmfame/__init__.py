"""mmfame: the FAME optimizer for PyTorch and OpenMMLab.

``mmfame.FAME`` needs torch only. With mmengine installed (``pip install "mmfame[mmengine]"``),
importing mmfame also registers ``type='FAME'`` and ``FAMEOptimWrapperConstructor`` in mmengine's
root registries and the checkpoint allowlist (:mod:`mmfame.engine`).
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
    from .engine import (FAMEOptimWrapperConstructor, register_all,
                         register_checkpoint_safe_globals)

    register_all()
    # Any process that imports mmfame (custom_imports=['mmfame'] in a config: upstream mmdet/mmseg
    # tools/train.py and test.py, `mim train/test`) loads Runner checkpoints under torch >= 2.6's
    # weights_only default through mmfame's narrow allowlist.
    register_checkpoint_safe_globals()
    __all__ = ['FAME', 'FAMEOptimWrapperConstructor', 'fame', '__version__']
else:
    __all__ = ['FAME', 'fame', '__version__']

    def __getattr__(name):
        if name == 'FAMEOptimWrapperConstructor':
            raise ImportError(
                f'mmfame.{name} needs mmengine, which is not installed: '
                'pip install "mmfame[mmengine]" (or "mmfame[openmmlab]" for the OpenMMLab stack)',
                name=__name__)
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
