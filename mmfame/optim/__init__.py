"""The FAME optimizer; needs torch only. The functional form is ``mmfame.optim.fame.fame``."""
from .fame import FAME

__all__ = ['FAME']
