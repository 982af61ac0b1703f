"""FAME: Adam whose first moment is a Triple Exponential Moving Average (arXiv 2306.01423).

Laid out like ``torch/optim/adam.py``: the :class:`FAME` class gathers each step's tensors, one
dispatcher (:func:`_choose_impl`, used by the class and by the functional :func:`fame` alike)
picks an implementation, and the implementations compute the same update: a per-parameter
for-loop (the readable reference), a multi-tensor ``foreach`` chain, the ``fused`` single-pass
Triton kernel for CUDA (``_triton_fame``) and, as the CPU default, a single-pass C loop
(``_cpu_kernel``). The kernel modules import nothing from this one.
"""
import inspect
import math
import numbers
from itertools import chain
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from ._compat import (ParamsT, get_scalar_dtype, get_value, increment_steps, is_compiling,
                      view_as_real)
from ._core import AMSGRAD_KEY, FULL_KEYS, MOMENT_KEYS, TENSOR_KEYS, FameTensors, state_dtype
from .groups import settings_key

__all__ = ['FAME', 'fame', 'check_arguments', 'check_hyper_parameters']

# Settings that must agree for parameter groups to share one call.
_BATCH_KEYS = ('lr', 'betas', 'beta3', 'beta4', 'eps', 'weight_decay', 'decoupled_weight_decay',
               'amsgrad', 'maximize', 'sq_betas', 'foreach', 'fused')
# On CPU the foreach chain walks cache-sized slices of the parameters (elements per slice batch):
# every pass after the first then hits cache, so memory is crossed about once per step.
CPU_BLOCK_NUMEL = 1 << 18

_SGD_KEYS = ('momentum', 'nesterov', 'dampening')
_FLAGS = ('decoupled_weight_decay', 'amsgrad', 'maximize')
_DELETE_BASE = ("in an OpenMMLab config they come from an SGD base optimizer: write "
                "optim_wrapper=dict(optimizer=dict(_delete_=True, type='FAME', lr=..., "
                'weight_decay=...)) to drop the base settings')


def check_arguments(names, where: str = 'FAME', also_valid=(), sgd_fix: str = _DELETE_BASE):
    """Refuse argument names FAME does not take, naming the fix (e.g. SGD leftovers)."""
    valid = [*also_valid, *DEFAULTS]
    sgd = [k for k in names if k in _SGD_KEYS]
    if sgd:
        raise TypeError(f'{where} got SGD arguments {sgd}: FAME has no momentum; {sgd_fix}.')
    unknown = sorted(k for k in names if k not in valid and k != 'params')
    if unknown:
        raise TypeError(f'{where} got unknown arguments {unknown}; valid arguments: {valid}')


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_finite_real(value) -> bool:
    """A real number (not a bool) a float can hold: not inf, NaN or an int like 10**400."""
    try:
        return _is_real(value) and math.isfinite(value)
    except OverflowError:
        return False


def _refuse(where: str, key: str, value, must: str, hint: str = '') -> None:
    if isinstance(value, str):
        hint = f'; write the value unquoted (e.g. {key}={value.strip()})'
    elif value is None and key == 'weight_decay':
        hint = '; use 0 for no weight decay'
    raise ValueError(f'{where}.{key} must be {must}, got {value!r} '
                     f'({type(value).__name__}){hint}')


def _check_unit_pair(where: str, key: str, value, meaning: str) -> None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        _refuse(where, key, value, f'a pair ({meaning})',
                '; the TEMA decays are the separate arguments beta3 and beta4'
                if key == 'betas' else '')
    for i, beta in enumerate(value):
        if key == 'betas' and _is_real(beta) and not 0.0 <= beta < 1.0:  # torch's words
            raise ValueError(f'{where}.betas: Invalid beta parameter at index {i}: {beta} '
                             '(must be in [0, 1))')
        if not (_is_real(beta) and 0.0 <= beta < 1.0):
            _refuse(where, f'{key}[{i}]', beta, 'a number in [0, 1)')


