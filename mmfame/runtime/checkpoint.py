"""Load mmengine Runner checkpoints with ``torch.load(weights_only=True)`` (torch >= 2.6 default).

Besides tensors and containers, a Runner checkpoint pickles :class:`mmengine.logging.HistoryBuffer`
objects (the message hub's ``log_scalars``) with their numpy arrays and ``statistics_methods``
(pickled as ``builtins.getattr(HistoryBuffer, 'mean')``), and numpy scalars (runtime info such as
``eta`` and ``best_score``). numpy's own ``ndarray``, ``dtype``, ``_reconstruct`` and ``scalar``
would rebuild arrays and scalars of any dtype from raw bytes (object dtypes hold pointers) and let a
file set dtype flags, and ``HistoryBuffer.__setstate__`` updates the class-level statistics
methods. So :func:`checkpoint_safe_globals` binds those pickle names to stand-ins that rebuild only

* arrays and numpy scalars of bool, int8-64, uint8-64 and float16-64 dtypes (any byte order)
  from raw data of exactly the right size; an array loads as a plain ``np.ndarray`` inside a
  ``HistoryBuffer``, elsewhere as a subclass of ``np.ndarray`` that pickles as a plain one;
* ``HistoryBuffer`` states whose statistics methods are HistoryBuffer's own methods of the same
  name (or the ones registered in this process); they load as plain ``HistoryBuffer`` objects and
  leave the registered methods as they are;
* ``getattr`` of such a method, and ``bytes()`` (protocol 2 pickles ``b''``, an empty array's
  data, as a call).

Anything else raises :class:`pickle.UnpicklingError`; all other globals stay refused. numpy 1.x
(``numpy.core.multiarray``) and 2.x (``numpy._core.multiarray``) pickles load under either numpy.
"""
import contextlib
import functools
import math
import pickle
import reprlib
import sys
from typing import Any, List, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.logging.history_buffer import HistoryBuffer

from mmfame.optim._compat import TORCH_VERSION
from mmfame.registry import HOOKS

__all__ = ['WeightsOnlyLoadHook', 'checkpoint_allowlist', 'checkpoint_safe_globals',
           'history_buffer_getattr']

# The dtypes numpy data in a Runner checkpoint has: MessageHub turns logged values into Python
# scalars, which numpy stores as float64, int64 (int32 on Windows with numpy 1.x) or bool, and
# metrics (``best_score``) may be any numpy bool/int/float. None of them holds pointers.
_PLAIN_DTYPES = frozenset('b1 i1 i2 i4 i8 u1 u2 u4 u8 f2 f4 f8'.split())
_BYTE_ORDERS = ('<', '>', '|', '=')
_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')
_HISTORY_BUFFER_STATE = frozenset(('max_length', '_log_history', '_count_history'))
_HISTORY_BUFFER_KEYS = _HISTORY_BUFFER_STATE | {'statistics_methods'}


def _refused(what: str) -> pickle.UnpicklingError:
    return pickle.UnpicklingError(
        f'mmfame refuses {what} in a checkpoint loaded with weights_only=True')


def _same(value: Any, expected: Any) -> bool:
    """``value == expected`` with the same types throughout (never numpy's elementwise ``==``)."""
    if type(value) is not type(expected):
        return False
    if type(expected) is tuple:
        return len(value) == len(expected) and all(map(_same, value, expected))
    return value == expected


class _DtypeSpec:
    """Stands for ``numpy.dtype``: a plain dtype and its byte order, set by ``__setstate__``."""
    __slots__ = ('code', 'dtype')

    def __new__(cls, code: Any, align: Any = False, copy: Any = True) -> '_DtypeSpec':
        if not (type(code) is str and code in _PLAIN_DTYPES and align is False and copy is True):
            raise _refused(f'numpy.dtype{reprlib.repr((code, align, copy))}')
        self = super().__new__(cls)
        self.code, self.dtype = code, np.dtype(code)
        return self

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, itemsize, alignment, flags)
        if not (type(state) is tuple and len(state) == 8 and type(state[1]) is str
                and state[1] in _BYTE_ORDERS
                and _same(state[:1] + state[2:], (3, None, None, None, -1, -1, 0))):
            raise _refused(f'numpy.dtype({self.code!r}) with state {reprlib.repr(state)}')
        self.dtype = np.dtype(self.code).newbyteorder(state[1])


