"""The arithmetic behind every measured figure (docs/product.md, "Metric definitions").

Plain Python, no torch: latency statistics, throughput, achieved bandwidth, arithmetic intensity,
MBU/MFU against a measured peak, and energy from NVML's counter or from power samples. A quantity whose
input is unknown is None, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LatencyStats:
    p10_ms: float
    p50_ms: float
    p90_ms: float
    n: int


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 ≤ q ≤ 1) by linear interpolation between closest ranks (NumPy's default)."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    s = sorted(samples_ms)
    return LatencyStats(p10_ms=percentile(s, 0.1), p50_ms=percentile(s, 0.5), p90_ms=percentile(s, 0.9), n=len(s))


# A point whose calls' p90 is more than this many times their p10 timed unsteadily: something moved under the
# timing (another load on the machine, a throttled clock, calls too short to settle), so its p50 may be off by a
# good part of that spread. The shipped H200 bundle's 162 points reach 1.09; the H100 one's 75 points, 2.6 once.
UNSTABLE_SPREAD = 1.5


def unstable(p10_ms: float | None, p90_ms: float | None) -> bool:
    """Whether a point's timings spread too far to trust its p50 (p90 above UNSTABLE_SPREAD × p10); False
    where either is unknown (an out-of-memory point, a store without them)."""
    if p10_ms is None or p90_ms is None or not (p10_ms > 0) or math.isnan(p90_ms):
        return False
    return p90_ms > UNSTABLE_SPREAD * p10_ms


def unstable_mask(frame: pd.DataFrame) -> pd.Series:
    """`unstable` row by row over a measurements frame with latency_p10_ms / latency_p90_ms columns (all False
    where the frame lacks them); an out-of-memory row (`oom`) never counts, whatever its columns hold."""
    import pandas as pd

    if "latency_p10_ms" not in frame.columns or "latency_p90_ms" not in frame.columns:
        return pd.Series(False, index=frame.index)
    p10 = pd.to_numeric(frame["latency_p10_ms"], errors="coerce")
    p90 = pd.to_numeric(frame["latency_p90_ms"], errors="coerce")
    shaky = ((p10 > 0) & (p90 > UNSTABLE_SPREAD * p10)).fillna(False).astype(bool)
    return shaky & ~frame["oom"].astype(bool) if "oom" in frame.columns else shaky


def tokens_per_call(phase: str, batch: int, prompt_len: int) -> int:
    """Tokens one timed call produces (decode: one per sequence) or consumes (prefill: the prompts)."""
    if phase == "decode":
        return batch
    if phase == "prefill":
        return batch * prompt_len
    raise ValueError(f"phase must be 'prefill' or 'decode', not {phase!r}")


def tokens_per_s(phase: str, batch: int, prompt_len: int, latency_ms: float) -> float:
    """b / step latency (decode), b·prompt / TTFT (prefill)."""
    return tokens_per_call(phase, batch, prompt_len) / (latency_ms / 1e3)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


@dataclass(frozen=True)
class Derived:
    tokens_per_s: float | None
    achieved_bw_bytes_per_s: float | None
    achieved_flops_per_s: float | None
    arithmetic_intensity: float | None
    mbu: float | None
    mfu: float | None


def derive(*, phase: str, batch: int, prompt_len: int, latency_ms: float | None, bytes_moved: float | None,
           flops: float | None, peak_bw_bytes_per_s: float | None, peak_flops_per_s: float | None) -> Derived:
    """Throughput, achieved bandwidth and FLOP rate, intensity, MBU and MFU of one point.

    `peak_flops_per_s` must be the peak for the point's dtype (the caller passes None where the device's
    measured peak is for another dtype): then MFU is None rather than a ratio against the wrong roof.
    """
    intensity = _ratio(flops, bytes_moved)
    if latency_ms is None or latency_ms <= 0:
        return Derived(None, None, None, intensity, None, None)
    seconds = latency_ms / 1e3
    bw = None if bytes_moved is None else bytes_moved / seconds
    rate = None if flops is None else flops / seconds
    return Derived(
        tokens_per_s=tokens_per_s(phase, batch, prompt_len, latency_ms),
        achieved_bw_bytes_per_s=bw,
        achieved_flops_per_s=rate,
        arithmetic_intensity=intensity,
        mbu=_ratio(bw, peak_bw_bytes_per_s),
        mfu=_ratio(rate, peak_flops_per_s),
    )


# NVML's total-energy counter is in millijoules, 64-bit: a delta below zero means the driver reset it.
def energy_from_counter_j(start_mj: float | None, end_mj: float | None) -> float | None:
    if start_mj is None or end_mj is None or end_mj < start_mj:
        return None
    return (end_mj - start_mj) / 1e3


def integrate_power_j(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Energy over [t0, t1] from (time_s, power_w) samples by trapezoids, power interpolated linearly
    between samples and held flat beyond the first and last. None for an empty window, or when no
    sample falls inside it and none brackets it (a single far-off reading is no measurement)."""
    pts = sorted((t, p) for t, p in samples if p is not None)
    inside = [(t, p) for t, p in pts if t0 < t < t1]
    bracketed = any(t <= t0 for t, _ in pts) and any(t >= t1 for t, _ in pts)
    if t1 <= t0 or not (inside or bracketed):
        return None
    curve = [(t0, _power_at(pts, t0)), *inside, (t1, _power_at(pts, t1))]
    return sum((tb - ta) * (pa + pb) / 2 for (ta, pa), (tb, pb) in zip(curve, curve[1:]))


def _power_at(pts: list[tuple[float, float]], t: float) -> float:
    if t <= pts[0][0]:
        return pts[0][1]
    for (ta, pa), (tb, pb) in zip(pts, pts[1:]):
        if ta <= t <= tb:
            return pa if tb == ta else pa + (pb - pa) * (t - ta) / (tb - ta)
    return pts[-1][1]


def per_token(total: float | None, tokens: int) -> float | None:
    return None if total is None or tokens <= 0 else total / tokens
