"""Building blocks shared by the families: RMSNorm, the two SwiGLU layouts, rotary embeddings, and
the seeded initialisers of spec §1.1 / §4.2."""

from __future__ import annotations

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


class Glue(NamedTuple):
    """The elementwise work between a block's matrix products, and the products themselves
    (`linear(x, weight, bias)`, what every `Linear` of the model calls), per implementation."""

    add_rms_norm: Callable[[Tensor, Tensor | None, Tensor, float], tuple[Tensor, Tensor]]
    silu_mul: Callable[[Tensor, Tensor], Tensor]
    linear: Callable[[Tensor, Tensor, Tensor | None], Tensor] = F.linear

    def norm(self, h: Tensor, delta: Tensor | None, norm: RMSNorm) -> tuple[Tensor, Tensor]:
        """(h + delta, norm(h + delta)) with the norm module's weight and eps."""
        return self.add_rms_norm(h, delta, norm.weight, norm.eps)

    def block(self, h: Tensor, delta: Tensor | None, norm: RMSNorm, branch: Callable[[Tensor], Tensor],
              norm2: RMSNorm, mlp: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """A pre-norm block on the stream (h, pending delta): h += branch(norm(h)); h += mlp(norm2(h)),
        the last add left pending for the next block's norm."""
        h, x = self.norm(h, delta, norm)
        h, x = self.norm(h, branch(x), norm2)
        return h, mlp(x)


def glue_ops(impl: str) -> Glue:
    """PyTorch twins and cuBLAS products, or for impl "triton" (CUDA only, like the scans) the fused
    Triton kernels and, for one-row products (a batch-1 decode step), the Triton matrix-vector kernel."""
    if impl != "triton":
        return Glue(add_rms_norm, silu_mul)
    from kernels import fused, gemv

    return Glue(fused.add_rms_norm, fused.silu_mul, gemv.small_linear)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) whose product is the model's `Glue.linear`, set by
    `CausalLM.use_glue`: F.linear, or `kernels.gemv.small_linear` (one-row products on a Triton kernel)."""

    product: Callable[[Tensor, Tensor, Tensor | None], Tensor] = staticmethod(F.linear)

    def forward(self, x: Tensor) -> Tensor:
        return self.product(x, self.weight, self.bias)


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
    """SwiGLU in the Hugging Face Llama layout: down(SiLU(gate(x)) · up(x))."""

    def __init__(self, d_model: int, d_intermediate: int, dtype: torch.dtype, act: Callable = silu_mul):
        super().__init__()
        self.act = act
        self.gate_proj = Linear(d_model, d_intermediate, bias=False, dtype=dtype)
        self.up_proj = Linear(d_model, d_intermediate, bias=False, dtype=dtype)
        self.down_proj = Linear(d_intermediate, d_model, bias=False, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(self.act(self.gate_proj(x), self.up_proj(x)))


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
