"""mmfame: the FAME optimizer for PyTorch and OpenMMLab."""
from .optim import FAME, FAMEOptimWrapperConstructor
from .optim.fame import fame

__version__ = '0.1.0'
__all__ = ['FAME', 'FAMEOptimWrapperConstructor', 'fame', '__version__']
