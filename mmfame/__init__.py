"""mmfame: the FAME optimizer for PyTorch and OpenMMLab."""
from .optim import FAME, FAMEOptimWrapperConstructor
from .optim.fame import fame
from .utils.checkpoint import register_checkpoint_safe_globals

# Any process that imports mmfame (custom_imports=['mmfame'] in a config: upstream mmdet/mmseg
# tools/train.py and test.py, `mim train/test`) loads Runner checkpoints under torch >= 2.6's
# weights_only default through mmfame's narrow allowlist.
register_checkpoint_safe_globals()

__version__ = '0.1.0'
__all__ = ['FAME', 'FAMEOptimWrapperConstructor', 'fame', '__version__']
