"""Analytic inference cost of every family (spec §5): parameters, weight bytes, state/KV bytes, and
FLOPs and bytes moved for a prefill of (batch, prompt) and one decode step at (batch, context).

Torch-free. Conventions:
- a multiply-add is 2 FLOPs; `dtype_bytes` is the size of a weight, an activation and a cached k, x or
  KV element (2 for bf16). Parameters the modules keep in fp32 (Mamba-3 dt_bias, B/C biases, D, mimo_*;
  Mamba-2 D) count at max(4, dtype_bytes).
- Mamba-3 state: the SSM state in `cfg.state_dtype` (fp32 as the repo; bf16 as a what-if), the angle
  in fp32, k and x in the model dtype (spec §5.1). Mamba-2 keeps conv and SSM state in the model dtype.
- bytes moved are the minimal traffic of one pass: every weight read once; state read and written,
  KV read for the held context and written for the new tokens; each layer's input and output
  (2·D elements per token per layer: intermediates inside a mixer or MLP assumed fused); embedding rows
  read; logits written. That is the traffic behind MBU (achieved bandwidth = bytes / time).
- the static KV cache of model/transformer.py attends over its whole allocation in decode (masked,
  for CUDA-graph capture); the cost counts the held context only, as the algorithm needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.config import STATE_DTYPE_BYTES, Config, Mamba2Config, TransformerConfig

ANGLE_BYTES = 4
NORM_FLOPS_PER_D = 10  # two RMSNorms and two residual adds per layer, per model-width element
ELEMENTWISE_FLOPS = 12  # gate, skip, activations per (rank, head-channel) element


@dataclass(frozen=True)
class Cost:
    flops: int
    bytes: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte."""
        return self.flops / self.bytes


def _mixers(cfg: Config) -> list[str]:
    """Mixer kind of every layer: 'mamba3', 'mamba2' or 'attn'."""
    if isinstance(cfg, TransformerConfig):
        return ["attn"] * cfg.n_layer
    if isinstance(cfg, Mamba2Config):
        return ["mamba2"] * cfg.n_layer
    return ["attn" if i in cfg.attn_layer_idx else "mamba3" for i in range(cfg.n_layer)]


def _attn_shape(cfg: Config) -> tuple[int, int, int, bool, bool]:
    """(query heads, KV heads, head_dim, qkv bias, out bias)."""
    if isinstance(cfg, TransformerConfig):
        return cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, False, False
    return cfg.attn_n_heads, cfg.attn_n_kv_heads, cfg.attn_head_dim, cfg.attn_qkv_bias, cfg.attn_out_bias


def _matmul_weights(cfg: Config, kind: str) -> int:
    """Weights of the mixer's projections (each used in one 2-FLOP multiply-add per token)."""
    D = cfg.d_model
    if kind == "attn":
        nh, nkv, hd, _, _ = _attn_shape(cfg)
        return D * (nh + 2 * nkv) * hd + nh * hd * D
    return D * cfg.d_proj + cfg.d_inner * D


def _mixer_params(cfg: Config, kind: str) -> tuple[int, int]:
    """(all parameters, the fp32-kept ones) of one mixer."""
    if kind == "attn":
        nh, nkv, hd, qkv_bias, out_bias = _attn_shape(cfg)
        return _matmul_weights(cfg, kind) + qkv_bias * (nh + 2 * nkv) * hd + out_bias * cfg.d_model, 0
    H, N = cfg.nheads, cfg.d_state
    if kind == "mamba2":
        # conv weight + bias, dt_bias, A_log, D, gated-norm weight
        small = cfg.conv_dim * (cfg.d_conv + 1) + 3 * H + cfg.d_inner
        return _matmul_weights(cfg, kind) + small, H
    R, P = cfg.mimo_rank, cfg.headdim
    fp32 = 2 * H + 2 * H * R * N + (3 * H * R * P if cfg.is_mimo else 0)  # dt_bias, D, B/C bias, mimo_*
    return _matmul_weights(cfg, kind) + 2 * N + fp32, fp32



def param_count(cfg: Config) -> int:
    """Parameters of the instantiated model (a tied head counted once)."""
    D, V = cfg.d_model, cfg.padded_vocab
    layers = sum(_mixer_params(cfg, k)[0] + 2 * D + 3 * D * cfg.d_intermediate for k in _mixers(cfg))
    return V * D * (1 if cfg.tie_embeddings else 2) + layers + D


def fp32_param_count(cfg: Config) -> int:
    """Parameters the modules keep in fp32 whatever the model dtype."""
    return sum(_mixer_params(cfg, k)[1] for k in _mixers(cfg))


def weight_bytes(cfg: Config, dtype_bytes: int = 2) -> int:
    fp32 = fp32_param_count(cfg)
    return dtype_bytes * (param_count(cfg) - fp32) + max(4, dtype_bytes) * fp32


def _state_fixed(cfg: Config, kind: str, b: int) -> int:
    if kind == "attn":
        return 0
    H, P, N = cfg.nheads, cfg.headdim, cfg.d_state
    if kind == "mamba2":
        return b * (H * P * N + cfg.conv_dim * cfg.d_conv)
    b_s, R, S = STATE_DTYPE_BYTES[cfg.state_dtype], cfg.mimo_rank, cfg.n_angles
    return b_s * H * P * N + b * R * H * N + b * H * P + ANGLE_BYTES * H * S


def _kv_per_token(cfg: Config, kind: str, b: int) -> int:
    if kind != "attn":
        return 0
    _, nkv, hd, _, _ = _attn_shape(cfg)
    return 2 * nkv * hd * b


