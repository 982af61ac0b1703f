"""mmfame.runtime.checkpoint: mmengine Runner checkpoints load with
``torch.load(weights_only=True)``, and crafted checkpoints that abuse the allowlisted names are
refused."""
import collections
import io
import pickle
import pickletools
import re
import struct

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from mmfame.optim._compat import TORCH_VERSION
from mmfame.runtime import checkpoint as ck

TORCH_2_6 = TORCH_VERSION >= (2, 6)
needs_pairs = pytest.mark.skipif(
    not TORCH_2_6, reason='torch < 2.6: weights_only is not the default and add_safe_globals '
    'takes no (object, name) pairs')

RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own, pickled under this numpy's name
SCALAR = np.float64(0).__reduce__()[0]
NUMPY_MODULE = RECONSTRUCT.__module__  # numpy.core.multiarray (1.x) or numpy._core.multiarray
OTHER_NUMPY_MODULE = {'numpy.core.multiarray': 'numpy._core.multiarray',
                      'numpy._core.multiarray': 'numpy.core.multiarray'}[NUMPY_MODULE]


def allow_process_wide() -> bool:
    """The allowlist for every ``torch.load`` of this process (mmfame only ever enters it inside
    mmengine's checkpoint loading): False, doing nothing, on torch < 2.6."""
    if not TORCH_2_6:
        return False
    torch.serialization.add_safe_globals(ck.checkpoint_safe_globals())
    return True


@pytest.fixture(autouse=True)
def no_safe_globals():
    """Start with an empty allowlist (importing mmfame registers one) and restore it after."""
    if not TORCH_2_6:
        yield
        return
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


def save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load(data):
    return torch.load(io.BytesIO(data), weights_only=True)


def legacy_file(data_pickle):
    """The bytes of a (non-zip) torch.save file whose object is the raw pickle ``data_pickle``."""
    buf = io.BytesIO()
    torch.save(None, buf, _use_new_zipfile_serialization=False)
    buf.seek(0)
    for _ in range(3):  # magic number, protocol version, system info
        pickle.load(buf)
    return buf.getvalue()[:buf.tell()] + data_pickle + pickle.dumps([], protocol=2)


def assert_same(loaded, expected):
    """Equal values of exactly the same types, recursively (arrays: ``np.ndarray`` subclasses)."""
    if isinstance(expected, np.ndarray):
        assert isinstance(loaded, np.ndarray)
        assert loaded.dtype == expected.dtype and loaded.shape == expected.shape
        np.testing.assert_array_equal(loaded, expected)
        return
    assert type(loaded) is type(expected), (type(loaded), type(expected))
    if isinstance(expected, dict):
        assert list(loaded) == list(expected)
        for key in expected:
            assert_same(loaded[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(loaded) == len(expected)
        for a, b in zip(loaded, expected):
            assert_same(a, b)
    elif isinstance(expected, torch.Tensor):
        assert loaded.dtype == expected.dtype and torch.equal(loaded, expected)
    elif isinstance(expected, HistoryBuffer):
        assert loaded.max_length == expected.max_length
        assert_same(loaded.data, expected.data)
    else:
        assert loaded == expected


def runner_style_checkpoint():
    hub = MessageHub('checkpoint-allowlist')
    for i in range(4):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
        hub.update_scalar('train/lr', 0.01, count=2)
        hub.update_scalar('train/num_boxes', 7 * i)
    hub.update_info('eta', np.float64(12.5))
    hub.update_info('iter', np.int64(4))
    hub.update_info('best_score', np.float32(0.75))
    hub.update_info('converged', np.bool_(False))
    return {
        'meta': {'epoch': 0, 'iter': 4, 'seed': 0, 'dataset_meta': {'classes': ('a', 'b')}},
        'message_hub': hub.state_dict(),
        'state_dict': collections.OrderedDict(weight=torch.randn(3, 2), bias=torch.zeros(3)),
        'optimizer': {'state': {0: {'exp_avg': torch.ones(3, 2), 'step': torch.tensor(4.)}},
                      'param_groups': [{'lr': 0.01, 'betas': (0.9, 0.999), 'params': [0, 1]}]},
    }


# ------------------------------------------------------------------------------------- loading
@needs_pairs
def test_runner_style_checkpoint_needs_the_allowlist():
    data = save(runner_style_checkpoint())
    with pytest.raises(pickle.UnpicklingError, match='numpy|HistoryBuffer'):
        load(data)


@needs_pairs
def test_runner_style_checkpoint_loads():
    expected = runner_style_checkpoint()
    data = save(expected)
    assert allow_process_wide()
    first, second = load(data), load(data)
    resaved = save(first)
    assert b'mmfame' not in resaved  # pickles as numpy and mmengine objects again
    for loaded in (first, second, load(resaved)):
        assert_same(loaded, expected)
        scalars = loaded['message_hub']['log_scalars']
        for key, buf in scalars.items():
            assert all(type(a) is np.ndarray for a in buf.data), key
        assert scalars['train/loss'].mean() == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]))
        assert scalars['train/lr'].mean() == pytest.approx(0.005)  # counts were restored
        assert scalars['train/num_boxes'].statistics('max') == 21
        assert scalars['train/loss'].current() == pytest.approx(0.25)
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


