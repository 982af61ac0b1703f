"""What ``type='FAME'`` builds from a config: registered as ``mmfame.FAME`` and, where no other
package holds the name, ``FAME`` in mmengine's root registry."""
from mmfame.optim.fame import FAME, check_arguments
from mmfame.registry import OPTIMIZERS, register_in_root


def build_fame(params, **kwargs) -> FAME:
    """What ``type='FAME'`` builds from a config, under any constructor: :class:`FAME`, after
    refusing unknown arguments (an SGD base's ``momentum``, a typo) with the fix named, where
    Python would say only "unexpected keyword argument"."""
    check_arguments(kwargs)
    return FAME(params, **kwargs)


OPTIMIZERS.register_module(name='FAME', module=build_fame)
register_in_root(OPTIMIZERS, 'FAME', build_fame)
