"""mmfame.runtime.resume: the checkpoint a bare --resume continues from, by work-dir layout;
mmfame.runtime.fileio: checkpoints written whole or not at all.

Checkpoints here are small torch.save files; a 'cut' one is its first half (a kill while it was
written). The end-to-end runs (tools/train.py --resume into such work dirs) are in test_tools.py.
"""
import os
import os.path as osp

import pytest
import torch

pytest.importorskip('mmengine', reason='mmfame.runtime needs mmengine')

from mmfame.runtime import resume  # noqa: E402
from mmfame.runtime.fileio import (ATOMIC_BACKEND, AtomicLocalBackend,  # noqa: E402
                                  use_atomic_checkpoints)
from mmfame.runtime.resume import (resume_checkpoint, which_checkpoint,  # noqa: E402
                                  unreadable_reason)

# id: ({file: 'whole' | 'cut' | 'junk'}, last_checkpoint text ('{here}'/'{there}' stand for the
# work dir and another folder), checkpoint taken (None: from scratch), message words (None: it is
# the whole file last_checkpoint names, nothing to say)
LAYOUTS = {
    'named and whole': ({'iter_2.pth': 'whole', 'iter_4.pth': 'whole'}, '{here}/iter_4.pth',
                        'iter_4.pth', None),
    'nothing to resume': ({}, None, None, None),
    'named file gone': ({'iter_2.pth': 'whole'}, '{here}/iter_4.pth', 'iter_2.pth',
                        'iter_4.pth: it does not exist'),
    'named file cut short': ({'iter_2.pth': 'whole', 'iter_4.pth': 'cut'}, '{here}/iter_4.pth',
                             'iter_2.pth', 'iter_4.pth: it is cut short'),
    'newest cut short, older named': ({'iter_2.pth': 'whole', 'iter_4.pth': 'cut'},
                                      '{here}/iter_2.pth', 'iter_2.pth', None),
    'not a checkpoint': ({'iter_2.pth': 'whole', 'iter_4.pth': 'junk'}, '{here}/iter_4.pth',
                         'iter_2.pth', 'iter_4.pth: it is cut short or damaged'),
    'copied work dir': ({'iter_4.pth': 'whole', '../there/iter_4.pth': 'whole'},
                        '{there}/iter_4.pth', 'iter_4.pth', 'outside this work dir'),
    'out_dir elsewhere': ({'../there/iter_4.pth': 'whole'}, '{there}/iter_4.pth',
                          '../there/iter_4.pth', None),
    'no last_checkpoint': ({'iter_2.pth': 'whole', 'iter_10.pth': 'whole', 'best_x.pth': 'whole'},
                           None, 'iter_10.pth', 'no last_checkpoint'),
    'epochs': ({'epoch_1.pth': 'whole', 'epoch_2.pth': 'cut'}, '{here}/epoch_2.pth',
               'epoch_1.pth', 'epoch_2.pth: it is cut short'),
    # an epoch-based run stopped mid-epoch once (iter_6.pth), then went on: newest by time
    'epochs and a stop mid-epoch': ({'iter_6.pth': 'whole', 'epoch_2.pth': 'whole',
                                     'epoch_3.pth': 'cut'}, None, 'epoch_2.pth',
                                    'epoch_3.pth: it is cut short'),
}


