"""What keeps one code base working from torch 2.1 on: the vendored helpers, the Triton gate, and
installing mmfame into an existing environment without replacing its stack."""
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch

from mmfame import FAME
from mmfame.optim import _compat, _triton_fame

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.parametrize('version, expected', [
    ('2.1.2+cu121', (2, 1, 2)), ('2.13.0+cpu', (2, 13, 0)), ('2.6.0a0+git1234', (2, 6, 0)),
    ('3.0.0', (3, 0, 0)), ('2.1.0', (2, 1, 0)), ('2.4', (2, 4)),
])
def test_version_tuple(version, expected):
    assert _compat.version_tuple(version) == expected


def test_get_value_takes_floats_and_tensors():
    assert _compat.get_value(0.5) == 0.5
    assert _compat.get_value(torch.tensor(3.0)) == 3.0


def test_view_as_real_replaces_complex_entries_only():
    params = [torch.zeros(2, dtype=torch.complex64), torch.zeros(3)]
    state = [torch.ones(2, dtype=torch.complex64), torch.ones(3)]
    _compat.view_as_real(params, state)
    assert [p.shape for p in params] == [(2, 2), (3,)]
    assert [s.shape for s in state] == [(2, 2), (3,)]


@pytest.mark.parametrize('tensor_form', [True, False])
def test_increment_steps_both_forms(monkeypatch, tensor_form):
    if tensor_form and _compat.TORCH_VERSION < (2, 2):
        pytest.skip('_foreach_add_(tensors, Tensor, alpha=) needs torch >= 2.2')
    monkeypatch.setattr(_compat, '_FOREACH_ADD_TENSOR', tensor_form)
    steps = [torch.tensor(0.0), torch.tensor(4.0)]
    _compat.increment_steps(steps)
    assert [float(s) for s in steps] == [1.0, 5.0]


@pytest.mark.skipif(_triton_fame.triton is not None, reason='Triton >= 3.0 is installed')
def test_fused_without_triton_3_names_the_requirement_and_default_still_steps():
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match=r'needs Triton >= 3.0'):
        FAME([w], fused=True)
    opt = FAME([w], lr=0.1)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.all(w < 1)


def test_installing_into_this_environment_replaces_nothing(tmp_path):
    """`pip install .[openmmlab]` into an env that has the stack installs mmfame alone: the base
    dependencies are lower bounds, so the env's torch, mmcv, mmengine and numpy stay."""
    pytest.importorskip('mmdet', reason='the OpenMMLab stack is not installed')
    report = tmp_path / 'report.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index',
         '--no-build-isolation', '--report', str(report), f'{REPO}[openmmlab]'],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    installs = [item['metadata']['name'] for item in json.loads(report.read_text())['install']]
    assert installs == ['mmfame'], installs