def check_hyper_parameters(values: dict, where: str = 'FAME') -> None:
    """Check the types and ranges of the FAME settings present in ``values`` (the constructor's
    arguments, a param group or a config dict). ``where`` names their place, e.g.
    ``paramwise_cfg.custom_keys['backbone']``; a message reads ``{where}.{key} must be ...``."""
    if 'lr' in values:
        lr = values['lr']
        if isinstance(lr, Tensor):
            if lr.numel() != 1 or not lr.is_floating_point():
                # torch's words first (its tests match them), then what FAME also needs
                raise ValueError(f'{where}.lr: Tensor lr must be 1-element, a floating-point '
                                 f'tensor, got shape {tuple(lr.shape)} and dtype {lr.dtype}')
            lr = lr.item()
    # Out of range: torch's words (its tests match them), then the range.
    for key, words in (('lr', 'Invalid learning rate'), ('eps', 'Invalid epsilon value'),
                       ('weight_decay', 'Invalid weight_decay value')):
        if key not in values:
            continue
        value = lr if key == 'lr' else values[key]
        if not _is_real(value):
            _refuse(where, key, value, 'a number >= 0' + ' or a 1-element tensor' * (key == 'lr'))
        if not value >= 0:
            raise ValueError(f'{where}.{key}: {words}: {value} (must be >= 0)')
        if not is_finite_real(value):
            _refuse(where, key, value, 'a finite number >= 0')
    if 'betas' in values:
        _check_unit_pair(where, 'betas', values['betas'], 'beta1, beta2')
    for key in ('beta3', 'beta4'):
        if key in values and not (_is_real(values[key]) and 0.0 <= values[key] < 1.0):
            _refuse(where, key, values[key], 'a number in [0, 1)')
    if values.get('sq_betas') is not None:
        _check_unit_pair(where, 'sq_betas', values['sq_betas'], 'decay of v2, decay of v3, or None')
    for key in _FLAGS:
        if key in values and not isinstance(values[key], bool):
            _refuse(where, key, values[key], 'True or False')
    for key in ('foreach', 'fused'):
        if values.get(key) is not None and not isinstance(values[key], bool):
            _refuse(where, key, values[key], 'None, True or False')
    if values.get('fused') and values.get('foreach'):
        raise RuntimeError(f'{where}: `fused` and `foreach` cannot be `True` together.')


class _GroupBatch:
    """Parameter groups whose settings agree, stepped by one call, and their params with a
    gradient (gathered before any state is made)."""

    def __init__(self):
        self.groups: List[dict] = []
        self.params: List[Tensor] = []
        self.grads: List[Tensor] = []


