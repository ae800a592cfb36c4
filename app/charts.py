"""Altair charts for the Explore and Plan pages. Each takes a frame already shaped by `app.ui.points`
(or the planner) and returns a chart whose hover shows the exact values and where they came from.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

GIB = 2**30
SERIES_COLORS = alt.Scale(scheme="tableau10")  # distinct hues; the theme's default ramp makes models look alike

PROVENANCE_TOOLTIP = [
    alt.Tooltip("series:N", title="series"),
    alt.Tooltip("device_name:N", title="GPU"),
    alt.Tooltip("dtype:N"),
    alt.Tooltip("implementation:N"),
    alt.Tooltip("run_id:Q", title="run"),
    alt.Tooltip("run_uid:N", title="run uid"),
    alt.Tooltip("git_revision:N", title="git"),
    alt.Tooltip("gpu_shared:N", title="GPU shared"),
    alt.Tooltip("n_samples:Q", title="samples"),
]


def _timing_tooltip() -> list:
    return [
        alt.Tooltip("batch:Q"),
        alt.Tooltip("prompt_len:Q", title="prompt (tokens)"),
        alt.Tooltip("context_len:Q", title="context (tokens)"),
        alt.Tooltip("latency_p50_ms:Q", title="p50 (ms)", format=".4~g"),
        alt.Tooltip("latency_p10_ms:Q", title="p10 (ms)", format=".4~g"),
        alt.Tooltip("latency_p90_ms:Q", title="p90 (ms)", format=".4~g"),
        alt.Tooltip("tokens_per_s:Q", title="tokens/s", format=",.4~g"),
        *PROVENANCE_TOOLTIP,
    ]


POINT_FIELDS = ["series", "device_name", "dtype", "implementation", "run_id", "run_uid", "git_revision",
                "gpu_shared", "n_samples", "phase", "batch", "prompt_len", "context_len", "latency_p50_ms",
                "latency_p10_ms", "latency_p90_ms", "tokens_per_s", "oom"]


def _positive(df: pd.DataFrame, *columns: str, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows where every column in `columns` is > 0, keeping only the fields the chart shows (the whole
    frame would be sent to the browser otherwise)."""
    mask = pd.Series(True, index=df.index)
    for c in columns:
        mask &= df[c].notna() & (df[c] > 0)
    keep = list(dict.fromkeys([*POINT_FIELDS, *columns, *extra]))
    return df.loc[mask, keep]


def _latency_lines(df: pd.DataFrame, x: str, x_title: str) -> alt.Chart:
    base = alt.Chart(df).encode(
        x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(type="log", base=2)),
        color=alt.Color("series:N", title="model", scale=SERIES_COLORS),
        detail="batch:N",
    )
    lines = base.mark_line(point=True).encode(
        y=alt.Y("latency_p50_ms:Q", title="latency p50 (ms)"),
        strokeDash=alt.StrokeDash("batch:N", title="batch"),
        tooltip=_timing_tooltip(),
    )
    spread = base.mark_rule(opacity=0.5).encode(y="latency_p10_ms:Q", y2="latency_p90_ms:Q")
    return (spread + lines).interactive()


def decode_latency_vs_context(df: pd.DataFrame) -> alt.Chart:
    """Decode step latency (p50, with the p10–p90 spread) against context, a line per model and batch."""
    d = _positive(df[(df["phase"] == "decode") & ~df["oom"].astype(bool)], "context_len", "latency_p50_ms")
    return _latency_lines(d, "context_len", "context (tokens held per sequence)").properties(
        title="Decode step latency vs context")


def prefill_latency_vs_prompt(df: pd.DataFrame) -> alt.Chart:
    """TTFT (the prefill call, whole batch) against prompt length, a line per model and batch."""
    d = _positive(df[(df["phase"] == "prefill") & ~df["oom"].astype(bool)], "prompt_len", "latency_p50_ms")
    return _latency_lines(d, "prompt_len", "prompt (tokens)").properties(
        title="Prefill latency (TTFT) vs prompt length")


