"""The dashboard in a real browser: Playwright drives Debian's chromium against `streamlit run app/main.py`
on a free localhost port with a temporary store. Profile a tiny preset on the CPU from the Profile page,
watch it finish, find its points on Explore, plan the coding-agent preset (the CPU points left out beside the
store's GPU figures, and said so), download the finance CSV.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from store import repo
from store.db import dispose_all, session

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
START_TIMEOUT_S = 90
RUN_TIMEOUT_S = 300
UI_TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, store URL) of the app serving a fresh temporary store."""
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); scripts/test.sh installs it")
    folder = tmp_path_factory.mktemp("e2e")
    url = f"sqlite:///{folder / 'store.db'}"
    # The server starts on a store holding only the planner's analytic GPU stand-in (tagged
    # "analytic-roofline", never mistaken for a measurement) so Plan has a GPU, and no reference bundles
    # (an empty SSMPLAN_REFERENCE_DIR): the test then sees exactly the run it starts. Seeding a new store
    # with the shipped bundles is tested in tests/app/test_first_start.py.
    from app.planning.analytic import write_analytic_store

    with session(url) as s:
        write_analytic_store(s)
    dispose_all()
    empty = folder / "no-reference-bundles"
    empty.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = folder / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
             "--server.headless", "true", "--", "--db", url],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SSMPLAN_REFERENCE_DIR": str(empty)},
        )
    try:
        _wait_healthy(base, proc, log)
        yield base, url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        dispose_all()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        pg.set_default_timeout(UI_TIMEOUT_MS)
        yield pg
        browser.close()


def _go(page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", name=name, exact=True).wait_for()


def _choose(page, select_label: str, option: str) -> None:
    page.locator('[data-testid="stSelectbox"]').filter(has_text=select_label).click()
    page.get_by_role("option", name=option, exact=True).click()


def _started_run(url: str):
    """The newest run that this test started from the Profile page: a CPU run of mamba3-siso-tiny (the
    shipped reference runs, loaded while the first page renders, are GPU runs of other models)."""
    with session(url) as s:
        runs = repo.read_runs(s)
    mine = runs[[r.get("device") == "cpu" and r.get("models") == ["mamba3-siso-tiny"] for r in runs["request"]]]
    return None if mine.empty else mine.iloc[0]


def test_profile_explore_plan_export(served, page):
    base, url = served
    page.goto(base)
    page.get_by_role("heading", name="Overview", exact=True).wait_for()

    _go(page, "Profile")
    _choose(page, "Scenario", "custom grid")
    page.get_by_text("Batch sizes").wait_for()
    page.get_by_role("button", name="Start profiling").click()
    deadline = time.monotonic() + RUN_TIMEOUT_S
    run = _started_run(url)
    while run is None or run["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the run did not finish within {RUN_TIMEOUT_S} s: {run}"
        time.sleep(1)
        run = _started_run(url)
    assert run["status"] == "done", f"run {run['id']} ended {run['status']}: {run['error']}"
    run_id = int(run["id"])
    with session(url) as s:
        points = repo.read_measurements(s, run_ids=[run_id])
    assert len(points) == 8 and set(points["preset"]) == {"mamba3-siso-tiny"}  # 2 batches × (2 prompts + 2 contexts)
    assert set(points["device_kind"]) == {"cpu"} and (points["latency_p50_ms"] > 0).all()
    page.get_by_role("heading", name="Running now").wait_for(state="detached")

    _go(page, "Explore")
    page.locator('[data-testid="stMultiSelect"]').filter(has_text="Run").click()
    name = f"#{run_id} · {run['label']}" if run["label"] else f"#{run_id}"
    page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_text("8 point(s), the latest measurement of each").wait_for()
    page.locator(".vega-embed").first.wait_for()

    _go(page, "Plan")
    # the CPU run's tiny model is a pipeline check: beside the store's GPU figures it is left out, and said so
    page.get_by_text("8 CPU pipeline-check measurements").wait_for()
    page.get_by_role("button", name="Plan", exact=True).click()
    page.get_by_text("Recommendation:").wait_for(timeout=180_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the finance CSV").click()
    text = Path(download.value.path()).read_text()

    from app.planning import FINANCE_COLUMNS

    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(FINANCE_COLUMNS)
    assert {r["workload"] for r in rows} == {"coding-agent-15"}
    picked = [r for r in rows if r["recommended"] == "True"]
    assert len(picked) == 1 and picked[0]["status"] == "ok" and float(picked[0]["usd_per_task"]) > 0
    assert all(r["price_as_of"] for r in rows if r["status"] == "ok")
    assert not any(v.startswith(("=", "+", "@")) for r in rows for v in r.values())
    assert {r["cpu_measurements"] for r in rows} == {"left out (8 CPU measurements; the store holds GPU measurements)"}
    assert "mamba3-siso-tiny" not in {r["model"] for r in rows}

    _go(page, "Export")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the measurements CSV").click()
    measured = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    from app.ui.exports import MEASUREMENT_COLUMNS

    assert list(measured[0]) == list(MEASUREMENT_COLUMNS)
    assert sum(r["run_id"] == str(run_id) for r in measured) == 8