class FAME(Optimizer):
    def __init__(self,
                 params: ParamsT,
                 lr: Union[float, Tensor] = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8,
                 weight_decay: float = 0.0,
                 amsgrad: bool = False,
                 *,
                 beta3: float = 0.3,
                 beta4: float = 0.7,
                 decoupled_weight_decay: bool = True,
                 maximize: bool = False,
                 sq_betas: Optional[Tuple[float, float]] = None,
                 foreach: Optional[bool] = None,
                 fused: Optional[bool] = None):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        beta3=beta3, beta4=beta4, decoupled_weight_decay=decoupled_weight_decay,
                        maximize=maximize, sq_betas=sq_betas, foreach=foreach, fused=fused)
        check_hyper_parameters(defaults)
        if fused:
            from . import _triton_fame
            _triton_fame.require_triton()
        defaults['betas'] = tuple(betas)
        defaults['sq_betas'] = None if sq_betas is None else tuple(sq_betas)
        self._fused_plans: Dict[tuple, dict] = {}
        super().__init__(params, defaults)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler leaves unscaling to step(): some group may run the fused kernel,
        which reads grad_scale/found_inf on the device (no host sync). Read from the settings,
        without batching the groups (step() does that once); a batch that does not run fused
        unscales in step() itself."""
        return any(group['fused'] or (
            group['fused'] is None and group['foreach'] is None and group['params']
            and group['params'][0].is_cuda and _triton_available()) for group in self.param_groups)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group; its own settings are checked like the constructor's, before anything is
        added (and ``fused=True`` against its params' devices, as torch does)."""
        index = len(self.param_groups)
        if isinstance(param_group, dict):
            check_hyper_parameters(param_group, where=f'FAME.param_groups[{index}]')
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        error = None
        if len({id(p) for p in group['params']}) != len(group['params']):
            # torch only warns: the parameter would be stepped twice
            error = ValueError(
                f'FAME: param group {index} holds a parameter more than once (a shared or tied '
                'weight?), which would be stepped twice: pass each parameter once (OpenMMLab: '
                'paramwise_cfg=dict(bypass_duplicate=True) skips shared ones)')
        elif group['fused'] and group['foreach']:
            error = RuntimeError('`fused` and `foreach` cannot be `True` together.')
        elif group['fused']:
            # Parameters on the meta device (deferred initialisation: built there, then
            # materialised with to_empty()) are checked when they are stepped, as torch does.
            from . import _triton_fame
            reason = _triton_fame.unsupported_device(
                [p for p in group['params'] if p.device.type != 'meta'])
            error = reason and RuntimeError(reason)
        if error:
            self.param_groups.pop()
            raise error
        group['betas'] = tuple(group['betas'])
        if group['sq_betas'] is not None:
            group['sq_betas'] = tuple(group['sq_betas'])

    def __setstate__(self, state):
        super().__setstate__(state)
        self._fused_plans = {}  # device tables of the fused path; rebuilt from the new state
        for group in self.param_groups:  # groups saved before a setting existed
            for key, value in DEFAULTS.items():
                group.setdefault(key, value)

    def _batches(self) -> Iterator[_GroupBatch]:
        """Groups with equal settings go to one call, so the fast paths batch across the
        one-group-per-parameter layout that mmengine's paramwise_cfg produces."""
        batches: Dict[tuple, _GroupBatch] = {}
        for group in self.param_groups:
            key = settings_key(group, _BATCH_KEYS)
            batch = batches.setdefault(key, _GroupBatch())
            batch.groups.append(group)
            for p in group['params']:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(
                            'FAME does not support sparse gradients; use dense gradients (e.g. '
                            'nn.Embedding(sparse=False)) or torch.optim.SparseAdam')
                    batch.params.append(p)
                    batch.grads.append(p.grad)
        return (batch for batch in batches.values() if batch.params)

    def _choose(self, batch: _GroupBatch) -> Tuple[Callable, bool]:
        """The dispatcher's choice for a batch, before its state is made or changed: a state
        tensor not made yet will be laid out like its param, so the param stands in for it."""
        group = batch.groups[0]
        keys = [*MOMENT_KEYS, *FULL_KEYS * (group['sq_betas'] is not None),
                *[AMSGRAD_KEY] * group['amsgrad']]
        states = [[self.state.get(p, {}).get(k, p) for p in batch.params] for k in keys]
        return _choose_impl(batch.params, batch.grads, states, group['foreach'], group['fused'])

    def _init_state(self, batch: _GroupBatch, fused: bool) -> Tuple[FameTensors, bool]:
        """The batch's tensors, making missing state; and whether any param is complex."""
        group = batch.groups[0]
        amsgrad, full = group['amsgrad'], group['sq_betas'] is not None
        tensors = FameTensors(batch.params, batch.grads, *([] for _ in range(8)))
        for p in batch.params:
            state = self.state[p]
            if len(state) == 0:
                # Step lives on the device for the fused kernel (found_inf without host sync),
                # as a CPU scalar otherwise (cheap to read), like torch.optim.Adam.
                state['step'] = (torch.zeros((), dtype=torch.float32, device=p.device)
                                 if fused else torch.tensor(0.0, dtype=get_scalar_dtype()))
                for key in MOMENT_KEYS:
                    state[key] = torch.zeros_like(p, dtype=state_dtype(p),
                                                  memory_format=torch.preserve_format)
            elif state['step'].is_cpu != (p.is_cpu or not fused):
                # The path changed since the state was made (or loaded): move `step` once.
                state['step'] = (state['step'].to(p.device, torch.float32) if fused else
                                 state['step'].to('cpu', get_scalar_dtype()))
            for key in (AMSGRAD_KEY,) * amsgrad + FULL_KEYS * full:
                if key not in state:
                    state[key] = torch.zeros_like(state['exp_avg_sq'])
            tensors.exp_avgs.append(state['exp_avg'])
            tensors.exp_avg_2s.append(state['exp_avg_2'])
            tensors.exp_avg_3s.append(state['exp_avg_3'])
            tensors.exp_avg_sqs.append(state['exp_avg_sq'])
            if full:
                tensors.exp_avg_sq_2s.append(state['exp_avg_sq_2'])
                tensors.exp_avg_sq_3s.append(state['exp_avg_sq_3'])
            if amsgrad:
                tensors.max_exp_avg_sqs.append(state[AMSGRAD_KEY])
            tensors.state_steps.append(state['step'])
        return tensors, any(map(torch.is_complex, batch.params))

    @torch.no_grad()
    def step(self, closure=None):
        """Perform a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model and returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Each fused batch keeps its own device tables, found by its groups: batches of equal
        # size (per-layer lr groups) must not evict each other's and rebuild them every step.
        # Tables of batches not stepped now are dropped (they hold their tensors).
        kept = {}
        for batch in list(self._batches()):
            impl, fused = self._choose(batch)
            tensors, has_complex = self._init_state(batch, fused)
            plans = None
            if fused:
                key = tuple(map(id, batch.groups))
                plans = kept[key] = self._fused_plans.get(key, {})
            _run(impl, fused, tensors, has_complex=has_complex, fused_plans=plans,
                 grad_scale=getattr(self, 'grad_scale', None),
                 found_inf=getattr(self, 'found_inf', None), **_settings(batch.groups[0]))
        self._fused_plans = kept
        return loss

    def load_state_dict(self, state_dict):
        """Load a FAME state dict; refuse other optimizers' state and keep fp32 moments.

        ``torch.optim.Optimizer`` casts floating state to each param's dtype, which would round
        the fp32 moments of fp16/bf16 params; FAME restores them at full precision.
        """
        _check_is_fame_state(state_dict)
        self._check_fits(state_dict)
        super().load_state_dict(state_dict)
        saved_ids = chain.from_iterable(g['params'] for g in state_dict['param_groups'])
        params = chain.from_iterable(g['params'] for g in self.param_groups)
        for saved_id, p in zip(saved_ids, params):
            saved = state_dict['state'].get(saved_id)
            if not saved:
                continue
            state = self.state[p]
            for key in TENSOR_KEYS:
                if key in saved:  # laid out like the param, whatever the saved strides
                    state[key] = torch.empty_like(p, dtype=state_dtype(p)).copy_(saved[key])
            # On the CPU; the next step moves it to the device if that step runs fused.
            state['step'] = torch.tensor(get_value(saved['step']), dtype=get_scalar_dtype())

    def _check_fits(self, state_dict) -> None:
        """Refuse, before anything is loaded, state that does not fit this optimizer's params:
        another grouping, another model (a state shape differs), or a step that is not a count."""
        saved_groups, groups = state_dict['param_groups'], self.param_groups
        sizes = [len(g['params']) for g in saved_groups], [len(g['params']) for g in groups]
        if sizes[0] != sizes[1]:
            raise ValueError(
                f'FAME.load_state_dict: the state has {len(sizes[0])} parameter groups of sizes '
                f'{sizes[0]}, this optimizer {len(sizes[1])} of sizes {sizes[1]}: the parameter '
                'grouping changed since it was saved (the optim_wrapper constructor, its '
                'paramwise_cfg such as merge_groups, or the model). Resume with the settings it '
                'was saved with, or start from its weights with load_from=... instead of resume.')
        for i, (saved, group) in enumerate(zip(saved_groups, groups)):
            for j, (saved_id, p) in enumerate(zip(saved['params'], group['params'])):
                state = state_dict['state'].get(saved_id) or {}
                where = f'parameter {j} of group {i} (shape {tuple(p.shape)}, {p.dtype})'
                for key in TENSOR_KEYS:
                    t = state.get(key)
                    if t is not None and not (isinstance(t, Tensor) and t.shape == p.shape and (
                            t.is_complex() if p.is_complex() else t.is_floating_point())):
                        got = (f'shape {tuple(t.shape)}, {t.dtype}' if isinstance(t, Tensor)
                               else type(t).__name__)
                        raise ValueError(
                            f'FAME.load_state_dict: state {key!r} ({got}) does not fit {where}: '
                            'the model changed since the state was saved (e.g. num_classes). '
                            'Resuming needs the same model; to start from the weights, use '
                            'load_from=... instead of resume (in plain PyTorch, skip '
                            'optimizer.load_state_dict).')
                if 'step' in state:
                    step = state['step']
                    value = (step.item() if isinstance(step, Tensor) and step.numel() == 1
                             else step)
                    if not (_is_real(value) and math.isfinite(value) and value >= 0):
                        raise ValueError(f'FAME.load_state_dict: step of {where} must be a '
                                         f'finite number >= 0, got {step!r}')


def _triton_available() -> bool:
    from . import _triton_fame
    return _triton_fame.triton is not None


def _check_is_fame_state(state_dict) -> None:
    for param_id, state in state_dict['state'].items():
        missing = [k for k in ('step', *MOMENT_KEYS) if k not in state]
        if state and missing:
            raise ValueError(
                f'FAME.load_state_dict: the state of parameter {param_id} lacks {missing}; it was '
                f'saved by another optimizer (keys: {sorted(state)}), e.g. Adam/AdamW. FAME '
                'cannot continue from that state. To start FAME from those weights, load the '
                'model only: in OpenMMLab use `load_from=...` instead of `resume`, in plain '
                'PyTorch skip optimizer.load_state_dict().')


_ARGS_DOC = r"""
    Args:
        params (iterable): iterable of parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate (default: 1e-3).
        betas (Tuple[float, float], optional): decays of the gradient EMA ``m1`` and of the
            squared-gradient EMA ``v``, as in Adam (default: (0.9, 0.999)).
        eps (float, optional): term added to the denominator (default: 1e-8).
        weight_decay (float, optional): weight decay coefficient (default: 0).
        amsgrad (bool, optional): use the running maximum of ``v`` (default: False).

    Keyword-only (FAME's own):
        beta3 (float, optional): decay of ``m2``, the EMA of ``m1`` (default: 0.3).
        beta4 (float, optional): decay of ``m3``, the EMA of ``m2`` (default: 0.7).
        decoupled_weight_decay (bool, optional): AdamW-style decay ``p *= 1 - lr * wd`` when True
            (the meaning of OpenMMLab's AdamW recipes), L2 added to the gradient when False (the
            authors' code) (default: True).
        maximize (bool, optional): maximize the objective instead of minimizing (default: False).
        sq_betas (Tuple[float, float], optional): full FAME: also take the TEMA of ``v``, with
            these decays of ``v2`` (the EMA of ``v``) and ``v3`` (the EMA of ``v2``), clamped at 0;
            None keeps Adam's ``v`` (default: None).
        foreach (bool, optional): multi-tensor implementation; on CPU it walks cache-sized slices
            so memory is crossed about once per step. None picks the fastest correct path for the
            tensors (default: None).
        fused (bool, optional): single-pass Triton kernel for CUDA tensors, many tensors per
            launch; consumes GradScaler's ``grad_scale``/``found_inf`` on the device. Needs
            ``triton``; on CPU only under ``TRITON_INTERPRET=1`` (for testing) (default: None).

    State per parameter: ``step``, ``exp_avg`` (m1), ``exp_avg_2`` (m2), ``exp_avg_3`` (m3),
    ``exp_avg_sq`` (v); with amsgrad ``max_exp_avg_sq``; with sq_betas ``exp_avg_sq_2`` (v2) and
    ``exp_avg_sq_3`` (v3). They are fp32 for fp16/bf16 parameters.
    """

FAME.__doc__ = r"""Implements FAME (Fast Adaptive Moment Estimation).

    Adam whose first moment is the Triple Exponential Moving Average of the gradient
    (Peleg et al., "Break a Lag", arXiv 2306.01423)::

        m1 = beta1 * m1 + (1 - beta1) * g          # exp_avg
        m2 = beta3 * m2 + (1 - beta3) * m1         # exp_avg_2
        m3 = beta4 * m3 + (1 - beta4) * m2         # exp_avg_3
        v  = beta2 * v  + (1 - beta2) * g * g      # exp_avg_sq
        p  = p - lr / (1 - beta1**t) * (3*m1 - 3*m2 + m3) / (sqrt(v / (1 - beta2**t)) + eps)

    With ``beta3 = beta4 = 0`` it is exactly Adam (``decoupled_weight_decay=False``) or AdamW.
    The positional arguments are Adam's, in Adam's order; FAME's own are keyword-only.
    """ + _ARGS_DOC

# The settings and their defaults, read from the signature: __setstate__ and the argument check
# use this table, so a new setting is declared once.
DEFAULTS = {name: p.default for name, p in inspect.signature(FAME).parameters.items()
            if name != 'params'}


def _settings(group: dict) -> dict:
    """A group's settings as the implementations take them."""
    beta1, beta2 = group['betas']
    return dict(amsgrad=group['amsgrad'], beta1=beta1, beta2=beta2, beta3=group['beta3'],
                beta4=group['beta4'], lr=group['lr'], weight_decay=group['weight_decay'],
                eps=group['eps'], decoupled_weight_decay=group['decoupled_weight_decay'],
                maximize=group['maximize'], sq_betas=group['sq_betas'])


def fame(params: List[Tensor],
         grads: List[Tensor],
         exp_avgs: List[Tensor],
         exp_avg_2s: List[Tensor],
         exp_avg_3s: List[Tensor],
         exp_avg_sqs: List[Tensor],
         exp_avg_sq_2s: List[Tensor],
         exp_avg_sq_3s: List[Tensor],
         max_exp_avg_sqs: List[Tensor],
         state_steps: List[Tensor],
         *,
         foreach: Optional[bool] = None,
         fused: Optional[bool] = None,
         grad_scale: Optional[Tensor] = None,
         found_inf: Optional[Tensor] = None,
         has_complex: bool = False,
         fused_plans: Optional[dict] = None,
         amsgrad: bool,
         beta1: float,
         beta2: float,
         beta3: float,
         beta4: float,
         lr: Union[float, Tensor],
         weight_decay: float,
         eps: float,
         decoupled_weight_decay: bool,
         maximize: bool,
         sq_betas: Optional[Tuple[float, float]] = None) -> None:
    """Functional FAME: see :class:`FAME`. Picks the implementation as the class does and runs it.

    ``exp_avg_sq_2s``/``exp_avg_sq_3s`` are used (and may be empty otherwise) with ``sq_betas``,
    ``max_exp_avg_sqs`` with ``amsgrad``. ``fused_plans``, a dict kept by the caller for these
    tensors, lets the fused kernel reuse its device tables across steps.
    """
    tensors = FameTensors(params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs,
                          exp_avg_sq_2s, exp_avg_sq_3s, max_exp_avg_sqs, state_steps)
    impl, is_fused = _choose_impl(params, grads, tensors.states(amsgrad, sq_betas is not None),
                                  foreach, fused)
    _run(impl, is_fused, tensors, grad_scale=grad_scale, found_inf=found_inf,
         has_complex=has_complex, fused_plans=fused_plans, amsgrad=amsgrad, beta1=beta1,
         beta2=beta2, beta3=beta3, beta4=beta4, lr=lr, weight_decay=weight_decay, eps=eps,
         decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, sq_betas=sq_betas)


def _choose_impl(params: List[Tensor], grads: List[Tensor], states: List[List[Tensor]],
                 foreach: Optional[bool], fused: Optional[bool]) -> Tuple[Callable, bool]:
    """The one place an implementation is chosen (for the class and :func:`fame` alike), from
    the tensors alone, before anything is modified: (implementation, whether it is fused).

    What was asked for; else the fastest correct one, measured (docs/benchmarks.md): the fused
    kernel for CUDA tensors it can take (with Triton), the compiled C loop for contiguous fp32
    CPU tensors (with a C compiler), foreach for plain CPU/CUDA tensors, else the for-loop.
    While dynamo traces, the default is foreach on every device, as torch's: inductor fuses the
    chain into its own loop, with no graph break (``fused=True`` runs the kernel outside the graph).
    ``fused=True`` on tensors the kernel cannot take raises, saying why; ``fused=False`` only
    rules the kernel out, as in torch.
    """
    default = fused is None and foreach is None
    if fused or (default and params and params[0].is_cuda and not is_compiling()):
        from . import _triton_fame
        reason = _triton_fame.unsupported_reason(params, grads, states)
        if reason is None:
            return (_triton_fame.fused_fame_outside_graph if is_compiling() else
                    _triton_fame.fused_fame), True
        if fused:
            raise RuntimeError(reason)
    if foreach is None and params and params[0].is_cpu and not is_compiling():
        from . import _cpu_kernel  # ctypes and raw pointers: kept out of traced code
        if _cpu_kernel.supports(params, grads, states) and _cpu_kernel.load():
            return _cpu_kernel.cpu_kernel_fame, False
    if foreach is None:
        foreach = not torch.jit.is_scripting() and all(
            type(p) in (Tensor, torch.nn.Parameter) and p.device.type in ('cpu', 'cuda')
            for p in params)
    return (_multi_tensor_fame if foreach else _single_tensor_fame), False


def _run(impl: Callable, fused: bool, tensors: FameTensors, *, grad_scale, found_inf,
         fused_plans, lr, **settings) -> None:
    if fused:
        impl(*tensors, grad_scale=grad_scale, found_inf=found_inf, lr=lr, plans=fused_plans,
             **settings)
        return
    if grad_scale is not None or found_inf is not None:
        # A non-fused batch of an optimizer whose fused batches asked GradScaler to defer:
        # unscale here (with a host sync, as GradScaler itself would).
        if found_inf is not None and found_inf.item():
            return
        if grad_scale is not None:
            torch._foreach_div_(tensors.grads, grad_scale.item())
    impl(*tensors, grad_scale=None, found_inf=None, lr=get_value(lr), **settings)


def _single_tensor_fame(params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs,
                        exp_avg_sq_2s, exp_avg_sq_3s, max_exp_avg_sqs, state_steps, *,
                        grad_scale, found_inf, has_complex, amsgrad, beta1, beta2, beta3, beta4,
                        lr, weight_decay, eps, decoupled_weight_decay, maximize, sq_betas):
    """The reference: one parameter at a time, written as the spec reads."""
    for i, param in enumerate(params):
        grad, m1, m2, m3, v = grads[i], exp_avgs[i], exp_avg_2s[i], exp_avg_3s[i], exp_avg_sqs[i]
        vmax = max_exp_avg_sqs[i] if amsgrad else None
        v2, v3 = (exp_avg_sq_2s[i], exp_avg_sq_3s[i]) if sq_betas is not None else (None, None)
        if torch.is_complex(param):
            param, grad, m1, m2, m3, v = map(torch.view_as_real, (param, grad, m1, m2, m3, v))
            vmax, v2, v3 = (None if t is None else torch.view_as_real(t) for t in (vmax, v2, v3))
        # fp16/bf16 params: compute in the fp32 of their state, round into the param once.
        p = param if param.dtype == m1.dtype else param.to(m1.dtype)
        grad = grad.to(m1.dtype)

        state_steps[i] += 1
        step = get_value(state_steps[i])  # a tensor while compiling: no .item(), no graph break
        if maximize:
            grad = -grad
        if weight_decay != 0:
            if decoupled_weight_decay:
                p.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(p, alpha=weight_decay)

        m1.lerp_(grad, 1 - beta1)
        m2.lerp_(m1, 1 - beta3)
        m3.lerp_(m2, 1 - beta4)
        v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if sq_betas is not None:  # full FAME: TEMA of v, clamped (its weights go negative);
            v2.lerp_(v, 1 - sq_betas[0])  # an overflowed v (inf) stays inf, not inf - inf = NaN
            v3.lerp_(v2, 1 - sq_betas[1])
            v = torch.where(v.isinf(), v, v.mul(3).sub_(v2, alpha=3).add_(v3).clamp_min_(0))
        if amsgrad:
            torch.maximum(vmax, v, out=vmax)
            v = vmax

        tema = m1.mul(3).sub_(m2, alpha=3).add_(m3)
        bias_correction1, bias_correction2_sqrt = _bias_corrections(step, beta1, beta2)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        p.addcdiv_(tema, denom, value=-lr / bias_correction1)
        if p is not param:
            param.copy_(p)


def _multi_tensor_fame(params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs,
                       exp_avg_sq_2s, exp_avg_sq_3s, max_exp_avg_sqs, state_steps, *,
                       grad_scale, found_inf, has_complex, amsgrad, beta1, beta2, beta3, beta4,
                       lr, weight_decay, eps, decoupled_weight_decay, maximize, sq_betas):
    """The foreach chain: the same math as the for-loop, one op over all tensors at a time."""
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_2s, exp_avg_3s, exp_avg_sqs, exp_avg_sq_2s,
         exp_avg_sq_3s, max_exp_avg_sqs, state_steps])
    full = sq_betas is not None
    for (tensors, _) in grouped.values():
        p_, g_, m1_, m2_, m3_, v_, v2_, v3_, vmax_, steps = (list(t) for t in tensors)
        # While dynamo traces, torch groups every tensor under one (None, None) key on purpose:
        # the device comes from the tensors, and fp16/bf16 params are found one by one.
        device = p_[0].device
        increment_steps(steps)
        # Per-tensor scalars (steps may differ: params skipped while frozen keep their count).
        step_size, eps_hat = _bias_corrected_scalars(steps, lr, beta1, beta2, eps)
        low = [i for i, (p, m) in enumerate(zip(p_, m1_)) if p.dtype != m.dtype]
        p32 = [p.to(m.dtype) if p.dtype != m.dtype else p for p, m in zip(p_, m1_)]
        g32 = [g.to(m.dtype) if g.dtype != m.dtype else g for g, m in zip(g_, m1_)]
        if has_complex:
            state_lists = [m1_, m2_, m3_, v_] + [vmax_] * amsgrad + [v2_, v3_] * full
            p32 = list(p32)
            g32 = list(g32)
            view_as_real(p32, g32, *state_lists)
        tensor_lists = [p32, g32, m1_, m2_, m3_, v_, v2_ if full else None,
                        v3_ if full else None, vmax_ if amsgrad else None]
        scalar_lists = [step_size, eps_hat]
        blocks = (_cpu_blocks(tensor_lists, scalar_lists)
                  if device.type == 'cpu' and not is_compiling() else [tensor_lists + scalar_lists])
        for block in blocks:
            _foreach_chain(*block, amsgrad=amsgrad, beta1=beta1, beta2=beta2, beta3=beta3,
                           beta4=beta4, lr=lr, weight_decay=weight_decay,
                           decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                           sq_betas=sq_betas)
        if low:
            torch._foreach_copy_([p_[i] for i in low], [p32[i] for i in low])