def throughput_vs_batch(df: pd.DataFrame, phase: str = "decode") -> alt.Chart:
    """Tokens per second against batch, a line per model and context (decode) or prompt (prefill)."""
    length = "context_len" if phase == "decode" else "prompt_len"
    d = _positive(df[(df["phase"] == phase) & ~df["oom"].astype(bool)], "batch", "tokens_per_s")
    return alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("batch:Q", scale=alt.Scale(type="log", base=2)),
        y=alt.Y("tokens_per_s:Q", title=f"{phase} throughput (tokens/s)"),
        color=alt.Color("series:N", title="model", scale=SERIES_COLORS),
        strokeDash=alt.StrokeDash(f"{length}:N", title="context" if phase == "decode" else "prompt"),
        detail=f"{length}:N",
        tooltip=_timing_tooltip(),
    ).properties(title=f"{phase.capitalize()} throughput vs batch").interactive()


def memory_vs_context(df: pd.DataFrame, capacity: pd.DataFrame) -> alt.Chart:
    """Peak allocator memory against context (decode), a line per model and batch; a rule per GPU at its
    memory capacity. `capacity`: device_name, memory_bytes."""
    d = _positive(df[df["phase"] == "decode"], "context_len", "peak_mem_bytes",
                  extra=("peak_mem_gib", "weight_bytes", "state_bytes"))
    points = alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("context_len:Q", title="context (tokens held per sequence)", scale=alt.Scale(type="log", base=2)),
        y=alt.Y("peak_mem_gib:Q", title="peak memory (GiB)"),
        color=alt.Color("series:N", title="model", scale=SERIES_COLORS),
        strokeDash=alt.StrokeDash("batch:N", title="batch"),
        detail="batch:N",
        tooltip=[
            alt.Tooltip("peak_mem_bytes:Q", title="peak memory (bytes)", format=","),
            alt.Tooltip("weight_bytes:Q", title="weights (bytes)", format=","),
            alt.Tooltip("state_bytes:Q", title="state/KV (bytes)", format=","),
            alt.Tooltip("oom:N", title="out of memory"),
            *_timing_tooltip(),
        ],
    )
    cap = capacity.dropna(subset=["memory_bytes"]).assign(capacity_gib=lambda c: c["memory_bytes"] / GIB)
    if cap.empty:
        return points.properties(title="Peak memory vs context").interactive()
    rule = alt.Chart(cap).mark_rule(color="firebrick", strokeDash=[6, 3]).encode(
        y="capacity_gib:Q",
        tooltip=[alt.Tooltip("device_name:N", title="GPU"),
                 alt.Tooltip("memory_bytes:Q", title="capacity (bytes)", format=","),
                 alt.Tooltip("capacity_gib:Q", title="capacity (GiB)", format=".2f")],
    )
    label = rule.mark_text(align="left", dx=4, dy=-6, color="firebrick").encode(
        text=alt.Text("device_name:N"), x=alt.value(0))
    return (points + rule + label).properties(title="Peak memory vs context (dashed: GPU capacity)").interactive()


def roofline(df: pd.DataFrame, ceilings: pd.DataFrame) -> alt.Chart:
    """Measured points (prefill and decode apart) on the GPU's bandwidth and compute roof.
    `ceilings` from `points.roofline_ceilings`: measured peaks solid, datasheet dashed."""
    d = _positive(df[~df["oom"].astype(bool)], "arithmetic_intensity", "achieved_flops_per_s",
                  extra=("achieved_bw_bytes_per_s", "mbu", "mfu"))
    x = alt.X("arithmetic_intensity:Q", title="arithmetic intensity (FLOP/byte)", scale=alt.Scale(type="log"))
    y = alt.Y("achieved_flops_per_s:Q", title="achieved FLOP/s", scale=alt.Scale(type="log"),
              axis=alt.Axis(format="~s"))
    pts = alt.Chart(d).mark_point(filled=True, size=50).encode(
        x=x, y=y,
        color=alt.Color("series:N", title="model", scale=SERIES_COLORS),
        shape=alt.Shape("phase:N", title="phase"),
        tooltip=[
            alt.Tooltip("phase:N"),
            alt.Tooltip("arithmetic_intensity:Q", title="FLOP/byte", format=".4~g"),
            alt.Tooltip("achieved_flops_per_s:Q", title="FLOP/s", format=".4~s"),
            alt.Tooltip("achieved_bw_bytes_per_s:Q", title="bytes/s", format=".4~s"),
            alt.Tooltip("mbu:Q", title="MBU", format=".1%"),
            alt.Tooltip("mfu:Q", title="MFU", format=".1%"),
            *_timing_tooltip(),
        ],
    )
    if ceilings.empty:
        return pts.properties(title="Roofline (no measured peaks for this device)").interactive()
    roof = alt.Chart(ceilings).mark_line(color="gray").encode(
        x="arithmetic_intensity:Q",
        y="flops_per_s:Q",
        strokeDash=alt.StrokeDash("ceiling:N", title="roof", scale=alt.Scale(domain=["measured", "datasheet"],
                                                                               range=[[1, 0], [6, 3]])),
        tooltip=[alt.Tooltip("ceiling:N", title="roof"),
                 alt.Tooltip("arithmetic_intensity:Q", title="FLOP/byte", format=".4~g"),
                 alt.Tooltip("flops_per_s:Q", title="FLOP/s", format=".4~s")],
    )
    return (roof + pts).properties(title="Roofline: measured points on the GPU's roof").interactive()


