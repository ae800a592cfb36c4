"""Without a GPU, the Triton kernels run in the Triton interpreter; the flag must be set before the
kernel modules are imported."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def nan_allocations(monkeypatch):
    """torch.empty / empty_like hand out NaN-filled floating-point memory, so an output element (or a
    split's partial) that a kernel wrapper allocates and the kernel leaves unwritten shows up as NaN."""
    for name in ("empty", "empty_like"):
        alloc = getattr(torch, name)

        def poisoned(*args, _alloc=alloc, **kw):
            t = _alloc(*args, **kw)
            return t.fill_(float("nan")) if t.is_floating_point() else t

        monkeypatch.setattr(torch, name, poisoned)
