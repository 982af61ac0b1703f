"""FAME's config builder and optim wrapper constructor. The constructor subclasses mmengine's
default one, whose package imports ``torch.distributed.optim`` (the larger part of importing
mmengine's runner): it loads when first asked for, here or through the registry."""
from .build import build_fame

__all__ = ['FAMEOptimWrapperConstructor', 'build_fame']


def __getattr__(name):
    if name == 'FAMEOptimWrapperConstructor':
        from .constructor import FAMEOptimWrapperConstructor
        return FAMEOptimWrapperConstructor
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
