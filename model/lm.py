"""The inference interface every family shares (docs/design.md `model`), and the state-spaces
`MambaLMHeadModel` stack that Mamba-3, Mamba-2 and the hybrid build on.

A model is a list of blocks between an embedding and a head. Each block owns one layer cache and has
`allocate(batch, max_context, device)`, `forward(h, cache, start)` (T tokens from position `start`, a
host int) and `step(h, cache, pos)` (one token at position `pos`, a device tensor), both updating
the cache in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.config import Config
from model.layers import (GatedMLP, Glue, Linear, PendingProduct, RMSNorm, compute_dtype, glue_ops, normal_,
                          uniform_fan_in_)


@dataclass
class Cache:
    """Static per-sequence decode state: one entry per layer (a NamedTuple of tensors) and the number
    of tokens held, as a device int64 scalar so decoding needs no host synchronisation."""

    layers: list
    pos: Tensor
    batch: int
    max_context: int

    def tensors(self) -> list[Tensor]:
        return [t for layer in self.layers for t in layer]

    @property
    def nbytes(self) -> int:
        """Bytes of the layer states (the position counter excluded); == model.cost.cache_bytes."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def reset(self) -> None:
        """Back to a fresh, empty sequence without reallocating (CUDA-graph friendly)."""
        for t in self.tensors():
            t.zero_()
        self.pos.zero_()


class CausalLM(nn.Module):
    """Base of every family: the shared `allocate_cache`, `prefill`, `decode_step`, `forward`.

    Blocks pass the residual stream on as (h, delta): h the stream before the block's last branch
    was added, delta that branch's output (None at the embedding). The next pre-norm adds and
    normalises in one go (`Glue.add_rms_norm`), which the Triton implementation does in one launch.
    Where the glue defers a branch's last product (`Glue.residual`), delta is that product still to
    run (`model.layers.PendingProduct`), which the next pre-norm runs with h added in its epilogue.
    """

    config: Config
    impl: str

    def __init__(self, config: Config, impl: str):
        super().__init__()
        self.config = config
        self.impl = impl
        self.glue = glue_ops(impl)

    # hooks: the family's embedding, blocks, final norm + head
    def embed(self, tokens: Tensor) -> Tensor:
        raise NotImplementedError

    def head(self, h: Tensor, delta: Tensor | PendingProduct | None) -> Tensor:
        """Logits of the residual stream h + delta (final norm, then the head)."""
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def init_weights(self, gen: torch.Generator) -> None:
        raise NotImplementedError

    def use_glue(self, glue: Glue) -> None:
        """Switch every block's add+norm, SiLU·product and matrix product to `glue` (A/B runs: fused kernels vs
        twins); the Linears that end a branch to `glue.residual` where it has one."""
        for m in self.modules():
            if hasattr(m, "glue"):
                m.glue = glue
            if hasattr(m, "act"):
                m.act = glue.silu_mul
            if isinstance(m, Linear):
                m.product = glue.residual if m.ends_branch and glue.residual is not None else glue.linear

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def allocate_cache(self, *, batch: int, max_context: int) -> Cache:
        layers = [blk.allocate(batch, max_context, self.device) for blk in self.blocks()]
        return Cache(layers, torch.zeros((), dtype=torch.int64, device=self.device), batch, max_context)

    def _hidden(self, tokens: Tensor, cache: Cache, start: int | None = None) -> tuple[Tensor, Tensor | None]:
        if tokens.shape[0] != cache.batch:
            raise ValueError(f"tokens have batch {tokens.shape[0]}, the cache holds {cache.batch}")
        given = start is not None
        if not given:
            start = int(cache.pos)
        elif start < 0:
            raise ValueError(f"start must be ≥ 0, got {start}")
        elif cache.pos.device.type == "cpu" and start != int(cache.pos):  # free to check where no sync is needed
            raise ValueError(f"start {start} given, the cache holds {int(cache.pos)} tokens")
        if start + tokens.shape[1] > cache.max_context:
            raise ValueError(f"{start} held + {tokens.shape[1]} new tokens exceed max_context {cache.max_context}")
        h, delta = self.embed(tokens), None
        for blk, layer_cache in zip(self.blocks(), cache.layers):
            h, delta = blk(h, delta, layer_cache, start)
        if given:  # the position the KV writes above assumed, whatever the cache held
            cache.pos.fill_(start + tokens.shape[1])
        else:
            cache.pos.add_(tokens.shape[1])
        return h, delta

    @torch.no_grad()
    def prefill(self, tokens: Tensor, cache: Cache, start: int | None = None) -> Tensor:
        """tokens (b, T) int64, appended to what the cache holds → last-token logits (b, V).

        `start`: how many tokens the cache holds, when the caller knows it (a rewound cache: 0). Given, it
        is used instead of reading `cache.pos` from the device, which a CUDA-graph capture forbids: it is
        checked against `cache.pos` only where that costs no synchronisation (a CPU cache), and the cache
        ends at `start + T` either way. It does not rewind an SSM state: the scan continues from the state
        the cache holds, so a rewound sequence needs `cache.reset()` (or its state zeroed) as well."""
        h, delta = self._hidden(tokens, cache, start)
        return self.head(h[:, -1], None if delta is None else delta[:, -1])

    @torch.no_grad()
    def decode_step(self, token: Tensor, cache: Cache) -> Tensor:
        """token (b,) int64 → logits (b, V); the cache advances one token in place."""
        h, delta = self.embed(token), None
        for blk, layer_cache in zip(self.blocks(), cache.layers):
            h, delta = blk.step(h, delta, layer_cache, cache.pos)
        cache.pos.add_(1)
        return self.head(h, delta)

    @torch.no_grad()
    def forward(self, tokens: Tensor) -> Tensor:
        """Full-sequence logits (b, T, V) from a fresh state (a cache sized to the sequence)."""
        cache = self.allocate_cache(batch=tokens.shape[0], max_context=tokens.shape[1])
        return self.head(*self._hidden(tokens, cache, 0))


