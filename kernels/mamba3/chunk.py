"""Triton chunked prefill scan for Mamba-3, SISO and MIMO (spec §3.2/§3.3); Mamba-2 with λ = 1, S = 0.

One program per (batch, head, P-block) walks the chunks in order with the P×N fp32 state in registers.
A chunk holds `chunk_size` time steps × R ranks as rows (MIMO rows are (time, rank) pairs, so the
intra-chunk products are the SISO tiles with R-times as many rows). Per chunk: decay cumsum, angle
cumsum (running offset wrapped mod 2π), bias + rotation of B/C, the masked QKᵀ term, the inter-chunk
term e^ℓ·S q, D skip, gate, mimo_o reduction, then the state update.

Rotation mixes state coordinates in pairs. Two kernels handle that differently:
- `_chunk_scan_kernel` (SISO, Mamba-2): keys, queries and the state are whole N-wide tiles and every
  product is one dot with K = N. Interleaved pairs (SISO's) rotate as the two halves of a (rows, N/2, 2)
  view, one angle per pair; half-split pairs read each coordinate's partner a second time (an L1 hit). The
  state is held transposed (N × P): Triton 3.6 cannot build the state update's dot with the rotated view
  as its right operand (an illegal shared layout), but does as its left. The per-head biases are read once.
  On an H200, against partner reads for every pair, biases read per chunk and the state P × N, SISO 128 ×
  512 went 7.41 → 6.82 ms a layer (−8 %); Mamba-2, which does not rotate, 5.22 → 4.33 ms (−17 %) from the
  biases read once and the transposed state. The last token's key and x, which the decode cache takes, are
  read again after the loop (the key rotated by the final angle) rather than stored under a mask every chunk,
  which kept the rotated key live through the loop body: sm_90 spill 80 → 8 B, SISO 6.78 → 6.34 ms, and on
  32-row chunks (SISO's default since, `default_tile`) 5.69 ms. Rotating pairs of bf16 B/C are read as 32-bit
  words and unpacked in the layout they were loaded in (`pair_words`), where the (rows, N/2, 2) view of a
  16-bit tile cost a layout conversion of every loaded tile: 5.70 → 5.14 ms, bit for bit the same. Without
  biases (None, Mamba-2's) the kernel neither reads nor adds them: Mamba-2 4.28 → 3.59 ms (H200, one layer at
  128 × 512, docs/benchmarks.md "thirteenth session").
- `_chunk_scan_pairs_kernel` (MIMO): B/C/state columns are held as two N/2-wide tiles, the first and
  the second coordinate of every pair, so rotating is elementwise and every product is a sum of two
  dots. With R = 4 rows per time step the partner reads and per-coordinate angles of the first kernel
  cost more than its fewer dots save (H200, 128 × 512 tokens: 40.9 vs 25.3 ms a layer). It computes a chunk's
  outputs P-major, (P, rows) (`p_major`, the default): the readout as state · queriesᵀ and the intra-chunk term as
  valuesᵀ · (keys · queriesᵀ ∘ weightsᵀ), so that the state, the values and the state update's weighted values are
  left operands held in registers (sm_90: warpgroup MMAs with A from registers) and only keys, queries and the
  weighted scores are staged through shared memory; the last token's caches are read again after the loop. MIMO,
  one layer at 128 × 512 with bf16 dots: 17.45 → 14.69 ms; the whole 1.5B prefill 675 → 603 ms (H200). SISO on it
  (`pair_split=True`, interleaved bf16 pairs read as words) ties the whole-N kernel at 128 × 512 (3.71 ms), gains 11 %
  at 16 × 2048, but its whole-model prefill is 2–5 % slower at 128 × 512, so SISO keeps the whole-N kernel here
  (the model's prefill takes this one for plain SISO scans of 2048 tokens or more: `segmented.with_pair_split`).
  `p_major` does not apply to the whole-N kernel (True is refused there, False is what it does).

Matmuls run in the input dtype (bf16 tensor cores, or exact fp32 for fp32 inputs) with fp32 accumulation;
the state, decays, angles and scalars stay fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.reference import ScanState
from kernels.mamba3.tl_utils import (INTERPRETED, cast, cos_sin, launch, mimo_operands, mm, pair_partners, sm_count,
                                     wrap_angle)

TWO_PI = 2.0 * math.pi


@triton.jit
def _biased(ptr, off, bias_ptr, bias_off, mask):
    v = tl.load(ptr + off, mask=mask, other=0.0).to(tl.float32)
    return v + tl.load(bias_ptr + bias_off, mask=mask, other=0.0)


@triton.jit
def _program(H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
             BLOCK_P: tl.constexpr):
    """This program's P-block, batch (int64: batch offsets pass 2**31 elements at 128 × 2048 tokens of
    in_proj views), head, group, batch·head, and its chunk rows: index, time within the chunk, rank;
    its P indices and their mask."""
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    rows = tl.arange(0, BLOCK_T * BLOCK_R)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    return pid_p, bi, h, h // (H // G), bi * H + h, rows, rows // BLOCK_R, rows % BLOCK_R, ps, ps < P


@triton.jit
def _chunk_rows(dt_ptr, adt_ptr, lam_ptr, bi, h, t0, t_loc, rr, T, H: tl.constexpr, R: tl.constexpr):
    """Per-row scalars of the chunk from token t0 (rows are (time, rank) pairs, time t0 + t_loc): validity, Δ,
    γ, σ̂ (shifted across chunk boundaries), ℓ (in-chunk cumulative log-decay, from rank-0 rows only) and its
    total. Addresses are a scalar (int64) base plus int32 offsets within the chunk, as in every helper here: the
    batch and token offsets need int64, the in-chunk ones do not (the sm_90 builds were no smaller for it)."""
    rvalid = (t0 + t_loc < T) & (rr < R)
    first = rvalid & (rr == 0)
    base = (bi * T + t0) * H + h
    sc = t_loc * H
    dt = tl.load(dt_ptr + base + sc, mask=rvalid, other=0.0)
    adt = tl.load(adt_ptr + base + sc, mask=first, other=0.0)
    lam = tl.load(lam_ptr + base + sc, mask=rvalid, other=0.0)
    nvalid = rvalid & (t0 + t_loc + 1 < T)
    dt_n = tl.load(dt_ptr + base + (sc + H), mask=nvalid, other=0.0)
    lam_n = tl.load(lam_ptr + base + (sc + H), mask=nvalid, other=0.0)
    gamma = lam * dt
    sigma = gamma + (1.0 - lam_n) * dt_n
    return rvalid, first, dt, gamma, sigma, tl.cumsum(adt, axis=0), tl.sum(adt, axis=0)


@triton.jit
def _cached_token(lam_ptr, dt_ptr, x0_ptr, mx_ptr, bi, h, bh, ps, pmask, T, H: tl.constexpr, R: tl.constexpr,
                  P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, MIMO: tl.constexpr):
    """What folding the cached token into the initial state needs, S⁰ + δ_0 Σ_r (x⁰ ⊙ mimo_x_r) k⁰_rᵀ
    without α_0 (spec §7.5): the rank indices and mask, δ_0 and the per-rank x⁰ (BLOCK_R, BLOCK_P)."""
    rk = tl.arange(0, BLOCK_R)
    rkmask = rk < R
    delta0 = (1.0 - tl.load(lam_ptr + bi * T * H + h)) * tl.load(dt_ptr + bi * T * H + h)
    x0 = tl.load(x0_ptr + bh * P + ps, mask=pmask, other=0.0).to(tl.float32)
    xr0 = tl.zeros((BLOCK_R, BLOCK_P), tl.float32) + x0[None, :]
    if MIMO:
        xr0 = xr0 * tl.load(mx_ptr + (h * R + rk[:, None]) * P + ps[None, :],
                            mask=rkmask[:, None] & pmask[None, :], other=0.0)
    return rk, rkmask, delta0, xr0


@triton.jit
def _rows_axis(v, BY_P: tl.constexpr):
    """A per-row vector as a chunk tile's row axis: (ROWS, 1), or (1, ROWS) in a P-major tile (BY_P)."""
    if BY_P:
        out = v[None, :]
    else:
        out = v[:, None]
    return out


