"""The runner a config asks for, as mmdet's and mmseg's ``tools/train.py``/``test.py`` build it,
and the hooks our tools add to a config."""


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


def add_custom_hooks(cfg, *types: str) -> None:
    """Append ``dict(type=t)`` to ``cfg.custom_hooks`` for each of ``types`` that the config does
    not list already (as ``'mmfame.X'``, ``'X'`` or the class)."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    listed = {h.get('type') for h in hooks if isinstance(h, dict)}
    listed = {getattr(t, '__name__', t) for t in listed}
    listed |= {t.rpartition('.')[2] for t in listed if isinstance(t, str)}
    cfg.custom_hooks = hooks + [dict(type=t) for t in types if t.rpartition('.')[2] not in listed]
