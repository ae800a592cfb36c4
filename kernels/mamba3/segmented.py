"""Segment-parallel prefill for one or two sequences: `scan_chunked` split along time.

Why: `chunk.scan_chunked` gives each (batch, head, P-block) one program that walks its chunks in order.
At batch 1 the 1.5B models have 64 heads, so a 16k-token prompt is 64 programs on a 132-SM GPU, each
walking 1,024 chunks one after the other (H200: 5.5–5.9 ms a layer, against 2.9 ms for the public kernel
on an H100; docs/benchmarks.md). Cutting the sequence into `segments` pieces gives that many times more
programs, at the price of a second, cheaper pass:

1. every segment but the last is scanned from a zero state (`scan_chunked` on a (b·(segments − 1), L)
   view of the inputs, `outputs=False`: the kernel skips the queries and the output products): its
   local final state S_loc, local angle Φ_loc, last key rotated by the local angle k_loc and last x;
2. the segments' start states (one Triton launch, `start_states_fused`; or in PyTorch, `start_states`):
       S_{j+1} = e^{Σ_j a·Δ} (S_j + δ_{0,j} Σ_r (x_j ⊙ mimo_x_r) k_{j,r}ᵀ) + S_loc,j R(Φ_j)ᵀ
       Φ_{j+1} = Φ_j + Φ_loc,j (mod 2π),  k_{j+1} = R(Φ_j) k_loc,j,  x_{j+1} = x_loc,j
   (δ_{0,j} = (1 − λ)Δ of segment j's first token: the trapezoid's share of the previous token, which
   the zero-state pass could not see; the rotation enters through the keys only, so a segment's local
   state turns into the global one by rotating its N axis by the angle the segment started at);
3. every segment is scanned again from its start state (a cached continuation, as decoding after a
   prefill is), writing the output.

Segment j's start state is exactly the final state `scan_chunked` would reach after the first j
segments (tests/kernels/test_mamba3_segmented.py checks it). The model's Triton prefill (`prefill`)
segments on its own where `auto_segments` says it pays: few sequences (b·H below the SM count) and
prompts of T ≥ MIN_SEGMENTED_TOKENS (two segments of a rank-1 scan from MIN_TWO_SEGMENT_TOKENS), ~2
programs per SM, the segment starts chained by one launch (`start_states_fused`). H200, one layer from a
CUDA graph: SISO 1 × 16384 5.8 → 2.9 ms, MIMO 1 × 4096 4.1 → 2.5 ms, SISO 1 × 512 158 → 124 µs; whole 1.5B
models at 1 × 2048 from a graph: SISO 23.8 → 17.0 ms, MIMO 56.2 → 38.1 ms, Mamba-2 28.0 → 22.6 ms.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.chunk import check_dot_precision, scan_chunked
from kernels.mamba3.ssd import carried_bytes, scan_ssd
from kernels.mamba3.reference import ScanState, _rank_expand, rotate
from kernels.mamba3.tl_utils import (INTERPRETED, cast, cos_sin, launch, pair_partners, sm_count,
                                     wrap_angle)

TWO_PI = 2.0 * math.pi
# fewest tokens a segment gets from `auto_segments`
MIN_SEGMENT_TOKENS = 128
# fewest tokens a sequence needs before `auto_segments` cuts it. Set from whole 1.5B models' batch-1
# prefill replayed from a CUDA graph, as the profiler times it (H200, 2026-12-01, docs/benchmarks.md):
# 4 segments won at every prompt from 512 tokens, for every family (SISO 1 × 512 6.33 → 5.65 ms, 1 × 1024
# 12.1 → 9.3 ms; MIMO 1 × 512 14.4 → 11.1 ms; Mamba-2 8.5 → 7.7 ms; the hybrid 5.9 → 5.3 ms), and the
# segments' floor (128 or 64 tokens) made no difference there. One layer: 2 segments lose for MIMO at
# batch 1 (half-P tile), which the rule never picks there (4 at batch 1, 2 only at batch 2, where they
# won: MIMO 2 × 4096 7.9 → 5.1 ms). The earlier 4096 / 1024 came from eager timings, where the segmented
# path's extra launches cost host time the graph does not have.
MIN_SEGMENTED_TOKENS = 512
# fewest tokens before two segments (batch 2 of the 1.5B models' 64 heads on 132 SMs) pay for rank 1 (SISO,
# Mamba-2 and the hybrid's layers), where the plain scan already has a program per SM pair: whole models
# from a CUDA graph (H200, 2026-12-01) at 2 × 512 lost with 2 segments (SISO 8.34 → 9.37 ms, Mamba-2
# 11.52 → 12.91, the hybrid 8.00 → 8.78) and at 2 × 2048 moved by −2 … +4 % (SISO 31.50 → 30.93, Mamba-2
# 42.60 → 44.33); one SISO layer won at 2 × 4096 (1.47 → 1.37 ms). MIMO's plain scan takes the half-P tile
# there, and two segments won at every length (2 × 512 27.4 → 20.6 ms, 2 × 2048 106.7 → 76.3 ms); on the tiles
# of the tenth session the margin is thinner (plain 18.5 and 71.1 ms, 2 segments 18.2 and 65.8).
MIN_TWO_SEGMENT_TOKENS = 4096


def _segments_view(t: Tensor | None, nseg: int) -> Tensor | None:
    """(b, main, ...) → (b·nseg, main/nseg, ...) (a view when the strides allow, else a copy)."""
    if t is None:
        return None
    return t.reshape(t.shape[0] * nseg, t.shape[1] // nseg, *t.shape[2:])


def _segment_scalars(dt: Tensor, adt: Tensor, lam: Tensor, nseg: int) -> tuple[Tensor, Tensor]:
    """(b, nseg − 1, H) each, for every segment but the last: its decay e^{Σ a·Δ} and its first token's
    trapezoid share δ_0 = (1 − λ)Δ."""
    b, T, H = dt.shape
    L = T // nseg
    decay = torch.exp(adt.reshape(b, nseg, L, H)[:, :-1].sum(2))
    return decay, (1.0 - lam[:, :T - L:L]) * dt[:, :T - L:L]


def start_states(local: ScanState, init: ScanState, dt: Tensor, adt: Tensor, lam: Tensor, mimo_x: Tensor | None,
                 pairing: str, nseg: int) -> ScanState:
    """Pass 2: each segment's start state, (b·nseg, …) in segment order, from the local final states of
    all segments but the last (`local`, (b·(nseg − 1), …), scanned from zero), the state before the
    first segment (`init`, (b, …)) and the scalars over the segmented tokens (dt, adt, lam: (b, nseg·L, H)
    fp32). The start states' ssm is fp32 whatever init's is. Angles, keys and the per-segment increments
    are computed for all segments at once; only the state's decay chain S_{j+1} = e^{Σ_j a·Δ} S_j + U_j is a
    loop (one fused multiply-add per segment), so the launches stay few (~45) whatever the segment count.
    `start_states_fused` is the same in one launch."""
    b = dt.shape[0]
    f32 = torch.float32
    decay, delta0 = (t[..., None, None] for t in _segment_scalars(dt, adt, lam, nseg))  # (b, nseg-1, H, 1, 1)
    mx = None if mimo_x is None else mimo_x.to(f32)
    a_loc, s_loc, k_loc, x_loc = (t.unflatten(0, (b, nseg - 1)) for t in local)  # ScanState order
    # Φ_j: the angle each segment starts at, (b, nseg, H, S)
    phi0 = init.angle.to(f32)[:, None]
    phi = torch.remainder(torch.cat([phi0, phi0 + a_loc.to(f32).cumsum(1)], 1), TWO_PI)
    lead_phi = phi[:, :-1]
    # k_{j+1} = R(Φ_j) k_loc,j and x_{j+1} = x_loc,j; k_0, x_0 from the initial cache
    keys = torch.cat([init.k[:, None], rotate(k_loc.to(f32), lead_phi[:, :, None], pairing).to(init.k.dtype)], 1)
    xs = torch.cat([init.x[:, None], x_loc], 1)
    # U_j = e^{Σ_j a·Δ} δ_{0,j} Σ_r (x_j ⊙ mimo_x_r) k_{j,r}ᵀ + S_loc,j R(Φ_j)ᵀ
    xk = torch.einsum("bjrhp,bjrhn->bjhpn", _rank_expand(xs[:, :-1].to(f32), mx), keys[:, :-1].to(f32))
    incr = (decay * delta0) * xk + rotate(s_loc.to(f32), lead_phi[:, :, :, None, :], pairing)
    states = [init.ssm.to(f32)]
    for j in range(nseg - 1):
        states.append(torch.addcmul(incr[:, j], decay[:, j], states[-1]))
    # the start states stay fp32 whatever the cache's dtype: a bf16 cache is rounded once, at the end of
    # the whole scan (as the plain scan rounds it), not at every segment boundary
    return ScanState(angle=phi.flatten(0, 1).contiguous(), ssm=torch.stack(states, 1).flatten(0, 1),
                     k=keys.flatten(0, 1).contiguous(), x=xs.flatten(0, 1).contiguous())


@triton.jit
def _start_states_kernel(a0_ptr, s0_ptr, k0_ptr, x0_ptr, al_ptr, sl_ptr, kl_ptr, xl_ptr, dec_ptr, d0_ptr, mx_ptr,
                         a1_ptr, s1_ptr, k1_ptr, x1_ptr, NSEG, H: tl.constexpr, R: tl.constexpr, P: tl.constexpr,
                         N: tl.constexpr, S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr, MIMO: tl.constexpr,
                         EMULATE: tl.constexpr):
    """`start_states` in one launch: program (batch·head, P-block) walks the segments in order, the state
    block, angle, keys and x in registers, and writes every segment's start (angle and keys from P-block
    0 only). Rotation coordinate by coordinate, each with its pair partner read a second time (as the
    whole-N chunk kernel's half-split path does)."""
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    bi = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    n = tl.arange(0, BLOCK_N)
    nmask = n < N
    rot, ai, partner, sgn = pair_partners(n, N, S, INTERLEAVED)
    ps = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = ps < P
    rk = tl.arange(0, BLOCK_R)
    rkmask = rk < R
    mpn = pmask[:, None] & nmask[None, :]
    mrn = rkmask[:, None] & nmask[None, :]
    mrot = mpn & rot[None, :]
    KT = k1_ptr.dtype.element_ty
    mx = tl.zeros((BLOCK_R, BLOCK_P), tl.float32) + 1.0
    if MIMO:
        mx = tl.load(mx_ptr + (h * R + rk[:, None]) * P + ps[None, :], mask=rkmask[:, None] & pmask[None, :],
                     other=0.0)
    bh0 = bi * H + h
    phi = tl.load(a0_ptr + bh0 * S + ai, mask=rot, other=0.0).to(tl.float32)  # each coordinate's pair angle
    st = tl.load(s0_ptr + (bh0 * P + ps[:, None]) * N + n[None, :], mask=mpn, other=0.0).to(tl.float32)
    key = tl.load(k0_ptr + ((bi * R + rk[:, None]) * H + h) * N + n[None, :], mask=mrn, other=0.0).to(tl.float32)
    xv = tl.load(x0_ptr + bh0 * P + ps, mask=pmask, other=0.0).to(tl.float32)
    for j in range(0, NSEG):
        bho = (bi * NSEG + j) * H + h  # segment j's start, (b·nseg, H, ...) layout
        tl.store(s1_ptr + (bho * P + ps[:, None]) * N + n[None, :], st, mask=mpn)
        tl.store(a1_ptr + bho * S + ai, phi, mask=rot & (sgn < 0) & (pid_p == 0))
        tl.store(k1_ptr + (((bi * NSEG + j) * R + rk[:, None]) * H + h) * N + n[None, :], cast(key, KT, EMULATE),
                 mask=mrn & (pid_p == 0))
        tl.store(x1_ptr + bho * P + ps, cast(xv, x1_ptr.dtype.element_ty, EMULATE), mask=pmask)
        if j < NSEG - 1:
            lj = bi * (NSEG - 1) + j  # segment j's local (zero-state) scan
            bhl = lj * H + h
            decay = tl.load(dec_ptr + bhl)
            delta0 = tl.load(d0_ptr + bhl)
            xr = xv[None, :] * mx  # (BLOCK_R, BLOCK_P): x ⊙ mimo_x_r, 0 on padded ranks
            carry = st + delta0 * tl.sum(xr[:, :, None] * key[:, None, :], axis=0)
            cos, sin = cos_sin(phi, EMULATE)
            sin = tl.where(rot, sin * sgn, 0.0)
            cos = tl.where(rot, cos, 1.0)
            sl = sl_ptr + (bhl * P + ps[:, None]) * N
            s_loc = tl.load(sl + n[None, :], mask=mpn, other=0.0) * cos[None, :]
            st = decay * carry + s_loc + tl.load(sl + partner[None, :], mask=mrot, other=0.0) * sin[None, :]
            kl = kl_ptr + ((lj * R + rk[:, None]) * H + h) * N
            key = (tl.load(kl + n[None, :], mask=mrn, other=0.0).to(tl.float32) * cos[None, :]
                   + tl.load(kl + partner[None, :], mask=mrn & rot[None, :], other=0.0).to(tl.float32) * sin[None, :])
            key = cast(key, KT, EMULATE).to(tl.float32)  # keys are cached in their dtype, as the torch chain does
            phi = wrap_angle(phi + tl.load(al_ptr + bhl * S + ai, mask=rot, other=0.0))
            xv = tl.load(xl_ptr + bhl * P + ps, mask=pmask, other=0.0).to(tl.float32)


def start_states_fused(local: ScanState, init: ScanState, dt: Tensor, adt: Tensor, lam: Tensor,
                       mimo_x: Tensor | None, pairing: str, nseg: int) -> ScanState:
    """`start_states` (same arguments, same result up to rounding) as one Triton launch after three small
    PyTorch reductions for the per-segment decay and trapezoid share, instead of ~45 PyTorch operations:
    the segmented prefill's chaining is launch-bound in eager mode (docs/benchmarks.md)."""
    b, _, H = dt.shape
    f32 = torch.float32
    R, P, N, S = local.k.shape[1], local.ssm.shape[2], local.ssm.shape[3], local.angle.shape[-1]
    decay, delta0 = (t.contiguous() for t in _segment_scalars(dt, adt, lam, nseg))  # (b, nseg-1, H)
    dev = dt.device
    out = ScanState(angle=torch.empty(b * nseg, H, S, device=dev, dtype=f32),
                    ssm=torch.empty(b * nseg, H, P, N, device=dev, dtype=f32),
                    k=torch.empty(b * nseg, R, H, N, device=dev, dtype=init.k.dtype),
                    x=torch.empty(b * nseg, H, P, device=dev, dtype=init.x.dtype))
    init = ScanState(*(t.contiguous() for t in init))
    local = ScanState(*(t.contiguous() for t in local))
    block_p = min(triton.next_power_of_2(P), 16 if R == 1 else 8)  # MIMO: (R, P, N) products, fewer rows
    mx = mimo_x.to(f32).contiguous() if mimo_x is not None else decay
    launch(_start_states_kernel, (b * H, triton.cdiv(P, block_p)), init.angle, init.ssm, init.k, init.x,
           local.angle, local.ssm, local.k, local.x, decay, delta0, mx, out.angle, out.ssm, out.k, out.x, nseg,
           H=H, R=R, P=P, N=N, S=S, BLOCK_R=triton.next_power_of_2(R), BLOCK_P=block_p,
           BLOCK_N=triton.next_power_of_2(N), INTERLEAVED=pairing == "interleaved", MIMO=mimo_x is not None,
           EMULATE=INTERPRETED, num_warps=4)
    return out


CHAINS = {"torch": start_states, "triton": start_states_fused}
# (rows a chunk, warps) of a MIMO scan's segments where they give every SM a program (the whole-P tile): 32 rows
# (8 time steps at R = 4) at 4 warps, against the plain scan's 16 (`chunk.default_tile`). H200, one layer from a
# CUDA graph (`python -m kernels.bench --segmented-only --sweep`): 4 segments at 1 × 512 350 → 326 µs, 1 × 2048
# 1,293 → 1,194; 2 segments at 2 × 2048 2,463 → 2,137; the plain scan at batch 3–4 stays faster at 16 rows.
# Whole MIMO 1.5B prefill 5–6 % faster at batch 1, about 10 % at batch 2 (docs/benchmarks.md). None: the default.
# The model's prefill names its own chunk (MODEL_DOT_ROWS, the same 32 rows at 4 warps), so this tile now reaches
# direct `scan_segmented` calls and prefills inside `model_dots("tf32")` only.
MIMO_SEGMENT_TILE: tuple[int, int] | None = (32, 4)


def segment_tile(R: int, seq_heads: int, sms: int) -> dict:
    """The tile arguments a segmented scan passes to its `scan_chunked` calls on the GPU, where the caller set
    neither chunk_size nor num_warps: for MIMO (rank R > 1) whose segments give every SM a program
    (`seq_heads`, b·segments·H, ≥ `sms`), MIMO_SEGMENT_TILE's chunk (rows / R rounded up to a power of two, in
    time steps) and warps, for all three calls (the first pass and a remainder's scan have fewer sequence-heads
    and take it too); else {} (`chunk.default_tile`)."""
    if R < 2 or MIMO_SEGMENT_TILE is None or seq_heads < sms:
        return {}
    rows, warps = MIMO_SEGMENT_TILE
    return {"chunk_size": max(1, rows // triton.next_power_of_2(R)), "num_warps": warps}


def scan_segmented(x, z, B, C, dt, adt, lam, theta, *, segments: int, B_bias, C_bias, D, mimo_x=None, mimo_z=None,
                   mimo_o=None, pairing="interleaved", state: ScanState | None = None, chain: str = "triton",
                   **scan_kw) -> tuple[Tensor, ScanState]:
    """`chunk.scan_chunked` (same tensors, same result up to rounding) with the time axis cut into
    `segments` equal pieces scanned side by side (module docstring); a remainder of T mod segments tokens
    is scanned after them as a continuation. `scan_kw` (chunk_size, block_p, dot_precision, num_warps)
    goes to every scan; on the GPU, where it sets neither chunk_size nor num_warps, a MIMO scan whose segments
    fill the SMs takes `segment_tile`'s. Fewer than two segments, or segments longer than the sequence:
    `scan_chunked`.
    chain: how the start states are computed, "triton" (`start_states_fused`, one launch) or "torch"
    (`start_states`, the readable chain; same states to rounding, ~45 launches).
    The final state's ssm has the dtype of `state.ssm` (fp32 without a state); in between it stays fp32."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {', '.join(CHAINS)}, got {chain!r}")
    passed = sorted(set(scan_kw) & {"out", "final_state", "outputs"})
    if passed:
        raise ValueError(f"scan_segmented allocates its own outputs; got {', '.join(passed)} "
                         "(segmented.prefill writes a given final_state and out)")
    b, T, H, P = x.shape
    R, N, S = B.shape[-3], B.shape[-1], theta.shape[-1]
    params = dict(B_bias=B_bias, C_bias=C_bias, D=D, mimo_x=mimo_x, mimo_z=mimo_z, mimo_o=mimo_o, pairing=pairing,
                  **scan_kw)
    L = T // segments
    if segments < 2 or L < 1:
        return scan_chunked(x, z, B, C, dt, adt, lam, theta, **params, state=state)
    if x.is_cuda and not {"chunk_size", "num_warps"} & set(scan_kw):
        # decided once, for the segments' scan, and taken by all three calls: at batch 2 the first pass (128
        # sequence-heads, half of P) is faster on it too (whole MIMO 1.5B at 2 × 2048: 65.8 ms, 71.1 with that
        # pass on the default tile; docs/benchmarks.md, tenth session)
        params.update(segment_tile(R, b * segments * H, sm_count(x.device)))
    main = L * segments
    f32 = torch.float32
    ssm_dtype = state.ssm.dtype if state is not None else f32
    init = state if state is not None else ScanState.zeros(b, H, P, N, S, R, device=x.device, dtype=x.dtype,
                                                           ssm_dtype=ssm_dtype)
    dt, adt, lam, theta = (t.to(f32) for t in (dt, adt, lam, theta))
    inputs = (x, z, B, C, dt, adt, lam, theta)
    seq = [t[:, :main] if t is not None else None for t in inputs]
    views = [_segments_view(t, segments) for t in seq]
    # pass 1: every segment but the last from a zero state, final states only (the kernel skips the outputs)
    lead = [_segments_view(t[:, :main - L], segments - 1) if t is not None else None for t in seq]
    _, local = scan_chunked(*lead, **params, outputs=False)
    # pass 2: the segments' start states, in order
    starts = CHAINS[chain](local, init, *seq[4:7], mimo_x, pairing, segments)
    # pass 3: every segment again, continuing from its start state
    out, finals = scan_chunked(*views, **params, state=starts)
    out = out.reshape(b, main, H, P)
    final = ScanState(*(t.unflatten(0, (b, segments))[:, -1].contiguous() for t in finals))
    if main < T:
        rest = [t[:, main:] if t is not None else None for t in inputs]
        tail, final = scan_chunked(*rest, **params, state=final)
        out = torch.cat([out, tail], dim=1)
    return out, final._replace(ssm=final.ssm.to(ssm_dtype))


_PLAIN = False  # set by `plain_scans`
_CHAIN = "triton"  # how `prefill` chains segment starts; set by `chained_by`
_SSD = False  # set by `chunk_parallel`
# The products of the model's prefill scans when the caller names no dot_precision: bf16 operands ("input"), as
# the public kernels take them, at MODEL_DOT_ROWS-row chunks (bf16 dots take at most 32 rows; a caller's
# chunk_size is kept, and a larger one keeps tf32). H200, 1.5B shapes, 128 × 512, tf32 at the former default tiles
# against this (docs/benchmarks.md): one SISO layer 5.11 → 3.69 ms, whole SISO prefill 387 → 353 ms (fastest of two
# repeats), p95 relative error against float64 at 8 × 512 output 5.4e-3 → 1.7e-2 (the public kernel's 3.6e-2;
# spec §7.10 expects ≤ 2e-2 with bf16 I/O), final state 1.4e-3 → 7.7e-3 (seventeenth session); whole MIMO R=4
# 863 → 667 ms (16 → 32 rows; tf32 at 32 rows 880), last-token logits 2.3e-2 from tf32's by norm, as tf32's own
# 16 → 32 rows moves them 1.9e-2; whole Mamba-2 (bf16 dots at 16 rows before) 360 → 343 ms (eighteenth session).
# Set by `model_dots`.
_MODEL_DOTS = "input"
MODEL_DOT_ROWS = 32
_SCAN_KW: dict = {1: {}, 2: {}}  # the keywords `scan_keywords` adds by rank (1, or 2 for any R > 1)
# fewest tokens a plain (unsegmented) SISO scan needs before the model's prefill runs it on the pair-split kernel,
# P-major (`scan_chunked(pair_split=True)`), rather than the whole-N one: bf16 dots, Mamba-3 (rotated keys; Mamba-2
# not timed there). H200, 1.5B shapes, same run (docs/benchmarks.md, twentieth session), ms from a CUDA graph,
# whole-N against pair-split: one layer 16 × 2048 1.865 → 1.662, 16 × 8192 7.329 → 6.241, 4 × 2048 0.467 →
# 0.419; the whole SISO model 16 × 2048 176.7 → 173.2, 16 × 8192 708.9 → 690.6 (last-token logits 1.6e-2 apart by
# norm, a summation order through 24 random-weight layers). At 512 tokens a layer ties (128 × 512 3.71 ms either
# way) and the whole model lost 2–5 % (nineteenth session); segmented prompts lose too (1 × 2048 in four
# segments, a layer 0.220 → 0.253 ms), so they keep the whole-N kernel.
PAIR_SPLIT_MIN_TOKENS = 2048
# what `scan_ssd` takes of prefill's **kw
_SSD_KEYWORDS = ("B_bias", "C_bias", "D", "mimo_x", "mimo_z", "mimo_o", "pairing", "dot_precision")
# the largest carried-state buffer `chunk_parallel` lets `scan_ssd` allocate (one fp32 state per chunk); a
# larger prefill (128 × 16384 tokens at 1.5B shapes: 64 GiB) stays on the chunked or segmented scan
SSD_MAX_BYTES = 4 * 2**30


@contextlib.contextmanager
def plain_scans():
    """Within this block `prefill` never segments on its own (an explicit `segments` still does): the
    plain-scan side of a same-run A/B timing (kernels.bench_model)."""
    global _PLAIN
    saved, _PLAIN = _PLAIN, True
    try:
        yield
    finally:
        _PLAIN = saved


@contextlib.contextmanager
def chunk_parallel():
    """Within this block `prefill` runs its scans on the chunk-parallel scan (`kernels.mamba3.ssd.scan_ssd`)
    instead of the chunked or segmented one, up to `SSD_MAX_BYTES` of carried states. The experiment's side
    of a same-run A/B timing (kernels.bench_model)."""
    global _SSD
    saved, _SSD = _SSD, True
    try:
        yield
    finally:
        _SSD = saved


@contextlib.contextmanager
def model_dots(precision: str):
    """Within this block `prefill` runs its scans with `precision` ("tf32" or "input") where its caller names
    none ("tf32": also at `scan_chunked`'s own default tiles): the other side of a same-run A/B, or a check
    against another scan at tf32."""
    global _MODEL_DOTS
    check_dot_precision(precision)
    saved, _MODEL_DOTS = _MODEL_DOTS, precision
    try:
        yield
    finally:
        _MODEL_DOTS = saved


@contextlib.contextmanager
def scan_keywords(rank1: dict | None = None, mimo: dict | None = None):
    """Within this block `prefill` runs each scan as if its caller had also named `rank1`'s keywords (SISO,
    Mamba-2, the hybrid's Mamba-3 layers) or `mimo`'s (rank > 1): chunk_size, block_p, num_warps, dot_precision,
    … (`scan_chunked`'s). The variants side of a whole-model A/B (kernels.bench_prefill_ab)."""
    global _SCAN_KW
    saved, _SCAN_KW = _SCAN_KW, {1: dict(rank1 or {}), 2: dict(mimo or {})}
    try:
        yield
    finally:
        _SCAN_KW = saved


def _with_model_dots(R: int, dtype: torch.dtype, kw: dict) -> dict:
    """`prefill`'s scan keywords with the model's dot precision (`_MODEL_DOTS`) where the caller named neither a
    dot_precision nor input_dots, and with 16-bit inputs its chunk of MODEL_DOT_ROWS rows where the caller named
    none (fp32 inputs multiply in fp32 either way and keep the scan's tile, which spills less there); a chunk of
    more than 32 rows keeps tf32 (bf16 dots take at most 32)."""
    if "dot_precision" in kw or "input_dots" in kw or _MODEL_DOTS == "tf32":
        return kw
    r = triton.next_power_of_2(R)
    chunk = kw.get("chunk_size")
    if chunk is None and dtype != torch.float32 and r <= MODEL_DOT_ROWS:
        return {**kw, "dot_precision": _MODEL_DOTS, "chunk_size": MODEL_DOT_ROWS // r}
    return {**kw, "dot_precision": _MODEL_DOTS} if (chunk or 1) * r <= 32 else kw


def with_pair_split(R: int, S: int, T: int, dtype: torch.dtype, kw: dict) -> dict:
    """A plain scan's keywords with `pair_split=True` where the model's prefill takes the pair-split kernel for a
    rank-1 scan (PAIR_SPLIT_MIN_TOKENS), as timed: Mamba-3 SISO (S > 0 rotated pairs, interleaved), 16-bit inputs
    on bf16 dots (`_with_model_dots`), T tokens from the threshold, and none of pair_split, p_major or input_dots
    named by the caller (whose p_major keeps the meaning it has below the threshold); `kw` itself otherwise."""
    takes = (R == 1 and S > 0 and T >= PAIR_SPLIT_MIN_TOKENS and dtype != torch.float32
             and kw.get("dot_precision") == "input" and kw.get("pairing", "interleaved") == "interleaved"
             and not {"pair_split", "p_major", "input_dots"} & set(kw))
    return {**kw, "pair_split": True} if takes else kw


def chunk_parallel_takes(b: int, T: int, H: int, P: int, N: int, R: int = 1) -> bool:
    """Whether, inside `chunk_parallel()`, a (b, T) prefill runs on the chunk-parallel scan: its carried states
    (`ssd.carried_bytes`) stay within SSD_MAX_BYTES."""
    return carried_bytes(b, T, H, P, N, R) <= SSD_MAX_BYTES


@contextlib.contextmanager
def chained_by(chain: str):
    """Within this block `prefill` computes segment starts with `chain` ("torch" or "triton"; see
    `scan_segmented`): the A/B timing of the one-launch chaining (kernels.bench_model)."""
    global _CHAIN
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {', '.join(CHAINS)}, got {chain!r}")
    saved, _CHAIN = _CHAIN, chain
    try:
        yield
    finally:
        _CHAIN = saved


def auto_segments(b: int, T: int, H: int, device, sms: int | None = None, *, rank: int = 1) -> int:
    """How many segments `prefill` cuts a (b, T) scan of MIMO rank `rank` into: 1 (the plain scan) on the
    CPU, when the b·H sequence-heads already give every SM a program, or when T < MIN_SEGMENTED_TOKENS;
    else enough segments for about two programs per SM (the chunk kernel's occupancy at 255
    registers), each at least MIN_SEGMENT_TOKENS long, except that two segments of a rank-1 scan wait for
    MIN_TWO_SEGMENT_TOKENS. Counted in sequence-heads, not in the plain scan's programs: once segmented,
    the scans have as many sequence-heads as SMs and take the whole-P tile (`chunk.default_tile`). `sms`:
    the SM count (default: the device's; given, no GPU is needed). Always 1 inside `plain_scans()`."""
    if _PLAIN or torch.device(device).type != "cuda":
        return 1
    return segments_for(b * H, sms or sm_count(device), T, rank)


def segments_for(seq_heads: int, sms: int, T: int, rank: int = 1) -> int:
    """`auto_segments`' rule, given b·H, the GPU's SM count, the tokens and the MIMO rank."""
    if seq_heads >= sms or T < MIN_SEGMENTED_TOKENS:
        return 1
    n = max(1, min(round(2 * sms / seq_heads), T // MIN_SEGMENT_TOKENS))
    return 1 if n == 2 and rank == 1 and T < MIN_TWO_SEGMENT_TOKENS else n


def prefill(x, z, B, C, dt, adt, lam, theta, *, state: ScanState | None = None,
            final_state: ScanState | None = None, out: Tensor | None = None, segments: int | None = None,
            **kw) -> tuple[Tensor, ScanState]:
    """The model's Triton prefill: `scan_chunked`, or `scan_segmented` where `auto_segments` (or an
    explicit `segments`) says it pays; the final state lands in `final_state` when one is given (it may
    alias `state`, as a model's static cache does), the output in `out` when one is given. Its scans
    take bf16 dots at 32-row chunks unless `dot_precision`, `input_dots` or a chunk of more than 32 rows is given
    (`_MODEL_DOTS`, `model_dots`); a plain SISO scan of PAIR_SPLIT_MIN_TOKENS or more runs on the pair-split
    kernel (`with_pair_split`)."""
    b, T, H = x.shape[:3]
    if _SSD and segments is None and chunk_parallel_takes(b, T, H, x.shape[-1], B.shape[-1], B.shape[-3]):
        unknown = set(kw) - set(_SSD_KEYWORDS)
        if unknown:
            raise ValueError(f"the chunk-parallel scan takes no {', '.join(sorted(unknown))}")
        return scan_ssd(x, z, B, C, dt, adt, lam, theta, state=state, final_state=final_state, out=out, **kw)
    kw = _with_model_dots(B.shape[-3], x.dtype, {**kw, **_SCAN_KW[min(B.shape[-3], 2)]})
    n = auto_segments(b, T, H, x.device, rank=B.shape[-3]) if segments is None else segments
    if n < 2:
        kw = with_pair_split(B.shape[-3], theta.shape[-1], T, x.dtype, kw)
        return scan_chunked(x, z, B, C, dt, adt, lam, theta, state=state, final_state=final_state, out=out, **kw)
    o, final = scan_segmented(x, z, B, C, dt, adt, lam, theta, segments=n, state=state, chain=_CHAIN, **kw)
    if out is not None:
        if out.shape != o.shape:
            raise ValueError(f"prefill: out {tuple(out.shape)}, expected {tuple(o.shape)}")
        o = out.copy_(o)
    if final_state is None:
        return o, final
    for held, new in zip(final_state, final):
        held.copy_(new)
    return o, final_state