@triton.jit
def _p_axis(v, BY_P: tl.constexpr):
    """A per-P vector as a chunk tile's P axis: (1, BLOCK_P), or (BLOCK_P, 1) in a P-major tile (BY_P)."""
    if BY_P:
        out = v[:, None]
    else:
        out = v[None, :]
    return out


@triton.jit
def _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, m_rp, sx_b, sx_t, sx_h, sx_p, R: tl.constexpr,
                  P: tl.constexpr, MIMO: tl.constexpr, BY_P: tl.constexpr = False):
    """A chunk's x (ROWS, BLOCK_P) as read, and the values v it feeds the scan (x ⊙ mimo_x_r for MIMO); both
    (BLOCK_P, ROWS), read in that orientation, when BY_P (`m_rp` the mask in the tile's orientation)."""
    xb = x_ptr + bi * sx_b + tl.cast(t0, tl.int64) * sx_t + h * sx_h
    xv = tl.load(xb + (_rows_axis(t_loc, BY_P) * sx_t + _p_axis(ps, BY_P) * sx_p), mask=m_rp,
                 other=0.0).to(tl.float32)
    v = xv
    if MIMO:
        v = xv * tl.load(mx_ptr + (h * R + _rows_axis(rr, BY_P)) * P + _p_axis(ps, BY_P), mask=m_rp, other=0.0)
    return xv, v


@triton.jit
def _store_last_x(x1_ptr, xv, last, rr, rows, bh, ps, pmask, P: tl.constexpr, EMULATE: tl.constexpr):
    """The raw x of the sequence's last token (rank-0 row) into the cache."""
    xmask = (last & (rr == 0))[:, None] & pmask[None, :]
    xout = x1_ptr + bh * P + ps[None, :] + 0 * rows[:, None]
    tl.store(xout, cast(xv, x1_ptr.dtype.element_ty, EMULATE), mask=xmask)


@triton.jit
def _intra_weights(t_loc, ell, sigma, gamma):
    """(ROWS, ROWS) weights of the intra-chunk term: e^{ℓi−ℓj}·σ̂j for earlier times, γ on the same
    time (all rank pairs), 0 after."""
    ti = t_loc[:, None]
    tj = t_loc[None, :]
    decay = tl.exp(tl.minimum(ell[:, None] - ell[None, :], 0.0))
    return tl.where(ti > tj, decay * sigma[None, :], tl.where(ti == tj, gamma[None, :], 0.0))


@triton.jit
def _intra_weights_t(t_loc, ell, sigma, gamma):
    """`_intra_weights` transposed, (ROWS_j, ROWS_i): the weight of row j's value in row i's output."""
    tj = t_loc[:, None]
    ti = t_loc[None, :]
    decay = tl.exp(tl.minimum(ell[None, :] - ell[:, None], 0.0))
    return tl.where(ti > tj, decay * sigma[:, None], tl.where(ti == tj, gamma[:, None], 0.0))


@triton.jit
def _head_bias(bias_ptr, h, rr, cols, cmask, R: tl.constexpr, N: tl.constexpr, BLOCK_R: tl.constexpr,
               HAS_BIAS: tl.constexpr):
    """Head h's bias (H, R, N) at state coordinates `cols`: one row (1, C) with one rank, else a row per chunk
    row's rank (rr); 0.0 without biases (Mamba-2's: nothing read, nothing added)."""
    if not HAS_BIAS:
        bias = 0.0
    elif BLOCK_R == 1:
        bias = tl.load(bias_ptr + h * N + cols, mask=cmask, other=0.0)[None, :]
    else:
        bias = tl.load(bias_ptr + (h * R + rr[:, None]) * N + cols[None, :], mask=(rr < R)[:, None] & cmask[None, :],
                       other=0.0)
    return bias


