"""The entry point: `plan(workload, measurements, price_book=…, options=…) -> Plan`, frames ready to show."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from app.planning.capacity import USABLE_MEMORY_FRACTION, WORKSPACE_BYTES, Limits, plan_capacity
from app.planning.cost import task_cost
from app.planning.errors import PlanningError
from app.planning.pricing import TIERS, PriceBook
from app.planning.routing import Recommendation, crossovers, recommend, sensitivity
from app.planning.subjects import Measured, Subject, build_subjects
from app.planning.surfaces import LABELS, PROJECTED, leave_one_out
from app.planning.workloads import Workload

DEFAULT_PROJECTIONS = ("A100-80GB", "H200", "L40S", "L4", "T4")
CROSSOVER_LONGEST = 131_072

ROW_COLUMNS = (
    "workload", "model", "family", "gpu", "device_name", "dtype", "implementation", "gpu_source", "status", "reason",
    "concurrency_per_gpu", "bound_by", "max_concurrency_memory", "state_bytes_per_seq", "max_context_tokens",
    "gpus_at_peak", "gpus_n_plus_1", "gpus_billed", "ttft_ms", "tpot_ms", "task_latency_p50_s",
    "prefill_gpu_s_per_task", "decode_gpu_s_per_task", "usd_per_task", "usd_per_month", "usd_per_1m_input_tokens",
    "usd_per_1m_output_tokens", "energy_per_task_j", "energy_usd_per_task", "energy_source", "fleet_utilisation",
    "price_usd_per_gpu_hour", "price_tier", "price_source", "price_as_of", "provenance", "prefill_provenance",
    "decode_provenance", "run_uids",
)


@dataclass(frozen=True)
class PlanOptions:
    tier: str = "on-demand"
    utilisation: float = 0.7  # target busy fraction of each GPU at peak
    n_plus_1: bool = True  # bill one spare GPU per workload
    dtype: str | None = None  # None: bfloat16 where measured
    models: tuple[str, ...] | None = None  # presets to compare; None: every measured model
    project_to: tuple[str, ...] = DEFAULT_PROJECTIONS
    usable_memory_fraction: float = USABLE_MEMORY_FRACTION
    workspace_bytes: int = WORKSPACE_BYTES
    prefill_batch: int = 1
    max_concurrency: int = 1024
    crossovers: bool = True
    sensitivity: bool = True
    surface_errors: bool = True
    bf16_state: bool = False  # also price Mamba-3 with a bf16 SSM state (what-if, whatif.py)

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise PlanningError(f"pricing tier must be one of {', '.join(TIERS)} (got {self.tier!r})")
        if not _num(self.utilisation) or not 0 < self.utilisation <= 1:
            raise PlanningError(f"target utilisation must be above 0 and at most 1 (got {self.utilisation!r})")
        if not _num(self.usable_memory_fraction) or not 0 < self.usable_memory_fraction <= 1:
            raise PlanningError(
                f"usable memory fraction must be above 0 and at most 1 (got {self.usable_memory_fraction!r})")
        if not _num(self.workspace_bytes) or self.workspace_bytes < 0:
            raise PlanningError(f"workspace must be zero or more bytes (got {self.workspace_bytes!r})")
        for name in ("prefill_batch", "max_concurrency"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanningError(f"{name.replace('_', ' ')} must be a whole number ≥ 1 (got {v!r})")

    @property
    def limits(self) -> Limits:
        return Limits(self.usable_memory_fraction, self.workspace_bytes, self.prefill_batch, self.max_concurrency)


def _num(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass(frozen=True)
class Plan:
    workload: Workload
    options: PlanOptions
    price_book: PriceBook
    rows: pd.DataFrame
    recommendation: Recommendation | None
    crossovers: pd.DataFrame
    context_sweep: pd.DataFrame
    sensitivity: pd.DataFrame
    surface_errors: pd.DataFrame
    assumptions: pd.DataFrame
    messages: tuple[str, ...] = field(default_factory=tuple)


def _row(w: Workload, s: Subject, book: PriceBook, opts: PlanOptions, utilisation: float,
         cache: dict | None) -> dict:
    r = dict.fromkeys(ROW_COLUMNS, np.nan)
    r.update(workload=w.name, model=s.preset, family=s.family, gpu=s.gpu, device_name=s.device_name, dtype=s.dtype,
             implementation=s.implementation, gpu_source=s.gpu_source, run_uids=s.run_uids, price_tier=opts.tier,
             reason="", bound_by="", energy_source="", price_source="", price_as_of="", provenance="",
             prefill_provenance="", decode_provenance="")
    if s.candidate is None:
        r.update(status="no data", reason=s.problem)
        return r
    r["max_context_tokens"] = s.candidate.max_context
    key = (w, id(s.candidate), opts.limits)
    cap = cache.get(key) if cache is not None else None
    if cap is None:
        cap = plan_capacity(w, s.candidate, opts.limits)
        if cache is not None:
            cache[key] = cap
    r.update(bound_by=cap.bound_by, max_concurrency_memory=cap.memory_limit, state_bytes_per_seq=cap.state_bytes)
    t = cap.timing
    if t is not None:
        projected = s.gpu_source == "projected"
        pre, dec = (LABELS[PROJECTED],) * 2 if projected else (LABELS[t.prefill_label], LABELS[t.decode_label])
        r.update(ttft_ms=t.ttft_ms, tpot_ms=t.tpot_ms, task_latency_p50_s=t.task_latency_s,
                 prefill_gpu_s_per_task=t.prefill_gpu_s, decode_gpu_s_per_task=t.decode_gpu_s,
                 prefill_provenance=pre, decode_provenance=dec, provenance=max(pre, dec, key=LABELS.index))
    if not cap.feasible:
        r.update(status="infeasible", reason=cap.reason)
        return r
    r["concurrency_per_gpu"] = cap.concurrency
    price = book.get(s.gpu, opts.tier)
    if price is None:
        r.update(status="no price", reason=f"the price book has no {opts.tier} price for {s.gpu}; add one to cost it")
        return r
    c = task_cost(w, t, usd_per_gpu_hour=price.usd_per_gpu_hour, power=s.power,
                  energy_usd_per_j=book.energy_usd_per_j(), utilisation=utilisation, n_plus_1=opts.n_plus_1)
    r.update(status="ok", gpus_at_peak=c.gpus_at_peak, gpus_n_plus_1=c.gpus_n_plus_1,
             gpus_billed=c.gpus_n_plus_1 if opts.n_plus_1 else c.gpus_at_peak, usd_per_task=c.usd_per_task,
             usd_per_month=c.usd_per_month, usd_per_1m_input_tokens=c.usd_per_1m_input_tokens,
             usd_per_1m_output_tokens=c.usd_per_1m_output_tokens, fleet_utilisation=c.fleet_utilisation,
             price_usd_per_gpu_hour=price.usd_per_gpu_hour, price_source=price.source, price_as_of=price.as_of,
             energy_per_task_j=c.energy_per_task_j, energy_usd_per_task=c.energy_usd_per_task,
             energy_source=s.power.source if s.power else "unknown (no power readings, no datasheet): not charged")
    return r


def evaluate(w: Workload, subjects: list[Subject], book: PriceBook, opts: PlanOptions, *,
             gpus: list[str] | None = None, price_book: PriceBook | None = None,
             utilisation: float | None = None, cache: dict | None = None) -> pd.DataFrame:
    """One row per subject (model × GPU) for this workload; `cache` keeps capacities across price changes."""
    book = price_book or book
    u = opts.utilisation if utilisation is None else utilisation
    chosen = [s for s in subjects if gpus is None or s.gpu in gpus]
    rows = [_row(w, s, book, opts, u, cache) for s in chosen]
    df = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    for col in ("concurrency_per_gpu", "max_concurrency_memory", "gpus_at_peak", "gpus_n_plus_1", "gpus_billed"):
        df[col] = df[col].astype("Int64") if df[col].isna().any() else df[col].astype("int64")
    return df.sort_values(["status", "usd_per_task", "model", "gpu"], key=_status_key, ignore_index=True)


def _status_key(col: pd.Series) -> pd.Series:
    if col.name == "status":
        return col.map({"ok": 0, "no price": 1, "infeasible": 2, "no data": 3})
    return col


def surface_errors(sets: list[Measured]) -> pd.DataFrame:
    """Leave-one-out error of every measured surface: interior points (interpolated) and edge points apart."""
    out = []
    for m in sets:
        for phase in ("prefill", "decode"):
            surf = getattr(m, phase)
            if surf is None:
                continue
            res = leave_one_out(surf)
            inner = [x.rel_error for x in res if x.label <= 1]
            edge = [x.rel_error for x in res if x.label == 2]
            out.append(dict(
                model=m.preset, gpu=m.gpu, dtype=m.dtype, phase=phase, implementation=m.implementation,
                n_points=surf.n_points, n_interpolated=len(inner),
                median_interp_error=float(np.median(inner)) if inner else np.nan,
                max_interp_error=float(np.max(inner)) if inner else np.nan, n_extrapolated=len(edge),
                median_extrap_error=float(np.median(edge)) if edge else np.nan,
                fitted_bw_bytes_per_s=surf.roofline.bw_bytes_per_s or np.nan,
                fitted_flops_per_s=surf.roofline.flops_per_s or np.nan, fitted_overhead_ms=surf.roofline.t0_ms,
            ))
    return pd.DataFrame(out)


def _assumptions(w: Workload, book: PriceBook, opts: PlanOptions, gpus: list[str]) -> pd.DataFrame:
    rows = [
        ("usable memory fraction", opts.usable_memory_fraction, "0–1", "vLLM's gpu_memory_utilization default"),
        ("workspace", opts.workspace_bytes, "bytes", "activations of the prefill in flight, logits"),
        ("target utilisation", opts.utilisation, "0–1", "option"),
        ("N+1 spare GPU", opts.n_plus_1, "bool", "option"),
        ("prefill batch", opts.prefill_batch, "sequences", "option"),
        ("concurrency cap", opts.max_concurrency, "sequences per GPU", "option"),
        ("pricing tier", opts.tier, "", "option"),
        ("energy price", book.usd_per_kwh if book.usd_per_kwh is not None else "not charged", "$/kWh", "price book"),
        ("PUE", book.pue, "ratio", "price book"),
        ("hours per month", 730.5, "h", "365.25 × 24 / 12"),
        ("peak tasks per second", w.peak_tasks_per_s, "tasks/s", "tasks per day × peak factor / 86,400"),
    ]
    for g in gpus:
        p = book.get(g, opts.tier)
        if p is not None:
            rows.append((f"price {g} ({opts.tier})", p.usd_per_gpu_hour, "$/GPU-hour", f"{p.source}; as of {p.as_of}"))
    return pd.DataFrame(rows, columns=["name", "value", "unit", "source"]).astype({"value": "object"})


def plan(workload: Workload, measurements: pd.DataFrame, *, price_book: PriceBook, options: PlanOptions | None = None,
         models: pd.DataFrame | None = None, devices: pd.DataFrame | None = None) -> Plan:
    """Plan `workload` on every measured model × (measured or projected) GPU."""
    if not isinstance(workload, Workload):
        raise PlanningError("plan() needs a Workload")
    if not isinstance(price_book, PriceBook):
        raise PlanningError("plan() needs a PriceBook")
    opts = options or PlanOptions()
    weight_by_model: dict[int, float] = {}
    config_by_model: dict[int, object] = {}
    if models is not None and len(models) and {"id", "weight_bytes"} <= set(models.columns):
        weight_by_model = {int(i): float(v) for i, v in zip(models["id"], models["weight_bytes"]) if pd.notna(v)}
        if "config" in models.columns:
            config_by_model = dict(zip(models["id"].astype(int), models["config"]))
    subjects, sets, messages = build_subjects(measurements, dtype=opts.dtype, models=opts.models,
                                              project_to=tuple(opts.project_to), weight_by_model=weight_by_model,
                                              config_by_model=config_by_model, devices=devices,
                                              bf16_state=opts.bf16_state)
    run = partial(evaluate, subjects=subjects, book=price_book, opts=opts, cache={})
    rows = run(workload)
    messages = list(messages)
    for r in rows[rows["status"].isin(["no data", "no price"])].to_dict("records"):
        messages.append(f"{r['model']} on {r['gpu']}: {r['reason']}")
    rec, why = recommend(rows, workload, opts.tier)
    if rec is None:
        messages.insert(0, f"No recommendation for {workload.name}: {why}")
    gpus = sorted(rows.loc[rows["status"] == "ok", "gpu"].unique())
    limits = rows["max_context_tokens"].dropna()
    longest = min(CROSSOVER_LONGEST, int(limits.max())) if len(limits) else 0
    cross, sweep = (crossovers(workload, run, gpus, longest) if opts.crossovers and rec is not None
                    else (pd.DataFrame(), pd.DataFrame()))
    sens = (sensitivity(workload, run, price_book, rec, opts.tier, opts.utilisation)
            if opts.sensitivity and rec is not None else pd.DataFrame())
    errors = surface_errors(sets) if opts.surface_errors else pd.DataFrame()
    return Plan(workload=workload, options=opts, price_book=price_book, rows=rows, recommendation=rec,
                crossovers=cross, context_sweep=sweep, sensitivity=sens, surface_errors=errors,
                assumptions=_assumptions(workload, price_book, opts, sorted(rows["gpu"].unique())),
                messages=tuple(dict.fromkeys(messages)))
