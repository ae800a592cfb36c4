"""Whole runs on the CPU: a real sweep into a temporary store, OOM as a capacity boundary, a model that
fails, resume after a real kill, cancel from outside, and the reaper of dead runs."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
import torch

from model import cost
from model.config import get_config
from profiler import models, runner
from profiler.request import make_request
from store import repo
from store.db import session
from store.models import Measurement, Run, utcnow

from tests.conftest import ROOT

QUICK = ["--min-repeats", "2", "--min-duration", "0", "--warmup", "1"]
# on the CPU, with float32 weights: no allocator, no NVML, no bf16 roof, no Nsight Compute
NULL_ON_CPU = {"peak_mem_bytes", "mfu", "energy_j", "energy_per_token_j", "mean_power_w", "hw_bytes", "hw_flops"}


def _cli(url, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "profiler", *args, "--db", url], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_points(url, run_id, n, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session(url) as s:
            if len(repo.finished_point_keys(s, run_id=run_id)) >= n:
                return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} points after {timeout_s} s")


def _run_row(url, run_id=1) -> Run:
    with session(url) as s:
        return repo.get_run(s, run_id=run_id)


def test_real_cpu_sweep_fills_every_column(sqlite_url):
    proc = _cli(sqlite_url, "run", "--device", "cpu", "--models", "mamba3-siso-tiny", "transformer-tiny",
                "--batch", "1", "2", "--prompt", "16", "--context", "32", *QUICK, "--json")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["run"]["status"] == "done" and len(doc["measurements"]) == 8
    assert "p50 ms" in err and "run 1 (" in err, "the summary table goes to stderr"
    with session(sqlite_url) as s:
        run = repo.get_run(s, run_id=1)
        frame = repo.read_measurements(s, run_ids=[1])
        device = repo.read_devices(s).iloc[0]
    assert (run.points_done, run.points_total, run.progress, run.error) == (8, 8, 1.0, None)
    assert run.versions["torch"] == torch.__version__ and run.versions["python"]
    assert run.git_revision and run.host and run.started_at and run.finished_at
    assert device["kind"] == "cpu" and device["name"].startswith("CPU: ")
    assert device["measured_copy_bw_bytes_per_s"] > 0 and device["measured_bf16_flops_per_s"] > 0
    assert device["datasheet_key"] is None, "no datasheet for a CPU: null, not a guess"
    # a CPU point notes nothing, unless its timings spread (a busy machine: profiler.metrics.unstable)
    assert frame["notes"].dropna().str.startswith("timings unstable: ").all()
    for col in Measurement.model_fields:
        values = frame[col]
        if col == "notes":
            continue
        if col in NULL_ON_CPU:
            assert values.isna().all(), f"{col} should be null on the CPU"
        else:
            assert values.notna().all(), f"{col} has a missing value"
    for r in frame.itertuples():
        cfg = get_config(r.preset)
        expect = (cost.prefill_cost(cfg, r.batch, r.prompt_len, 4) if r.phase == "prefill"
                  else cost.decode_cost(cfg, r.batch, r.context_len, 4))
        assert (r.bytes_moved, r.flops) == (expect.bytes, expect.flops)
        assert r.weight_bytes == cost.weight_bytes(cfg, 4)
        assert r.state_bytes == cost.cache_bytes(cfg, r.batch, r.prompt_len or r.context_len, 4)
        assert r.latency_p10_ms <= r.latency_p50_ms <= r.latency_p90_ms and r.n_samples >= 2
        tokens = r.batch * (r.prompt_len if r.phase == "prefill" else 1)
        assert r.tokens_per_s == pytest.approx(tokens / (r.latency_p50_ms / 1e3))
        assert r.achieved_bw_bytes_per_s == pytest.approx(r.bytes_moved / (r.latency_p50_ms / 1e3))
        assert r.mbu == pytest.approx(r.achieved_bw_bytes_per_s / device["measured_copy_bw_bytes_per_s"])
        assert r.implementation == "chunked+eager"
        assert r.device_kind == "cpu" and not r.oom and not r.gpu_shared


class OomAbove:
    """A real model whose cache allocation fails like CUDA's allocator beyond `limit_bytes`."""

    def __init__(self, model, limit_bytes):
        self._model, self._limit = model, limit_bytes

    def __getattr__(self, name):
        return getattr(self._model, name)

    def allocate_cache(self, *, batch, max_context):
        if cost.cache_bytes(self._model.config, batch, max_context, 4) > self._limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return self._model.allocate_cache(batch=batch, max_context=max_context)


def _oom_build(limits: dict[str, int], fail_preset=None):
    """Real models; those named in `limits` fail allocations beyond their limit; `fail_preset` fails to build."""
    def build(ref, **kw):
        if ref.preset == fail_preset:
            raise ValueError("weights file is corrupt (injected)")
        model = models.build(ref, **kw)
        return OomAbove(model, limits[ref.preset]) if ref.preset in limits else model
    return build


