"""Chunk-parallel prefill scan for Mamba-3 (SISO and MIMO) and Mamba-2 (spec §3.2/§3.3), an experiment
beside `chunk.py`.

`chunk.scan_chunked` runs one program per (batch, head) that walks the chunks in order with the state in
registers, so a batch-1 prompt of a few hundred tokens has 64 programs on a 132-SM GPU, each a chain of
small dependent products. This splits the same algebra into three launches, as the state-space-duality
decomposition does:

A chunk's rows are (time, rank) pairs, as in `chunk.py` (one row per token for SISO and Mamba-2).

1. `_states_kernel`, one program per (batch·head, chunk, P-block): the chunk's own contribution to the state,
   U_c = Σ_j e^{ℓ_last−ℓ_j} σ̂_j v_j k_jᵀ (P × N, fp32), and its decay e^{ℓ_last}.
2. `_pass_kernel`, one program per (batch·head, block of P·N): the carried state at every chunk start,
   S_c = e^{ℓ_last(c−1)} S_{c−1} + U_{c−1} from the initial state (the cached token folded in, spec §7.5),
   written over U_c; the last one is the final state.
3. `_outputs_kernel`, one program per (batch·head, chunk, P-block):
   y_i = e^{ℓ_i} S_c q_i + Σ_j mask_ij (q_i·k_j) v_j + D v_i, gated (and summed over ranks by mimo_o), as
   `chunk.py`'s chunk body.

Angles: each chunk starts from the running angle Φ at its start, computed on the host side of the launch
(`chunk_offsets`: per-chunk sums of Δθ in float64, an exclusive cumulative sum, wrapped to [0, 2π)), so
the chunks need no order. The final angle and the rotated last key are computed the same way.

Status: correct against the token loop under the interpreter and at real shapes on an H200
(tests/kernels/test_mamba3_ssd.py), and slower than the model's path nearly everywhere (H200, one layer,
2026-12-01, docs/benchmarks.md: SISO 1 × 512 0.77×, 128 × 512 0.45×, MIMO R=4 0.38–0.65×; it won only
against the plain chunked scan, at SISO 1 × 2048, 1.10×, and Mamba-2 1 × 512, 1.17×, and the model now
cuts those prompts into 4 segments, against which SISO's ratios are 0.62× at 1 × 512 and 0.60× at 1 × 2048).
The model runs it only inside `segmented.chunk_parallel()`, the A/B of `kernels.bench_model`. Memory: the carried states
take b·H·⌈T/chunk⌉·P·N fp32 (`carried_bytes`; 128 × 512 tokens, 64 heads: 2 GiB with SISO's 64-token
chunks, 8 GiB with MIMO R = 4's 16-token ones).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.chunk import (_biased, _chunk_rows, _chunk_store, _chunk_values, _intra_weights, check_chunk,
                                  final_state_for, scan_shapes)
from kernels.mamba3.reference import ScanState, _heads_of_groups, _rank_expand, rotate
from kernels.mamba3.tl_utils import INTERPRETED, cast, cos_sin, launch, mimo_operands, mm, pair_partners

TWO_PI = 2.0 * math.pi


@triton.jit
def _chunk_setup(dt_ptr, adt_ptr, lam_ptr, T, NC, sB_b, sB_t, sB_r, sB_g, H: tl.constexpr, G: tl.constexpr,
                 R: tl.constexpr, P: tl.constexpr, N: tl.constexpr, S: tl.constexpr, BLOCK_T: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr):
    """What both per-chunk kernels start from (grid: batch·head, chunk, P-block): batch (int64), head,
    batch·head, chunk, its first token; its rows, (time, rank) pairs as in `chunk.py`, with their time and
    rank; this program's P indices; the state coordinates with their rotation pairs; the rows' scalars
    (`chunk._chunk_rows`: validity, rank-0 rows, Δ, γ, σ̂, ℓ); the B/C row offsets; and the offsets of the
    chunk's start angles and of its θ rows."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    bh = bi * H + h
    rows = tl.arange(0, BLOCK_T * BLOCK_R)
    t_loc = rows // BLOCK_R
    rr = rows % BLOCK_R
    t0 = c * BLOCK_T
    t = t0 + t_loc
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    rot, ai, partner, sgn = pair_partners(n, N, S, INTERLEAVED)
    rvalid, first, dt, gamma, sigma, ell, ell_last = _chunk_rows(dt_ptr, adt_ptr, lam_ptr, bi, h, t0, t_loc, rr, T, H,
                                                                  R)
    row = bi * sB_b + t[:, None] * sB_t + rr[:, None] * sB_r + (h // (H // G)) * sB_g
    return (bi, h, bh, c, t0, t_loc, t, rr, ps, ps < P, n, n < N, rot, ai, partner, sgn, rvalid, first, dt, gamma,
            sigma, ell, ell_last, row, (bi * NC + c) * H * S + h * S, (bi * T + t) * S)


@triton.jit
def _rotated(ptr, bias_ptr, row, rr, n, partner, rot, ai, sgn, off_ptr, off_base, dt, th_ptr, th_row, rvalid,
             first, nmask, N: tl.constexpr, S: tl.constexpr, sB_n, EMULATE: tl.constexpr):
    """Biased keys or queries of a chunk's rows (ROWS, BLOCK_N), rotated by the angles Φ at each token: the
    chunk's starting angle plus the cumulative Δθ inside it (counted on rank-0 rows, so every rank of a
    token gets its angle). `bias_ptr` points at this head's (R, N) biases."""
    m_rn = rvalid[:, None] & nmask[None, :]
    v = _biased(ptr, row + n[None, :] * sB_n, bias_ptr, rr[:, None] * N + n[None, :], m_rn)
    if S > 0:
        m_rot = rvalid[:, None] & rot[None, :]
        v_p = _biased(ptr, row + partner[None, :] * sB_n, bias_ptr, rr[:, None] * N + partner[None, :], m_rot)
        th = tl.load(th_ptr + th_row[:, None] + ai[None, :], mask=first[:, None] & rot[None, :], other=0.0)
        start = tl.load(off_ptr + off_base + ai, mask=rot, other=0.0)
        phi = start[None, :] + tl.cumsum(dt[:, None] * th, axis=0)
        cos, sin = cos_sin(phi, EMULATE)
        sin = tl.where(rot[None, :], sin * sgn[None, :], 0.0)
        cos = tl.where(rot[None, :], cos, 1.0)
        v = v * cos + v_p * sin
    return v


@triton.jit
def _states_kernel(
    x_ptr, B_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr, Bb_ptr, mx_ptr, off_ptr, u_ptr, dec_ptr,
    T, NC, sx_b, sx_t, sx_h, sx_p, sB_b, sB_t, sB_r, sB_g, sB_n,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr, S: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERLEAVED: tl.constexpr, MIMO: tl.constexpr, WIDE: tl.constexpr, EMULATE: tl.constexpr,
):
    (bi, h, bh, c, t0, t_loc, t, rr, ps, pmask, n, nmask, rot, ai, partner, sgn, rvalid, first, dt, gamma, sigma,
     ell, ell_last, row, off_base, th_row) = _chunk_setup(dt_ptr, adt_ptr, lam_ptr, T, NC, sB_b, sB_t, sB_r, sB_g,
                                                          H, G, R, P, N, S, BLOCK_T, BLOCK_R, BLOCK_P, BLOCK_N,
                                                          INTERLEAVED)
    DT = x_ptr.dtype.element_ty
    k = _rotated(B_ptr, Bb_ptr + h * R * N, row, rr, n, partner, rot, ai, sgn, off_ptr, off_base, dt, th_ptr,
                 th_row, rvalid, first, nmask, N, S, sB_n, EMULATE)
    _, v = _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, rvalid[:, None] & pmask[None, :], sx_b, sx_t, sx_h,
                         sx_p, R, P, MIMO)
    vw = tl.trans(v * (tl.exp(ell_last - ell) * sigma)[:, None])  # (BLOCK_P, ROWS)
    u = mm(vw, k, DT, WIDE, EMULATE)
    tl.store(u_ptr + ((bh * NC + c) * P + ps[:, None]) * N + n[None, :], u, mask=pmask[:, None] & nmask[None, :])
    tl.store(dec_ptr + bh * NC + c, tl.exp(ell_last))


