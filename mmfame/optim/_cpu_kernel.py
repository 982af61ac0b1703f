"""FAME's single-pass CPU kernel (csrc/fame_cpu.c), compiled on first use and called via ctypes.

The C loop reads and writes each element once, where the foreach chain makes a dozen passes. It is
compiled with the system C compiler (about a second, no torch headers) into a per-user cache keyed
by the source, the flags and the CPU; without a compiler FAME keeps using the foreach chain.
ctypes releases the GIL, so the elements are split across ``torch.get_num_threads()`` threads.
"""
import ctypes
import hashlib
import os
import os.path as osp
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import torch
from torch import Tensor

from ._compat import increment_steps, walkable

SOURCE = osp.join(osp.dirname(__file__), 'csrc', 'fame_cpu.c')
FLAGS = ['-O3', '-march=native', '-fno-math-errno', '-shared', '-fPIC']
_PTRS = ctypes.POINTER(ctypes.c_void_p)
_I64 = ctypes.POINTER(ctypes.c_int64)
_lib = None
_pool: Optional[ThreadPoolExecutor] = None  # workers beyond the calling thread
_pool_size = 0


def _cpu_fingerprint() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return next((line for line in f if line.startswith('flags')), platform.processor())
    except OSError:
        return platform.processor()


def load():
    """The compiled library, or None (with one warning) if it cannot be built here."""
    global _lib
    if _lib is None:
        _lib = _build() or False
    return _lib or None


def _build():
    cc = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
    if cc is None or os.environ.get('MMFAME_NO_CPU_KERNEL') == '1':
        return None
    with open(SOURCE, 'rb') as f:
        key = hashlib.sha256(f.read() + ' '.join([cc, *FLAGS, _cpu_fingerprint()]).encode())
    cache = os.environ.get('MMFAME_CACHE', osp.join(osp.expanduser('~'), '.cache', 'mmfame'))
    path = osp.join(cache, f'fame_cpu_{key.hexdigest()[:16]}.so')
    try:
        if not osp.exists(path):
            os.makedirs(cache, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache)
            os.close(fd)
            subprocess.run([cc, *FLAGS, SOURCE, '-o', tmp, '-lm'], check=True,
                           capture_output=True, text=True)
            os.replace(tmp, path)  # atomic: concurrent processes never load a partial file
        lib = ctypes.CDLL(path)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, 'stderr', '') or e
        warnings.warn(f'mmfame: could not build the CPU kernel ({detail}); FAME uses its '
                      'foreach path on CPU')
        return None
    lib.fame_cpu_f32.restype = None
    lib.fame_cpu_f32.argtypes = ([ctypes.c_int64, _I64, _I64, _I64] + [_PTRS] * 9 +
                                 [ctypes.POINTER(ctypes.c_double)] + [ctypes.c_double] * 9 +
                                 [ctypes.c_int] * 4)
    return lib


def supports(params: List[Tensor], grads: List[Tensor], states: List[List[Tensor]]) -> bool:
    """What the C loop handles: it walks raw memory, so the params, grads and every state tensor
    must be contiguous fp32 (or complex64) CPU tensors of one shape per parameter (a param made
    contiguous after its state was, or state of another layout, takes the foreach path)."""
    return all(t.dtype in (torch.float32, torch.complex64) and t.is_cpu
               for l in (params, grads, *states) for t in l) and walkable(params, grads, *states)


def _array(ctype, values):
    return (ctype * len(values))(*values)


def cpu_kernel_fame(params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs, exp_avg_sq_2s,
                    exp_avg_sq_3s, max_exp_avg_sqs, state_steps, *, grad_scale, found_inf,
                    has_complex, amsgrad, beta1, beta2, beta3, beta4, lr, weight_decay, eps,
                    decoupled_weight_decay, maximize, sq_betas):
    """One FAME step with the C loop; same arguments as the implementations in ``fame.py``."""
    global _pool, _pool_size
    lib = load()
    full = sq_betas is not None
    lists = [params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs,
             exp_avg_sq_2s if full else [], exp_avg_sq_3s if full else [],
             max_exp_avg_sqs if amsgrad else []]
    if has_complex:
        lists = [[torch.view_as_real(t) if t.is_complex() else t for t in l] for l in lists]
    increment_steps(state_steps)
    ptrs = [_array(ctypes.c_void_p, [t.data_ptr() for t in l]) if l else None for l in lists]
    steps = _array(ctypes.c_double, [float(s) for s in state_steps])
    numels = [t.numel() for t in lists[0]]
    workers = max(1, min(torch.get_num_threads(), sum(numels) // (1 << 16)))
    ranges = _split(numels, workers)
    scalars = (lr, beta1, beta2, beta3, beta4, eps, weight_decay, *(sq_betas or (0.0, 0.0)),
               int(decoupled_weight_decay), int(amsgrad), int(maximize), int(full))

    def run(part):
        index, begin, end = (_array(ctypes.c_int64, col) for col in zip(*part))
        lib.fame_cpu_f32(len(part), index, begin, end, *ptrs, steps, *scalars)

    if workers == 1:
        run(ranges[0])
        return
    if _pool is None or _pool_size < workers - 1:
        _pool = ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix='mmfame-cpu')
        _pool_size = workers - 1
    futures = [_pool.submit(run, part) for part in ranges[1:]]
    run(ranges[0])
    for f in futures:
        f.result()


def _split(numels: List[int], workers: int) -> List[list]:
    """Cut the concatenated elements into ``workers`` equal runs of (tensor, begin, end)."""
    share = -(-sum(numels) // workers)
    parts, part, room = [], [], share
    for t, n in enumerate(numels):
        begin = 0
        while begin < n:
            take = min(room, n - begin)
            part.append((t, begin, begin + take))
            begin, room = begin + take, room - take
            if room == 0:
                parts.append(part)
                part, room = [], share
    if part:
        parts.append(part)
    return parts