def state_bytes_fixed(cfg: Config, dtype_bytes: int = 2) -> int:
    """Context-independent cache bytes per sequence (recurrent states of all SSM layers)."""
    return sum(_state_fixed(cfg, k, dtype_bytes) for k in _mixers(cfg))


def kv_bytes_per_token(cfg: Config, dtype_bytes: int = 2) -> int:
    """Cache bytes each held token adds per sequence (K and V of all attention layers)."""
    return sum(_kv_per_token(cfg, k, dtype_bytes) for k in _mixers(cfg))


def state_bytes_per_seq(cfg: Config, context: int, dtype_bytes: int = 2) -> int:
    return state_bytes_fixed(cfg, dtype_bytes) + context * kv_bytes_per_token(cfg, dtype_bytes)


def cache_bytes(cfg: Config, batch: int, max_context: int, dtype_bytes: int = 2) -> int:
    """Bytes of `allocate_cache(batch=batch, max_context=max_context)`."""
    return batch * state_bytes_per_seq(cfg, max_context, dtype_bytes)


def _ssm_token_flops(cfg: Config, kind: str, decode: bool) -> int:
    """Per-token scan FLOPs outside the intra-chunk products (spec §5.2, §5.5)."""
    H, P, N = cfg.nheads, cfg.headdim, cfg.d_state
    if kind == "mamba2":
        # decode: decay, outer-product update, readout = 5NP; prefill: state→output + state update = 4NP
        per_head = (5 if decode else 4) * N * P
        return H * per_head + 2 * cfg.d_conv * cfg.conv_dim + ELEMENTWISE_FLOPS * cfg.d_inner
    R, S = cfg.mimo_rank, cfg.n_angles
    per_head = (6 * R + 1) * N * P if decode else 4 * R * N * P
    return H * (per_head + 12 * R * S + ELEMENTWISE_FLOPS * R * P)


def _intra_chunk_flops(cfg: Config, kind: str, T: int) -> int:
    """Masked score and value products of the chunked scan over T tokens: 2·n²·R²·(N+P) per chunk."""
    Q, R = cfg.chunk_size, (cfg.mimo_rank if kind == "mamba3" else 1)
    full, rest = divmod(T, Q)
    return cfg.nheads * 2 * R * R * (cfg.d_state + cfg.headdim) * (full * Q * Q + rest * rest)


def _mlp_norm_flops(cfg: Config) -> int:
    return 6 * cfg.d_model * cfg.d_intermediate + NORM_FLOPS_PER_D * cfg.d_model


def decode_flops_per_token(cfg: Config, context: int) -> int:
    """FLOPs to decode one token of a sequence holding `context` tokens."""
    total = 2 * cfg.padded_vocab * cfg.d_model
    for kind in _mixers(cfg):
        total += 2 * _matmul_weights(cfg, kind) + _mlp_norm_flops(cfg)
        if kind == "attn":
            nh, _, hd, _, _ = _attn_shape(cfg)
            total += 4 * nh * hd * (context + 1)  # q·k and p·v over the held tokens and itself
        else:
            total += _ssm_token_flops(cfg, kind, decode=True)
    return total


def decode_cost(cfg: Config, batch: int, context: int, dtype_bytes: int = 2) -> Cost:
    """One decode step of `batch` sequences, each holding `context` tokens."""
    per_seq = (2 * state_bytes_fixed(cfg, dtype_bytes)  # SSM states read and written
               + (context + 1) * kv_bytes_per_token(cfg, dtype_bytes)  # KV read, new token written
               + _activation_bytes(cfg, 1, dtype_bytes))
    return Cost(flops=batch * decode_flops_per_token(cfg, context),
                bytes=weight_bytes(cfg, dtype_bytes) + batch * per_seq)


def _activation_bytes(cfg: Config, tokens: int, b: int) -> int:
    """Layer inputs and outputs and embedding rows for `tokens` tokens, plus one row of logits."""
    D = cfg.d_model
    return tokens * (2 * cfg.n_layer * D + D) * b + cfg.padded_vocab * b


def prefill_flops(cfg: Config, prompt: int, context: int = 0) -> int:
    """FLOPs to prefill `prompt` tokens of one sequence that already holds `context` tokens;
    logits for the last token only (as `prefill` returns)."""
    T = prompt
    total = 2 * cfg.padded_vocab * cfg.d_model
    for kind in _mixers(cfg):
        total += T * (2 * _matmul_weights(cfg, kind) + _mlp_norm_flops(cfg))
        if kind == "attn":
            nh, _, hd, _, _ = _attn_shape(cfg)
            total += 4 * nh * hd * (T * context + T * (T + 1) // 2)  # causal pairs
        else:
            total += T * _ssm_token_flops(cfg, kind, decode=False) + _intra_chunk_flops(cfg, kind, T)
    return total


def prefill_cost(cfg: Config, batch: int, prompt: int, dtype_bytes: int = 2, context: int = 0) -> Cost:
    """Prefill of `prompt` tokens for `batch` sequences that already hold `context` tokens (0: a fresh
    prompt; > 0: new tokens appended to a reused state or KV prefix)."""
    fixed, kv = state_bytes_fixed(cfg, dtype_bytes), kv_bytes_per_token(cfg, dtype_bytes)
    per_seq = (fixed * (2 if context else 1)  # final state written (and read first when continuing)
               + kv * (context + 2 * prompt)  # held KV read; new KV written, then read by attention
               + _activation_bytes(cfg, prompt, dtype_bytes))
    return Cost(flops=batch * prefill_flops(cfg, prompt, context),
                bytes=weight_bytes(cfg, dtype_bytes) + batch * per_seq)
