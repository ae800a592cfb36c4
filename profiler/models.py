"""What `--models` names: a preset (model.config.PRESETS) or a local checkpoint folder.

`resolve` is torch-free for presets. A folder is checked from its config.json and the names and shapes in
its weight files' headers (no tensor data is read): against a model built on the meta device (nothing
allocated) so that a mismatch is refused before a run starts, or, with `match_weights=False`, without torch
(the app's check: config.json, and the headers of safetensors files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from model import cost
from model.config import PRESETS, Config, get_config, to_dict

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class ModelRefError(ValueError):
    pass


@dataclass(frozen=True)
class ModelRef:
    """`key` goes into point keys and the summary: the preset name, or `ckpt:<folder name>`."""

    key: str
    config: Config
    preset: str | None = None
    folder: str | None = None

    @property
    def source(self) -> str:
        return "preset" if self.folder is None else f"checkpoint:{self.folder}"

    @property
    def label(self) -> str:
        return self.preset or Path(self.folder).name


def resolve(name: str, *, match_weights: bool = True) -> ModelRef:
    if name in PRESETS:
        return ModelRef(key=name, config=get_config(name), preset=name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _resolve_folder(path.resolve(), match_weights=match_weights)
    if path.exists():
        raise ModelRefError(f"model {name!r}: a checkpoint must be a folder (config.json + weights)")
    if "/" in name or name.startswith((".", "~")):
        raise ModelRefError(f"model {name!r}: no such checkpoint folder")
    raise ModelRefError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)} (or a checkpoint folder)")


def _resolve_folder(folder: Path, *, match_weights: bool) -> ModelRef:
    from model import checkpoints

    try:
        cfg, shapes = checkpoints.inspect_checkpoint(folder, open_pickles=match_weights)
        if match_weights:
            from model.factory import instantiate

            checkpoints.check_weights(instantiate(cfg, device="meta"), shapes, folder)
    except checkpoints.CheckpointError as exc:
        raise ModelRefError(str(exc)) from None
    return ModelRef(key=f"ckpt:{folder.name}", config=cfg, folder=str(folder))


def build(ref: ModelRef, *, device, dtype: str, impl: str, seed: int):
    import torch

    from model.factory import build_model

    source = Path(ref.folder) if ref.folder else ref.preset
    return build_model(source, device=device, dtype=getattr(torch, dtype), impl=impl, seed=seed)


def spec_fields(ref: ModelRef) -> dict:
    """Keyword arguments of `store.repo.upsert_model_spec` (bf16 sizes: the spec is dtype-free)."""
    cfg = ref.config
    return dict(preset=ref.label, family=cfg.family, source=ref.source, config=to_dict(cfg),
                param_count=cost.param_count(cfg), weight_bytes=cost.weight_bytes(cfg),
                state_bytes_fixed=cost.state_bytes_fixed(cfg), kv_bytes_per_token=cost.kv_bytes_per_token(cfg),
                max_context=cfg.max_context)
