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


def _hook_name(hook) -> str:
    """A ``custom_hooks`` entry's class name, whatever the scope prefix (``'mmfame.X'`` -> X)."""
    kind = hook.get('type') if isinstance(hook, dict) else type(hook)
    return str(getattr(kind, '__name__', kind)).rpartition('.')[2]


def add_custom_hooks(cfg, *types: str) -> None:
    """Append ``dict(type=t)`` to ``cfg.custom_hooks`` for each of ``types`` that the config does
    not list already (as ``'mmfame.X'``, ``'X'`` or the class)."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    listed = {_hook_name(h) for h in hooks}
    cfg.custom_hooks = hooks + [dict(type=t) for t in types if _hook_name(dict(type=t))
                                not in listed]


def drop_custom_hooks(cfg, *types: str) -> None:
    """Remove the ``cfg.custom_hooks`` entries of each of ``types`` (with or without prefix)."""
    names = {_hook_name(dict(type=t)) for t in types}
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', None) or []
                        if _hook_name(h) not in names]
