"""The Mamba-3 paper's latency table, composed from our measurements and set beside the paper's.

Workload (blog part 1, "Benchmarking Latencies"; the team's reference-numbers notes §1a): batch 128 on
one H100-SXM, prefill n tokens, then decode n tokens; seconds. We compose
    prefill + decode(n) = TTFT(128, n) + Σ_{c=n}^{2n−1} step(128, c)
with the sum taken as n × the mean step over [n, 2n] (trapezoids through the measured decode contexts,
which must include n and 2n). When the whole batch's prefill does not fit in one call (a 128 × 16384
prefill holds ~36 GB of projections for a 1.5B Mamba), it is composed from the largest smaller batch that
was measured, run as micro-batches one after another — as a serving engine's chunked prefill does — and
the row says so. A decode step that ran out of memory makes the row n/a, with the reason: that is the
capacity effect the planner models (128 sequences of 32k tokens of Llama KV need 128 GiB).
"""

from __future__ import annotations

import pandas as pd

from profiler.scenarios import PAPER_BATCH, PAPER_N

# (prefill s, prefill + decode s) per n in PAPER_N; vLLM's Llama-3.2-1B row stands for our llama-3.2-1b.
PAPER = {
    "llama-3.2-1b": ((0.26, 0.52, 1.08, 2.08, 12.17), (4.45, 9.60, 20.37, 58.64, 976.50)),
    "mamba2-1.5b": ((0.51, 1.02, 2.02, 4.02, 16.22), (4.66, 9.32, 18.62, 37.22, 149.02)),
    "mamba3-siso-1.5b": ((0.51, 1.01, 2.02, 4.01, 16.22), (4.39, 8.78, 17.57, 35.11, 140.61)),
    "mamba3-mimo-1.5b": ((0.60, 1.21, 2.42, 4.76, 19.44), (4.74, 9.48, 18.96, 37.85, 151.81)),
}


def mean_over(points: list[tuple[int, float]], lo: int, hi: int) -> float | None:
    """Mean of a piecewise-linear curve through (x, y) points over [lo, hi]; None unless points at both
    ends exist."""
    pts = sorted(p for p in points if lo <= p[0] <= hi)
    if not pts or pts[0][0] != lo or pts[-1][0] != hi:
        return None
    if hi == lo:
        return pts[0][1]
    area = sum((xb - xa) * (ya + yb) / 2 for (xa, ya), (xb, yb) in zip(pts, pts[1:]))
    return area / (hi - lo)


def paper_row(frame: pd.DataFrame, preset: str, n: int, batch: int = PAPER_BATCH) -> dict:
    mine = frame[(frame["preset"] == preset) & (frame["batch"] == batch)]
    pre = mine[(mine["phase"] == "prefill") & (mine["prompt_len"] == n)]
    dec = mine[(mine["phase"] == "decode") & (mine["context_len"].between(n, 2 * n))]
    micro = None
    if not pre.empty and bool(pre["oom"].iloc[0]):
        smaller = frame[(frame["preset"] == preset) & (frame["phase"] == "prefill") & (frame["prompt_len"] == n)
                        & (frame["batch"] < batch) & ~frame["oom"].astype(bool)]
        if not smaller.empty:
            micro = smaller.loc[smaller["batch"].idxmax()]
    row = dict(model=preset, n=n, prefill_s=None, decode_s=None, total_s=None, note=None)
    paper = PAPER.get(preset)
    if paper and n in PAPER_N:
        i = PAPER_N.index(n)
        row.update(paper_prefill_s=paper[0][i], paper_total_s=paper[1][i])
    if pre.empty:
        row["note"] = "prefill not measured"
        return row
    if micro is not None:
        b = int(micro["batch"])
        row["prefill_s"] = batch / b * float(micro["latency_p50_ms"]) / 1e3
        row["note"] = f"prefill as {batch / b:g} micro-batches of {b} ({batch}×{n} does not fit in one call)"
    elif bool(pre["oom"].iloc[0]):
        row["note"] = f"prefill of {batch}×{n} ran out of memory"
        return row
    else:
        row["prefill_s"] = float(pre["latency_p50_ms"].iloc[0]) / 1e3
    oom = dec[dec["oom"]]
    if not oom.empty:
        row["note"] = f"decode at batch {batch}, context {int(oom['context_len'].min())} ran out of memory"
        return row
    mean_ms = mean_over(list(zip(dec["context_len"].astype(int), dec["latency_p50_ms"].astype(float))), n, 2 * n)
    if mean_ms is None:
        row["note"] = f"decode not measured at both context {n} and {2 * n}"
        return row
    row["decode_s"] = n * mean_ms / 1e3
    row["total_s"] = row["prefill_s"] + row["decode_s"]
    if row.get("paper_total_s"):
        row["ratio_to_paper"] = row["total_s"] / row["paper_total_s"]
    return row


def paper_table(frame: pd.DataFrame) -> list[dict]:
    """A row per (model, n) that the frame has prefill points for at the paper's batch."""
    pre = frame[(frame["phase"] == "prefill") & (frame["batch"] == PAPER_BATCH)]
    pairs = sorted({(p, int(n)) for p, n in zip(pre["preset"], pre["prompt_len"])})
    return [paper_row(frame, p, n) for p, n in pairs]


def format_table(rows: list[dict]) -> str:
    if not rows:
        return "no paper-workload points (batch 128 prefill) in this run"

    def s(v):
        return "n/a" if v is None else f"{v:.2f}"

    head = (f"{'model':<18} {'n':>6} {'prefill s':>9} {'paper':>6} {'pre+dec s':>9} {'paper':>7} {'ours/paper':>10}"
            "  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.get("ratio_to_paper")
        lines.append(f"{r['model'][:18]:<18} {r['n']:>6} {s(r['prefill_s']):>9} {s(r.get('paper_prefill_s')):>6} "
                     f"{s(r['total_s']):>9} {s(r.get('paper_total_s')):>7} "
                     f"{'n/a' if ratio is None else f'{ratio:.2f}':>10}  {r['note'] or ''}")
    return "\n".join(lines)