class _CheckedArray(np.ndarray):
    """Stands for ``numpy.ndarray``: made empty by :func:`_reconstruct`, filled once by BUILD."""

    def __new__(cls, *args: Any, **kwargs: Any) -> '_CheckedArray':
        raise _refused('calling numpy.ndarray')

    def __setstate__(self, state: Any) -> None:
        # Once only: refilling frees the data that views (HistoryBuffer's arrays) point to.
        if not self.__dict__.pop('_unbuilt', False):
            raise _refused('rebuilding a numpy array')
        if not (type(state) is tuple and len(state) == 5 and _same(state[0], 1)):
            raise _refused(f'numpy array state {reprlib.repr(state)}')
        _, shape, spec, is_fortran, rawdata = state
        if not (type(shape) is tuple and len(shape) <= 32
                and all(type(d) is int and d >= 0 for d in shape) and type(spec) is _DtypeSpec
                and type(is_fortran) is bool and type(rawdata) is bytes):
            raise _refused(f'numpy array state {reprlib.repr(state)}')
        itemsize = spec.dtype.itemsize
        if (math.prod(d or 1 for d in shape) * itemsize > sys.maxsize
                or len(rawdata) != math.prod(shape) * itemsize):
            raise _refused(f'a numpy array of shape {reprlib.repr(shape)} and dtype {spec.dtype} '
                           f'from {len(rawdata)} bytes')
        super().__setstate__((1, shape, spec.dtype, is_fortran, rawdata))

    def __reduce_ex__(self, protocol: int) -> Any:
        return self.view(np.ndarray).__reduce_ex__(protocol)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _CheckedArray:
    """Stands for ``numpy.core.multiarray._reconstruct``: the empty array BUILD then fills."""
    if not (subtype is _CheckedArray and _same(shape, (0,)) and _same(typecode, b'b')):
        raise _refused(f'numpy _reconstruct{reprlib.repr((subtype, shape, typecode))}')
    array = np.ndarray.__new__(_CheckedArray, (0,), np.int8)
    array._unbuilt = True
    return array


def _scalar(spec: Any, data: Any) -> Any:
    """Stands for ``numpy.core.multiarray.scalar``: a numpy scalar of a plain dtype."""
    if not (type(spec) is _DtypeSpec and type(data) is bytes and len(data) == spec.dtype.itemsize):
        raise _refused(f'numpy scalar{reprlib.repr((spec, data))}')
    return np.frombuffer(data, spec.dtype)[0]


def _bytes(*args: Any) -> bytes:
    """Stands for ``builtins.bytes``, which protocol 2 calls without arguments for ``b''``."""
    if args:
        raise _refused(f'bytes{reprlib.repr(args)}')
    return b''


def _is_statistics_method(name: Any, method: Any) -> bool:
    """Whether ``method`` is HistoryBuffer's statistics method ``name`` (default or registered)."""
    return type(name) is str and callable(method) and (
        method is HistoryBuffer._statistics_methods.get(name)
        or name in _DEFAULT_STATISTICS and method is vars(HistoryBuffer)[name])


def history_buffer_getattr(obj: Any, name: Any) -> Any:
    """Stands for ``builtins.getattr``: resolves only a statistics method of ``HistoryBuffer``."""
    if obj is HistoryBuffer or obj is _CheckedHistoryBuffer:
        method = vars(HistoryBuffer).get(name) if type(name) is str else None
        if _is_statistics_method(name, method):
            return method
    raise _refused(f'getattr{reprlib.repr((obj, name))}')


