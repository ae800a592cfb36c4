"""A run's life in the process the user (or the app, or a queue worker) started: claim it, measure its
models in child processes, heartbeat, watch for a cancel and the time limit, show progress, finish it.

This process never touches the GPU: each model is measured in a child process of its own on CUDA (a
CUDA error cannot poison the others), all models in one child on the CPU (nothing to poison there, and
one torch import instead of five). Children write points to the store as they go; this process reads
progress from the store. A run whose process is gone (killed, machine rebooted) is marked failed by the
next profiler that starts; executing it again resumes, skipping the points already stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from profiler import provenance
from profiler.device import parse_device
from profiler.progress import ProgressBar
from profiler.request import Request, make_request, plan
from profiler.scenarios import capacity_estimate
from store import queue, repo
from store.db import get_engine, session
from store.models import Measurement, Run, utcnow

STALE_AFTER_S = 60.0
HEARTBEAT_S = 2.0
CANCEL_GRACE_S = 10.0
QUEUE_WORKER_PREFIX = "worker:"
EXIT_STOPPED = 3  # a measuring process that stopped on a cancel or because its parent went away


class RunError(RuntimeError):
    """A run that cannot be executed as asked (unknown, already running elsewhere)."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def reap_dead_runs(s, *, host: str | None = None, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Mark failed the running runs whose profiler is gone: on this host, its process no longer exists;
    anywhere, no heartbeat for `stale_after_s`. Queue workers' runs are left to `queue.requeue_stale`."""
    host = host or provenance.host()
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    reaped = []
    for run in s.exec(select(Run).where(Run.status == "running")).scalars().all():
        if (run.worker or "").startswith(QUEUE_WORKER_PREFIX):
            continue
        beat = run.heartbeat_at
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=cutoff.tzinfo)
        gone = run.host == host and run.pid is not None and not pid_alive(run.pid)
        if gone or beat is None or beat < cutoff:
            why = f"process {run.pid} on {run.host} is gone" if gone else f"no heartbeat since {beat}"
            repo.update_run(s, run_id=run.id, status="failed",
                            error=f"{why} (killed?); resume with `python -m profiler execute {run.id}`")
            reaped.append(run.id)
    return reaped


def create_run(url: str, req: Request) -> int:
    """A queued run row holding the request."""
    with session(url) as s:
        return repo.create_run(s, request=req.to_json(), label=req.label or (req.scenario or "custom grid")).id


def _points_total(req: Request) -> int:
    plans = plan(req)
    per_capacity = capacity_estimate(req.capacity_max_batch)
    return sum(len(mp.points) + per_capacity * len(mp.capacity_contexts) for mp in plans)


def _groups(req: Request, device: str | None) -> list[list[int]]:
    """Model indices per measuring process: one per model on CUDA, all together on the CPU."""
    n = len(req.models)
    return [list(range(n))] if parse_device(device or req.device)[0] == "cpu" else [[i] for i in range(n)]


@dataclass
class _Child:
    proc: subprocess.Popen
    label: str
    tail: deque = field(default_factory=lambda: deque(maxlen=40))
    terminated: bool = False


def _drain(child: _Child, verbose: bool) -> None:
    for line in child.proc.stderr:
        child.tail.append(line.rstrip())
        if verbose:
            print(f"  {line.rstrip()}", file=sys.stderr, flush=True)


def _spawn(url: str, run_id: int, indices: list[int], label: str, verbose: bool, device: str | None) -> _Child:
    cmd = [sys.executable, "-m", "profiler", "measure", str(run_id), "--db", url,
           "--models", ",".join(map(str, indices)), "--parent-pid", str(os.getpid())]
    if device is not None:
        cmd += ["--device", device]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=provenance.PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    child = _Child(proc, label)
    threading.Thread(target=_drain, args=(child, verbose), daemon=True).start()
    return child


class _Supervisor(threading.Thread):
    """Heartbeat, ETA, progress bar, time limit, and a cancel that the child does not honour in time."""

    def __init__(self, url: str, run_id: int, worker: str, time_limit_s: float | None, bar: ProgressBar | None):
        super().__init__(name="run-supervisor", daemon=True)
        self.url, self.run_id, self.worker, self.time_limit_s, self.bar = url, run_id, worker, time_limit_s, bar
        self.started = time.monotonic()
        self.child: _Child | None = None
        self.label = ""
        self.timed_out = False
        self._halt = threading.Event()
        self._cancel_seen: float | None = None
        with session(url) as s:
            self.done_at_start = repo.get_run(s, run_id=run_id).points_done

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def tick(self) -> None:
        with session(self.url) as s:
            run = repo.get_run(s, run_id=self.run_id)
            elapsed = time.monotonic() - self.started
            new = run.points_done - self.done_at_start
            left = max(run.points_total - run.points_done, 0)
            eta = elapsed / new * left if new > 0 else None
            queue.heartbeat(s, run_id=self.run_id, worker=self.worker)
            repo.update_run(s, run_id=self.run_id, eta_s=eta)
            limit = self.time_limit_s
            if limit is not None and elapsed > limit and not run.cancel_requested:
                self.timed_out = True
                repo.request_cancel(s, run_id=self.run_id)
            cancel = run.cancel_requested or self.timed_out
            last = s.exec(select(Measurement.point_key).where(Measurement.run_id == self.run_id)
                          .order_by(Measurement.id.desc()).limit(1)).scalar()
        if self.bar is not None:
            label = f"{last.split('|')[0]} …" if last else self.label
            self.bar.update(run.points_done, run.points_total, eta, label)
        if cancel:
            self._cancel_seen = self._cancel_seen or time.monotonic()
            child = self.child
            waited = time.monotonic() - self._cancel_seen
            if child is not None and child.proc.poll() is None and waited > CANCEL_GRACE_S:
                child.terminated = True
                child.proc.send_signal(signal.SIGTERM if waited < 2 * CANCEL_GRACE_S else signal.SIGKILL)

    def run(self) -> None:
        while not self._halt.wait(0.5):
            try:
                self.tick()
            except Exception as exc:  # a store hiccup must not end the run; the next tick retries
                print(f"supervisor: {type(exc).__name__}: {exc}", file=sys.stderr)


