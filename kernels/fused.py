"""Triton kernels for the glue between a block's matrix products: residual add + RMSNorm, and the
SwiGLU activation. Their readable twins are `model.layers.add_rms_norm` and `model.layers.silu_mul`.

Why: a decode step at batch 1 moves ~3 GB of weights in ~1 ms, and every small elementwise kernel
costs a few microseconds even inside a CUDA graph. In eager PyTorch a residual add + RMSNorm is
about nine launches (add, cast, square, mean, add eps, rsqrt, two products, cast) and SwiGLU's SiLU·product three;
24 blocks of a 1.5B model made ~600 such launches per token. Fused, a block is eight launches:
add+norm, in_proj, scan step, out_proj, add+norm, fc1, SiLU·product, fc2; at batch 1 seven, the
SiLU·product computed by fc2's matrix-vector kernel as it loads x (`kernels.gemv.SiluMul`). At prefill
size the same fusion is one read and one write of the residual stream instead of ~8 passes.

Rounding follows the twins: the residual is added in fp32 and stored in its own dtype, and the norm
reads the stored (rounded) value, exactly as `h = h + delta` followed by `rms_norm(h)`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.reference import proj_groups
from kernels.mamba3.tl_utils import (INTERPRETED, cast, decay_rate, grid_dependency_wait, launch, pdl_meta, pi_tanh,
                                     silu_mul_f32, softplus)


@triton.jit
def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, h_out_ptr, y_ptr, s_h, s_d, s_ds, s_ho, s_y, C, eps,
                         HAS_DELTA: tl.constexpr, SPLITS: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr,
                         EMULATE: tl.constexpr):
    """Row pid 0. SPLITS 0: delta a row of d_ptr; ≥ 1: the sum, in split order from zero, of SPLITS fp32
    partial rows (split stride s_ds; kernels.skinny.SplitPartials)."""
    row = tl.program_id(0).to(tl.int64)
    grid_dependency_wait(PDL)
    c = tl.arange(0, BLOCK_C)
    m = c < C
    h = tl.load(h_ptr + row * s_h + c, mask=m, other=0.0).to(tl.float32)
    if HAS_DELTA:
        HT = h_out_ptr.dtype.element_ty
        if SPLITS == 0:
            d = tl.load(d_ptr + row * s_d + c, mask=m, other=0.0).to(tl.float32)
        else:
            d = tl.zeros((BLOCK_C,), tl.float32)
            for s in tl.static_range(SPLITS):
                d += tl.load(d_ptr + s * s_ds + row * s_d + c, mask=m, other=0.0)
        h = cast(h + d, HT, EMULATE)
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
    tl.store(o_ptr + row * s_o + f, cast(silu_mul_f32(gate, up), o_ptr.dtype.element_ty, EMULATE), mask=m)


def _rows(t: Tensor) -> Tensor:
    """(..., C) → (rows, C) with unit stride in C (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def add_rms_norm(h: Tensor, delta, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(h + delta, RMSNorm(h + delta)·weight): h (..., C) is the residual stream (any float dtype, kept),
    delta (..., C) a branch output, a branch's last product still as its K splits' fp32 partials
    (`kernels.skinny.SplitPartials`: summed here in split order, added to h unrounded), or None (then h is
    returned as is); the normed output is in weight's dtype. One launch, one program per row."""
    from kernels.skinny import SplitPartials

    C = h.shape[-1]
    if weight.shape != (C,) or (delta is not None and tuple(delta.shape) != tuple(h.shape)):
        raise ValueError(f"add_rms_norm: h {tuple(h.shape)}, delta "
                         f"{None if delta is None else tuple(delta.shape)}, weight {tuple(weight.shape)}")
    h2 = _rows(h)
    splits, s_ds = 0, 0
    if isinstance(delta, SplitPartials):
        if delta.device != h.device:
            raise ValueError(f"add_rms_norm: h on {h.device}, delta's partials on {delta.device}")
        d2, splits, s_ds = delta.ws[0], delta.ws.shape[0], delta.ws.stride(0)
    else:
        d2 = _rows(delta) if delta is not None else h2
    h_out = torch.empty_like(h2) if delta is not None else h2
    y = torch.empty(h2.shape, device=h.device, dtype=weight.dtype)
    block_c = triton.next_power_of_2(C)
    launch(_add_rms_norm_kernel, (h2.shape[0],), h2, d2, weight, h_out, y, h2.stride(0), d2.stride(0), s_ds,
           h_out.stride(0), y.stride(0), C, eps, HAS_DELTA=delta is not None, SPLITS=splits, BLOCK_C=block_c,
           EMULATE=INTERPRETED, num_warps=min(16, max(1, block_c // 256)), **pdl_meta(h))
    return h_out.view(h.shape), y.view(h.shape)


add_rms_norm.takes_partials = True  # model.layers.Glue.norm hands it a SplitPartials delta as it is


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


@triton.jit
def _mamba2_conv_step_kernel(p_ptr, st_ptr, w_ptr, cb_ptr, dtb_ptr, alog_ptr, xbc_ptr, dt_ptr, adt_ptr,
                             s_pb, s_sb, s_sc, s_xb, s_db, CONV_DIM, XBC_OFF, DT_OFF, H,
                             D_CONV: tl.constexpr, D_P: tl.constexpr, BLOCK: tl.constexpr, BLOCK_H: tl.constexpr,
                             PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Row pid 0, channels [pid 1·BLOCK, +BLOCK): the conv window shifted by the new input, the depthwise
    conv + bias + SiLU, and (programs pid 1 = 0) Δ = softplus(dd_dt + dt_bias), a·Δ = −exp(A_log)·Δ.
    The shifted window is read whole, as a (BLOCK, D_P) tile, and written back after a barrier: no thread
    overwrites a column another has yet to read, whatever layouts the compiler picks for the two."""
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cm = c < CONV_DIM
    j = tl.arange(0, D_P)
    live = cm[:, None] & (j < D_CONV)[None, :]
    # the conv weights and biases are never written by a kernel: loaded before waiting on the one before
    w = tl.load(w_ptr + c[:, None] * D_CONV + j[None, :], mask=live, other=0.0)
    bias = tl.load(cb_ptr + c, mask=cm, other=0.0)
    grid_dependency_wait(PDL)
    st = st_ptr + row * s_sb + c[:, None] * s_sc + j[None, :]
    new = tl.load(p_ptr + row * s_pb + XBC_OFF + c, mask=cm, other=0.0)
    # window column j = the held column j + 1, the last one the new input
    held = tl.load(st + 1, mask=cm[:, None] & (j < D_CONV - 1)[None, :], other=0.0)
    window = tl.where((j == D_CONV - 1)[None, :], new[:, None], held)
    acc = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1) + bias.to(tl.float32)
    tl.debug_barrier()
    tl.store(st, window, mask=live)
    out = acc / (1.0 + tl.exp(-acc))
    tl.store(xbc_ptr + row * s_xb + c, cast(out, xbc_ptr.dtype.element_ty, EMULATE), mask=cm)
    if tl.program_id(1) == 0:
        h = tl.arange(0, BLOCK_H)
        hm = h < H
        dd = tl.load(p_ptr + row * s_pb + DT_OFF + h, mask=hm, other=0.0).to(tl.float32)
        dt = softplus(dd + tl.load(dtb_ptr + h, mask=hm, other=0.0).to(tl.float32))
        a = -tl.exp(tl.load(alog_ptr + h, mask=hm, other=0.0).to(tl.float32))
        tl.store(dt_ptr + row * s_db + h, dt, mask=hm)
        tl.store(adt_ptr + row * s_db + h, a * dt, mask=hm)


def _conv_prologue_operands(name: str, proj: Tensor, proj_dims: int, conv_state: Tensor, weight: Tensor,
                            bias: Tensor, dt_bias: Tensor, A_log: Tensor, xbc_offset: int, dt_offset: int,
                            also_refused: bool = False) -> tuple[int, int, int, int]:
    """(b, conv_dim, d_conv, H) of a Mamba-2 conv prologue's operands (`mamba2_conv_step`, `mamba2_conv_prefill`),
    after checking that they fit one another: proj of `proj_dims` dimensions, unit stride along its last, holding
    the conv inputs and dd_dt at the offsets, the state's dtype; ValueError naming `name` otherwise, or when the
    caller's own checks (`also_refused`) fail."""
    b, conv_dim, d_conv = conv_state.shape
    H = dt_bias.shape[0]
    if (also_refused or proj.dim() != proj_dims or proj.shape[0] != b or proj.stride(-1) != 1
            or conv_state.stride(2) != 1 or weight.shape != (conv_dim, 1, d_conv) or bias.shape != (conv_dim,)
            or A_log.shape != (H,) or max(xbc_offset + conv_dim, dt_offset + H) > proj.shape[-1]
            or conv_state.dtype != proj.dtype):
        raise ValueError(f"{name}: proj {tuple(proj.shape)} {proj.dtype}, conv_state "
                         f"{tuple(conv_state.shape)} {conv_state.dtype}, weight {tuple(weight.shape)}, bias "
                         f"{tuple(bias.shape)}, A_log {tuple(A_log.shape)}, offsets {xbc_offset}, {dt_offset}")
    return b, conv_dim, d_conv, H


def mamba2_conv_step(proj: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor, dt_bias: Tensor,
                     A_log: Tensor, *, xbc_offset: int, dt_offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-2's decode prologue in one launch. proj (b, d_proj): the in_proj row, holding the conv input
    xBC (conv_dim channels at `xbc_offset`) and dd_dt (H at `dt_offset`); conv_state (b, conv_dim, d_conv),
    the last d_conv conv inputs, shifted by one and given the new input in place; weight (conv_dim, 1,
    d_conv) and bias (conv_dim,) of the depthwise conv; dt_bias, A_log (H,).
    → (SiLU(conv) (b, conv_dim) in proj's dtype, Δ (b, H) fp32, a·Δ (b, H) fp32). Twin: the T = 1 case of
    `model.mamba2.Mamba2Mixer._inputs` (F.conv1d + SiLU, softplus, −exp(A_log)·Δ), accumulated in fp32."""
    b, conv_dim, d_conv, H = _conv_prologue_operands("mamba2_conv_step", proj, 2, conv_state, weight, bias, dt_bias,
                                                     A_log, xbc_offset, dt_offset)
    xbc = torch.empty(b, conv_dim, device=proj.device, dtype=proj.dtype)
    dt = torch.empty(b, H, device=proj.device, dtype=torch.float32)
    adt = torch.empty_like(dt)
    block = max(32, min(triton.next_power_of_2(conv_dim), 4096 if INTERPRETED else 512))
    launch(_mamba2_conv_step_kernel, (b, triton.cdiv(conv_dim, block)), proj, conv_state, weight.contiguous(),
           bias, dt_bias, A_log, xbc, dt, adt, proj.stride(0), conv_state.stride(0), conv_state.stride(1),
           xbc.stride(0), dt.stride(0), conv_dim, xbc_offset, dt_offset, H, D_CONV=d_conv,
           D_P=triton.next_power_of_2(d_conv), BLOCK=block, BLOCK_H=triton.next_power_of_2(H), EMULATE=INTERPRETED,
           num_warps=min(4, block // 32), **pdl_meta(proj))
    return xbc, dt, adt


@triton.jit
def _mamba2_conv_prefill_kernel(p_ptr, st_ptr, w_ptr, cb_ptr, dtb_ptr, alog_ptr, xbc_ptr, dt_ptr, adt_ptr,
                                T, s_pb, s_pt, s_sb, s_sc, s_xb, s_xt, s_db, s_dt, CONV_DIM, XBC_OFF, DT_OFF, H,
                                D_CONV: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                                BLOCK_H: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Sequence pid 0 // T-blocks, tokens [BLOCK_T·(pid 0 mod T-blocks), +BLOCK_T), channels [pid 1·BLOCK_C,
    +BLOCK_C): the depthwise causal conv + bias + SiLU over the conv inputs of proj, the d_conv − 1 held in
    the conv state standing before the first token; and (programs pid 1 = 0) Δ and a·Δ of those tokens. The
    state is only read here (its update, the last d_conv inputs, follows the launch)."""
    nt = tl.cdiv(T, BLOCK_T)
    row = (tl.program_id(0) // nt).to(tl.int64)
    t = (tl.program_id(0) % nt) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CONV_DIM
    tm = t < T
    bias = tl.load(cb_ptr + c, mask=cm, other=0.0).to(tl.float32)  # never written by a kernel: before the wait
    grid_dependency_wait(PDL)
    acc = tl.zeros((BLOCK_T, BLOCK_C), tl.float32) + bias[None, :]
    p_row = p_ptr + row * s_pb + XBC_OFF
    for j in tl.static_range(D_CONV):
        s = t - (D_CONV - 1) + j  # the input this tap reads: a token of proj, or (s < 0) one the state holds
        w = tl.load(w_ptr + c * D_CONV + j, mask=cm, other=0.0).to(tl.float32)
        new = tl.load(p_row + s[:, None].to(tl.int64) * s_pt + c[None, :], mask=((s >= 0) & tm)[:, None] & cm[None, :],
                      other=0.0)
        held = tl.load(st_ptr + row * s_sb + c[None, :] * s_sc + (D_CONV + s)[:, None],
                       mask=((s < 0) & tm)[:, None] & cm[None, :], other=0.0)
        acc += (new.to(tl.float32) + held.to(tl.float32)) * w[None, :]
    out = acc / (1.0 + tl.exp(-acc))
    m = tm[:, None] & cm[None, :]
    tl.store(xbc_ptr + row * s_xb + t[:, None].to(tl.int64) * s_xt + c[None, :],
             cast(out, xbc_ptr.dtype.element_ty, EMULATE), mask=m)
    if tl.program_id(1) == 0:
        h = tl.arange(0, BLOCK_H)
        mh = tm[:, None] & (h < H)[None, :]
        dd = tl.load(p_ptr + row * s_pb + t[:, None].to(tl.int64) * s_pt + DT_OFF + h[None, :], mask=mh,
                     other=0.0).to(tl.float32)
        dt = softplus(dd + tl.load(dtb_ptr + h, mask=h < H, other=0.0).to(tl.float32)[None, :])
        a = -tl.exp(tl.load(alog_ptr + h, mask=h < H, other=0.0).to(tl.float32))
        o = row * s_db + t[:, None].to(tl.int64) * s_dt + h[None, :]
        tl.store(dt_ptr + o, dt, mask=mh)
        tl.store(adt_ptr + o, a[None, :] * dt, mask=mh)


# (tokens, channels) a `mamba2_conv_prefill` program takes on a GPU (the interpreter takes larger ones). 16 × 256
# builds at 244 registers for sm_90 (Triton 3.6), 16 × 128 at 140, 8 × 256 at 156; only 16 × 256 was timed (H200,
# 1,125 µs a layer at 128 × 512, 0.24 of the copy rate; docs/benchmarks.md, seventeenth session).
MAMBA2_CONV_PREFILL_TILE = (16, 256)


def mamba2_conv_prefill(proj: Tensor, conv_state: Tensor, weight: Tensor, bias: Tensor, dt_bias: Tensor,
                        A_log: Tensor, *, xbc_offset: int, dt_offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-2's prefill prologue: `mamba2_conv_step` for T tokens at once. proj (b, T, d_proj), fp32 or 16-bit,
    unit stride along its last axis; conv_state (b, conv_dim, d_conv), the last d_conv conv inputs before these
    tokens, replaced by the last d_conv after them. → (SiLU(conv) (b, T, conv_dim) in proj's dtype, Δ (b, T, H)
    fp32, a·Δ (b, T, H) fp32), computed in fp32. One launch and the state's tail copy, where the twin
    (`Mamba2Mixer._inputs`: concatenation, F.conv1d, SiLU, the transposes' copies) made several passes over the
    conv inputs (H200, Mamba-2 1.5B prefill at 128 × 512: ≈ 8 ms a layer of 22 ms)."""
    b, conv_dim, d_conv, H = _conv_prologue_operands(
        "mamba2_conv_prefill", proj, 3, conv_state, weight, bias, dt_bias, A_log, xbc_offset, dt_offset,
        also_refused=dt_bias.dim() != 1 or min(xbc_offset, dt_offset) < 0 or proj.dtype == torch.float64)
    T = proj.shape[1]
    xbc = torch.empty(b, T, conv_dim, device=proj.device, dtype=proj.dtype)
    dt = torch.empty(b, T, H, device=proj.device, dtype=torch.float32)
    adt = torch.empty_like(dt)
    if T == 0:
        return xbc, dt, adt
    tile_t, tile_c = (64, 4096) if INTERPRETED else MAMBA2_CONV_PREFILL_TILE
    block_t, block_c = tile_t, max(32, min(triton.next_power_of_2(conv_dim), tile_c))
    launch(_mamba2_conv_prefill_kernel, (b * triton.cdiv(T, block_t), triton.cdiv(conv_dim, block_c)), proj,
           conv_state, weight.contiguous(), bias, dt_bias, A_log, xbc, dt, adt, T, proj.stride(0), proj.stride(1),
           conv_state.stride(0), conv_state.stride(1), xbc.stride(0), xbc.stride(1), dt.stride(0), dt.stride(1),
           conv_dim, xbc_offset, dt_offset, H, D_CONV=d_conv, BLOCK_T=block_t, BLOCK_C=block_c,
           BLOCK_H=triton.next_power_of_2(H), EMULATE=INTERPRETED, num_warps=4, **pdl_meta(proj))
    new = proj[..., xbc_offset:xbc_offset + conv_dim].transpose(1, 2)  # (b, conv_dim, T), a view
    if T >= d_conv:
        conv_state.copy_(new[..., T - d_conv:])
    else:  # the state keeps its last d_conv − T inputs before the new ones
        conv_state.copy_(torch.cat([conv_state[..., T:], new], dim=-1))
    return xbc, dt, adt


@triton.jit
def _bc_norm(p_ptr, o_ptr, w_ptr, rows, rm, s_p, s_o, OFF, RG, eps, RG_P: tl.constexpr, N: tl.constexpr,
             N_P: tl.constexpr, EMULATE: tl.constexpr):
    """RMSNorm over N of each (row, r·g) slice of the in_proj rows at column OFF, times w (N,), in fp32;
    stored in o's dtype at (row, r·g, n). N_P: N padded to a power of two."""
    rg = tl.arange(0, RG_P)
    n = tl.arange(0, N_P)
    m3 = rm[:, None, None] & (rg < RG)[None, :, None] & (n < N)[None, None, :]
    col = rg[None, :, None] * N + n[None, None, :]
    v = tl.load(p_ptr + rows[:, None, None] * s_p + OFF + col, mask=m3, other=0.0).to(tl.float32)
    rs = 1.0 / tl.sqrt(tl.sum(v * v, axis=2) / N + eps)
    w = tl.load(w_ptr + n, mask=n < N, other=0.0).to(tl.float32)
    y = v * rs[:, :, None] * w[None, None, :]
    tl.store(o_ptr + rows[:, None, None] * s_o + col, cast(y, o_ptr.dtype.element_ty, EMULATE), mask=m3)


@triton.jit
def _mamba3_preprocess_kernel(p_ptr, dtb_ptr, wb_ptr, wc_ptr, b_ptr, c_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
                              M, s_p, s_bc, s_h, s_s, B_OFF, C_OFF, DT_OFF, S_OFF, RG, H, S, a_floor, eps,
                              RG_P: tl.constexpr, N: tl.constexpr, N_P: tl.constexpr, H_P: tl.constexpr,
                              S_P: tl.constexpr,
                              BLOCK_M: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Rows [pid·BLOCK_M, +BLOCK_M) of the in_proj output: B and C RMSNorm, and the activations Δ =
    softplus(dd_dt + dt_bias), a·Δ = min(−φ(dd_A), −a_floor)·Δ, λ = sigmoid(trap), θ = π·tanh(angles),
    in fp32 (the formulas of the fused decode step, `step._step_kernel`)."""
    grid_dependency_wait(PDL)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rm = rows < M
    rows = rows.to(tl.int64)
    _bc_norm(p_ptr, b_ptr, wb_ptr, rows, rm, s_p, s_bc, B_OFF, RG, eps, RG_P, N, N_P, EMULATE)
    _bc_norm(p_ptr, c_ptr, wc_ptr, rows, rm, s_p, s_bc, C_OFF, RG, eps, RG_P, N, N_P, EMULATE)
    h = tl.arange(0, H_P)
    mh = rm[:, None] & (h < H)[None, :]
    at = p_ptr + rows[:, None] * s_p + DT_OFF + h[None, :]
    dt = softplus(tl.load(at, mask=mh, other=0.0).to(tl.float32)
                  + tl.load(dtb_ptr + h, mask=h < H, other=0.0)[None, :])
    out = rows[:, None] * s_h + h[None, :]
    tl.store(dt_ptr + out, dt, mask=mh)
    tl.store(adt_ptr + out, decay_rate(tl.load(at + H, mask=mh, other=0.0).to(tl.float32), a_floor) * dt, mask=mh)
    tl.store(lam_ptr + out, tl.sigmoid(tl.load(at + 2 * H, mask=mh, other=0.0).to(tl.float32)), mask=mh)
    s = tl.arange(0, S_P)
    ms = rm[:, None] & (s < S)[None, :]
    th = tl.load(p_ptr + rows[:, None] * s_p + S_OFF + s[None, :], mask=ms, other=0.0).to(tl.float32)
    tl.store(th_ptr + rows[:, None] * s_s + s[None, :], pi_tanh(th), mask=ms)


def mamba3_preprocess(proj: Tensor, *, dt_bias: Tensor, B_norm_weight: Tensor, C_norm_weight: Tensor, heads: int,
                      headdim: int, d_state: int, rank: int, n_angles: int, a_floor: float = 1e-4,
                      eps: float = 1e-5) -> dict:
    """`kernels.mamba3.reference.preprocess` in one launch: proj (..., d_proj) split as [z, x, B, C, dd_dt,
    dd_A, trap, angles] → x, z (..., H, P) (views of proj), B, C (..., R, G, N) after RMSNorm (fp32 maths,
    the norm weight's dtype out), and fp32 dt, adt, lam (..., H), theta (..., S). Replaces about thirty
    elementwise kernels per Mamba-3 layer of a prefill; θ is computed as π·(2·sigmoid(2·angles) − 1), as
    the fused decode step does."""
    H, P, N, R, S = heads, headdim, d_state, rank, n_angles
    G = proj_groups(proj.shape[-1], H, P, N, R, S)
    if B_norm_weight.shape != (N,) or C_norm_weight.shape != (N,) or dt_bias.shape != (H,):
        raise ValueError(f"mamba3_preprocess: norm weights {tuple(B_norm_weight.shape)}, "
                         f"{tuple(C_norm_weight.shape)} must be ({N},) and dt_bias {tuple(dt_bias.shape)} ({H},)")
    lead = proj.shape[:-1]
    p2 = _rows(proj)
    M, dev = p2.shape[0], proj.device
    f32 = torch.float32
    B = torch.empty(M, R * G, N, device=dev, dtype=B_norm_weight.dtype)
    C = torch.empty(M, R * G, N, device=dev, dtype=C_norm_weight.dtype)
    dt, adt, lam = (torch.empty(M, H, device=dev, dtype=f32) for _ in range(3))
    theta = torch.empty(M, S, device=dev, dtype=f32)
    bc = R * G * N
    b_off = 2 * H * P
    n_p = triton.next_power_of_2(N)
    block_m = max(1, min(16, 2048 // (triton.next_power_of_2(R * G) * n_p)))
    if M:
        launch(_mamba3_preprocess_kernel, (triton.cdiv(M, block_m),), p2, dt_bias.to(f32).contiguous(),
               B_norm_weight.contiguous(), C_norm_weight.contiguous(), B, C, dt, adt, lam, theta, M, p2.stride(0),
               B.stride(0), dt.stride(0), max(theta.stride(0), 1), b_off, b_off + bc, b_off + 2 * bc,
               b_off + 2 * bc + 3 * H, R * G, H, S, float(a_floor), float(eps), RG_P=triton.next_power_of_2(R * G),
               N=N, N_P=n_p, H_P=triton.next_power_of_2(H), S_P=triton.next_power_of_2(max(S, 1)), BLOCK_M=block_m,
               EMULATE=INTERPRETED, num_warps=4, **pdl_meta(proj))
    z, x = proj[..., :H * P], proj[..., H * P:2 * H * P]
    return dict(x=x.unflatten(-1, (H, P)), z=z.unflatten(-1, (H, P)), B=B.view(*lead, R, G, N),
                C=C.view(*lead, R, G, N), dt=dt.view(*lead, H), adt=adt.view(*lead, H), lam=lam.view(*lead, H),
                theta=theta.view(*lead, S))
