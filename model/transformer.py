"""Llama-style Transformer in the Hugging Face `LlamaForCausalLM` layout (spec §4.4, §9), with a
static, preallocated KV cache.

Attention is shared with the hybrid (model/hybrid.py): K/V for every position live in one
(b, n_kv, max_context, head_dim) buffer per layer. Prefill writes its positions and attends causally
over the held prefix. Decode writes position `pos` (a device tensor) with `index_copy_` and attends
over the whole buffer with a mask `arange(max_context) ≤ pos`: fixed shapes, no host synchronisation,
so a decode step can be captured in a CUDA graph. The GQA group is folded into the query axis in
decode so K/V are read once per KV head, not copied per query head.

`impl` "chunked" runs torch's scaled_dot_product_attention; "sequential" runs the explicit
softmax(q·kᵀ/√d)·v twin in at least fp32; "triton" (CUDA) decodes with one Triton launch for the
rotary of q and k plus the cache write (kernels/rope.py) and split-K Triton attention that reads only
positions 0..pos (kernels/attention.py), and prefills with the same one-launch rotary + cache write and
SDPA as "chunked" does (prefill attention is compute-bound, where SDPA's flash kernel already sits).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import TransformerConfig
from model.layers import (Glue, Linear, LlamaMLP, RMSNorm, apply_rope, compute_dtype, normal_, rope_cos_sin,
                          rope_inv_freq_cached, stacked_product)
from model.lm import CausalLM

ATTENTION_IMPLS = ("sequential", "chunked", "triton")


class KVCache(NamedTuple):
    k: Tensor  # (b, n_kv, max_context, head_dim)  rotated keys, model dtype
    v: Tensor  # (b, n_kv, max_context, head_dim)


def allocate_kv(batch: int, n_kv: int, max_context: int, head_dim: int, device, dtype) -> KVCache:
    shape = (batch, n_kv, max_context, head_dim)
    return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """q (b, h, Tq, d), k/v (b, h_kv, Tk, d), mask (Tq, Tk) bool (True = attend) or None (full)."""
    group = q.shape[1] // k.shape[1]
    cdt = compute_dtype(q.dtype)
    k, v = k.repeat_interleave(group, dim=1).to(cdt), v.repeat_interleave(group, dim=1).to(cdt)
    scores = q.to(cdt) @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).to(q.dtype)


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, impl: str, causal: bool = False) -> Tensor:
    if impl == "sequential":
        if causal:
            mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        return attention_reference(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=q.shape[1] != k.shape[1])


def attend_prefill(q: Tensor, k: Tensor, v: Tensor, kv: KVCache, start: int, impl: str) -> Tensor:
    """q (b, h, T, d), k/v (b, h_kv, T, d) for positions start..start+T−1; writes k/v into the cache and
    attends causally over positions 0..start+T−1. → (b, h, T, d)."""
    end = start + q.shape[2]
    kv.k[:, :, start:end] = k
    kv.v[:, :, start:end] = v
    return _attend_held(q, kv, start, impl)


def _attend_held(q: Tensor, kv: KVCache, start: int, impl: str) -> Tensor:
    """q (b, h, T, d) of positions start..start+T−1, whose k/v the cache already holds, attending causally
    over positions 0..start+T−1 of it."""
    end = start + q.shape[2]
    if start == 0:
        return _attend(q, kv.k[:, :, :end], kv.v[:, :, :end], None, impl, causal=True)
    rows = torch.arange(start, end, device=q.device)[:, None]
    mask = torch.arange(end, device=q.device)[None, :] <= rows  # (T, end)
    return _attend(q, kv.k[:, :, :end], kv.v[:, :, :end], mask, impl)


def attend_decode(q: Tensor, k: Tensor, v: Tensor, kv: KVCache, pos: Tensor, impl: str) -> Tensor:
    """q (b, h, 1, d), k/v (b, h_kv, 1, d) at position `pos` (device int64 scalar) → (b, h, 1, d)."""
    b, h, _, d = q.shape
    n_kv, max_context = kv.k.shape[1], kv.k.shape[2]
    kv.k.index_copy_(2, pos.view(1), k)
    kv.v.index_copy_(2, pos.view(1), v)
    mask = (torch.arange(max_context, device=q.device) <= pos)[None, :]  # (1, max_context)
    grouped = q.reshape(b, n_kv, h // n_kv, d)  # the group's queries share one KV head
    return _attend(grouped, kv.k, kv.v, mask, impl).reshape(b, h, 1, d)


def attend_decode_triton(q: Tensor, k: Tensor, v: Tensor, kv: KVCache, pos: Tensor, inv_freq: Tensor) -> Tensor:
    """q (b, h·d), k, v (b, h_kv·d) of one token at `pos`, not yet rotated (projection outputs; q is
    rotated in place) → attention output (b, h·d). Two Triton steps: rotary + cache write, attention."""
    from kernels.attention import decode_attention
    from kernels.mamba3 import tl_utils
    from kernels.rope import rope_decode_

    if not q.is_cuda and not tl_utils.INTERPRETED:
        raise RuntimeError(f"impl='triton' needs a CUDA device, got {q.device}; use impl='chunked'")
    b, d = q.shape[0], kv.k.shape[-1]
    q = rope_decode_(q.view(b, -1, d), k.view(b, -1, d), v.view(b, -1, d), kv.k, kv.v, pos, inv_freq)
    return decode_attention(q, kv.k, kv.v, pos).flatten(1)


def attend_prefill_triton(q: Tensor, k: Tensor, v: Tensor, kv: KVCache, start: int, inv_freq: Tensor) -> Tensor:
    """q (b, T, h·d), k, v (b, T, h_kv·d) of T tokens from position `start`, not yet rotated (projection
    outputs; q is rotated in place) → attention output (b, T, h·d): the rotary of q and k and the cache
    write in one Triton launch (kernels/rope.py), then SDPA over the held prefix as `attend_prefill`."""
    from kernels.mamba3 import tl_utils
    from kernels.rope import rope_prefill_

    if not q.is_cuda and not tl_utils.INTERPRETED:
        raise RuntimeError(f"impl='triton' needs a CUDA device, got {q.device}; use impl='chunked'")
    b, T, _ = q.shape
    d = kv.k.shape[-1]
    q = rope_prefill_(q.unflatten(-1, (-1, d)), k.unflatten(-1, (-1, d)), v.unflatten(-1, (-1, d)), kv.k, kv.v,
                      start, inv_freq).transpose(1, 2)
    return _attend_held(q, kv, start, "chunked").transpose(1, 2).reshape(b, T, -1)


class LlamaAttention(nn.Module):
    """Hugging Face Llama layout (q_proj, k_proj, v_proj, o_proj); q, k and v run as one product over
    their stacked weights (`stacked_product`), as the hybrid's fused in_proj does."""

    row_stacks = (("q_proj", "k_proj", "v_proj"),)

    def __init__(self, cfg: TransformerConfig, impl: str, dtype: torch.dtype):
        super().__init__()
        self.cfg, self.impl = cfg, impl
        nh, nkv, hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = Linear(cfg.d_model, nh * hd, bias=False, dtype=dtype)
        self.k_proj = Linear(cfg.d_model, nkv * hd, bias=False, dtype=dtype)
        self.v_proj = Linear(cfg.d_model, nkv * hd, bias=False, dtype=dtype)
        self.o_proj = Linear(nh * hd, cfg.d_model, bias=False, dtype=dtype)

    def _inv_freq(self, device) -> Tensor:
        cfg = self.cfg
        return rope_inv_freq_cached(cfg.head_dim, cfg.rope_theta, device, factor=cfg.rope_scaling_factor,
                                    low_freq_factor=cfg.rope_low_freq_factor,
                                    high_freq_factor=cfg.rope_high_freq_factor,
                                    original_max_position=cfg.rope_original_max_position)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., D) → q (..., h·d), k, v (..., h_kv·d), not rotated: views of one product."""
        return stacked_product(x, self.q_proj, self.k_proj, self.v_proj)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, T, D) → rotated q (b, h, T, d), k (b, h_kv, T, d), v (b, h_kv, T, d)."""
        cfg = self.cfg
        b, T, _ = x.shape
        q, k, v = self._project(x)
        q = q.reshape(b, T, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = k.reshape(b, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = v.reshape(b, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, self._inv_freq(x.device), x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, kv: KVCache, start: int) -> Tensor:
        b, T, _ = x.shape
        if self.impl == "triton":
            return self.o_proj(attend_prefill_triton(*self._project(x), kv, start, self._inv_freq(x.device)))
        q, k, v = self._qkv(x, torch.arange(start, start + T, device=x.device))
        out = attend_prefill(q, k, v, kv, start, self.impl)
        return self.o_proj(out.transpose(1, 2).reshape(b, T, -1))

    def step(self, x: Tensor, kv: KVCache, pos: Tensor) -> Tensor:
        if self.impl == "triton":
            return self.o_proj(attend_decode_triton(*self._project(x), kv, pos, self._inv_freq(x.device)))
        q, k, v = self._qkv(x[:, None], pos.view(1))
        return self.o_proj(attend_decode(q, k, v, kv, pos, self.impl).flatten(1))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, impl: str, dtype: torch.dtype, glue: Glue):
        super().__init__()
        self.cfg, self.glue = cfg, glue
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
        self.self_attn = LlamaAttention(cfg, impl, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype)
        self.mlp = LlamaMLP(cfg.d_model, cfg.d_intermediate, dtype, glue.silu_mul)
        self.self_attn.o_proj.ends_branch = self.mlp.down_proj.ends_branch = True  # their outputs join the stream

    def allocate(self, batch: int, max_context: int, device) -> KVCache:
        cfg = self.cfg
        return allocate_kv(batch, cfg.n_kv_heads, max_context, cfg.head_dim, device,
                           self.input_layernorm.weight.dtype)

    def forward(self, h: Tensor, delta: Tensor | None, kv: KVCache, start: int) -> tuple[Tensor, Tensor]:
        return self.glue.block(h, delta, self.input_layernorm, lambda x: self.self_attn(x, kv, start),
                               self.post_attention_layernorm, self.mlp)

    def step(self, h: Tensor, delta: Tensor | None, kv: KVCache, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.glue.block(h, delta, self.input_layernorm, lambda x: self.self_attn.step(x, kv, pos),
                               self.post_attention_layernorm, self.mlp)


class LlamaModel(nn.Module):
    def __init__(self, cfg: TransformerConfig, impl: str, dtype: torch.dtype, glue: Glue):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, dtype=dtype)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, impl, dtype, glue) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, dtype)


class LlamaLM(CausalLM):
    """`LlamaForCausalLM` names: model.{embed_tokens, layers.i.{input_layernorm, self_attn.{q,k,v,o}_proj,
    post_attention_layernorm, mlp.{gate,up,down}_proj}, norm}, lm_head (tied when configured)."""

    def __init__(self, config: TransformerConfig, impl: str, dtype: torch.dtype):
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"impl {impl!r} has no attention path; valid for transformers: "
                             f"{', '.join(ATTENTION_IMPLS)}")
        super().__init__(config, impl)
        self.model = LlamaModel(config, impl, dtype, self.glue)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, dtype=dtype)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embed(self, tokens: Tensor) -> Tensor:
        return self.model.embed_tokens(tokens)

    def head(self, h: Tensor, delta: Tensor | None) -> Tensor:
        return self.lm_head(self.glue.norm(h, delta, self.model.norm)[1])

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator) -> None:
        """HF Llama init: every Linear and the embedding N(0, initializer_range); norms 1."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight, std, gen)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)


def build(cfg: TransformerConfig, impl: str, dtype: torch.dtype) -> LlamaLM:
    return LlamaLM(cfg, impl, dtype)
