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

Checking a folder need not read its weights: `inspect_checkpoint` reads config.json and the names and
shapes in the weight files' headers. That part is torch-free (torch is imported only where tensors are
read or written), so the app can check a folder it is given without importing torch. A weight file that
is empty, cut short or not what its name says raises `CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import Config, HybridConfig, Mamba2Config, Mamba3Config, TransformerConfig

if TYPE_CHECKING:
    import torch

    from model.lm import CausalLM

GATED_MLP_MULTIPLE = 128
# bytes per element of the safetensors dtypes torch reads (a header's tensor sizes are checked against them)
SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                           "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
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

Shapes = dict[str, tuple[int, ...]]


def _weight_files(folder: Path) -> list[Path]:
    """The folder's weight files: its *.safetensors, else its pytorch_model*.bin."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    return files


def _safetensors_header(path: Path) -> Shapes:
    """Names and shapes from a safetensors file's header (8-byte length, then JSON), checked against the
    file's size so that a file cut short is refused here rather than failing half-way through a load."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            n = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
            raw = f.read(n) if n is not None and 0 < n <= size - 8 else None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror})") from None
    if n is None:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
    if raw is None:
        raise CheckpointError(f"{path}: not a safetensors file, or cut short (its header would be {n:,} "
                              f"bytes; the file has {size:,})")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
    shapes, data_end = {}, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            if not all(isinstance(x, int) and x >= 0 for x in (*shape, begin, end)) or end < begin:
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise CheckpointError(f"{path}: damaged safetensors header (entry {name!r} is malformed)") from None
        numel = 1
        for dim in shape:
            numel *= dim
        width = SAFETENSORS_DTYPE_BYTES.get(dtype)
        if width is not None and end - begin != numel * width:
            raise CheckpointError(f"{path}: damaged safetensors header ({name} of shape {shape} and dtype "
                                  f"{dtype} is given {end - begin:,} bytes, not {numel * width:,})")
        shapes[name] = shape
        data_end = max(data_end, end)
    if 8 + n + data_end > size:
        raise CheckpointError(f"{path}: cut short ({size:,} bytes; its header describes "
                              f"{8 + n + data_end:,}): copy the file again")
    return shapes


def _torch_load(path: Path, device) -> dict:
    """A pytorch_model*.bin state dict (tensors only: nothing else is unpickled) on `device` ("meta":
    names and shapes without reading the data)."""
    import torch

    try:
        tensors = torch.load(path, map_location=device, weights_only=True)
    except EOFError:
        raise CheckpointError(f"{path}: empty or cut short; copy the file again") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a PyTorch weights file (or it holds objects other than "
                              "tensors, which are not loaded)") from None
    except (RuntimeError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path}: cannot be read as PyTorch weights ({reason})") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of names to tensors)")
    return tensors


def _add(into: dict, more: dict, path: Path) -> None:
    """Merge one file's tensors (or shapes) into the folder's; a name in two files is refused."""
    twice = next((k for k in more if k in into), None)
    if twice is not None:
        raise CheckpointError(f"{path}: {twice} is also in another weight file of the folder")
    into.update(more)


def weight_shapes(folder: Path, *, open_pickles: bool = True) -> Shapes | None:
    """Every weight's name and shape, from the files' headers (no tensor data is read). safetensors
    headers are parsed here, without torch; pytorch_model*.bin files are unpickled onto the meta device
    (torch), or, with `open_pickles=False`, not opened at all (None is returned)."""
    shapes: Shapes = {}
    for path in _weight_files(folder):
        if path.suffix == ".safetensors":
            _add(shapes, _safetensors_header(path), path)
        elif not open_pickles:
            return None
        else:
            _add(shapes, {k: tuple(v.shape) for k, v in _torch_load(path, "meta").items()}, path)
    return {k: v for k, v in shapes.items() if not k.endswith(_IGNORED_SUFFIXES)}


def _read_tensors(folder: Path, device) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict = {}
    for path in _weight_files(folder):
        if path.suffix == ".bin":
            _add(tensors, _torch_load(path, device), path)
            continue
        _safetensors_header(path)  # a clear message for a damaged or truncated file
        try:
            _add(tensors, load_file(path, device=str(device)), path)
        except (SafetensorError, OSError) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: cannot be read as safetensors ({reason})") from None
    return {k: v for k, v in tensors.items() if not k.endswith(_IGNORED_SUFFIXES)}


def _mlp_width(cfg: Config, shapes: Shapes) -> Config:
    """The repo's GatedMLP width (d_intermediate rounded up to 128) when the weights hold it."""
    if isinstance(cfg, TransformerConfig):
        return cfg
    fc2 = shapes.get("backbone.layers.0.mlp.fc2.weight")
    rounded = -(-cfg.d_intermediate // GATED_MLP_MULTIPLE) * GATED_MLP_MULTIPLE
    if fc2 and fc2[-1] == rounded != cfg.d_intermediate:
        return dataclasses.replace(cfg, d_intermediate=rounded)
    return cfg


def read_config(folder: Path) -> Config:
    """The folder's config from its config.json alone (torch-free; the weights are not opened)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return config_from_json(d, name=folder.resolve().name, where=str(path))


def inspect_checkpoint(folder: Path, *, open_pickles: bool = True) -> tuple[Config, Shapes | None]:
    """The folder's config and its weights' names and shapes (`weight_shapes`), without reading tensor
    data: what `check_weights` compares."""
    cfg, shapes = read_config(folder), weight_shapes(folder, open_pickles=open_pickles)
    return (cfg if shapes is None else _mlp_width(cfg, shapes)), shapes


def read_checkpoint(folder: Path, *, device="cpu") -> tuple[Config, dict[str, torch.Tensor]]:
    """The folder's config and its tensors (not yet checked against each other: `load_weights`)."""
    cfg = read_config(folder)
    tensors = _read_tensors(folder, device)
    return _mlp_width(cfg, {k: tuple(v.shape) for k, v in tensors.items()}), tensors


def _head_key(model: CausalLM) -> str | None:
    return "lm_head.weight" if model.config.tie_embeddings else None


def check_weights(model: CausalLM, shapes: Shapes, folder: Path) -> None:
    """Every name `model` expects present (a tied head may be absent), no extra names, every shape equal;
    `model` may be on the meta device (nothing allocated)."""
    params = model.state_dict()
    optional = {_head_key(model)}
    missing = sorted(k for k in params if k not in shapes and k not in optional)
    extra = sorted(k for k in shapes if k not in params)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{folder}: weights lack {missing[0]}{more} that config.json implies")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{folder}: weights hold {extra[0]}{more} that config.json does not describe")
    for name, p in params.items():
        if name in shapes and tuple(shapes[name]) != tuple(p.shape):
            raise CheckpointError(f"{folder}: {name} has shape {tuple(shapes[name])}, "
                                  f"config.json implies {tuple(p.shape)}")


def load_weights(model: CausalLM, tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy `tensors` into `model` (cast to each parameter's dtype) once `check_weights` accepts them."""
    import torch

    check_weights(model, {k: tuple(v.shape) for k, v in tensors.items()}, folder)
    optional = {_head_key(model)}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name in tensors and name not in optional:  # a tied head is the embedding, copied once
                p.copy_(tensors[name])


def _own(t: torch.Tensor) -> torch.Tensor:
    """t, or a copy of it when it is a view of a larger storage."""
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def save_checkpoint(model: CausalLM, folder: Path) -> None:
    """config.json + model.safetensors in the model's public layout (a tied head stored once)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_to_json(model.config), indent=2) + "\n")
    head = _head_key(model)
    # views of a larger buffer (stacked weights, model.layers.stacked_weight) are copied: some safetensors
    # versions refuse to write tensors that share memory
    tensors = {k: _own(v.detach().cpu()) for k, v in model.state_dict().items() if k != head}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