def _write(path, kind):
    torch.save({'meta': {'iter': 1}, 'state_dict': {'w': torch.zeros(64)}}, path)
    data = open(path, 'rb').read()
    if kind == 'cut':
        data = data[:len(data) // 2]
    elif kind == 'junk':
        data = b'not a checkpoint'
    with open(path, 'wb') as f:
        f.write(data)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_resume_takes_the_newest_whole_checkpoint(layout, tmp_path, monkeypatch):
    files, named, chosen, words = LAYOUTS[layout]
    here, there = tmp_path / 'here', tmp_path / 'there'
    here.mkdir()
    there.mkdir()
    for age, (name, kind) in enumerate(reversed(files.items())):  # written in the given order
        _write(str(here / name), kind)
        os.utime(here / name, (1e9 - age, 1e9 - age))
    if named is not None:
        (here / 'last_checkpoint').write_text(named.format(here=here, there=there))
    logged = []
    monkeypatch.setattr(resume, 'print_log', lambda msg, **kw: logged.append(msg))
    choice = which_checkpoint(str(here))
    assert choice.path == (None if chosen is None else osp.abspath(here / chosen))
    got = resume_checkpoint(str(here))  # None: mmengine's own auto-resume takes the same file
    assert got == (choice.path if words else None)
    said = '\n'.join(logged)
    if words is None:
        assert 'resume:' not in said and choice.why == '', said
    else:
        assert words in said and f'{osp.abspath(here / chosen)}' in said, said
        assert said == f'resume: {choice.why}'
    assert which_checkpoint(str(here)) == choice  # it only reads


def test_no_whole_checkpoint_refuses_to_start_from_scratch(tmp_path):
    """Checkpoints exist but none is whole: training from scratch would throw the run away."""
    _write(str(tmp_path / 'iter_4.pth'), 'cut')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_4.pth'))
    with pytest.raises(RuntimeError) as info:
        resume_checkpoint(str(tmp_path))
    message = str(info.value)
    assert 'iter_4.pth: it is cut short' in message and '--resume PATH' in message
    assert 'move these and last_checkpoint aside' in message


def test_a_whole_checkpoint_is_readable_and_a_cut_one_says_why(tmp_path):
    _write(str(tmp_path / 'a.pth'), 'whole')
    _write(str(tmp_path / 'b.pth'), 'cut')
    assert unreadable_reason(str(tmp_path / 'a.pth')) is None
    assert torch.load(str(tmp_path / 'a.pth'), weights_only=True)['meta']['iter'] == 1
    assert 'cut short' in unreadable_reason(str(tmp_path / 'b.pth'))
    assert unreadable_reason(str(tmp_path / 'none.pth')) == 'it does not exist'


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_part(tmp_path):
    path = tmp_path / 'iter_4.pth'
    AtomicLocalBackend().put(b'old', path)
    with pytest.raises(TypeError):
        AtomicLocalBackend().put('not bytes', path)
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['iter_4.pth']
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(str(path), backend_args=dict(backend=ATOMIC_BACKEND))
    backend.put(b'new', str(path))
    assert path.read_bytes() == b'new' and os.listdir(tmp_path) == ['iter_4.pth']


def test_parts_of_killed_writers_go_with_the_next_save_of_their_name_and_a_resume(tmp_path):
    """A writer killed before its rename leaves a full-size hidden part: the next save of that
    checkpoint removes it, and a bare --resume of the work dir removes every one."""
    for name in ('.iter_4.pth.123.part', '.iter_4.pth.456.part', '.iter_8.pth.789.part'):
        (tmp_path / name).write_bytes(b'x' * 10)
    AtomicLocalBackend().put(b'new', tmp_path / 'iter_4.pth')
    assert sorted(os.listdir(tmp_path)) == ['.iter_8.pth.789.part', 'iter_4.pth']
    _write(str(tmp_path / 'iter_4.pth'), 'whole')
    resume_checkpoint(str(tmp_path))
    assert os.listdir(tmp_path) == ['iter_4.pth']


# id: (default_hooks.checkpoint of a config, whether tools/train.py makes it write atomically)
CHECKPOINT_HOOKS = {
    'mmengine default': (dict(type='CheckpointHook', interval=1), True),
    'no type given': (dict(interval=1), True),
    'own backend': (dict(type='CheckpointHook', backend_args=dict(backend='petrel')), False),
    'file_client_args': (dict(type='CheckpointHook', file_client_args=dict(backend='disk')),
                         False),
    'remote out_dir': (dict(type='CheckpointHook', out_dir='s3://bucket/run'), False),
    'another hook': (dict(type='MyCheckpointHook'), False),
    'none': (None, False),
}


@pytest.mark.parametrize('case', CHECKPOINT_HOOKS)
def test_checkpoints_are_written_atomically_where_mmengine_writes_local_files(case):
    from mmengine.config import Config
    hook, atomic = CHECKPOINT_HOOKS[case]
    cfg = Config(dict(default_hooks=dict(checkpoint=hook)) if hook else {})
    before = cfg.to_dict()
    use_atomic_checkpoints(cfg)
    if atomic:
        assert cfg.default_hooks.checkpoint.backend_args == dict(backend=ATOMIC_BACKEND)
    else:
        assert cfg.to_dict() == before
