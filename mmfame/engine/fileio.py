"""Checkpoints written whole or not at all.

mmengine writes a checkpoint straight under its final name: a job killed during the write (Slurm's
SIGKILL after ``KillWait``, a node failure, a full disk) leaves a file cut short under the name a
resume looks for. :class:`AtomicLocalBackend` is mmengine's local file backend writing to a
temporary name in the same folder, syncing it to disk and renaming it over the final name, so
that a checkpoint is either the old file, the new one whole, or absent. ``tools/train.py`` makes
a config's CheckpointHook write through it (:func:`use_atomic_checkpoints`).
"""
import os
import os.path as osp

from mmengine.fileio.backends import LocalBackend

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'use_atomic_checkpoints']

ATOMIC_BACKEND = 'mmfame_atomic_local'  # its name in mmengine's file backends


class AtomicLocalBackend(LocalBackend):
    """mmengine's LocalBackend whose ``put`` writes a temporary file and renames it."""

    def put(self, obj: bytes, filepath) -> None:
        filepath = str(filepath)
        folder, name = osp.split(filepath)
        os.makedirs(folder or '.', exist_ok=True)
        part = osp.join(folder, f'.{name}.{os.getpid()}.part')
        try:
            with open(part, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, filepath)
        finally:
            if osp.exists(part):
                os.remove(part)


def use_atomic_checkpoints(cfg) -> None:
    """Make ``cfg``'s CheckpointHook write through :class:`AtomicLocalBackend`, where it writes to
    local files with mmengine's default backend (no ``backend_args``/``file_client_args``, no
    remote ``out_dir``)."""
    hook = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
    if not isinstance(hook, dict) or hook.get('type') not in ('CheckpointHook', None):
        return
    if hook.get('backend_args') or hook.get('file_client_args') or \
            '://' in str(hook.get('out_dir', '')):
        return
    hook['backend_args'] = dict(backend=ATOMIC_BACKEND)