class MixerBlock(nn.Module):
    """state-spaces `Block` with an MLP: h += mixer(norm(h)); h += mlp(norm2(h)); h is the fp32
    residual stream (residual_in_fp32), the branches run in the model dtype. Each call takes and
    returns (h, delta), the pending branch output (see `CausalLM`)."""

    def __init__(self, mixer: nn.Module, d_model: int, d_intermediate: int, eps: float, dtype: torch.dtype,
                 glue: Glue):
        super().__init__()
        self.glue = glue
        self.norm = RMSNorm(d_model, eps, dtype)
        self.mixer = mixer
        self.norm2 = RMSNorm(d_model, eps, dtype)
        self.mlp = GatedMLP(d_model, d_intermediate, dtype, glue.silu_mul)
        mixer.out_proj.ends_branch = self.mlp.fc2.ends_branch = True  # their outputs join the stream

    def allocate(self, batch: int, max_context: int, device) -> tuple:
        return self.mixer.allocate(batch, max_context, device)

    def forward(self, h: Tensor, delta: Tensor | None, cache, start: int) -> tuple[Tensor, Tensor]:
        return self.glue.block(h, delta, self.norm, lambda x: self.mixer(x, cache, start), self.norm2, self.mlp)

    def step(self, h: Tensor, delta: Tensor | None, cache, pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.glue.block(h, delta, self.norm, lambda x: self.mixer.step(x, cache, pos), self.norm2,
                               self.mlp)


class Backbone(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: list[MixerBlock], eps: float, dtype: torch.dtype):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d_model, dtype=dtype)
        self.layers = nn.ModuleList(layers)
        self.norm_f = RMSNorm(d_model, eps, dtype)


class MixerLM(CausalLM):
    """`MambaLMHeadModel` layout (spec §4.1, §9): backbone.{embedding, layers.i.{norm, mixer, norm2,
    mlp}, norm_f} and lm_head, tied to the embedding when the config says so."""

    def __init__(self, config: Config, impl: str, mixers: list[nn.Module], dtype: torch.dtype):
        super().__init__(config, impl)
        cfg = config
        blocks = [MixerBlock(m, cfg.d_model, cfg.d_intermediate, cfg.norm_eps, dtype, self.glue) for m in mixers]
        self.backbone = Backbone(cfg.padded_vocab, cfg.d_model, blocks, cfg.norm_eps, dtype)
        self.lm_head = Linear(cfg.d_model, cfg.padded_vocab, bias=False, dtype=dtype)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def blocks(self) -> nn.ModuleList:
        return self.backbone.layers

    def embed(self, tokens: Tensor) -> Tensor:
        return self.backbone.embedding(tokens).to(compute_dtype(self.lm_head.weight.dtype))

    def head(self, h: Tensor, delta: Tensor | None) -> Tensor:
        return self.lm_head(self.glue.norm(h, delta, self.backbone.norm_f)[1])

    @torch.no_grad()
    def init_weights(self, gen: torch.Generator) -> None:
        """spec §4.2: embedding N(0, 0.02); norms 1; Linear layers U(±1/√fan_in) with out_proj and fc2
        further divided by √n_layer; mixer-internal parameters by the mixer (spec §1.1)."""
        depth_scale = self.config.n_layer ** -0.5
        normal_(self.backbone.embedding.weight, 0.02, gen)
        self.backbone.norm_f.weight.fill_(1.0)
        if not self.config.tie_embeddings:
            uniform_fan_in_(self.lm_head.weight, gen)
        for blk in self.backbone.layers:
            blk.norm.weight.fill_(1.0)
            blk.norm2.weight.fill_(1.0)
            uniform_fan_in_(blk.mlp.fc1.weight, gen)
            uniform_fan_in_(blk.mlp.fc2.weight, gen, depth_scale)
            blk.mixer.init_weights(gen, depth_scale)