def _append_error(url: str, run_id: int, message: str) -> None:
    with session(url) as s:
        run = repo.get_run(s, run_id=run_id)
        repo.update_run(s, run_id=run_id, error="\n".join(x for x in (run.error, message) if x)[:4000])


def execute(url: str, run_id: int, *, worker: str | None = None, claimed: bool = False, device: str | None = None,
            time_limit_s: float | None = None, isolate: bool = True, bar: ProgressBar | None = None,
            verbose: bool = False, build: Callable | None = None) -> Run:
    """Run (or resume) a run to its end; returns the finished row. `claimed`: a queue worker already
    marked it running as `worker`; `device`: where to measure instead of the request's device (a
    worker's GPU); `time_limit_s`: cancel after this long (default: the request's). `isolate=False`
    measures in this process (tests, debugging)."""
    get_engine(url)
    host, pid = provenance.host(), os.getpid()
    worker = worker or f"cli:{host}:{pid}"
    with session(url) as s:
        reap_dead_runs(s, host=host)
        run = repo.get_run(s, run_id=run_id)
        if run is None:
            raise RunError(f"no run with id {run_id}")
        if run.status == "done":
            return run
        if not claimed:
            run = repo.claim_run(s, run_id=run_id, worker=worker, pid=pid, host=host)
            if run is None:
                current = repo.get_run(s, run_id=run_id)
                raise RunError(f"run {run_id} is {current.status} (process {current.pid} on {current.host}); "
                               "cancel it first or wait for it")
        try:
            req = make_request(run.request)
        except ValueError as exc:
            repo.update_run(s, run_id=run_id, status="failed", error=f"invalid request: {exc}")
            raise
        done = len(repo.finished_point_keys(s, run_id=run_id))
        repo.update_run(s, run_id=run_id, points_total=max(_points_total(req), done), points_done=done,
                        git_revision=provenance.git_revision(), versions=provenance.versions(), pid=pid, host=host)
    limit = time_limit_s if time_limit_s is not None else req.time_limit_s
    sup = _Supervisor(url, run_id, worker, limit, bar)
    sup.start()
    stopped = False
    try:
        for indices in _groups(req, device):
            label = ", ".join(req.models[i] for i in indices)
            sup.label = label
            error_before = _error_of(url, run_id)
            if isolate:
                child = _spawn(url, run_id, indices, label, verbose, device)
                sup.child = child
                rc = child.proc.wait()
                sup.child = None
            else:
                from profiler.measure import run_models

                rc = run_models(url, run_id=run_id, model_indices=indices, parent_pid=None, device=device,
                                **({"build": build} if build else {}))
                child = None
            if rc == EXIT_STOPPED or (child is not None and child.terminated):
                stopped = True
                break
            if rc not in (0, 1) or (rc == 1 and _error_of(url, run_id) == error_before):
                # exit code 1 is "a model failed, its error recorded"; with nothing recorded the process
                # crashed before it could record one (an import error, a GPU this process cannot use)
                why = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
                last = child.tail[-1] if child is not None and child.tail else ""
                _append_error(url, run_id, f"{label}: measuring process died ({why}) {last}".strip())
    except KeyboardInterrupt:
        stopped = True
        with session(url) as s:
            repo.request_cancel(s, run_id=run_id)
    finally:
        sup.stop()
    with session(url) as s:
        run = repo.get_run(s, run_id=run_id)
        s.refresh(run)
        done = len(repo.finished_point_keys(s, run_id=run_id))
        if stopped or run.cancel_requested:
            why = f"time limit of {limit:g} s reached; execute the run again to resume it" if sup.timed_out else None
            run = repo.update_run(s, run_id=run_id, status="cancelled", points_done=done, eta_s=None,
                                  error="\n".join(x for x in (run.error, why) if x) or None)
        elif run.error:
            run = repo.update_run(s, run_id=run_id, status="failed", points_done=done, eta_s=None)
        else:
            run = repo.update_run(s, run_id=run_id, status="done", points_done=done, points_total=done,
                                  progress=1.0, eta_s=0.0)
    if bar is not None:
        bar.finish(run.status)
    return run


def _error_of(url: str, run_id: int) -> str | None:
    """The run's error text as the store holds it now."""
    with session(url) as s:
        run = repo.get_run(s, run_id=run_id)
        s.refresh(run)
        return run.error


def run_new(url: str, req: Request, **kw) -> Run:
    """Create the run row and execute it."""
    return execute(url, create_run(url, req), **kw)