@triton.jit
def _pass_kernel(u_ptr, dec_ptr, s0_ptr, s1_ptr, NC, PN: tl.constexpr, BLOCK_E: tl.constexpr,
                 HAS_STATE: tl.constexpr, EMULATE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    emask = e < PN
    carry = tl.zeros((BLOCK_E,), tl.float32)
    if HAS_STATE:
        carry = tl.load(s0_ptr + bh * PN + e, mask=emask, other=0.0)
    for c in range(0, NC):
        slot = u_ptr + (bh * NC + c) * PN + e
        u = tl.load(slot, mask=emask, other=0.0)
        tl.store(slot, carry, mask=emask)
        carry = carry * tl.load(dec_ptr + bh * NC + c) + u
    tl.store(s1_ptr + bh * PN + e, cast(carry, s1_ptr.dtype.element_ty, EMULATE), mask=emask)


@triton.jit
def _outputs_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr, Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    off_ptr, s_ptr, o_ptr,
    T, NC, sx_b, sx_t, sx_h, sx_p, sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, sB_b, sB_t, sB_r, sB_g, sB_n,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr, S: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr, MIMO: tl.constexpr, WIDE: tl.constexpr, EMULATE: tl.constexpr,
):
    (bi, h, bh, c, t0, t_loc, t, rr, ps, pmask, n, nmask, rot, ai, partner, sgn, rvalid, first, dt, gamma, sigma,
     ell, ell_last, row, off_base, th_row) = _chunk_setup(dt_ptr, adt_ptr, lam_ptr, T, NC, sB_b, sB_t, sB_r, sB_g,
                                                          H, G, R, P, N, S, BLOCK_T, BLOCK_R, BLOCK_P, BLOCK_N,
                                                          INTERLEAVED)
    DT = x_ptr.dtype.element_ty
    k = _rotated(B_ptr, Bb_ptr + h * R * N, row, rr, n, partner, rot, ai, sgn, off_ptr, off_base, dt, th_ptr,
                 th_row, rvalid, first, nmask, N, S, sB_n, EMULATE)
    q = _rotated(C_ptr, Cb_ptr + h * R * N, row, rr, n, partner, rot, ai, sgn, off_ptr, off_base, dt, th_ptr,
                 th_row, rvalid, first, nmask, N, S, sB_n, EMULATE)
    m_rp = rvalid[:, None] & pmask[None, :]
    _, v = _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, m_rp, sx_b, sx_t, sx_h, sx_p, R, P, MIMO)
    s = tl.load(s_ptr + ((bh * NC + c) * P + ps[:, None]) * N + n[None, :], mask=pmask[:, None] & nmask[None, :],
                other=0.0)
    qk = mm(q, tl.trans(k), DT, WIDE, EMULATE)
    y = mm(qk * _intra_weights(t_loc, ell, sigma, gamma), v, DT, WIDE, EMULATE)
    y += tl.exp(ell)[:, None] * mm(q, tl.trans(s), DT, WIDE, EMULATE) + tl.load(D_ptr + h).to(tl.float32) * v
    _chunk_store(y, z_ptr, mz_ptr, mo_ptr, o_ptr, bi, h, t0, t_loc, rr, ps, m_rp, pmask, T,
                 sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, P, R, BLOCK_T, BLOCK_R, BLOCK_P,
                 HAS_Z, MIMO, EMULATE)


