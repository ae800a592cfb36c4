"""CSV exports: the finance table (one row per workload × model × GPU) and the raw measurements.

Units are in the column names (`usd_`, `_ms`, `_s`, `_j`, `_per_day`); ratios are 0–1. Text cells that a
spreadsheet would execute as a formula (starting with =, +, -, @, tab or carriage return) get a leading
apostrophe; numbers are written as numbers.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd

from app.planning.planner import Plan

FINANCE_COLUMNS: dict[str, str] = {
    "workload": "workload name",
    "model": "model preset (or checkpoint folder name)",
    "family": "architecture family: mamba3-siso, mamba3-mimo, mamba2, transformer, hybrid",
    "gpu": "GPU type (datasheet key, or the device name when it has none)",
    "gpu_source": "measured on this GPU, or projected from another GPU's measurements by datasheet ratios",
    "status": "ok, infeasible (cannot meet the SLOs or does not fit), no data, or no price",
    "reason": "why a row is not ok; empty when ok",
    "recommended": "true on the row the planner recommends for this workload",
    "tasks_per_day": "forecast load, tasks per day",
    "peak_factor": "peak-hour arrival rate ÷ daily mean rate",
    "input_tokens_per_task": "prompt tokens per task as an API bills them (whole context of every call)",
    "output_tokens_per_task": "generated tokens per task",
    "concurrency_per_gpu": "sequences decoded together on one GPU (count)",
    "bound_by": "what stops more concurrency: memory, TPOT SLO, TTFT SLO, task-latency SLO, concurrency cap, "
                "throughput peak",
    "gpus_at_peak": "GPUs needed at the peak hour at the target utilisation (count)",
    "gpus_billed": "GPUs billed per month: gpus_at_peak, plus one when N+1 is on (count)",
    "ttft_ms": "time to first token of the slowest call, milliseconds",
    "tpot_ms": "time per output token after the first, slowest call, milliseconds",
    "task_latency_p50_s": "median model time per task (all calls), seconds",
    "usd_per_task": "GPU time per task at the target utilisation × price, plus energy when charged, US dollars",
    "usd_per_month": "gpus_billed × 730.5 h × price, plus energy when charged, US dollars per month",
    "usd_per_1m_input_tokens": "prefill share of usd_per_task per million input tokens, US dollars",
    "usd_per_1m_output_tokens": "decode share of usd_per_task per million output tokens, US dollars",
    "energy_per_task_j": "GPU board energy per task, joules",
    "energy_usd_per_task": "energy cost per task (× PUE), US dollars; 0 when energy is not charged",
    "price_usd_per_gpu_hour": "price used, US dollars per GPU-hour",
    "price_tier": "on-demand, reserved or spot",
    "price_source": "where the price comes from",
    "price_as_of": "date of the price",
    "utilisation_target": "target busy fraction of each GPU (0–1)",
    "fleet_utilisation": "mean load ÷ billed fleet capacity (0–1)",
    "usd_per_kwh": "energy price, US dollars per kWh (empty: not charged)",
    "pue": "facility power ÷ IT power",
    "provenance": "least direct figure used: measured, interpolated, extrapolated or projected",
    "run_uids": "profiling runs the figures come from",
    "cpu_measurements": "whether measurements taken on a CPU (tiny pipeline-check models, not serving figures) were "
                        "planned: left out when the store holds GPU measurements unless asked for, included when it "
                        "holds only CPU ones; with their count",
    "exported_at": "when this table was made, UTC",
}

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy where text cells a spreadsheet would run as formulas start with an apostrophe."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: f"'{v}" if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    out.columns = [f"'{c}" if str(c).startswith(_FORMULA_START) else c for c in out.columns]
    return out


def finance_table(plans: list[Plan]) -> pd.DataFrame:
    """One row per workload × model × GPU over the plans, in FINANCE_COLUMNS order."""
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    frames = []
    for p in plans:
        w, o, rows = p.workload, p.options, p.rows.copy()
        rec = p.recommendation
        rows["recommended"] = False if rec is None else (rows["model"] == rec.model) & (rows["gpu"] == rec.gpu)
        rows["tasks_per_day"] = w.tasks_per_day
        rows["peak_factor"] = w.peak_factor
        rows["input_tokens_per_task"] = w.input_tokens_per_task
        rows["output_tokens_per_task"] = w.output_tokens_per_task
        rows["utilisation_target"] = o.utilisation
        rows["usd_per_kwh"] = p.price_book.usd_per_kwh
        rows["pue"] = p.price_book.pue
        rows["cpu_measurements"] = p.cpu.summary
        rows["exported_at"] = now
        frames.append(rows[list(FINANCE_COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(FINANCE_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def finance_csv(plans: list[Plan]) -> str:
    return neutralise(finance_table(plans)).to_csv(index=False)


def measurements_csv(measurements: pd.DataFrame) -> str:
    """The raw measurement frame (as read from the store) as CSV."""
    return neutralise(measurements).to_csv(index=False)
