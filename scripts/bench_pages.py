"""Time every dashboard page rendered from a store holding 100,000 measurements (bar: < 2 s per page).

    python scripts/bench_pages.py [--measurements 100000] [--store PATH] [--repeat 3]

Each page (and each Explore tab) is rendered headless with Streamlit's AppTest: "cold" after clearing
the app's caches (the store is read), "warm" the median of the following renders (what a click costs).
Pressing Plan (the planner over the whole store) is timed apart: it is an action, not a render.
The synthetic store is written through store.repo (tests/app/seed_stores.py) and kept at --store for
the next run. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

import logging  # noqa: E402

import streamlit as st  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

import seed_stores  # noqa: E402
from store import repo  # noqa: E402
from store.db import session  # noqa: E402

PAGES = ["overview", "profile", "explore", "plan", "export", "settings"]
EXPLORE_TABS = ["Decode latency", "Prefill latency", "Throughput", "Memory", "Roofline", "Points"]


def _store(path: Path, n: int) -> str:
    url = f"sqlite:///{path}"
    with session(url) as s:
        have = repo.counts(s)["measurements"]
    if have < n:
        t0 = time.perf_counter()
        seed_stores.large(url, n - have)
        print(f"wrote the store in {time.perf_counter() - t0:.0f} s")
    with session(url) as s:
        print(f"store: {path} with {repo.counts(s)['measurements']:,} measurements")
    return url


def _render(page: str, tab: str | None, repeat: int) -> tuple[float, float]:
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    st.cache_resource.clear()
    st.cache_data.clear()
    times = []
    for _ in range(repeat + 1):
        if tab is not None:
            at.session_state["explore_tab"] = tab
        at.switch_page(f"views/{page}.py")
        t0 = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t0)
        if at.exception:
            raise SystemExit(f"{page} raised: {at.exception[0].value}")
    return times[0], statistics.median(times[1:])


def _plan_click() -> float:
    """Seconds for pressing Plan on the coding-agent preset: the planner's work on the whole store."""
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=600)
    at.run()
    at.switch_page("views/plan.py").run()
    button = next(b for b in at.button if b.label == "Plan")
    t0 = time.perf_counter()
    button.click().run()
    if at.exception:
        raise SystemExit(f"planning raised: {at.exception[0].value}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--measurements", type=int, default=100_000)
    p.add_argument("--store", type=Path, default=Path(tempfile.gettempdir()) / "ssmplan-bench-pages.db")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    os.environ["SSMPLAN_DB"] = _store(args.store, args.measurements)

    results = {}
    print(f"{'page':<28}{'cold s':>8}{'warm s':>8}")
    for page in PAGES:
        for tab in EXPLORE_TABS if page == "explore" else [None]:
            name = f"{page}/{tab}" if tab else page
            cold, warm = _render(page, tab, args.repeat)
            results[name] = {"cold_s": round(cold, 3), "warm_s": round(warm, 3)}
            print(f"{name:<28}{cold:>8.2f}{warm:>8.2f}")
    worst = max(r["cold_s"] for r in results.values())
    worst_warm = max(r["warm_s"] for r in results.values())
    planning = _plan_click()
    print(f"slowest render: cold {worst:.2f} s, warm {worst_warm:.2f} s (bar: < 2 s); cpus: {os.cpu_count()}")
    print(f"pressing Plan (coding-agent-15, the planner on the whole store): {planning:.1f} s")
    print(json.dumps({"bench": "pages", "cpus": os.cpu_count(), "slowest_cold_s": worst,
                      "slowest_warm_s": worst_warm, "plan_click_s": round(planning, 2), "pages": results}))


if __name__ == "__main__":
    main()