class _CheckedHistoryBuffer(HistoryBuffer):
    """Stands for ``HistoryBuffer``: checks the state, then becomes a plain ``HistoryBuffer``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A pickled HistoryBuffer is created with NEWOBJ, which does not call __init__.
        raise _refused('calling HistoryBuffer')

    def __setstate__(self, state: Any) -> None:
        if type(state) is not dict:
            raise _refused(f'HistoryBuffer state {reprlib.repr(state)}')
        if not _HISTORY_BUFFER_STATE <= state.keys() <= _HISTORY_BUFFER_KEYS:
            raise _refused(f'HistoryBuffer state keys {reprlib.repr(list(state))}')
        methods = state.get('statistics_methods', {})
        if not (type(methods) is dict
                and all(_is_statistics_method(n, m) for n, m in methods.items())):
            raise _refused(f'HistoryBuffer statistics_methods {reprlib.repr(methods)}')
        arrays = state['_log_history'], state['_count_history']
        if not (type(state['max_length']) is int
                and all(type(a) is _CheckedArray and '_unbuilt' not in a.__dict__
                        for a in arrays)):
            raise _refused(f'HistoryBuffer state {reprlib.repr(state)}')
        # The methods are already HistoryBuffer's: register the defaults, override nothing.
        self._set_default_statistics()
        self.max_length = state['max_length']
        self._log_history, self._count_history = (a.view(np.ndarray) for a in arrays)
        self.__class__ = HistoryBuffer


def checkpoint_safe_globals() -> List[Tuple[Any, str]]:
    """``(stand-in, pickled name)`` pairs for ``torch.serialization.add_safe_globals``.

    The pickled names are numpy's and mmengine's (see the module doc); no entry is numpy's or
    mmengine's own object.
    """
    safe = [(_CheckedArray, 'numpy.ndarray'), (_DtypeSpec, 'numpy.dtype'),
            (_CheckedHistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
            (history_buffer_getattr, 'builtins.getattr'), (_bytes, 'builtins.bytes')]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        safe += [(_reconstruct, f'{module}._reconstruct'), (_scalar, f'{module}.scalar')]
    return safe


@contextlib.contextmanager
def checkpoint_allowlist():
    """:func:`checkpoint_safe_globals` allowlisted for ``torch.load(weights_only=True)`` inside
    the block only (:class:`WeightsOnlyLoadHook` wraps a runner's checkpoint loading in it);
    nothing on torch < 2.6."""
    if TORCH_VERSION < (2, 6):
        yield
        return
    with torch.serialization.safe_globals(checkpoint_safe_globals()):
        yield


_WRAPPED = '_mmfame_allowlist'


def _allowlisted(method):
    @functools.wraps(method)
    def load(*args, **kwargs):
        with checkpoint_allowlist():
            return method(*args, **kwargs)

    setattr(load, _WRAPPED, True)
    return load


@HOOKS.register_module()
class WeightsOnlyLoadHook(Hook):
    """Makes this runner's checkpoint loading (``--resume``, ``load_from``, ``test.py``'s
    checkpoint) work under torch >= 2.6, whose ``torch.load`` refuses what a Runner checkpoint
    holds besides tensors: its ``resume`` and ``load_checkpoint`` run inside
    :func:`checkpoint_allowlist`. No other ``torch.load`` of the process is affected; nothing is
    done on torch < 2.6.

    ``before_run`` comes before the Runner loads or resumes, in ``train()``, ``val()`` and
    ``test()``. ``custom_hooks=[dict(type='mmfame.WeightsOnlyLoadHook')]``. A FlexibleRunner
    loads before any hook runs: its strategy does it (``mmfame.DDPStrategy``/``FSDPStrategy``).
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        if TORCH_VERSION < (2, 6) or getattr(runner.resume, _WRAPPED, False):
            return
        runner.resume = _allowlisted(runner.resume)
        runner.load_checkpoint = _allowlisted(runner.load_checkpoint)
        print_log('WeightsOnlyLoadHook: this runner loads checkpoints with torch.load('
                  "weights_only=True) and mmfame's allowlist of what a Runner checkpoint holds.",
                  logger='current')