@triton.jit
def _rotate_halves(a, b, cos, sin, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The (ROWS, BLOCK_N) tile whose interleaved pairs (2i, 2i+1) are (a, b)[:, i] rotated by the angle of
    cos/sin[:, i]."""
    return tl.reshape(tl.join(a * cos - b * sin, a * sin + b * cos), (ROWS, BLOCK_N))


@triton.jit
def _rotate_pairs(v, cos, sin, ROWS: tl.constexpr, BLOCK_N: tl.constexpr):
    """v (ROWS, BLOCK_N) with each interleaved pair (2i, 2i+1) rotated by the angle of cos/sin[:, i]."""
    a, b = tl.split(tl.reshape(v, (ROWS, BLOCK_N // 2, 2)))
    return _rotate_halves(a, b, cos, sin, ROWS, BLOCK_N)


@triton.jit
def _unpack_pairs(words, bias_a, bias_b):
    """32-bit words each holding a bf16 pair (coordinate 2i in the low half, 2i+1 in the high half) → the two
    coordinates in fp32, biased."""
    a = (words << 16).to(tl.float32, bitcast=True)
    b = (words & 0xFFFF0000).to(tl.float32, bitcast=True)
    return a + bias_a, b + bias_b


@triton.jit
def _chunk_store(y, z_ptr, mz_ptr, mo_ptr, o_ptr, bi, h, t0, t_loc, rr, ps, m_rp, pmask, T,
                 sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, P: tl.constexpr, R: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, HAS_Z: tl.constexpr,
                 MIMO: tl.constexpr, EMULATE: tl.constexpr, BY_P: tl.constexpr = False):
    """SiLU(z) gate (z per rank for MIMO), mimo_o, the sum over ranks, and the store of a chunk's outputs y
    (ROWS, BLOCK_P), or (BLOCK_P, ROWS) when BY_P (`m_rp` the mask in the tile's orientation)."""
    t_ax = _rows_axis(t_loc, BY_P)
    p_ax = _p_axis(ps, BY_P)
    if HAS_Z:
        zb = z_ptr + bi * sz_b + tl.cast(t0, tl.int64) * sz_t + h * sz_h
        zv = tl.load(zb + (t_ax * sz_t + p_ax * sz_p), mask=m_rp, other=0.0).to(tl.float32)
        if MIMO:
            zv = zv * tl.load(mz_ptr + (h * R + _rows_axis(rr, BY_P)) * P + p_ax, mask=m_rp, other=0.0)
        y = y * zv * tl.sigmoid(zv)
    if MIMO:
        y = y * tl.load(mo_ptr + (h * R + _rows_axis(rr, BY_P)) * P + p_ax, mask=m_rp, other=0.0)
    if BLOCK_R > 1:
        if BY_P:
            y = tl.sum(tl.reshape(y, (BLOCK_P, BLOCK_T, BLOCK_R)), axis=2)
        else:
            y = tl.sum(tl.reshape(y, (BLOCK_T, BLOCK_R, BLOCK_P)), axis=1)
    to = _rows_axis(tl.arange(0, BLOCK_T), BY_P)
    ob = o_ptr + bi * so_b + tl.cast(t0, tl.int64) * so_t + h * so_h
    tl.store(ob + (to * so_t + p_ax * so_p), cast(y, o_ptr.dtype.element_ty, EMULATE),
             mask=(t0 + to < T) & _p_axis(pmask, BY_P))


@triton.jit
def _chunk_scan_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
    Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    o_ptr, s0_ptr, a0_ptr, k0_ptr, x0_ptr, s1_ptr, a1_ptr, k1_ptr, x1_ptr,
    T,
    sx_b, sx_t, sx_h, sx_p, sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p,
    sB_b, sB_t, sB_r, sB_g, sB_n, wB_b, wB_t, wB_r, wB_g,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_STATE: tl.constexpr, MIMO: tl.constexpr, EMULATE: tl.constexpr,
    OUTPUTS: tl.constexpr, PAIR_LOAD: tl.constexpr, HAS_BIAS: tl.constexpr,
    WIDE_QK: tl.constexpr, WIDE_INTRA: tl.constexpr, WIDE_READOUT: tl.constexpr, WIDE_UPDATE: tl.constexpr,
):
    # WIDE_*: each product's operands in tf32 (else in the input dtype): `scan_chunked`'s `input_dots`
    pid_p, bi, h, g, bh, rows, t_loc, rr, ps, pmask = _program(H, G, P, BLOCK_T, BLOCK_R, BLOCK_P)
    DT = x_ptr.dtype.element_ty
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    # angles (spec §1.4). Interleaved pairs (2i, 2i+1) rotate as the two halves of a (rows, N/2, 2) view of a
    # tile, one angle per pair. Half-split pairs (i, i + N/2): every coordinate n with its pair partner, its
    # angle index and the sign of its sin term, the partner read a second time, the rotation elementwise.
    rot, ai, partner, sgn = pair_partners(n, N, S, INTERLEAVED)
    if INTERLEAVED:
        a_idx = tl.arange(0, BLOCK_N // 2)
        amask = a_idx < S
        a_last = amask
    else:
        a_idx = ai
        amask = rot
        a_last = rot & (sgn < 0)  # each angle once
    # the per-head biases of B and C, read once (`_head_bias`); the partners' (half-split pairs) per chunk,
    # at bias_q
    bias_q = (h * R + rr[:, None]) * N + partner[None, :]

    s = tl.zeros((BLOCK_N, BLOCK_P), tl.float32)  # the state transposed: N × P
    off = tl.zeros(a_idx.shape, tl.float32)  # running angle of each pair, wrapped
    D_h = tl.load(D_ptr + h).to(tl.float32)
    # the state's offsets (N × P) within this head's, and their mask; made again for the final store, so
    # that no (N, P) tile of them stays live through the chunk loop
    s_head = bh * P * N
    s_rel = ps[None, :] * N + n[:, None]
    mnp = nmask[:, None] & pmask[None, :]

    if HAS_STATE:
        s = tl.load(s0_ptr + s_head + s_rel, mask=mnp, other=0.0).to(tl.float32)
        off = tl.load(a0_ptr + bh * S + a_idx, mask=amask, other=0.0).to(tl.float32)
        rk, rkmask, delta0, xr0 = _cached_token(lam_ptr, dt_ptr, x0_ptr, mx_ptr, bi, h, bh, ps, pmask, T, H, R, P,
                                                BLOCK_R, BLOCK_P, MIMO)
        k0 = tl.load(k0_ptr + ((bi * R + rk[:, None]) * H + h) * N + n[None, :],
                     mask=rkmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
        s += delta0 * tl.sum(k0[:, :, None] * xr0[:, None, :], axis=0)

    # B/C offsets within a chunk (int32); B and C share strides
    bc_in = t_loc[:, None] * sB_t + rr[:, None] * sB_r
    bc_rel = bc_in + n[None, :] * sB_n
    bc_partner = bc_in + partner[None, :] * sB_n
    if PAIR_LOAD:
        # rotating interleaved pairs of 16-bit B/C (contiguous along N, every stride and base even): each pair
        # read as one 32-bit word, its coordinates (2i: low half, 2i+1: high half) unpacked in the layout they
        # were loaded in, so that no reshape of the loaded tile is needed before the rotation. Offsets in words
        # (wB_*: the strides halved), so that the compiler sees their alignment and vectorises the loads.
        B32 = B_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)
        C32 = C_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)
        hmask = a_idx < N // 2
        bc_pair = t_loc[:, None] * wB_t + rr[:, None] * wB_r + a_idx[None, :]
        kb_a = _head_bias(Bb_ptr, h, rr, 2 * a_idx, hmask, R, N, BLOCK_R, HAS_BIAS)
        kb_b = _head_bias(Bb_ptr, h, rr, 2 * a_idx + 1, hmask, R, N, BLOCK_R, HAS_BIAS)
        if OUTPUTS:
            qb_a = _head_bias(Cb_ptr, h, rr, 2 * a_idx, hmask, R, N, BLOCK_R, HAS_BIAS)
            qb_b = _head_bias(Cb_ptr, h, rr, 2 * a_idx + 1, hmask, R, N, BLOCK_R, HAS_BIAS)
    else:
        kb = _head_bias(Bb_ptr, h, rr, n, nmask, R, N, BLOCK_R, HAS_BIAS)
        if OUTPUTS:
            qb = _head_bias(Cb_ptr, h, rr, n, nmask, R, N, BLOCK_R, HAS_BIAS)
    for t0 in range(0, T, BLOCK_T):
        rvalid, first, dt, gamma, sigma, ell, ell_last = _chunk_rows(dt_ptr, adt_ptr, lam_ptr, bi, h, t0, t_loc,
                                                                      rr, T, H, R)

        # biased keys/queries (ROWS, BLOCK_N), rotated
        if PAIR_LOAD:
            m_rh = rvalid[:, None] & hmask[None, :]
            chunk_w = bi * wB_b + tl.cast(t0, tl.int64) * wB_t + g * wB_g
            k_a, k_b = _unpack_pairs(tl.load(B32 + chunk_w + bc_pair, mask=m_rh, other=0), kb_a, kb_b)
            if OUTPUTS:
                q_a, q_b = _unpack_pairs(tl.load(C32 + chunk_w + bc_pair, mask=m_rh, other=0), qb_a, qb_b)
        else:
            m_rn = rvalid[:, None] & nmask[None, :]
            chunk_bc = bi * sB_b + tl.cast(t0, tl.int64) * sB_t + g * sB_g
            k = tl.load(B_ptr + chunk_bc + bc_rel, mask=m_rn, other=0.0).to(tl.float32) + kb
            if OUTPUTS:
                q = tl.load(C_ptr + chunk_bc + bc_rel, mask=m_rn, other=0.0).to(tl.float32) + qb
        if S > 0:
            th = tl.load(th_ptr + (bi * T + t0) * S + (t_loc[:, None] * S + a_idx[None, :]),
                         mask=first[:, None] & amask[None, :], other=0.0)
            inc = dt[:, None] * th  # zero off rank-0 rows and unrotated pairs
            phi = off[None, :] + tl.cumsum(inc, axis=0)
            off = wrap_angle(off + tl.sum(inc, axis=0))
            cos, sin = cos_sin(phi, EMULATE)
            cos = tl.where(amask[None, :], cos, 1.0)
            if PAIR_LOAD:
                sin = tl.where(amask[None, :], sin, 0.0)
                k = _rotate_halves(k_a, k_b, cos, sin, BLOCK_T * BLOCK_R, BLOCK_N)
                if OUTPUTS:
                    q = _rotate_halves(q_a, q_b, cos, sin, BLOCK_T * BLOCK_R, BLOCK_N)
            elif INTERLEAVED:
                sin = tl.where(amask[None, :], sin, 0.0)
                k = _rotate_pairs(k, cos, sin, BLOCK_T * BLOCK_R, BLOCK_N)
                if OUTPUTS:
                    q = _rotate_pairs(q, cos, sin, BLOCK_T * BLOCK_R, BLOCK_N)
            else:
                m_rot = rvalid[:, None] & rot[None, :]
                sin = tl.where(rot[None, :], sin * sgn[None, :], 0.0)
                k = k * cos + _biased(B_ptr + chunk_bc, bc_partner, Bb_ptr, bias_q, m_rot) * sin
                if OUTPUTS:
                    q = q * cos + _biased(C_ptr + chunk_bc, bc_partner, Cb_ptr, bias_q, m_rot) * sin

        m_rp = rvalid[:, None] & pmask[None, :]
        xv, v = _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, m_rp, sx_b, sx_t, sx_h, sx_p, R, P, MIMO)

        if OUTPUTS:
            # intra-chunk: e^{ℓi−ℓj}·σ̂j for earlier times, γ on the same time (all rank pairs)
            qk = mm(q, tl.trans(k), DT, WIDE_QK, EMULATE)
            y = mm(qk * _intra_weights(t_loc, ell, sigma, gamma), v, DT, WIDE_INTRA, EMULATE)
            # inter-chunk: e^{ℓi} S q_i
            y += tl.exp(ell)[:, None] * mm(q, s, DT, WIDE_READOUT, EMULATE) + D_h * v
            _chunk_store(y, z_ptr, mz_ptr, mo_ptr, o_ptr, bi, h, t0, t_loc, rr, ps, m_rp, pmask, T,
                         sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, P, R, BLOCK_T, BLOCK_R, BLOCK_P,
                         HAS_Z, MIMO, EMULATE)

        # state passing: S ← e^{ℓ_last} S + Σ_j e^{ℓ_last−ℓ_j} σ̂_j v_j k_jᵀ
        vw = v * (tl.exp(ell_last - ell) * sigma)[:, None]  # (ROWS, BLOCK_P)
        s = s * tl.exp(ell_last) + mm(tl.trans(k), vw, DT, WIDE_UPDATE, EMULATE)

    s_rel = ps[None, :] * N + n[:, None]
    mnp = nmask[:, None] & pmask[None, :]
    tl.store(s1_ptr + s_head + s_rel, cast(s, s1_ptr.dtype.element_ty, EMULATE), mask=mnp)
    # caches of the last token, read again here rather than kept from the loop: its key (all ranks)
    # rotated by the final angle, and its raw x
    rk = tl.arange(0, BLOCK_R)
    m_kn = (rk < R)[:, None] & nmask[None, :] & (pid_p == 0)
    last_t = tl.cast(T - 1, tl.int64)  # T·stride passes 2**31 for long segments of in_proj views
    row = bi * sB_b + last_t * sB_t + rk[:, None] * sB_r + g * sB_g
    bias_k = (h * R + rk[:, None]) * N
    k = (tl.load(B_ptr + row + n[None, :] * sB_n, mask=m_kn, other=0.0).to(tl.float32)
         + _head_bias(Bb_ptr, h, rk, n, nmask, R, N, BLOCK_R, HAS_BIAS))
    if S > 0:
        tl.store(a1_ptr + bh * S + a_idx, off, mask=a_last & (pid_p == 0))
        cos, sin = cos_sin(off, EMULATE)
        cos = tl.where(amask, cos, 1.0)[None, :]
        if INTERLEAVED:
            k = _rotate_pairs(k, cos, tl.where(amask, sin, 0.0)[None, :], BLOCK_R, BLOCK_N)
        else:
            m_rot = m_kn & rot[None, :]
            sin = tl.where(rot, sin * sgn, 0.0)[None, :]
            k = k * cos + _biased(B_ptr, row + partner[None, :] * sB_n, Bb_ptr, bias_k + partner[None, :], m_rot) * sin
    tl.store(k1_ptr + ((bi * R + rk[:, None]) * H + h) * N + n[None, :], cast(k, k1_ptr.dtype.element_ty, EMULATE),
             mask=m_kn)
    x_last = tl.load(x_ptr + bi * sx_b + last_t * sx_t + h * sx_h + ps * sx_p, mask=pmask)
    tl.store(x1_ptr + bh * P + ps, cast(x_last, x1_ptr.dtype.element_ty, EMULATE), mask=pmask)


