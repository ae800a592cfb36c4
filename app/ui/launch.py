"""Starting and following profiling runs from the app, without importing torch here.

A run is a row: the app checks the request with the profiler's torch-free `make_request`, stores it with
`store.repo.create_run`, and starts `python -m profiler execute RUN_ID --db URL` as a child process in its
own session (closing the browser tab does not stop it). Progress, time left and telemetry come back
through the store. A child that dies before it could mark its run (bad install, killed at start) leaves
its run queued or running: the app then fails the run with the last line of the child's log (where a
traceback names the error) as the reason, and the log's path.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app.ui import context
from model.config import PRESETS
from profiler.device import nvml_gpus
from profiler.request import RequestError, make_request
from profiler.runner import QUEUE_WORKER_PREFIX
from store import repo
from store.db import PROJECT_ROOT

LOG_DIR = Path(tempfile.gettempdir()) / "ssmplan-runs"
LAST_LINE_CHARS = 500
RERUNNABLE = ("failed", "cancelled")


@dataclass
class Child:
    proc: subprocess.Popen
    log: Path
    reaped: bool = False


class _Children:
    """The profiler processes this server started, by run id (shared by every session)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_run: dict[int, Child] = {}


@st.cache_resource
def _children() -> _Children:
    return _Children()


def check_request(raw: dict) -> tuple[dict | None, str | None]:
    """The complete request the profiler will run, or why it cannot: the profiler's own check, with a
    checkpoint folder read from its config.json and weight-file headers only (torch-free and cheap; the
    run matches every weight's name and shape when it starts). A folder is stored as an absolute path:
    the run starts in the project's folder, not necessarily this server's."""
    models = []
    for model in raw.get("models") or ():
        if model in PRESETS:
            models.append(model)
            continue
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            return None, f"{model!r} is neither a preset nor a checkpoint folder with a config.json"
        models.append(str(path.resolve()))
    try:
        return make_request({**raw, "models": models} if models else raw, match_weights=False).to_json(), None
    except RequestError as exc:
        return None, str(exc)


def command(run_id: int, url: str) -> list[str]:
    return [sys.executable, "-m", "profiler", "execute", str(run_id), "--db", url]


def start(request: dict, label: str = "") -> int:
    """Queues the (checked) request as a run and starts a profiler on it; returns the run id."""
    with context.session() as s:
        run = repo.create_run(s, request=request, label=label or request.get("scenario") or "custom grid")
    _spawn(run)
    return run.id


def local_devices() -> set[str]:
    """The devices a profiler started here can measure on: the CPU and each GPU NVML lists."""
    gpus, _ = nvml_gpus()
    return {"cpu", *(f"cuda:{g.index}" for g in gpus)}


def run_again(run_id: int) -> tuple[int | None, str]:
    """A new run with the request of failed or cancelled run `run_id`, and a sentence saying what became of
    it; the old run is left as it is. It starts here, as the Start button's runs do, when this machine has
    the device the request names; a run a queue worker took, or one for a device not here ("any" GPU, a
    GPU index this machine lacks), waits in the queue for a worker. (None, why) when it cannot run again."""
    with context.session() as s:
        old = repo.get_run(s, run_id=run_id)
        if old is None:
            return None, f"there is no run {run_id} in this store"
        if old.status not in RERUNNABLE:
            return None, f"run {run_id} is {old.status}: only a failed or cancelled run can be run again"
        request, label, worker = dict(old.request or {}), old.label, old.worker or ""
    checked, problem = check_request(request)
    if problem:
        return None, f"run {run_id}'s request cannot run again: {problem}"
    device = checked.get("device") or ("cuda:0" if nvml_gpus()[0] else "cpu")  # the profiler's own default
    with context.session() as s:
        run = repo.create_run(s, request=request, label=label)
    same = f"the same request as run {run_id} (which is kept as it was)"
    if worker.startswith(QUEUE_WORKER_PREFIX) or device not in local_devices():
        where, flag = ("any GPU", "--all-gpus") if device == "any" else (device, f"--device {device}")
        return run.id, (f"Run {run.id} is queued with {same}; a queue worker for {where} takes it "
                        f"(`python -m profiler worker {flag}`).")
    _spawn(run)
    return run.id, f"Run {run.id} started with {same}."


def _spawn(run) -> None:
    """Starts `python -m profiler execute` on the queued run, logging beside the other runs' logs."""
    url = context.store_url()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"run-{run.id}-{run.uid[:8]}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command(run.id, url), cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    children = _children()
    with children.lock:
        children.by_run[run.id] = Child(proc, log)


def _last_line(log: Path) -> str:
    """The last non-empty line of a child's log, where a traceback says what went wrong (a tail of the log
    would cut a traceback mid-path); the whole log stays on disk for the details."""
    if not log.exists():
        return ""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:LAST_LINE_CHARS] if lines else ""


def reap() -> list[int]:
    """Fails the runs whose profiler child (started here) exited without finishing them."""
    children = _children()
    failed = []
    with children.lock, context.session() as s:
        for run_id, child in children.by_run.items():
            code = None if child.reaped else child.proc.poll()
            if code is None:
                continue
            child.reaped = True
            run = repo.get_run(s, run_id=run_id)
            if run is not None and run.status in ("queued", "running"):
                last = _last_line(child.log)
                repo.update_run(s, run_id=run_id, status="failed",
                                error=f"the profiler process exited with code {code} before finishing the run"
                                      + (f": {last}" if last else "") + f" (its output: {child.log})")
                failed.append(run_id)
    return failed


def cancel(run_id: int) -> bool:
    """Asks the run to stop (a queued run is cancelled at once; a running one at its next check)."""
    with context.session() as s:
        return repo.request_cancel(s, run_id=run_id)
