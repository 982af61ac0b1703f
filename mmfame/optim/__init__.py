"""The FAME optimizer; needs torch only. The functional form is ``mmfame.optim.fame.fame``;
parameter-group helpers are in ``mmfame.optim.groups``."""
from .fame import FAME
from .groups import merge_param_groups

__all__ = ['FAME', 'merge_param_groups']