def _bias_corrections(step, beta1: float, beta2: float):
    """``1 - beta1**t`` and ``sqrt(1 - beta2**t)``: numbers for a number ``t``; for a step
    tensor (while compiling: reading it would break the graph), float64 tensors, as exact."""
    if isinstance(step, Tensor):
        step = step.to(torch.float64)
        return 1 - beta1**step, (1 - beta2**step).sqrt()
    return 1 - beta1**step, math.sqrt(1 - beta2**step)


def _bias_corrected_scalars(steps, lr, beta1, beta2, eps):
    """Per tensor: -lr*sqrt(bc2)/bc1 and eps*sqrt(bc2), so that
    ``p += step_size * tema / (sqrt(v) + eps_hat)`` is Adam's bias-corrected update. While
    compiling they are 0-d tensors."""
    if is_compiling():
        pairs = [_bias_corrections(s, beta1, beta2) for s in steps]
        return ([-lr * bc2_sqrt / bc1 for bc1, bc2_sqrt in pairs],
                [eps * bc2_sqrt for _, bc2_sqrt in pairs])
    values = [get_value(s) for s in steps]
    cache = {}
    for t in set(values):
        bc1, bc2_sqrt = _bias_corrections(t, beta1, beta2)
        cache[t] = (-lr * bc2_sqrt / bc1, eps * bc2_sqrt)
    return [cache[t][0] for t in values], [cache[t][1] for t in values]