@triton.jit
def _chunk_scan_pairs_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
    Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    o_ptr, s0_ptr, a0_ptr, k0_ptr, x0_ptr, s1_ptr, a1_ptr, k1_ptr, x1_ptr,
    T,
    sx_b, sx_t, sx_h, sx_p, sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p,
    sB_b, sB_t, sB_r, sB_g, sB_n, wB_b, wB_t, wB_r, wB_g,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_H: tl.constexpr, INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_STATE: tl.constexpr, MIMO: tl.constexpr, WIDE: tl.constexpr, EMULATE: tl.constexpr,
    OUTPUTS: tl.constexpr, PAIR_LOAD: tl.constexpr, BY_P: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    # PAIR_LOAD: interleaved bf16 pairs read as 32-bit words (as the whole-N kernel's). BY_P: a chunk's outputs
    # computed P-major, (BLOCK_P, ROWS): the readout as state · queriesᵀ and the intra-chunk term as
    # valuesᵀ · (keys · queriesᵀ ∘ weightsᵀ), so that the state and the values are the left operands of their dots
    # (held in registers) and only keys, queries and the weighted scores are staged as right operands; the last
    # token's caches are then read again after the loop.
    pid_p, bi, h, g, bh, rows, t_loc, rr, ps, pmask = _program(H, G, P, BLOCK_T, BLOCK_R, BLOCK_P)
    DT = x_ptr.dtype.element_ty
    # pair i = state coordinates (ca[i], cb[i]), i < N/2; pairs i < S rotate by angle i (spec §1.4)
    ci = tl.arange(0, BLOCK_H)
    cmask = ci < N // 2
    amask = ci < S
    if INTERLEAVED:
        ca = 2 * ci
        cb = 2 * ci + 1
    else:
        ca = ci
        cb = N // 2 + ci

    s_a = tl.zeros((BLOCK_P, BLOCK_H), tl.float32)  # state columns ca
    s_b = tl.zeros((BLOCK_P, BLOCK_H), tl.float32)  # state columns cb
    off = tl.zeros((BLOCK_H,), tl.float32)  # running angle, wrapped
    D_h = tl.load(D_ptr + h).to(tl.float32)

    if HAS_STATE:
        mpc = pmask[:, None] & cmask[None, :]
        sbase = s0_ptr + bh * P * N + ps[:, None] * N
        s_a = tl.load(sbase + ca[None, :], mask=mpc, other=0.0).to(tl.float32)
        s_b = tl.load(sbase + cb[None, :], mask=mpc, other=0.0).to(tl.float32)
        off = tl.load(a0_ptr + bh * S + ci, mask=amask, other=0.0).to(tl.float32)
        rk, rkmask, delta0, xr0 = _cached_token(lam_ptr, dt_ptr, x0_ptr, mx_ptr, bi, h, bh, ps, pmask, T, H, R, P,
                                                BLOCK_R, BLOCK_P, MIMO)
        kbase = k0_ptr + ((bi * R + rk[:, None]) * H + h) * N
        mrc = rkmask[:, None] & cmask[None, :]
        k0a = tl.load(kbase + ca[None, :], mask=mrc, other=0.0).to(tl.float32)
        k0b = tl.load(kbase + cb[None, :], mask=mrc, other=0.0).to(tl.float32)
        s_a += delta0 * tl.sum(xr0[:, :, None] * k0a[:, None, :], axis=0)
        s_b += delta0 * tl.sum(xr0[:, :, None] * k0b[:, None, :], axis=0)

    bias_a = (h * R + rr[:, None]) * N + ca[None, :]  # (ROWS, BLOCK_H)
    bias_b = (h * R + rr[:, None]) * N + cb[None, :]
    if PAIR_LOAD:  # words of B/C (offsets in words, the strides halved: see the whole-N kernel)
        B32 = B_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)
        C32 = C_ptr.to(tl.pointer_type(tl.uint32), bitcast=True)
        bc_pair = t_loc[:, None] * wB_t + rr[:, None] * wB_r + ci[None, :]
    if BLOCK_R == 1 or not HAS_BIAS:  # one bias row each, held (none without biases)
        kb_a = _head_bias(Bb_ptr, h, rr, ca, cmask, R, N, BLOCK_R, HAS_BIAS)
        kb_b = _head_bias(Bb_ptr, h, rr, cb, cmask, R, N, BLOCK_R, HAS_BIAS)
        qb_a = _head_bias(Cb_ptr, h, rr, ca, cmask, R, N, BLOCK_R, HAS_BIAS)
        qb_b = _head_bias(Cb_ptr, h, rr, cb, cmask, R, N, BLOCK_R, HAS_BIAS)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + t_loc
        rvalid, first, dt, gamma, sigma, ell, ell_last = _chunk_rows(dt_ptr, adt_ptr, lam_ptr, bi, h, t0, t_loc,
                                                                      rr, T, H, R)

        # biased keys/queries, pair halves a and b: (ROWS, BLOCK_H); B and C share strides
        m_rc = rvalid[:, None] & cmask[None, :]
        if PAIR_LOAD:
            if BLOCK_R > 1 and HAS_BIAS:  # a rank's bias row for each chunk row, read each chunk (L1 hits)
                kb_a = tl.load(Bb_ptr + bias_a, mask=m_rc, other=0.0)
                kb_b = tl.load(Bb_ptr + bias_b, mask=m_rc, other=0.0)
                if OUTPUTS:
                    qb_a = tl.load(Cb_ptr + bias_a, mask=m_rc, other=0.0)
                    qb_b = tl.load(Cb_ptr + bias_b, mask=m_rc, other=0.0)
            chunk_w = bi * wB_b + tl.cast(t0, tl.int64) * wB_t + g * wB_g
            k_a, k_b = _unpack_pairs(tl.load(B32 + chunk_w + bc_pair, mask=m_rc, other=0), kb_a, kb_b)
            if OUTPUTS:
                q_a, q_b = _unpack_pairs(tl.load(C32 + chunk_w + bc_pair, mask=m_rc, other=0), qb_a, qb_b)
        else:
            row = bi * sB_b + t[:, None] * sB_t + rr[:, None] * sB_r + g * sB_g
            off_a = row + ca[None, :] * sB_n
            off_b = row + cb[None, :] * sB_n
            if BLOCK_R > 1 and HAS_BIAS:  # as above, each value beside its bias
                k_a = _biased(B_ptr, off_a, Bb_ptr, bias_a, m_rc)
                k_b = _biased(B_ptr, off_b, Bb_ptr, bias_b, m_rc)
                if OUTPUTS:
                    q_a = _biased(C_ptr, off_a, Cb_ptr, bias_a, m_rc)
                    q_b = _biased(C_ptr, off_b, Cb_ptr, bias_b, m_rc)
            else:
                k_a = tl.load(B_ptr + off_a, mask=m_rc, other=0.0).to(tl.float32) + kb_a
                k_b = tl.load(B_ptr + off_b, mask=m_rc, other=0.0).to(tl.float32) + kb_b
                if OUTPUTS:
                    q_a = tl.load(C_ptr + off_a, mask=m_rc, other=0.0).to(tl.float32) + qb_a
                    q_b = tl.load(C_ptr + off_b, mask=m_rc, other=0.0).to(tl.float32) + qb_b
        if S > 0:
            th = tl.load(th_ptr + (bi * T + t[:, None]) * S + ci[None, :],
                         mask=first[:, None] & amask[None, :], other=0.0)
            inc = dt[:, None] * th  # (ROWS, BLOCK_H), zero off rank-0 rows and unrotated pairs
            phi = off[None, :] + tl.cumsum(inc, axis=0)
            off = wrap_angle(off + tl.sum(inc, axis=0))
            cos, sin = cos_sin(phi, EMULATE)
            cos = tl.where(amask[None, :], cos, 1.0)
            sin = tl.where(amask[None, :], sin, 0.0)
            k_a, k_b = k_a * cos - k_b * sin, k_a * sin + k_b * cos
            if OUTPUTS:
                q_a, q_b = q_a * cos - q_b * sin, q_a * sin + q_b * cos

        carry = tl.exp(ell_last)
        if BY_P:
            m_pr = pmask[:, None] & rvalid[None, :]
            _, v = _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, m_pr, sx_b, sx_t, sx_h, sx_p, R, P, MIMO,
                                 True)
            if OUTPUTS:
                # intra-chunk, transposed: kq[j, i] = k_j · q_i, weighted by `_intra_weights_t`
                kq = mm(k_a, tl.trans(q_a), DT, WIDE, EMULATE) + mm(k_b, tl.trans(q_b), DT, WIDE, EMULATE)
                y = mm(v, kq * _intra_weights_t(t_loc, ell, sigma, gamma), DT, WIDE, EMULATE)
                # inter-chunk: e^{ℓi} S q_i, the state on the left
                sq = mm(s_a, tl.trans(q_a), DT, WIDE, EMULATE) + mm(s_b, tl.trans(q_b), DT, WIDE, EMULATE)
                y += tl.exp(ell)[None, :] * sq + D_h * v
                _chunk_store(y, z_ptr, mz_ptr, mo_ptr, o_ptr, bi, h, t0, t_loc, rr, ps, m_pr, pmask, T,
                             sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, P, R, BLOCK_T, BLOCK_R, BLOCK_P,
                             HAS_Z, MIMO, EMULATE, True)
            vw = v * (tl.exp(ell_last - ell) * sigma)[None, :]  # (BLOCK_P, ROWS)
        else:
            m_rp = rvalid[:, None] & pmask[None, :]
            xv, v = _chunk_values(x_ptr, mx_ptr, bi, h, t0, t_loc, rr, ps, m_rp, sx_b, sx_t, sx_h, sx_p, R, P,
                                  MIMO)
            if OUTPUTS:
                # intra-chunk: e^{ℓi−ℓj}·σ̂j for earlier times, γ on the same time (all rank pairs)
                qk = mm(q_a, tl.trans(k_a), DT, WIDE, EMULATE) + mm(q_b, tl.trans(k_b), DT, WIDE, EMULATE)
                y = mm(qk * _intra_weights(t_loc, ell, sigma, gamma), v, DT, WIDE, EMULATE)
                # inter-chunk: e^{ℓi} S q_i
                sq = mm(q_a, tl.trans(s_a), DT, WIDE, EMULATE) + mm(q_b, tl.trans(s_b), DT, WIDE, EMULATE)
                y += tl.exp(ell)[:, None] * sq + D_h * v
                _chunk_store(y, z_ptr, mz_ptr, mo_ptr, o_ptr, bi, h, t0, t_loc, rr, ps, m_rp, pmask, T,
                             sz_b, sz_t, sz_h, sz_p, so_b, so_t, so_h, so_p, P, R, BLOCK_T, BLOCK_R, BLOCK_P,
                             HAS_Z, MIMO, EMULATE)
            vw = tl.trans(v * (tl.exp(ell_last - ell) * sigma)[:, None])  # (BLOCK_P, ROWS)
            # caches of the last token: rotated key (all ranks) and raw x
            last = rvalid & (t == T - 1)
            kmask = last[:, None] & cmask[None, :] & (pid_p == 0)
            kout = k1_ptr + ((bi * R + rr[:, None]) * H + h) * N
            KT = k1_ptr.dtype.element_ty
            tl.store(kout + ca[None, :], cast(k_a, KT, EMULATE), mask=kmask)
            tl.store(kout + cb[None, :], cast(k_b, KT, EMULATE), mask=kmask)
            _store_last_x(x1_ptr, xv, last, rr, rows, bh, ps, pmask, P, EMULATE)

        # state passing: S ← e^{ℓ_last} S + Σ_j e^{ℓ_last−ℓ_j} σ̂_j v_j k_jᵀ
        s_a = s_a * carry + mm(vw, k_a, DT, WIDE, EMULATE)
        s_b = s_b * carry + mm(vw, k_b, DT, WIDE, EMULATE)

    out = s1_ptr + bh * P * N + ps[:, None] * N
    ST = s1_ptr.dtype.element_ty
    mpc = pmask[:, None] & cmask[None, :]
    tl.store(out + ca[None, :], cast(s_a, ST, EMULATE), mask=mpc)
    tl.store(out + cb[None, :], cast(s_b, ST, EMULATE), mask=mpc)
    if S > 0:
        tl.store(a1_ptr + bh * S + ci, off, mask=amask & (pid_p == 0))
    if BY_P:
        # caches of the last token, read again: its key (all ranks) rotated by the final angle, and its raw x
        rk = tl.arange(0, BLOCK_R)
        m_kc = (rk < R)[:, None] & cmask[None, :] & (pid_p == 0)
        last_t = tl.cast(T - 1, tl.int64)
        row = bi * sB_b + last_t * sB_t + rk[:, None] * sB_r + g * sB_g
        if HAS_BIAS:
            bias_k = (h * R + rk[:, None]) * N
            k_a = _biased(B_ptr, row + ca[None, :] * sB_n, Bb_ptr, bias_k + ca[None, :], m_kc)
            k_b = _biased(B_ptr, row + cb[None, :] * sB_n, Bb_ptr, bias_k + cb[None, :], m_kc)
        else:
            k_a = tl.load(B_ptr + row + ca[None, :] * sB_n, mask=m_kc, other=0.0).to(tl.float32)
            k_b = tl.load(B_ptr + row + cb[None, :] * sB_n, mask=m_kc, other=0.0).to(tl.float32)
        if S > 0:
            cos, sin = cos_sin(off, EMULATE)
            cos = tl.where(amask, cos, 1.0)[None, :]
            sin = tl.where(amask, sin, 0.0)[None, :]
            k_a, k_b = k_a * cos - k_b * sin, k_a * sin + k_b * cos
        kout = k1_ptr + ((bi * R + rk[:, None]) * H + h) * N
        KT = k1_ptr.dtype.element_ty
        tl.store(kout + ca[None, :], cast(k_a, KT, EMULATE), mask=m_kc)
        tl.store(kout + cb[None, :], cast(k_b, KT, EMULATE), mask=m_kc)
        x_last = tl.load(x_ptr + bi * sx_b + last_t * sx_t + h * sx_h + ps * sx_p, mask=pmask)
        tl.store(x1_ptr + bh * P + ps, cast(x_last, x1_ptr.dtype.element_ty, EMULATE), mask=pmask)


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(n, 1)))


