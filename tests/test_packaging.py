"""The package split by dependency: ``mmfame`` and ``mmfame.optim`` need torch only, the
OpenMMLab integration (``mmfame.engine``) needs mmengine, which the installed metadata asks for
only under the ``mmengine`` extra (``pip install "mmfame[mmengine]"``)."""
import importlib.metadata
import json
import os.path as osp
import re
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Makes mmengine and its submodules unimportable, as in an environment without it.
NO_MMENGINE = r'''
import importlib.abc, sys

class NoMMEngine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == 'mmengine' or name.startswith('mmengine.'):
            raise ModuleNotFoundError(f'No module named {name!r}', name='mmengine')
        return None

sys.meta_path.insert(0, NoMMEngine())
'''

WITHOUT_MMENGINE = NO_MMENGINE + r'''
import json
import torch
import mmfame

w = torch.nn.Parameter(torch.ones(4))
opt = mmfame.FAME([w], lr=0.1, weight_decay=0.01)
w.grad = torch.full((4,), 0.5)
opt.step()
result = dict(moved=bool(torch.all(w < 1)), all=mmfame.__all__,
              mmengine=[m for m in sys.modules if m.split('.')[0] == 'mmengine'])
try:
    mmfame.FAMEOptimWrapperConstructor
except ImportError as e:
    result['attribute'] = str(e)
try:
    from mmfame import FAMEOptimWrapperConstructor  # noqa: F401
except ImportError as e:
    result['from_import'] = str(e)
try:
    mmfame.no_such_name
except AttributeError as e:
    result['other'] = str(e)
print(json.dumps(result))
'''

# Imports mmfame.optim under a bare parent package: mmfame/__init__.py imports mmengine (when it
# is installed) to register FAME, so this checks what mmfame.optim itself imports.
OPTIM_ALONE = r'''
import importlib.util, json, sys

spec = importlib.util.find_spec('mmfame')
sys.modules['mmfame'] = importlib.util.module_from_spec(spec)  # not executed
import mmfame.optim

print(json.dumps(dict(
    mmengine_installed=importlib.util.find_spec('mmengine') is not None,
    fame=mmfame.optim.FAME.__module__,
    mmengine=[m for m in sys.modules if m.split('.')[0] == 'mmengine'])))
'''


def run_python(code):
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def test_fame_without_mmengine_steps_and_the_constructor_names_the_extra():
    result = run_python(WITHOUT_MMENGINE)
    assert result['moved']
    assert result['mmengine'] == []
    assert result['all'] == ['FAME', 'fame', '__version__']
    for key in ('attribute', 'from_import'):
        assert 'FAMEOptimWrapperConstructor' in result[key], result
        assert 'pip install "mmfame[mmengine]"' in result[key], result
    assert 'no_such_name' in result['other']


def test_mmfame_optim_imports_no_mmengine():
    result = run_python(OPTIM_ALONE)
    assert result['fame'] == 'mmfame.optim.fame'
    assert result['mmengine'] == [], result


def requirements(dist='mmfame'):
    """(name, marker) of each Requires-Dist of the installed distribution."""
    reqs = []
    for req in importlib.metadata.requires(dist) or []:
        spec, _, marker = req.partition(';')
        reqs.append((re.match(r'[A-Za-z0-9._-]+', spec.strip()).group().lower(),
                     spec.strip(), marker.strip()))
    return reqs


def test_installed_metadata_asks_for_mmengine_only_under_an_extra():
    reqs = requirements()
    assert [name for name, _, marker in reqs if not marker] == ['torch'], reqs
    mmengine = [marker for name, _, marker in reqs if name == 'mmengine']
    assert mmengine and all(m.replace("'", '"') == 'extra == "mmengine"' for m in mmengine), reqs
    # the full stack pulls the mmengine extra in through a self-reference
    assert ('mmfame[mmengine]', 'extra == "openmmlab"') in [
        (spec.replace(' ', ''), marker.replace("'", '"'))
        for name, spec, marker in reqs if name == 'mmfame'], reqs


def test_the_wheel_ships_the_package_without_the_experiment_engine(tmp_path):
    """mmfame.experiments runs a checkout's tools/ and configs/: it stays out of the wheel."""
    import shutil
    import zipfile
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(osp.join(REPO, name), src / name)
    shutil.copytree(osp.join(REPO, 'mmfame'), src / 'mmfame',
                    ignore=shutil.ignore_patterns('__pycache__'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps',
                    '--no-build-isolation', '-w', str(tmp_path / 'dist'), str(src)],
                   check=True, capture_output=True, timeout=300)
    names = zipfile.ZipFile(next((tmp_path / 'dist').glob('*.whl'))).namelist()
    assert 'mmfame/optim/fame.py' in names and 'mmfame/optim/csrc/fame_cpu.c' in names
    assert {'mmfame/registry.py', 'mmfame/engine/zero.py', 'mmfame/runtime/preemption.py'} <= set(names)
    assert not [n for n in names if n.startswith('mmfame/experiments')]
