"""Triton kernels for the glue between a block's matrix products: residual add + RMSNorm, and the
SwiGLU activation. Their readable twins are `model.layers.add_rms_norm` and `model.layers.silu_mul`.

Why: a decode step at batch 1 moves ~3 GB of weights in ~1 ms, and every small elementwise kernel
costs a few microseconds even inside a CUDA graph. In eager PyTorch a residual add + RMSNorm is
about nine launches (add, cast, square, mean, add eps, rsqrt, two products, cast) and SwiGLU's SiLU·product three;
24 blocks of a 1.5B model made ~600 such launches per token. Fused, a block is eight launches:
add+norm, in_proj, scan step, out_proj, add+norm, fc1, SiLU·product, fc2. At prefill size the same
fusion is one read and one write of the residual stream instead of ~8 passes.

Rounding follows the twins: the residual is added in fp32 and stored in its own dtype, and the norm
reads the stored (rounded) value, exactly as `h = h + delta` followed by `rms_norm(h)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.tl_utils import INTERPRETED, cast, grid_dependency_wait, launch, pdl_meta


@triton.jit
def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, h_out_ptr, y_ptr, s_h, s_d, s_ho, s_y, C, eps,
                         HAS_DELTA: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    grid_dependency_wait(PDL)
    c = tl.arange(0, BLOCK_C)
    m = c < C
    h = tl.load(h_ptr + row * s_h + c, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        HT = h_out_ptr.dtype.element_ty
        h = cast(h + tl.load(d_ptr + row * s_d + c, mask=m, other=0.0).to(tl.float32), HT, EMULATE)
        tl.store(h_out_ptr + row * s_ho + c, h, mask=m)
        h = h.to(tl.float32)
    rs = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / C + eps)
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + c, cast(h * rs * w, y_ptr.dtype.element_ty, EMULATE), mask=m)


@triton.jit
def _silu_mul_kernel(g_ptr, u_ptr, o_ptr, s_g, s_u, s_o, F, BLOCK_F: tl.constexpr, PDL: tl.constexpr,
                     EMULATE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    grid_dependency_wait(PDL)
    f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    m = f < F
    gate = tl.load(g_ptr + row * s_g + f, mask=m, other=0.0).to(tl.float32)
    up = tl.load(u_ptr + row * s_u + f, mask=m, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * s_o + f, cast(gate / (1.0 + tl.exp(-gate)) * up, o_ptr.dtype.element_ty, EMULATE),
             mask=m)


def _rows(t: Tensor) -> Tensor:
    """(..., C) → (rows, C) with unit stride in C (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def add_rms_norm(h: Tensor, delta: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(h + delta, RMSNorm(h + delta)·weight): h (..., C) is the residual stream (any float dtype, kept),
    delta (..., C) a branch output or None (then h is returned as is); the normed output is in
    weight's dtype. One launch, one program per row."""
    C = h.shape[-1]
    if weight.shape != (C,) or (delta is not None and delta.shape != h.shape):
        raise ValueError(f"add_rms_norm: h {tuple(h.shape)}, delta "
                         f"{None if delta is None else tuple(delta.shape)}, weight {tuple(weight.shape)}")
    h2 = _rows(h)
    d2 = _rows(delta) if delta is not None else h2
    h_out = torch.empty_like(h2) if delta is not None else h2
    y = torch.empty(h2.shape, device=h.device, dtype=weight.dtype)
    block_c = triton.next_power_of_2(C)
    launch(_add_rms_norm_kernel, (h2.shape[0],), h2, d2, weight, h_out, y, h2.stride(0), d2.stride(0),
           h_out.stride(0), y.stride(0), C, eps, HAS_DELTA=delta is not None, BLOCK_C=block_c,
           EMULATE=INTERPRETED, num_warps=min(16, max(1, block_c // 256)), **pdl_meta(h))
    return h_out.view(h.shape), y.view(h.shape)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate)·up for gate, up (..., F) of one dtype (views with unit last stride stay views: the
    two halves of a fused fc1 output need no copy), computed in fp32 and rounded once."""
    if gate.shape != up.shape or gate.dtype != up.dtype:
        raise ValueError(f"silu_mul: gate {tuple(gate.shape)} {gate.dtype}, up {tuple(up.shape)} {up.dtype}")
    F = gate.shape[-1]
    g2, u2 = _rows(gate), _rows(up)
    out = torch.empty((g2.shape[0], F), device=gate.device, dtype=gate.dtype)
    block_f = min(triton.next_power_of_2(F), 4096 if INTERPRETED else 1024)
    launch(_silu_mul_kernel, (g2.shape[0], triton.cdiv(F, block_f)), g2, u2, out, g2.stride(0), u2.stride(0),
           out.stride(0), F, BLOCK_F=block_f, EMULATE=INTERPRETED, num_warps=4, **pdl_meta(gate))
    return out.view(gate.shape)
