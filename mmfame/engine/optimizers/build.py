"""What ``type='FAME'`` builds from a config: registered at ``import mmfame``, which imports
nothing of mmengine's optimizer package for it."""
from mmfame.optim.fame import FAME, check_arguments


def build_fame(params, **kwargs) -> FAME:
    """What ``type='FAME'`` builds from a config, under any constructor: :class:`FAME`, after
    refusing unknown arguments (an SGD base's ``momentum``, a typo) with the fix named, where
    Python would say only "unexpected keyword argument"."""
    check_arguments(kwargs)
    return FAME(params, **kwargs)
