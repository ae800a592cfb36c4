"""A workload preset's plan rows, from the command line: the figures docs/planner-notes.md quotes.

    python scripts/plan_rows.py [WORKLOAD ...] [--db URL | --reference DIR] [--tier on-demand] [--project]

By default the planner runs on a fresh temporary store seeded with the shipped reference bundles
(`data/reference/`, or the bundles in --reference DIR), as the app is on its first start; --db plans on an
existing store instead. Options: on-demand prices, no projection to other GPUs (--project adds the
default ones), the bf16-state what-if rows included, CPU pipeline-check measurements left out beside GPU ones
(--include-cpu plans them; a note says how many were left out). Prints one table per workload, then the pick and its
caveats.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import pandas as pd  # noqa: E402

from app.planning import TIERS, WORKLOAD_PRESETS, PlanOptions, default_price_book, plan  # noqa: E402
from store import repo  # noqa: E402
from app.planning.errors import PlanningError  # noqa: E402
from store.bundle import BundleError, seed_reference  # noqa: E402
from store.db import StoreError, dispose_all, session  # noqa: E402

COLUMNS = ["model", "gpu", "status", "concurrency_per_gpu", "bound_by", "tpot_ms", "task_latency_p50_s",
           "prefill_gpu_s_per_task", "decode_gpu_s_per_task", "usd_per_task"]


def read_store(db: str | None, reference: Path | None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(measurements, models, devices) of `db`, or of a temporary store seeded from `reference` (removed after)."""
    if db is not None:
        with session(db) as s:
            return repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
    with tempfile.TemporaryDirectory(prefix="ssmplan-plan-") as tmp:
        url = f"sqlite:///{tmp}/plan.db"
        try:
            with session(url) as s:
                seed_reference(s, folder=reference, archive=Path(tmp))  # an empty archive: nothing to retire
                return repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
        finally:
            dispose_all()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workloads", nargs="*", default=["coding-agent-15"], help="presets: " + ", ".join(WORKLOAD_PRESETS))
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--db", help="plan on this store (URL or SQLite file)")
    src.add_argument("--reference", type=Path, help="seed a temporary store from the bundles in this folder")
    ap.add_argument("--tier", default="on-demand", choices=TIERS)
    ap.add_argument("--project", action="store_true", help="also project to the default GPUs without data")
    ap.add_argument("--include-cpu", action="store_true",
                    help="plan CPU pipeline-check measurements (by default left out beside GPU ones, as in the app)")
    args = ap.parse_args(argv)
    unknown = [w for w in args.workloads if w not in WORKLOAD_PRESETS]
    if unknown:
        ap.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(WORKLOAD_PRESETS)}")
    if args.reference is not None and not sorted(args.reference.glob("*.json")):
        ap.error(f"{args.reference} holds no bundle (*.json)")
    try:
        measurements, models, devices = read_store(args.db, args.reference)
        return _print_plans(args, measurements, models, devices)
    except (PlanningError, StoreError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _print_plans(args, measurements: pd.DataFrame, models: pd.DataFrame, devices: pd.DataFrame) -> int:
    options = PlanOptions(tier=args.tier, bf16_state=True, crossovers=False, sensitivity=False, surface_errors=False,
                          include_cpu=args.include_cpu, **({} if args.project else {"project_to": ()}))
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        for name in args.workloads:
            p = plan(WORKLOAD_PRESETS[name], measurements, price_book=default_price_book(), options=options,
                     models=models, devices=devices)
            print(f"{name} ({args.tier})")
            print(p.rows[COLUMNS].to_string(index=False))
            rec = p.recommendation
            print(f"pick: {rec.model} on {rec.gpu}, ${rec.usd_per_task:.6f} per task" if rec
                  else f"pick: none ({p.messages[0] if p.messages else 'no feasible row'})")
            for caveat in rec.caveats if rec else ():
                print(f"caveat: {caveat}")
            if p.cpu.count:
                print(f"note: CPU pipeline-check measurements: {p.cpu.summary}"
                      + ("; --include-cpu plans them" if p.cpu.left_out else ""))
            for message in p.messages if rec else p.messages[1:]:  # without a pick, the first is said above
                print(f"note: {message}")
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