def test_out_of_memory_points_are_recorded_and_the_sweep_goes_on(sqlite_url):
    cfg = get_config("transformer-tiny")
    limit = cost.cache_bytes(cfg, 2, 65, 4)  # batch 2 at 64 tokens fits; batch 4 does not
    req = make_request({"device": "cpu", "models": ["transformer-tiny", "mamba3-siso-tiny"], "batches": [1, 2, 4],
                        "contexts": [64], "min_repeats": 2, "min_duration_s": 0})
    run = runner.run_new(sqlite_url, req, isolate=False, build=_oom_build({"transformer-tiny": limit}))
    assert run.status == "done" and run.error is None
    with session(sqlite_url) as s:
        frame = repo.read_measurements(s, run_ids=[run.id]).set_index(["preset", "batch"])
    oom = frame.loc[("transformer-tiny", 4)]
    assert oom["oom"] and pd_isna(oom["latency_p50_ms"]) and oom["n_samples"] == 0
    assert oom["notes"].startswith("out of memory: OutOfMemoryError: CUDA out of memory")
    assert oom["bytes_moved"] > 0 and oom["state_bytes"] == cost.cache_bytes(cfg, 4, 64, 4)
    assert not frame.loc[("transformer-tiny", 2)]["oom"] and frame.loc[("transformer-tiny", 2)]["latency_p50_ms"] > 0
    assert not frame.xs("mamba3-siso-tiny")["oom"].any(), "the next model is measured as usual"


def pd_isna(v):
    return v is None or v != v


def test_capacity_probe_finds_the_injected_boundary(sqlite_url):
    cfg = get_config("transformer-tiny")
    limit = cost.cache_bytes(cfg, 10, 65, 4)
    req = make_request({"device": "cpu", "scenario": "capacity", "models": ["transformer-tiny"], "contexts": [64],
                        "capacity_max_batch": 64, "min_repeats": 1, "min_duration_s": 0})
    run = runner.run_new(sqlite_url, req, isolate=False, build=_oom_build({"transformer-tiny": limit}))
    from profiler.progress import capacity_table

    with session(sqlite_url) as s:
        table = capacity_table(repo.read_measurements(s, run_ids=[run.id]))
    assert run.status == "done"
    assert table == [dict(model="transformer-tiny", context=64, max_batch=10, first_oom_batch=11)]


