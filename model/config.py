"""Model configurations: one frozen dataclass per family and the named preset table.

Torch-free (the planner and the app read it). Sizes follow docs/mamba3-spec.md (§0, §4.3, §4.4, §6.1).
Letters: D d_model, L layers, F SwiGLU width, V vocabulary, H SSM heads, P headdim, N d_state,
G groups, R MIMO rank, S rotary angles.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Union

LLAMA3_VOCAB = 128_256
# SSMs have no positional limit; this caps grids and cache allocations at 1M tokens.
SSM_MAX_CONTEXT = 1 << 20

STATE_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class _SSMShape:
    """Sizes shared by the Mamba-2 and Mamba-3 configs (both carry d_model, expand, headdim, ngroups,
    vocab_size and pad_vocab_size_multiple)."""

    def _check_heads(self) -> None:
        if self.d_inner % self.headdim:
            raise ValueError(f"{self.name}: d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"{self.name}: {self.nheads} heads are not a multiple of {self.ngroups} groups")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def padded_vocab(self) -> int:
        return _round_up(self.vocab_size, self.pad_vocab_size_multiple)


@dataclass(frozen=True)
class Mamba3Config(_SSMShape):
    """Mamba-3 LM (spec §1, §2, §4): L layers of (Mamba-3 mixer, SwiGLU), pre-RMSNorm, tied head.

    `mimo_rank` 1 is SISO (interleaved rotary pairs), > 1 is MIMO (half-split pairs).
    `state_dtype` is the dtype of the cached SSM state: "float32" as the repo, "bfloat16" as a what-if.
    """

    name: str
    d_model: int
    n_layer: int
    d_intermediate: int
    mimo_rank: int = 1
    vocab_size: int = LLAMA3_VOCAB
    d_state: int = 128
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    rope_fraction: float = 0.5
    chunk_size: int = 64
    state_dtype: str = "float32"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    A_floor: float = 1e-4
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8
    max_context: int = SSM_MAX_CONTEXT

    def __post_init__(self):
        self._check_heads()
        if self.state_dtype not in STATE_DTYPE_BYTES:
            raise ValueError(f"{self.name}: state_dtype must be one of {sorted(STATE_DTYPE_BYTES)}")
        if self.n_angles < 1:
            raise ValueError(f"{self.name}: d_state {self.d_state} × rope_fraction leaves no rotary angle")

    @property
    def family(self) -> str:
        return "mamba3-mimo" if self.is_mimo else "mamba3-siso"

    @property
    def is_mimo(self) -> bool:
        return self.mimo_rank > 1

    @property
    def pairing(self) -> str:
        return "half" if self.is_mimo else "interleaved"

    @property
    def n_angles(self) -> int:
        """S = floor(N·f) rounded down to even, halved (spec §0, §7.7)."""
        rotated = int(self.d_state * self.rope_fraction)
        return (rotated - rotated % 2) // 2

    @property
    def d_proj(self) -> int:
        """in_proj width: [z, x, B, C, dd_dt, dd_A, trap, angles] (spec §1.2)."""
        bc = self.d_state * self.ngroups * self.mimo_rank
        return 2 * self.d_inner + 2 * bc + 3 * self.nheads + self.n_angles

    @property
    def mamba_layer_idx(self) -> tuple[int, ...]:
        return tuple(range(self.n_layer))

    @property
    def attn_layer_idx(self) -> tuple[int, ...]:
        return ()


@dataclass(frozen=True)
class HybridConfig(Mamba3Config):
    """Mamba-3 LM whose layers at `attn_layer_idx` hold a GQA attention mixer instead (the
    state-spaces `attn_layer_idx` / `attn_cfg` convention, spec §9). Every layer keeps its SwiGLU.

    The 1.5B preset puts one attention layer in every eight, in the middle of each group of eight
    (indices 4, 12, 20): the 1:7 attention:Mamba ratio and placement of Jamba (Lieber et al.,
    arXiv:2403.19887, §3 and §6.1: 1:3 and 1:7 scored alike at 1.3B, 1:7 is cheaper). It sits at the
    sparse end of "one attention layer in six to eight" that hybrid SSM work uses (the Mamba-2 paper,
    arXiv:2405.21060 §9.2.3, reports about 10% attention layers as the best mix at 350M–1.3B). Attention:
    32 query heads, 8 KV heads, head_dim 64 as Llama-3.2-1B, full-width RoPE with base 10,000 (the repo's
    MHA default).
    """

    attn_layer_idx: tuple[int, ...] = ()
    attn_n_heads: int = 32
    attn_n_kv_heads: int = 8
    attn_head_dim: int = 64
    attn_rotary_base: float = 10_000.0
    attn_qkv_bias: bool = False
    attn_out_bias: bool = False
    max_context: int = 131_072

    def __post_init__(self):
        super().__post_init__()
        if not self.attn_layer_idx or any(not 0 <= i < self.n_layer for i in self.attn_layer_idx):
            raise ValueError(f"{self.name}: attn_layer_idx {self.attn_layer_idx} must be non-empty "
                             f"indices in [0, {self.n_layer})")
        if tuple(sorted(set(self.attn_layer_idx))) != tuple(self.attn_layer_idx):
            raise ValueError(f"{self.name}: attn_layer_idx must be sorted and unique")
        if self.attn_n_heads % self.attn_n_kv_heads:
            raise ValueError(f"{self.name}: {self.attn_n_heads} heads not a multiple of {self.attn_n_kv_heads}")

    @property
    def family(self) -> str:
        return "hybrid"

    @property
    def mamba_layer_idx(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layer) if i not in self.attn_layer_idx)


@dataclass(frozen=True)
class Mamba2Config(_SSMShape):
    """Mamba-2 LM (spec §6.1) in the same Llama-style stack: mixer with a depthwise causal conv,
    data-independent A, gated RMSNorm after the gate; SwiGLU after every mixer; tied head.
    Its decode state (conv and SSM) is held in the model dtype, as the repo does."""

    name: str
    d_model: int
    n_layer: int
    d_intermediate: int
    vocab_size: int = LLAMA3_VOCAB
    d_state: int = 128
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = 256
    A_init_min: float = 1.0
    A_init_max: float = 16.0
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    pad_vocab_size_multiple: int = 8
    max_context: int = SSM_MAX_CONTEXT

    def __post_init__(self):
        self._check_heads()

    @property
    def family(self) -> str:
        return "mamba2"

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_proj(self) -> int:
        """in_proj width: [z, xBC, dt]."""
        return self.d_inner + self.conv_dim + self.nheads


@dataclass(frozen=True)
class TransformerConfig:
    """Llama-style decoder (HF `LlamaForCausalLM` layout): GQA attention with RoPE (llama3 frequency
    scaling when `rope_scaling_factor` is set), SwiGLU, pre-RMSNorm."""

    name: str
    d_model: int
    n_layer: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_intermediate: int
    vocab_size: int = LLAMA3_VOCAB
    rope_theta: float = 500_000.0
    rope_scaling_factor: float | None = 32.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    initializer_range: float = 0.02
    max_context: int = 131_072

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"{self.name}: {self.n_heads} heads not a multiple of {self.n_kv_heads} KV heads")
        if self.head_dim % 2:
            raise ValueError(f"{self.name}: head_dim must be even for RoPE")

    @property
    def family(self) -> str:
        return "transformer"

    @property
    def padded_vocab(self) -> int:
        return self.vocab_size


Config = Union[Mamba3Config, HybridConfig, Mamba2Config, TransformerConfig]
FAMILIES = ("mamba3-siso", "mamba3-mimo", "mamba2", "transformer", "hybrid")
_CLASS_OF = {"mamba3-siso": Mamba3Config, "mamba3-mimo": Mamba3Config, "mamba2": Mamba2Config,
             "transformer": TransformerConfig, "hybrid": HybridConfig}


def to_dict(cfg: Config) -> dict:
    """JSON-ready dict with the `family` key that `from_dict` dispatches on."""
    d = dataclasses.asdict(cfg)
    if "attn_layer_idx" in d:
        d["attn_layer_idx"] = list(d["attn_layer_idx"])
    return {"family": cfg.family, **d}


def from_dict(d: dict) -> Config:
    family = d.get("family")
    if family not in _CLASS_OF:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    cls = _CLASS_OF[family]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - {"family"})
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    kwargs = {k: v for k, v in d.items() if k != "family"}
    if "attn_layer_idx" in kwargs:
        kwargs["attn_layer_idx"] = tuple(kwargs["attn_layer_idx"])
    cfg = cls(**kwargs)
    if cfg.family != family:
        raise ValueError(f"{cfg.name}: fields describe family {cfg.family}, dict says {family}")
    return cfg


# SwiGLU widths of the paper's App. C table (spec §4.3); L and D inferred there.
_PAPER_SIZES = {  # size: (D, L, F SISO, F MIMO R=4)
    "180m": (768, 12, 1500, 1264),
    "440m": (1024, 24, 2048, 1792),
    "880m": (1536, 24, 3072, 2800),
    "1.5b": (2048, 24, 4096, 3824),
}
# Transformers sized to the Mamba-3 SISO models: same D, L, vocabulary and tied head; head_dim 64,
# n_heads = D/64 and GQA with n_heads/4 KV heads (Llama-3.2-1B's ratio); F is the multiple of 8 that
# brings the parameter count closest to the SISO model's (within 0.05%; tests/model/test_model_cost.py).
_TRANSFORMER_F = {"180m": 2520, "440m": 3376, "880m": 5008, "1.5b": 6648}


def _presets() -> dict[str, Config]:
    sizes = _PAPER_SIZES.items()
    table: list[Config] = [Mamba3Config(f"mamba3-siso-{s}", D, L, f) for s, (D, L, f, _) in sizes]
    table += [Mamba3Config(f"mamba3-mimo-{s}", D, L, f, mimo_rank=4, chunk_size=16) for s, (D, L, _, f) in sizes]
    table += [TransformerConfig(f"transformer-{s}", D, L, n_heads=D // 64, n_kv_heads=D // 256, head_dim=64,
                                d_intermediate=_TRANSFORMER_F[s]) for s, (D, L, _, _) in sizes]
    table += [
        Mamba2Config("mamba2-1.5b", 2048, 24, 4096),
        TransformerConfig("llama-3.2-1b", 2048, 16, n_heads=32, n_kv_heads=8, head_dim=64, d_intermediate=8192),
        HybridConfig("hybrid-1.5b", 2048, 24, 4096, attn_layer_idx=(4, 12, 20)),
    ]
    # CPU tests and the fresh-machine demo: prefill + decode in milliseconds. Chunk sizes below the
    # test lengths so the chunked scans cross chunk boundaries; transformer-tiny keeps Llama-3's RoPE
    # scaling, whose three frequency bands head_dim 8 still spans.
    tiny = dict(vocab_size=256, d_state=16, headdim=16)
    table += [
        Mamba3Config("mamba3-siso-tiny", 32, 2, 48, chunk_size=8, max_context=4096, **tiny),
        Mamba3Config("mamba3-mimo-tiny", 32, 2, 40, mimo_rank=4, chunk_size=4, max_context=4096, **tiny),
        Mamba2Config("mamba2-tiny", 32, 2, 48, d_conv=4, chunk_size=8, max_context=4096, **tiny),
        TransformerConfig("transformer-tiny", 32, 2, n_heads=4, n_kv_heads=2, head_dim=8, d_intermediate=64,
                          vocab_size=256, max_context=16384),
        HybridConfig("hybrid-tiny", 32, 4, 48, attn_layer_idx=(2,), attn_n_heads=4, attn_n_kv_heads=2,
                     attn_head_dim=8, chunk_size=8, max_context=4096, **tiny),
    ]
    return {c.name: c for c in table}


PRESETS: dict[str, Config] = _presets()


class UnknownPresetError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def get_config(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}") from None
