"""Triton decode step for Mamba-3, SISO and MIMO (spec §1.6, §2.2); Mamba-2 with λ = 1, S = 0.

One program per (batch, head) streams its P×N state tile through registers in row blocks and does, in one
launch:
angle update Φ ← Φ + Δθ (wrapped), bias + rotation of B/C, S ← αS + β·X_prev K_prevᵀ + γ·X Kᵀ,
readout y = S q + D·x, SiLU(z) gate, mimo_o reduction, and the cache writes (state, angle, k, x).

`step` takes the operator's usual inputs (B/C after RMSNorm; Δ, a, λ, θ after their activations).
`step_fused` takes the raw in_proj output row instead and also does the B/C RMSNorm and the scalar
activations (softplus Δ, heavy-tail A, sigmoid λ, π·tanh θ), so a layer's scan is one launch between
in_proj and out_proj. Its readable twin is `reference.preprocess` followed by `reference.step`.

`state_stages` > 0 moves the state's row blocks through shared memory by TMA copies, both ways, several
blocks in flight ahead of the arithmetic without holding them in registers (MIMO's default with many
programs, where TMA can take the state: its one-warp heads waited on their state loads for half their cycles,
docs/benchmarks.md, sixth and fifteenth sessions; a bf16 state only from MIMO_BF16_TMA_PROGRAMS_PER_SM
programs per SM).

Why the whole P axis sits in one program: every P-block would read the cached k/Φ that block 0
overwrites, so splitting P would race. A state stored as bf16 (`state.ssm.dtype`) is upcast to fp32
for the arithmetic and rounded once on the way out.
"""

from __future__ import annotations

import contextlib
import operator
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.reference import ScanState, proj_groups
from kernels.mamba3.tl_utils import (INTERPRETED, _sm_major, cast, cos_sin, decay_rate, grid_dependency_wait, launch,
                                     mimo_operands, pair_partners, pdl_meta, pi_tanh, sigmoid, sm_count, softplus,
                                     store_replicated, wrap_angle)


class StepLaunch(NamedTuple):
    """One regime's launch defaults."""
    num_warps: int
    rows: int  # rows of P per block at N = 128
    prefetch: bool  # the next block's state loaded into registers before this block's arithmetic
    kq_tile: bool = False  # keys and queries built as one (R, N) tile per kind, their rows extracted
    bf16_rows: int | None = None  # rows per block with a bf16 state, where they differ
    angle_rows: int | None = None  # rows per block of a step with rotary angles (Mamba-3, S > 0) over an fp32
    # state from ANGLE_ROWS_PROGRAMS_PER_SM, where they differ (Mamba-2, S = 0, and a bf16 state keep `rows` /
    # `bf16_rows`)
    stages: int = 0  # > 0: the state's row blocks come by TMA, this many in the pipeline (`state_stages`)
    tma_rows: int | None = None  # rows per block when they come by TMA, where they differ (either state dtype)
    fold_q: bool = False  # MIMO's readout as one reduction over the ranks' queries folded with gate and weight
    coef: bool = False  # MIMO's row gates and skip once per program, not per row block (ignored with fold_q)
    max_registers: int | None = None  # the compiler's register cap (`maxnreg`): more programs per SM, some spills
    mma: bool = False  # MIMO's update and readout as tensor-core products (`_step_mma_kernel`, N ≥ 16)
    mma_update: str = "tf32x3"  # the update product's `input_precision` under `mma`, or "fma": multiply-adds
    mma_readout: str = "tf32"  # the readout product's
    lane_readout: bool = False  # MIMO R = 4 at 4-row blocks, one warp: the readout one (row, rank) a lane
    tma_store: bool = True  # with `stages`: the new state back by TMA too (False: by each lane's stores)
    lane_ahead: bool = False  # with `lane_readout`: each lane's z and x for the next row block loaded a block ahead
    lane_keep: bool = False  # with `lane_readout`: x kept for the next token by the lanes in the loop, not after it
    l2_prefetch: int = 0  # with `stages`: bytes of its head's state a program asks into L2 first thing (sm_90;
    # timed slower, the more so the more bytes: docs/benchmarks.md, twenty-third session)
    bf16_stages: int | None = None  # `stages` with a bf16 state, where they differ
    # The next two apply to the tiles they name (space-separated, `TILES`): "angle" a Mamba-3 step over an fp32 state
    # on the `angle_rows` tile (also when a caller's `block_p` asks for those rows), "bf16" a bf16 state, "fp32" any
    # other state (an fp16 one too).
    xz_ahead: str = ""  # with `prefetch`: the next block's x, cached x and z loaded with its state, a block ahead
    # (else each block waits on its own small loads, from L2, before its first multiply)
    replicated_o: str = ""  # outside the lane readout: each block's outputs stored by every thread that holds them
    # (`tl_utils.store_replicated`), not moved to one owner through shared memory between two barriers
    pairs_in_registers: bool = True  # each key and query coordinate's rotation partner taken from its finished row
    # in registers where the pairs lie within a warp (`_pairs`), not loaded, normalised and biased a second time;
    # without rotated pairs (Mamba-2) none at all


