"""Reading what an mmengine Runner leaves in a work dir: logged scalars, test results, checkpoints.

A Runner writes each start into ``<work_dir>/<YYYYmmdd_HHMMSS>/`` (``<stamp>.log`` and
``vis_data/scalars.json``, one JSON record per logging interval or validation) and the checkpoints
beside them (``last_checkpoint`` names the newest).
"""
import glob
import json
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence

from .metrics import logged_tasks

STAMP_GLOB = '[0-9]' * 8 + '_' + '[0-9]' * 6


def stamp_dirs(work_dir: str, must_have: str = '') -> List[str]:
    """The Runner's ``<work_dir>/<timestamp>`` folders holding ``must_have``, oldest first."""
    return sorted(d for d in glob.glob(osp.join(work_dir, STAMP_GLOB))
                  if not must_have or glob.glob(osp.join(d, must_have)))


def read_scalars(path: str) -> List[dict]:
    """The records of one ``scalars.json``. A half-written last line (the Runner was killed while
    logging) is skipped with a warning; a bad line before it is an error naming the file."""
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    records = []
    for n, line in lines:
        try:
            record = json.loads(line)
        except ValueError as e:
            if n == lines[-1][0] and not line.endswith('\n'):
                warnings.warn(f'{path}: skipped a half-written last line ({e}): the run was '
                              'stopped while logging')
                continue
            raise ValueError(f'{path}, line {n}, is not a JSON record ({e}): the log is damaged; '
                             'move the file aside to read the run without it') from None
        if not isinstance(record, dict):
            raise ValueError(f'{path}, line {n}, holds {type(record).__name__}, not a record: '
                             'the log is damaged; move the file aside to read the run without it')
        records.append(record)
    return records


def all_scalars(work_dir: str) -> List[dict]:
    """The records of every start of a run in order; a resumed start repeats no iteration, so
    later records win where two starts logged the same step."""
    records = []
    for d in stamp_dirs(work_dir, osp.join('vis_data', 'scalars.json')):
        records.extend(read_scalars(osp.join(d, 'vis_data', 'scalars.json')))
    return records


def detect_metrics(records: Sequence[dict]) -> List[str]:
    """The logged keys of the first task (:data:`.metrics.METRICS`) whose primary metric was
    logged, primary first."""
    tasks = logged_tasks(key for r in records for key in r)
    return tasks[0] if tasks else []


def is_training_record(record: dict) -> bool:
    """A record a training iteration logged (validation records carry no loss)."""
    return 'loss' in record and 'iter' in record


def training_records(records: Sequence[dict]) -> List[dict]:
    return [r for r in records if is_training_record(r)]


def by_epoch(records: Sequence[dict]) -> bool:
    """Whether the run's loop counts epochs: its training records carry ``epoch``."""
    return any('epoch' in r for r in training_records(records))


def metric_curve(records: Sequence[dict], key: str) -> List[list]:
    """``[[step, value], ...]`` of a validation metric; a repeated step keeps its last value.

    The step is the epoch in epoch-based loops (their training records carry ``epoch``), the
    iteration otherwise: mmdet's LoggerHook logs validation under the epoch (0 in an
    ``IterBasedTrainLoop``), so there it is the last logged training iteration if that is later.
    """
    epochs = by_epoch(records)
    points, last_iter = {}, 0
    for r in records:
        if is_training_record(r):
            last_iter = r['iter']
        if key in r:
            step = r.get('step', last_iter)
            points[step if epochs else max(step, last_iter)] = r[key]
    return [[s, v] for s, v in sorted(points.items())]


def summarize_run(records: Sequence[dict], metrics: Sequence[str]) -> dict:
    """Loss curve, final loss (mean of the logged losses over the last 10 % of the iterations),
    median seconds/iteration and the last value of each metric."""
    train = training_records(records)
    iters = [r['iter'] for r in train]
    losses = [r['loss'] for r in train]
    out = dict(iters=iters, losses=losses, final_loss=None, sec_per_iter=None, metrics={})
    if train:
        last = max(iters)
        tail = [l for i, l in zip(iters, losses) if i > 0.9 * last] or losses[-1:]
        out['final_loss'] = sum(tail) / len(tail)
        times = sorted(r['time'] for r in train if 'time' in r)
        if times:
            out['sec_per_iter'] = times[len(times) // 2]
        out['last_iter'] = last
    for key in metrics:
        values = [r[key] for r in records if key in r]
        out['metrics'][key] = values[-1] if values else None
    return out


def last_logged_iter(work_dir: str) -> Optional[int]:
    """The highest training iteration any start of the run logged."""
    its = [r['iter'] for r in training_records(all_scalars(work_dir))]
    return max(its) if its else None


def latest_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues the run from: the whole one ``last_checkpoint``
    names, else the newest whole one (:func:`mmfame.runtime.resume.which_checkpoint`)."""
    from mmfame.runtime.resume import which_checkpoint
    return which_checkpoint(work_dir).path


def test_metrics(test_dir: str) -> Dict[str, float]:
    """The metrics ``tools/test.py --work-dir test_dir`` wrote (``<timestamp>/<timestamp>.json``)."""
    found = stamp_dirs(test_dir, '*.json')
    if not found:
        raise FileNotFoundError(f'no test results in {test_dir}')
    with open(sorted(glob.glob(osp.join(found[-1], '*.json')))[0]) as f:
        return json.load(f)


def tail(path: str, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''
