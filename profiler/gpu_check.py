"""Produce the shipped reference dataset on a GPU machine: the default sweep and the paper workload into
a store, then one bundle file with full provenance (store.bundle), the summary and the paper table.

    python -m profiler.gpu_check --out OUT_DIR [--steps quick,paper,ncu] [--budget-s 540]

Each step is a run labelled `reference <step>` in `OUT_DIR/reference.db` (or --db). The budget is shared
by the steps and enforced as a run time limit, so the command ends, with its files written, before an
outer limit kills it; a step cut short is resumed by running the command again on the same store (done
steps are skipped, finished points are not repeated). Steps:
  quick   the `quick` scenario (every family; budgeted at 8 minutes on one H100)
  ncu     Nsight Compute counters of one decode step (batch 1, 4096 tokens) of a Mamba-3 and a Llama model
  paper   the `paper` scenario (batch 128, n = 512 … 16384) and its table beside the paper's
  cpu-demo  the tiny presets on the CPU (to try this command where there is no GPU: --device cpu)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from profiler import paper, progress, runner
from profiler.progress import ProgressBar
from profiler.request import make_request
from store import bundle, repo
from store.db import dispose_all, get_engine, session
from store.models import Run

STEPS = {
    "quick": {"scenario": "quick"},
    "ncu": {"models": ["mamba3-siso-1.5b", "llama-3.2-1b"], "batches": [1], "contexts": [4096], "ncu": True},
    "paper": {"scenario": "paper"},
    "cpu-demo": {"scenario": "cpu-demo"},  # the same pipeline on a machine without a GPU
}
# Anchor targets (the team's anchors.md, "Targets"): (model, phase, batch, tokens) → ms at most.
TARGETS_MS = {
    ("mamba3-siso-1.5b", "decode", 1, 512): 1.25,
    ("mamba3-siso-1.5b", "decode", 128, 512): 6.0,
    ("llama-3.2-1b", "decode", 1, 512): 1.0,
    ("mamba3-siso-1.5b", "prefill", 128, 512): 350.0,
}


def _find(s, label: str) -> Run | None:
    runs = repo.read_runs(s)
    mine = runs[runs["label"] == label]
    return None if mine.empty else repo.get_run(s, run_id=int(mine["id"].max()))


def _checkpoint(url: str) -> None:
    """Fold SQLite's write-ahead log into the file, so the store travels as one file."""
    engine = get_engine(url)
    if engine.dialect.name == "sqlite":
        with engine.connect() as con:
            con.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    dispose_all()


def anchor_lines(frame) -> list[str]:
    out = []
    for (model, phase, batch, tokens), target in TARGETS_MS.items():
        col = "prompt_len" if phase == "prefill" else "context_len"
        hit = frame[(frame["preset"] == model) & (frame["phase"] == phase) & (frame["batch"] == batch)
                    & (frame[col] == tokens) & ~frame["oom"]]
        got = "not measured" if hit.empty else f"{hit['latency_p50_ms'].iloc[0]:.3f} ms"
        out.append(f"{model} {phase} b{batch} @{tokens}: {got} (target ≤ {target:g} ms)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiler.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the bundle, summary and store")
    p.add_argument("--db", help="store (default: OUT/reference.db); reuse it to resume")
    p.add_argument("--steps", default="quick,paper,ncu", help="comma-separated, in order (default: quick,paper,ncu)")
    p.add_argument("--budget-s", type=float, default=540.0, help="wall-clock seconds for all steps together")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--impl", default=None, help="scan implementation (default: triton)")
    p.add_argument("--bundle-name", default="reference.json")
    a = p.parse_args(argv)
    start = time.monotonic()
    a.out.mkdir(parents=True, exist_ok=True)
    url = a.db or f"sqlite:///{(a.out / 'reference.db').resolve()}"
    get_engine(url)
    steps = [x for x in a.steps.split(",") if x]
    unknown = [x for x in steps if x not in STEPS]
    if unknown:
        print(f"error: unknown step(s) {', '.join(unknown)}; valid: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    for step in steps:
        left = a.budget_s - (time.monotonic() - start)
        label = f"reference {step}"
        with session(url) as s:
            existing = _find(s, label)
        if existing is not None and existing.status == "done":
            print(f"{label}: done already (run {existing.id})", file=sys.stderr)
            continue
        if left < 30:
            print(f"{label}: skipped, {left:.0f} s of budget left; run again to continue", file=sys.stderr)
            continue
        print(f"{label}: {left:.0f} s of budget left", file=sys.stderr, flush=True)
        opts = dict(bar=ProgressBar(), verbose=True, time_limit_s=left)
        if existing is None:
            raw = {**STEPS[step], "device": a.device, "label": label, "telemetry_interval_s": 0.2}
            if a.impl:
                raw["impl"] = a.impl
            run = runner.execute(url, runner.create_run(url, make_request(raw)), **opts)
        else:
            run = runner.execute(url, existing.id, **opts)
        print(f"{label}: run {run.id} {run.status}" + (f" ({run.error})" if run.error else ""), file=sys.stderr)
    with session(url) as s:
        runs = repo.read_runs(s)
        ids = [int(i) for i, n in zip(runs["id"], runs["points_done"]) if n > 0]
        frame = repo.read_measurements(s, run_ids=ids)
        if ids:
            bundle.write_bundle(bundle.export_runs(s, run_ids=sorted(ids)), a.out / a.bundle_name)
        docs = [progress.run_document(s, repo.get_run(s, run_id=i)) for i in sorted(ids)]
    lines = [progress.summary_table(frame), "", "The paper's workload (seconds):",
             paper.format_table(paper.paper_table(frame)), "", "Anchor targets:", *anchor_lines(frame)]
    for doc in docs:
        dev = doc["device"] or {}
        lines.append(f"run {doc['run']['id']} {doc['run']['label']}: {doc['run']['status']} on {dev.get('name')} "
                     f"(copy {dev.get('measured_copy_bw_bytes_per_s') or 0:.3g} B/s, bf16 "
                     f"{dev.get('measured_bf16_flops_per_s') or 0:.3g} FLOP/s), {len(doc['measurements'])} points")
    (a.out / "summary.txt").write_text("\n".join(lines) + "\n")
    _checkpoint(url)
    (a.out / "runs.json").write_text(json.dumps([{k: d[k] for k in d if k != "measurements"} for d in docs], indent=1))
    print("\n".join(lines), file=sys.stderr)
    print(f"wrote {a.out / a.bundle_name} ({len(ids)} runs) in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