def default_chunk(R: int) -> int:
    """Tokens per chunk `scan_ssd` takes by default: 64 rows of (time, rank) pairs."""
    return max(1, 64 // triton.next_power_of_2(R))


def carried_bytes(b: int, T: int, H: int, P: int, N: int, R: int = 1, chunk_size: int | None = None) -> int:
    """Bytes of the carried-state buffer `scan_ssd` allocates: one fp32 P × N state per (b, H, chunk)."""
    return b * H * -(-T // (chunk_size or default_chunk(R))) * P * N * 4


def chunk_offsets(dt: Tensor, theta: Tensor, angle0: Tensor | None, chunk: int) -> tuple[Tensor, Tensor]:
    """(Φ at the start of every chunk (b, ⌈T/chunk⌉, H, S) fp32, the final Φ (b, H, S) fp32): the per-chunk
    sums of Δ·θ in float64, their exclusive cumulative sum from `angle0`, wrapped to [0, 2π)."""
    b, T, H = dt.shape
    S = theta.shape[-1]
    nc = -(-T // chunk)
    pad = nc * chunk - T
    d = torch.nn.functional.pad(dt.double(), (0, 0, 0, pad)).view(b, nc, chunk, H)
    th = torch.nn.functional.pad(theta.double(), (0, 0, 0, pad)).view(b, nc, chunk, S)
    sums = torch.einsum("bcqh,bcqs->bchs", d, th)
    base = torch.zeros(b, H, S, dtype=torch.float64, device=dt.device) if angle0 is None else angle0.double()
    ends = base[:, None] + torch.cumsum(sums, dim=1)
    starts = torch.cat([base[:, None], ends[:, :-1]], dim=1)
    return torch.remainder(starts, TWO_PI).float(), torch.remainder(ends[:, -1], TWO_PI).float()


def scan_ssd(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None, mimo_o=None,
             pairing="interleaved", state: ScanState | None = None, chunk_size: int | None = None,
             out: Tensor | None = None, final_state: ScanState | None = None, dot_precision: str = "tf32",
             num_warps: int = 8, block_p: int | None = None) -> tuple[Tensor, ScanState]:
    """`chunk.scan_chunked`, chunk-parallel (module docstring): same tensors (MIMO included), meaning,
    `out` / `final_state` (which may alias `state`) and `dot_precision`. chunk_size: tokens per chunk, a
    power of two whose rows (chunk_size · R', R' = R rounded up to a power of two) are at least 16; default
    64 rows (64 tokens SISO, 16 for R = 4); at most 32 rows with dot_precision="input", as `scan_chunked`
    refuses larger bf16 dots. The defaults, 64 rows and 8 warps, are the largest chunk whose output kernel
    builds for sm_90 without spilling for SISO bf16 inputs with tf32 dots and P ≤ 64 (Triton 3.6 and 3.7:
    241 and 255 registers, 112 KiB of shared memory); with 4 warps it spills, 128 rows spill with 8, and so
    do fp32 inputs (exact fp32 dots) and P = 128 (one program holds all of P by default). block_p: P rows
    per program of the two per-chunk kernels (a power of two ≥ 16; default all of P): smaller blocks make
    more programs, each rotating the chunk's keys and queries again."""
    b, T, H, P, R, G, N, S = scan_shapes(x, B, theta, pairing, dot_precision, mimo_x, mimo_z, mimo_o)
    block_r = triton.next_power_of_2(R)
    chunk_size = chunk_size or default_chunk(R)
    check_chunk(chunk_size, block_r, dot_precision, x.dtype)
    dev, f32 = x.device, torch.float32
    if B.stride() != C.stride():
        B, C = B.contiguous(), C.contiguous()
    dt, adt, lam, theta = (t.to(f32).contiguous() for t in (dt, adt, lam, theta))
    if (B_bias is None) != (C_bias is None):
        raise ValueError("scan_ssd: give both B_bias and C_bias, or neither")
    if B_bias is None:  # no biases (Mamba-2's, as `chunk.scan_chunked` takes them): zeros here
        B_bias = C_bias = torch.zeros(H, R, N, device=x.device, dtype=f32)
    Bb, Cb, Dh = (t.to(f32).contiguous() for t in (B_bias, C_bias, D))
    mx, mz, mo = mimo_operands(mimo_x, mimo_z, mimo_o, z is not None, Dh)
    if out is None:
        out = torch.empty(b, T, H, P, device=dev, dtype=x.dtype)
    elif tuple(out.shape) != (b, T, H, P) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"scan_ssd: out {tuple(out.shape)} {out.dtype}, expected {(b, T, H, P)} {x.dtype}")
    final_state = final_state_for(x, state, final_state, R, N, S)

    # everything read from `state` is read before `final_state` (which may be the same tensors) is written
    starts, angle1 = chunk_offsets(dt, theta, None if state is None else state.angle, chunk_size)
    carry0 = None
    if state is not None:
        delta0 = ((1.0 - lam[:, 0]) * dt[:, 0])[..., None, None]  # (b, H, 1, 1)
        x0 = _rank_expand(state.x.to(f32), None if mimo_x is None else mimo_x.to(f32))  # (b, R, H, P)
        carry0 = (state.ssm.to(f32)
                  + delta0 * torch.einsum("brhp,brhn->bhpn", x0, state.k.to(f32))).contiguous()
    k1 = rotate(_heads_of_groups(B[:, -1].to(f32), H) + Bb.transpose(0, 1), angle1[:, None], pairing)

    nc = triton.cdiv(T, chunk_size)
    u = torch.empty(b, H, nc, P, N, device=dev, dtype=f32)  # carried_bytes(b, T, H, P, N, R, chunk_size)
    dec = torch.empty(b, H, nc, device=dev, dtype=f32)
    block_n = max(16, triton.next_power_of_2(N))  # dots need 16
    if block_p is None:
        block_p = max(16, triton.next_power_of_2(P))
    elif block_p < 16 or block_p & (block_p - 1):
        raise ValueError(f"block_p must be a power of two >= 16, got {block_p}")
    common = dict(H=H, G=G, R=R, P=P, N=N, S=S, BLOCK_T=chunk_size, BLOCK_R=block_r, BLOCK_P=block_p,
                  BLOCK_N=block_n, INTERLEAVED=pairing == "interleaved", MIMO=mimo_x is not None,
                  WIDE=dot_precision == "tf32", EMULATE=INTERPRETED, num_warps=num_warps, num_stages=1)
    b_strides = B.stride()
    grid = (b * H, nc, triton.cdiv(P, block_p))
    launch(_states_kernel, grid, x, B, dt, adt, lam, theta, Bb, mx, starts, u, dec,
           T, nc, *x.stride(), *b_strides, **common)
    block_e = min(1024, triton.next_power_of_2(P * N))
    launch(_pass_kernel, (b * H, triton.cdiv(P * N, block_e)), u, dec, carry0 if carry0 is not None else u,
           final_state.ssm, nc, PN=P * N, BLOCK_E=block_e, HAS_STATE=carry0 is not None, EMULATE=INTERPRETED,
           num_warps=4)
    zz = z if z is not None else x
    launch(_outputs_kernel, grid, x, zz, B, C, dt, adt, lam, theta, Bb, Cb, Dh, mx, mz, mo, starts, u, out,
           T, nc, *x.stride(), *zz.stride(), *out.stride(), *b_strides, HAS_Z=z is not None, **common)
    final_state.angle.copy_(angle1)
    final_state.k.copy_(k1)
    final_state.x.copy_(x[:, -1])
    return out, final_state
