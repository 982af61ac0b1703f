from .builder import register_all
from .constructor import FAMEOptimWrapperConstructor
from .fame import FAME

register_all()

__all__ = ['FAME', 'FAMEOptimWrapperConstructor']
