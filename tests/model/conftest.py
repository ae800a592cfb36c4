"""Without a GPU, the Triton kernels run in the Triton interpreter; the flag must be set before the
kernel modules are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
