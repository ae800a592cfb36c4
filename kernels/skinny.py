"""Triton split-K matrix product for a decode step at 17–128 rows: y = x·Wᵀ (+ bias), the K splits of each
output block summed inside the kernel. Readable twin: `torch.nn.functional.linear`.

Why: at batch 128 a decode step's narrow products (N = 2048 output columns against K = 2048–8192: Mamba-3's
out_proj and fc2, Llama's o and down) ran on cuBLAS at 0.34–0.50 of the copy rate on an H200
(docs/benchmarks.md), and they are what the batch-128 targets lose most beyond the models' own kernels. With
128 rows and 2048 columns a tile of 128 × 128 leaves 16 programs for 132 SMs, so the K range has to be split;
cuBLAS then sums the splits in a kernel of its own (40 µs of a Llama-3.2-1B batch-128 step).

Layout: grid (K splits, N blocks), the splits of one column block adjacent in launch order. A program owns
BLOCK_N output columns and one K range, and streams (BLOCK_N, BLOCK_K) weight tiles and (ROWS, BLOCK_K) x tiles
through a software pipeline of STAGES copies (tensor-memory-access descriptors on sm_90+ and under the
interpreter, pointer loads elsewhere), one tensor-core dot per tile with the weight as the left operand. x is
padded to ROWS (a power of two, 16 to 128); TMA fills rows past M with zeros, pointer loads mask them.

The splits of a column block are summed (FIXUP):
- 0, "kernel": each split writes its fp32 partial to a (split_k, M, N) workspace and `kernels.gemv`'s split-sum
  kernel adds them in split order (a second launch, with programmatic dependent launch where the GPU has it);
- 1, "last": each split writes its partial, then counts itself in on its column block's counter (release); the
  program that arrives last (acquire) adds the partials in split order, writes y and resets the counter for the
  next call. No second launch, no waiting, and the same sum in the same order as "kernel", so the two agree
  bit for bit and with `gemv.linear`'s split path;
- 2, "atomic": each split adds its partial into a zeroed fp32 tile with atomic adds, and the last to arrive
  reads the sum, writes y and zeroes the tile again. Fewer bytes than "last", but the order of the fp32
  additions is the order the splits arrive in, so the last bits of y can differ between calls.

The counters (and the atomic mode's sum tiles) are a buffer per device and stream, allocated zeroed on first
use outside a CUDA graph capture and left zeroed by every call; a call captured before its stream has them
sums with the split kernel instead. Two calls running at once on one stream's buffer (two graphs captured on
one stream, replayed concurrently on two others) would share counters: don't.

Accumulation is fp32; the output is x's dtype, rounded once after the bias is added. fp32 inputs take exact
fp32 products ("ieee" dots).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import gemv
from kernels.mamba3.tl_utils import INTERPRETED, cast, grid_dependency_wait, launch, mm, pdl_meta

MIN_ROWS = gemv.DOT_ROWS + 1  # fewer rows stay on kernels.gemv (one-row FMA path, 2–16-row dot path)
MAX_ROWS = gemv.MAX_ROWS
FIXUPS = ("kernel", "last", "atomic")
COUNTERS = 4096  # column blocks one call may have (N / BLOCK_N); more sum with the split kernel
ATOMIC_TILE_FLOATS = MAX_ROWS * 16384  # the atomic mode's zeroed sum buffer: 8 MiB, M × N up to 128 × 16384


class Config(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    stages: int
    num_warps: int
    fixup: str = "last"

    def __str__(self) -> str:
        return (f"block_n={self.block_n} block_k={self.block_k} split_k={self.split_k} stages={self.stages} "
                f"num_warps={self.num_warps} fixup={self.fixup}")


@triton.jit
def _fence_acq_rel(v):
    """A gpu-scope acquire-release fence (`v` is returned: the asm needs an operand)."""
    return tl.inline_asm_elementwise("fence.acq_rel.gpu; mov.b32 $0, $1;", "=r,r", [v], dtype=tl.int32,
                                     is_pure=False, pack=1)


@triton.jit
def _store_y(y, b_ptr, y_ptr, n, nm, m, out_mask, s_ym, HAS_BIAS: tl.constexpr, EMULATE: tl.constexpr):
    """y (BLOCK_N, ROWS) fp32 (+ bias) rounded once and stored transposed into the rows of y_ptr."""
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[:, None]
    tl.store(y_ptr + m.to(tl.int64)[None, :] * s_ym + n[:, None], cast(y, y_ptr.dtype.element_ty, EMULATE),
             mask=out_mask)


@triton.jit
def _skinny_kernel(x_desc, w_desc, x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, k_split, split_k,
                   s_xm, s_wn, s_ym, s_wss, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, STAGES: tl.constexpr, TMA: tl.constexpr, FIXUP: tl.constexpr,
                   PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Columns [pid 1·BLOCK_N, +BLOCK_N) of y over K range [pid 0·k_split, +k_split); split_k 1: y stored
    directly, otherwise the split's fp32 partial goes to the workspace ws (split stride s_wss, row stride N)
    and FIXUP sums the splits (module docstring)."""
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    DT = w_ptr.dtype.element_ty
    n0 = pid_n * BLOCK_N
    n = n0 + tl.arange(0, BLOCK_N)
    nm = n < N
    m = tl.arange(0, ROWS)
    rm = m < M
    k_lo = pid_k * k_split
    k_hi = tl.minimum(K, k_lo + k_split)
    grid_dependency_wait(PDL)
    acc = tl.zeros((BLOCK_N, ROWS), tl.float32)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):
        if TMA:
            w = w_desc.load([n0, k0])  # past N or K: zeros
            xt = tl.trans(x_desc.load([0, k0]))  # (BLOCK_K, ROWS); rows past M: zeros
        else:
            k = k0 + tl.arange(0, BLOCK_K)
            km = k < K  # only the last split's last block can cross k_hi (= K there)
            w = tl.load(w_ptr + n.to(tl.int64)[:, None] * s_wn + k[None, :], mask=nm[:, None] & km[None, :],
                        other=0.0)
            xt = tl.load(x_ptr + m.to(tl.int64)[None, :] * s_xm + k[:, None], mask=rm[None, :] & km[:, None],
                         other=0.0)
        acc += mm(w, xt, DT, False, EMULATE)  # acc[n, m] += Σ_k w[n, k]·x[m, k]
    out_mask = nm[:, None] & rm[None, :]
    if split_k == 1:
        _store_y(acc, b_ptr, y_ptr, n, nm, m, out_mask, s_ym, HAS_BIAS, EMULATE)
    else:
        ws_at = ws_ptr + m.to(tl.int64)[None, :] * N + n[:, None]
        if FIXUP == 2:
            tl.atomic_add(ws_at, acc, mask=out_mask, sem="relaxed", scope="gpu")
        else:
            tl.store(ws_at + pid_k.to(tl.int64) * s_wss, acc, mask=out_mask)
        if FIXUP != 0:
            tl.debug_barrier()  # every thread's partial written before the program counts itself in
            if not EMULATE:
                _fence_acq_rel(pid_k)
            arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
            if arrived == split_k - 1:  # the other splits' partials are all written
                if not EMULATE:
                    _fence_acq_rel(pid_k)
                if FIXUP == 1:
                    y = tl.zeros((BLOCK_N, ROWS), tl.float32)
                    for s in range(0, split_k):  # split order, as gemv's split-sum kernel
                        y += tl.load(ws_at + s * s_wss, mask=out_mask, other=0.0, cache_modifier=".cg")
                else:
                    y = tl.load(ws_at, mask=out_mask, other=0.0, cache_modifier=".cg")
                    tl.store(ws_at, tl.zeros((BLOCK_N, ROWS), tl.float32), mask=out_mask)  # zeroed for the next call
                tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed", scope="gpu")
                _store_y(y, b_ptr, y_ptr, n, nm, m, out_mask, s_ym, HAS_BIAS, EMULATE)


