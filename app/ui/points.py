"""Measured points shaped for the Explore charts and the Overview headline: filters, the latest
measurement per point, a readable series label, derived rates. Plain pandas; no streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.planning import recency
from profiler.metrics import UNSTABLE_SPREAD, unstable_mask

# One measured point: re-measuring it in a later run replaces it on the charts (the run id shows which).
POINT_KEY = ("device_id", "model_id", "dtype", "implementation", "phase", "batch", "prompt_len", "context_len")
CHART_ROW_LIMIT = 5000


@dataclass(frozen=True)
class Filters:
    devices: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    run_ids: tuple[int, ...] = ()
    batches: tuple[int, ...] = ()


def options(df: pd.DataFrame, column: str) -> list:
    if df.empty or column not in df:
        return []
    return sorted(df[column].dropna().unique().tolist())


def run_names(df: pd.DataFrame) -> dict:
    """run id → "#id · label" for the Run filter (a bare number says nothing about which run it is)."""
    if df.empty or "run_id" not in df:
        return {}
    labels = df.drop_duplicates("run_id").set_index("run_id").get("run_label")
    if labels is None:
        return {i: f"#{i}" for i in options(df, "run_id")}
    return {i: f"#{i} · {labels[i]}" if isinstance(labels[i], str) and labels[i] else f"#{i}"
            for i in options(df, "run_id")}


def apply(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows matching every non-empty filter (an empty filter means all)."""
    mask = pd.Series(True, index=df.index)
    for column, wanted in (("device_name", f.devices), ("preset", f.presets), ("dtype", f.dtypes),
                           ("run_id", f.run_ids), ("batch", f.batches)):
        if wanted:
            mask &= df[column].isin(list(wanted))
    return df[mask]


def latest_per_point(df: pd.DataFrame) -> pd.DataFrame:
    """The most recent measurement of each point, so repeated runs do not stack: by when it was measured, as
    the planner orders them (an old bundle imported today does not replace newer measurements)."""
    return recency.latest_rows(df, list(POINT_KEY))


def with_series(df: pd.DataFrame) -> pd.DataFrame:
    """Adds `series`: the preset, plus GPU / dtype / implementation where the frame holds several."""
    out = df.copy()
    label = out["preset"].astype(str)
    for column in ("device_name", "dtype", "implementation"):
        if out[column].nunique() > 1:
            label = label + " · " + out[column].astype(str)
    out["series"] = label
    return out


def with_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Adds achieved FLOP/s and GiB columns for the roofline and memory charts."""
    out = df.copy()
    seconds = out["latency_p50_ms"] / 1e3
    out["achieved_flops_per_s"] = np.where(seconds > 0, out["flops"] / seconds, np.nan)
    out["peak_mem_gib"] = out["peak_mem_bytes"] / 2**30
    return out


def for_charts(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Filtered, latest per point, labelled and with derived rates: what every Explore chart draws."""
    return with_rates(with_series(latest_per_point(apply(df, f))))


def capped(df: pd.DataFrame, limit: int = CHART_ROW_LIMIT) -> tuple[pd.DataFrame, int]:
    """At most `limit` rows (an even sample of the rest); returns the frame and how many were left out."""
    if len(df) <= limit:
        return df, 0
    keep = np.linspace(0, len(df) - 1, limit).astype(int)
    return df.iloc[keep], len(df) - limit


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """Per device × model × dtype: the decode step at batch 1 at the shortest and longest measured context,
    and the best decode and prefill throughput. GPUs come first: a CPU's rows check the pipeline on tiny
    models, and a CPU whose name sorts first would otherwise head a table read for serving figures."""
    columns = ["device", "model", "family", "dtype", "points", "context short", "decode ms (b=1, short)",
               "context long", "decode ms (b=1, long)", "best decode tok/s", "best prefill tok/s"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    ok = latest_per_point(df[~df["oom"].astype(bool)])
    ok = ok.assign(_not_gpu=ok["device_kind"].astype(str) != "gpu")
    rows = []
    for (_, device, preset, family, dtype), g in ok.groupby(["_not_gpu", "device_name", "preset", "family", "dtype"],
                                                             sort=True):
        dec1 = g[(g["phase"] == "decode") & (g["batch"] == 1)].sort_values("context_len")
        short = dec1.iloc[0] if len(dec1) else None
        long = dec1.iloc[-1] if len(dec1) else None
        rows.append({
            "device": device, "model": preset, "family": family, "dtype": dtype, "points": len(g),
            "context short": None if short is None else int(short["context_len"]),
            "decode ms (b=1, short)": None if short is None else short["latency_p50_ms"],
            "context long": None if long is None else int(long["context_len"]),
            "decode ms (b=1, long)": None if long is None else long["latency_p50_ms"],
            "best decode tok/s": g.loc[g["phase"] == "decode", "tokens_per_s"].max(),
            "best prefill tok/s": g.loc[g["phase"] == "prefill", "tokens_per_s"].max(),
        })
    return pd.DataFrame(rows, columns=columns)


def roofline_ceilings(device: pd.Series, ai_min: float, ai_max: float) -> pd.DataFrame:
    """The roof min(bandwidth × AI, peak FLOP/s) from the measured peaks, and the datasheet's where known,
    over [ai_min, ai_max] widened to show the ridge point. Columns: arithmetic_intensity, flops_per_s,
    ceiling. Empty when no peak is known."""
    roofs = []
    for ceiling, bw_col, fl_col in (("measured", "measured_copy_bw_bytes_per_s", "measured_bf16_flops_per_s"),
                                    ("datasheet", "datasheet_bw_bytes_per_s", "datasheet_bf16_flops_per_s")):
        bw, peak = device.get(bw_col), device.get(fl_col)
        if bw is None or peak is None or pd.isna(bw) or pd.isna(peak) or bw <= 0 or peak <= 0:
            continue
        ridge = peak / bw
        xs = sorted({min(ai_min, ridge), ridge, max(ai_max, ridge)})
        roofs += [{"arithmetic_intensity": x, "flops_per_s": min(bw * x, peak), "ceiling": ceiling} for x in xs]
    return pd.DataFrame(roofs, columns=["arithmetic_intensity", "flops_per_s", "ceiling"])


def roof_for(device: pd.Series, on_device: pd.DataFrame) -> pd.DataFrame:
    """`roofline_ceilings` spanning the arithmetic intensities measured on this device."""
    ai = on_device["arithmetic_intensity"].dropna()
    ai = ai[ai > 0]
    lo, hi = (float(ai.min()), float(ai.max())) if len(ai) else (1.0, 1.0)
    return roofline_ceilings(device, lo, hi)


def notes(shown: pd.DataFrame) -> str:
    """What the charts hold, and the points to read with care."""
    out = [f"{len(shown):,} point(s), the latest measurement of each"]
    oom, shared = shown["oom"].astype(bool), shown["gpu_shared"].astype(bool)
    if oom.any():
        out.append(f"{int(oom.sum())} ran out of memory (left off the latency charts)")
    if shared.any():
        out.append(f"{int(shared.sum())} measured while another process used the GPU")
    shaky = unstable_mask(shown)
    if shaky.any():
        out.append(f"{int(shaky.sum())} with unstable timings (p90 above {UNSTABLE_SPREAD}× p10: read their latency "
                   "with care)")
    return " · ".join(out) + "."
