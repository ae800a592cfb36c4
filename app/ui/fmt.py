"""Numbers as people read them, and the metric definitions the UI states beside them.

Every formatter takes the stored unit (seconds as `_ms`, bytes, per-second rates, 0–1 ratios) and returns
a string; a missing value reads "n/a", never 0.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

NA = "n/a"


def _missing(x) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _scaled(x: float, units: tuple[str, ...], step: float, digits: int = 3) -> str:
    i = 0
    while abs(x) >= step and i < len(units) - 1:
        x /= step
        i += 1
    return f"{x:.{digits}g} {units[i]}"


def ms(x) -> str:
    if _missing(x):
        return NA
    x = float(x)
    if x >= 1000:
        return f"{x / 1000:.3g} s"
    if x < 1:
        return f"{x * 1000:.3g} µs"
    return f"{x:.3g} ms"


def nbytes(x) -> str:
    """Binary units (GiB), as allocators and GPU memory are counted."""
    if _missing(x):
        return NA
    return _scaled(float(x), ("B", "KiB", "MiB", "GiB", "TiB"), 1024.0)


def bytes_per_s(x) -> str:
    """Decimal units (GB/s), as bandwidth datasheets are written."""
    if _missing(x):
        return NA
    return _scaled(float(x), ("B/s", "kB/s", "MB/s", "GB/s", "TB/s"), 1000.0)


def flops_per_s(x) -> str:
    if _missing(x):
        return NA
    return _scaled(float(x), ("FLOP/s", "kFLOP/s", "MFLOP/s", "GFLOP/s", "TFLOP/s", "PFLOP/s"), 1000.0)


def per_s(x, unit: str = "tok/s") -> str:
    if _missing(x):
        return NA
    v, prefix = float(x), ""
    for p in ("k", "M", "G"):
        if abs(v) < 1000:
            break
        v, prefix = v / 1000, p
    return f"{v:.3g}{prefix} {unit}"


def pct(ratio) -> str:
    """A 0–1 ratio as a percentage."""
    if _missing(ratio):
        return NA
    return f"{100 * float(ratio):.1f} %"


def usd(x, digits: int = 2) -> str:
    """Dollars; amounts under a cent keep two significant digits ($0.0000052)."""
    if _missing(x):
        return NA
    x = float(x)
    if 0 < abs(x) < 0.01:
        return f"${x:.{1 - math.floor(math.log10(abs(x)))}f}"
    return f"${x:,.{digits}f}"


def count(x) -> str:
    if _missing(x):
        return NA
    return f"{int(x):,}"


def when(ts) -> str:
    """A timestamp as UTC, minutes precision."""
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return NA
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if hasattr(ts, "to_pydatetime"):
        if ts != ts:  # NaT
            return NA
        ts = ts.to_pydatetime()
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def duration_s(x) -> str:
    if _missing(x):
        return NA
    x = max(0.0, float(x))
    if x < 60:
        return f"{x:.0f} s"
    if x < 3600:
        return f"{int(x // 60)} min {int(x % 60):02d} s"
    return f"{int(x // 3600)} h {int(x % 3600 // 60):02d} min"


# (name, definition): stated in the UI and README; they differ across tools.
METRIC_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("TTFT", "latency of the prefill call that yields the first token's logits, for the whole batch."),
    ("Decode step latency", "at (batch b, context c): one step of b sequences each holding c tokens."),
    ("TPOT", "mean decode step latency over the generated tokens after the first = (E2E − TTFT) / (N − 1); "
             "what vLLM calls TPOT and AIPerf calls ITL."),
    ("Throughput", "tokens produced per second: b / step latency in decode; b·prompt / TTFT in prefill."),
    ("Peak memory", "the allocator's peak during the phase; weights and state/KV bytes reported apart."),
    ("Bytes moved, FLOPs", "from the analytic cost model of the exact config (and from hardware counters "
                           "where Nsight Compute ran)."),
    ("Achieved bandwidth", "bytes moved / time."),
    ("Arithmetic intensity", "FLOPs / bytes moved."),
    ("MBU / MFU", "achieved bandwidth / FLOP rate over this GPU's measured peak (copy bandwidth, bf16 GEMM), "
                  "with the datasheet figure beside it. Unknown peak → n/a, never a guess."),
    ("Energy", "delta of NVML's total-energy counter over the timed region (fallback: integrated power "
               "samples), per token and per task."),
)

PROVENANCE_LABELS: tuple[tuple[str, str], ...] = (
    ("measured", "read from a stored measurement at this exact point"),
    ("interpolated", "between measured points of the same model, GPU and dtype"),
    ("extrapolated", "beyond the measured grid, by the roofline fitted to the measurements"),
    ("projected", "to a GPU not measured, by the roofline and its datasheet (memory limits exact)"),
)


def definitions_markdown() -> str:
    return "\n".join(f"- **{name}** = {text}" for name, text in METRIC_DEFINITIONS)
