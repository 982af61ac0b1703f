"""Private torch helpers FAME needs, vendored or guarded so one code base runs on torch 2.1+.

``torch.optim.optimizer`` grew and changed these across releases (``ParamsT`` and
``_view_as_real`` are 2.2, ``_get_scalar_dtype`` 2.3; on 2.1 ``_get_value`` calls ``.item()`` on
a float; ``_foreach_add_(tensors, Tensor, alpha=)`` is 2.2). They are small, so FAME carries its
own copies instead of importing them; this module imports nothing else from mmfame.
"""
import re
from typing import Any, Dict, Iterable, List, Union

import torch
from torch import Tensor

__all__ = ['ParamsT', 'get_value', 'get_scalar_dtype', 'view_as_real', 'increment_steps',
           'is_compiling', 'version_tuple', 'walkable']

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]


def version_tuple(version: str) -> tuple:
    """``'2.1.2+cu121'`` -> ``(2, 1, 2)``, ``'2.6.0a0'`` -> ``(2, 6, 0)``."""
    return tuple(int(v) for v in re.findall(r'\d+', version.split('+')[0])[:3])


TORCH_VERSION = version_tuple(torch.__version__)
# _foreach_add_(tensors, Tensor, alpha=) wraps the increment once instead of once per tensor.
_FOREACH_ADD_TENSOR = TORCH_VERSION >= (2, 2)


def is_compiling() -> bool:
    """Whether dynamo is tracing this code (``torch.compiler.is_compiling`` is 2.3)."""
    if torch.jit.is_scripting():
        return False
    compiler = getattr(torch, 'compiler', None)
    if hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()


def get_value(x: Union[float, Tensor]) -> Union[float, Tensor]:
    """A Python number from a float or a 1-element tensor; while compiling, the tensor itself
    (``.item()`` would break the graph), as torch's optimizers do."""
    return x.item() if isinstance(x, Tensor) and not is_compiling() else x


def get_scalar_dtype() -> torch.dtype:
    """The dtype of CPU ``step`` counters: float64 under a float64 default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def view_as_real(params: List[Tensor], *state_and_grads: List[Tensor]) -> None:
    """Replace, in place in the lists, every complex tensor and its state by its real view."""
    for i, p in enumerate(params):
        if torch.is_complex(p):
            params[i] = torch.view_as_real(p)
            for tensors in state_and_grads:
                tensors[i] = torch.view_as_real(tensors[i])


def walkable(params: List[Tensor], *lists: List[Tensor]) -> bool:
    """Whether a kernel that walks raw memory may pair ``params[i]`` element by element with
    ``l[i]`` for every list: all contiguous, each of its parameter's shape."""
    return all(t.is_contiguous() and t.shape == p.shape
               for l in (params, *lists) for p, t in zip(params, l))


def increment_steps(steps: List[Tensor]) -> None:
    """``step += 1`` for a list of step counters."""
    if _FOREACH_ADD_TENSOR and steps and steps[0].is_cpu and not is_compiling():
        torch._foreach_add_(steps, torch.tensor(1.0, device='cpu'), alpha=1.0)
    else:
        torch._foreach_add_(steps, 1)
