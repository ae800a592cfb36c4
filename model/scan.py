"""Which scan operators a Mamba mixer calls (the model's `impl`), chosen explicitly, never by
fallback:

- "sequential": `kernels.mamba3.reference.scan_sequential` for prefill, `reference.step` for decode
  (the recurrence as written; the ground truth, slow).
- "chunked": `reference.scan_chunked` (chunk size from the config) for prefill, `reference.step`.
- "triton": `kernels.mamba3.segmented.prefill` (`kernels.mamba3.chunk.scan_chunked`, cut along time
  when a few sequences of 512 tokens or more leave SMs idle) and `kernels.mamba3.step.step`, plus
  `kernels.mamba3.step.step_fused` (the Mamba-3 decode step straight from the in_proj row, one launch);
  CUDA only, and an error naming what is missing when the kernels cannot be imported.

Every prefill takes `final_state=` (a model's static cache may be passed as both `state` and
`final_state`): the Triton scan writes it directly, the references compute and then copy.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable, NamedTuple

import torch

from kernels.mamba3 import reference

IMPLS = ("sequential", "chunked", "triton")


class ScanOps(NamedTuple):
    prefill: Callable  # (x, z, B, C, dt, adt, lam, theta, *, ..., state, final_state) -> (o, final_state)
    step: Callable  # (x, z, B, C, dt, adt, lam, theta, *, ..., state) -> o; state updated in place
    # (proj, *, dt_bias, B_norm_weight, C_norm_weight, ..., state) -> o, or None: preprocess, then `step`
    step_fused: Callable | None = None


def check_impl(impl: str, device: torch.device | str) -> None:
    """Raise if `impl` is unknown or cannot run on `device`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "triton":
        if torch.device(device).type != "cuda":
            raise RuntimeError(f"impl='triton' needs a CUDA device, got {device!s}; use impl='chunked'")
        _triton_ops()


def _into_final_state(prefill: Callable) -> Callable:
    """A reference prefill that also writes its final state into `final_state` when one is given."""

    @functools.wraps(prefill)
    def run(*args, final_state: reference.ScanState | None = None, **kw):
        o, final = prefill(*args, **kw)
        if final_state is None:
            return o, final
        for held, new in zip(final_state, final):
            held.copy_(new)
        return o, final_state

    return run


@functools.cache
def _triton_ops() -> tuple[Callable, Callable, Callable]:
    found = []
    for module, name in (("kernels.mamba3.segmented", "prefill"), ("kernels.mamba3.step", "step"),
                         ("kernels.mamba3.step", "step_fused")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError) as e:
            raise RuntimeError(f"impl='triton' is unavailable: {module}.{name} cannot be loaded ({e})") from e
    return found[0], found[1], found[2]


def scan_ops(impl: str, chunk_size: int) -> ScanOps:
    if impl == "sequential":
        return ScanOps(_into_final_state(reference.scan_sequential), reference.step)
    if impl == "chunked":
        return ScanOps(_into_final_state(functools.partial(reference.scan_chunked, chunk_size=chunk_size)),
                       reference.step)
    if impl == "triton":
        prefill, step, fused = _triton_ops()
        # The kernel sizes its own tile to the GPU's shared memory (Mamba-2's reference chunk of 256 does
        # not fit on an H100); the chunk size is a tiling choice, not part of the model's function.
        return ScanOps(prefill, step, fused)
    raise ValueError(f"unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
