"""Triton split-K matrix product for a decode step at 17–128 rows: y = x·Wᵀ (+ bias), or its K splits' fp32
partials left for the next add + RMSNorm to sum (`SplitPartials`). Readable twin: `torch.nn.functional.linear`.

Why: at batch 128 a decode step's narrow products (N = 2048 output columns against K = 2048–8192: Mamba-3's
out_proj and fc2, Llama's o and down) ran on cuBLAS at 0.34–0.50 of the copy rate on an H200
(docs/benchmarks.md), and they are what the batch-128 targets lose most beyond the models' own kernels. With
128 rows and 2048 columns a tile of 128 × 128 leaves 16 programs for 132 SMs, so the K range has to be split,
and the splits summed.

Layout: grid (K splits, N blocks). A program owns BLOCK_N output columns and one K range, and streams
(BLOCK_N, BLOCK_K) weight tiles and (ROWS, BLOCK_K) x tiles through a software pipeline of STAGES copies
(tensor-memory-access descriptors on sm_90+ and under the interpreter, pointer loads elsewhere), one
tensor-core dot per tile with the weight as the left operand. x is padded to ROWS (a power of two, 16 to 128);
TMA fills rows past M with zeros, pointer loads mask them. One split stores y; more store fp32 partials to a
(split_k, M, N) workspace, which `kernels.gemv`'s split-sum kernel adds in split order (`linear`), or which
the next add + RMSNorm adds to the residual stream in the same order (`partials`: a branch's last product,
N = the model width, saves the split-sum launch and the rounding of the branch output to 16 bits).

Summing inside the product kernel was tried and lost (H200, docs/benchmarks.md): the last split to arrive
adding the others' partials (1.04–1.6× the split kernel's time: one program reads them all), and atomic fp32
adds into a zeroed tile (1.05–1.2×, and its sum's order is the arrival order).

Accumulation is fp32; y is x's dtype, rounded once after the bias is added. fp32 inputs take exact fp32
products ("ieee" dots).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import gemv
from kernels.mamba3.tl_utils import INTERPRETED, _sm_major, grid_dependency_wait, launch, mm, pdl_meta

MIN_ROWS = gemv.DOT_ROWS + 1  # fewer rows stay on kernels.gemv (one-row FMA path, 2–16-row dot path)
MAX_ROWS = gemv.MAX_ROWS


class Config(NamedTuple):
    block_n: int
    block_k: int
    split_k: int
    stages: int
    num_warps: int

    def __str__(self) -> str:
        return (f"block_n={self.block_n} block_k={self.block_k} split_k={self.split_k} stages={self.stages} "
                f"num_warps={self.num_warps}")


@triton.jit
def _skinny_kernel(x_desc, w_desc, x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, k_split, s_xm, s_wn, s_ym, s_ys,
                   HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, STAGES: tl.constexpr, TMA: tl.constexpr, PDL: tl.constexpr,
                   EMULATE: tl.constexpr):
    """Columns [pid 1·BLOCK_N, +BLOCK_N) of y over K range [pid 0·k_split, +k_split). PARTIAL: the fp32 sum
    stored to the split's slice of the workspace y (stride s_ys per split), no bias; otherwise the bias added
    and y stored in its dtype (one split)."""
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
    gemv.store_tile(acc, y_ptr, b_ptr, n, nm, m, rm, pid_k, s_ym, s_ys, HAS_BIAS, PARTIAL, EMULATE)


def _sm(t: Tensor) -> int:
    """The compute capability's major number of t's GPU (asked once per device)."""
    return _sm_major(t.device.index if t.device.index is not None else torch.cuda.current_device())


def _tma_can_take(t: Tensor) -> bool:
    """Whether a TMA descriptor can cover t's rows: sm_90 on (or the interpreter), base address and row stride
    multiples of 16 bytes, unit stride along the last dimension."""
    if t.is_cuda and _sm(t) < 9:
        return False
    return t.stride(-1) == 1 and not (t.data_ptr() % 16 or (t.stride(0) * t.element_size()) % 16)


def default_config(M: int, N: int, K: int, device, sms: int | None = None) -> Config:
    """The launch for M rows against an (N, K) weight where `ROUTED` has none. CUDA: the launch that won on
    every narrow shape of an H200 sweep at 32–128 rows (`python -m kernels.bench_skinny`): 64 × 128 tiles, four
    stages, four warps, the K range split in as many powers of two as keep about one program per SM (`sms`: the
    device's SM count unless given) and two K blocks per split. Under the interpreter: one block of up to 128
    along K, no split (its cost is per program step)."""
    device = torch.device(device)
    if device.type != "cuda":
        return Config(min(64, max(16, triton.next_power_of_2(N))), max(16, min(128, triton.next_power_of_2(K))),
                      1, 2, 4)
    from kernels.mamba3.tl_utils import sm_count

    sms = sms or sm_count(device)
    block_n, block_k = 64, 128
    blocks, split = triton.cdiv(N, block_n), 1
    while blocks * split * 2 <= sms and triton.cdiv(K, block_k) >= split * 2 * 2:
        split *= 2
    return Config(block_n, block_k, split, 4, 4)


def rows_block(M: int) -> int:
    """x's rows padded for the dot: a power of two, at least 16."""
    return max(gemv.DOT_ROWS, triton.next_power_of_2(M))


class SplitPartials:
    """x·Wᵀ of a branch's last product as its K splits' fp32 partials `ws` (split_k, M, N), not summed yet: the
    next add + RMSNorm (`kernels.fused.add_rms_norm`) adds them to the residual stream in split order, so the
    split-sum launch and the branch output's rounding to 16 bits are saved. Tensor-like only as far as the glue
    asks (shape, dtype, device); `materialize()` sums them into a tensor of the product's dtype, as `linear`
    would have returned."""

    def __init__(self, ws: Tensor, shape: tuple, dtype: torch.dtype):
        if (ws.dim() != 3 or ws.dtype != torch.float32 or math.prod(shape[:-1]) != ws.shape[1]
                or shape[-1] != ws.shape[2] or ws.stride(2) != 1):
            raise ValueError(f"SplitPartials: workspace {tuple(ws.shape)} {ws.dtype} does not hold {tuple(shape)}")
        self.ws, self.shape, self.dtype, self.device = ws, torch.Size(shape), dtype, ws.device

    def __repr__(self) -> str:
        return f"SplitPartials(shape={tuple(self.shape)}, splits={self.ws.shape[0]}, dtype={self.dtype})"

    def __getitem__(self, index) -> SplitPartials:
        """The partials of product rows [index]: leading axes only (ints, slices, index tensors), never the last
        (a prefill keeps its last token's)."""
        parts, lead = (index if isinstance(index, tuple) else (index,)), tuple(self.shape[:-1])
        if len(parts) > len(lead) or any(p is None or p is Ellipsis for p in parts):
            raise IndexError(f"SplitPartials: index {index!r} may select along the {len(lead)} leading axes of "
                             f"{tuple(self.shape)} only (no Ellipsis or None: the last axis is the product's)")
        ws = self.ws.view(self.ws.shape[0], *lead, self.shape[-1])[(slice(None), *parts)]
        return SplitPartials(ws.reshape(ws.shape[0], -1, self.shape[-1]), tuple(ws.shape[1:]), self.dtype)

    def materialize(self) -> Tensor:
        y = torch.empty(self.ws.shape[1:], device=self.device, dtype=self.dtype)
        gemv.split_sum(self.ws, y, y, False, pdl_meta(y))
        return y.view(self.shape)


def _launch(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor | None, cfg: Config | None, tma: bool | None,
            M: int, N: int, K: int) -> Tensor | None:
    """Run the product kernel under `cfg` (None: the shape's in `ROUTED`, else `default_config`): into y (rows of
    x's dtype) where the K range is one split and y is given; otherwise into a fresh fp32 workspace (splits, M,
    N), which is returned unsummed."""
    cfg = cfg or ROUTED.get((N, K)) or default_config(M, N, K, x.device)
    if not (gemv._is_pow2(cfg.block_n) and cfg.block_n >= 16 and gemv._is_pow2(cfg.block_k) and cfg.block_k >= 16
            and cfg.split_k >= 1 and cfg.stages >= 1 and cfg.num_warps >= 1):
        raise ValueError(f"skinny: {cfg} needs block_n and block_k powers of two ≥ 16, split_k, stages and "
                         "num_warps ≥ 1")
    x2 = gemv._rows(x, K)
    rows = rows_block(M)
    k_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k  # whole K blocks per split
    split = triton.cdiv(K, k_split)  # splits that own any K
    tma_ok = _tma_can_take(x2) and _tma_can_take(weight)
    if tma and not tma_ok:
        raise ValueError("skinny: tma=True needs sm_90+ (or the interpreter) and x and weight rows 16-byte aligned")
    use_tma = tma_ok if tma is None else tma
    if use_tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        x_desc = TensorDescriptor.from_tensor(x2, block_shape=[rows, cfg.block_k])
        w_desc = TensorDescriptor.from_tensor(weight, block_shape=[cfg.block_n, cfg.block_k])
    else:
        x_desc = w_desc = x2  # unused pointers
    partial = split > 1 or y is None
    out = torch.empty((split, M, N), device=x.device, dtype=torch.float32) if partial else y
    b = bias.contiguous() if bias is not None and not partial else x2  # unused pointer without a bias
    launch(_skinny_kernel, (split, triton.cdiv(N, cfg.block_n)), x_desc, w_desc, x2, weight, b, out, M, N, K,
           k_split, x2.stride(0), weight.stride(0), N if partial else y.stride(0), M * N,
           HAS_BIAS=bias is not None and not partial, PARTIAL=partial, ROWS=rows, BLOCK_N=cfg.block_n,
           BLOCK_K=cfg.block_k, STAGES=cfg.stages, TMA=use_tma, EMULATE=INTERPRETED, num_warps=cfg.num_warps,
           **pdl_meta(x2))
    return out if partial else None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, config: Config | None = None,
           tma: bool | None = None, out: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight (N, K)ᵀ (+ bias (N,)) → (..., N) in x's dtype, fp32 accumulation, for 1–128 rows of x
    (made for 17–128; fewer run, on the padded dot). `config` sets the launch (default: the shape's in `ROUTED`,
    else `default_config`); `tma` forces TMA loads on or off (default: on wherever the operands allow). `out`
    (..., N) of x's dtype, viewable as (M, N) with unit stride in N, is written and returned instead of a fresh
    tensor. On sm_90+ the kernels are launched with programmatic dependent launch (`tl_utils.pdl_meta`)."""
    M, N, K = gemv._check(x, weight, bias, "skinny.linear")
    lead = tuple(x.shape[:-1])
    y = gemv._output(x, out, M, N, lead, "skinny.linear")
    if M == 0 or N == 0 or K == 0:
        return gemv._degenerate(y, bias, out, lead, N)
    ws = _launch(x, weight, bias, y, config, tma, M, N, K)
    if ws is not None:
        has_bias = bias is not None
        gemv.split_sum(ws, bias.contiguous() if has_bias else y, y, has_bias, pdl_meta(y))
    return gemv._returned(y, out, lead, N)


def partials(x: Tensor, weight: Tensor, *, config: Config | None = None, tma: bool | None = None) -> SplitPartials:
    """x (..., K) @ weight (N, K)ᵀ as its K splits' fp32 partials (`SplitPartials`), for the next add + RMSNorm
    to sum; one split is a workspace of one. Launch as `linear`'s; no bias (a product with one is summed by
    `linear`). Rows of x: 1–128, at least one (an empty product has nothing to defer)."""
    M, N, K = gemv._check(x, weight, None, "skinny.partials")
    if M == 0 or N == 0 or K == 0:
        raise ValueError(f"skinny.partials: an empty product (x {tuple(x.shape)}, weight {tuple(weight.shape)})")
    ws = _launch(x, weight, None, None, config, tma, M, N, K)
    return SplitPartials(ws, tuple(x.shape[:-1]) + (N,), x.dtype)


def takes(x: Tensor, weight: Tensor) -> bool:
    """Whether the model's dispatch (`gemv.small_linear`, `model.layers.residual_product`) routes this product
    here: `gemv.supports` the operands, 17–128 rows, (N, K) one of the shapes a GPU sweep found faster than
    cuBLAS (`ROUTED`, up to the shape's `ROUTED_MAX_ROWS`), on a GPU of the family that sweep ran on (compute
    capability 9: Hopper)."""
    shape = (weight.shape[0], weight.shape[-1])
    return (shape in ROUTED and MIN_ROWS <= math.prod(x.shape[:-1]) <= ROUTED_MAX_ROWS.get(shape, MAX_ROWS)
            and gemv.supports(x, weight) and _sm(x) == ROUTED_SM_MAJOR)


# (N, K) → the launch for 17–128 rows; a shape not here stays on cuBLAS at 17–128 rows. Read at call time (the
# benchmarks' A/B swaps it). From an H200 sweep at 32, 64 and 128 rows (`python -m kernels.bench_skinny --rows 128
# 64 32 --whole`, docs/benchmarks.md): the shapes whose fastest launch beat cuBLAS by ≥ 3 % at every row count, as
# the model runs them (a branch's last product with the add + RMSNorm after it): Mamba-3's out_proj and fc2
# (SISO and MIMO) and Llama's down. Whole-model decode at 768 tokens in the same run: SISO 1.5B 0.975 / 0.947 / 0.927
# of cuBLAS's time at batch 128 / 64 / 32, MIMO 0.975 / 0.941 / 0.932, Llama-3.2-1B 0.965 / 0.961 / 0.949. The
# attention's o (2048 × 2048: Llama, Transformer 1.5B, the hybrid) and the Transformer 1.5B's down (2048 × 6648) were
# added on whole models (`--shipped --extra`, same run): Llama-3.2-1B 0.992 → 0.982 / 0.965 → 0.940 / 0.951 → 0.924
# of cuBLAS's time at batch 128 / 64 / 32, Transformer 1.5B 0.999 → 0.973 / 1.005 → 0.948 / 1.000 → 0.930, the
# hybrid ±0.3 %. Their launch is `default_config`'s at 128 rows. q/k/v (3072 × 2048) lost alone: cuBLAS keeps it.
ROUTED: dict[tuple[int, int], Config] = {
    (2048, 4096): Config(64, 128, 4, 4, 8),
    (2048, 3824): Config(64, 128, 4, 4, 8),
    (2048, 8192): Config(64, 128, 4, 4, 4),
    (2048, 2048): Config(64, 128, 4, 4, 4),
    (2048, 6648): Config(64, 128, 4, 4, 4),
}
# (N, K) → the most rows ROUTED sends that shape here (default MAX_ROWS): where it beat cuBLAS only at fewer rows.
ROUTED_MAX_ROWS: dict[tuple[int, int], int] = {}
ROUTED_SM_MAJOR = 9  # the GPUs ROUTED was measured on; others keep cuBLAS until a sweep there says otherwise
