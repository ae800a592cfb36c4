"""The Profile page's new-run form: the device as the profiler sees it, a scenario or a custom grid, the
models — checked field by field, then as a whole by the profiler's own request check."""

from __future__ import annotations

import os

import streamlit as st

from app.ui import launch, validate, widgets
from model.config import PRESETS
from profiler.device import cpu_name, nvml_gpus
from profiler.models import DTYPE_BYTES
from profiler.request import IMPLS
from profiler.scenarios import SCENARIOS, default_scenario

CUSTOM = "custom grid"
MAX_TOKENS = 1 << 20
MAX_BATCH = 4096


@st.cache_data(ttl=60, show_spinner=False)
def devices() -> dict[str, str]:
    """device spec → label: the CPU, and each GPU NVML lists (without making a CUDA context)."""
    out = {"cpu": f"CPU: {cpu_name()} ({os.cpu_count()} threads)"}
    gpus, _ = nvml_gpus()
    for g in gpus:
        out[f"cuda:{g.index}"] = f"GPU {g.index}: {g.name} ({g.memory_bytes / 2**30:.0f} GiB)"
    return out


def _scenario_label(name: str) -> str:
    return name if name == CUSTOM else f"{name} — {SCENARIOS[name].description}"


def _grid_field(column, label: str, default: str, key: str, *, hi: int) -> list[int] | None:
    values, problem = validate.int_list(column.text_input(label, default, key=key), lo=1, hi=hi)
    with column:
        widgets.field_error(problem)
    return values


def form() -> tuple[dict | None, str]:
    """Draws the form; returns the checked request (None while a field is wrong) and the run label."""
    found = devices()
    gpus_note = nvml_gpus()[1]
    device_col, scenario_col = st.columns([1, 2])
    device = device_col.selectbox("Device", list(found), format_func=found.get,
                                  help="what the profiler sees: the CPU, and the GPUs NVML lists"
                                       + (f" ({gpus_note})" if gpus_note else ""))
    kind = "cpu" if device == "cpu" else "cuda"
    names = [*SCENARIOS, CUSTOM]
    scenario = scenario_col.selectbox("Scenario", names, index=names.index(default_scenario(kind)),
                                      format_func=_scenario_label)
    preset_models = list(SCENARIOS[scenario].models) if scenario != CUSTOM else ["mamba3-siso-tiny"]
    models = st.multiselect("Models", list(PRESETS), default=[m for m in preset_models if m in PRESETS],
                            key=f"models_{scenario}", help="presets; add a checkpoint folder below")
    folder = st.text_input("Checkpoint folder (optional)", placeholder="path/to/checkpoint (config.json + weights)")
    raw: dict = {"device": device, "scenario": None if scenario == CUSTOM else scenario,
                 "models": models + ([folder.strip()] if folder.strip() else [])}
    if not raw["models"]:
        widgets.field_error("choose at least one model")
    ok = bool(raw["models"])
    if scenario == CUSTOM:
        b_col, p_col, c_col = st.columns(3)
        grid = {
            "batches": _grid_field(b_col, "Batch sizes", "1, 4", "grid_batches", hi=MAX_BATCH),
            "prompts": _grid_field(p_col, "Prompt lengths (prefill)", "16, 64", "grid_prompts", hi=MAX_TOKENS),
            "contexts": _grid_field(c_col, "Contexts (decode)", "16, 256", "grid_contexts", hi=MAX_TOKENS),
        }
        ok = ok and all(v is not None for v in grid.values())
        raw.update(grid)
    dtype_col, impl_col, limit_col, label_col = st.columns(4)
    dtypes = ["default (float32 on the CPU, bfloat16 on a GPU)", *DTYPE_BYTES]
    dtype = dtype_col.selectbox("dtype", dtypes)
    impls = ["default (chunked on the CPU, triton on a GPU)", *IMPLS]
    impl = impl_col.selectbox("Implementation", impls)
    limit_min = limit_col.number_input("Time limit (min)", min_value=0.5, max_value=24 * 60.0, value=None,
                                       placeholder="none", help="cancel the run after this long")
    label = label_col.text_input("Label", placeholder="optional")
    raw.update(dtype=dtype if dtype in DTYPE_BYTES else None, impl=impl if impl in IMPLS else None,
               time_limit_s=None if limit_min is None else 60.0 * limit_min, label=label.strip() or None)
    if not ok:
        return None, label
    request, problem = launch.check_request({k: v for k, v in raw.items() if v is not None})
    widgets.field_error(problem)
    return request, label.strip()