def _cpu_blocks(tensor_lists, scalar_lists) -> Iterator[list]:
    """Yield the chain's lists in batches of about CPU_BLOCK_NUMEL elements.

    Large contiguous tensors are cut into flat slices, so each batch's working set (params,
    grads, moments and two temporaries) stays in cache across the chain's dozen passes.
    """
    present = [k for k, l in enumerate(tensor_lists) if l is not None]
    width = len(tensor_lists) + len(scalar_lists)

    def empty():
        return [[] if k >= len(tensor_lists) or tensor_lists[k] is not None else None
                for k in range(width)]

    batch, size = empty(), 0
    for i in range(len(tensor_lists[0])):
        row = [tensor_lists[k][i] for k in present]
        numel = row[0].numel()
        if numel > CPU_BLOCK_NUMEL and all(t.is_contiguous() and t.shape == row[0].shape
                                           for t in row):  # flat slices pair up element-wise
            row = [t.view(-1) for t in row]
            spans = [slice(s, s + CPU_BLOCK_NUMEL) for s in range(0, numel, CPU_BLOCK_NUMEL)]
        else:
            spans = [None]
        for span in spans:
            pieces = row if span is None else [t[span] for t in row]
            for k, t in zip(present, pieces):
                batch[k].append(t)
            for j, scalars in enumerate(scalar_lists):
                batch[len(tensor_lists) + j].append(scalars[i])
            size += pieces[0].numel()
            if size >= CPU_BLOCK_NUMEL:
                yield batch
                batch, size = empty(), 0
    if batch[0]:
        yield batch