def default_tile(b: int, H: int, P: int, R: int, device, angles: int = 0) -> tuple[int, int, int]:
    """(rows a chunk = chunk_size·R', block_p, num_warps) that `scan_chunked` takes by default: the
    fastest tf32 configurations of H200 sweeps. 16 rows, all of P (up to 64), 4 warps; rank 1 with rotary
    angles (SISO), 32 rows; MIMO (the pair-split kernel) with fewer sequence-heads than SMs: half of P, twice
    the programs. (That case took 32 rows at 8 warps, the fastest for one long sequence, until long prompts
    were segmented; for the short ones left to it 16 rows at 4 warps are faster: one layer at 1 × 511
    482 → 435 µs, 2 × 511 986 → 589.)

    SISO's 32 rows (H200, 2026-12-01, one layer at 1.5B shapes through `segmented.prefill`, from a CUDA graph,
    16 → 32 rows, ms): 128 × 512 6.34 → 5.69, 16 × 2048 3.22 → 2.86, 1 × 16384 2.46 → 2.10, 1 × 2048 0.353 →
    0.312; whole SISO 1.5B prefill 128 × 512 410 → 399, 1 × 2048 16.1 → 15.1; hybrid 128 × 512 393 → 380.
    64 rows spill (12.3 ms at 128 × 512). Mamba-2 (no angles) keeps 16: one layer 4.09 → 4.06 at 128 × 512,
    whole model 548 → 552 ms."""
    cuda = torch.device(device).type == "cuda"
    sms = sm_count(device) if cuda else 1
    if R > 1 and b * H < sms:
        return 16, min(_pow2(P), 32), 4
    return (32 if R == 1 and angles else 16), min(_pow2(P), 64), 4


