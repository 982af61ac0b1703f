"""FAME's config builder (``type='FAME'``) and optim wrapper constructor
(``constructor='FAMEOptimWrapperConstructor'``), each registered by its module."""
from .build import build_fame
from .constructor import FAMEOptimWrapperConstructor

__all__ = ['FAMEOptimWrapperConstructor', 'build_fame']