def _foreach_chain(params, grads, m1, m2, m3, v, v2, v3, vmax, step_size, eps_hat, *, amsgrad,
                   beta1, beta2, beta3, beta4, lr, weight_decay, decoupled_weight_decay,
                   maximize, sq_betas):
    """One FAME update over lists of same-device, same-dtype tensors. Peak extra memory: two
    temporaries per tensor (tema and denom)."""
    if weight_decay != 0:
        if decoupled_weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        elif maximize:  # L2 on the negated gradient: -g + wd * p, in one temporary
            grads = torch._foreach_sub(grads, params, alpha=weight_decay)
            torch._foreach_neg_(grads)
            maximize = False
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if maximize:  # m1 moves towards -g without a negated copy of g
        torch._foreach_mul_(m1, beta1)
        torch._foreach_add_(m1, grads, alpha=-(1 - beta1))
    else:
        torch._foreach_lerp_(m1, grads, 1 - beta1)
    torch._foreach_mul_(v, beta2)
    torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
    del grads
    torch._foreach_lerp_(m2, m1, 1 - beta3)
    torch._foreach_lerp_(m3, m2, 1 - beta4)
    tema = torch._foreach_sub(m1, m2)
    tema = torch._foreach_add(m3, tema, alpha=3)
    if sq_betas is not None:  # full FAME: TEMA of v, clamped (its weights go negative);
        torch._foreach_lerp_(v2, v, 1 - sq_betas[0])  # an overflowed v (inf) stays inf
        torch._foreach_lerp_(v3, v2, 1 - sq_betas[1])
        tema_v = torch._foreach_sub(v, v2)
        torch._foreach_mul_(tema_v, 3)
        torch._foreach_add_(tema_v, v3)
        torch._foreach_clamp_min_(tema_v, 0)
        v = [torch.where(a.isinf(), a, b) for a, b in zip(v, tema_v)]
        del tema_v
    if amsgrad:
        torch._foreach_maximum_(vmax, v)
        v = vmax
    if sq_betas is not None and not amsgrad:
        denom = v  # a temporary already: take its square root in place
        torch._foreach_sqrt_(denom)
    else:
        denom = torch._foreach_sqrt(v)
    del v
    torch._foreach_add_(denom, eps_hat)
    if isinstance(step_size[0], Tensor):  # compiling: a list of 0-d tensors, not scalars
        torch._foreach_div_(denom, step_size)
        torch._foreach_addcdiv_(params, tema, denom)
    else:
        torch._foreach_addcdiv_(params, tema, denom, step_size)