# Launch defaults by MIMO and by programs (b·H) per SM: "few" (< 1, batch 1), "mid", "many" (≥ 12). From H200
# sweeps at the 1.5B shapes (docs/benchmarks.md). MIMO with many programs runs one warp per head, two rows per
# block: each reduction stays inside the warp and a program needs few registers (a layer at batch 128: 267 →
# 214 µs against 4 warps × 16 rows; batch 32: 73 → 57), but with fewer programs one-warp heads leave the SMs
# idle (batch 16: 37.6 against 31.3 µs). A bf16 state loads 8 columns a thread; its one-warp heads run best
# at 4 rows (batch 128: 218 → 193 µs). Where the state can come by TMA (sm_90 on), MIMO's one-warp heads take
# it through a 3-deep pipeline of 4-row blocks: at batch 128 a layer takes 214 → 177 µs (bf16 state 193 → 184),
# the whole 1.5B model 6.74 → 5.68 ms; without TMA, 4 rows would be slower (8.27 ms), so they stay at 2 there.
# MIMO at batch 1 builds its keys and queries as a tile (8 warps: 191 registers and no spill on Triton 3.7, 218
# on 3.6, against 255 and a spill built row by row).
# `coef` (MIMO's gates and skip terms for all rows before the row blocks, β and γ on the keys) takes the sm_90 loop
# from 747 to 569 instructions a 4-row block and 128 to 108 registers, but the extra round trip through memory at
# each program's start costs more than that saves where a program walks many blocks (H200, a layer, µs: batch 128
# 173.2 → 180.4, batch 32 47.3 → 49.7, batch 8 (mid) 15.3 → 17.0; with 96/80/72-register caps 190–225). With
# fewer programs than SMs ("few": batch 1–2 at 64 heads), one 64-row block a head, batch 1: 8.0 → 7.4 µs, the fused
# sm_90 build 200 → 128 registers; the whole 1.5B model 1.224 → 1.198 ms. Kept there.
# `lane_readout` (the many tile's 4-row blocks at R = 4): each lane reads out one (row, rank) of the block after a
# warp-wide reduce-scatter of the ranks' partial sums (`lane_readout_asm`) instead of every lane redoing all 16
# readouts' five-level reductions and their gates; β and γ ride on the keys. sm_90 loop 858 → 531 instructions at
# 128 registers; H200, a layer at batch 128 against the per-row readout, same run: fp32 state 173.4 → 167.0 µs,
# bf16 184.7 → 136.4, batch 16 27.5 → 22.6; the whole 1.5B model 5.671 → 5.510 ms, bf16 state 5.986 → 4.804.
# `lane_ahead` and `lane_keep`: the lanes' own z and x (2-byte loads, too narrow for the pipeliner's copies) had
# been loaded and used in the same row block (Nsight Compute before: a warp stalled on a long scoreboard 4.0 of
# its 7.75 cycles an instruction), and x was copied to its cache after the loop in 16 load-store pairs. Now they
# come a block ahead, and the lanes that hold x cache it: H200, same run, a layer at batch 128 166.4 → 164.5 µs
# (bf16 state 136.2 → 132.4); the whole model 5.495 → 5.445 ms (bf16 4.796 → 4.720), batch 16 2.079 → 2.065.
# Over an fp32 state that pipeline is 4 blocks deep (3 before). H200, the whole model at batch 128, one run: 3, 4,
# 5, 6 deep 5.462, 5.416, 5.479, 5.540 ms (batch 64 3.551, 3.527, 3.564, 3.729; batch 16 2.082, 2.079, 2.102,
# 2.099); a bf16 state keeps 3 (`bf16_stages`; 3, 4, 5 deep: 4.729, 4.749, 4.811 ms).
# SISO over an fp32 state walks 8-row blocks (`angle_rows`; 56 registers on sm_90, 9 programs per SM, against 16
# rows' 71 and 7): H200, whole models at 768 tokens, same run, 16 → 8 rows (ms): SISO 1.5B batch 128 4.829 → 4.781,
# 64 3.078 → 3.065, 32 2.217 → 2.170, 16 2.016 → 1.926, 8 1.640 → 1.653; the hybrid 4.571 → 4.512, 2.922 → 2.910,
# 2.124 → 2.084, 1.949 → 1.871, 1.611 → 1.625. Mamba-2 lost at every batch (3.256 → 3.438 at 128), and a bf16
# SISO state at 128, 64 and 8 (3.437 → 3.532 at 128; it won 0.8–2.8 % at 32 and 16): both keep 16. 4 rows,
# 8 warps, and 8 rows without the prefetch were no better. Timed again as committed, 8 → 16 rows (SISO, ms):
# batch 128 4.747 → 4.834, 32 2.168 → 2.217, 16 1.925 → 1.985, but 8 1.649 → 1.636 and 4 1.537 → 1.511; so 8 rows
# from 6 programs per SM (batch 16 has 7.8, batch 8 3.9), `ANGLE_ROWS_PROGRAMS_PER_SM` (docs/benchmarks.md,
# twenty-sixth session).
# Nsight Compute on SISO's pointer loop (H200, batch 128, 8 rows) put half its warps' stall samples on two waits: the
# block's own x (a 2-byte load from L2 issued at the block's top, 27 %) and its state, loaded a block ahead (25 %);
# 16 % more sat at a barrier around the outputs' store, which a reduction's layout sends through shared memory.
# `xz_ahead` loads x, the cached x and z a block ahead too; `replicated_o` stores the outputs from every thread that
# holds them. H200, whole 1.5B models at 768 tokens, same run, ms (the twenty-seventh session):
# - xz_ahead: Mamba-2 batch 128 3.253 → 3.167, 32 1.814 → 1.801, 16 1.753 → 1.742; SISO's fp32 16-row tile (batch 8)
#   1.638 → 1.630; on the 8-row angle tile nothing or worse (batch 128 4.769 → 4.782, 64 registers against 56);
# - a bf16 SISO state, neither → replicated_o alone: batch 128 3.435 → 3.254, 32 1.839 → 1.772, 16 1.765 → 1.692,
#   8 1.530 → 1.520 (xz_ahead alone 3.389, 1.803, 1.736, 1.515; both 3.329, 1.814, 1.747, 1.521);
# - replicated_o lost on fp32 states (SISO batch 128 4.779 → 4.841, Mamba-2 3.167 → 3.223) except MIMO's mid tile
#   (batch 8 1.869 → 1.819); at batch 1 ("few") it changed nothing.
# `pairs_in_registers`: a key's rotation partner had been loaded, normalised and biased again beside the key itself
# (MIMO's one-warp prologue: 1,600 sm_90 instructions a program, 103 loads, 45 of them 2-byte ones, a quarter of the
# stall samples); taken from the finished row in registers instead, 1,375 (Triton 3.6). H200, whole 1.5B models at
# 768 tokens, same run, ms (the twenty-eighth session): MIMO batch 128 5.277 → 5.183, 16 2.087 → 2.022; SISO 128
# 4.772 → 4.742, 16 1.930 → 1.928; Mamba-2 (no rotation, so no partners at all) 128 3.229 → 3.226.
DEFAULT_CONFIG = {
    (False, "few"): StepLaunch(4, 64, True),
    (False, "mid"): StepLaunch(4, 16, True, angle_rows=8, xz_ahead="fp32", replicated_o="bf16"),
    (False, "many"): StepLaunch(4, 16, True, angle_rows=8, xz_ahead="fp32", replicated_o="bf16"),
    (True, "few"): StepLaunch(8, 64, False, kq_tile=True, coef=True),
    (True, "mid"): StepLaunch(4, 16, False, replicated_o="fp32"),
    (True, "many"): StepLaunch(1, 2, False, bf16_rows=4, stages=4, tma_rows=4, lane_readout=True, lane_ahead=True,
                               lane_keep=True, bf16_stages=3),
}
MANY_PROGRAMS_PER_SM = 12
ANGLE_ROWS_PROGRAMS_PER_SM = 6  # `StepLaunch.angle_rows` from this many programs (b·H) per SM
# MIMO whose fp32 state TMA can feed takes the "many" defaults from 5 programs per SM. H200, 1.5B shapes, a
# layer's mid defaults against them (µs): batch 8 15.6 / 18.9, 10 24.2 / 24.2, 12 25.7 / 24.8, 16 30.5 / 26.9,
# 24 56.7 / 37.9; the whole model (ms): batch 12 2.28 / 2.14, 16 2.33 / 2.19, 24 2.74 / 2.40. Against the TMA
# tile a bf16 state lost there (mid / TMA, µs: batch 8 19.6 / 22.0, 12 20.2 / 27.2, 16 28.6 / 29.3, 24 38.4 / 38.9);
# against the pointer tile it now takes there it wins (MIMO_BF16_MANY_PROGRAMS_PER_SM).
MIMO_TMA_MANY_PROGRAMS_PER_SM = 5
# A bf16 MIMO state takes the "many" defaults from 5 programs per SM as well: there, below 20 programs per SM, they
# are the pointer loads' 4-row tile (below). H200, 1.5B shapes, a layer's mid defaults against them, same run (µs):
# batch 12 20.3 / 18.7, 16 29.0 / 19.8, 20 36.4 / 37.1, 24 38.8 / 37.8, 28 46.8 / 38.5.
MIMO_BF16_MANY_PROGRAMS_PER_SM = 5
# A bf16 state comes by TMA (MIMO, "many") only from 20 programs per SM; below, the pointer loads' 4-row tile.
# H200, 1.5B shapes, a layer's TMA / pointer tile (µs): batch 32 (15.5 programs per SM) 49.0 / 42.7, 48 (23.3)
# 74.7 / 76.2, 64 96.7 / 101.3, 96 141.2 / 149.6, 128 184.9 / 198.2.
MIMO_BF16_TMA_PROGRAMS_PER_SM = 20
REGIMES = ("few", "mid", "many")
TILES = ("fp32", "bf16", "angle")  # the tiles `StepLaunch.xz_ahead` and `replicated_o` name
# The lane readout sums each lane's columns of a row block before the warp's shuffles (`_lane_rows`), which stays
# inside the lanes only if it reads them as the tile lies: pointer loads put 4 adjacent columns in a lane, and so
# does a TMA-loaded block on Triton 3.7, while 3.6 spreads a TMA block's columns 32 apart (sm_90 builds of the
# MIMO step, fp32 state: 630 loop instructions with the matching sums against 945 with the other's conversions),
# except where the keys' pairs are swapped in registers (`StepLaunch.pairs_in_registers`): the layout of their
# reshape, 4 adjacent columns a lane, becomes the tile's (3.6, batch 128: 503 loop instructions against 822).
_TRITON_VERSION = tuple(int(v) for v in triton.__version__.split(".")[:2])


def _sms(x: Tensor) -> int:
    """The SMs of x's GPU; 0 on the CPU."""
    return sm_count(x.device) if x.is_cuda else 0


def launch_regime(programs: int, sms: int, many_from: int = MANY_PROGRAMS_PER_SM) -> str:
    """Which launch defaults `programs` = b·H programs take on a GPU with `sms` SMs (0 on the CPU: "many"):
    "few" below one program per SM, "many" from `many_from`, "mid" between."""
    if programs < sms:
        return "few"
    return "many" if programs >= many_from * sms else "mid"


