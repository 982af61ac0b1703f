"""A process's random states (Python, NumPy, torch, CUDA) as a checkpoint can hold them.

mmengine seeds a run once and does not save where its generators were: an epoch-based run
resumed from a checkpoint draws its augmentations (Mosaic, affine, flips in the main process, as
with ``num_workers=0``) from the freshly seeded state, not from where the stopped run was.
The states here are plain lists, ints and tensors, so a ``torch.load(weights_only=True)``
reads them without an allowlist entry.
"""
import random

import numpy as np
import torch

__all__ = ['capture', 'restore']


def capture() -> dict:
    """This process's random states."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=[kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Set this process's random states to ``state`` (from :func:`capture`)."""
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
