"""Checkpoints written whole or not at all.

mmengine writes a checkpoint straight under its final name: a job killed during the write (Slurm's
SIGKILL after ``KillWait``, a node failure, a full disk) leaves a file cut short under the name a
resume looks for. :class:`AtomicLocalBackend` is mmengine's local file backend writing to a
temporary name in the same folder, syncing it to disk and renaming it over the final name, so
that a checkpoint is either the old file, the new one whole, or absent; the temporary files of
writers killed mid-write are removed by the next save of the name and by a resume. ``tools/train.py`` makes
a config's CheckpointHook write through it (:func:`use_atomic_checkpoints`).
"""
import glob
import os
import os.path as osp
import tempfile
from typing import Optional

from mmengine.fileio.backends import LocalBackend, backends, register_backend

from .protocol import write_atomic

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'check_work_dir', 'remove_parts',
           'use_atomic_checkpoints']

ATOMIC_BACKEND = 'mmfame_atomic_local'  # its name in mmengine's file backends


class AtomicLocalBackend(LocalBackend):
    """mmengine's LocalBackend whose ``put`` writes a temporary file and renames it."""

    def put(self, obj: bytes, filepath) -> None:
        folder, name = osp.split(str(filepath))
        remove_parts(folder or '.', name)  # of writers killed before they renamed
        write_atomic(str(filepath), obj)


existing = backends.get(ATOMIC_BACKEND)
if existing is None or existing.__qualname__ == AtomicLocalBackend.__qualname__:
    register_backend(ATOMIC_BACKEND, AtomicLocalBackend, force=True)  # (again, if reimported)


def remove_parts(folder: str, name: Optional[str] = None) -> list:
    """Remove the temporary files that writers of ``name`` (None: any) in ``folder`` left when
    killed, and return their paths (only the run owning the folder writes there)."""
    pattern = '.*.part' if name is None else f'.{glob.escape(name)}.*.part'
    parts = glob.glob(osp.join(glob.escape(folder), pattern))
    for part in parts:
        try:
            os.remove(part)
        except FileNotFoundError:
            pass
    return parts


def check_work_dir(path: str) -> None:
    """Exit with one line naming ``path``, the reason and the fix where the work dir cannot be
    created or written (before anything is built, instead of the Runner's traceback)."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise SystemExit(f'work_dir {path} cannot be written ({e.strerror or e}): choose another '
                         'with --work-dir, or make it writable') from None


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
