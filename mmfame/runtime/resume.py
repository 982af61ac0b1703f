"""Which checkpoint a bare ``--resume`` continues from.

mmengine resumes from the file that ``<work_dir>/last_checkpoint`` names, by the absolute path it
was written with: a copied work dir resumes from the original's files, a named file that is gone
ends every rerun, and a checkpoint cut short (killed while writing it, a full disk) fails to load
on every rerun although an older one is there. :func:`which_checkpoint` answers which checkpoint
a resume takes and why: the one of that name in this work dir and, where it is missing or cut
short, the newest one that is whole. :func:`resume_checkpoint` is what ``tools/train.py`` does
with it; it refuses to start from scratch where checkpoints exist but none is whole.
"""
import glob
import logging
import os.path as osp
import re
import zipfile
from typing import List, NamedTuple, Optional

from mmengine.logging import print_log

from .fileio import remove_parts

__all__ = ['Choice', 'resume_checkpoint', 'unreadable_reason', 'which_checkpoint']

# the checkpoints mmengine's CheckpointHook writes (best_*.pth are not where training stopped)
_NAME = re.compile(r'^(iter|epoch)_(\d+)\.pth$')


def unreadable_reason(path: str) -> Optional[str]:
    """None for a whole torch checkpoint, else why it cannot be resumed from.

    ``torch.save`` writes a zip archive whose directory comes last: a file cut short has none.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except FileNotFoundError:
        return 'it does not exist'
    except (OSError, zipfile.BadZipFile) as e:
        return f'it is cut short or damaged ({e})'
    if not any(n == 'data.pkl' or n.endswith('/data.pkl') for n in names):
        return 'it is not a torch checkpoint (no data.pkl)'
    return None


def _newest_first(work_dir: str) -> List[str]:
    """``iter_N.pth``/``epoch_N.pth`` of ``work_dir``, newest first: by N where all are of one
    kind, else by time written (an epoch-based run stopped mid-epoch adds an ``iter_N.pth``)."""
    found = [(p, _NAME.match(osp.basename(p))) for p in glob.glob(osp.join(work_dir, '*.pth'))]
    found = [(p, m) for p, m in found if m]
    one_kind = len({m.group(1) for _, m in found}) <= 1
    return [p for p, _ in sorted(found, reverse=True, key=lambda f: (
        int(f[1].group(2)) if one_kind else 0, osp.getmtime(f[0])))]


def _candidates(work_dir: str):
    """(what last_checkpoint names, its copy in work_dir, it as written, every candidate in
    the order a resume tries them)."""
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            named = f.read().strip() or None
    except OSError:
        named = None
    candidates, copy, as_written = [], None, None
    if named and '://' not in named:
        as_written = osp.abspath(named if osp.isabs(named) else osp.join(work_dir, named))
        copy = osp.abspath(osp.join(work_dir, osp.basename(named)))
        candidates += [copy, as_written]
    candidates += _newest_first(work_dir)
    return named, copy, as_written, list(dict.fromkeys(osp.abspath(p) for p in candidates))


class Choice(NamedTuple):
    """The checkpoint a bare ``--resume`` of a work dir takes (``path``; None: from scratch) and
    why, where that is not simply the whole file ``last_checkpoint`` names (``why``; '' else)."""
    path: Optional[str]
    why: str


def which_checkpoint(work_dir: str) -> Choice:
    """The checkpoint a bare ``--resume`` of ``work_dir`` takes, and why: in order, the file
    ``last_checkpoint`` names, taken in ``work_dir`` (a copied work dir resumes from its own
    copy); that path as written (a CheckpointHook ``out_dir`` elsewhere); then ``iter_N.pth`` /
    ``epoch_N.pth`` in ``work_dir``, newest first. The first whole one wins. Where checkpoints
    exist but none is whole, ``path`` is None and ``why`` says so. Reads only."""
    named, copy, as_written, candidates = _candidates(work_dir)
    if named and '://' in named:  # a remote backend's path: mmengine's own loader reads it
        return Choice(named, '')
    skipped = []
    for path in candidates:
        reason = unreadable_reason(path)
        if reason is not None:
            if not (path == copy != as_written and not osp.exists(path)):  # no copy here: fine
                skipped.append(f'{path}: {reason}')
            continue
        if skipped:
            why = (f'skipped {"; ".join(skipped)}. Resuming from {path}, the newest whole '
                   'checkpoint.')
        elif not named:
            why = f'no last_checkpoint in {work_dir}: resuming from its newest checkpoint, {path}.'
        elif path not in (osp.abspath(named), as_written):
            why = (f'last_checkpoint names {named}, outside this work dir: resuming from its '
                   f'copy here, {path}.')
        else:
            why = ''
        return Choice(path, why)
    if skipped:
        return Choice(None, f'no checkpoint of {work_dir} can be resumed from '
                            f'({"; ".join(skipped)})')
    return Choice(None, '')


def resume_checkpoint(work_dir: str) -> Optional[str]:
    """What ``tools/train.py --resume`` does with :func:`which_checkpoint`: removes the temporary
    files of checkpoint writers that were killed, and returns the ``load_from`` to resume with:
    None where mmengine's own auto-resume takes the same checkpoint (the whole file
    ``last_checkpoint`` names, or none at all: it says so itself), else the path, saying why.
    Refuses to start from scratch where checkpoints exist but none is whole."""
    removed = remove_parts(work_dir)
    if removed:
        print_log(f'resume: removed {len(removed)} temporary file(s) of checkpoint writes that '
                  f'were killed: {", ".join(map(osp.basename, removed))}.', logger='current',
                  level=logging.WARNING)
    choice = which_checkpoint(work_dir)
    if choice.path is None and choice.why:
        raise RuntimeError(
            f'--resume: {choice.why}. Resume from a whole one with --resume PATH, or move these '
            'and last_checkpoint aside to train from scratch.')
    if not choice.why:
        return None
    print_log(f'resume: {choice.why}', logger='current', level=logging.WARNING)
    return choice.path