_buffers: dict[tuple, Tensor] = {}


def _stream_key(device: torch.device) -> tuple:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    return str(device), stream


def _zeroed(kind: str, device: torch.device, numel: int, dtype: torch.dtype) -> Tensor | None:
    """This device and stream's zeroed buffer of `kind` (at least `numel` elements), allocated on first use;
    None inside a CUDA graph capture that would have to allocate it (memory of a graph's pool must not outlive
    the graph)."""
    key = (kind, *_stream_key(device))
    buf = _buffers.get(key)
    if buf is not None and buf.numel() >= numel:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    _buffers[key] = buf = torch.zeros(numel, device=device, dtype=dtype)
    return buf


def _tma_can_take(t: Tensor) -> bool:
    """Whether a TMA descriptor can cover t's rows: sm_90 on (or the interpreter), base address and row stride
    multiples of 16 bytes, unit stride along the last dimension."""
    if t.is_cuda and torch.cuda.get_device_capability(t.device)[0] < 9:
        return False
    return t.stride(-1) == 1 and not (t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16)


def default_config(M: int, N: int, K: int, device, sms: int | None = None) -> Config:
    """The launch for M rows against an (N, K) weight. Until a GPU sweep tunes it: 128-column blocks of 64 along
    K, four stages, the K range split so that about one program per SM runs (`sms`: the device's SM count
    unless given), summed by the last split. Under the interpreter: one block of the whole K range where it is
    short, no split (its cost is per program step)."""
    device = torch.device(device)
    if device.type != "cuda":
        return Config(min(64, max(16, triton.next_power_of_2(N))), max(16, min(128, triton.next_power_of_2(K))),
                      1, 2, 4)
    from kernels.mamba3.tl_utils import sm_count

    sms = sms or sm_count(device)
    block_n, block_k = 128, 64
    blocks = triton.cdiv(N, block_n)
    split = 1
    while blocks * split * 2 <= sms and triton.cdiv(K, block_k) >= split * 2 * 4:
        split *= 2
    return Config(block_n, block_k, split, 4, 4)


