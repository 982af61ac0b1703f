"""tools/demo.py end to end on CPU: the detector's FAME and AdamW runs through the experiment
engine (a few iterations on the demo's own synthetic data), then a rerun that trains nothing."""
import json
import os.path as osp

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')
pytest.importorskip('mmseg', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

from e2e import PY, REPO, run_tool, tool_env  # noqa: E402

from mmfame.experiments import logs  # noqa: E402

STEM = 'retinanet_r18_fpn_fame_1xb8-300i_demo-coco'


@pytest.mark.slow
def test_demo_trains_tests_and_leaves_finished_runs_alone(tmp_path):
    work = tmp_path / 'work'
    cmd = [PY, osp.join(REPO, 'tools', 'demo.py'), '--only', 'det', '--iters', '4',
           '--data-root', str(tmp_path / 'data'), '--work-dir', str(work)]
    first = run_tool(cmd, env=tool_env())
    summary = json.loads((work / 'summary.json').read_text())
    by_setting = {r['setting']: r for r in summary['runs']}
    assert set(by_setting) == {'fame', 'adamw'}
    for setting, r in by_setting.items():
        tested = logs.test_metrics(str(work / STEM / setting / 'seed_0' / 'test'))
        assert r['test_metrics'] == tested
        assert r['metrics']['coco/bbox_mAP'] == tested.get('coco/bbox_mAP', 0.0)
        assert r['last_iter'] == 4
    rows = {row['setting']: row for row in summary['rows']}
    fame, adamw = (by_setting[s]['metrics']['coco/bbox_mAP'] for s in ('fame', 'adamw'))
    assert rows['fame']['delta']['coco/bbox_mAP']['mean'] == fame - adamw  # paired, seed 0
    assert 'Δ box AP vs adamw (paired)' in (work / 'summary.md').read_text()
    assert (work / 'summary.png').stat().st_size > 0

    second = run_tool(cmd, env=tool_env())
    for setting in ('fame', 'adamw'):
        assert f'{STEM}/{setting}/seed_0: finished, left alone' in second
    assert 'starting' not in second

    def printed(out):
        return [line for line in out.splitlines() if line.startswith('[demo] det/')]
    assert len(printed(first)) == 2 and printed(second) == printed(first)
