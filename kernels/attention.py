"""Triton decode attention over a static KV cache ("flash decoding"), CUDA-graph safe.

One query token per sequence attends over cache positions 0..pos, where `pos` is a device scalar: the
grid is fixed by the cache's size, and each program reads `pos` and skips the key blocks past it, so a
step costs the KV bytes held, not the cache's capacity, with no host synchronisation. (The PyTorch
path masks the whole buffer; at 16k context on an H100 that step took 7.4 ms for Llama-3.2-1B against
~0.2 ms of KV bytes.)

Layout: grid (batch·kv_heads, splits). A program takes all the query heads of one KV head (the GQA
group, padded to 16 rows for the tensor-core dot: 16 rows make 16 FLOPs per bf16 K/V byte, far below
the ~300 where an H100 turns compute-bound, so the idle rows cost no time) against one slice of the
context, so K and V are read once per KV head; it keeps an online softmax (running max, sum, fp32
accumulator) and writes the unnormalised partial. Splits spread long contexts over the SMs when
batch·kv_heads alone would leave them idle; a second small kernel merges the partials by their
log-sum-exp. Slices that start past `pos` write an empty partial (max −inf, sum 0) that the merge
weighs as zero. With one split (batch·kv_heads fills the GPU: batch 128 of Llama-3.2-1B) and `ONE_SPLIT_DIRECT`,
the program normalises and writes the output itself, with no merge launch, under a register cap
(`ONE_SPLIT_MAXNREG`) that keeps the partial kernel's programs per SM.

Readable twin: `decode_attention_reference` (explicit softmax in fp32 or float64).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.tl_utils import (INTERPRETED, _sm_major, cast, grid_dependency_wait, launch, mm, pdl_meta,
                                     sm_count)

LOG2E = 1.4426950408889634
H100_SMS = 132
# One split: the partial kernel writes the output (no merge launch), capped at the registers of the partial
# form (64 on sm_90, Triton 3.6: 8 programs of 4 warps per SM, so batch 128's 1,024 programs run in one wave).
# Read at call time (the benchmarks' A/B switches them).
ONE_SPLIT_DIRECT = True
ONE_SPLIT_MAXNREG: int | None = 64


@triton.jit
def _partial_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, acc_ptr, ml_ptr, o_ptr,
                    s_qb, s_qh, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, split_len, scale_log2,
                    N_KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
                    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DIRECT: tl.constexpr,
                    PDL: tl.constexpr, EMULATE: tl.constexpr):
    """DIRECT (one split only): the normalised output stored to o_ptr; else the partial (acc, max, sum)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    grid_dependency_wait(PDL)
    bi = (pid // N_KV).to(tl.int64)
    kvh = (pid % N_KV).to(tl.int64)
    DT = q_ptr.dtype.element_ty
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    gm = g < G
    dm = d < D
    heads = kvh * G + g  # (BLOCK_G,) query heads of this KV head
    q = tl.load(q_ptr + bi * s_qb + heads[:, None] * s_qh + d[None, :], mask=gm[:, None] & dm[None, :],
                other=0.0)
    length = tl.load(pos_ptr).to(tl.int32) + 1
    start = split * split_len
    end = tl.minimum(start + split_len, length)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    k_base = k_ptr + bi * s_kb + kvh * s_kh
    v_base = v_ptr + bi * s_vb + kvh * s_vh
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nm = n < end
        kv_mask = nm[:, None] & dm[None, :]
        k = tl.load(k_base + n[:, None].to(tl.int64) * s_kt + d[None, :], mask=kv_mask, other=0.0)
        s = mm(q, tl.trans(k), DT, False, EMULATE) * scale_log2  # (BLOCK_G, BLOCK_N), log2 units
        s = tl.where(nm[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_base + n[:, None].to(tl.int64) * s_vt + d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + mm(cast(p, DT, EMULATE), v, DT, False, EMULATE)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if DIRECT:  # the whole context in this program (split 0 holds position 0, so l_i > 0)
        out = acc / l_i[:, None]
        tl.store(o_ptr + bi * s_ob + heads[:, None] * s_oh + d[None, :], cast(out, o_ptr.dtype.element_ty, EMULATE),
                 mask=gm[:, None] & dm[None, :])
    else:
        row = (bi * N_KV * G + heads) * SPLITS + split  # partials laid out (b, h, splits, ·)
        tl.store(acc_ptr + row[:, None] * D + d[None, :], acc, mask=gm[:, None] & dm[None, :])
        tl.store(ml_ptr + row * 2, m_i, mask=gm)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=gm)


@triton.jit
def _merge_kernel(acc_ptr, ml_ptr, o_ptr, s_ob, s_oh, H: tl.constexpr, D: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
                  EMULATE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # one (sequence, query head)
    grid_dependency_wait(PDL)
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    sm = sp < SPLITS
    m = tl.load(ml_ptr + (pid * SPLITS + sp) * 2, mask=sm, other=float("-inf"))
    l_s = tl.load(ml_ptr + (pid * SPLITS + sp) * 2 + 1, mask=sm, other=0.0)
    m_all = tl.max(m, axis=0)  # split 0 always holds position 0, so this is finite
    w = tl.where(sm & (m > float("-inf")), tl.exp2(m - m_all), 0.0)
    acc = tl.load(acc_ptr + (pid * SPLITS + sp)[:, None] * D + d[None, :], mask=sm[:, None] & (d < D)[None, :],
                  other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l_s * w, axis=0)
    bi, h = pid // H, pid % H
    tl.store(o_ptr + bi * s_ob + h * s_oh + d, cast(out, o_ptr.dtype.element_ty, EMULATE), mask=d < D)


def default_splits(batch: int, n_kv: int, max_context: int, block_n: int, sms: int = H100_SMS) -> int:
    """Context slices per (sequence, KV head): enough programs for about two per SM, never more slices
    than key blocks. Depends on the cache's capacity only, so a captured graph stays valid."""
    return max(1, min(triton.cdiv(max_context, block_n), triton.cdiv(2 * sms, batch * n_kv)))


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, *, scale: float | None = None,
                     num_splits: int | None = None, block_n: int = 64) -> Tensor:
    """q (b, h, d) one token per sequence; caches (b, n_kv, max_context, d) with unit stride in d; pos a
    device int64 scalar (attend over 0..pos). → (b, h, d) in q's dtype. h must be a multiple of n_kv."""
    b, h, d = q.shape
    n_kv, max_context = k_cache.shape[1], k_cache.shape[2]
    if k_cache.shape != (b, n_kv, max_context, d) or v_cache.shape != k_cache.shape or h % n_kv:
        raise ValueError(f"decode_attention: q {tuple(q.shape)}, k {tuple(k_cache.shape)}, "
                         f"v {tuple(v_cache.shape)} (heads must be a multiple of KV heads)")
    if min(t.stride(-1) for t in (q, k_cache, v_cache)) != 1 or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError("decode_attention needs q and caches of one dtype with unit stride along head_dim")
    G = h // n_kv
    sms = sm_count(q.device) if q.is_cuda else H100_SMS
    splits = num_splits or default_splits(b, n_kv, max_context, block_n, sms)
    split_len = triton.cdiv(triton.cdiv(max_context, splits), block_n) * block_n
    direct = splits == 1 and ONE_SPLIT_DIRECT
    out = torch.empty_like(q)
    if direct:
        acc = ml = out  # unused pointers
        # the cap was measured on sm_90 only (elsewhere it can spill: an sm_75 fp16 build spills 1 KB under it); a
        # launch recorded on the CPU for an AOT build (kernels.compile_report) is built for sm_90
        capped = ONE_SPLIT_MAXNREG and not INTERPRETED and (not q.is_cuda or _sm_major(q.device.index or 0) == 9)
        cap = {"maxnreg": ONE_SPLIT_MAXNREG} if capped else {}
    else:
        acc = torch.empty(b, h, splits, d, device=q.device, dtype=torch.float32)
        ml = torch.empty(b, h, splits, 2, device=q.device, dtype=torch.float32)
        cap = {}
    block_d = max(16, triton.next_power_of_2(d))  # tensor-core dots need 16 along each axis
    scale_log2 = (scale if scale is not None else 1.0 / math.sqrt(d)) * LOG2E
    pdl = pdl_meta(q)
    launch(_partial_kernel, (b * n_kv, splits), q, k_cache, v_cache, pos, acc, ml, out,
           q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1), split_len,
           scale_log2, N_KV=n_kv, G=G, D=d, SPLITS=splits, BLOCK_G=max(16, triton.next_power_of_2(G)),
           BLOCK_N=block_n, BLOCK_D=block_d, DIRECT=direct, EMULATE=INTERPRETED, num_warps=4, num_stages=2,
           **cap, **pdl)
    if not direct:
        launch(_merge_kernel, (b * h,), acc, ml, out, out.stride(0), out.stride(1), H=h, D=d, SPLITS=splits,
               BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d, EMULATE=INTERPRETED, num_warps=1, **pdl)
    return out


def decode_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, *,
                               scale: float | None = None) -> Tensor:
    """softmax(q·kᵀ·scale)·v over positions 0..pos, in at least fp32, returned in q's dtype."""
    b, h, d = q.shape
    n_kv = k_cache.shape[1]
    cdt = torch.promote_types(q.dtype, torch.float32)
    n = int(pos) + 1
    k = k_cache[:, :, :n].repeat_interleave(h // n_kv, dim=1).to(cdt)
    v = v_cache[:, :, :n].repeat_interleave(h // n_kv, dim=1).to(cdt)
    scores = torch.einsum("bhd,bhnd->bhn", q.to(cdt), k) * (scale if scale is not None else d ** -0.5)
    return torch.einsum("bhn,bhnd->bhd", scores.softmax(-1), v).to(q.dtype)
