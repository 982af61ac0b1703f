import os

import torch

# Without a GPU the fused Triton kernel is tested in Triton's interpreter on CPU tensors. The
# switch is read when the kernel is defined, so it must be set before mmfame is imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
