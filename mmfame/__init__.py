"""mmfame: the FAME optimizer for PyTorch and OpenMMLab."""
from .optim import FAME, fame

__version__ = '0.1.0'
__all__ = ['FAME', 'fame', '__version__']
