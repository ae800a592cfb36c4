"""Building blocks shared by the families: RMSNorm, the two SwiGLU layouts, rotary embeddings, and
the seeded initialisers of spec §1.1 / §4.2."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least fp32: the dtype of parameters and scalars the modules keep in fp32."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: Tensor, weight: Tensor, eps: float, group_size: int | None = None) -> Tensor:
    """x (..., C) normalised over the last axis (or over groups of `group_size` channels), in at
    least fp32, times weight (C,); returned in weight's dtype."""
    cdt = compute_dtype(x.dtype)
    xf = x.to(cdt)
    if group_size is not None and group_size != x.shape[-1]:
        xg = xf.unflatten(-1, (-1, group_size))
        xf = (xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    else:
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.to(cdt)).to(weight.dtype)


def add_rms_norm(h: Tensor, delta: Tensor | None, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(h + delta, rms_norm(h + delta)): the residual add in h's dtype (delta None: h unchanged) and
    the block's pre-norm of the result. Readable twin of `kernels.fused.add_rms_norm`."""
    if delta is not None:
        h = h + delta.to(h.dtype)
    return h, rms_norm(h, weight, eps)


def silu_mul(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(gate)·up, SwiGLU's activation. Readable twin of `kernels.fused.silu_mul`."""
    return F.silu(gate) * up


class PendingProduct:
    """x·Wᵀ of a block's last branch product, not computed yet: the next pre-norm adds it to the residual stream
    h as one matrix product with h added in its epilogue (`add_to`: cuBLAS's addmm, the stream as the product's
    C operand, written back into it), so the branch output is never written and read back on its own and only
    the RMSNorm is left to the glue kernel (`Glue.norm`), whose traffic halves: it reads h alone and writes no
    new stream. The stream's traffic does not all hide under the product: timed apart (H200, 65536 × 4096 →
    2048, fp32 stream) the product took 1.59 ms alone and 1.80 ms with the stream in its epilogue, the norm
    kernel 0.39 ms with the add and 0.19 ms without. Whole-model prefill at 128 × 512 (H200, CUDA graph,
    `kernels.bench_prefill_ab`'s residual_product knob, fastest of 3): Mamba-3 SISO 1.5B 354.6 → 349.1 ms,
    Llama-3.2-1B 231.9 → 225.2 ms. The branch output is not rounded to x's dtype before the add: against an
    fp32 model the bf16 logits moved 3.20e-2 → 3.04e-2 by norm (Mamba-3), 3.13e-2 either way (Llama).

    Tensor-like only as far as the model uses a branch output: shape, dtype, device, indexing of the leading
    axes (`CausalLM.prefill` keeps the last token: the pending product of those rows of x, not all of them),
    `materialize()` and `add_to(h)`. Anything else fails loudly instead of computing the wrong thing. No bias:
    a product with one is computed at once (`pending_product`, `residual_product`)."""

    def __init__(self, x: Tensor, weight: Tensor):
        if not isinstance(x, Tensor) or weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
            raise ValueError(f"PendingProduct: x {getattr(x, 'shape', type(x).__name__)} must be a (..., K) tensor "
                             f"and weight {tuple(weight.shape)} (N, K)")
        if x.dtype != weight.dtype or x.device != weight.device:
            raise ValueError(f"PendingProduct: x {x.dtype} {x.device} and weight {weight.dtype} {weight.device} "
                             "must share dtype and device")
        self.x, self.weight = x, weight
        self.shape = torch.Size((*x.shape[:-1], weight.shape[0]))
        self.dtype, self.device = x.dtype, x.device

    def __repr__(self) -> str:
        return f"PendingProduct(shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    def __getitem__(self, index) -> PendingProduct:
        """The pending product of x[index]: leading axes only (ints, slices, index tensors), never the last."""
        parts = index if isinstance(index, tuple) else (index,)
        if len(parts) >= self.x.dim() or any(p is None or p is Ellipsis for p in parts):
            raise IndexError(f"PendingProduct: index {index!r} may select along the {self.x.dim() - 1} leading "
                             f"axes of {tuple(self.shape)} only (no Ellipsis or None: the last axis is the product's)")
        return PendingProduct(self.x[index], self.weight)

    def materialize(self) -> Tensor:
        """x·Wᵀ in x's dtype, as the branch would have returned it."""
        return F.linear(self.x, self.weight)

    def add_to(self, h: Tensor, *, in_place: bool = False) -> Tensor:
        """h + x·Wᵀ in h's dtype, as one product with h added in its epilogue: addmm in h's dtype where x has it,
        or with an fp32 output where h is fp32 and x bf16/fp16 (the fp32 residual stream, `residual_in_fp32`;
        addmm's out_dtype, CUDA only). Elsewhere (CPU with mixed dtypes, a torch without out_dtype) the product
        is materialised and added, `add_rms_norm`'s own rounding.

        `in_place`: the sum written into h itself and h returned, where h is contiguous and autograd is off
        (otherwise a new tensor, as without it). An addmm into a new tensor first copies h there, a pass over
        the whole stream that nothing hides (H200, 65536 × 2048 fp32 h: 0.26 ms, against 2.10 ms for product +
        norm); whole-model prefill, Mamba-3 SISO 1.5B at 128 × 512, one run each: 361 ms into new tensors,
        346 ms in place, 352 ms with the branch outputs added by the norm kernel."""
        if not isinstance(h, Tensor) or h.shape != self.shape or h.device != self.device:
            raise ValueError(f"PendingProduct.add_to: h {getattr(h, 'shape', type(h).__name__)} "
                             f"{getattr(h, 'device', '')}, expected {tuple(self.shape)} on {self.device}")
        n, k = self.weight.shape
        in_place = in_place and h.is_contiguous() and not torch.is_grad_enabled()
        x2, h2, wt = self.x.reshape(-1, k), h.reshape(-1, n), self.weight.t()
        out = {"out": h2} if in_place else {}
        y = None
        if h.dtype == self.dtype:
            y = torch.addmm(h2, x2, wt, **out)
        elif h.is_cuda and h.dtype == torch.float32 and self.dtype in (torch.bfloat16, torch.float16):
            try:
                y = torch.addmm(h2, x2, wt, out_dtype=torch.float32, **out)
            except TypeError:  # a torch whose addmm has no out_dtype: the product, then the add
                pass
        if y is None:
            delta = self.materialize().to(h.dtype)
            return h.add_(delta) if in_place else h + delta
        return h if in_place else y.view(h.shape)


def pending_product(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor | PendingProduct:
    """A branch's last product left to the next pre-norm wherever it can be (a tensor x, no bias), on any device:
    the deferral of `residual_product` without its conditions, for the CPU tests' glue."""
    if isinstance(x, Tensor) and bias is None:
        return PendingProduct(x, weight)
    return F.linear(x, weight, bias)


# Rows of x from which impl "triton" defers a branch's last product (`residual_product`): prefill-sized products,
# so that a decode step (a row per sequence; batch 1 on the Triton matrix-vector kernel) keeps its product. Not
# swept: timed at 65536 rows only. Read at call time: the benchmarks' A/B sets it (`residual_add_apart`).
RESIDUAL_PRODUCT_MIN_ROWS = 256


@contextlib.contextmanager
def residual_add_apart():
    """Inside, `residual_product` defers nothing: every branch output is written by its product and added by the
    next norm's kernel, as before the deferral (the benchmarks' A/B; read when a product runs, so a CUDA graph
    captured inside keeps it)."""
    global RESIDUAL_PRODUCT_MIN_ROWS
    saved, RESIDUAL_PRODUCT_MIN_ROWS = RESIDUAL_PRODUCT_MIN_ROWS, math.inf
    try:
        yield
    finally:
        RESIDUAL_PRODUCT_MIN_ROWS = saved


def residual_product(x: Tensor, weight: Tensor, bias: Tensor | None = None):
    """The branch-final product of impl "triton" (`Glue.residual`): a `PendingProduct` for the next pre-norm to
    add to the stream where x is a plain bf16/fp16 CUDA tensor of at least `RESIDUAL_PRODUCT_MIN_ROWS` rows and
    there is no bias and no autograd; at 17–128 rows of a shape `kernels.skinny` is routed for, that kernel's
    split partials (`kernels.skinny.SplitPartials`), which the next pre-norm's kernel sums into the stream;
    otherwise `kernels.gemv.small_linear`, the glue's product (a batch-1 decode row, a deferred SiLU·product
    included, stays on the Triton matrix-vector kernel)."""
    from kernels import gemv, skinny

    plain = (isinstance(x, Tensor) and bias is None and not torch.is_grad_enabled() and x.is_cuda
             and x.dtype in (torch.bfloat16, torch.float16) and weight.dtype == x.dtype and x.dim() >= 1)
    if plain and math.prod(x.shape[:-1]) >= RESIDUAL_PRODUCT_MIN_ROWS:
        return PendingProduct(x, weight)
    if plain and skinny.takes(x, weight):
        return skinny.partials(x, weight)
    return gemv.small_linear(x, weight, bias)


residual_product.takes_deferred = True  # a deferred SiLU·product row reaches small_linear as it is


class Glue(NamedTuple):
    """The elementwise work between a block's matrix products, and the products themselves
    (`linear(x, weight, bias)`, what every `Linear` of the model calls), per implementation. `residual`, where
    set, is the product of the Linears that end a branch (`Linear.ends_branch`): it may return a
    `PendingProduct`, which the next `norm` adds to the stream as one product."""

    add_rms_norm: Callable[[Tensor, Tensor | None, Tensor, float], tuple[Tensor, Tensor]]
    silu_mul: Callable[[Tensor, Tensor], Tensor]
    linear: Callable[[Tensor, Tensor, Tensor | None], Tensor] = F.linear
    residual: Callable[[Tensor, Tensor, Tensor | None], Tensor | PendingProduct] | None = None

    def norm(self, h: Tensor, delta: Tensor | PendingProduct | None, norm: RMSNorm) -> tuple[Tensor, Tensor]:
        """(h + delta, norm(h + delta)) with the norm module's weight and eps; a pending delta is added to h
        by its own product first (`PendingProduct.add_to`), the norm alone left to `add_rms_norm`. That sum is
        written into h in place: h is the stream's own tensor (the embedding's output, a norm's or an earlier
        product's), which the sum supersedes."""
        if isinstance(delta, PendingProduct):
            h, delta = delta.add_to(h, in_place=True), None
        elif not (delta is None or isinstance(delta, Tensor) or getattr(self.add_rms_norm, "takes_partials", False)):
            delta = delta.materialize()  # split partials (kernels.skinny) for a norm that cannot sum them
        return self.add_rms_norm(h, delta, norm.weight, norm.eps)

    def block(self, h: Tensor, delta: Tensor | PendingProduct | None, norm: RMSNorm, branch: Callable[[Tensor], Tensor],
              norm2: RMSNorm, mlp: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | PendingProduct]:
        """A pre-norm block on the stream (h, pending delta): h += branch(norm(h)); h += mlp(norm2(h)),
        the last add left pending for the next block's norm."""
        h, x = self.norm(h, delta, norm)
        h, x = self.norm(h, branch(x), norm2)
        return h, mlp(x)


def glue_ops(impl: str) -> Glue:
    """PyTorch twins and cuBLAS products, or for impl "triton" (CUDA only, like the scans) the fused
    Triton kernels and, for one-row products (a batch-1 decode step), the Triton matrix-vector kernel,
    into whose down product that step's SiLU·product is folded (`kernels.gemv.SiluMul`); and a prefill's
    branch-final products left to the next norm, which adds them to the stream in one product
    (`residual_product`)."""
    if impl != "triton":
        return Glue(add_rms_norm, silu_mul)
    from kernels import fused, gemv

    return Glue(fused.add_rms_norm, gemv.deferred_silu_mul, gemv.small_linear, residual_product)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose product is the model's `Glue.linear`, set by
    `CausalLM.use_glue`: F.linear, or `kernels.gemv.small_linear` (one-row products on a Triton kernel).
    `ends_branch`, set by the blocks on a branch's last product (whose output the next pre-norm adds to the
    residual stream), gives it `Glue.residual` instead where the glue has one."""

    product: Callable[[Tensor, Tensor, Tensor | None], Tensor] = staticmethod(F.linear)
    ends_branch: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) and not getattr(self.product, "takes_deferred", False):
            x = x.materialize()  # a row left to the product's loads (kernels.gemv.SiluMul) this product cannot do
        return self.product(x, self.weight, self.bias)


def stacked_weight(*linears: Linear) -> Tensor:
    """The Linears' weights as one (N₁ + N₂ + …, K) tensor, for one matrix product where the model would run
    several on the same input (Llama's q/k/v, gate/up; the state-spaces layouts store theirs stacked already).
    At small batch a decode step's products are bound by launches and by how well each streams its weight, so
    one product over the stacked rows beats three over the parts.

    The first call moves the weights into one buffer and leaves each Linear's parameter a view of its rows:
    the state dict, in-place loading (`copy_`, `load_state_dict`) and the memory stay those of separate
    layers. Later calls check that the rows are still adjacent in one storage and return a view of it;
    anything that gave a parameter a storage of its own (`.to()`, `load_state_dict(assign=True)`) is seen
    there and the buffer is rebuilt. Where autograd needs the parameters, a differentiable concatenation
    (a copy) is returned instead and nothing is moved."""
    ws = [lin.weight for lin in linears]
    if torch.is_grad_enabled() and any(w.requires_grad for w in ws):
        return torch.cat(ws)
    w0 = ws[0]
    if w0.device.type == "meta":
        return torch.cat([w.detach() for w in ws])
    rows, k = sum(w.shape[0] for w in ws), w0.shape[1]
    offset, base = w0.storage_offset(), w0.untyped_storage().data_ptr()
    if any(w.dim() != 2 or w.shape[1] != k or w.dtype != w0.dtype or w.device != w0.device for w in ws):
        raise ValueError("stacked_weight: the weights must share K, dtype and device, got "
                         + ", ".join(f"{tuple(w.shape)} {w.dtype} {w.device}" for w in ws))
    adjacent = not w0.is_inference()
    for w in ws:
        if not w.is_contiguous() or w.untyped_storage().data_ptr() != base or w.storage_offset() != offset:
            adjacent = False
            break
        offset += w.numel()
    if not adjacent:
        if w0.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("stacked_weight: the weights need restacking (moved or replaced since they were "
                               "stacked) inside a CUDA-graph capture, which would only record the copy; run the "
                               "model once before capturing it")
        # built outside inference mode, so the parameters never stay inference tensors (which could not be
        # updated in place later, e.g. by loading weights, nor viewed for the product outside the mode)
        with torch.inference_mode(False), torch.no_grad():
            stack = torch.cat([w.detach() for w in ws])
            for lin, part in zip(linears, stack.split([w.shape[0] for w in ws])):
                if lin.weight.is_inference():  # made in inference mode: its .data cannot be re-pointed
                    lin.weight = nn.Parameter(part, requires_grad=lin.weight.requires_grad)
                else:
                    lin.weight.data = part
        w0 = linears[0].weight
    return w0.detach().as_strided((rows, k), (k, 1))


_STACKING = [True]


@contextlib.contextmanager
def separate_products():
    """Inside, `stacked_product` runs one product per Linear, as before stacking: the benchmark's A/B
    (read when a step runs, so a CUDA graph captured inside keeps the separate products)."""
    _STACKING.append(False)
    try:
        yield
    finally:
        _STACKING.pop()


def stacked_product(x: Tensor, *linears: Linear) -> tuple[Tensor, ...]:
    """(lin(x) for lin in linears), as views of one product with the stacked weight (`stacked_weight`; the
    Linears' own product, so the model's glue decides the kernel). The Linears have no bias."""
    if any(lin.bias is not None for lin in linears):
        raise ValueError("stacked_product: the stacked Linears must have no bias")
    if not _STACKING[-1]:
        return tuple(lin(x) for lin in linears)
    y = linears[0].product(x, stacked_weight(*linears), None)
    return y.split([lin.out_features for lin in linears], dim=-1)


def stack_weights(model: nn.Module) -> None:
    """Stack every module's `row_stacks` (tuples of its Linears' attribute names) once, up front
    (`stacked_weight`), so that the first decode step, possibly inside a CUDA-graph capture, allocates nothing."""
    with torch.no_grad():
        for m in model.modules():
            for names in getattr(m, "row_stacks", ()):
                stacked_weight(*(getattr(m, n) for n in names))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype, group_size: int | None = None):
        super().__init__()
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.empty(dim, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps, self.group_size)


class GatedMLP(nn.Module):
    """SwiGLU in the state-spaces layout: fc1 D → 2F split into (value, gate), value·SiLU(gate), fc2."""

    def __init__(self, d_model: int, d_intermediate: int, dtype: torch.dtype, act: Callable = silu_mul):
        super().__init__()
        self.act = act  # SiLU(gate)·value: the twin or the fused kernel (`Glue.silu_mul`)
        self.fc1 = Linear(d_model, 2 * d_intermediate, bias=False, dtype=dtype)
        self.fc2 = Linear(d_intermediate, d_model, bias=False, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(self.act(gate, value))


class LlamaMLP(nn.Module):
    """SwiGLU in the Hugging Face Llama layout: down(SiLU(gate(x)) · up(x)); gate and up run as one product
    over their stacked weights (`stacked_product`)."""

    row_stacks = (("gate_proj", "up_proj"),)

    def __init__(self, d_model: int, d_intermediate: int, dtype: torch.dtype, act: Callable = silu_mul):
        super().__init__()
        self.act = act
        self.gate_proj = Linear(d_model, d_intermediate, bias=False, dtype=dtype)
        self.up_proj = Linear(d_model, d_intermediate, bias=False, dtype=dtype)
        self.down_proj = Linear(d_intermediate, d_model, bias=False, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(*stacked_product(x, self.gate_proj, self.up_proj)))


def rope_inv_freq(dim: int, base: float, device, *, factor: float | None = None, low_freq_factor: float = 1.0,
                  high_freq_factor: float = 4.0, original_max_position: int = 8192) -> Tensor:
    """fp32 (dim/2,) inverse frequencies base^(−2i/dim). With `factor`, Llama-3 scaling: wavelengths
    longer than original_max_position/low_freq_factor are stretched by `factor`, shorter than
    original_max_position/high_freq_factor kept, and the band between interpolated linearly in
    1/wavelength (Llama 3 report; HF `rope_type: llama3`)."""
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.int64).float() / dim)
    if factor is None:
        return inv_freq
    wavelen = 2 * math.pi / inv_freq
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > original_max_position / low_freq_factor, inv_freq / factor, inv_freq)
    in_band = (wavelen >= original_max_position / high_freq_factor) & \
              (wavelen <= original_max_position / low_freq_factor)
    return torch.where(in_band, blended, scaled)


@functools.cache
def rope_inv_freq_cached(dim: int, base: float, device: torch.device, **scaling) -> Tensor:
    """`rope_inv_freq`, computed once per (arguments, device): decoding asks for it in every attention
    layer at every step, and recomputing it cost a dozen small kernels per layer."""
    return rope_inv_freq(dim, base, device, **scaling)


def rope_cos_sin(positions: Tensor, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """positions (T,) int → cos, sin (T, 2·len(inv_freq)) in `dtype` (angles in fp32)."""
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (b, heads, T, d): rotate the first cos.shape[-1] channels, pairing channel i with i + half
    (the "rotate half" convention of HF Llama and the repo's MHA); the rest pass through."""
    rd = cos.shape[-1]
    xr, rest = x[..., :rd], x[..., rd:]
    x1, x2 = xr.chunk(2, dim=-1)
    rotated = xr * cos + torch.cat([-x2, x1], dim=-1) * sin
    return torch.cat([rotated, rest], dim=-1) if rest.shape[-1] else rotated


# Draws happen in fp32 and are then cast, so one seed gives the same weights in every dtype.

@torch.no_grad()
def uniform_(w: Tensor, low: float, high: float, gen: torch.Generator) -> None:
    w.copy_(torch.empty(w.shape, device=w.device).uniform_(low, high, generator=gen))


@torch.no_grad()
def normal_(w: Tensor, std: float, gen: torch.Generator) -> None:
    w.copy_(torch.empty(w.shape, device=w.device).normal_(0.0, std, generator=gen))


def uniform_fan_in_(w: Tensor, gen: torch.Generator, scale: float = 1.0) -> None:
    """PyTorch's Linear/Conv default (Kaiming-uniform, a=√5): U(±1/√fan_in), times `scale`."""
    bound = scale / math.sqrt(w[0].numel())
    uniform_(w, -bound, bound, gen)


@torch.no_grad()
def dt_bias_(dt_bias: Tensor, gen: torch.Generator, dt_min: float, dt_max: float, floor: float) -> None:
    """Δ₀ = exp(U(ln dt_min, ln dt_max)) clamped ≥ floor; dt_bias = softplus⁻¹(Δ₀) (spec §1.1)."""
    u = torch.rand(dt_bias.shape, generator=gen, device=dt_bias.device, dtype=torch.float32)
    dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
