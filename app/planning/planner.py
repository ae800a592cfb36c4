"""The entry point: `plan(workload, measurements, price_book=…, options=…) -> Plan`, frames ready to show."""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from app.planning.capacity import USABLE_MEMORY_FRACTION, WORKSPACE_BYTES, Limits, plan_capacity
from app.planning.cost import task_cost
from app.planning.errors import PlanningError
from app.planning.pricing import TIERS, PriceBook
from app.planning.routing import Recommendation, crossovers, recommend, sensitivity
from app.planning.subjects import Measured, Subject, build_subjects, check_frame
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
    # plan measurements taken on a CPU (tiny pipeline-check models) beside GPU ones; a store with no GPU
    # measurements plans its CPU ones whatever this says (`cpu_measurements`)
    include_cpu: bool = False

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
class CpuMeasurements:
    """The measurements taken on a CPU (tiny models checking the pipeline, not serving figures) that a
    plan was given, and whether it planned them."""

    count: int = 0
    left_out: bool = False  # beside GPU measurements, and not asked for
    only_cpu: bool = False  # the store holds no GPU measurements, so they are planned
    devices: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line for the finance export and the assumptions."""
        if not self.count:
            return "none in the store"
        n = f"{self.count:,} CPU measurement{'s' if self.count != 1 else ''}"
        if self.left_out:
            return f"left out ({n}; the store holds GPU measurements)"
        return f"included ({n}; the store holds only CPU measurements)" if self.only_cpu else f"included ({n})"


def cpu_measurements(measurements: pd.DataFrame, *, include: bool) -> tuple[pd.DataFrame, CpuMeasurements]:
    """The measurements to plan and what became of the CPU ones: left out when the frame also holds GPU
    measurements and `include` is false; kept otherwise (a store of CPU measurements alone still plans)."""
    cpu = measurements["device_kind"].astype(str).eq("cpu")
    if not cpu.any():
        return measurements, CpuMeasurements()
    only = bool(cpu.all())
    found = CpuMeasurements(count=int(cpu.sum()), left_out=not (include or only), only_cpu=only,
                            devices=tuple(sorted(measurements.loc[cpu, "device_name"].astype(str).unique())))
    return (measurements[~cpu] if found.left_out else measurements), found


def count_repeats(notes) -> tuple[str, ...]:
    """Each note once, in first-seen order, with "(×N)" after one that came N > 1 times."""
    counts: dict[str, int] = {}
    for note in notes:
        counts[note] = counts.get(note, 0) + 1
    return tuple(note if n == 1 else f"{note} (×{n})" for note, n in counts.items())


_NAMES = ("model", "gpu", "device_name")


def _names_in(text: str, row: dict) -> tuple[str, dict[str, str]]:
    """`text` with the row's model, GPU and device names as placeholders (whole names only, longest first),
    and which of them it held."""
    found = {}
    for col in sorted(_NAMES, key=lambda c: -len(str(row[c]))):
        name = str(row[col])
        if not name or name in found.values():
            continue
        pattern = re.compile(rf"(?<![\w.-]){re.escape(name)}(?!\.?[\w-])")
        if pattern.search(text):
            text = pattern.sub(f"\x00{col}\x00", text)
            found[col] = name
    return text, found


def row_notes(rows: pd.DataFrame) -> list[str]:
    """A note per row that could not be planned or priced: "<model> on <GPU>: <why>". Rows whose reasons
    differ only in the model, GPU or device they name make one note naming them all, with "(×N)" rows."""
    groups: dict[str, list[dict]] = {}
    for r in rows.to_dict("records"):
        key = _names_in(f"\x00model\x00 on \x00gpu\x00: {r['reason']}", r)[0]
        groups.setdefault(key, []).append(r)
    out = []
    for key, group in groups.items():
        if len(group) == 1:
            r = group[0]
            out.append(f"{r['model']} on {r['gpu']}: {r['reason']}")
            continue
        reason, named = _names_in(str(group[0]["reason"]), group[0])
        # before the reason, the names it does not say: "<models> on <GPUs>: ", "<models>: " or "<GPUs>: "
        gpu_named = bool({"gpu", "device_name"} & set(named))
        head = ("" if gpu_named else "\x00gpu\x00") if "model" in named else \
            "\x00model\x00" + ("" if gpu_named else " on \x00gpu\x00")
        text = f"{head}: {reason}" if head else reason
        for col in _NAMES:
            text = text.replace(f"\x00{col}\x00", ", ".join(dict.fromkeys(str(r[col]) for r in group)))
        out.append(f"{text} (×{len(group)})")
    return out


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
    cpu: CpuMeasurements = CpuMeasurements()  # the CPU measurements given, and whether they were planned


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


def _assumptions(w: Workload, book: PriceBook, opts: PlanOptions, gpus: list[str],
                 cpu: CpuMeasurements) -> pd.DataFrame:
    rows = [
        ("CPU pipeline-check measurements", cpu.summary, "", "option (include_cpu)"),
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


def _fingerprint(df: pd.DataFrame | None) -> str | None:
    """A digest of a frame's contents (columns, dtypes, index, every cell): equal frames, equal digests."""
    if df is None:
        return None
    digest = hashlib.blake2b(repr((list(df.columns), [str(d) for d in df.dtypes])).encode(), digest_size=16)
    digest.update(pd.util.hash_pandas_object(df.index).to_numpy().tobytes())
    for col in df.columns:
        try:
            cells = pd.util.hash_pandas_object(df[col], index=False)
        except TypeError:  # dicts (a model's config): by their text
            cells = pd.util.hash_pandas_object(df[col].map(repr), index=False)
        digest.update(cells.to_numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Prepared:
    """What a plan builds from the store's frames before it looks at the workload (its surfaces above all):
    the same for every workload planned on the same frames and options."""

    subjects: tuple[Subject, ...]
    sets: tuple[Measured, ...]
    messages: tuple[str, ...]
    cpu: CpuMeasurements


KEEP_PREPARED = 4  # frames × options kept, newest last; each holds its surfaces
_prepared: OrderedDict[tuple, _Prepared] = OrderedDict()
_surface_errors: OrderedDict[tuple, pd.DataFrame] = OrderedDict()
_prepared_lock = threading.Lock()


def _remember(cache: OrderedDict, key: tuple, make):
    """`make()` once per key (kept for the last KEEP_PREPARED keys): planning every workload, or planning
    one again after an edit, fits each surface and checks the held-out points once, not per plan."""
    with _prepared_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _prepared_lock:
        cache[key] = value
        while len(cache) > KEEP_PREPARED:
            cache.popitem(last=False)
    return value


def _prepare(measurements: pd.DataFrame, opts: PlanOptions, models: pd.DataFrame | None,
             devices: pd.DataFrame | None) -> tuple[tuple, _Prepared]:
    key = (_fingerprint(measurements), _fingerprint(models), _fingerprint(devices), opts.dtype, opts.models,
           tuple(opts.project_to), opts.bf16_state, opts.include_cpu)

    def make() -> _Prepared:
        chosen, cpu = cpu_measurements(measurements, include=opts.include_cpu)
        weight_by_model: dict[int, float] = {}
        config_by_model: dict[int, object] = {}
        if models is not None and len(models) and {"id", "weight_bytes"} <= set(models.columns):
            weight_by_model = {int(i): float(v) for i, v in zip(models["id"], models["weight_bytes"]) if pd.notna(v)}
            if "config" in models.columns:
                config_by_model = dict(zip(models["id"].astype(int), models["config"]))
        subjects, sets, messages = build_subjects(chosen, dtype=opts.dtype, models=opts.models,
                                                  project_to=tuple(opts.project_to), weight_by_model=weight_by_model,
                                                  config_by_model=config_by_model, devices=devices,
                                                  bf16_state=opts.bf16_state)
        return _Prepared(tuple(subjects), tuple(sets), tuple(messages), cpu)

    return key, _remember(_prepared, key, make)


def plan(workload: Workload, measurements: pd.DataFrame, *, price_book: PriceBook, options: PlanOptions | None = None,
         models: pd.DataFrame | None = None, devices: pd.DataFrame | None = None) -> Plan:
    """Plan `workload` on every measured model × (measured or projected) GPU."""
    if not isinstance(workload, Workload):
        raise PlanningError("plan() needs a Workload")
    if not isinstance(price_book, PriceBook):
        raise PlanningError("plan() needs a PriceBook")
    opts = options or PlanOptions()
    check_frame(measurements)
    if opts.models is not None and not opts.include_cpu:  # a model asked for that only a CPU measured
        kept = set(cpu_measurements(measurements, include=False)[0]["preset"].astype(str))
        on_cpu = sorted(set(opts.models) & set(measurements["preset"].astype(str)) - kept)
        if on_cpu:
            verb, obj = ("is", "it") if len(on_cpu) == 1 else ("are", "them")
            raise PlanningError(f"{', '.join(on_cpu)} {verb} measured only on a CPU, and CPU pipeline-check "
                                f"measurements are left out: include them to plan {obj}")
    key, prepared = _prepare(measurements, opts, models, devices)
    subjects, sets, messages, cpu = list(prepared.subjects), list(prepared.sets), prepared.messages, prepared.cpu
    run = partial(evaluate, subjects=subjects, book=price_book, opts=opts, cache={})
    rows = run(workload)
    messages = list(messages) + row_notes(rows[rows["status"].isin(["no data", "no price"])])
    if opts.tier != "on-demand":  # a discount tier priced above on-demand: stale or mistyped
        messages += price_book.above_on_demand(tuple(rows["gpu"].unique()), tiers=(opts.tier,))
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
    errors = _remember(_surface_errors, key, lambda: surface_errors(sets)).copy() if opts.surface_errors \
        else pd.DataFrame()
    return Plan(workload=workload, options=opts, price_book=price_book, rows=rows, recommendation=rec,
                crossovers=cross, context_sweep=sweep, sensitivity=sens, surface_errors=errors,
                assumptions=_assumptions(workload, price_book, opts, sorted(rows["gpu"].unique()), cpu),
                messages=count_repeats(messages), cpu=cpu)
