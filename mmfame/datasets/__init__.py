"""Synthetic demo data (COCO and ADE20K layouts) for demos and end-to-end tests.

Names are imported lazily so that ``python -m mmfame.datasets.demo`` runs the module once.
"""
import importlib

__all__ = ['ADE_LABEL_IDS', 'DEMO_CLASSES', 'DEMO_PALETTE', 'make_ade20k_demo', 'make_coco_demo',
           'make_demo', 'render_sample']


def __getattr__(name):
    if name in __all__:
        return getattr(importlib.import_module('.demo', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
