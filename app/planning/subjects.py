"""From the store's frames to the things the planner compares: one model on one GPU, with its surfaces.

Bytes and FLOPs beyond the measured grid come from `model.cost` for the model's stored config; without a
config, from the figures stored with the points when they vary in both batch and length; else from the
spec (weights read once, state read and written, KV read; 2 FLOPs per parameter per token).

A measured subject has both phases measured on that device; a projected one borrows the surfaces of the
same model on a measured GPU (the one nearest in bandwidth that has a datasheet) and scales them
(projection.py). Per (model, device, dtype, phase) the implementation used is the fastest measured:
the lowest median of latency ÷ the per-point median across implementations, ties to more points.

Runs of one GPU type pool into its surfaces, whichever card took them, but not across kernel generations:
where runs of several git revisions measured the same point, only the revision of its newest measurement
stands (recency.py), and a plan message names the revisions a surface still mixes.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.planning import recency, whatif
from app.planning.capacity import Candidate
from app.planning.cost import Power
from app.planning.errors import PlanningError
from app.planning.projection import ProjectedSurface, sheet_for
from app.planning.surfaces import Surface
from model import cost
from model.config import from_dict
from profiler.metrics import UNSTABLE_SPREAD, unstable_mask
from store.datasheets import DATASHEETS, GpuSheet

REQUIRED_COLUMNS = (
    "run_uid", "device_id", "model_id", "phase", "dtype", "implementation", "batch", "prompt_len", "context_len",
    "latency_p50_ms", "bytes_moved", "flops", "mean_power_w", "oom", "weight_bytes", "device_name", "device_kind",
    "device_memory_bytes", "device_datasheet_key", "preset", "family", "param_count", "state_bytes_fixed",
    "kv_bytes_per_token", "max_context",
)
PREFERRED_DTYPE = "bfloat16"
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
# One measured point of one model on one GPU type (any card of it): runs that measured it compete (recency.py).
SURFACE_POINT_KEY = ("model_id", "_gpu_type", "dtype", "implementation", "phase", "batch", "prompt_len", "context_len")
COST_GRID_BATCHES = (1, 2, 8, 64, 256)
COST_GRID_LENGTHS = (1, 64, 512, 4096, 32768, 131072)


@dataclass(frozen=True)
class Subject:
    model_id: int
    preset: str
    family: str
    gpu: str  # datasheet key, or the device name when it has none
    device_name: str
    dtype: str
    implementation: str
    gpu_source: str  # "measured" | "projected"
    candidate: Candidate | None
    power: Power | None
    run_uids: str
    problem: str = ""  # why there is no candidate ("no data")


@dataclass(frozen=True)
class Measured:
    """The surfaces of one model on one measured device."""

    model_id: int
    device_id: int
    preset: str
    family: str
    gpu: str
    device_name: str
    sheet: GpuSheet | None
    memory_bytes: float | None
    dtype: str
    implementation: str
    prefill: Surface | None
    decode: Surface | None
    power: Power | None
    weight_bytes: float | None
    state_bytes_fixed: int
    kv_bytes_per_token: int
    max_context: int
    run_uids: str


def check_frame(df: pd.DataFrame) -> None:
    if df is None or len(df) == 0:
        raise PlanningError("the store has no measurements yet: run the profiler, or load the reference dataset")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise PlanningError(
            f"the measurement table lacks the column(s) {', '.join(missing)}: pass store.repo.read_measurements' frame"
        )


# The profiler's implementation labels: `<impl>+cuda-graph` / `<impl>+eager` for both phases since 2026-12-01;
# before, prefill points were labelled `<impl>` and timed eagerly.
_EAGER_PREFILL_LABELS = ("sequential", "chunked", "triton")


def eagerly_timed_prefill(implementation: str) -> bool:
    """Whether a prefill implementation label says the points were timed eagerly (the host's launches in
    them) rather than replayed from a CUDA graph; labels the profiler did not write are not judged."""
    return implementation in _EAGER_PREFILL_LABELS or implementation.endswith("+eager")


def _pick_implementation(df: pd.DataFrame) -> str:
    impls = sorted(df["implementation"].astype(str).unique())
    if len(impls) == 1:
        return impls[0]
    length = np.where(df["phase"] == "prefill", df["prompt_len"], df["context_len"])
    key = df["batch"].astype(str) + "/" + pd.Series(length, index=df.index).astype(str)
    med = df.groupby(key)["latency_p50_ms"].transform("median")
    ratio = df["latency_p50_ms"] / med
    score = ratio.groupby(df["implementation"].astype(str)).median()
    count = df.groupby(df["implementation"].astype(str)).size()
    return min(impls, key=lambda i: (float(score[i]), -int(count[i]), i))


def _surface(df: pd.DataFrame, phase: str, sheet: GpuSheet | None, cost_points) -> Surface:
    length = df["prompt_len"] if phase == "prefill" else df["context_len"]
    return Surface(phase, df["batch"].to_numpy(float), length.to_numpy(float), df["latency_p50_ms"].to_numpy(float),
                   df["bytes_moved"].to_numpy(float), df["flops"].to_numpy(float),
                   peak_bw=sheet.bw_bytes_per_s if sheet else None,
                   peak_flops=sheet.bf16_flops_per_s if sheet else None, cost_points=cost_points)


def _median(series: pd.Series) -> float | None:
    v = pd.to_numeric(series, errors="coerce").dropna()
    v = v[v > 0]
    return float(v.median()) if len(v) else None


def _spec_cost(spec: dict, phase: str, b: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bytes and FLOPs from the spec alone: weights + state read and written + KV; 2 FLOPs per parameter."""
    if phase == "decode":
        return spec["weight"] + b * (2 * spec["fixed"] + spec["kv"] * (L + 1)), b * 2.0 * spec["params"]
    return spec["weight"] + b * L * spec["kv"], b * L * 2.0 * spec["params"]


