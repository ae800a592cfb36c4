"""Local checkpoint folders (config.json + *.safetensors, or pytorch_model*.bin) in the two public
layouts of spec §9: state-spaces `MambaLMHeadModel` (Mamba-2, Mamba-3, hybrids) and Hugging Face
`LlamaForCausalLM` (the Transformer). A folder that does not match its config raises
`CheckpointError` with a one-line message naming the problem.

What is read from config.json and what is refused:
- state-spaces: d_model, d_intermediate (> 0: the spec's LMs have an MLP in every layer), n_layer,
  vocab_size, pad_vocab_size_multiple, tie_embeddings, ssm_cfg (layer "Mamba3" or "Mamba2"),
  attn_layer_idx / attn_cfg (hybrids; Mamba-3 only). Refused: LayerNorm stacks, Mamba-3 out-norm,
  Mamba-2 variants other than the default (norm after gate, per-head D, no in/out bias), attention
  with a conv, a fused MLP, interleaved or partial rotary.
  The repo's GatedMLP rounds d_intermediate up to a multiple of 128; the tensors' width is taken
  when it is either that or the exact value (our presets save the paper's exact widths).
- Hugging Face Llama: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
  num_key_value_heads, head_dim, vocab_size, rms_norm_eps, tie_word_embeddings,
  max_position_embeddings, and RoPE θ with "default" or "llama3" scaling (`rope_parameters`, or the
  older `rope_theta` + `rope_scaling`). Refused: attention or MLP biases, activations other than SiLU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.config import Config, HybridConfig, Mamba2Config, Mamba3Config, TransformerConfig
from model.lm import CausalLM

GATED_MLP_MULTIPLE = 128
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # non-persistent buffers some old files carry


class CheckpointError(ValueError):
    pass


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise CheckpointError(f"{where}: missing {key!r}")
    return d[key]


def _refuse(where: str, d: dict, key: str, default, supported) -> None:
    value = d.get(key, default)
    if value != supported:
        raise CheckpointError(f"{where}: {key}={value!r} is not supported (only {supported!r})")


# ---- config.json ↔ Config --------------------------------------------------------------------------

def config_to_json(cfg: Config) -> dict:
    if isinstance(cfg, TransformerConfig):
        scaling = None
        if cfg.rope_scaling_factor is not None:
            scaling = {"rope_type": "llama3", "factor": cfg.rope_scaling_factor,
                       "low_freq_factor": cfg.rope_low_freq_factor, "high_freq_factor": cfg.rope_high_freq_factor,
                       "original_max_position_embeddings": cfg.rope_original_max_position}
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg.d_model,
                "intermediate_size": cfg.d_intermediate, "num_hidden_layers": cfg.n_layer,
                "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
                "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size, "rms_norm_eps": cfg.norm_eps,
                "rope_theta": cfg.rope_theta, "rope_scaling": scaling, "hidden_act": "silu",
                "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": cfg.tie_embeddings,
                "max_position_embeddings": cfg.max_context, "initializer_range": cfg.initializer_range}
    if isinstance(cfg, Mamba2Config):
        ssm = {"layer": "Mamba2", "d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
               "headdim": cfg.headdim, "ngroups": cfg.ngroups, "chunk_size": cfg.chunk_size,
               "A_init_range": [cfg.A_init_min, cfg.A_init_max], "dt_min": cfg.dt_min, "dt_max": cfg.dt_max,
               "dt_init_floor": cfg.dt_init_floor}
    else:
        ssm = {"layer": "Mamba3", "d_state": cfg.d_state, "expand": cfg.expand, "headdim": cfg.headdim,
               "ngroups": cfg.ngroups, "rope_fraction": cfg.rope_fraction, "is_mimo": cfg.is_mimo,
               "mimo_rank": cfg.mimo_rank, "chunk_size": cfg.chunk_size, "dt_min": cfg.dt_min,
               "dt_max": cfg.dt_max, "dt_init_floor": cfg.dt_init_floor, "A_floor": cfg.A_floor,
               "is_outproj_norm": False}
    attn_idx, attn_cfg = [], {}
    if isinstance(cfg, HybridConfig):
        attn_idx = list(cfg.attn_layer_idx)
        attn_cfg = {"num_heads": cfg.attn_n_heads, "num_heads_kv": cfg.attn_n_kv_heads,
                    "head_dim": cfg.attn_head_dim, "rotary_emb_dim": cfg.attn_head_dim,
                    "rotary_emb_base": cfg.attn_rotary_base, "causal": True,
                    "qkv_proj_bias": cfg.attn_qkv_bias, "out_proj_bias": cfg.attn_out_bias}
    return {"d_model": cfg.d_model, "d_intermediate": cfg.d_intermediate, "n_layer": cfg.n_layer,
            "vocab_size": cfg.vocab_size, "ssm_cfg": ssm, "attn_layer_idx": attn_idx, "attn_cfg": attn_cfg,
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": cfg.pad_vocab_size_multiple, "tie_embeddings": cfg.tie_embeddings}


def _llama_config(d: dict, name: str, where: str) -> TransformerConfig:
    _refuse(where, d, "attention_bias", False, False)
    _refuse(where, d, "mlp_bias", False, False)
    _refuse(where, d, "hidden_act", "silu", "silu")
    D, n_heads = _require(d, "hidden_size", where), _require(d, "num_attention_heads", where)
    rope = d.get("rope_parameters") or {**(d.get("rope_scaling") or {}), "rope_theta": d.get("rope_theta", 10_000.0)}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise CheckpointError(f"{where}: rope_type {rope_type!r} is not supported (only 'default', 'llama3')")
    scaling = dict(rope_scaling_factor=None)
    if rope_type == "llama3":
        scaling = dict(rope_scaling_factor=float(rope["factor"]), rope_low_freq_factor=float(rope["low_freq_factor"]),
                       rope_high_freq_factor=float(rope["high_freq_factor"]),
                       rope_original_max_position=int(rope["original_max_position_embeddings"]))
    return TransformerConfig(
        name=name, d_model=D, n_layer=_require(d, "num_hidden_layers", where), n_heads=n_heads,
        n_kv_heads=d.get("num_key_value_heads") or n_heads, head_dim=d.get("head_dim") or D // n_heads,
        d_intermediate=_require(d, "intermediate_size", where), vocab_size=_require(d, "vocab_size", where),
        rope_theta=float(rope.get("rope_theta", 10_000.0)), norm_eps=d.get("rms_norm_eps", 1e-6),
        tie_embeddings=d.get("tie_word_embeddings", False), initializer_range=d.get("initializer_range", 0.02),
        max_context=d.get("max_position_embeddings", 2048), **scaling)


def _known_fields(cls, ssm_cfg: dict) -> dict:
    """The ssm_cfg entries that are fields of `cls` (the repo's modules absorb the rest as kwargs)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in ssm_cfg.items() if k in names}


def _state_spaces_config(d: dict, name: str, where: str) -> Config:
    _refuse(where, d, "rms_norm", True, True)
    if not d.get("d_intermediate"):
        raise CheckpointError(f"{where}: d_intermediate 0 (no MLP between mixers) is not supported")
    ssm = dict(_require(d, "ssm_cfg", where))
    layer = ssm.pop("layer", "Mamba1")
    common = dict(name=name, d_model=_require(d, "d_model", where), n_layer=_require(d, "n_layer", where),
                  d_intermediate=d["d_intermediate"], vocab_size=_require(d, "vocab_size", where),
                  pad_vocab_size_multiple=d.get("pad_vocab_size_multiple", 8),
                  tie_embeddings=d.get("tie_embeddings", True))
    attn_idx = tuple(d.get("attn_layer_idx") or ())
    if layer == "Mamba2":
        if attn_idx:
            raise CheckpointError(f"{where}: Mamba-2 hybrids are not supported (attn_layer_idx with Mamba2)")
        for key, default, supported in (("rmsnorm", True, True), ("norm_before_gate", False, False),
                                        ("D_has_hdim", False, False), ("d_ssm", None, None),
                                        ("bias", False, False), ("conv_bias", True, True)):
            _refuse(where, ssm, key, default, supported)
        lo, hi = ssm.pop("A_init_range", (1.0, 16.0))
        return Mamba2Config(**common, **_known_fields(Mamba2Config, ssm), A_init_min=lo, A_init_max=hi)
    if layer != "Mamba3":
        raise CheckpointError(f"{where}: ssm_cfg layer {layer!r} is not supported (only 'Mamba3', 'Mamba2')")
    _refuse(where, ssm, "is_outproj_norm", False, False)
    mamba3 = _known_fields(Mamba3Config, ssm)
    mamba3["mimo_rank"] = ssm.get("mimo_rank", 4) if ssm.get("is_mimo", False) else 1
    mamba3.setdefault("chunk_size", 64 // mamba3["mimo_rank"])  # the repo's recommendation for bf16
    if not attn_idx:
        return Mamba3Config(**common, **mamba3)
    attn = d.get("attn_cfg") or {}
    for key, default, supported in (("causal", False, True), ("d_conv", 0, 0), ("mlp_dim", 0, 0),
                                    ("rotary_emb_interleaved", False, False), ("softmax_scale", None, None)):
        _refuse(where, attn, key, default, supported)
    n_heads = _require(attn, "num_heads", f"{where} attn_cfg")
    head_dim = attn.get("head_dim") or common["d_model"] // n_heads
    if attn.get("rotary_emb_dim", 0) != head_dim:
        raise CheckpointError(f"{where}: attn_cfg rotary_emb_dim={attn.get('rotary_emb_dim', 0)} is not "
                              f"supported (only full-width rotary, {head_dim})")
    return HybridConfig(**common, **mamba3, attn_layer_idx=attn_idx, attn_n_heads=n_heads,
                        attn_n_kv_heads=attn.get("num_heads_kv") or n_heads, attn_head_dim=head_dim,
                        attn_rotary_base=float(attn.get("rotary_emb_base", 10_000.0)),
                        attn_qkv_bias=attn.get("qkv_proj_bias", True), attn_out_bias=attn.get("out_proj_bias", True))


def config_from_json(d: dict, name: str, where: str = "config.json") -> Config:
    """Our config for a state-spaces or Hugging Face Llama config.json dict."""
    try:
        if d.get("model_type") == "llama" or "LlamaForCausalLM" in d.get("architectures", []):
            return _llama_config(d, name, where)
        if "ssm_cfg" in d:
            return _state_spaces_config(d, name, where)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as e:  # wrong types or values the dataclasses reject
        raise CheckpointError(f"{where}: {e}") from e
    raise CheckpointError(f"{where}: neither a state-spaces MambaConfig (ssm_cfg) nor a Llama config (model_type)")


# ---- weights ---------------------------------------------------------------------------------------

def _read_tensors(folder: Path, device) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(f, device=str(device)).items()}
    files = sorted(folder.glob("pytorch_model*.bin"))
    if files:
        return {k: v for f in files for k, v in torch.load(f, map_location=device, weights_only=True).items()}
    raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")


def _mlp_width(cfg: Config, tensors: dict) -> Config:
    """The repo's GatedMLP width (d_intermediate rounded up to 128) when the tensors hold it."""
    if isinstance(cfg, TransformerConfig):
        return cfg
    fc2 = tensors.get("backbone.layers.0.mlp.fc2.weight")
    rounded = -(-cfg.d_intermediate // GATED_MLP_MULTIPLE) * GATED_MLP_MULTIPLE
    if fc2 is not None and fc2.shape[-1] == rounded != cfg.d_intermediate:
        return dataclasses.replace(cfg, d_intermediate=rounded)
    return cfg


def read_checkpoint(folder: Path, *, device="cpu") -> tuple[Config, dict[str, torch.Tensor]]:
    """The folder's config and its tensors (not yet checked against each other: `load_weights`)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    cfg = config_from_json(d, name=folder.resolve().name, where=str(path))
    tensors = {k: v for k, v in _read_tensors(folder, device).items() if not k.endswith(_IGNORED_SUFFIXES)}
    return _mlp_width(cfg, tensors), tensors


def _head_key(model: CausalLM) -> str | None:
    return "lm_head.weight" if model.config.tie_embeddings else None


@torch.no_grad()
def load_weights(model: CausalLM, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy `tensors` into `model` (cast to each parameter's dtype); every expected name present
    (a tied head may be absent), no extra names, every shape equal."""
    params = model.state_dict()
    optional = {_head_key(model)}
    missing = sorted(k for k in params if k not in tensors and k not in optional)
    extra = sorted(k for k in tensors if k not in params)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder}: weights lack {missing[0]}{more} that config.json implies")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{folder}: weights hold {extra[0]}{more} that config.json does not describe")
    for name, p in params.items():
        if name in tensors and tuple(tensors[name].shape) != tuple(p.shape):
            raise CheckpointError(f"{folder}: {name} has shape {tuple(tensors[name].shape)}, "
                                  f"config.json implies {tuple(p.shape)}")
    for name, p in params.items():
        if name in tensors and name not in optional:  # a tied head is the embedding, copied once
            p.copy_(tensors[name])


def _own(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it when it is a view of a larger storage."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def save_checkpoint(model: CausalLM, folder: Path) -> None:
    """config.json + model.safetensors in the model's public layout (a tied head stored once)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_json(model.config), indent=2) + "\n")
    head = _head_key(model)
    # views of a larger buffer (stacked weights, model.layers.stacked_weight) are copied: some safetensors
    # versions refuse to write tensors that share memory
    tensors = {k: _own(v.detach().cpu()) for k, v in model.state_dict().items() if k != head}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
