"""``import mmfame`` plugs into mmengine and changes nothing else: every attribute of torch's and
mmengine's modules and classes is the same after the import, in either order with what upstream
tools import; another plugin's class of the same name breaks no import; ``mmfame.X`` names
resolve from any scope, with or without ``custom_imports``."""
import json
import subprocess
import sys

import pytest

pytest.importorskip('mmengine')

TOOL_IMPORTS = '''
import numpy, signal, torch, torch.optim, torch.serialization
import torch.distributed.optim, torch.distributed.fsdp
import mmengine.dist.utils, mmengine.fileio, mmengine.hooks, mmengine.optim, mmengine.runner
import mmengine.runner.checkpoint, mmengine._strategy
'''

SNAPSHOT = r'''
import inspect, json, signal, sys

def describe(value):
    """What a value is, comparable across processes: a function's or class's own name and where
    its code is (a wrapper made with functools.wraps has its wrapped function's name), else its
    type's."""
    function = (value.__func__ if isinstance(value, (classmethod, staticmethod))
                or inspect.ismethod(value) else value)
    code = getattr(function, '__code__', None) if inspect.isfunction(function) else None
    where = f'@{code.co_filename}:{code.co_firstlineno}' if code is not None else ''
    if not (inspect.isclass(value) or inspect.isroutine(value)):
        value = type(value)
    return f'{getattr(value, "__module__", None)}:{getattr(value, "__qualname__", None)}{where}'

def snapshot():
    seen = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(('torch', 'mmengine')):
            continue
        for attr, value in list(vars(module).items()):
            if inspect.ismodule(value):
                continue  # a submodule imported since: not a change to the package
            seen[f'{name}.{attr}'] = (id(value), describe(value))
            if inspect.isclass(value) and value.__module__ == name:
                for key, member in list(vars(value).items()):
                    seen[f'{name}.{value.__qualname__}.{key}'] = (id(member), describe(member))
    return seen

def state():
    import torch
    safe = (torch.serialization.get_safe_globals()
            if hasattr(torch.serialization, 'get_safe_globals') else [])
    return dict(meta_path=[describe(f) for f in sys.meta_path], safe_globals=len(safe),
                handlers={s: describe(signal.getsignal(getattr(signal, s)))
                          for s in ('SIGTERM', 'SIGUSR1', 'SIGINT')},
                torch_optim_fame=hasattr(torch.optim, 'FAME'))
'''

TOOL_ORDER = SNAPSHOT + TOOL_IMPORTS + r'''
before, state_before = snapshot(), state()
import mmfame
after = snapshot()
print(json.dumps(dict(
    changed=sorted(k for k in before if k in after and before[k][0] != after[k][0]),
    added=sorted(k for k in after if k not in before and not k.startswith('mmfame')),
    state=[state_before, state()])))
'''

REVERSE_ORDER = SNAPSHOT + r'''
import os
if os.environ.get('WITH_MMFAME'):
    import mmfame
''' + TOOL_IMPORTS + r'''
print(json.dumps(dict(attrs={k: v[1] for k, v in snapshot().items()}, state=state())))
'''


def _run(code, env=None):
    import os
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_after_the_tools_imports_changes_nothing():
    result = _run(TOOL_ORDER)
    assert result['changed'] == []
    assert result['added'] == []
    before, after = result['state']
    assert after == before and after['torch_optim_fame'] is False


def test_import_before_the_tools_imports_changes_nothing():
    """mmfame imported first: torch and mmengine end up as in a process without mmfame."""
    without, with_mmfame = _run(REVERSE_ORDER), _run(REVERSE_ORDER, dict(WITH_MMFAME='1'))
    assert with_mmfame['state'] == without['state']
    attrs = with_mmfame['attrs']
    assert {k: attrs.get(k) for k in without['attrs']} == without['attrs']
    assert [k for k in attrs if k not in without['attrs']] == []


ANOTHER_PLUGIN = r'''
import json, warnings
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, OPTIMIZERS, OPTIM_WRAPPER_CONSTRUCTORS
import torch

@HOOKS.register_module()
class PreemptionHook(Hook):
    pass

@OPTIMIZERS.register_module()
class FAME(torch.optim.SGD):
    pass

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import mmfame
    import mmengine.runner
import mmfame.registry
print(json.dumps(dict(
    warned=[str(w.message) for w in caught if 'mmfame' in str(w.message)],
    fame=OPTIMIZERS.get('FAME').__module__, ours=OPTIMIZERS.get('mmfame.FAME').__module__,
    hook=HOOKS.get('PreemptionHook').__module__,
    our_hook=HOOKS.get('mmfame.PreemptionHook').__module__,
    constructor=OPTIM_WRAPPER_CONSTRUCTORS.get('FAMEOptimWrapperConstructor').__module__)))
'''


def test_another_plugins_class_of_the_same_name_breaks_no_import():
    result = _run(ANOTHER_PLUGIN)
    assert result['fame'] == '__main__' and result['hook'] == '__main__'  # theirs, kept
    assert result['ours'] == 'mmfame.engine.optimizers.build'
    assert result['our_hook'] == 'mmfame.runtime.preemption'
    assert result['constructor'] == 'mmfame.engine.optimizers.constructor'
    assert len(result['warned']) == 1 and "type='mmfame.FAME'" in result['warned'][0]


SCOPED = r'''
import json, sys
from mmengine.registry import HOOKS, OPTIMIZERS, STRATEGIES, DefaultScope
DefaultScope.get_instance('t', scope_name='mmdet')
import mmdet.registry
found = dict(hook=mmdet.registry.HOOKS.get('mmfame.PreemptionHook').__name__,
             zero=mmdet.registry.OPTIMIZERS.get('mmfame.ZeroRedundancyOptimizer').__name__,
             strategy=STRATEGIES.get('mmfame.FSDPStrategy').__module__,
             bare=mmdet.registry.HOOKS.get('PreemptionHook'))
print(json.dumps(found))
'''


def test_scoped_names_resolve_from_any_scope_without_custom_imports():
    pytest.importorskip('mmdet')
    assert _run(SCOPED) == dict(hook='PreemptionHook', zero='ZeroRedundancyOptimizer',
                                strategy='mmfame.runtime.strategies', bare=None)