@needs_pairs
@pytest.mark.parametrize('obj', [
    HistoryBuffer(), HistoryBuffer([1.5, 2.5], [1, 1], max_length=10),
    np.float64(1.5), np.int64(-3), np.int32(7), np.uint8(200), np.float32(0.25),
    np.float16(2.0), np.bool_(True),
], ids=lambda o: type(o).__name__)
def test_plain_objects_load_as_themselves(obj):
    assert allow_process_wide()
    assert_same(load(save(obj)), obj)


@needs_pairs
@pytest.mark.parametrize('array', [
    np.arange(6.).reshape(2, 3), np.arange(6, dtype=np.int32).reshape(2, 3).T,  # Fortran order
    np.array([1.0, -2.0], dtype='>f8'), np.array(5, dtype=np.int64), np.array([], dtype=np.int8),
    np.array([True, False]), np.zeros((2, 0, 3), dtype=np.uint16),
], ids=lambda a: f'{a.dtype.str}{a.shape}')
def test_arrays_load_and_resave_as_ndarray(array):
    assert allow_process_wide()
    expected = pickle.loads(pickle.dumps(array, protocol=2))  # numpy makes the byte order native
    loaded = load(save(array))
    assert_same(loaded, expected)
    resaved = save(loaded)
    assert b'mmfame' not in resaved
    assert type(torch.load(io.BytesIO(resaved), weights_only=False)) is np.ndarray


@needs_pairs
@pytest.mark.parametrize('obj', [np.arange(3.), np.int64(9), HistoryBuffer([1.0], [1])],
                         ids=['array', 'scalar', 'HistoryBuffer'])
def test_other_numpy_major_version_names_load(obj):
    """numpy 1.x pickles name numpy.core.multiarray, numpy 2.x numpy._core.multiarray."""
    raw = pickle.dumps(obj, protocol=2)
    assert NUMPY_MODULE.encode() in raw
    other = raw.replace(f'c{NUMPY_MODULE}\n'.encode(), f'c{OTHER_NUMPY_MODULE}\n'.encode())
    assert allow_process_wide()
    assert_same(load(legacy_file(other)), obj)


def _runner(tmp_path, name, max_iters, **kwargs):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader, TensorDataset

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)

        def forward(self, x, y, mode='loss'):
            return {'loss': ((self.fc(x).squeeze(1) - y)**2).mean()}

    def collate(batch):
        x, y = zip(*batch)
        return dict(x=torch.stack(x), y=torch.stack(y))

    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8)), batch_size=4,
                      collate_fn=collate)
    return Runner(model=Toy(), work_dir=str(tmp_path), experiment_name=f'{tmp_path.name}-{name}',
                  train_dataloader=data, optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
                  train_cfg=dict(by_epoch=False, max_iters=max_iters), log_level='WARNING',
                  default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2,
                                                     by_epoch=False)), **kwargs)


