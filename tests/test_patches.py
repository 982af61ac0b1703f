"""``import mmfame`` changes in other libraries exactly what mmfame.engine.patches lists and
applies: every attribute of torch's and mmengine's modules and classes is compared before and
after the import, in a fresh interpreter; the checkpoint allowlist holds only inside mmengine's
checkpoint loading."""
import json
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

SNAPSHOT = r'''
import inspect, json, sys
import numpy, torch, torch.optim, torch.serialization
import torch.distributed.optim, torch.distributed.fsdp
import mmengine.dist.utils, mmengine.fileio, mmengine.hooks, mmengine.optim, mmengine.runner
import mmengine.runner.checkpoint, mmengine._strategy

def snapshot():
    seen = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(('torch', 'mmengine')):
            continue
        for attr, value in list(vars(module).items()):
            if inspect.ismodule(value):
                continue  # a submodule imported since: not a change to the package
            seen[f'{name}.{attr}'] = id(value)
            if inspect.isclass(value) and value.__module__ == name:
                for key, member in list(vars(value).items()):
                    seen[f'{value.__qualname__}.{key}'] = id(member)
    return seen

def mmfame_safe_globals():
    if not hasattr(torch.serialization, 'get_safe_globals'):  # torch < 2.4
        return []
    return [str(g) for g in torch.serialization.get_safe_globals()
            if 'mmfame' in getattr(g[0] if isinstance(g, tuple) else g, '__module__', '')]

before = snapshot()
import mmfame
from mmfame.engine import checkpoint_allowlist, patches
after = snapshot()
changed = sorted(k for k in after if k in before and before[k] != after[k])
added = sorted(k for k in after if k not in before and not k.startswith('mmfame'))
with checkpoint_allowlist():
    inside = mmfame_safe_globals()
print(json.dumps(dict(changed=changed, added=added, applied=patches.apply(),
                      listed=[p.target for p in patches.PATCHES],
                      safe_globals=mmfame_safe_globals(), inside=len(inside))))
'''


def test_import_changes_exactly_what_the_patch_module_lists():
    out = subprocess.run([sys.executable, '-c', SNAPSHOT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    applied, listed = result['applied'], result['listed']
    assert applied and set(applied) <= set(listed)
    # each changed or added attribute is a patch that was applied, and each patch changed one
    touched = result['changed'] + result['added']
    for key in touched:
        assert any(target == key or target.endswith('.' + key) for target in applied), key
    for target in applied:
        assert any(target == key or target.endswith('.' + key) for key in touched), target
    # no process-wide allowlist: torch.load elsewhere in the process is as torch ships it
    assert result['safe_globals'] == []
    from mmfame.optim._compat import TORCH_VERSION
    assert result['inside'] == (9 if TORCH_VERSION >= (2, 6) else 0)


def test_every_patch_says_why_which_versions_and_its_test():
    from mmfame.engine import patches
    for patch in patches.PATCHES:
        assert patch.why and patch.needed_by and patch.test.startswith('tests/'), patch
        path, name = patch.test.split('::')
        with open(osp.join(REPO, path)) as f:
            assert f'def {name}(' in f.read(), patch.test


DEFERRED = r'''
import json, sys
import torch
import mmfame
from mmfame.engine import patches
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS
HEAVY = ('mmengine.optim', 'mmengine.hooks', 'mmengine.runner', 'torch.distributed.optim')
steps = [dict(loaded=[m for m in HEAVY if m in sys.modules], applied=patches.apply(),
              fame=OPTIMIZERS.get('FAME') is not None, torch_optim=hasattr(torch.optim, 'FAME'),
              constructor=OPTIM_WRAPPER_CONSTRUCTORS.get('FAMEOptimWrapperConstructor') is not None)]
import mmengine.optim
steps.append(dict(applied=patches.apply(), torch_optim=torch.optim.FAME is mmfame.FAME,
                  constructor=OPTIM_WRAPPER_CONSTRUCTORS.get('FAMEOptimWrapperConstructor')
                  is mmfame.FAMEOptimWrapperConstructor, hook=HOOKS.get('PreemptionHook')))
from mmengine.runner import Runner
steps.append(dict(applied=patches.apply(), hooks=[HOOKS.get(h).__module__ for h in
                                                  ('ZeroCheckpointHook', 'PreemptionHook')],
                  runner=getattr(Runner.register_hooks, '_mmfame_patch', None),
                  finder=[type(f).__name__ for f in sys.meta_path if 'mmfame' in type(f).__module__]))
print(json.dumps(steps))
'''


def test_import_defers_what_concerns_the_runner():
    """``import mmfame`` imports neither mmengine's optimizer nor its runner package (with them
    torch.distributed.optim and FSDP, most of the import's time): registering the constructor
    and the hooks and patching the runners wait for their first import, then happen at once; the
    finder that waits for them leaves ``sys.meta_path`` when done."""
    out = subprocess.run([sys.executable, '-c', DEFERRED], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    imported, optim_loaded, runner_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == dict(loaded=[], applied=['sys.meta_path'], fame=True, torch_optim=False,
                            constructor=False)
    assert optim_loaded == dict(applied=['torch.optim.FAME', 'sys.meta_path'], torch_optim=True,
                                constructor=True, hook=None)
    assert runner_loaded['hooks'] == ['mmfame.engine.hooks', 'mmfame.engine.preemption']
    assert runner_loaded['runner'] == 'mmengine.runner.Runner.register_hooks'
    assert runner_loaded['finder'] == []
    from mmfame.engine import patches
    runner_patches = [p.target for p in patches.PATCHES if p.target.startswith(
        ('mmengine.runner', 'mmengine._strategy'))]
    from mmfame.optim._compat import TORCH_VERSION
    if TORCH_VERSION < (2, 6):
        runner_patches.remove('mmengine.runner.checkpoint.CheckpointLoader.load_checkpoint')
    assert runner_loaded['applied'][0] == 'torch.optim.FAME'
    assert set(runner_loaded['applied'][1:]) <= set(runner_patches)
    assert 'mmengine.runner.FlexibleRunner.register_hooks' in runner_loaded['applied']
