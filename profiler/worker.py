"""Queue workers: one process per GPU takes queued runs from the shared store, one at a time.

The store is the work queue (store/queue.py): a worker claims the oldest queued run whose request names
its device or "any" GPU, executes it on its own GPU, and heartbeats while it does. A run whose worker
stopped heartbeating goes back to the queue, and whoever claims it next resumes it without repeating
finished points. `--all-gpus` starts one worker process per GPU that NVML sees.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from profiler import provenance, runner
from profiler.device import nvml_gpus
from store import queue
from store.db import get_engine, session


def worker_name(device: str) -> str:
    return f"{runner.QUEUE_WORKER_PREFIX}{provenance.host()}:{device}:{os.getpid()}"


def work(url: str, *, device: str, poll_s: float = 2.0, idle_exit_s: float | None = None,
         stale_after_s: float = runner.STALE_AFTER_S, log=None) -> int:
    """Claim and execute runs until idle for `idle_exit_s` (None: forever); returns how many ran."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    get_engine(url)
    name = worker_name(device)
    ran, idle_since = 0, time.monotonic()
    log(f"{name}: waiting for queued runs")
    while True:
        with session(url) as s:
            for run_id in queue.requeue_stale(s, stale_after_s=stale_after_s):
                log(f"{name}: run {run_id} went back to the queue (its worker stopped heartbeating)")
            run = queue.claim_next_run(s, worker=name, device_filter=device)
        if run is None:
            if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                return ran
            time.sleep(poll_s)
            continue
        log(f"{name}: run {run.id} ({run.label or 'unlabelled'})")
        try:
            done = runner.execute(url, run.id, worker=name, claimed=True, device=device)
            log(f"{name}: run {run.id} {done.status}")
        except ValueError as exc:  # an invalid request: execute marked the run failed
            log(f"{name}: run {run.id} refused: {exc}")
        ran += 1
        idle_since = time.monotonic()


def all_gpus(url: str, *, poll_s: float, idle_exit_s: float | None) -> int:
    """One worker process per GPU; returns when all have exited (or on Ctrl-C, after stopping them)."""
    gpus, why = nvml_gpus()
    if not gpus:
        raise runner.RunError(f"--all-gpus: no GPU visible ({why or 'NVML lists none'})")
    cmd = [sys.executable, "-m", "profiler", "worker", "--db", url, "--poll", str(poll_s)]
    if idle_exit_s is not None:
        cmd += ["--exit-when-idle", str(idle_exit_s)]
    procs = [subprocess.Popen(cmd + ["--device", f"cuda:{g.index}"], cwd=provenance.PROJECT_ROOT) for g in gpus]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        return max(p.wait() for p in procs)
