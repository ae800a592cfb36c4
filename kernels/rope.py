"""Triton rotary embedding fused with the KV-cache write, for the Transformer's static cache: one decode
token (`rope_decode_`) or a prefill's T tokens (`rope_prefill_`).

One decode token of attention needs, before the attention itself: cos/sin of the position (about six
small kernels in eager PyTorch), the "rotate half" of q and of k (about five each), and two
`index_copy_` writes of k and v into the cache: ~18 launches per layer, ~290 for Llama-3.2-1B's 16
layers, each a few microseconds inside a CUDA graph against a ~0.8 ms weight floor at batch 1. Here
they are one launch: a program per (sequence, head) of q or of K/V computes the angles
pos·inv_freq in fp32, rotates its head and writes it (q in place; k and v at `pos` in the cache).

A prefill pays the same ~18 launches per layer (cos/sin of its positions, two rotations, two cache
writes) whatever its length; for a short prompt at batch 1, whose time is mostly launching kernels, they
were about half of each attention layer's. `rope_prefill_` is one launch: a program per 32-token tile and head.

Readable twins: `rope_decode_reference` and `rope_prefill_reference` (model.layers.rope_cos_sin +
apply_rope + the cache writes). The twins round cos/sin and each product to the model dtype, as Hugging
Face Llama does; these kernels rotate in fp32 and round once, so the two agree to one rounding of the
model dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.tl_utils import INTERPRETED, cast, grid_dependency_wait, launch, pdl_meta


@triton.jit
def _rotated(src, i, partner, sgn, c, s, live):
    x = tl.load(src + i, mask=live, other=0.0).to(tl.float32)
    xp = tl.load(src + partner, mask=live, other=0.0).to(tl.float32)
    return x * c + sgn * xp * s


@triton.jit
def _rotation(i, pos, inv_ptr, RH: tl.constexpr):
    """"Rotate half" over the first 2·RH channels (i ↔ i + RH; channels from 2·RH on pass through) of channels
    i at position(s) pos (a scalar with a row of channels, or a column with a (1, channels) row): each channel's
    partner, the sign of its partner's term, and the cos and sin of its angle pos·inv_freq."""
    first = i < RH
    rot = i < 2 * RH
    partner = tl.where(first, i + RH, tl.where(rot, i - RH, i))
    sgn = tl.where(first, -1.0, 1.0)
    ang = pos.to(tl.float32) * tl.load(inv_ptr + i % RH, mask=rot, other=0.0)
    return partner, sgn, tl.where(rot, tl.cos(ang), 1.0), tl.where(rot, tl.sin(ang), 0.0)


@triton.jit
def _rope_row(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, bi, j, pos, inv_ptr, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh,
              s_cb, s_ch, s_ct, s_vcb, s_vch, s_vct, NH: tl.constexpr, D: tl.constexpr, RH: tl.constexpr,
              BLOCK: tl.constexpr, EMULATE: tl.constexpr):
    """Head j of row bi at position pos: a query head (j < NH) rotated in place, or KV head j − NH: k
    rotated into the cache at pos, v copied beside it."""
    i = tl.arange(0, BLOCK)
    live = i < D
    partner, sgn, c, s = _rotation(i, pos, inv_ptr, RH)
    if j < NH:  # a query head, rotated in place (all loads happen before the store)
        dst = q_ptr + bi * s_qb + j * s_qh
        out = _rotated(dst, i, partner, sgn, c, s, live)
        tl.store(dst + i, cast(out, q_ptr.dtype.element_ty, EMULATE), mask=live)
    else:  # a KV head: k rotated into the cache at pos, v copied beside it
        h = (j - NH).to(tl.int64)
        out = _rotated(k_ptr + bi * s_kb + h * s_kh, i, partner, sgn, c, s, live)
        tl.store(kc_ptr + bi * s_cb + h * s_ch + pos * s_ct + i, cast(out, kc_ptr.dtype.element_ty, EMULATE),
                 mask=live)
        v = tl.load(v_ptr + bi * s_vb + h * s_vh + i, mask=live)
        tl.store(vc_ptr + bi * s_vcb + h * s_vch + pos * s_vct + i, v.to(vc_ptr.dtype.element_ty), mask=live)


