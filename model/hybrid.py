"""Hybrid: the Mamba-3 LM with an attention mixer at `attn_layer_idx` (state-spaces `MHA` layout:
one fused in_proj D → [q (h·d), k (h_kv·d), v (h_kv·d)], out_proj; full-width RoPE, "rotate half"
pairs, base `attn_rotary_base`; causal GQA). Every layer keeps its SwiGLU. The cache holds a
`ScanState` per Mamba-3 layer and a static KV buffer per attention layer (model/transformer.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import HybridConfig
from model.layers import Linear, apply_rope, rope_cos_sin, rope_inv_freq_cached, uniform_fan_in_
from model.lm import MixerLM
from model.mamba3 import Mamba3Mixer
from model.transformer import (KVCache, allocate_kv, attend_decode, attend_decode_triton, attend_prefill,
                               attend_prefill_triton)


class MHA(nn.Module):
    def __init__(self, cfg: HybridConfig, impl: str, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        self.impl = impl
        nh, nkv, hd = cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim
        self.in_proj = Linear(cfg.d_model, (nh + 2 * nkv) * hd, bias=cfg.attn_qkv_bias, dtype=dtype)
        self.out_proj = Linear(nh * hd, cfg.d_model, bias=cfg.attn_out_bias, dtype=dtype)

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator, depth_scale: float) -> None:
        uniform_fan_in_(self.in_proj.weight, gen)
        uniform_fan_in_(self.out_proj.weight, gen, depth_scale)
        for bias in (self.in_proj.bias, self.out_proj.bias):
            if bias is not None:
                bias.zero_()

    def allocate(self, batch: int, max_context: int, device) -> KVCache:
        cfg = self.cfg
        return allocate_kv(batch, cfg.attn_n_kv_heads, max_context, cfg.attn_head_dim, device,
                           self.in_proj.weight.dtype)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., D) → q (..., h·d), k, v (..., h_kv·d), not rotated: views of one fused projection."""
        cfg = self.cfg
        hd = cfg.attn_head_dim
        return self.in_proj(x).split([cfg.attn_n_heads * hd, cfg.attn_n_kv_heads * hd, cfg.attn_n_kv_heads * hd],
                                     dim=-1)

    def _inv_freq(self, device) -> Tensor:
        return rope_inv_freq_cached(self.cfg.attn_head_dim, self.cfg.attn_rotary_base, device)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (b, T, D) → rotated q (b, h, T, d), k (b, h_kv, T, d), v (b, h_kv, T, d)."""
        cfg = self.cfg
        b, T, _ = x.shape
        nh, nkv, hd = cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim
        q, k, v = self._project(x)
        q = q.view(b, T, nh, hd).transpose(1, 2)
        k = k.view(b, T, nkv, hd).transpose(1, 2)
        v = v.view(b, T, nkv, hd).transpose(1, 2)
        cos, sin = rope_cos_sin(positions, self._inv_freq(x.device), x.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: Tensor, kv: KVCache, start: int) -> Tensor:
        b, T, _ = x.shape
        if self.impl == "triton":
            return self.out_proj(attend_prefill_triton(*self._project(x), kv, start, self._inv_freq(x.device)))
        q, k, v = self._qkv(x, torch.arange(start, start + T, device=x.device))
        return self.out_proj(attend_prefill(q, k, v, kv, start, self.impl).transpose(1, 2).reshape(b, T, -1))

    def step(self, x: Tensor, kv: KVCache, pos: Tensor) -> Tensor:
        if self.impl == "triton":
            return self.out_proj(attend_decode_triton(*self._project(x), kv, pos, self._inv_freq(x.device)))
        q, k, v = self._qkv(x[:, None], pos.view(1))
        return self.out_proj(attend_decode(q, k, v, kv, pos, self.impl).flatten(1))


def build(cfg: HybridConfig, impl: str, dtype: torch.dtype) -> MixerLM:
    mixers = [MHA(cfg, impl, dtype) if i in cfg.attn_layer_idx else Mamba3Mixer(cfg, impl, dtype)
              for i in range(cfg.n_layer)]
    return MixerLM(cfg, impl, mixers, dtype)
