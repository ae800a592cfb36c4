"""What a person (stderr) and a program (JSON on stdout) see of a run: the progress bar with time
left, the summary table at the end, and the run as one JSON document."""

from __future__ import annotations

import math
import sys
import time
from datetime import datetime
from typing import TextIO

import pandas as pd

from profiler.metrics import UNSTABLE_SPREAD, unstable_mask
from profiler.scenarios import capacity_boundary
from store import repo
from store.models import Device, Run

GIB = 2**30


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class ProgressBar:
    """`[######----] 12/45 points · 1m20s left · model` on one redrawn line (a terminal), or a line per
    10% and at most every 30 s (a log file)."""

    def __init__(self, stream: TextIO | None = None, width: int = 28):
        self.stream, self.width = stream or sys.stderr, width
        self.tty = self.stream.isatty()
        self._last_pct = -1
        self._last_t = 0.0

    def line(self, done: int, total: int, eta_s: float | None, label: str) -> str:
        frac = min(done / total, 1.0) if total else 0.0
        filled = int(frac * self.width)
        return (f"[{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} points · "
                f"{fmt_duration(eta_s)} left · {label}")

    def update(self, done: int, total: int, eta_s: float | None, label: str) -> None:
        text = self.line(done, total, eta_s, label)
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
            return
        pct = int(100 * done / total) // 10 if total else 0
        now = time.monotonic()
        if pct != self._last_pct and now - self._last_t >= 1 or now - self._last_t >= 30:
            self._last_pct, self._last_t = pct, now
            print(text, file=self.stream, flush=True)

    def finish(self, status: str) -> None:
        if self.tty:
            self.stream.write("\n")
        print(f"run {status}", file=self.stream, flush=True)


def _num(v, spec: str, scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v * scale, spec)


def summary_table(frame: pd.DataFrame) -> str:
    """One line per point: the shape, latency (p50 and p10–p90), throughput, memory, MBU/MFU, energy."""
    if frame.empty:
        return "no points measured"
    head = (f"{'model':<20} {'phase':<7} {'batch':>5} {'tokens':>6} {'p50 ms':>9} {'p10–p90 ms':>17} "
            f"{'tok/s':>10} {'peak GiB':>8} {'MBU':>5} {'MFU':>5} {'mJ/tok':>7}  implementation / notes")
    lines = [head, "-" * len(head)]
    order = ["preset", "phase", "batch", "prompt_len", "context_len"]
    shaky = unstable_mask(frame)
    for r in frame.sort_values(order, ascending=[True, False, True, True, True]).itertuples():
        length = r.prompt_len if r.phase == "prefill" else r.context_len
        flags = "OUT OF MEMORY" if r.oom else r.implementation
        if r.gpu_shared:
            flags += " · GPU SHARED"
        if shaky[r.Index]:
            flags += " · UNSTABLE"
        spread = "–" if r.oom else f"{_num(r.latency_p10_ms, '.3f')}–{_num(r.latency_p90_ms, '.3f')}"
        lines.append(
            f"{r.preset[:20]:<20} {r.phase:<7} {r.batch:>5} {length:>6} {_num(r.latency_p50_ms, '.3f'):>9} "
            f"{spread:>17} {_num(r.tokens_per_s, ',.0f'):>10} {_num(r.peak_mem_bytes, '.2f', 1 / GIB):>8} "
            f"{_num(r.mbu, '.0%'):>5} {_num(r.mfu, '.0%'):>5} {_num(r.energy_per_token_j, '.2f', 1e3):>7}  {flags}"
        )
    if shaky.any():
        lines += ["", f"{int(shaky.sum())} point(s) UNSTABLE: their calls' p90 above {UNSTABLE_SPREAD}× their p10 "
                  "(another load on the machine, a throttled clock, or calls too short to settle): measure them again "
                  "on an idle machine"]
    return "\n".join(lines)


def capacity_table(frame: pd.DataFrame) -> list[dict]:
    """Per model and context: the largest decode batch that fitted and the smallest that did not."""
    out = []
    dec = frame[frame["phase"] == "decode"]
    for (preset, context), g in dec.groupby(["preset", "context_len"]):
        lo, hi = capacity_boundary({int(b): not bool(o) for b, o in zip(g["batch"], g["oom"])})
        out.append(dict(model=preset, context=int(context), max_batch=lo, first_oom_batch=hi))
    return out


def _clean(v):
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _clean(v.item())
    return v


def run_document(s, run: Run) -> dict:
    """The run, its device and its points as plain JSON-ready data."""
    frame = repo.read_measurements(s, run_ids=[run.id])
    device = s.get(Device, run.device_id) if run.device_id else None
    doc = {
        "run": {k: _clean(v) for k, v in run.model_dump().items()},
        "device": None if device is None else {k: _clean(v) for k, v in device.model_dump().items()},
        "measurements": [{k: _clean(v) for k, v in rec.items()} for rec in frame.to_dict("records")],
    }
    kind = (run.request or {}).get("kind")
    if kind == "capacity":
        doc["capacity"] = capacity_table(frame)
    if kind == "paper":
        from profiler.paper import paper_table

        doc["paper_table"] = paper_table(frame)
    return doc
