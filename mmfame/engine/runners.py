"""The runner a config asks for, as mmdet's and mmseg's ``tools/train.py``/``test.py`` build it."""


def build_runner(cfg):
    """``Runner.from_cfg``, or with ``runner_type`` the ``RUNNERS`` of the config's package
    (its ``default_scope``: mmdet, mmseg) or mmengine's."""
    if 'runner_type' not in cfg:
        from mmengine.runner import Runner
        return Runner.from_cfg(cfg)
    scope = cfg.get('default_scope', None) or 'mmengine'
    if scope == 'mmdet':
        from mmdet.registry import RUNNERS
    elif scope == 'mmseg':
        from mmseg.registry import RUNNERS
    else:
        from mmengine.registry import RUNNERS
    return RUNNERS.build(cfg)