def rows_block(M: int) -> int:
    """x's rows padded for the dot: a power of two, at least 16."""
    return max(gemv.DOT_ROWS, triton.next_power_of_2(M))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, config: Config | None = None,
           tma: bool | None = None, out: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight (N, K)ᵀ (+ bias (N,)) → (..., N) in x's dtype, fp32 accumulation, for 1–128 rows of x
    (made for 17–128; fewer run, on the padded dot). `config` sets the launch (default: the shape's in `ROUTED`,
else `default_config`); `tma`
    forces TMA loads on or off (default: on wherever the operands allow). `out` (..., N) of x's dtype, viewable
    as (M, N) with unit stride in N, is written and returned instead of a fresh tensor. On sm_90+ the kernel is
    launched with programmatic dependent launch (`tl_utils.pdl_meta`)."""
    M, N, K = gemv._check(x, weight, bias, "skinny.linear")
    lead = tuple(x.shape[:-1])
    y = gemv._output(x, out, M, N, lead, "skinny.linear")
    if M == 0 or N == 0 or K == 0:
        return gemv._degenerate(y, bias, out, lead, N)
    cfg = config or ROUTED.get((N, K)) or default_config(M, N, K, x.device)
    if not (gemv._is_pow2(cfg.block_n) and cfg.block_n >= 16 and gemv._is_pow2(cfg.block_k) and cfg.block_k >= 16
            and cfg.split_k >= 1 and cfg.stages >= 1 and cfg.fixup in FIXUPS):
        raise ValueError(f"skinny.linear: {cfg} needs block_n and block_k powers of two ≥ 16, split_k ≥ 1, "
                         f"stages ≥ 1 and fixup one of {', '.join(FIXUPS)}")
    x2 = gemv._rows(x, K)
    rows = rows_block(M)
    k_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k  # whole K blocks per split
    split = triton.cdiv(K, k_split)  # splits that own any K (a split past K would add nothing)
    blocks = triton.cdiv(N, cfg.block_n)
    use_tma = (_tma_can_take(x2) and _tma_can_take(weight)) if tma is None else tma
    if use_tma and not (_tma_can_take(x2) and _tma_can_take(weight)):
        raise ValueError("skinny.linear: tma=True needs sm_90+ and x and weight rows 16-byte aligned")
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        x_desc = TensorDescriptor.from_tensor(x2, block_shape=[rows, cfg.block_k])
        w_desc = TensorDescriptor.from_tensor(weight, block_shape=[cfg.block_n, cfg.block_k])
    else:
        x_desc = w_desc = x2  # unused pointers
    fixup = FIXUPS.index(cfg.fixup) if split > 1 else 0
    cnt = ws = None
    if fixup:
        cnt = _zeroed("counters", x.device, COUNTERS, torch.int32) if blocks <= COUNTERS else None
        if fixup == 2:
            ws = _zeroed("sums", x.device, max(ATOMIC_TILE_FLOATS, M * N), torch.float32)
        if cnt is None or (fixup == 2 and ws is None):
            fixup = 0  # inside a capture before this stream has its buffers: the split kernel sums
    if split > 1 and fixup != 2:
        ws = torch.empty((split, M, N), device=x.device, dtype=torch.float32)
    has_bias = bias is not None
    b = bias.contiguous() if has_bias else x2  # unused pointer when there is no bias
    pdl = pdl_meta(x2)
    launch(_skinny_kernel, (split, blocks), x_desc, w_desc, x2, weight, b, y, ws if ws is not None else y,
           cnt if cnt is not None else y, M, N, K, k_split, split, x2.stride(0), weight.stride(0), y.stride(0),
           M * N, HAS_BIAS=has_bias, ROWS=rows, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, STAGES=cfg.stages,
           TMA=use_tma, FIXUP=fixup, EMULATE=INTERPRETED, num_warps=cfg.num_warps, **pdl)
    if split > 1 and fixup == 0:
        gemv.split_sum(ws, b, y, has_bias, pdl)
    return gemv._returned(y, out, lead, N)


def takes(x: Tensor, weight: Tensor) -> bool:
    """Whether the model's dispatch (`gemv.small_linear`) routes this product here: `gemv.supports` the operands,
    17–128 rows, and (N, K) one of the shapes a GPU sweep found faster than cuBLAS (`ROUTED`)."""
    return ((weight.shape[0], weight.shape[-1]) in ROUTED and MIN_ROWS <= math.prod(x.shape[:-1]) <= MAX_ROWS
            and gemv.supports(x, weight))


# (N, K) → the launch for 17–128 rows, from a GPU sweep (`python -m kernels.bench_skinny`); a shape not here
# stays on cuBLAS at 17–128 rows. Read at call time (the benchmarks' A/B swaps it).
ROUTED: dict[tuple[int, int], Config] = {}
