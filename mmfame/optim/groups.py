"""Parameter-group helpers, plain functions over torch's group dicts (no mmengine).

:func:`settings_key` says which groups have the same settings: :class:`FAME` steps those in one
call, and :func:`merge_param_groups` makes them one group (what ``FAMEOptimWrapperConstructor``
does with the one-group-per-parameter layout of mmengine's ``paramwise_cfg``; usable on any list
of groups, e.g. ``FAME(merge_param_groups(my_groups), lr=...)``).
"""
from typing import Iterable, List, Optional, Sequence

from torch import Tensor

__all__ = ['MEMBER_KEYS', 'merge_param_groups', 'settings_key']

MEMBER_KEYS = ('params', 'param_names')  # what a group holds, not how it is stepped


def settings_key(group: dict, keys: Optional[Sequence[str]] = None) -> tuple:
    """A hashable key of ``group``'s settings (``keys``, default all but its members): equal for
    groups that step alike. A tensor (an lr) counts by identity: reading its value would sync
    with its device."""
    names = sorted(k for k in group if k not in MEMBER_KEYS) if keys is None else keys
    return tuple((k, _freeze(group.get(k))) for k in names)


def merge_param_groups(groups: Iterable[dict], defaults: Optional[dict] = None) -> List[dict]:
    """One group per distinct set of settings (each group's over ``defaults``), in order of first
    appearance, so that a resumed run maps saved state onto the same groups. Refuses a parameter
    in two groups (a shared or tied weight), which merging would step twice."""
    merged, seen = {}, set()
    for group in groups:
        ids = {id(p) for p in group['params']}
        if ids & seen:
            raise ValueError('some parameters appear in more than one parameter group (a '
                             'shared or tied weight): set paramwise_cfg=dict('
                             'bypass_duplicate=True) to step shared parameters once')
        seen |= ids
        settings = {k: v for k, v in group.items() if k not in MEMBER_KEYS}
        key = settings_key({**(defaults or {}), **settings})
        merged.setdefault(key, settings)
        for k in MEMBER_KEYS:
            if k in group:
                merged[key].setdefault(k, []).extend(group[k])
    return list(merged.values())


def _freeze(value):
    """A hashable stand-in for a setting (configs hold lists and dicts; a tensor by identity)."""
    if isinstance(value, Tensor):
        return ('tensor', id(value))
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value
