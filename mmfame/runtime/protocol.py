"""What a preempted training run leaves, for whoever starts it again: the one definition the hook,
the shell launchers and the experiment engine read.

* :data:`PREEMPTED_EXIT` (75, ``EX_TEMPFAIL``: a temporary failure, rerunning is meant to work):
  ``tools/train.py``'s exit status after it saved on a stop signal;
* :data:`PREEMPTION_RECORD` in the work dir: written by rank 0 once every rank saved (signal,
  iteration, checkpoint, config, Slurm job), because launchers that report their own status
  (torchrun, srun) may report another rank's;
* :data:`JOB_RECORD` in the work dir: written by the batch job of ``REQUEUE=1
  tools/slurm_train.sh`` at the end of each start (job id, exit status, whether it requeued
  itself), which the engine reads once Slurm has forgotten the job.

Records (and checkpoints, through :class:`mmfame.runtime.fileio.AtomicLocalBackend`) are written
with :func:`write_atomic` and read with :func:`read_json`.

``python mmfame/runtime/protocol.py resume WORK_DIR CONFIG`` (what ``tools/slurm_train.sh`` asks
before each start; the file alone, run by its path, imports only the standard library) prints
why a start of CONFIG in WORK_DIR must resume and exits 0, or exits 1.
"""
import json
import os
import os.path as osp
import sys
from typing import Optional

__all__ = ['JOB_RECORD', 'PREEMPTED_EXIT', 'PREEMPTION_RECORD', 'read_json', 'read_record',
           'resume_reason', 'write_atomic']

PREEMPTED_EXIT = 75
PREEMPTION_RECORD = 'preempted.json'
JOB_RECORD = 'slurm_job.json'


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, sync it to disk and rename it over
    ``path``: a reader finds the old file, the new one whole, or none, whenever a writer is
    killed. The temporary file is ``.NAME.PID.part``."""
    folder, name = osp.split(str(path))
    os.makedirs(folder or '.', exist_ok=True)
    part = osp.join(folder, f'.{name}.{os.getpid()}.part')
    try:
        with open(part, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, path)
    finally:
        if osp.exists(part):
            os.remove(part)


def read_json(path: str) -> Optional[dict]:
    """The JSON object in ``path`` (None: absent, being replaced, damaged, or not an object)."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_record(work_dir: str, name: str = PREEMPTION_RECORD) -> Optional[dict]:
    """A record of ``work_dir`` (None: absent, or not a JSON object)."""
    return read_json(osp.join(work_dir, name))


def resume_reason(work_dir: str, config: str, restarts: int = 0) -> Optional[str]:
    """Why a start of ``config`` in ``work_dir`` must resume (None: it starts as asked): the work
    dir holds this config's preemption record, or Slurm restarted the job (``restarts`` > 0)
    and the work dir has a checkpoint."""
    record = read_record(work_dir)
    if record and record.get('config') and \
            osp.realpath(record['config']) == osp.realpath(config):
        return (f"{osp.join(work_dir, PREEMPTION_RECORD)}: {record.get('signal', 'a signal')} "
                f"stopped this config after iteration {record.get('iter', '?')}: resuming it")
    if restarts > 0 and osp.exists(osp.join(work_dir, 'last_checkpoint')):
        return f'the job restarted ({restarts} times) and {work_dir} has a checkpoint: resuming it'
    return None


def main(argv) -> int:
    if len(argv) != 3 or argv[0] != 'resume':
        print('usage: python mmfame/runtime/protocol.py resume WORK_DIR CONFIG', file=sys.stderr)
        return 2
    reason = resume_reason(argv[1], argv[2], int(os.environ.get('SLURM_RESTART_COUNT') or 0))
    if reason:
        print(reason)
    return 0 if reason else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
