"""What `--models` names: a preset (model.config.PRESETS) or a local checkpoint folder.

`resolve` is torch-free for presets; a folder is checked against its config.json on the meta device (no
weights allocated) so a mismatch is refused before a run starts.
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


def resolve(name: str) -> ModelRef:
    if name in PRESETS:
        return ModelRef(key=name, config=get_config(name), preset=name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _resolve_folder(path.resolve())
    if path.exists():
        raise ModelRefError(f"model {name!r}: a checkpoint must be a folder (config.json + weights)")
    if "/" in name or name.startswith((".", "~")):
        raise ModelRefError(f"model {name!r}: no such checkpoint folder")
    raise ModelRefError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)} (or a checkpoint folder)")


def _resolve_folder(folder: Path) -> ModelRef:
    from model import checkpoints
    from model.factory import instantiate

    try:
        cfg, tensors = checkpoints.read_checkpoint(folder)
        checkpoints.load_weights(instantiate(cfg, device="meta"), tensors, folder)
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
