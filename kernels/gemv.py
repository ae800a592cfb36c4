"""Triton matrix-vector product for the decode step at small batch: y = x·Wᵀ (+ bias) for at most 128 rows
of x. Readable twin: `torch.nn.functional.linear`.

Why: at batch 1 a decode step is the weights read once, so its time is the weight bytes over the rate
at which the matrix products stream them. cuBLAS's GEMV-shaped kernels read bf16 weights at only
58–67 % of copy bandwidth on an H200 at batch 1 (2.4–2.8 TB/s against 4.2 TB/s for a device copy); the
weights are 97 % (Mamba-3 1.5B) to 99 % (Llama-3.2-1B) of a batch-1 step's bytes at context 768
(model.cost), so that fraction is nearly the step's.

Layout: grid (N blocks, K splits). A program owns BLOCK_N output columns and one K range, and streams
a (BLOCK_N, BLOCK_K) weight tile per iteration (8 KB of bf16 at the one-row defaults), K contiguous, so
each thread issues 16-byte loads along a weight row and x is re-read from L2.

- One row (M = 1): every product is an elementwise FMA into a 2-D fp32 partial of the tile's shape; the
  partial is reduced along K once, after the loop. The loop body is loads and FMAs only (no shuffles,
  no shared memory), so many programs fit on an SM and their loads overlap; the next weight tile is
  loaded before this one's FMAs, and the first before the kernel waits on the previous one (programmatic
  dependent launch, `tl_utils.pdl_meta`), so a product starts streaming while the kernel before it drains
  (H200, batch-1 decode: SISO 1.5B 1.32 → 1.18 ms, Llama-3.2-1B 1.07 → 0.90 ms with the other kernels'
  launches overlapped the same way). Loading more than one tile before the wait was slower.
- 2–128 rows: a tensor-core dot per tile, the weight as the left operand (BLOCK_N × BLOCK_K) and x as the
  right one, padded to 16 columns or the next power of two (the dot's minimum; rows past M are masked,
  never read). Past 16 rows this is a skinny matrix product with the operands swapped; the model does not
  route such products here (cuBLAS keeps them) until a sweep shows it faster
  (`python -m kernels.bench_gemv --rows 128 --sweep --sweep-rows 128`). Chosen over
  per-row FMAs because those cost M FMAs per weight element: at M = 16 and 4.8 TB/s of bf16 that is
  ~77 TFLOP/s of fp32, above an H100/H200's CUDA-core peak (~67), and 16 2-D partials would not fit in
  registers. Padded to 16 the dot does 32 FLOPs per weight element, a few percent of the tensor cores'
  rate, and Triton pipelines the loads that feed a dot (cp.async stages), which a streaming kernel wants.
- split_k > 1: each split writes its fp32 partial to a (split_k, M, N) workspace and a second small
  kernel sums the splits in a fixed order, adds the bias and casts: deterministic, and both launches are
  fixed by the shapes (no host synchronisation, no data-dependent Python), so the call is CUDA-graph
  capturable. Splits only pay where the N blocks alone leave SMs idle (see `default_config`).

Accumulation is fp32; the output is x's dtype, rounded once (bias added before the rounding). fp32
inputs take exact fp32 products on both paths ("ieee" dots, not tf32).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.mamba3.tl_utils import (INTERPRETED, cast, grid_dependency_wait, launch, mm, pdl_meta, silu_mul_f32,
                                     sm_count)

MAX_ROWS = 128
DOT_ROWS = 16  # x padded to at least this many rows for the tensor-core dot (M ≥ 2)
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _x_chunk(x_ptr, up_ptr, k, km, SILU_MUL: tl.constexpr, DT: tl.constexpr, EMULATE: tl.constexpr):
    """x[k] of a one-row product: loaded, or with SILU_MUL computed from the gate (x_ptr) and up rows and
    rounded once to DT, as `kernels.fused.silu_mul` stores it."""
    if SILU_MUL:
        gate = tl.load(x_ptr + k, mask=km, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + k, mask=km, other=0.0).to(tl.float32)
        xv = cast(silu_mul_f32(gate, up), DT, EMULATE)
    else:
        xv = tl.load(x_ptr + k, mask=km, other=0.0)
    return xv


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, k_split, s_xm, s_wn, s_ym, s_ys, up_ptr,
                 HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, SILU_MUL: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Columns [pid_n·BLOCK_N, +BLOCK_N) of y over K range [pid_k·k_split, +k_split). ROWS 1: the FMA
    path (x row 0 only); ROWS ≥ 16 (x padded to a power of two): the dot path. PARTIAL: store the fp32
    sum to the split's slice of the workspace y (stride s_ys per split) without bias; otherwise add the bias
    and store in y's dtype. PDL: the one-row path loads its first weight tile before waiting on the
    previous kernel (weights are never written by one), so those loads overlap that kernel's tail.
    SILU_MUL (one row only): x = SiLU(gate)·up of the gate row x_ptr and the up row up_ptr (`SiluMul`)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    DT = w_ptr.dtype.element_ty
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    w_rows = w_ptr + n.to(tl.int64)[:, None] * s_wn  # (BLOCK_N, 1) row starts
    k_lo = pid_k * k_split
    k_hi = tl.minimum(K, k_lo + k_split)
    if ROWS == 1:
        # software-pipelined by one tile: the next weight tile is in flight while this one is used
        # (past k_hi the load is fully masked and moves no data)
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        k = k_lo + tl.arange(0, BLOCK_K)
        w = tl.load(w_rows + k[None, :], mask=nm[:, None] & (k < k_hi)[None, :], other=0.0)
        grid_dependency_wait(PDL)
        # x's chunks are pipelined the same way (a chunk is 8–32 B a thread, from L1/L2, but waiting on it
        # at the top of every iteration showed: H200, whole-model batch-1 decode 0.2–0.8 % slower)
        xv = _x_chunk(x_ptr, up_ptr, k, k < k_hi, SILU_MUL, DT, EMULATE)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            k += BLOCK_K
            km = k < k_hi  # the next tile's columns: past k_hi (≤ K) on a split's last pass, so that load is empty
            w_next = tl.load(w_rows + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
            xv_next = _x_chunk(x_ptr, up_ptr, k, km, SILU_MUL, DT, EMULATE)
            acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
            w = w_next
            xv = xv_next
        y = tl.sum(acc, axis=1)[:, None]  # (BLOCK_N, 1)
        m = tl.arange(0, 1)
    else:
        grid_dependency_wait(PDL)
        m = tl.arange(0, ROWS)
        rm = m < M
        x_rows = x_ptr + m.to(tl.int64)[None, :] * s_xm  # (1, ROWS): x may be rows of a large buffer
        y = tl.zeros((BLOCK_N, ROWS), tl.float32)
        for k0 in range(k_lo, k_hi, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            km = k < K  # only the last split's last block can cross k_hi (= K there)
            w = tl.load(w_rows + k[None, :], mask=nm[:, None] & km[None, :], other=0.0)
            xt = tl.load(x_rows + k[:, None], mask=rm[None, :] & km[:, None], other=0.0)
            y += mm(w, xt, DT, False, EMULATE)  # y[n, m] += Σ_k w[n, k]·x[m, k]
    store_tile(y, y_ptr, b_ptr, n, nm, m, m < M, pid_k, s_ym, s_ys, HAS_BIAS, PARTIAL, EMULATE)


@triton.jit
def store_tile(y, y_ptr, b_ptr, n, nm, m, rm, pid_k, s_ym, s_ys, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr,
               EMULATE: tl.constexpr):
    """A product tile y (BLOCK_N, ROWS) fp32, stored transposed into rows m of y_ptr (columns n): PARTIAL, as is
    into split pid_k's slice (stride s_ys); otherwise with the bias added, rounded once to y_ptr's dtype."""
    out_mask = nm[:, None] & rm[None, :]
    y_at = y_ptr + m.to(tl.int64)[None, :] * s_ym + n[:, None]
    if PARTIAL:
        tl.store(y_at + pid_k.to(tl.int64) * s_ys, y, mask=out_mask)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)[:, None]
        tl.store(y_at, cast(y, y_ptr.dtype.element_ty, EMULATE), mask=out_mask)


@triton.jit
def _split_sum_kernel(ws_ptr, b_ptr, y_ptr, N, s_wss, s_wsm, s_ym, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                      BLOCK: tl.constexpr, PDL: tl.constexpr, EMULATE: tl.constexpr):
    """Row pid 0 of y, columns [pid 1·BLOCK, +BLOCK): the SPLIT_K partials summed in order (+ bias), cast."""
    grid_dependency_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    nm = n < N
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * s_wss + row * s_wsm + n, mask=nm, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=nm, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_ym + n, cast(acc, y_ptr.dtype.element_ty, EMULATE), mask=nm)


def _is_pow2(v: int) -> bool:
    return v >= 1 and v & (v - 1) == 0


def default_config(M: int, N: int, K: int, device, sms: int | None = None) -> tuple[int, int, int, int]:
    """(block_n, block_k, split_k, num_warps) for M rows of x against an (N, K) weight; `sms` the SM count
    (default: the device's; given, no GPU is needed, as for the offline compile report).

    CUDA: the fastest fixed configurations of an H200 sweep over the three models' decode shapes
    (`python -m kernels.bench_gemv --sweep`, docs/benchmarks.md):
    - one row, wide weights (N/16 blocks ≥ 3.5 per SM: in_proj, fc1, the LM head): 16 × 256 tiles,
      8 warps; narrow ones (N ≈ 2048, K long: out_proj, fc2, down, q/o, k/v): 4 × 1024 tiles, 8 warps,
      which beat 16 × 256 by 1.5–2× there (more programs, longer rows per program), or 4 warps where K is
      at most 2048 (two K blocks: Llama's stacked q/k/v and o, 6.33 → 5.50 and 4.60 → 4.49 µs; whole
      Llama-3.2-1B batch-1 step 0.842 → 0.825 ms; at K 3824–8192 8 warps stay 1–2 % ahead). No split: no
      split configuration was faster at one row.
    - 2–16 rows: 32 × 256 tiles, 4 warps, K split in 4 where the N blocks are fewer than the SMs (and
      every split keeps ≥ 2 K blocks).
    - 17–128 rows: 64 × 64 tiles (an x tile of up to 128 rows × 64 stays within shared memory at three
      pipeline stages), 4 warps, K split in 2 where the N blocks are fewer than the SMs. Not tuned further:
      no configuration of a 48-point sweep was clearly faster than cuBLAS, which the model keeps there.

    Elsewhere (the CPU interpreter): the largest blocks up to (64, 512), no split: the interpreter's
    cost is per program step, not per element."""
    device = torch.device(device)
    kp = triton.next_power_of_2(K)
    if device.type != "cuda":
        return max(16 if M > 1 else 1, min(64, triton.next_power_of_2(N))), max(16, min(512, kp)), 1, 4
    sms = sms or sm_count(device)
    if M == 1:
        if 2 * triton.cdiv(N, 16) >= 7 * sms:
            return 16, max(16, min(kp, 256)), 1, 8
        return 4, max(16, min(kp, 1024)), 1, 4 if K <= 2048 else 8
    if M > DOT_ROWS:
        block_n, block_k = 64, max(16, min(kp, 64))
        return block_n, block_k, 2 if triton.cdiv(N, block_n) < sms and triton.cdiv(K, block_k) >= 4 else 1, 4
    block_n, block_k = 32, max(16, min(kp, 256))
    split_k = 4 if triton.cdiv(N, block_n) < sms and triton.cdiv(K, block_k) >= 8 else 1
    return block_n, block_k, split_k, 4


def _rows(x: Tensor, K: int) -> Tensor:
    """(..., K) → (M, K) with unit stride in K (a view when possible)."""
    x2 = x.reshape(-1, K)
    return x2 if x2.stride(-1) == 1 or x2.shape[0] == 0 else x2.contiguous()


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, who: str = "gemv.linear") -> tuple[int, int, int]:
    """(M, N, K) or a ValueError naming what does not fit (`who`: the caller the message names)."""
    if weight.dim() != 2 or x.dim() < 1:
        raise ValueError(f"{who}: x {tuple(x.shape)} must be (..., K) and weight {tuple(weight.shape)} (N, K)")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"{who}: x {tuple(x.shape)} has {x.shape[-1]} features, weight {tuple(weight.shape)} "
                         f"expects K = {K}")
    M = math.prod(x.shape[:-1])
    if M > MAX_ROWS:
        raise ValueError(f"{who}: {M} rows of x; this kernel takes at most {MAX_ROWS} (a larger "
                         f"matrix-matrix product is torch.nn.functional.linear's job)")
    if x.dtype != weight.dtype or weight.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{who}: x {x.dtype} and weight {weight.dtype} must share one of "
                         f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    if weight.stride(1) != 1 and K > 1:
        raise ValueError(f"{who}: weight strides {weight.stride()} need unit stride along K")
    if bias is not None and (bias.shape != (N,) or bias.dtype != weight.dtype):
        raise ValueError(f"{who}: bias {tuple(bias.shape)} {bias.dtype}, expected ({N},) {weight.dtype}")
    if x.device != weight.device or (bias is not None and bias.device != weight.device):
        raise ValueError(f"{who}: x, weight and bias must be on one device")
    return M, N, K


def _output(x, out: Tensor | None, M: int, N: int, lead: tuple, who: str = "gemv.linear") -> Tensor:
    """The (M, N) tensor a product writes: `out` viewed so (checked: shape lead + (N,), x's dtype and device, unit
    stride along N), or a fresh one."""
    if out is None:
        return torch.empty((M, N), device=x.device, dtype=x.dtype)
    if tuple(out.shape) != lead + (N,) or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"{who}: out {tuple(out.shape)} {out.dtype}, expected {lead + (N,)} {x.dtype}")
    try:
        y = out.view(M, N)
    except RuntimeError:
        raise ValueError(f"{who}: out strides {out.stride()} cannot be viewed as ({M}, {N})") from None
    if y.stride(1) != 1 and N > 1:
        raise ValueError(f"{who}: out strides {out.stride()} need unit stride along N")
    return y


def _returned(y: Tensor, out: Tensor | None, lead: tuple, N: int) -> Tensor:
    return y.view(lead + (N,)) if out is None else out


def _degenerate(y: Tensor, bias: Tensor | None, out: Tensor | None, lead: tuple, N: int) -> Tensor:
    """An empty product's result: nothing to write (M or N zero), or the bias (zeros without one) where K is."""
    if y.numel():
        y.copy_(bias.expand(y.shape) if bias is not None else torch.zeros_like(y))
    return _returned(y, out, lead, N)


def split_sum(ws: Tensor, b: Tensor, y: Tensor, has_bias: bool, pdl: dict) -> None:
    """y (M, N) = Σ_s ws[s] (+ b), the splits added in order from zero, rounded once to y's dtype."""
    split_k, M, N = ws.shape
    block = min(1024, triton.next_power_of_2(N))
    launch(_split_sum_kernel, (M, triton.cdiv(N, block)), ws, b, y, N, ws.stride(0), ws.stride(1), y.stride(0),
           HAS_BIAS=has_bias, SPLIT_K=split_k, BLOCK=block, EMULATE=INTERPRETED, num_warps=4, **pdl)


class SiluMul:
    """x = SiLU(gate)·up of one decode row, not computed yet: SwiGLU's activation, which would be a kernel of its
    own between the MLP's two products (`kernels.fused.silu_mul`), folded into the down product's loads of x
    (H200, whole-model batch-1 decode: 2–3 % faster; the same fold of the add + RMSNorm into the next product,
    whose every program then needs the whole row's sum of squares first, was not faster). `linear` and
    `small_linear` take one in place of x; what else needs the values calls `materialize()` (the glue kernel).
    Tensor-like only as far as the products' dispatch asks (shape, dtype, device, is_cuda, dim(), numel()), so
    any other use fails loudly instead of reading garbage. Rounded once to their dtype, as the glue kernel."""

    def __init__(self, gate: Tensor, up: Tensor):
        if up.shape != gate.shape or up.dtype != gate.dtype or up.device != gate.device:
            raise ValueError(f"SiluMul: gate {tuple(gate.shape)} {gate.dtype} {gate.device} and up "
                             f"{tuple(up.shape)} {up.dtype} {up.device} must match")
        self.gate, self.up = gate, up
        self.shape, self.dtype, self.device = gate.shape, gate.dtype, gate.device

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def materialize(self) -> Tensor:
        from kernels import fused

        return fused.silu_mul(self.gate, self.up)


def deferred_silu_mul(gate: Tensor, up: Tensor) -> Tensor | SiluMul:
    """`kernels.fused.silu_mul` for the model's glue (impl "triton"): at a batch-1 decode row (gate, up (1, F),
    not a prefill's (1, T, F)) deferred to the down product (`SiluMul`), elsewhere the fused kernel, now."""
    if (gate.dim() == 2 and gate.shape[0] == 1 and gate.dtype in SUPPORTED_DTYPES and gate.stride(-1) == 1
            and up.stride(-1) == 1 and (gate.is_cuda or INTERPRETED)):
        return SiluMul(gate, up)  # which refuses an up row that does not match, as the glue kernel does
    from kernels import fused

    return fused.silu_mul(gate, up)


def supports(x: Tensor, weight: Tensor) -> bool:
    """Whether `linear(x, weight)` takes these operands on the GPU (the model's dispatch test): CUDA,
    1–128 rows, x and weight of one of bf16/fp16/fp32, weight (N, K) with unit stride along K."""
    return (x.is_cuda and weight.is_cuda and x.device == weight.device and weight.dim() == 2 and x.dim() >= 1
            and x.shape[-1] == weight.shape[1] and 1 <= math.prod(x.shape[:-1]) <= MAX_ROWS
            and x.dtype == weight.dtype and weight.dtype in SUPPORTED_DTYPES and weight.stride(1) == 1)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, block_n: int | None = None,
           block_k: int | None = None, split_k: int | None = None, num_warps: int | None = None,
           out: Tensor | None = None) -> Tensor:
    """x (..., K) @ weight (N, K)ᵀ (+ bias (N,)) → (..., N) in x's dtype, fp32 accumulation; the leading
    dimensions of x hold at most 128 rows in all. On sm_90+ the kernel is launched with programmatic
    dependent launch and reads its first weight tile before waiting on the kernel before it in the stream,
    so `weight` must not be written by that kernel (the model's weights never are); x and bias are read
    after the wait. Unset block/split/warp arguments come from `default_config`. `out` (..., N) of x's
    dtype, viewable as (M, N) with unit stride in N, is written and returned instead of a fresh tensor.
    With split_k > 1 an fp32 workspace (split_k, M, N) is allocated per call (from the caching allocator,
    so inside a CUDA graph it belongs to the graph). x may be a `SiluMul` (one row: computed as it is
    loaded; more rows: materialised first)."""
    if isinstance(x, SiluMul) and x.numel() != x.shape[-1]:
        x = x.materialize()  # folded into the one-row path only
    M, N, K = _check(x, weight, bias)
    lead = tuple(x.shape[:-1])
    y = _output(x, out, M, N, lead)
    if M == 0 or N == 0 or K == 0:
        return _degenerate(y, bias, out, lead, N)
    d_bn, d_bk, d_sk, d_w = default_config(M, N, K, x.device)
    block_n, block_k = block_n or d_bn, block_k or d_bk
    split_k, num_warps = split_k or d_sk, num_warps or d_w
    if not (_is_pow2(block_n) and _is_pow2(block_k) and block_k >= 16 and split_k >= 1):
        raise ValueError(f"gemv.linear: block_n {block_n} and block_k {block_k} must be powers of two "
                         f"(block_k ≥ 16), split_k {split_k} ≥ 1")
    rows = 1 if M == 1 else max(DOT_ROWS, triton.next_power_of_2(M))
    if rows > 1 and block_n < 16:
        raise ValueError(f"gemv.linear: {M} rows take the tensor-core dot, which needs block_n ≥ 16 (got {block_n})")
    silu_mul = isinstance(x, SiluMul)
    x2 = _rows(x.gate, K) if silu_mul else _rows(x, K)
    up = _rows(x.up, K) if silu_mul else x2  # unused pointer without SILU_MUL
    w_stride = weight.stride(0)
    k_split = triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k  # each split a whole number of blocks
    grid = (triton.cdiv(N, block_n), split_k)
    has_bias = bias is not None
    b = bias.contiguous() if has_bias else x2  # unused pointer when there is no bias
    pdl = pdl_meta(x2)
    common = dict(ROWS=rows, BLOCK_N=block_n, BLOCK_K=block_k, SILU_MUL=silu_mul, EMULATE=INTERPRETED,
                  num_warps=num_warps, **pdl)
    if split_k == 1:
        launch(_gemv_kernel, grid, x2, weight, b, y, M, N, K, k_split, x2.stride(0), w_stride, y.stride(0), 0,
               up, HAS_BIAS=has_bias, PARTIAL=False, **common)
    else:
        ws = torch.empty((split_k, M, N), device=x.device, dtype=torch.float32)
        launch(_gemv_kernel, grid, x2, weight, b, ws, M, N, K, k_split, x2.stride(0), w_stride, ws.stride(1),
               ws.stride(0), up, HAS_BIAS=False, PARTIAL=True, **common)
        split_sum(ws, b, y, has_bias, pdl)
    return _returned(y, out, lead, N)


def small_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The model's matrix product for impl "triton": `linear` for one row on the GPU (a batch-1 decode
    step) outside autograd, where it beat cuBLAS on every decode shape of our models (H200: 0.52–0.96 of
    cuBLAS's time); torch.nn.functional.linear otherwise. At 2–16 rows the kernel was 0.86–1.11× cuBLAS
    (faster on 7 of 10 shapes, slower on the 1.5B in_proj and Llama's q/o), so cuBLAS keeps those. At 17–128
    rows the shapes `kernels.skinny.ROUTED` names run on its split-K kernel, the others on cuBLAS."""
    if (x.numel() == x.shape[-1] and not torch.is_grad_enabled() and supports(x, weight)
            and (bias is None or bias.dtype == weight.dtype)):
        return linear(x, weight, bias)
    if isinstance(x, SiluMul):
        x = x.materialize()
    if not torch.is_grad_enabled() and (bias is None or bias.dtype == weight.dtype):
        from kernels import skinny

        if skinny.takes(x, weight):
            return skinny.linear(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


small_linear.takes_deferred = True  # model.layers.Linear hands it a deferred row (`SiluMul`) as it is