DOT_PRECISIONS = ("tf32", "input")  # a scan's products: tf32 operands, or the input dtype's


def check_dot_precision(dot_precision: str) -> None:
    if dot_precision not in DOT_PRECISIONS:
        raise ValueError(f"dot_precision must be 'tf32' or 'input', got {dot_precision!r}")


def scan_shapes(x: Tensor, B: Tensor, theta: Tensor, pairing: str, dot_precision: str, mimo_x: Tensor | None,
                mimo_z: Tensor | None, mimo_o: Tensor | None) -> tuple[int, ...]:
    """(b, T, H, P, R, G, N, S) of a prefill scan's inputs, after the checks every Triton scan makes: the dot
    precision, at least one token, rotation pairs that fit N, and the MIMO projections that go with R."""
    check_dot_precision(dot_precision)
    b, T, H, P = x.shape
    R, G, N = B.shape[-3:]
    S = theta.shape[-1]
    if T < 1:
        raise ValueError("need at least one token")
    if pairing not in ("interleaved", "half") or 2 * S > N or N % 2:
        raise ValueError(f"bad pairing {pairing!r} for N = {N}, S = {S}")
    if (mimo_x is None) != (mimo_o is None) or (mimo_x is None and (R != 1 or mimo_z is not None)):
        raise ValueError("SISO needs R = 1 and no mimo_*; MIMO needs mimo_x and mimo_o")
    return b, T, H, P, R, G, N, S


