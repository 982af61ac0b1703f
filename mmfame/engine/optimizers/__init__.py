from .constructor import FAMEOptimWrapperConstructor, build_fame

__all__ = ['FAMEOptimWrapperConstructor', 'build_fame']
