"""Load mmengine Runner checkpoints under torch >= 2.6 without disabling ``weights_only``.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and mmengine 0.10.x calls
``torch.load(filename, map_location=...)`` for ``resume``/``load_from`` (so ``tools/train.py
--resume`` and ``tools/test.py``). A Runner checkpoint pickles more than tensors:

* ``meta['message_hub']['log_scalars']``: :class:`mmengine.logging.HistoryBuffer` objects, whose
  state holds numpy arrays (``numpy._core.multiarray._reconstruct`` + ``numpy.ndarray`` +
  ``numpy.dtype``, the dtype instance rebuilt by ``numpy.dtypes.Float64DType``/``Int64DType``;
  see ``_PYTHON_SCALAR_TYPES``);
* numpy scalars (``numpy._core.multiarray.scalar``) in the message hub's runtime info and in
  metrics logged as ``np.float64``;
* ``HistoryBuffer.__getstate__`` adds its ``statistics_methods`` (``HistoryBuffer.min``, ``.max``,
  ``.current``, ``.mean``), which pickle as ``builtins.getattr(HistoryBuffer, 'min')``. Allowing
  ``builtins.getattr`` itself would let a file fetch any attribute of any allowlisted object, so
  that name is bound to :func:`history_buffer_getattr` instead, which resolves only a statistics
  method of ``HistoryBuffer`` and refuses everything else (a statistics method registered from
  another module pickles under its own name and needs its own ``add_safe_globals``).

:func:`register_checkpoint_safe_globals` allowlists exactly those with
``torch.serialization.add_safe_globals``; every other global still makes ``torch.load`` fail, unlike
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which turns the protection off for every file.
"""
from typing import Any, List

import torch

__all__ = ['checkpoint_safe_globals', 'register_checkpoint_safe_globals', 'history_buffer_getattr']

# The dtypes of the numpy data a Runner checkpoint holds. MessageHub turns every logged value into
# a Python bool/int/float (``_get_valid_value``) and HistoryBuffer keeps them in ``np.array``s, so
# arrays (and numpy scalars such as IterTimerHook's ``eta``) have the dtypes numpy infers from
# Python scalars: float64, the platform's default int (int64; int32 on Windows with numpy 1.x) and
# bool. Their dtype classes (``numpy.dtypes.Float64DType``, ...) rebuild the pickled dtypes. No
# other dtype (object, string, void, datetime) is allowed.
_PYTHON_SCALAR_TYPES = (float, int, bool)


def _has_tuple_form() -> bool:
    """Whether ``add_safe_globals`` accepts ``(obj, 'qualified.name')`` pairs (torch >= 2.6)."""
    major, minor = (int(v) for v in torch.__version__.split('+')[0].split('.')[:2])
    return (major, minor) >= (2, 6)


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the statistics methods of ``HistoryBuffer`` (see module doc)."""
    import pickle
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_'):
        attr = vars(HistoryBuffer).get(name)
        if callable(attr) and (name in ('min', 'max', 'current', 'mean')
                               or HistoryBuffer._statistics_methods.get(name) is attr):
            return attr
    raise pickle.UnpicklingError(
        f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint loaded with '
        'weights_only=True (mmfame allows only HistoryBuffer statistics methods)')


def checkpoint_safe_globals() -> List[Any]:
    """The globals an mmengine Runner checkpoint pickles besides tensors and containers.

    Entries are objects, or ``(object, 'qualified.name')`` pairs (torch >= 2.6, the versions that
    load with ``weights_only=True`` by default): the name a checkpoint written with the other numpy
    major version uses (numpy 1.x wrote ``numpy.core.multiarray._reconstruct``, numpy 2.x writes
    ``numpy._core.multiarray._reconstruct``), and ``builtins.getattr`` bound to
    :func:`history_buffer_getattr`.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    try:  # numpy >= 2
        from numpy._core import multiarray
        other = 'numpy.core.multiarray'
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
        other = 'numpy._core.multiarray'

    safe: List[Any] = [HistoryBuffer, np.ndarray, np.dtype,
                       multiarray._reconstruct, multiarray.scalar]
    for py_type in _PYTHON_SCALAR_TYPES:
        cls = type(np.dtype(py_type))
        if cls is not np.dtype and cls not in safe:  # numpy < 1.25: no per-dtype classes
            safe.append(cls)
    if _has_tuple_form():
        for fn in ('_reconstruct', 'scalar'):
            safe.append((getattr(multiarray, fn), f'{other}.{fn}'))
        safe.append((history_buffer_getattr, 'builtins.getattr'))
    return safe


def register_checkpoint_safe_globals() -> bool:
    """Allowlist :func:`checkpoint_safe_globals` for ``torch.load(weights_only=True)``.

    Idempotent. Returns False (and does nothing) on torch versions without
    ``torch.serialization.add_safe_globals`` (< 2.4), where ``weights_only`` is not the default.
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return False
    add(checkpoint_safe_globals())
    return True