@needs_pairs
def test_mmengine_runner_checkpoint_resumes(tmp_path):
    _runner(tmp_path, 'train', 2).train()
    path = str(tmp_path / 'iter_2.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert allow_process_wide()
    loaded = torch.load(path, weights_only=True)
    assert type(loaded['message_hub']['log_scalars']['train/loss']) is HistoryBuffer
    assert type(loaded['message_hub']['runtime_info']['eta']) is np.float64

    runner = _runner(tmp_path, 'resume', 3, load_from=path, resume=True)
    runner.train()  # mmengine loads the checkpoint with torch.load's default weights_only
    assert runner.iter == 3
    loss = runner.message_hub.get_scalar('train/loss')
    assert type(loss) is HistoryBuffer and len(loss.data[0]) == 3  # 2 resumed + 1 new


# ---------------------------------------------------------------------------------- the list
@needs_pairs
def test_allowlist_binds_names_to_stand_ins_only():
    safe = ck.checkpoint_safe_globals()
    names = {name for _, name in safe}
    assert {f'{m}.{f}' for m in (NUMPY_MODULE, OTHER_NUMPY_MODULE)
            for f in ('_reconstruct', 'scalar')} <= names
    assert {'numpy.ndarray', 'numpy.dtype', 'builtins.getattr',
            'mmengine.logging.history_buffer.HistoryBuffer'} <= names
    for obj, name in safe:
        assert obj.__module__ == ck.__name__, name
    with ck.checkpoint_allowlist():
        assert len(torch.serialization.get_safe_globals()) == len(safe)
    assert torch.serialization.get_safe_globals() == []  # inside the block only


# ------------------------------------------------------------------------------------ crafted
class Reduce:
    """Pickles as ``func(*args)``, followed by BUILD with ``state`` when given."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _array(state):
    return Reduce(RECONSTRUCT, (np.ndarray, (0,), b'b'), state)


def _dtype(code, state):
    return Reduce(np.dtype, (code, False, True), state)


F8 = np.dtype('f8')
PLAIN_DTYPE_STATE = (3, '<', None, None, None, -1, -1, 0)
CRAFTED = {
    'object array from bytes': (_array((1, (2, ), np.dtype(object), False, b'A' * 16)),
                                "numpy.dtype('O8'"),
    'float dtype with the has-object flag': (
        _array((1, (2, ), _dtype('f8', PLAIN_DTYPE_STATE[:-1] + (63, )), False, b'A' * 16)),
        "numpy.dtype('f8') with state"),
    'dtype with names and fields': (_dtype('f8', (3, '|', None, ('a', ), {'a': (F8, 0)}, 8, 1, 16)),
                                    "numpy.dtype('f8') with state"),
    'dtype with a subarray': (_dtype('f8', (3, '<', (F8, (2, )), None, None, 16, 8, 0)),
                              "numpy.dtype('f8') with state"),
    'dtype with odd itemsize': (_dtype('f8', PLAIN_DTYPE_STATE[:5] + (4, -1, 0)), 'with state'),
    'dtype aligned': (Reduce(np.dtype, ('f8', True, True)), "numpy.dtype('f8', True, True)"),
    'object array': (np.array([None, 1], dtype=object), "numpy.dtype('O8'"),
    'string array': (np.array(['abc']), "numpy.dtype('U3'"),
    'bytes array': (np.array([b'abc']), "numpy.dtype('S3'"),
    'void array': (np.zeros(1, 'V8'), "numpy.dtype('V8'"),
    'structured array': (np.zeros(1, [('a', 'f8')]), "numpy.dtype('V8'"),
    'datetime array': (np.zeros(1, 'M8[s]'), "numpy.dtype('M8'"),
    'complex array': (np.zeros(1, 'c16'), "numpy.dtype('c16'"),
    'ndarray called': (Reduce(np.ndarray, ((2, ), F8, bytes(16))), 'calling numpy.ndarray'),
    'reconstruct with a shape': (Reduce(RECONSTRUCT, (np.ndarray, (2, ), b'b')), '_reconstruct'),
    'short rawdata': (_array((1, (4, ), F8, False, bytes(8))), 'from 8 bytes'),
    'long rawdata': (_array((1, (1, ), F8, False, bytes(9))), 'from 9 bytes'),
    'rawdata a list': (_array((1, (2, ), F8, False, [1.0, 2.0])), 'numpy array state'),
    'negative shape': (_array((1, (-1, ), F8, False, b'')), 'numpy array state'),
    'huge empty shape': (_array((1, (0, 2**62, 2**62), F8, False, b'')), 'of shape'),
    'array state version 2': (_array((2, (1, ), F8, False, bytes(8))), 'numpy array state'),
    'object scalar': (Reduce(SCALAR, (np.dtype(object), b'A' * 8)), "numpy.dtype('O8'"),
    'short scalar': (Reduce(SCALAR, (F8, bytes(4))), 'numpy scalar'),
    'HistoryBuffer called': (Reduce(HistoryBuffer, ([{'a': 1}], [1])), 'calling HistoryBuffer'),
    'getattr __init__': (Reduce(getattr, (HistoryBuffer, '__init__')), 'getattr'),
    'getattr register_statistics': (Reduce(getattr, (HistoryBuffer, 'register_statistics')),
                                    'getattr'),
    'getattr of OrderedDict': (Reduce(getattr, (collections.OrderedDict, 'fromkeys')), 'getattr'),
    'bytes(n)': (Reduce(bytes, (1 << 40, )), 'bytes(1099511627776,)'),
}


@needs_pairs
@pytest.mark.parametrize('obj, message', CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_checkpoint_is_refused(obj, message):
    data = save({'state_dict': {'w': torch.ones(2)}, 'meta': [obj]})
    assert allow_process_wide()
    with pytest.raises(pickle.UnpicklingError, match=re.escape(message)):
        load(data)


GOOD_STATE = dict(max_length=10, _log_history=np.array([1.0, 3.0]),
                  _count_history=np.array([1, 1]))
CRAFTED_STATES = {
    'mean rebound to max': (dict(GOOD_STATE, statistics_methods={'mean': HistoryBuffer.max}),
                            'statistics_methods'),
    'unregistered name': (dict(GOOD_STATE, statistics_methods={'median': HistoryBuffer.mean}),
                          'statistics_methods'),
    'class dict shadowed': (dict(GOOD_STATE, _statistics_methods={}), 'state keys'),
    'unknown key': (dict(GOOD_STATE, update=None), 'state keys'),
    'missing key': ({'max_length': 10}, 'state keys'),
    'history a list': (dict(GOOD_STATE, _log_history=[1.0, 3.0]), 'HistoryBuffer state'),
    'max_length a string': (dict(GOOD_STATE, max_length='10'), 'HistoryBuffer state'),
    'not a dict': ((GOOD_STATE, None), 'HistoryBuffer state'),
}


@needs_pairs
@pytest.mark.parametrize('state, message', CRAFTED_STATES.values(), ids=CRAFTED_STATES.keys())
def test_crafted_history_buffer_is_refused(monkeypatch, state, message):
    before = dict(HistoryBuffer([1.0], [1])._statistics_methods)
    monkeypatch.setattr(HistoryBuffer, '__getstate__', lambda self: state)
    data = save({'log_scalars': {'train/loss': HistoryBuffer()}})
    monkeypatch.undo()
    assert allow_process_wide()
    with pytest.raises(pickle.UnpicklingError, match=re.escape(message)):
        load(data)
    assert HistoryBuffer._statistics_methods == before
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean


def _memo_index_before(raw, opname):
    """The memo index the last BINPUT before the first ``opname`` opcode of ``raw`` stores to."""
    index = None
    for op, arg, _ in pickletools.genops(raw):
        if op.name == opname:
            return index
        if op.name == 'BINPUT':
            index = arg
    raise AssertionError(opname)


@needs_pairs
def test_array_is_filled_only_once():
    """A second BUILD would free the data that views of the array point to."""
    raw = pickle.dumps(np.arange(2.), protocol=2)
    state = _memo_index_before(raw, 'STOP')  # the state tuple, memoized before its BUILD
    twice = raw[:-1] + pickle.BINGET + bytes([state]) + pickle.BUILD + pickle.STOP
    assert allow_process_wide()
    assert_same(load(legacy_file(raw)), np.arange(2.))
    with pytest.raises(pickle.UnpicklingError, match='rebuilding a numpy array'):
        load(legacy_file(twice))


@needs_pairs
def test_history_buffer_refuses_an_unfilled_array():
    raw = pickle.dumps(np.arange(2.), protocol=2)
    mark = next(pos for op, _, pos in pickletools.genops(raw) if op.name == 'MARK')
    array = _memo_index_before(raw, 'MARK')  # the array, before BUILD fills it

    def text(s):
        return pickle.BINUNICODE + struct.pack('<I', len(s)) + s.encode()

    crafted = (raw[:2] + pickle.GLOBAL + b'mmengine.logging.history_buffer\nHistoryBuffer\n'
               + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.EMPTY_DICT + pickle.MARK
               + text('max_length') + pickle.BININT1 + bytes([10])
               + text('_log_history') + raw[2:mark]
               + text('_count_history') + pickle.BINGET + bytes([array])
               + pickle.SETITEMS + pickle.BUILD + pickle.STOP)
    assert allow_process_wide()
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer state'):
        load(legacy_file(crafted))
