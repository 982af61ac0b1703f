"""Fused FAME: one Triton kernel launch updates many tensors in a single pass over memory.

Each program updates one chunk (``Launch.block * Launch.iters`` elements) of one tensor. Tensors
are reached through tables of raw addresses (like CUDA's multi_tensor_apply), so a step costs one
launch per (device, dtype) group whatever the number of tensors: p, g, m1, m2, m3 and v are read
once and p, m1, m2, m3 and v written once (44 B/param in fp32). Bias corrections are computed per
tensor in the kernel from the on-device ``step``, and GradScaler's ``grad_scale``/``found_inf``
are read on the device, so a step never syncs with the host.

Under ``TRITON_INTERPRET=1`` (set before this module is imported) the same kernel runs on CPU
tensors in Triton's interpreter: slow, but it lets CI check the kernel without a GPU.
"""
import math
import operator
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ._compat import version_tuple, view_as_real, walkable
from ._core import FUSED_DTYPES

# The kernel is written for Triton 3 (torch >= 2.4 ships it); older Triton, e.g. the 2.1 that
# torch 2.1 ships, leaves FAME on its foreach path on CUDA.
MIN_TRITON = (3, 0)
try:
    import triton
    import triton.language as tl
    _NO_TRITON = (None if version_tuple(triton.__version__) >= MIN_TRITON else
                  f'Triton >= 3.0, found {triton.__version__}')
except ImportError:  # pragma: no cover - exercised where triton is absent
    _NO_TRITON = 'Triton >= 3.0: `pip install triton` (it ships with CUDA builds of PyTorch)'
if _NO_TRITON is not None:
    triton = None

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
SUPPORTED_DEVICES = ['cuda', 'cpu'] if INTERPRET else ['cuda']
_DTYPES = (*FUSED_DTYPES, torch.complex64, torch.complex128)  # complex as its real view


class Launch(NamedTuple):
    """The kernel's launch configuration: each program updates ``iters`` blocks of ``block``
    elements of one tensor with ``num_warps`` warps (swept in docs/benchmarks.md)."""
    block: int = 1024
    iters: int = 4
    num_warps: int = 4


LAUNCH = Launch()
# The kernel's settings, in the order of its fp64 ``hyper`` table (Triton passes Python floats as
# fp32): the kernel reads each by its index below, fused_fame writes them in this order.
HYPER = ('lr', 'beta1', 'beta2', 'beta3', 'beta4', 'eps', 'weight_decay', 'ln_beta1', 'ln_beta2',
         'sq_beta2', 'sq_beta3')


def require_triton() -> None:
    if triton is None:
        raise RuntimeError(f'FAME(fused=True) needs {_NO_TRITON}; or use the default '
                           '(foreach) path')


