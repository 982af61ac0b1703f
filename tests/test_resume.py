"""mmfame.engine.resume: the checkpoint a bare --resume continues from, by work-dir layout.

Checkpoints here are small torch.save files; a 'cut' one is its first half (a kill while it was
written). The end-to-end runs (tools/train.py --resume into such work dirs) are in test_tools.py.
"""
import os.path as osp

import pytest
import torch

pytest.importorskip('mmengine', reason='mmfame.engine needs mmengine')

from mmfame.engine import resume  # noqa: E402
from mmfame.engine.resume import resume_checkpoint, unreadable_reason  # noqa: E402

# id: ({file: 'whole' | 'cut' | 'junk'}, last_checkpoint text ('{here}'/'{there}' stand for the
# work dir and another folder), checkpoint chosen (None: mmengine's own choice), message words)
LAYOUTS = {
    'named and whole': ({'iter_2.pth': 'whole', 'iter_4.pth': 'whole'}, '{here}/iter_4.pth',
                        None, None),
    'nothing to resume': ({}, None, None, None),
    'named file gone': ({'iter_2.pth': 'whole'}, '{here}/iter_4.pth', 'iter_2.pth',
                        'iter_4.pth: it does not exist'),
    'named file cut short': ({'iter_2.pth': 'whole', 'iter_4.pth': 'cut'}, '{here}/iter_4.pth',
                             'iter_2.pth', 'iter_4.pth: it is cut short'),
    'newest cut short, older named': ({'iter_2.pth': 'whole', 'iter_4.pth': 'cut'},
                                      '{here}/iter_2.pth', None, None),
    'not a checkpoint': ({'iter_2.pth': 'whole', 'iter_4.pth': 'junk'}, '{here}/iter_4.pth',
                         'iter_2.pth', 'iter_4.pth: it is cut short or damaged'),
    'copied work dir': ({'iter_4.pth': 'whole', '../there/iter_4.pth': 'whole'},
                        '{there}/iter_4.pth', 'iter_4.pth', 'outside this work dir'),
    'out_dir elsewhere': ({'../there/iter_4.pth': 'whole'}, '{there}/iter_4.pth', None, None),
    'no last_checkpoint': ({'iter_2.pth': 'whole', 'iter_10.pth': 'whole', 'best_x.pth': 'whole'},
                           None, 'iter_10.pth', 'no last_checkpoint'),
    'epochs': ({'epoch_1.pth': 'whole', 'epoch_2.pth': 'cut'}, '{here}/epoch_2.pth',
               'epoch_1.pth', 'epoch_2.pth: it is cut short'),
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
    for name, kind in files.items():
        _write(str(here / name), kind)
    if named is not None:
        (here / 'last_checkpoint').write_text(named.format(here=here, there=there))
    logged = []
    monkeypatch.setattr(resume, 'print_log', lambda msg, **kw: logged.append(msg))
    got = resume_checkpoint(str(here))
    assert got == (None if chosen is None else osp.abspath(here / chosen))
    said = '\n'.join(logged)
    if words is None:
        assert 'resume:' not in said, said
    else:
        assert words in said and f'{osp.abspath(here / chosen)}' in said, said


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