@triton.jit
def _pairs_swapped(t, PAIRS: tl.constexpr):
    """t (rows, BLOCK_N) with the two coordinates of every pair exchanged, in registers: pairs (2i, 2i + 1) for
    PAIRS "interleaved", (i, i + BLOCK_N/2) for "half" (`pair_partners`' partner where N = BLOCK_N). Each side of
    a pair is summed out with the other side zeroed (exact: x + 0 is x, but −0 becomes +0), so the tile keeps its
    layout and the compiler moves the values between threads where they lie apart."""
    ROWS: tl.constexpr = t.shape[0]
    BN: tl.constexpr = t.shape[1]
    if PAIRS == "interleaved":
        t3 = tl.reshape(t, (ROWS, BN // 2, 2))
        j = tl.arange(0, 2)[None, None, :]
        axis: tl.constexpr = 2
    else:
        t3 = tl.reshape(t, (ROWS, 2, BN // 2))
        j = tl.arange(0, 2)[None, :, None]
        axis: tl.constexpr = 1
    first = tl.sum(tl.where(j == 0, t3, 0.0), axis=axis, keep_dims=True)
    second = tl.sum(tl.where(j == 1, t3, 0.0), axis=axis, keep_dims=True)
    return tl.reshape(tl.where(j == 0, second, first), (ROWS, BN))


@triton.jit
def _rot_keys(v_ptr, vb_ptr, w_ptr, n, partner, cos, sin, sgn, mask, eps, N: tl.constexpr,
              FUSED: tl.constexpr, EMULATE: tl.constexpr, PAIRS: tl.constexpr):
    """Normalised (if FUSED), biased and rotated keys or queries, one row per rank (the norm is taken along
    the last axis): v_ptr points at each rank's raw row, vb_ptr at its bias row, both (rows, 1) or
    scalar; n, partner, cos, sin, sgn are (1, BLOCK_N). PAIRS says where each coordinate's rotation partner comes
    from: "load" its own loads, normalised and biased again; "interleaved" or "half" (N = BLOCK_N there) the
    finished row, in registers (`_pairs_swapped`); "none" nowhere, no pair rotating (S = 0: the rows as they are)."""
    a = tl.load(v_ptr + n, mask=mask, other=0.0).to(tl.float32)
    if FUSED:
        rs = 1.0 / tl.sqrt(tl.sum(a * a, axis=1, keep_dims=True) / N + eps)
    if PAIRS != "load":
        if FUSED:
            a = cast(a * rs * tl.load(w_ptr + n, mask=mask, other=0.0).to(tl.float32), w_ptr.dtype.element_ty,
                     EMULATE).to(tl.float32)
        a += tl.load(vb_ptr + n, mask=mask, other=0.0)
        if PAIRS != "none":
            a = a * cos + _pairs_swapped(a, PAIRS) * (sgn * sin)
    else:
        b = tl.load(v_ptr + partner, mask=mask, other=0.0).to(tl.float32)
        if FUSED:
            WT = w_ptr.dtype.element_ty
            wa = tl.load(w_ptr + n, mask=mask, other=0.0).to(tl.float32)
            wb = tl.load(w_ptr + partner, mask=mask, other=0.0).to(tl.float32)
            a = cast(a * rs * wa, WT, EMULATE).to(tl.float32)
            b = cast(b * rs * wb, WT, EMULATE).to(tl.float32)
        a += tl.load(vb_ptr + n, mask=mask, other=0.0)
        b += tl.load(vb_ptr + partner, mask=mask, other=0.0)
        a = a * cos + b * (sgn * sin)  # (sgn·sin: a sign flip, exact, the same for every row)
    return a


@triton.jit
def _key_rows(v_ptr, v_stride, vb_ptr, w_ptr, n, partner, cos, sin, sgn, mask, eps, N: tl.constexpr,
              R: tl.constexpr, FUSED: tl.constexpr, EMULATE: tl.constexpr, PAIRS: tl.constexpr):
    """The R ≤ 8 ranks' rows of `_rot_keys` as an 8-tuple (zeros past R): rank r's raw row at
    v_ptr + r·v_stride, its bias row at vb_ptr + r·N. Separate rows, not one (R, BLOCK_N) tile, so the P
    loop reads each without extracting it across warps."""
    z = tl.zeros(n.shape, tl.float32)
    a = (w_ptr, n, partner, cos, sin, sgn, mask, eps)  # constexprs apart: inside a tuple they become values
    return (_rot_keys(v_ptr, vb_ptr, *a, N, FUSED, EMULATE, PAIRS),
            _rot_keys(v_ptr + v_stride, vb_ptr + N, *a, N, FUSED, EMULATE, PAIRS) if R > 1 else z,
            _rot_keys(v_ptr + 2 * v_stride, vb_ptr + 2 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 2 else z,
            _rot_keys(v_ptr + 3 * v_stride, vb_ptr + 3 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 3 else z,
            _rot_keys(v_ptr + 4 * v_stride, vb_ptr + 4 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 4 else z,
            _rot_keys(v_ptr + 5 * v_stride, vb_ptr + 5 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 5 else z,
            _rot_keys(v_ptr + 6 * v_stride, vb_ptr + 6 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 6 else z,
            _rot_keys(v_ptr + 7 * v_stride, vb_ptr + 7 * N, *a, N, FUSED, EMULATE, PAIRS) if R > 7 else z)


@triton.jit
def _cached_rows(ptr, stride, n, mask, R: tl.constexpr):
    """Rows ptr + r·stride, r < R ≤ 8, as an 8-tuple of fp32 (zeros past R)."""
    z = tl.zeros(n.shape, tl.float32)
    return (tl.load(ptr + n, mask=mask, other=0.0).to(tl.float32),
            tl.load(ptr + stride + n, mask=mask, other=0.0).to(tl.float32) if R > 1 else z,
            tl.load(ptr + 2 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 2 else z,
            tl.load(ptr + 3 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 3 else z,
            tl.load(ptr + 4 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 4 else z,
            tl.load(ptr + 5 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 5 else z,
            tl.load(ptr + 6 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 6 else z,
            tl.load(ptr + 7 * stride + n, mask=mask, other=0.0).to(tl.float32) if R > 7 else z)


@triton.jit
def _tile_rows(t, rk, R: tl.constexpr):
    """The rows r < R ≤ 8 of a (BLOCK_R, BLOCK_N) tile as an 8-tuple of (1, BLOCK_N) (zeros past R)."""
    z = tl.zeros((1, t.shape[1]), tl.float32)
    return (tl.sum(tl.where(rk == 0, t, 0.0), axis=0, keep_dims=True),
            tl.sum(tl.where(rk == 1, t, 0.0), axis=0, keep_dims=True) if R > 1 else z,
            tl.sum(tl.where(rk == 2, t, 0.0), axis=0, keep_dims=True) if R > 2 else z,
            tl.sum(tl.where(rk == 3, t, 0.0), axis=0, keep_dims=True) if R > 3 else z,
            tl.sum(tl.where(rk == 4, t, 0.0), axis=0, keep_dims=True) if R > 4 else z,
            tl.sum(tl.where(rk == 5, t, 0.0), axis=0, keep_dims=True) if R > 5 else z,
            tl.sum(tl.where(rk == 6, t, 0.0), axis=0, keep_dims=True) if R > 6 else z,
            tl.sum(tl.where(rk == 7, t, 0.0), axis=0, keep_dims=True) if R > 7 else z)


@triton.jit
def _scaled_rows(t, s, R: tl.constexpr):
    """s · the rows r < R ≤ 8 of an 8-tuple (the rest as they are)."""
    return (s * t[0], s * t[1] if R > 1 else t[1], s * t[2] if R > 2 else t[2], s * t[3] if R > 3 else t[3],
            s * t[4] if R > 4 else t[4], s * t[5] if R > 5 else t[5], s * t[6] if R > 6 else t[6],
            s * t[7] if R > 7 else t[7])


@triton.jit
def _store_rows(ptr, stride, t, n, mask, R: tl.constexpr, EMULATE: tl.constexpr):
    """Rows r < R ≤ 8 of an 8-tuple stored at ptr + r·stride (the inverse of `_cached_rows`)."""
    for r in tl.static_range(R):
        tl.store(ptr + r * stride + n, cast(t[r], ptr.dtype.element_ty, EMULATE), mask=mask)


@triton.jit
def _row_terms(x_ptr, z_ptr, mx_ptr, mz_ptr, mo_ptr, cf_ptr, D_h, P: tl.constexpr, R: tl.constexpr,
               BLOCK_PA: tl.constexpr, BLOCK_R: tl.constexpr, HAS_Z: tl.constexpr, APPROX: tl.constexpr):
    """A MIMO head's per-row readout terms, all P rows at once, stored at cf_ptr as (R + 1, P) fp32: row r < R
    the rank's gate c_r = SiLU(z·mimo_z,r)·mimo_o,r (mimo_o,r without z), row R the skip D·x·Σ_r mimo_x,r·c_r.
    The step's output is then o = Σ_r c_r (S q_r) + skip, the per-row work done once instead of per row block."""
    pp = tl.arange(0, BLOCK_PA)
    rr = tl.arange(0, BLOCK_R)[:, None]
    pa = pp < P
    m = (rr < R) & pa[None, :]
    w = rr * P + pp[None, :]
    c = tl.load(mo_ptr + w, mask=m, other=0.0)
    if HAS_Z:
        zr = tl.load(z_ptr + pp, mask=pa, other=0.0).to(tl.float32)[None, :] * tl.load(mz_ptr + w, mask=m, other=0.0)
        c = c * (zr * sigmoid(zr, APPROX))
    x = tl.load(x_ptr + pp, mask=pa, other=0.0).to(tl.float32)
    skip = D_h * x * tl.sum(tl.load(mx_ptr + w, mask=m, other=0.0) * c, axis=0)
    tl.store(cf_ptr + w, c, mask=m)
    tl.store(cf_ptr + R * P + pp, skip, mask=pa)


@triton.jit
def _step_scalars(dt_ptr, adt_ptr, lam_ptr, th_ptr, dtb_ptr, ang_ptr, rot, a_floor, FUSED: tl.constexpr,
                  EMULATE: tl.constexpr):
    """A head's decay α, the trapezoid's β (previous token) and γ (this token), its new angles Φ and their
    cos / sin (1 / 0 past the rotated pairs): Δ, a, λ and the angle rates at their pointers, activated here when
    FUSED (softplus Δ + bias, heavy-tail a, sigmoid λ, π·tanh θ); th_ptr and ang_ptr index the pairs (`rot`)."""
    dt = tl.load(dt_ptr).to(tl.float32)
    adt = tl.load(adt_ptr).to(tl.float32)
    lam = tl.load(lam_ptr).to(tl.float32)
    th = tl.load(th_ptr, mask=rot, other=0.0).to(tl.float32)
    if FUSED:
        dt = softplus(dt + tl.load(dtb_ptr))
        adt = decay_rate(adt, a_floor) * dt
        lam = tl.sigmoid(lam)
        th = pi_tanh(th)
    alpha = tl.exp(adt)
    gamma = lam * dt
    beta = (1.0 - lam) * dt * alpha

    phi = wrap_angle(tl.load(ang_ptr, mask=rot, other=0.0) + dt * th)
    cos, sin = cos_sin(phi, EMULATE)
    cos = tl.where(rot, cos, 1.0)
    sin = tl.where(rot, sin, 0.0)
    return alpha, beta, gamma, phi, cos, sin


@triton.jit
def _head_start(pid, dt_ptr, adt_ptr, lam_ptr, th_ptr, dtb_ptr, ang_ptr, sdt_b, sdt_h, sadt_b, sadt_h, slam_b,
                slam_h, sth_b, sth_s, a_floor, H: tl.constexpr, G: tl.constexpr, N: tl.constexpr, S: tl.constexpr,
                BLOCK_N: tl.constexpr, INTERLEAVED: tl.constexpr, FUSED: tl.constexpr, PDL: tl.constexpr,
                EMULATE: tl.constexpr):
    """A step program's head: its batch row bi (64-bit offsets: large batches of long rows pass 2**31 elements),
    head h, group g, bh = bi·H + h, the N axis n with its mask, the rotated pairs (`pair_partners`) and the head's
    `_step_scalars`; after the grid dependency wait (PDL), before which nothing is read."""
    grid_dependency_wait(PDL)
    bi = (pid // H).to(tl.int64)
    h = pid % H
    g = h // (H // G)
    bh = bi * H + h
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    rot, ai, partner, sgn = pair_partners(n, N, S, INTERLEAVED)
    alpha, beta, gamma, phi, cos, sin = _step_scalars(
        dt_ptr + bi * sdt_b + h * sdt_h, adt_ptr + bi * sadt_b + h * sadt_h, lam_ptr + bi * slam_b + h * slam_h,
        th_ptr + bi * sth_b + ai * sth_s, dtb_ptr + h, ang_ptr + bh * S + ai, rot, a_floor, FUSED, EMULATE)
    return bi, h, g, bh, n, nm, rot, ai, partner, sgn, alpha, beta, gamma, phi, cos, sin


@triton.jit
def _keep_x(x_ptr, xs_ptr, P: tl.constexpr, BLOCK_P: tl.constexpr, EMULATE: tl.constexpr):
    """This token's x (P values at x_ptr) copied into the x cache at xs_ptr, for the next token's β term."""
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        x = tl.load(x_ptr + p, mask=p < P, other=0.0)
        tl.store(xs_ptr + p, cast(x, xs_ptr.dtype.element_ty, EMULATE), mask=p < P)


@triton.jit
def _l2_prefetch(ptr, NBYTES: tl.constexpr):
    """Ask for NBYTES (a multiple of 16) from ptr (16-byte aligned) into L2, by the program's first thread, without
    waiting (`cp.async.bulk.prefetch.L2`, sm_90 on). A hint: it reads nothing into registers, and a later write to
    those bytes is still seen (L2 is where global memory is coherent), so it may run before the grid dependency
    wait."""
    tl.inline_asm_elementwise(
        "{ .reg .pred %pfp; .reg .b32 %pft; mov.u32 %pft, %tid.x; setp.eq.u32 %pfp, %pft, 0; "
        f"@%pfp cp.async.bulk.prefetch.L2.global [$1], {NBYTES}; mov.u32 $0, 0; }}",
        "=r,l", [ptr.to(tl.int64, bitcast=True)], dtype=tl.int32, is_pure=False, pack=1)


def lane_readout_asm(slots: int, ranks: int) -> str:
    """PTX of MIMO's readout across one warp (`_lane_readout`): operands $1…$slots are the lanes' partial sums
    of the block's (row, rank) readouts, slot row·R + rank; $slots+1 the lane's gate c and $slots+2 its skip term.

    The warp reduces all the slots at once, halving them at each exchange (a reduce-scatter: at lane bit m the
    lanes with the bit set keep the upper half of their slots and send the lower, the others the reverse), so
    it shuffles slots − 1 values instead of slots × 5, and lane L ends with slot (L >> shift) & (slots − 1)
    summed over the warp. Then y = c·total + skip for that one (row, rank), and a butterfly over the rank bits
    sums the row's ranks: every lane returns its row's output."""
    if slots < 2 or slots > 32 or slots & (slots - 1) or ranks < 1 or ranks & (ranks - 1) or slots % ranks:
        raise ValueError(f"lane readout: slots {slots} and ranks {ranks} must be powers of two, 2 <= slots <= 32")
    levels = slots.bit_length() - 1
    shift = 5 - levels
    lines = ["{", ".reg .pred %lrp;", ".reg .b32 %lrl, %lrt, %lrs, %lrk, %lrr;", f".reg .b32 %lrv<{slots // 2}>;",
             "mov.u32 %lrl, %laneid;"]
    cur = [f"${i + 1}" for i in range(slots)]
    for level in range(levels):
        mask, half = 16 >> level, len(cur) // 2
        lines += [f"and.b32 %lrt, %lrl, {mask};", "setp.ne.u32 %lrp, %lrt, 0;"]
        for i in range(half):
            lo, hi = cur[i], cur[i + half]
            lines += [f"selp.b32 %lrs, {lo}, {hi}, %lrp;", f"selp.b32 %lrk, {hi}, {lo}, %lrp;",
                      f"shfl.sync.bfly.b32 %lrr, %lrs, {mask}, 0x1f, 0xffffffff;", f"add.f32 %lrv{i}, %lrk, %lrr;"]
        cur = [f"%lrv{i}" for i in range(half)]
    for bit in range(shift):  # lanes holding the same slot
        lines += [f"shfl.sync.bfly.b32 %lrr, %lrv0, {1 << bit}, 0x1f, 0xffffffff;", "add.f32 %lrv0, %lrv0, %lrr;"]
    lines.append(f"fma.rn.f32 %lrv0, ${slots + 1}, %lrv0, ${slots + 2};")
    for bit in range(ranks.bit_length() - 1):  # the row's ranks
        lines += [f"shfl.sync.bfly.b32 %lrr, %lrv0, {1 << (shift + bit)}, 0x1f, 0xffffffff;",
                  "add.f32 %lrv0, %lrv0, %lrr;"]
    lines += ["mov.b32 $0, %lrv0;", "}"]
    return "\n".join(lines)


@triton.jit
def _lane_rows(prod, BLOCK_N: tl.constexpr, CONTIGUOUS: tl.constexpr):
    """A (4, BLOCK_N) product's per-lane partial row sums: four (32,) tensors, element L lane L's share of the
    row: its columns 4L … 4L + 3, … (CONTIGUOUS: pointer loads, and a TMA-loaded tile on Triton 3.7) or L, L + 32,
    … (a TMA-loaded tile on Triton 3.6). Summed as the tile lies, the sums stay inside each lane and the rows come
    apart by register renames; any other layout is still right, through layout conversions."""
    if CONTIGUOUS:
        t = tl.sum(tl.reshape(prod, (4, 32, BLOCK_N // 32)), axis=2)
    else:
        t = tl.sum(tl.reshape(prod, (4, BLOCK_N // 32, 32)), axis=1)
    a, b = tl.split(tl.reshape(tl.permute(t, (1, 0)), (32, 2, 2)))
    r0, r2 = tl.split(a)
    r1, r3 = tl.split(b)
    return r0, r1, r2, r3


@triton.jit
def _lane_readout(parts, c, skip, lane, R: tl.constexpr, SHIFT: tl.constexpr, ASM: tl.constexpr,
                  EMULATE: tl.constexpr):
    """Every lane's row output Σ_r (c_r·(S q_r) + skip_r) from the lanes' partial sums `parts` (a 16-tuple, slot
    row·R + rank) and the lane's own slot's gate c and skip (see `lane_readout_asm`). EMULATE: the same function
    in plain Triton (the interpreter has no PTX)."""
    if EMULATE:
        slot = (lane >> SHIFT) % 16
        v = tl.zeros_like(c)
        for s in tl.static_range(16):
            v += tl.where(slot == s, tl.sum(parts[s], axis=0), 0.0)
        y = c * v + skip
        low = (1 << SHIFT) - 1
        same = ((slot // R)[:, None] == (slot // R)[None, :]) & ((lane & low)[:, None] == (lane & low)[None, :])
        return tl.sum(tl.where(same, y[None, :], 0.0), axis=1)
    return tl.inline_asm_elementwise(
        ASM, "=r" + ",r" * 18, [parts[0], parts[1], parts[2], parts[3], parts[4], parts[5], parts[6], parts[7],
                                parts[8], parts[9], parts[10], parts[11], parts[12], parts[13], parts[14], parts[15],
                                c, skip], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _step_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
    dtb_ptr, wB_ptr, wC_ptr, Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    o_ptr, ang_ptr, ssm_ptr, k_ptr, xs_ptr, ssm_desc, cf_ptr,
    sx_b, sx_h, sz_b, sz_h, sB_b, sB_r, sB_g, sC_b, sC_r, sC_g,
    sdt_b, sdt_h, sadt_b, sadt_h, slam_b, slam_h, sth_b, sth_s, so_b, so_h,
    a_floor, eps,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr, MIMO: tl.constexpr, FUSED: tl.constexpr,
    PREFETCH: tl.constexpr, KQ_TILE: tl.constexpr, BLOCK_R: tl.constexpr, PDL: tl.constexpr,
    APPROX: tl.constexpr, EMULATE: tl.constexpr, PREV: tl.constexpr, TMA: tl.constexpr, STAGES: tl.constexpr,
    FOLD_Q: tl.constexpr = False, COEF: tl.constexpr = False, BLOCK_PA: tl.constexpr = 1,
    LANE: tl.constexpr = False, ASM: tl.constexpr = "", LANE_CONTIGUOUS: tl.constexpr = False,
    TMA_STORE: tl.constexpr = True, LANE_AHEAD: tl.constexpr = False, LANE_KEEP: tl.constexpr = False,
    L2_PREFETCH: tl.constexpr = 0, XZ_AHEAD: tl.constexpr = False, REPLICATED_O: tl.constexpr = False,
    PAIRS: tl.constexpr = "load",
):
    pid = tl.program_id(0)
    if L2_PREFETCH:  # the head's first state rows on their way to L2 while the program waits and builds its keys
        _l2_prefetch(ssm_ptr + pid.to(tl.int64) * P * N, L2_PREFETCH)
    bi, h, g, bh, n, nm, rot, ai, partner, sgn, alpha, beta, gamma, phi, cos, sin = _head_start(
        pid, dt_ptr, adt_ptr, lam_ptr, th_ptr, dtb_ptr, ang_ptr, sdt_b, sdt_h, sadt_b, sadt_h, slam_b, slam_h, sth_b,
        sth_s, a_floor, H, G, N, S, BLOCK_N, INTERLEAVED, FUSED, PDL, EMULATE)

    # keys and queries of every rank, each a (1, BLOCK_N) row (tuples of 8, zeros past R)
    n2, nm2 = n[None, :], nm[None, :]
    if KQ_TILE:  # one (BLOCK_R, BLOCK_N) tile per kind, rows extracted (fewer registers at 8 warps)
        rk = tl.arange(0, BLOCK_R)[:, None]
        mrn = (rk < R) & nm2
        kq_t = (n2, partner[None, :], cos[None, :], sin[None, :], sgn[None, :], mrn, eps)
        if PREV:
            k_prev = _tile_rows(tl.load(k_ptr + ((bi * R + rk) * H + h) * N + n2, mask=mrn, other=0.0)
                                .to(tl.float32), rk, R)
        k = _tile_rows(_rot_keys(B_ptr + bi * sB_b + rk * sB_r + g * sB_g, Bb_ptr + (h * R + rk) * N, wB_ptr, *kq_t,
                                 N, FUSED, EMULATE, PAIRS), rk, R)
        q = _tile_rows(_rot_keys(C_ptr + bi * sC_b + rk * sC_r + g * sC_g, Cb_ptr + (h * R + rk) * N, wC_ptr, *kq_t,
                                 N, FUSED, EMULATE, PAIRS), rk, R)
    else:
        kq_args = (n2, partner[None, :], cos[None, :], sin[None, :], sgn[None, :], nm2, eps)
        if PREV:
            k_prev = _cached_rows(k_ptr + (bi * R * H + h) * N, H * N, n2, nm2, R)
        k = _key_rows(B_ptr + bi * sB_b + g * sB_g, sB_r, Bb_ptr + h * R * N, wB_ptr, *kq_args, N, R, FUSED,
                      EMULATE, PAIRS)
        q = _key_rows(C_ptr + bi * sC_b + g * sC_g, sC_r, Cb_ptr + h * R * N, wC_ptr, *kq_args, N, R, FUSED,
                      EMULATE, PAIRS)
    D_h = tl.load(D_ptr + h)

    # walk P in row blocks: S ← αS + Σ_r (β x_prev,r k_prev,rᵀ + γ x_r k_rᵀ); y_r = S q_r + D x_r.
    # Every product is a 2-D (BLOCK_P, BLOCK_N) tile in one layout, one rank at a time, and the readout
    # reduces along N only: a (R, P, N) broadcast would reduce across threads along two axes.
    # PREFETCH: the next block's state is loaded before this block's arithmetic, which hides its latency
    # (SISO and Mamba-2, H200, batch 128: 152.9 → 145.2 µs; MIMO's one-warp heads 214 → 263 µs: off there)
    # TMA: the row blocks come through shared memory by tensor-memory-access copies, STAGES − 1 of them in
    # flight ahead of the arithmetic, without the registers a prefetch holds (ssm_desc: the state as
    # (b·H·P, N) rows in (BLOCK_P, N) boxes; P a multiple of BLOCK_P, N = BLOCK_N). STAGES is None without.
    if COEF:  # MIMO: every lane of a row block would redo its rows' gates; do them once, for all P, here
        _row_terms(x_ptr + bi * sx_b + h * sx_h, z_ptr + bi * sz_b + h * sz_h, mx_ptr + h * R * P,
                   mz_ptr + h * R * P, mo_ptr + h * R * P, cf_ptr + pid.to(tl.int64) * (R + 1) * P, D_h, P, R,
                   BLOCK_PA, BLOCK_R, HAS_Z, APPROX)
    if COEF or LANE:
        # β and γ ride on the keys (once per program, not per row and rank); the cached k is written now, its
        # previous rows being in registers, so the loop holds only the scaled ones
        if PREV:
            k_prev = _scaled_rows(k_prev, beta, R)
        tl.debug_barrier()  # every thread's row terms stored and cached k read before any reads those or writes k
        if PREV:
            _store_rows(k_ptr + (bi * R * H + h) * N, H * N, k, n2, nm2, R, EMULATE)
        k = _scaled_rows(k, gamma, R)
    if LANE:  # MIMO's readout one (row, rank) a lane (`_lane_readout`): lane L has slot (L >> 1) & 15
        lane = tl.arange(0, 32)
        lrow = (lane >> 3) & 3
        lrank = (lane >> 1) & 3
        lstore = (lane & 7) == 0
        zl_ptr = z_ptr + bi * sz_b + h * sz_h
        xl_ptr = x_ptr + bi * sx_b + h * sx_h
        if LANE_AHEAD:  # the lane's z and x, a block ahead: their loads are too narrow for the pipeliner's copies
            xl_next = tl.load(xl_ptr + lrow, mask=lrow < P, other=0.0).to(tl.float32)
            if HAS_Z:
                zl_next = tl.load(zl_ptr + lrow, mask=lrow < P, other=0.0).to(tl.float32)
    if PREFETCH:
        p = tl.arange(0, BLOCK_P)
        ahead = tl.load(ssm_ptr + bh * P * N + p[:, None] * N + n[None, :], mask=(p < P)[:, None] & nm[None, :],
                        other=0.0)
        if XZ_AHEAD:  # the first block's x, cached x and z; each block then loads the next one's
            x_next = tl.load(x_ptr + bi * sx_b + h * sx_h + p, mask=p < P, other=0.0)
            if PREV:
                xp_next = tl.load(xs_ptr + bh * P + p, mask=p < P, other=0.0)
            if HAS_Z:
                z_next = tl.load(z_ptr + bi * sz_b + h * sz_h + p, mask=p < P, other=0.0)
    for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < P
        if XZ_AHEAD:  # the cached x is overwritten only after the loop, so reading the next block's is safe
            pn = p + BLOCK_P
            x = x_next.to(tl.float32)
            x_next = tl.load(x_ptr + bi * sx_b + h * sx_h + pn, mask=pn < P, other=0.0)
            if PREV:
                x_prev = xp_next.to(tl.float32)
                xp_next = tl.load(xs_ptr + bh * P + pn, mask=pn < P, other=0.0)
            if HAS_Z:
                zv = z_next.to(tl.float32)
                z_next = tl.load(z_ptr + bi * sz_b + h * sz_h + pn, mask=pn < P, other=0.0)
        else:
            x = tl.load(x_ptr + bi * sx_b + h * sx_h + p, mask=pm, other=0.0).to(tl.float32)
            if PREV:
                x_prev = tl.load(xs_ptr + bh * P + p, mask=pm, other=0.0).to(tl.float32)
        sptr = ssm_ptr + bh * P * N + p[:, None] * N + n[None, :]
        smask = pm[:, None] & nm[None, :]
        if TMA:
            state = alpha * ssm_desc.load([(bh * P + p0).to(tl.int32), 0]).to(tl.float32)
        elif PREFETCH:
            state = alpha * ahead.to(tl.float32)
            ahead = tl.load(sptr + BLOCK_P * N, mask=(p + BLOCK_P < P)[:, None] & nm[None, :], other=0.0)
        else:
            state = alpha * tl.load(sptr, mask=smask, other=0.0).to(tl.float32)
        for r in tl.static_range(R):
            xr = x
            if MIMO:
                mx = tl.load(mx_ptr + (h * R + r) * P + p, mask=pm, other=0.0)
                xr = x * mx
            if PREV:
                xr_prev = x_prev
                if MIMO:
                    xr_prev = x_prev * mx
                if COEF or LANE:
                    state += xr_prev[:, None] * k_prev[r]
                else:
                    state += (beta * xr_prev)[:, None] * k_prev[r]
            if COEF or LANE:
                state += xr[:, None] * k[r]
            else:
                state += (gamma * xr)[:, None] * k[r]
        if LANE:  # each lane's own (row, rank): its gate c and skip, then one warp-wide reduce-scatter
            pl = p0 + lrow
            plm = pl < P
            wl = (h * R + lrank) * P + pl
            if LANE_AHEAD:
                xl = xl_next
                if HAS_Z:
                    zl = zl_next
                nl = pl + BLOCK_P
                xl_next = tl.load(xl_ptr + nl, mask=nl < P, other=0.0).to(tl.float32)
                if HAS_Z:
                    zl_next = tl.load(zl_ptr + nl, mask=nl < P, other=0.0).to(tl.float32)
            else:
                xl = tl.load(xl_ptr + pl, mask=plm, other=0.0).to(tl.float32)
                if HAS_Z:
                    zl = tl.load(zl_ptr + pl, mask=plm, other=0.0).to(tl.float32)
            c = tl.load(mo_ptr + wl, mask=plm, other=0.0)
            if HAS_Z:
                zl = zl * tl.load(mz_ptr + wl, mask=plm, other=0.0)
                c = c * (zl * sigmoid(zl, APPROX))
            skip = D_h * xl * tl.load(mx_ptr + wl, mask=plm, other=0.0) * c
            if PREV and LANE_KEEP:  # this block's x_prev is read, and no later block reads these rows: the lane
                # path runs one warp (`lane` in `_launch`), so no other warp can still be reading them
                tl.store(xs_ptr + bh * P + pl, cast(xl, xs_ptr.dtype.element_ty, EMULATE), mask=plm & lstore)
            a0, a1, a2, a3 = _lane_rows(state * q[0], BLOCK_N, LANE_CONTIGUOUS)
            b0, b1, b2, b3 = _lane_rows(state * q[1], BLOCK_N, LANE_CONTIGUOUS)
            c0, c1, c2, c3 = _lane_rows(state * q[2], BLOCK_N, LANE_CONTIGUOUS)
            d0, d1, d2, d3 = _lane_rows(state * q[3], BLOCK_N, LANE_CONTIGUOUS)
            o = _lane_readout((a0, b0, c0, d0, a1, b1, c1, d1, a2, b2, c2, d2, a3, b3, c3, d3), c, skip, lane, R, 1,
                              ASM, EMULATE)
            tl.store(o_ptr + bi * so_b + h * so_h + pl, cast(o, o_ptr.dtype.element_ty, EMULATE), mask=plm & lstore)
        elif COEF:  # o = Σ_r c_r S q_r + skip, c_r and skip from the program's row terms
            cf = cf_ptr + pid.to(tl.int64) * (R + 1) * P + p
            o = tl.load(cf + R * P, mask=pm, other=0.0)
            for r in tl.static_range(R):
                o += tl.load(cf + r * P, mask=pm, other=0.0) * tl.sum(state * q[r], axis=1)
        else:
            if HAS_Z and not XZ_AHEAD:
                zv = tl.load(z_ptr + bi * sz_b + h * sz_h + p, mask=pm, other=0.0).to(tl.float32)
            o = tl.zeros((BLOCK_P,), tl.float32)
            if FOLD_Q:  # o = Σ_n S (Σ_r c_r q_r) + Σ_r c_r D x_r, c_r the rank's gate × output weight: one reduction
                qc = tl.zeros((BLOCK_P, BLOCK_N), tl.float32)
            for r in tl.static_range(R):
                xr = x
                if MIMO:
                    xr = x * tl.load(mx_ptr + (h * R + r) * P + p, mask=pm, other=0.0)
                if FOLD_Q:
                    y = D_h * xr  # the skip term; the state's part is summed once below
                    c = tl.full((BLOCK_P,), 1.0, tl.float32)
                else:
                    y = tl.sum(state * q[r], axis=1) + D_h * xr
                if HAS_Z:
                    zr = zv
                    if MIMO:
                        zr = zv * tl.load(mz_ptr + (h * R + r) * P + p, mask=pm, other=0.0)
                    y = y * zr * sigmoid(zr, APPROX)
                    if FOLD_Q:
                        c = zr * sigmoid(zr, APPROX)
                if MIMO:
                    mo = tl.load(mo_ptr + (h * R + r) * P + p, mask=pm, other=0.0)
                    y = y * mo
                    if FOLD_Q:
                        c = c * mo
                if FOLD_Q:
                    qc += c[:, None] * q[r]
                o += y
            if FOLD_Q:
                o += tl.sum(state * qc, axis=1)
        if REPLICATED_O:
            store_replicated(o_ptr + bi * so_b + h * so_h + p, cast(o, o_ptr.dtype.element_ty, EMULATE), pm, EMULATE)
        elif not LANE:
            tl.store(o_ptr + bi * so_b + h * so_h + p, cast(o, o_ptr.dtype.element_ty, EMULATE), mask=pm)
        if TMA and TMA_STORE:  # back through shared memory too: no per-thread stores, fewer registers (SISO 96 → 80)
            ssm_desc.store([(bh * P + p0).to(tl.int32), 0], cast(state, ssm_ptr.dtype.element_ty, EMULATE))
        else:
            tl.store(sptr, cast(state, ssm_ptr.dtype.element_ty, EMULATE), mask=smask)

    # every read of the cached k, Φ and x above must land before any thread overwrites them
    tl.debug_barrier()
    tl.store(ang_ptr + bh * S + ai, phi, mask=rot & (sgn < 0))
    if PREV:  # off (λ ≡ 1, Mamba-2): the previous-token term is zero, its k and x never read or kept
        if not (COEF or LANE):  # (they stored k before the loop)
            _store_rows(k_ptr + (bi * R * H + h) * N, H * N, k, n2, nm2, R, EMULATE)
        if not (LANE and LANE_KEEP):
            _keep_x(x_ptr + bi * sx_b + h * sx_h, xs_ptr + bh * P, P, BLOCK_P, EMULATE)


@triton.jit
def _stack_rows(a, b):
    """Rows of a, then rows of b: (2·rows, cols) from two (rows, cols) tiles."""
    return tl.reshape(tl.permute(tl.join(a, b), (2, 0, 1)), (2 * a.shape[0], a.shape[1]))


@triton.jit
def _step_mma_kernel(
    x_ptr, z_ptr, B_ptr, C_ptr, dt_ptr, adt_ptr, lam_ptr, th_ptr,
    dtb_ptr, wB_ptr, wC_ptr, Bb_ptr, Cb_ptr, D_ptr, mx_ptr, mz_ptr, mo_ptr,
    o_ptr, ang_ptr, ssm_ptr, k_ptr, xs_ptr, ssm_desc,
    sx_b, sx_h, sz_b, sz_h, sB_b, sB_r, sB_g, sC_b, sC_r, sC_g,
    sdt_b, sdt_h, sadt_b, sadt_h, slam_b, slam_h, sth_b, sth_s, so_b, so_h,
    a_floor, eps,
    H: tl.constexpr, G: tl.constexpr, R: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
    S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_Z: tl.constexpr, FUSED: tl.constexpr,
    PDL: tl.constexpr, APPROX: tl.constexpr, EMULATE: tl.constexpr, PREV: tl.constexpr,
    TMA: tl.constexpr, STAGES: tl.constexpr, UPDATE_DOT: tl.constexpr, READ_DOT: tl.constexpr, PAIRS: tl.constexpr,
):
    """MIMO's step on tensor cores (`StepLaunch.mma`): per row block, the rank-2R update and the R readouts are
    products with K = N or K = 16 (the ranks, zero-padded), not 3R + 1 multiply-adds per state element:
        S' = αS + A·K,  A (rows, 16) = [x_prev ∘ mimo_x,r | x ∘ mimo_x,r | 0],  K (16, N) = [β k_prev,r ; γ k_r ; 0]
        Y = S'·Qᵀ = α (S·Qᵀ) + A·(K·Qᵀ),  Q (BLOCK_R, N) the queries
        o = Σ_r c_r (Y_r + D x mimo_x,r),  c_r = SiLU(z mimo_z,r) mimo_o,r.
    The readout takes the old state S as it arrives (by TMA into shared memory, a product's operand there), so
    the new one is only ever an accumulator. UPDATE_DOT / READ_DOT are `input_precision`s ("tf32x3" keeps the
    update near fp32; "fma" does the update by multiply-adds as `_step_kernel` does, the readout alone on tensor
    cores); a bf16 state is read out widened to fp32, exact in tf32 (with bf16 queries too, its outputs missed
    spec §7's 2e-2 at p95 on an H200: 2.8e-2)."""
    pid = tl.program_id(0)
    bi, h, g, bh, n, nm, rot, ai, partner, sgn, alpha, beta, gamma, phi, cos, sin = _head_start(
        pid, dt_ptr, adt_ptr, lam_ptr, th_ptr, dtb_ptr, ang_ptr, sdt_b, sdt_h, sadt_b, sadt_h, slam_b, slam_h, sth_b,
        sth_s, a_floor, H, G, N, S, BLOCK_N, INTERLEAVED, FUSED, PDL, EMULATE)

    rk = tl.arange(0, BLOCK_R)[:, None]
    n2, rm2 = n[None, :], (rk < R) & nm[None, :]
    kq = (n2, partner[None, :], cos[None, :], sin[None, :], sgn[None, :], rm2, eps)
    k = _rot_keys(B_ptr + bi * sB_b + rk * sB_r + g * sB_g, Bb_ptr + (h * R + rk) * N, wB_ptr, *kq, N, FUSED,
                  EMULATE, PAIRS)
    q = _rot_keys(C_ptr + bi * sC_b + rk * sC_r + g * sC_g, Cb_ptr + (h * R + rk) * N, wC_ptr, *kq, N, FUSED,
                  EMULATE, PAIRS)
    k_rows = k_ptr + ((bi * R + rk) * H + h) * N + n2
    kp = tl.zeros_like(k)
    if PREV:
        kp = beta * tl.load(k_rows, mask=rm2, other=0.0).to(tl.float32)
    kn = gamma * k
    kk = _stack_rows(kp, kn)
    if UPDATE_DOT == "fma":
        k_prev = _tile_rows(kp, rk, R)
        k_new = _tile_rows(kn, rk, R)
    if 2 * BLOCK_R < 16:  # K of at least 16
        kk = _stack_rows(kk, tl.zeros_like(kk))
    if 4 * BLOCK_R < 16:
        kk = _stack_rows(kk, tl.zeros_like(kk))
    qt = tl.trans(q)
    KQ_DOT: tl.constexpr = "ieee" if UPDATE_DOT == "fma" else UPDATE_DOT
    kq_t = tl.dot(kk, qt, input_precision=KQ_DOT)  # (16, BLOCK_R): each key row against each query
    D_h = tl.load(D_ptr + h)

    ck = tl.arange(0, kk.shape[0])[None, :]
    crank = tl.where(ck >= BLOCK_R, ck - BLOCK_R, ck)
    cr = tl.arange(0, BLOCK_R)[None, :]
    for p0 in tl.range(0, P, BLOCK_P, num_stages=STAGES):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < P
        p2, pm2 = p[:, None], pm[:, None]
        sptr = ssm_ptr + bh * P * N + p2 * N + n2
        smask = pm2 & nm[None, :]
        if TMA:
            s_old = ssm_desc.load([(bh * P + p0).to(tl.int32), 0])
        else:
            s_old = tl.load(sptr, mask=smask, other=0.0)
        x1 = tl.load(x_ptr + bi * sx_b + h * sx_h + p, mask=pm, other=0.0).to(tl.float32)
        x = x1[:, None]
        xa = x
        if PREV:
            xp = tl.load(xs_ptr + bh * P + p, mask=pm, other=0.0).to(tl.float32)
            xa = tl.where(ck < BLOCK_R, xp[:, None], x)
        a = xa * tl.load(mx_ptr + (h * R + crank) * P + p2, mask=pm2 & (crank < R) & (ck < 2 * BLOCK_R), other=0.0)
        y = tl.dot(s_old.to(tl.float32), qt, input_precision=READ_DOT)
        y = alpha * y + tl.dot(a, kq_t, input_precision=KQ_DOT)
        if UPDATE_DOT == "fma":  # the update as multiply-adds, one rank at a time, the readout on tensor cores
            state = alpha * s_old.to(tl.float32)
            for r in tl.static_range(R):
                mx = tl.load(mx_ptr + (h * R + r) * P + p, mask=pm, other=0.0)
                if PREV:
                    state += (xp * mx)[:, None] * k_prev[r]
                state += (x1 * mx)[:, None] * k_new[r]
        else:
            state = tl.dot(a, kk, acc=alpha * s_old.to(tl.float32), input_precision=UPDATE_DOT)
        rm = pm2 & (cr < R)
        w = (h * R + cr) * P + p2
        c = tl.load(mo_ptr + w, mask=rm, other=0.0)
        if HAS_Z:
            zr = tl.load(z_ptr + bi * sz_b + h * sz_h + p2, mask=pm2, other=0.0).to(tl.float32)
            zr = zr * tl.load(mz_ptr + w, mask=rm, other=0.0)  # (ones where the caller gave no mimo_z)
            c = c * (zr * sigmoid(zr, APPROX))
        o = tl.sum(c * (y + D_h * x * tl.load(mx_ptr + w, mask=rm, other=0.0)), axis=1)
        tl.store(o_ptr + bi * so_b + h * so_h + p, cast(o, o_ptr.dtype.element_ty, EMULATE), mask=pm)
        if TMA:
            ssm_desc.store([(bh * P + p0).to(tl.int32), 0], cast(state, ssm_ptr.dtype.element_ty, EMULATE))
        else:
            tl.store(sptr, cast(state, ssm_ptr.dtype.element_ty, EMULATE), mask=smask)

    tl.debug_barrier()  # every read of the cached k, Φ and x above lands before any thread overwrites them
    tl.store(ang_ptr + bh * S + ai, phi, mask=rot & (sgn < 0))
    if PREV:
        tl.store(k_rows, cast(k, k_ptr.dtype.element_ty, EMULATE), mask=rm2)
        _keep_x(x_ptr + bi * sx_b + h * sx_h, xs_ptr + bh * P, P, BLOCK_P, EMULATE)


def _check_state(state: ScanState, b: int, H: int, P: int, N: int, R: int, S: int) -> None:
    want = {"angle": (b, H, S), "ssm": (b, H, P, N), "k": (b, R, H, N), "x": (b, H, P)}
    for name, shape in want.items():
        t = getattr(state, name)
        if tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"state.{name} must be contiguous {shape}, got {tuple(t.shape)}")


def _on_tile(names: str, tile: str, field: str) -> bool:
    """Whether a `StepLaunch` field naming tiles (`TILES`, space-separated) names `tile`; a ValueError for a name
    that is none."""
    named = names.split() if isinstance(names, str) else [names]
    if any(t not in TILES for t in named):
        raise ValueError(f"StepLaunch.{field} names tiles among {TILES}, got {names!r}")
    return tile in named


def _pairs(cfg: StepLaunch, S: int, pairing: str, n_is_block: bool, num_warps: int) -> str:
    """`_rot_keys`' PAIRS for a launch. With `cfg.pairs_in_registers`: "none" without rotated pairs (S = 0), else
    the pairing, swapped in registers, where a pair's two coordinates lie within one warp (adjacent ones always;
    half a row apart with one warp a program). Half-split pairs also need N to be its own block: the swap pairs i
    with i + BLOCK_N/2, the partner only where N = BLOCK_N. Otherwise, and without the knob, "load"."""
    if not cfg.pairs_in_registers:
        return "load"
    if not S:
        return "none"
    return pairing if pairing == "interleaved" or (num_warps == 1 and n_is_block) else "load"


def _stage_count(stages) -> int:
    """`state_stages` as an int ≥ 0 (numpy integers too), or a ValueError."""
    if not isinstance(stages, bool):
        with contextlib.suppress(TypeError):
            if operator.index(stages) >= 0:
                return operator.index(stages)
    raise ValueError(f"state_stages must be an integer >= 0, got {stages!r}")


def _prefetch_bytes(asked: int, ssm: Tensor) -> int:
    """`StepLaunch.l2_prefetch` as the bytes one head's prefetch takes: at most its state, a multiple of 16; 0 in
    the interpreter (no PTX there)."""
    _, _, P, N = ssm.shape
    if int(asked) < 0:
        raise ValueError(f"l2_prefetch must be a number of bytes >= 0, got {asked!r}")
    return 0 if INTERPRETED else min(int(asked), P * N * ssm.element_size()) // 16 * 16


def _tma_can_take(ssm: Tensor) -> bool:
    """Whether TMA can copy the state's rows: sm_90 on (or the interpreter), its base address and row stride
    multiples of 16 bytes, N a power of two."""
    N = ssm.shape[-1]
    old_gpu = ssm.is_cuda and _sm_major(ssm.device.index or 0) < 9
    return not (old_gpu or ssm.data_ptr() % 16 or (N * ssm.element_size()) % 16 or N & (N - 1))


def _tma_fits(ssm: Tensor, block_p: int, block_n: int) -> bool:
    """Whether TMA can copy the state in (block_p, N) boxes: `_tma_can_take`, N its own block, P a multiple of
    block_p."""
    _, _, P, N = ssm.shape
    return N == block_n and P % block_p == 0 and _tma_can_take(ssm)


def _state_descriptor(ssm: Tensor, block_p: int, block_n: int, stages: int):
    """The TMA descriptor of the state's (b·H·P, N) rows in (block_p, N) boxes, or None: stages 0 (pointer
    loads), or a layout TMA cannot take (N not a power of two, P not a multiple of block_p, a base address or
    row not a multiple of 16 bytes, a GPU before sm_90), where the pointer loads run instead. stages 1 copies
    each block just before its use."""
    stages = _stage_count(stages)
    if stages == 0 or not _tma_fits(ssm, block_p, block_n):
        return None
    N = ssm.shape[-1]
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(ssm.view(-1, N), block_shape=[block_p, block_n])


def _rows_block(rows: int, P: int, block_n: int) -> int:
    """BLOCK_P for `rows` rows of P at N = 128, as many elements at other N, at most P's power of two."""
    return max(1, min(triton.next_power_of_2(P), rows * 128 // block_n))


def _tma_block(cfg: StepLaunch, ssm: Tensor, block_p: int | None, block_n: int, stages: int) -> int | None:
    """The BLOCK_P whose boxes TMA would copy the state in under `cfg` (`block_p` when given, else its TMA rows,
    else its rows), or None: no stages, or a layout TMA cannot take in those boxes."""
    if not stages:
        return None
    bp = block_p if block_p is not None else _rows_block(cfg.tma_rows or cfg.rows, ssm.shape[-2], block_n)
    return bp if _tma_fits(ssm, bp, block_n) else None


def pick_regime(R: int, ssm: Tensor, programs: int, sms: int, block_p: int | None = None,
                state_stages: int | None = None) -> str:
    """The regime a step of rank R over state `ssm` takes when none is given (`launch_regime`): MIMO whose fp32
    state TMA can feed in the many-programs tile counts as "many" from MIMO_TMA_MANY_PROGRAMS_PER_SM programs per
    SM, MIMO over a bf16 state from MIMO_BF16_MANY_PROGRAMS_PER_SM, every other step from MANY_PROGRAMS_PER_SM."""
    if R > 1 and ssm.dtype == torch.bfloat16:
        return launch_regime(programs, sms, MIMO_BF16_MANY_PROGRAMS_PER_SM)
    many = DEFAULT_CONFIG[(True, "many")]
    stages = many.stages if state_stages is None else _stage_count(state_stages)
    tma = R > 1 and ssm.dtype == torch.float32 and _tma_block(
        many, ssm, block_p, triton.next_power_of_2(ssm.shape[-1]), stages) is not None
    return launch_regime(programs, sms, MIMO_TMA_MANY_PROGRAMS_PER_SM if tma else MANY_PROGRAMS_PER_SM)


def _strides(x, z, B, C, dt, adt, lam, theta, out) -> tuple[int, ...]:
    """The step kernels' stride arguments, in their order."""
    th = (theta.stride(0), theta.stride(1)) if theta.numel() else (0, 0)
    return (x.stride(0), x.stride(1), z.stride(0), z.stride(1), B.stride(0), B.stride(1), B.stride(2),
            C.stride(0), C.stride(1), C.stride(2), dt.stride(0), dt.stride(1), adt.stride(0), adt.stride(1),
            lam.stride(0), lam.stride(1), *th, out.stride(0), out.stride(1))


def _launch(x, z, B, C, dt, adt, lam, theta, dt_bias, wB, wC, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o,
            pairing, state, out, a_floor, eps, fused, block_p, num_warps, num_stages, regime, state_stages,
            prev=True):
    b, H, P = x.shape
    R, G, N = B.shape[-3:]
    S = state.angle.shape[-1]
    if (mimo_x is None) != (mimo_o is None) or (mimo_x is None and (R != 1 or mimo_z is not None)):
        raise ValueError("SISO needs R = 1 and no mimo_*; MIMO needs mimo_x and mimo_o")
    if R > 8:
        raise ValueError(f"the decode step takes a MIMO rank R <= 8, got {R}")
    if pairing not in ("interleaved", "half") or 2 * S > N or (pairing == "half" and N % 2):
        raise ValueError(f"bad pairing {pairing!r} for N = {N}, S = {S}")
    if x.stride(-1) != 1 or B.stride(-1) != 1 or C.stride(-1) != 1 or (z is not None and z.stride(-1) != 1):
        raise ValueError("x, z, B, C need a unit stride along their last axis")
    _check_state(state, b, H, P, N, R, S)
    f32 = torch.float32
    B_bias, C_bias, D = (t.to(f32).contiguous() for t in (B_bias, C_bias, D))
    mimo = mimo_operands(mimo_x, mimo_z, mimo_o, z is not None, D)
    if out is None:
        out = torch.empty(b, H, P, device=x.device, dtype=x.dtype)
    zz = z if z is not None else x
    # with no angles (Mamba-2) the angle pointers are never dereferenced: give them a real buffer
    th, ang = (theta, state.angle) if S else (D, D)
    block_n = triton.next_power_of_2(N)
    asked = None if state_stages is None else _stage_count(state_stages)
    sms = _sms(x)
    if regime is None:
        regime = pick_regime(R, state.ssm, b * H, sms, block_p, asked)
    elif regime not in REGIMES:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    cfg = DEFAULT_CONFIG[(R > 1, regime)]
    num_warps = num_warps or cfg.num_warps
    bf16 = state.ssm.dtype == torch.bfloat16
    stages = (cfg.bf16_stages if bf16 and cfg.bf16_stages is not None else cfg.stages) if asked is None else asked
    mma = cfg.mma and R > 1
    if mma:
        if block_n < 16:
            raise ValueError(f"the tensor-core step needs N of at least 16 (its products' K), got {N}")
        block_p = block_p or _rows_block(cfg.tma_rows or cfg.rows, P, block_n)
    else:
        if asked is None and cfg.tma_rows and bf16 and b * H < MIMO_BF16_TMA_PROGRAMS_PER_SM * sms:
            stages = 0  # too few programs for a bf16 state's TMA pipeline to pay
        if block_p is None and cfg.tma_rows:  # TMA's tile where the state can come that way
            block_p = _tma_block(cfg, state.ssm, None, block_n, stages)
            if block_p is None and asked is None:
                stages = 0  # the pointer loads' tile, as timed, where TMA cannot take the default's
        angle_state = bool(S and not bf16 and cfg.angle_rows)
        if block_p is None:
            angle = angle_state and b * H >= ANGLE_ROWS_PROGRAMS_PER_SM * sms
            rows = cfg.bf16_rows if bf16 and cfg.bf16_rows else cfg.angle_rows if angle else cfg.rows
            block_p = _rows_block(rows, P, block_n)
        else:  # a caller's rows are the angle tile where they are its rows (sweeps time what the default runs)
            angle = angle_state and block_p == _rows_block(cfg.angle_rows, P, block_n)
    desc = _state_descriptor(state.ssm, block_p, block_n, stages)
    if mma:
        kernel, scratch = _step_mma_kernel, ()
        meta = dict(UPDATE_DOT=cfg.mma_update, READ_DOT=cfg.mma_readout, PAIRS="load")  # (not timed swapped)
    else:
        tile = "angle" if angle else "bf16" if bf16 else "fp32"
        coef = cfg.coef and R > 1 and not cfg.fold_q
        # COEF's row terms
        kernel, scratch = _step_kernel, (torch.empty(b * H * (R + 1) * P, device=x.device, dtype=f32) if coef else D,)
        # the lane readout where its sums stay in the lanes: all 32 lanes along N (N of 128 or more: narrower tiles
        # split their rows across lanes, still right but slower, e.g. N = 32 by pointer loads 205 loop instructions
        # against the per-row readout's 181), a TMA-fed block or an fp32 state's pointer loads (a bf16 state's put
        # 8 columns in a lane and split the rows across lanes)
        pairs = _pairs(cfg, S, pairing, N == block_n, num_warps)
        lane = (cfg.lane_readout and R == 4 and block_p == 4 and num_warps == 1 and block_n >= 128 and not coef
                and not cfg.fold_q and (desc is not None or state.ssm.dtype == torch.float32))
        meta = dict(MIMO=mimo_x is not None, PREFETCH=cfg.prefetch and desc is None, KQ_TILE=cfg.kq_tile,
                    FOLD_Q=cfg.fold_q and R > 1, COEF=coef, BLOCK_PA=triton.next_power_of_2(P) if coef else 1,
                    LANE=lane, ASM=lane_readout_asm(16, 4) if lane else "",
                    LANE_CONTIGUOUS=desc is None or _TRITON_VERSION >= (3, 7) or pairs == "half",  # (as timed)
                    TMA_STORE=cfg.tma_store,
                    LANE_AHEAD=cfg.lane_ahead, LANE_KEEP=cfg.lane_keep,
                    XZ_AHEAD=(_on_tile(cfg.xz_ahead, tile, "xz_ahead") and cfg.prefetch and desc is None
                              and not (lane or coef)),
                    REPLICATED_O=(_on_tile(cfg.replicated_o, tile, "replicated_o") and not lane
                                  and out.element_size() in (2, 4)),  # (`store_replicated` takes 16 or 32 bits)
                    L2_PREFETCH=_prefetch_bytes(cfg.l2_prefetch, state.ssm) if desc is not None else 0,
                    PAIRS=pairs)
    launch(
        kernel, (b * H,), x, zz, B, C, dt, adt, lam, th, dt_bias, wB, wC, B_bias, C_bias, D, *mimo,
        out, ang, state.ssm, state.k, state.x, desc, *scratch, *_strides(x, zz, B, C, dt, adt, lam, theta, out),
        a_floor, eps,
        H=H, G=G, R=R, P=P, N=N, S=S, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_R=triton.next_power_of_2(R),
        INTERLEAVED=pairing == "interleaved", HAS_Z=z is not None, FUSED=fused,
        APPROX=out.dtype in (torch.bfloat16, torch.float16) and not INTERPRETED,
        EMULATE=INTERPRETED, PREV=prev, TMA=desc is not None,
        STAGES=stages if desc is not None else None,
        num_warps=num_warps,
        num_stages=num_stages or 2, **pdl_meta(x),
        **({"maxnreg": cfg.max_registers} if cfg.max_registers and not INTERPRETED else {}), **meta,
    )
    return out


def step(x, z, B, C, dt, adt, lam, theta, *, B_bias, C_bias, D, mimo_x=None, mimo_z=None, mimo_o=None,
         pairing="interleaved", state: ScanState, out: Tensor | None = None, block_p: int | None = None,
         num_warps: int | None = None, num_stages: int | None = None, regime: str | None = None,
         previous_term: bool = True, state_stages: int | None = None) -> Tensor:
    """Triton twin of `reference.step`: x, z (b, H, P); B, C (b, R, G, N) after RMSNorm; dt, adt, lam
    (b, H) fp32; theta (b, S). Returns o (b, H, P) and advances `state` in place (its ssm may be
    fp32 or bf16). `block_p`, `num_warps`, `num_stages` override single launch values; `regime` ("few",
    "mid", "many") the defaults `launch_regime` would pick (for builds and sweeps); `state_stages` the TMA
    pipeline depth of the state's row blocks (0: pointer loads; default per regime, and for a bf16 state 0 below
    MIMO_BF16_TMA_PROGRAMS_PER_SM programs per SM). `previous_term=False`
    promises λ ≡ 1 (Mamba-2): the β·x_prev·k_prevᵀ term, zero there, is skipped, and state.k / state.x are
    neither read nor written (so they may be shared scratch)."""
    return _launch(x, z, B, C, dt, adt, lam, theta, D, D, D, B_bias, C_bias, D, mimo_x, mimo_z, mimo_o,
                   pairing, state, out, 0.0, 0.0, False, block_p, num_warps, num_stages, regime, state_stages,
                   previous_term)


def step_fused(proj: Tensor, *, dt_bias, B_norm_weight, C_norm_weight, B_bias, C_bias, D, mimo_x=None,
               mimo_z=None, mimo_o=None, pairing="interleaved", state: ScanState, a_floor: float = 1e-4,
               eps: float = 1e-5, has_z: bool = True, out: Tensor | None = None, block_p: int | None = None,
               num_warps: int | None = None, num_stages: int | None = None,
               regime: str | None = None, state_stages: int | None = None) -> Tensor:
    """One decode token straight from the in_proj output row.

    proj (b, d_proj) in the order [z, x, B, C, dd_dt, dd_A, trap, angles] (spec §1.2), with
    d_proj = 2·H·P + 2·R·G·N + 3·H + S; sizes come from D (H), state.ssm (P, N), B_bias (R) and
    state.angle (S). Same result as `reference.preprocess` + `reference.step`.
    """
    b, d_proj = proj.shape
    _, H, P, N = state.ssm.shape
    R, S = B_bias.shape[1], state.angle.shape[-1]
    G = proj_groups(d_proj, H, P, N, R, S)
    if H % G:
        raise ValueError(f"d_proj = {d_proj} does not fit H={H}, P={P}, N={N}, R={R}, S={S}: {G} groups")
    z, x, B, C, dd_dt, dd_A, trap, angles = proj.split([H * P, H * P, R * G * N, R * G * N, H, H, H, S], -1)
    return _launch(x.unflatten(-1, (H, P)), z.unflatten(-1, (H, P)) if has_z else None,
                   B.unflatten(-1, (R, G, N)), C.unflatten(-1, (R, G, N)), dd_dt, dd_A, trap, angles,
                   dt_bias.to(torch.float32).contiguous(), B_norm_weight.contiguous(),
                   C_norm_weight.contiguous(), B_bias, C_bias, D, mimo_x, mimo_z, mimo_o, pairing, state,
                   out, a_floor, eps, True, block_p, num_warps, num_stages, regime, state_stages)
