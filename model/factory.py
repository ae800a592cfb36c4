"""One factory for every family: a preset name, a config, or a local checkpoint folder → a model."""

from __future__ import annotations

from pathlib import Path

import torch

from model import checkpoints, hybrid, mamba2, mamba3, transformer
from model.config import Config, get_config
from model.layers import stack_weights
from model.lm import CausalLM
from model.scan import check_impl

_BUILDERS = {"mamba3-siso": mamba3.build, "mamba3-mimo": mamba3.build, "mamba2": mamba2.build,
             "transformer": transformer.build, "hybrid": hybrid.build}


def instantiate(cfg: Config, *, device="cpu", dtype: torch.dtype = torch.bfloat16, impl: str = "chunked") -> CausalLM:
    """The model with uninitialised weights (allocated on `device`; on "meta" nothing is allocated)."""
    device = torch.device(device)
    if device.type != "meta":
        check_impl(impl, device)
    with torch.device("meta"):
        model = _BUILDERS[cfg.family](cfg, impl, dtype)
    model.use_glue(model.glue)  # every block and Linear on the implementation's glue
    if device.type != "meta":
        model = model.to_empty(device=device)
        model.tie_weights()
        stack_weights(model)  # Llama's q/k/v and gate/up as one buffer each, before any step is captured
    return model.eval()


def build_model(source: str | Path | Config, *, device="cpu", dtype: torch.dtype = torch.bfloat16,
                impl: str = "chunked", seed: int = 0) -> CausalLM:
    """`source`: a preset name (model.config.PRESETS), a config, or a `Path` to a folder with
    config.json and safetensors weights (state-spaces or Hugging Face Llama layout). Presets and
    configs get the spec's random initialisation from `seed`; a folder's weights are loaded as they are.
    `impl`: "sequential" | "chunked" | "triton" (model/scan.py), recorded as `model.impl`."""
    if isinstance(source, Path):
        cfg, tensors = checkpoints.read_checkpoint(source, device=device)
        model = instantiate(cfg, device=device, dtype=dtype, impl=impl)
        checkpoints.load_weights(model, tensors, source)
        return model
    cfg = get_config(source) if isinstance(source, str) else source
    model = instantiate(cfg, device=device, dtype=dtype, impl=impl)
    if model.device.type != "meta":
        model.init_weights(torch.Generator(device=model.device).manual_seed(seed))
    return model
