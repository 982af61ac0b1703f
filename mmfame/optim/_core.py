"""What FAME's class, its dispatcher and its kernels share: the state keys, the state dtype rule,
the dtypes the fused kernel takes and the lists every implementation is called with.

A leaf: it imports nothing from mmfame, so the kernel modules never import ``fame.py`` back.
"""
from typing import List, NamedTuple

import torch
from torch import Tensor

# State keys, per parameter. Frozen: checkpoints and users depend on them.
MOMENT_KEYS = ('exp_avg', 'exp_avg_2', 'exp_avg_3', 'exp_avg_sq')
AMSGRAD_KEY = 'max_exp_avg_sq'
FULL_KEYS = ('exp_avg_sq_2', 'exp_avg_sq_3')  # full FAME: the TEMA cascade on v
TENSOR_KEYS = (*MOMENT_KEYS, AMSGRAD_KEY, *FULL_KEYS)

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Optimizer state per fp32 parameter, in bytes: FAME's moments, and AdamW's two for comparison.
STATE_BYTES = {'FAME': 4 * len(MOMENT_KEYS), 'FAME-full': 4 * (len(MOMENT_KEYS) + len(FULL_KEYS)),
               'AdamW': 4 * 2}


def state_dtype(p: Tensor) -> torch.dtype:
    """fp32 state for fp16/bf16 params: TEMA's cancellation amplifies low-precision rounding."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class FameTensors(NamedTuple):
    """One call's tensors, index-aligned; every implementation takes them in this order.

    ``exp_avg_sq_2s``/``exp_avg_sq_3s`` are used with ``sq_betas`` and ``max_exp_avg_sqs`` with
    ``amsgrad``; unused lists may be empty.
    """
    params: List[Tensor]
    grads: List[Tensor]
    exp_avgs: List[Tensor]
    exp_avg_2s: List[Tensor]
    exp_avg_3s: List[Tensor]
    exp_avg_sqs: List[Tensor]
    exp_avg_sq_2s: List[Tensor]
    exp_avg_sq_3s: List[Tensor]
    max_exp_avg_sqs: List[Tensor]
    state_steps: List[Tensor]

    def states(self, amsgrad: bool, full: bool) -> List[List[Tensor]]:
        """The state lists in use (each aligned with ``params``)."""
        return [self.exp_avgs, self.exp_avg_2s, self.exp_avg_3s, self.exp_avg_sqs,
                *([self.exp_avg_sq_2s, self.exp_avg_sq_3s] if full else []),
                *([self.max_exp_avg_sqs] if amsgrad else [])]