@triton.jit
def _rope_prefill_kernel(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, inv_ptr, start, T,
                         s_qb, s_qt, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_cb, s_ch, s_ct, s_vcb, s_vch,
                         s_vct, NH: tl.constexpr, D: tl.constexpr, RH: tl.constexpr, BLOCK: tl.constexpr,
                         BLOCK_T: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Program (b·⌈T/BLOCK_T⌉ + token block, head): BLOCK_T tokens of one head, as `_rope_row` does one
    (q rotated in place, or k rotated into the cache and v copied beside it), on a (BLOCK_T, D) tile."""
    nt = tl.cdiv(T, BLOCK_T)
    bi = (tl.program_id(0) // nt).to(tl.int64)
    t = (tl.program_id(0) % nt) * BLOCK_T + tl.arange(0, BLOCK_T)
    grid_dependency_wait(PDL)
    j = tl.program_id(1)
    i = tl.arange(0, BLOCK)
    live = (t < T)[:, None] & (i < D)[None, :]
    pos = (start + t).to(tl.int64)[:, None]
    partner, sgn, c, s = _rotation(i[None, :], pos, inv_ptr, RH)
    tt = t.to(tl.int64)[:, None]
    if j < NH:  # query heads, rotated in place
        dst = q_ptr + bi * s_qb + j * s_qh + tt * s_qt
        out = _rotated(dst, i[None, :], partner, sgn, c, s, live)
        # a row's channels and their partners may sit in different warps: every load before any store
        tl.debug_barrier()
        tl.store(dst + i[None, :], cast(out, q_ptr.dtype.element_ty, EMULATE), mask=live)
    else:  # a KV head: k rotated into the cache at the tokens' positions, v copied beside it
        h = (j - NH).to(tl.int64)
        out = _rotated(k_ptr + bi * s_kb + h * s_kh + tt * s_kt, i[None, :], partner, sgn, c, s, live)
        tl.store(kc_ptr + bi * s_cb + h * s_ch + pos * s_ct + i[None, :], cast(out, kc_ptr.dtype.element_ty, EMULATE),
                 mask=live)
        v = tl.load(v_ptr + bi * s_vb + h * s_vh + tt * s_vt + i[None, :], mask=live)
        tl.store(vc_ptr + bi * s_vcb + h * s_vch + pos * s_vct + i[None, :], v.to(vc_ptr.dtype.element_ty),
                 mask=live)


@triton.jit
def _rope_decode_kernel(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, pos_ptr, inv_ptr,
                        s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_cb, s_ch, s_ct, s_vcb, s_vch, s_vct,
                        NH: tl.constexpr, D: tl.constexpr, RH: tl.constexpr, BLOCK: tl.constexpr,
                        PDL: tl.constexpr, EMULATE: tl.constexpr):
    bi = tl.program_id(0).to(tl.int64)
    grid_dependency_wait(PDL)
    _rope_row(q_ptr, k_ptr, v_ptr, kc_ptr, vc_ptr, bi, tl.program_id(1), tl.load(pos_ptr), inv_ptr,
              s_qb, s_qh, s_kb, s_kh, s_vb, s_vh, s_cb, s_ch, s_ct, s_vcb, s_vch, s_vct, NH, D, RH, BLOCK, EMULATE)


def _check(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, inv_freq: Tensor) -> None:
    b, nh, d = q.shape
    n_kv = k.shape[1]
    want = (b, n_kv, d)
    if k.shape != want or v.shape != want or k_cache.shape[:2] != (b, n_kv) or k_cache.shape[3] != d \
            or v_cache.shape != k_cache.shape or not 0 < 2 * inv_freq.numel() <= d:
        raise ValueError(f"rope_decode: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"caches {tuple(k_cache.shape)}/{tuple(v_cache.shape)}, inv_freq {inv_freq.numel()}")
    if min(t.stride(-1) for t in (q, k, v, k_cache, v_cache)) != 1:
        raise ValueError("rope_decode needs unit stride along head_dim")


def rope_decode_(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor,
                 inv_freq: Tensor) -> Tensor:
    """q (b, h, d), k, v (b, n_kv, d) of one token at position `pos` (device int64 scalar); caches
    (b, n_kv, max_context, d); inv_freq (r/2,) fp32: the first r ≤ d channels rotate ("rotate half",
    i ↔ i + r/2), the rest pass through. Rotates q in place and writes rotated k and v into the caches
    at `pos`. Returns q."""
    _check(q, k, v, k_cache, v_cache, inv_freq)
    b, nh, d = q.shape
    n_kv = k.shape[1]
    launch(_rope_decode_kernel, (b, nh + n_kv), q, k, v, k_cache, v_cache, pos, inv_freq,
           *_strides(q, k, v, k_cache, v_cache, 2), **_meta(q, nh, inv_freq))
    return q


def _strides(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, lead: int) -> tuple[int, ...]:
    """The first `lead` strides of q, k and v (the head axis last), then the caches' first three."""
    return (*q.stride()[:lead], *k.stride()[:lead], *v.stride()[:lead], *k_cache.stride()[:3],
            *v_cache.stride()[:3])


def _meta(q: Tensor, nh: int, inv_freq: Tensor) -> dict:
    d = q.shape[-1]
    return dict(NH=nh, D=d, RH=inv_freq.numel(), BLOCK=triton.next_power_of_2(d), EMULATE=INTERPRETED,
                num_warps=1, **pdl_meta(q))


def rope_decode_reference(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor,
                          inv_freq: Tensor) -> Tensor:
    """The same step as the model's PyTorch path computes it: returns rotated q, writes the caches."""
    from model.layers import apply_rope, rope_cos_sin

    cos, sin = rope_cos_sin(pos.view(1), inv_freq, q.dtype)
    q_rot = apply_rope(q[:, :, None], cos, sin)[:, :, 0]
    k_rot = apply_rope(k[:, :, None], cos, sin)
    k_cache.index_copy_(2, pos.view(1), k_rot.to(k_cache.dtype))
    v_cache.index_copy_(2, pos.view(1), v[:, :, None].to(v_cache.dtype))
    return q_rot


# Tokens a `rope_prefill_` program takes (a (block_t, d) tile at 4 warps). A one-warp program per (token, head),
# the kernel before, took Llama-3.2-1B's prefill at 128 × 512 1.58 ms a layer (H200), ≈ 9 × the bytes' time at
# the copy rate; against it 32-token tiles took whole Llama-3.2-1B prefills (ms, same run, eighteenth session)
# 1 × 512 2.49 → 2.27, 1 × 2048 8.82 → 7.88, 16 × 2048 134.5 → 121.1, 128 × 512 254.7 → 231.3; the hybrid's
# 1 × 2048 12.68 → 12.47 and 128 × 512 341.5 → 335.9.
ROPE_PREFILL_BLOCK_T = 32


def rope_prefill_(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, start: int,
                  inv_freq: Tensor, block_t: int | None = None) -> Tensor:
    """q (b, T, h, d), k, v (b, T, n_kv, d) of T tokens at positions start … start + T − 1 (views of a
    projection are fine: any strides with unit stride along d); caches (b, n_kv, max_context, d); inv_freq
    as in `rope_decode_`. Rotates q in place and writes rotated k and v into the caches at those positions.
    block_t: tokens a program takes (a power of two; default ROPE_PREFILL_BLOCK_T). Returns q."""
    b, T, nh, d = q.shape
    n_kv = k.shape[2]
    _check(q[:, 0], k[:, 0], v[:, 0], k_cache, v_cache, inv_freq)
    if k.shape != (b, T, n_kv, d) or v.shape != k.shape or not 0 <= start <= k_cache.shape[2] - T:
        raise ValueError(f"rope_prefill: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, positions "
                         f"{start}…{start + T - 1} in a cache of {k_cache.shape[2]}")
    block_t = ROPE_PREFILL_BLOCK_T if block_t is None else block_t
    if block_t < 1 or block_t & (block_t - 1):
        raise ValueError(f"rope_prefill: block_t must be a power of two, got {block_t}")
    if b * T:
        launch(_rope_prefill_kernel, (b * triton.cdiv(T, block_t), nh + n_kv), q, k, v, k_cache, v_cache,
               inv_freq, start, T, *_strides(q, k, v, k_cache, v_cache, 3),
               **dict(_meta(q, nh, inv_freq), BLOCK_T=block_t, num_warps=min(4, block_t)))
    return q


def rope_prefill_reference(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, start: int,
                           inv_freq: Tensor) -> Tensor:
    """The model's PyTorch prefill path: returns rotated q (b, T, h, d), writes the caches."""
    from model.layers import apply_rope, rope_cos_sin

    T = q.shape[1]
    cos, sin = rope_cos_sin(torch.arange(start, start + T, device=q.device), inv_freq, q.dtype)
    k_cache[:, :, start:start + T] = apply_rope(k.transpose(1, 2), cos, sin)
    v_cache[:, :, start:start + T] = v.transpose(1, 2)
    return apply_rope(q.transpose(1, 2), cos, sin).transpose(1, 2)