def check_chunk(block_t: int, block_r: int, dot_precision: str, dtype: torch.dtype) -> None:
    """A chunk of `block_t` tokens × `block_r` (R rounded up to a power of two) rows, as a Triton scan takes
    it: block_t a power of two, at least 16 rows (tensor-core products), and at most 32 with bf16 dots."""
    if block_t & (block_t - 1) or block_t * block_r < 16:
        raise ValueError(f"chunk_size must be a power of two with chunk_size·R' >= 16 rows, got {block_t}")
    if dot_precision == "input" and dtype != torch.float32 and block_t * block_r > 32:
        # sm_90, Triton 3.6: 64-row chunks with bf16 dots made out-of-range shared-memory accesses
        # (compute-sanitizer), with and without rotary angles; 16 and 32 rows are clean
        raise ValueError(f"dot_precision='input' needs chunk_size·R' <= 32 rows, got {block_t * block_r}")


INPUT_DOTS = ("qk", "intra", "readout", "update")


def check_input_dots(input_dots, dot_precision: str, R: int) -> dict[str, bool]:
    """{product: tf32 operands?} for the whole-N kernel's four products (INPUT_DOTS), after checking
    `input_dots` (the products at the input precision although dot_precision is "tf32")."""
    if isinstance(input_dots, str):
        raise ValueError(f"input_dots takes a tuple of names, got the string {input_dots!r}")
    unknown = sorted(set(input_dots) - set(INPUT_DOTS))
    if unknown:
        raise ValueError(f"input_dots: unknown {', '.join(map(repr, unknown))}; valid: {', '.join(INPUT_DOTS)}")
    if input_dots and dot_precision != "tf32":
        raise ValueError(f"input_dots is for dot_precision='tf32' (every product is at the input precision "
                         f"with {dot_precision!r})")
    if input_dots and R > 1:
        raise ValueError("input_dots: the MIMO kernel (R > 1) takes one precision for every product")
    return {d: dot_precision == "tf32" and d not in input_dots for d in INPUT_DOTS}


def pair_words(B: Tensor, C: Tensor, pairing: str, S: int) -> bool:
    """Whether the whole-N kernel reads B/C's rotating interleaved pairs as 32-bit words: bf16 B and C,
    contiguous along N, every other stride (of a dimension longer than one) even, both 4-byte aligned."""
    if pairing != "interleaved" or S == 0 or B.dtype != torch.bfloat16 or C.dtype != torch.bfloat16:
        return False
    if B.stride(-1) != 1 or B.data_ptr() % 4 or C.data_ptr() % 4:
        return False
    return all(st % 2 == 0 for size, st in zip(B.shape[:-1], B.stride()[:-1]) if size > 1)


def final_state_for(x: Tensor, state: ScanState | None, final_state: ScanState | None, R: int, N: int,
                    S: int) -> ScanState:
    """The cache a prefill scan writes its final state into: `final_state` when given (every tensor must be
    contiguous), else a new one (the state in `state`'s dtype, fp32 without one; k and x in x's dtype)."""
    b, _, H, P = x.shape
    dev, f32 = x.device, torch.float32
    if final_state is None:
        ssm_dtype = state.ssm.dtype if state is not None else f32
        final_state = ScanState(angle=torch.empty(b, H, S, device=dev, dtype=f32),
                                ssm=torch.empty(b, H, P, N, device=dev, dtype=ssm_dtype),
                                k=torch.empty(b, R, H, N, device=dev, dtype=x.dtype),
                                x=torch.empty(b, H, P, device=dev, dtype=x.dtype))
    for name, t in zip(ScanState._fields, final_state):
        if not t.is_contiguous():
            raise ValueError(f"final_state.{name} must be contiguous")
    return final_state