def crossover(sweep: pd.DataFrame, flips: pd.DataFrame) -> alt.Chart:
    """$/task of each model against the task's final context on one GPU (the planner's sweep), with a rule
    where the cheapest model changes. `sweep`: context_tokens, model, usd_per_task, status; `flips`: the
    planner's crossovers (context_tokens, cheaper_below, cheaper_above, why, provenance)."""
    ok = sweep[(sweep["status"] == "ok") & (sweep["usd_per_task"] > 0)]
    lines = alt.Chart(ok).mark_line(point=True).encode(
        x=alt.X("context_tokens:Q", title="final context of the task (tokens)", scale=alt.Scale(type="log", base=2)),
        y=alt.Y("usd_per_task:Q", title="$ per task", scale=alt.Scale(type="log")),
        color=alt.Color("model:N", scale=SERIES_COLORS),
        tooltip=[alt.Tooltip("model:N"), alt.Tooltip("gpu:N", title="GPU"),
                 alt.Tooltip("context_tokens:Q", title="context (tokens)", format=","),
                 alt.Tooltip("usd_per_task:Q", title="$/task", format="$.6f")],
    )
    if flips.empty:
        return lines.properties(title="$/task vs context").interactive()
    rules = alt.Chart(flips).mark_rule(strokeDash=[4, 3], color="gray").encode(
        x="context_tokens:Q",
        tooltip=[alt.Tooltip("context_tokens:Q", title="crossover (tokens)", format=","),
                 alt.Tooltip("cheaper_below:N", title="cheaper below"),
                 alt.Tooltip("cheaper_above:N", title="cheaper above"),
                 alt.Tooltip("why:N"), alt.Tooltip("provenance:N", title="numbers are")],
    )
    return (lines + rules).properties(title="$/task vs context (dashed: crossover)").interactive()


TELEMETRY_SERIES = {"power_w": "power (W)", "sm_clock_mhz": "SM clock (MHz)", "mem_used_gib": "memory used (GiB)",
                    "gpu_util": "GPU busy (0–1)"}


def telemetry(samples: pd.DataFrame) -> alt.Chart:
    """NVML samples of a run over time, one small chart per reading that was sampled."""
    d = samples.assign(mem_used_gib=samples["mem_used_bytes"] / GIB)
    long = d.melt(id_vars=["t"], value_vars=list(TELEMETRY_SERIES), var_name="reading", value_name="value").dropna()
    long["reading"] = long["reading"].map(TELEMETRY_SERIES)
    return alt.Chart(long).mark_line().encode(
        x=alt.X("t:T", title="time (UTC)"),
        y=alt.Y("value:Q", title=None),
        tooltip=[alt.Tooltip("t:T", title="time", format="%H:%M:%S"), alt.Tooltip("reading:N"),
                 alt.Tooltip("value:Q", format=".4~g")],
    ).properties(height=110).facet(row=alt.Row("reading:N", title=None)).resolve_scale(y="independent")