def _fill_costs(df: pd.DataFrame, spec: dict, phase: str) -> pd.DataFrame:
    """Fill missing stored bytes/FLOPs from the spec."""
    df = df.copy()
    length = df["prompt_len"] if phase == "prefill" else df["context_len"]
    nbytes, flops = _spec_cost(spec, phase, df["batch"].astype(float), length.astype(float))
    df["bytes_moved"] = pd.to_numeric(df["bytes_moved"], errors="coerce").fillna(nbytes)
    df["flops"] = pd.to_numeric(df["flops"], errors="coerce").fillna(flops)
    return df


def _config(config) -> object | None:
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return None
    if not isinstance(config, dict) or not config:
        return None
    try:
        return from_dict(config)
    except (ValueError, TypeError):
        return None


def _cost_points(phase: str, cfg, dtype: str, spec: dict, ph: pd.DataFrame) -> tuple[np.ndarray, ...] | None:
    """(b, L, bytes, FLOPs) to fit the cost basis on; None: fit on the measured points' stored figures."""
    b, L = (np.array(x, dtype=float) for x in zip(*itertools.product(COST_GRID_BATCHES, COST_GRID_LENGTHS)))
    if cfg is not None:
        dbytes = DTYPE_BYTES.get(dtype, 2)
        fn = cost.decode_cost if phase == "decode" else cost.prefill_cost
        costs = [fn(cfg, int(bi), int(li), dbytes) for bi, li in zip(b, L)]
        return b, L, np.array([c.bytes for c in costs], dtype=float), np.array([c.flops for c in costs], dtype=float)
    length = ph["prompt_len"] if phase == "prefill" else ph["context_len"]
    stored = ph["bytes_moved"].notna().all() and ph["flops"].notna().all()
    if stored and ph["batch"].nunique() >= 2 and length.nunique() >= (3 if phase == "prefill" else 2):
        return None
    return (b, L, *_spec_cost(spec, phase, b, L))


