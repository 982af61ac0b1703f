"""The task metrics the experiment engine knows, as one table: a new task metric is one row.

The log readers (:mod:`.logs`, :mod:`.state`) recognise a run's task by its primary metric and
read that task's keys, the report (:mod:`.report`) names, scales and rounds every metric by its
row, and ``tools/demo.py`` takes its tasks' metrics from here. Imports nothing heavy.
"""
from dataclasses import dataclass, replace
from typing import Iterable, List, Tuple

__all__ = ['METRICS', 'PRIMARY', 'MetricInfo', 'logged_tasks', 'metric_info', 'task_keys']


@dataclass(frozen=True)
class MetricInfo:
    """One metric, as the evaluator logs it and the tables show it.

    Attributes:
        key: its name in ``scalars.json`` and in test results, e.g. ``'coco/bbox_mAP'``.
        label: its name in tables, README cells and metafiles, e.g. ``'box AP'``.
        task: the task it measures, as OpenMMLab metafiles name it (their ``Task``).
        scale: logged value -> shown value (COCO logs fractions, tables show percent).
        digits: the decimals shown after scaling.
        primary: the task's headline metric, one per task: what its runs are recognised by
            and what the README and the metafiles show.
    """
    key: str
    label: str
    task: str
    scale: float = 1.0
    digits: int = 2
    primary: bool = False

    def format(self, value: float, signed: bool = False) -> str:
        """``value`` as the tables print it: scaled, ``digits`` decimals, '+' if ``signed``."""
        return f'{value * self.scale:{"+" if signed else ""}.{self.digits}f}'


# Rows grouped by task, its primary metric first. The order is the order of the tasks: a run
# that logged several tasks' primary metrics is recognised as the first's, and the README cells,
# the metafiles and the plots show them in this order.
METRICS: Tuple[MetricInfo, ...] = (
    MetricInfo('coco/bbox_mAP', 'box AP', 'Object Detection', 100.0, 1, primary=True),
    MetricInfo('coco/bbox_mAP_50', 'box AP_50', 'Object Detection', 100.0, 1),
    MetricInfo('coco/segm_mAP', 'mask AP', 'Instance Segmentation', 100.0, 1, primary=True),
    MetricInfo('coco/segm_mAP_50', 'mask AP_50', 'Instance Segmentation', 100.0, 1),
    MetricInfo('mIoU', 'mIoU', 'Semantic Segmentation', primary=True),  # mmseg logs percent
    MetricInfo('mAcc', 'mAcc', 'Semantic Segmentation'),
    MetricInfo('accuracy/top1', 'accuracy/top1', 'Image Classification', primary=True),
)
PRIMARY: Tuple[str, ...] = tuple(m.key for m in METRICS if m.primary)
_BY_KEY = {m.key: m for m in METRICS}


def metric_info(key: str) -> MetricInfo:
    """The row of ``key``. A key the table lacks is never primary; it takes the row of its
    longest known prefix, the rest appended to the label ('coco/bbox_mAP_75' -> 'box AP_75'),
    else the scale and digits of its evaluator's known keys (those sharing its part before '/',
    so 'coco/AR@100' shows as percent), else shows as logged, with 2 decimals."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    stem = max((m for m in METRICS if key.startswith(m.key)), key=lambda m: len(m.key),
               default=None)
    if stem is not None:
        return replace(stem, key=key, label=stem.label + key[len(stem.key):], primary=False)
    evaluator = key.split('/')[0] + '/' if '/' in key else None
    kin = next((m for m in METRICS if evaluator and m.key.startswith(evaluator)), None)
    return MetricInfo(key, key, '', kin.scale, kin.digits) if kin else MetricInfo(key, key, '')


def task_keys(task: str) -> Tuple[str, ...]:
    """The keys of ``task``, its primary metric first."""
    return tuple(m.key for m in METRICS if m.task == task)


def logged_tasks(keys: Iterable[str]) -> List[List[str]]:
    """What a run measured: per task whose primary metric is among ``keys``, in table order,
    that task's keys among ``keys``, primary first."""
    keys = set(keys)
    return [[k for k in task_keys(m.task) if k in keys] for m in METRICS
            if m.primary and m.key in keys]
