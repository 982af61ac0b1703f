"""mmfame.experiments.metrics, the one table of task metrics: every row and every task checked for
consistency, and what the log readers, the report and tools/demo.py make of it. Tests are tables
(the rows, the tasks, the cases below), each run by one test body."""
import importlib.util
import os.path as osp
import subprocess
import sys

import pytest

from mmfame.experiments import logs, report
from mmfame.experiments.metrics import (METRICS, PRIMARY, logged_tasks, metric_info,
                                        task_keys)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = list(dict.fromkeys(m.task for m in METRICS))

# key, its label, a logged value, how the tables print it (pinned: what the report printed before
# the table), for keys in the table and keys it lacks.
SHOWN = [
    ('coco/bbox_mAP', 'box AP', 0.3651, '36.5'),
    ('coco/bbox_mAP_50', 'box AP_50', 0.5812, '58.1'),
    ('coco/bbox_mAP_75', 'box AP_75', 0.4049, '40.5'),  # not a row: its prefix's row
    ('coco/segm_mAP', 'mask AP', 0.3449, '34.5'),
    ('coco/segm_mAP_l', 'mask AP_l', 0.5021, '50.2'),
    ('coco/AR@100', 'coco/AR@100', 0.4987, '49.9'),  # no row prefixes it: COCO's scale
    ('mIoU', 'mIoU', 37.5212, '37.52'),
    ('mAcc', 'mAcc', 48.1, '48.10'),
    ('aAcc', 'aAcc', 80.123, '80.12'),  # unknown evaluator: as logged
    ('accuracy/top1', 'accuracy/top1', 76.456, '76.46'),
    ('accuracy/top5', 'accuracy/top5', 93.1, '93.10'),
]

# keys a run logged -> what logs.detect_metrics reads it as (pinned: its answers before the table)
DETECTED = [
    ({'coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50', 'loss'},
     ['coco/bbox_mAP', 'coco/bbox_mAP_50']),
    ({'coco/segm_mAP', 'coco/segm_mAP_50'}, ['coco/segm_mAP', 'coco/segm_mAP_50']),
    ({'coco/bbox_mAP_50'}, []),  # a task is recognised by its primary metric only
    ({'mIoU', 'mAcc', 'aAcc'}, ['mIoU', 'mAcc']),
    ({'mAcc'}, []),
    ({'accuracy/top1', 'accuracy/top5'}, ['accuracy/top1']),
    ({'mIoU', 'coco/bbox_mAP'}, ['coco/bbox_mAP']),
    ({'loss', 'iter'}, []),
]


def _demo_tool():
    spec = importlib.util.spec_from_file_location('mmfame_demo_tool',
                                                  osp.join(REPO, 'tools', 'demo.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO_TASKS = _demo_tool().TASKS


def test_keys_and_labels_are_unique():
    assert len({m.key for m in METRICS}) == len(METRICS)
    assert len({m.label for m in METRICS}) == len(METRICS)  # table columns stay apart


@pytest.mark.parametrize('info', METRICS, ids=lambda m: m.key)
def test_row(info):
    """A row is found by its key, belongs to a task with a primary metric, and the report
    names, scales and rounds it (and the keys it prefixes) by the row."""
    assert metric_info(info.key) is info
    assert info.key in task_keys(info.task) and task_keys(info.task)[0] in PRIMARY
    assert info.scale > 0 and info.digits >= 0 and info.label
    assert report.metric_label(info.key) == info.label
    mean, std = 0.123456, 0.0321
    assert report._stat_text(info.key, dict(mean=mean, std=None)) == \
        f'{mean * info.scale:.{info.digits}f}'
    assert report._stat_text(info.key, dict(mean=mean, std=std), signed=True) == \
        f'{mean * info.scale:+.{info.digits}f} ± {std * info.scale:.{info.digits}f}'
    longer = metric_info(info.key + '_x')
    assert (longer.label, longer.scale, longer.digits, longer.primary) == (
        info.label + '_x', info.scale, info.digits, False)
    if '/' in info.key:  # a key of the same evaluator the table lacks is shown like this row
        kin = metric_info(info.key.split('/')[0] + '/not_a_row')
        assert (kin.scale, kin.digits) == (info.scale, info.digits)


@pytest.mark.parametrize('task', TASKS)
def test_task(task):
    """A task has one primary metric, its first row; its rows are adjacent; a run that logged
    its keys is read as this task, with these keys, primary first."""
    rows = [m for m in METRICS if m.task == task]
    assert [m.primary for m in rows] == [True] + [False] * (len(rows) - 1)
    first = METRICS.index(rows[0])
    assert METRICS[first:first + len(rows)] == tuple(rows)
    keys = [m.key for m in rows]
    assert list(task_keys(task)) == keys
    assert logged_tasks(keys + ['loss']) == [keys]
    assert logs.detect_metrics([{k: 1.0} for k in keys]) == keys
    assert logs.detect_metrics([{k: 1.0} for k in keys[1:]]) == []


def test_primary_follows_the_tasks():
    assert PRIMARY == tuple(task_keys(t)[0] for t in TASKS)


@pytest.mark.parametrize('key,label,value,text', SHOWN, ids=[c[0] for c in SHOWN])
def test_shown(key, label, value, text):
    assert report.metric_label(key) == label
    assert report._stat_text(key, dict(mean=value, std=None)) == text


@pytest.mark.parametrize('logged,expected', DETECTED,
                         ids=[','.join(sorted(c[0])) for c in DETECTED])
def test_detected(logged, expected):
    assert logs.detect_metrics([{k: 1.0 for k in logged}]) == expected


@pytest.mark.parametrize('choice', DEMO_TASKS)
def test_demo_task(choice):
    """The demo's tasks are tasks of the table, each with a primary metric, and its configs
    exist."""
    config, task = DEMO_TASKS[choice]
    assert task in TASKS
    assert metric_info(task_keys(task)[0]).primary
    assert osp.isfile(osp.join(REPO, config))


def test_the_table_imports_nothing_heavy():
    """The table module alone (not its package) pulls in neither torch nor mmengine."""
    path = osp.join(REPO, 'mmfame', 'experiments', 'metrics.py')
    code = ('import importlib.util, sys\n'
            f'spec = importlib.util.spec_from_file_location("metrics_alone", {path!r})\n'
            'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
            'print(sorted(m for m in ("torch", "mmengine", "numpy") if m in sys.modules))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'