if triton is not None:
    _TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16,
                  torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}
    _LR, _BETA1, _BETA2, _BETA3, _BETA4, _EPS, _WEIGHT_DECAY, _LN_BETA1, _LN_BETA2, _SQ_BETA2, \
        _SQ_BETA3 = (tl.constexpr(HYPER.index(name)) for name in (
            'lr', 'beta1', 'beta2', 'beta3', 'beta4', 'eps', 'weight_decay', 'ln_beta1',
            'ln_beta2', 'sq_beta2', 'sq_beta3'))

    @triton.jit
    def _fame_chunk(p_ptr, g_ptr, m1_ptr, m2_ptr, m3_ptr, v_ptr, v2_ptr, v3_ptr, vmax_ptr, offs,
                    n, inv_scale, lr, beta1, beta2, beta3, beta4, eps, weight_decay, sq_beta2,
                    sq_beta3, step_size, bc2_sqrt, CT: tl.constexpr, MASKED: tl.constexpr,
                    FULL: tl.constexpr, AMSGRAD: tl.constexpr,
                    MAXIMIZE: tl.constexpr, WEIGHT_DECAY: tl.constexpr,
                    DECOUPLED: tl.constexpr, HAS_GRAD_SCALE: tl.constexpr,
                    MANUAL_BF16_ROUNDING: tl.constexpr):
        mask = offs < n if MASKED else None
        g = tl.load(g_ptr + offs, mask=mask).to(CT)
        p = tl.load(p_ptr + offs, mask=mask).to(CT)
        m1 = tl.load(m1_ptr + offs, mask=mask)
        m2 = tl.load(m2_ptr + offs, mask=mask)
        m3 = tl.load(m3_ptr + offs, mask=mask)
        v = tl.load(v_ptr + offs, mask=mask)
        if HAS_GRAD_SCALE:
            g = g * inv_scale
        if MAXIMIZE:
            g = -g
        if WEIGHT_DECAY:
            if DECOUPLED:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m1 = beta1 * m1 + (1.0 - beta1) * g
        m2 = beta3 * m2 + (1.0 - beta3) * m1
        m3 = beta4 * m3 + (1.0 - beta4) * m2
        v = beta2 * v + (1.0 - beta2) * g * g
        vhat = v
        if FULL:  # full FAME: TEMA of v, clamped (its weights go negative)
            v2 = sq_beta2 * tl.load(v2_ptr + offs, mask=mask) + (1.0 - sq_beta2) * v
            v3 = sq_beta3 * tl.load(v3_ptr + offs, mask=mask) + (1.0 - sq_beta3) * v2
            tl.store(v2_ptr + offs, v2, mask=mask)
            tl.store(v3_ptr + offs, v3, mask=mask)
            vhat = tl.maximum(3.0 * v - 3.0 * v2 + v3, 0.0, propagate_nan=tl.PropagateNan.ALL)
            vhat = tl.where(v == float('inf'), v, vhat)  # overflowed v stays inf, not NaN
        if AMSGRAD:
            vmax = tl.maximum(tl.load(vmax_ptr + offs, mask=mask), vhat,
                              propagate_nan=tl.PropagateNan.ALL)
            tl.store(vmax_ptr + offs, vmax, mask=mask)
            vhat = vmax
        tema = 3.0 * m1 - 3.0 * m2 + m3
        if CT == tl.float32:  # IEEE-rounded sqrt and division, not the approximate defaults
            update = tl.div_rn(tema, tl.div_rn(tl.sqrt_rn(vhat), bc2_sqrt) + eps)
        else:
            update = tema / (tl.sqrt(vhat) / bc2_sqrt + eps)
        p = p - step_size * update
        tl.store(m1_ptr + offs, m1, mask=mask)
        tl.store(m2_ptr + offs, m2, mask=mask)
        tl.store(m3_ptr + offs, m3, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)
        if MANUAL_BF16_ROUNDING and p_ptr.dtype.element_ty == tl.bfloat16:
            # Triton's interpreter truncates fp32 -> bf16; GPUs round to nearest even. Round by
            # hand there so the interpreter checks what the GPU computes.
            bits = p.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            tl.store(p_ptr + offs, bits.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
        else:
            tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fame_kernel(chunk_tensor, chunk_start, numels, p_ptrs, g_ptrs, m1_ptrs, m2_ptrs,
                     m3_ptrs, v_ptrs, v2_ptrs, v3_ptrs, vmax_ptrs, step_ptrs, grad_scale_ptr,
                     found_inf_ptr, hyper, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr,
                     CT: tl.constexpr, FULL: tl.constexpr, AMSGRAD: tl.constexpr,
                     MAXIMIZE: tl.constexpr,
                     WEIGHT_DECAY: tl.constexpr, DECOUPLED: tl.constexpr,
                     HAS_GRAD_SCALE: tl.constexpr, HAS_FOUND_INF: tl.constexpr,
                     ALIGNED: tl.constexpr, MANUAL_BF16_ROUNDING: tl.constexpr,
                     BLOCK: tl.constexpr, ITERS: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(chunk_tensor + pid)
        start = tl.load(chunk_start + pid)
        n = tl.load(numels + t)
        p_ptr = tl.load(p_ptrs + t).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(g_ptrs + t).to(tl.pointer_type(G_DTYPE))
        m1_ptr = tl.load(m1_ptrs + t).to(tl.pointer_type(CT))
        m2_ptr = tl.load(m2_ptrs + t).to(tl.pointer_type(CT))
        m3_ptr = tl.load(m3_ptrs + t).to(tl.pointer_type(CT))
        v_ptr = tl.load(v_ptrs + t).to(tl.pointer_type(CT))
        vmax_ptr = v_ptr
        v2_ptr = v_ptr
        v3_ptr = v_ptr
        if FULL:
            v2_ptr = tl.load(v2_ptrs + t).to(tl.pointer_type(CT))
            v3_ptr = tl.load(v3_ptrs + t).to(tl.pointer_type(CT))
        if AMSGRAD:
            vmax_ptr = tl.load(vmax_ptrs + t).to(tl.pointer_type(CT))
        if ALIGNED:  # every base address is 16-byte aligned: allow vector loads
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m1_ptr = tl.multiple_of(m1_ptr, 16)
            m2_ptr = tl.multiple_of(m2_ptr, 16)
            m3_ptr = tl.multiple_of(m3_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            vmax_ptr = tl.multiple_of(vmax_ptr, 16)
            v2_ptr = tl.multiple_of(v2_ptr, 16)
            v3_ptr = tl.multiple_of(v3_ptr, 16)
        ok = True
        if HAS_FOUND_INF:
            ok = tl.load(found_inf_ptr) == 0
        inv_scale = 1.0
        if HAS_GRAD_SCALE:
            inv_scale = 1.0 / tl.load(grad_scale_ptr).to(tl.float32)
        # Hyper-parameters arrive in fp64 (HYPER's order).
        lr = tl.load(hyper + _LR)
        beta1 = tl.load(hyper + _BETA1).to(CT)
        beta2 = tl.load(hyper + _BETA2).to(CT)
        beta3 = tl.load(hyper + _BETA3).to(CT)
        beta4 = tl.load(hyper + _BETA4).to(CT)
        eps = tl.load(hyper + _EPS).to(CT)
        weight_decay = tl.load(hyper + _WEIGHT_DECAY).to(CT)
        sq_beta2 = tl.load(hyper + _SQ_BETA2).to(CT)
        sq_beta3 = tl.load(hyper + _SQ_BETA3).to(CT)
        # Bias corrections in fp64 from this tensor's step: 1 - beta**t = 1 - exp(t * ln(beta)).
        step = tl.load(tl.load(step_ptrs + t).to(tl.pointer_type(tl.float32))).to(tl.float64)
        bc1 = 1.0 - tl.exp(step * tl.load(hyper + _LN_BETA1))
        bc2 = 1.0 - tl.exp(step * tl.load(hyper + _LN_BETA2))
        step_size = (lr / bc1).to(CT)
        bc2_sqrt = tl.sqrt(bc2).to(CT)
        lr = lr.to(CT)
        if ok:
            if start + BLOCK * ITERS <= n:
                for i in tl.static_range(ITERS):
                    offs = start + i * BLOCK + tl.arange(0, BLOCK)
                    _fame_chunk(p_ptr, g_ptr, m1_ptr, m2_ptr, m3_ptr, v_ptr, v2_ptr, v3_ptr,
                                vmax_ptr, offs, n, inv_scale, lr, beta1, beta2, beta3, beta4, eps,
                                weight_decay, sq_beta2, sq_beta3, step_size, bc2_sqrt, CT, False,
                                FULL, AMSGRAD, MAXIMIZE,
                                WEIGHT_DECAY, DECOUPLED, HAS_GRAD_SCALE, MANUAL_BF16_ROUNDING)
            else:
                for i in tl.static_range(ITERS):
                    offs = start + i * BLOCK + tl.arange(0, BLOCK)
                    _fame_chunk(p_ptr, g_ptr, m1_ptr, m2_ptr, m3_ptr, v_ptr, v2_ptr, v3_ptr,
                                vmax_ptr, offs, n, inv_scale, lr, beta1, beta2, beta3, beta4, eps,
                                weight_decay, sq_beta2, sq_beta3, step_size, bc2_sqrt, CT, True,
                                FULL, AMSGRAD, MAXIMIZE,
                                WEIGHT_DECAY, DECOUPLED, HAS_GRAD_SCALE, MANUAL_BF16_ROUNDING)


class _DeviceTables:
    """Address and chunk tables, on the device, for the tensors of one (device, dtype)."""

    def __init__(self, device, dtype, lists, steps, launch: Launch):
        p_ = lists[0]
        if any(s.device != device for s in steps):
            raise RuntimeError("FAME(fused=True): state 'step' must be on the parameters' device; "
                               'load the state dict into a fused optimizer instead')
        numels = torch.tensor([t.numel() for t in p_], dtype=torch.int64)
        chunk = launch.block * launch.iters
        chunks = (numels + chunk - 1) // chunk
        chunk_tensor = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32),
                                               chunks)
        first = torch.cumsum(chunks, 0) - chunks
        chunk_start = (torch.arange(len(chunk_tensor), dtype=torch.int64)
                       - first[chunk_tensor.long()]) * chunk
        ptrs = [torch.tensor([t.data_ptr() for t in l], dtype=torch.int64) if l else None
                for l in (*lists, steps)]
        host = [chunk_tensor, chunk_start, numels, *ptrs]
        self.device, self.steps, self.grid = device, steps, (len(chunk_tensor),)
        self.tensors = [None if h is None else _to_device(h, None, device) for h in host]
        self.aligned = all(int(x) % 16 == 0 for ptr in ptrs[:-1] if ptr is not None for x in ptr)
        self.dtypes = tuple(_TL_DTYPES[l[0].dtype] for l in lists[:3])  # p, g, state


class _Plan:
    """The batches for one step's tensor lists, reused while the same tensors come back.

    It keeps the state tensors it was built from (so identity checks stay valid) and compares
    param/grad addresses every step: new grads, moved params or new state rebuild it.
    """

    def __init__(self, lists, launch: Launch):
        self.launch = launch
        self.ptrs = _addresses(lists[:2])
        self.states = lists[2:]  # unused state lists (no amsgrad, default FAME) are empty
        if any(torch.is_complex(p) for p in lists[0]):
            lists = [list(l) for l in lists]
            view_as_real(*(l for l in lists[:-1] if l))
        grouped = Optimizer._group_tensors_by_device_and_dtype(lists)
        self.tables = [_DeviceTables(device, dtype, tensors[:-1], tensors[-1], launch)
                       for (device, dtype), (tensors, _) in grouped.items()]

    def matches(self, lists, launch: Launch) -> bool:
        return (launch == self.launch and all(map(_same_objects, self.states, lists[2:]))
                and self.ptrs == _addresses(lists[:2]))


def _addresses(lists):
    return tuple(tuple(map(Tensor.data_ptr, l)) for l in lists)


def _same_objects(a, b) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _to_device(values, dtype, device) -> Tensor:
    """Host values to ``device`` without a host sync (through pinned memory on CUDA)."""
    host = torch.as_tensor(values, dtype=dtype)
    if device.type == 'cuda':
        return host.pin_memory().to(device, non_blocking=True)
    return host


def unsupported_device(params) -> Optional[str]:
    """Why the kernel cannot run on these params' devices (None if it can), in torch's wording:
    Triton runs it on CUDA tensors (on CPU ones only under TRITON_INTERPRET=1)."""
    if triton is None:
        return f'FAME(fused=True) needs {_NO_TRITON}'
    devices = {p.device.type for p in params}
    if devices <= set(SUPPORTED_DEVICES) and all(p.dtype in _DTYPES for p in params):
        return None
    return (f'`fused=True` requires all the params to be floating point Tensors of supported '
            f'devices: {SUPPORTED_DEVICES}. FAME\'s fused kernel is Triton for CUDA tensors '
            f'(found {sorted(devices)}): use the default path there, or set TRITON_INTERPRET=1 '
            'before importing mmfame to test the kernel on CPU tensors.')


def unsupported_reason(params, grads, states) -> Optional[str]:
    """Why the kernel cannot take these tensors (None if it can), found before anything is
    modified: the params' devices and dtypes, one gradient dtype per param dtype, and a layout
    it can walk as raw memory."""
    reason = unsupported_device(params)
    if reason is not None:
        return reason
    grad_dtypes = {}  # the kernel takes one gradient dtype per parameter dtype
    for p, g in zip(params, grads):
        if g.dtype not in _DTYPES or g.device != p.device:
            return (f'FAME(fused=True) needs floating-point gradients on their parameters\' '
                    f'devices, got {g.dtype} on {g.device} for {p.dtype} on {p.device}')
        grad_dtypes.setdefault(p.dtype, set()).add(g.dtype)
    mixed = {str(p): sorted(map(str, g)) for p, g in grad_dtypes.items() if len(g) > 1}
    if mixed:
        return f'FAME(fused=True) needs one gradient dtype per parameter dtype, got {mixed}'
    if not walkable(params, grads, *states):
        return ('FAME(fused=True) needs contiguous parameters, gradients and state of the same '
                'shape; use foreach=True for strided tensors')
    return None


def fused_fame(params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs, exp_avg_sq_2s,
               exp_avg_sq_3s, max_exp_avg_sqs, state_steps, *, grad_scale, found_inf,
               has_complex, amsgrad, beta1, beta2, beta3, beta4, lr, weight_decay, eps,
               decoupled_weight_decay, maximize, sq_betas, plans=None, launch=LAUNCH):
    """Fused FAME step; same arguments as the other implementations in ``fame.py``.

    ``plans`` (a dict the optimizer keeps for this batch of tensors) holds the device tables
    between steps, so a step's host work is an address comparison and one launch per
    (device, dtype). A Tensor ``lr`` is read on the device: the step never syncs with the host.
    ``launch`` is the launch configuration (the benchmark sweeps it).
    """
    require_triton()
    full = sq_betas is not None
    lists = [params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs,
             exp_avg_sq_2s if full else [], exp_avg_sq_3s if full else [],
             max_exp_avg_sqs if amsgrad else [], state_steps]
    key = (amsgrad, full)
    plan = plans.get(key) if plans is not None else None
    if plan is None or not plan.matches(lists, launch):
        plan = _Plan(lists, launch)
        if plans is not None:
            plans[key] = plan
    if isinstance(lr, Tensor) and lr.is_cpu and not params[0].is_cpu:
        lr = lr.item()  # a host read, no device sync; a device lr is copied on the device
    tensor_lr = isinstance(lr, Tensor)
    sq_beta2, sq_beta3 = sq_betas or (0.0, 0.0)
    settings = dict(lr=0.0 if tensor_lr else lr, beta1=beta1, beta2=beta2, beta3=beta3,
                    beta4=beta4, eps=eps, weight_decay=weight_decay, ln_beta1=_ln(beta1),
                    ln_beta2=_ln(beta2), sq_beta2=sq_beta2, sq_beta3=sq_beta3)
    for tables in plan.tables:
        device = tables.device
        torch._foreach_add_(tables.steps, 1)
        scale = grad_scale.to(device) if grad_scale is not None else None
        inf = found_inf.to(device) if found_inf is not None else None
        hyper = _to_device([settings[name] for name in HYPER], torch.float64, device)
        if tensor_lr:
            lr_at = HYPER.index('lr')
            hyper[lr_at:lr_at + 1].copy_(lr.detach().reshape(1), non_blocking=True)
        # Tables: chunk tensor/start, numels, then p, g, m1, m2, m3, v, v2, v3, vmax, step
        # addresses; an unused table (None) is replaced by any tensor, the kernel skips it.
        t = [x if x is not None else hyper for x in tables.tensors]
        p_dtype, g_dtype, state_dtype = tables.dtypes
        _fame_kernel[tables.grid](
            *t, scale if scale is not None else hyper, inf if inf is not None else hyper, hyper,
            P_DTYPE=p_dtype, G_DTYPE=g_dtype, CT=state_dtype, FULL=full, AMSGRAD=amsgrad,
            MAXIMIZE=maximize, WEIGHT_DECAY=weight_decay != 0, DECOUPLED=decoupled_weight_decay,
            HAS_GRAD_SCALE=scale is not None, HAS_FOUND_INF=inf is not None,
            ALIGNED=tables.aligned, MANUAL_BF16_ROUNDING=INTERPRET, BLOCK=launch.block,
            ITERS=launch.iters, num_warps=launch.num_warps)
        if inf is not None:
            torch._foreach_sub_(tables.steps, [inf] * len(tables.steps))


def _ln(beta: float) -> float:
    return math.log(beta) if beta > 0 else -math.inf


# Under torch.compile the launcher (address tables read with data_ptr()) runs outside the graph,
# one graph break; the wrapper is made here, as dynamo cannot make it while it traces.
fused_fame_outside_graph = torch.compiler.disable(fused_fame)