def measured_sets(df: pd.DataFrame, *, dtype: str | None, models: tuple[str, ...] | None,
                  weight_by_model: dict[int, float],
                  config_by_model: dict[int, object] | None = None) -> tuple[list[Measured], list[str]]:
    check_frame(df)
    messages: list[str] = []
    for name in sorted(df.loc[df["device_kind"].astype(str) == "cpu", "device_name"].astype(str).unique()):
        messages.append(f"{name} is a CPU: its rows show the method on small models, not a serving plan; "
                        "price it under its device name to cost it")
    if models is not None:
        known = sorted(df["preset"].astype(str).unique())
        unknown = [m for m in models if m not in known]
        if unknown:
            raise PlanningError(f"no measurements of {', '.join(unknown)}; measured models: {', '.join(known)}")
        df = df[df["preset"].isin(list(models))]
    # Points of one GPU model pool into one surface, whichever physical card of that model took them.
    df = df.assign(_gpu_type=df["device_name"].astype(str) + "|" + df["device_kind"].astype(str) + "|"
                   + (pd.to_numeric(df["device_memory_bytes"], errors="coerce") // 2**30).astype(str))
    # A point measured again by newer code replaces the older code's measurement of it (recency.py).
    df, superseded = recency.newest_revision_rows(df, list(SURFACE_POINT_KEY))
    usable = df[~df["oom"].astype(bool) & (pd.to_numeric(df["latency_p50_ms"], errors="coerce") > 0)]
    out = []
    eager_prefill: dict[str, list[str]] = {}  # GPU name → presets whose prefill surface was timed eagerly
    mixed: dict[str, tuple[set[str], set[str]]] = {}  # GPU name → (presets, revisions) of mixed surfaces
    for (model_id, gpu_type), g in df.groupby(["model_id", "_gpu_type"], sort=True):
        first = g.iloc[0]
        device_id = int(g["device_id"].min())
        ok = usable[(usable["model_id"] == model_id) & (usable["_gpu_type"] == gpu_type)]
        dtypes = sorted(ok["dtype"].astype(str).unique())
        chosen = dtype or (PREFERRED_DTYPE if PREFERRED_DTYPE in dtypes else (dtypes[0] if dtypes else PREFERRED_DTYPE))
        ok = ok[ok["dtype"].astype(str) == chosen]
        sheet = sheet_for(datasheet_key=_str(first["device_datasheet_key"]), device_name=str(first["device_name"]))
        weight = _median(ok["weight_bytes"]) or weight_by_model.get(int(model_id))
        if weight is None and chosen in DTYPE_BYTES:
            weight = float(first["param_count"]) * DTYPE_BYTES[chosen]
        spec = dict(weight=weight or 0.0, fixed=int(first["state_bytes_fixed"]), kv=int(first["kv_bytes_per_token"]),
                    params=float(first["param_count"]))
        surfaces, impls, powers, used_revisions, shaky = {}, [], {}, set(), set()
        for phase in ("prefill", "decode"):
            ph = ok[ok["phase"] == phase]
            if ph.empty:
                surfaces[phase] = None
                continue
            impl = _pick_implementation(ph)
            ph = ph[ph["implementation"].astype(str) == impl]
            used_revisions |= set(recency.revisions(ph))
            # a point timed in several runs of the newest code counts once
            shaky |= set(ph.loc[unstable_mask(ph), list(SURFACE_POINT_KEY)].itertuples(index=False, name=None))
            if phase == "prefill" and str(first["device_kind"]) != "cpu" and eagerly_timed_prefill(impl):
                eager_prefill.setdefault(str(first["device_name"]), []).append(str(first["preset"]))
            points = _cost_points(phase, _config((config_by_model or {}).get(int(model_id))), chosen, spec, ph)
            surfaces[phase] = _surface(_fill_costs(ph, spec, phase), phase, sheet, points)
            impls.append(impl)
            powers[phase] = _median(ph["mean_power_w"])
        power = None
        if powers.get("prefill") and powers.get("decode"):
            power = Power(powers["prefill"], powers["decode"], "measured")
        elif sheet is not None:
            power = Power(sheet.tdp_w, sheet.tdp_w, "TDP upper bound (no power readings)")
        if len(used_revisions) > 1:
            presets, revs = mixed.setdefault(str(first["device_name"]), (set(), set()))
            presets.add(str(first["preset"]))
            revs |= used_revisions
        mem = pd.to_numeric(pd.Series([first["device_memory_bytes"]]), errors="coerce").iloc[0]
        mem = float(mem) if pd.notna(mem) and mem > 0 else (float(sheet.memory_bytes) if sheet else None)
        if "gpu_shared" in g.columns and g["gpu_shared"].astype(bool).any():
            messages.append(f"some points of {first['preset']} on {first['device_name']} were taken while another "
                            "process shared the GPU")
        if shaky:
            messages.append(f"{len(shaky)} point(s) of {first['preset']} on {first['device_name']} timed unsteadily "
                            f"(p90 above {UNSTABLE_SPREAD}× p10): the latencies and costs planned from them are less "
                            "certain; measure them again on an idle machine")
        out.append(Measured(
            model_id=int(model_id), device_id=int(device_id), preset=str(first["preset"]), family=str(first["family"]),
            gpu=sheet.key if sheet else str(first["device_name"]), device_name=str(first["device_name"]), sheet=sheet,
            memory_bytes=mem, dtype=chosen, implementation=" / ".join(dict.fromkeys(impls)) or "-",
            prefill=surfaces["prefill"], decode=surfaces["decode"], power=power, weight_bytes=weight,
            state_bytes_fixed=int(first["state_bytes_fixed"]), kv_bytes_per_token=int(first["kv_bytes_per_token"]),
            max_context=int(first["max_context"]),
            run_uids=" ".join(sorted(ok["run_uid"].astype(str).unique())),
        ))
    for name, presets in sorted(eager_prefill.items()):
        messages.append(f"prefill on {name} ({', '.join(sorted(presets))}) was timed eagerly (measured before the "
                        "profiler replayed prefill from CUDA graphs, or the capture failed): a short prompt's time "
                        "there includes the host launching each kernel, so its prefill costs run high next to a GPU "
                        "whose prefill was graph-timed; profile it again to compare the two fairly")
    messages += _revision_messages(mixed, superseded)
    return out, messages


def _revision_messages(mixed: dict[str, tuple[set[str], set[str]]], superseded: pd.DataFrame) -> list[str]:
    """Say where a surface draws on runs of several git revisions (the older code's points that newer runs
    did not measure again still stand), and, per GPU otherwise, how many points newer runs measured again."""
    out = []
    for name, (presets, revs) in sorted(mixed.items()):
        out.append(f"surfaces of {', '.join(sorted(presets))} on {name} draw on runs of {len(revs)} git revisions "
                   f"({', '.join(sorted(revs))}): where several runs measured a point, the newest run's "
                   "measurement of it is used, and points only older runs measured stand beside them; profile "
                   "these models again to plan from one revision of the kernels")
    if superseded.empty:
        return out
    for name, g in superseded.groupby(superseded["device_name"].astype(str), sort=True):
        if name in mixed:
            continue
        revs = sorted(set(recency.revisions(g)))
        n = len(g)
        out.append(f"{n} point{'s' if n != 1 else ''} on {name} measured by older runs (revision"
                   f"{'s' if len(revs) != 1 else ''} {', '.join(revs)}) {'were' if n != 1 else 'was'} measured "
                   "again by newer code: the plan uses the newest run's measurement of each point")
    return out


def _str(v) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _problem(m: Measured) -> str:
    missing = [p for p in ("prefill", "decode") if getattr(m, p) is None]
    if missing:
        return f"no usable {' or '.join(missing)} measurements of {m.preset} on {m.device_name} ({m.dtype})"
    if m.memory_bytes is None:
        return f"memory size of {m.device_name} unknown (no NVML total, no datasheet)"
    if not m.weight_bytes:
        return f"weight size of {m.preset} unknown"
    return ""


def measured_subject(m: Measured) -> Subject:
    problem = _problem(m)
    cand = None
    if not problem:
        cand = Candidate(prefill=m.prefill, decode=m.decode, memory_bytes=m.memory_bytes, weight_bytes=m.weight_bytes,
                         state_bytes_fixed=m.state_bytes_fixed, kv_bytes_per_token=m.kv_bytes_per_token,
                         max_context=m.max_context)
    return Subject(m.model_id, m.preset, m.family, m.gpu, m.device_name, m.dtype, m.implementation, "measured", cand,
                   m.power, m.run_uids, problem)


def projected_subject(target: GpuSheet, sources: list[Measured]) -> Subject:
    """The model of `sources` (all one model) projected to `target` from its best measured GPU."""
    first = sources[0]
    usable = [m for m in sources if m.sheet is not None and not _problem(m)]
    if not usable:
        why = "no GPU it was measured on has a datasheet" if all(m.sheet is None for m in sources) else _problem(first)
        return Subject(first.model_id, first.preset, first.family, target.key, target.name, first.dtype, "-",
                       "projected", None, None, "", f"cannot project {first.preset} to {target.key}: {why}")
    src = min(usable, key=lambda m: (abs(math.log(m.sheet.bw_bytes_per_s / target.bw_bytes_per_s)), m.device_id))
    cand = Candidate(prefill=ProjectedSurface(src.prefill, src.sheet, target),
                     decode=ProjectedSurface(src.decode, src.sheet, target),
                     memory_bytes=float(target.memory_bytes), weight_bytes=src.weight_bytes,
                     state_bytes_fixed=src.state_bytes_fixed, kv_bytes_per_token=src.kv_bytes_per_token,
                     max_context=src.max_context)
    power = None
    if src.power is not None:
        scale = target.tdp_w / src.sheet.tdp_w
        power = Power(src.power.prefill_w * scale, src.power.decode_w * scale,
                      f"projected from {src.gpu} ({src.power.source}) × TDP ratio")
    return Subject(src.model_id, src.preset, src.family, target.key, target.name, src.dtype,
                   f"{src.implementation} (from {src.gpu})", "projected", cand, power, src.run_uids)


def build_subjects(df: pd.DataFrame, *, dtype: str | None, models: tuple[str, ...] | None, project_to: tuple[str, ...],
                   weight_by_model: dict[int, float], config_by_model: dict[int, object],
                   devices: pd.DataFrame | None,
                   bf16_state: bool = False) -> tuple[list[Subject], list[Measured], list[str]]:
    """Measured subjects, the projections to `project_to` and to stored devices with no points, and with
    `bf16_state` the what-if twin of every Mamba-3 one with an fp32 state (whatif.py)."""
    sets, messages = measured_sets(df, dtype=dtype, models=models, weight_by_model=weight_by_model,
                                   config_by_model=config_by_model)
    subjects = [measured_subject(m) for m in sets]
    by_model: dict[int, list[Measured]] = {}
    for m in sets:
        by_model.setdefault(m.model_id, []).append(m)
    measured_gpus = {m.gpu for m in sets}
    targets: list[GpuSheet] = []
    for key in project_to:
        if key not in DATASHEETS:
            raise PlanningError(f"cannot project to {key!r}: no datasheet; known GPUs: {', '.join(DATASHEETS)}")
        if key not in measured_gpus:
            targets.append(DATASHEETS[key])
    if devices is not None and len(devices):
        measured_ids = set(df["device_id"].astype(int))
        for d in devices.to_dict("records"):
            if int(d["id"]) in measured_ids or str(d.get("kind")) == "cpu":
                continue
            sheet = sheet_for(datasheet_key=_str(d.get("datasheet_key")), device_name=str(d.get("name") or ""))
            if sheet is None:
                for model_sets in by_model.values():
                    f = model_sets[0]
                    subjects.append(Subject(f.model_id, f.preset, f.family, str(d["name"]), str(d["name"]), f.dtype,
                                            "-", "measured", None, None, "",
                                            f"no measurements on {d['name']}, and no datasheet to project to it: "
                                            "profile this GPU"))
            elif sheet.key not in measured_gpus and sheet not in targets:
                targets.append(sheet)
                messages.append(f"{d['name']} has no measurements yet; its rows are projected from its datasheet")
    for target in targets:
        for model_sets in by_model.values():
            subjects.append(projected_subject(target, model_sets))
    if bf16_state:
        twins = [whatif.bf16_state_subject(s, _config((config_by_model or {}).get(s.model_id)),
                                           DTYPE_BYTES.get(s.dtype, 2)) for s in subjects]
        subjects += [t for t in twins if t is not None]
        if not any(twins):
            messages.append("the bf16-state what-if applies to Mamba-3 models with an fp32 state and a stored "
                            "config: none of the measured ones is")
    return subjects, sets, messages
