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


def use_amp(cfg) -> None:
    """``--amp`` as mmdet's and mmseg's tools do it: ``OptimWrapper`` -> ``AmpOptimWrapper``
    with a dynamic loss scale; a config that has it already is left alone, another wrapper is
    refused (it is not replaced)."""
    from mmengine.logging import print_log
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper == 'AmpOptimWrapper':
        print_log('AMP training is already enabled in your config.', logger='current')
    elif wrapper != 'OptimWrapper':
        raise ValueError(f'--amp turns optim_wrapper.type OptimWrapper into AmpOptimWrapper, '
                         f'got optim_wrapper.type={wrapper!r}: enable mixed precision in that '
                         'wrapper (or its AMP variant) in the config instead of --amp')
    else:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'


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


def use_resumable_strategy(cfg) -> None:
    """Point a FlexibleRunner config's mmengine ``DDPStrategy``/``FSDPStrategy`` at mmfame's
    (:mod:`.strategies`: they resume under torch >= 2.6, FSDP's under torch >= 2.1), saying so."""
    from mmengine.logging import print_log

    from .strategies import RESUMABLE
    strategy = cfg.get('strategy', None) if cfg.get('runner_type', None) else None
    name = strategy.get('type') if isinstance(strategy, dict) else None
    name = name[len('mmengine.'):] if isinstance(name, str) and name.startswith('mmengine.') \
        else name
    if name in RESUMABLE:
        strategy['type'] = RESUMABLE[name]
        print_log(f'strategy {name} -> {RESUMABLE[name]}, which resumes on this torch '
                  '(mmfame/runtime/strategies.py).', logger='current')