def scan_chunked(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None,
                 mimo_o=None, pairing="interleaved", state: ScanState | None = None,
                 chunk_size: int | None = None, block_p: int | None = None, out: Tensor | None = None,
                 final_state: ScanState | None = None, dot_precision: str = "tf32",
                 num_warps: int | None = None, num_stages: int | None = None,
                 outputs: bool = True, input_dots: tuple[str, ...] = (), pair_split: bool | None = None,
                 p_major: bool | None = None) -> tuple[Tensor | None, ScanState]:
    """Triton twin of `reference.scan_chunked` (same tensors and meaning); B_bias and C_bias may both be None
    (no biases, as Mamba-2 has none: the SISO / Mamba-2 kernel then neither reads nor adds them).

    chunk_size: time steps per chunk (power of two, chunk_size·R' ≥ 16 with R' = R rounded up to a
    power of two); default 16 rows (chunk_size·R'), 32 for SISO (`default_tile`): the fastest tf32
    configurations measured on an H200; 64 rows spill registers and, with bf16 dots, are refused. block_p: P
    rows per program (default: all of P up to 64; 32 for MIMO with fewer sequence-heads than SMs).
    out / final_state: preallocated outputs to write into (the final state may alias `state`, e.g. a
    model's static cache). dot_precision, for 16-bit inputs:
    "tf32" multiplies with tf32 operands (p95 error ≈ 0.6% vs float64 at 1.5B head shapes), "input"
    rounds the operands to the input dtype (bf16 tensor cores, twice the rate; ≈ 1.7%). fp32 inputs
    always multiply in exact fp32.
    input_dots: with dot_precision="tf32", products of the whole-N kernel (SISO, Mamba-2) that round their
    operands to the input dtype all the same, named from INPUT_DOTS: "qk" (queries · keysᵀ), "intra" (the
    weighted scores · values), "readout" (queries · state), "update" (keysᵀ · weighted values); the MIMO
    kernel takes none.
    pair_split: run the pair-split kernel (MIMO's, and the only one for R > 1) rather than the whole-N one;
    default: R > 1. p_major: the pair-split kernel computes a chunk's outputs P-major, (P, rows), so that the
    state and the values are its dots' left operands, held in registers (default, and faster on an H200: MIMO
    R=4, one layer at 128 × 512, 17.45 → 14.69 ms; `p_major=False` is the rows-major form it replaced).
    outputs=False: only the final state (and caches) is wanted; the kernel skips the queries, the output
    products and the store (three of the four dots a chunk of the SISO kernel, five of the pair-split
    kernel's seven), and None is returned in place of the output; `out` must then be None.
    """
    b, T, H, P, R, G, N, S = scan_shapes(x, B, theta, pairing, dot_precision, mimo_x, mimo_z, mimo_o)
    wide = check_input_dots(input_dots, dot_precision, R)
    block_r = triton.next_power_of_2(R)
    # MIMO runs on the pair-split kernel, SISO and Mamba-2 on the whole-N one: each was the faster of
    # the two for its rank on an H200 (docs/benchmarks.md)
    pairs = R > 1 if pair_split is None else pair_split
    if p_major and not pairs:
        raise ValueError("scan_chunked: p_major is a pair-split kernel's layout (pair_split=True, or R > 1)")
    p_major = pairs if p_major is None else p_major
    if R > 1 and not pairs:
        raise ValueError("scan_chunked: MIMO (R > 1) runs on the pair-split kernel only")
    if pairs and input_dots:
        raise ValueError("input_dots: the pair-split kernel takes one precision for every product")
    rows, default_block_p, default_warps = default_tile(b, H, P, R, x.device, S)
    block_t = chunk_size or max(1, rows // block_r)
    check_chunk(block_t, block_r, "input" if input_dots else dot_precision, x.dtype)
    block_p = default_block_p if block_p is None else block_p
    dev, f32 = x.device, torch.float32
    if B.stride() != C.stride():
        B, C = B.contiguous(), C.contiguous()
    dt, adt, lam, theta = (t.to(f32).contiguous() for t in (dt, adt, lam, theta))
    if (B_bias is None) != (C_bias is None):
        raise ValueError("scan_chunked: give both B_bias and C_bias, or neither")
    has_bias = B_bias is not None
    if not has_bias and not pairs and S > 0 and pairing == "half":
        # the whole-N kernel's half-split rotation reads partners' biases: zeros there; the others skip them
        B_bias = C_bias = torch.zeros(H, R, N, device=dev, dtype=f32)
        has_bias = True
    params = [t.to(f32).contiguous() for t in ((B_bias, C_bias, D) if has_bias else (D, D, D))]
    mimo = mimo_operands(mimo_x, mimo_z, mimo_o, z is not None, params[2])
    if not outputs:
        if out is not None:
            raise ValueError("scan_chunked: out given with outputs=False")
    elif out is None:
        out = torch.empty(b, T, H, P, device=dev, dtype=x.dtype)
    elif tuple(out.shape) != (b, T, H, P) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"scan_chunked: out {tuple(out.shape)} {out.dtype}, expected {(b, T, H, P)} {x.dtype}")
    elif out.data_ptr() == x.data_ptr():
        # the x cache is read after the outputs are stored
        raise ValueError("scan_chunked: out must not alias x")
    # the output pointer and strides the kernel gets: with outputs=False a one-element buffer of its own
    # (the kernel never stores to it), so no caller tensor is ever an output by accident
    o_arg = out if outputs else torch.empty(1, 1, 1, 1, device=dev, dtype=x.dtype)
    final_state = final_state_for(x, state, final_state, R, N, S)
    if state is not None:
        # P-blocks read k⁰/Φ⁰/x⁰ while block 0 writes the final ones: never share them
        state = ScanState(state.angle.contiguous().clone(), state.ssm.contiguous(),
                          state.k.contiguous().clone(), state.x.contiguous().clone())
    init = state if state is not None else final_state
    zz = z if z is not None else x
    grid = (b * H, triton.cdiv(P, block_p))
    pair_load = pair_words(B, C, pairing, S)
    words = tuple(st // 2 if pair_load else 0 for st in B.stride()[:-1])
    if pairs:
        kernel, tile = _chunk_scan_pairs_kernel, dict(BLOCK_H=_pow2(N // 2), WIDE=dot_precision == "tf32",
                                                      PAIR_LOAD=pair_load, BY_P=p_major, HAS_BIAS=has_bias)
    else:
        kernel, tile = _chunk_scan_kernel, dict(BLOCK_N=_pow2(N), PAIR_LOAD=pair_load, HAS_BIAS=has_bias,
                                                **{f"WIDE_{d.upper()}": w for d, w in wide.items()})
    launch(
        kernel, grid, x, zz, B, C, dt, adt, lam, theta, *params, *mimo,
        o_arg, init.ssm, init.angle, init.k, init.x,
        final_state.ssm, final_state.angle, final_state.k, final_state.x,
        T, *x.stride(), *zz.stride(), *o_arg.stride(), *B.stride(), *words,
        H=H, G=G, R=R, P=P, N=N, S=S, BLOCK_T=block_t, BLOCK_R=block_r, BLOCK_P=block_p, **tile,
        INTERLEAVED=pairing == "interleaved", HAS_Z=z is not None, HAS_STATE=state is not None,
        MIMO=mimo_x is not None, EMULATE=INTERPRETED, OUTPUTS=outputs,
        num_warps=num_warps or default_warps, num_stages=num_stages or 1,
    )
    return out, final_state
