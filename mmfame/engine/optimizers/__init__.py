from .constructor import FAMEOptimWrapperConstructor

__all__ = ['FAMEOptimWrapperConstructor']
