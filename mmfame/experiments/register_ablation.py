"""Imported by the child configs that train with an ablation optimizer (``custom_imports``):
registers :class:`~.ablation.CascadeAdam` in mmengine's root ``OPTIMIZERS`` under its private
name. The one module of :mod:`mmfame.experiments` whose import registers anything."""
from mmengine.registry import OPTIMIZERS

from .ablation import PRIVATE_NAME, CascadeAdam

OPTIMIZERS.register_module(name=PRIVATE_NAME, module=CascadeAdam, force=True)