def test_a_failing_model_fails_the_run_but_not_the_others(sqlite_url):
    req = make_request({"device": "cpu", "models": ["hybrid-tiny", "mamba2-tiny"], "batches": [1], "prompts": [8],
                        "min_repeats": 1, "min_duration_s": 0})
    run = runner.run_new(sqlite_url, req, isolate=False, build=_oom_build({}, fail_preset="hybrid-tiny"))
    assert run.status == "failed"
    assert run.error == "hybrid-tiny: ValueError: weights file is corrupt (injected)"
    with session(sqlite_url) as s:
        frame = repo.read_measurements(s, run_ids=[run.id])
    assert list(frame["preset"]) == ["mamba2-tiny"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a measuring process that crashes: no CUDA GPU here")
def test_a_measuring_process_that_crashes_fails_the_run(sqlite_url):
    """Exit code 1 with no error recorded (here: a CUDA run on a machine without a GPU, whose measuring
    process dies on its first CUDA call) is a crash, not 'a model failed': the run fails and says why."""
    req = make_request({"device": "cuda:0", "models": ["mamba3-siso-tiny"], "batches": [1], "prompts": [8],
                        "impl": "chunked", "min_repeats": 1, "min_duration_s": 0})
    run = runner.run_new(sqlite_url, req)
    assert run.status == "failed", (run.status, run.error)
    assert run.error.startswith("mamba3-siso-tiny: measuring process died (exit code 1)")


def _slow_grid(url):
    """12 points of at least 0.3 s each."""
    return _cli(url, "run", "--device", "cpu", "--models", "mamba3-siso-tiny", "mamba2-tiny", "--batch", "1", "2",
                "--prompt", "16", "--context", "16", "64", "--min-repeats", "2", "--min-duration", "0.3",
                "--quiet", start_new_session=True)


def test_resume_after_a_real_kill_repeats_no_point(sqlite_url):
    proc = _slow_grid(sqlite_url)
    _wait_points(sqlite_url, 1, 3)
    os.killpg(proc.pid, signal.SIGKILL)  # the profiler and its measuring child, as a lost machine would
    proc.wait(timeout=30)
    with session(sqlite_url) as s:
        before = {m.point_key: (m.id, m.created_at) for m in s.exec(select(Measurement)).scalars()}
        assert repo.get_run(s, run_id=1).status == "running"
        assert runner.reap_dead_runs(s) == [1]
        run = repo.get_run(s, run_id=1)
        assert run.status == "failed" and "is gone" in run.error and "execute 1" in run.error
    assert 3 <= len(before) < 12
    again = _cli(sqlite_url, "execute", "1", "--quiet")
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    with session(sqlite_url) as s:
        after = {m.point_key: (m.id, m.created_at) for m in s.exec(select(Measurement)).scalars()}
        run = repo.get_run(s, run_id=1)
    assert len(after) == 12 and all(after[k] == v for k, v in before.items()), "finished points were not redone"
    assert (run.status, run.attempts, run.points_done, run.error) == ("done", 2, 12, None)


def test_measuring_child_stops_when_its_parent_is_killed(sqlite_url):
    proc = _slow_grid(sqlite_url)
    _wait_points(sqlite_url, 1, 1)
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    assert len(children) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while runner.pid_alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not runner.pid_alive(children[0]), "an orphaned measuring process kept running"


def test_cancel_from_outside_stops_within_seconds_and_resumes(sqlite_url):
    proc = _slow_grid(sqlite_url)
    _wait_points(sqlite_url, 1, 2)
    with session(sqlite_url) as s:
        assert repo.request_cancel(s, run_id=1)
    asked = time.monotonic()
    _, err = proc.communicate(timeout=60)
    stopped_after_s = time.monotonic() - asked
    assert proc.returncode == 3, err
    assert stopped_after_s < 10, f"stopped {stopped_after_s:.1f} s after the cancel"
    with session(sqlite_url) as s:
        run = repo.get_run(s, run_id=1)
        n = len(repo.finished_point_keys(s, run_id=1))
    assert run.status == "cancelled" and run.points_done == n and 2 <= n < 12 and run.finished_at
    again = _cli(sqlite_url, "execute", "1", "--quiet")
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    assert _run_row(sqlite_url).status == "done" and _run_row(sqlite_url).points_done == 12


def test_reaper_marks_only_dead_cli_runs_failed(sqlite_url):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = utcnow() - timedelta(minutes=5)
    with session(sqlite_url) as s:
        ids = {}
        for name, host, pid, beat, worker in [
            ("dead-here", runner.provenance.host(), gone.pid, utcnow(), "cli:x"),
            ("silent-elsewhere", "other-host", 1, stale, "cli:y"),
            ("alive-elsewhere", "other-host", 1, utcnow(), "cli:z"),
            ("alive-here", runner.provenance.host(), os.getpid(), utcnow(), "cli:w"),
            ("queue-worker", "other-host", 1, stale, "worker:gpu0"),
        ]:
            run = repo.create_run(s, request={}, label=name)
            repo.update_run(s, run_id=run.id, status="running", host=host, pid=pid, heartbeat_at=beat, worker=worker)
            ids[name] = run.id
        assert sorted(runner.reap_dead_runs(s)) == sorted([ids["dead-here"], ids["silent-elsewhere"]])
        status = {name: repo.get_run(s, run_id=i).status for name, i in ids.items()}
    assert status == {"dead-here": "failed", "silent-elsewhere": "failed", "alive-elsewhere": "running",
                      "alive-here": "running", "queue-worker": "running"}


def test_execute_refuses_a_run_that_is_running_elsewhere(sqlite_url):
    with session(sqlite_url) as s:
        run = repo.create_run(s, request=make_request({"device": "cpu"}).to_json())
        repo.update_run(s, run_id=run.id, status="running", host=runner.provenance.host(), pid=os.getpid(),
                        heartbeat_at=utcnow(), worker="cli:me")
    with pytest.raises(runner.RunError, match=f"run {run.id} is running"):
        runner.execute(sqlite_url, run.id, isolate=False)


def test_a_stored_run_whose_checkpoint_is_damaged_fails_with_one_line(tmp_path, sqlite_url, capsys):
    """A run queued before its folder was damaged (or by an older app, which did not check folders) fails
    at once with a one-line reason naming the file, not a traceback."""
    from model import checkpoints
    from model.factory import build_model
    from profiler.__main__ import main

    folder = tmp_path / "ckpt"
    checkpoints.save_checkpoint(build_model("transformer-tiny", dtype=torch.float32), folder)
    (folder / "model.safetensors").write_text("garbage\n")
    with session(sqlite_url) as s:
        run = repo.create_run(s, request={"models": [str(folder)], "device": "cpu", "batches": [1], "prompts": [16]},
                              label="damaged")
    assert main(["execute", str(run.id), "--db", sqlite_url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'model.safetensors'}: not a safetensors file") and "\n" not in err
    row = _run_row(sqlite_url, run.id)
    assert row.status == "failed" and "\n" not in row.error
    says = f"invalid request: {folder / 'model.safetensors'}: not a safetensors file, or cut short"
    assert row.error.startswith(says)
