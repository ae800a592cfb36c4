"""Queue workers on the CPU: draining queued runs, and finishing a run whose worker was killed."""

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from profiler.request import make_request
from store import repo
from store.db import session
from store.models import Measurement

from tests.conftest import ROOT

TINY = dict(device="cpu", models=["mamba3-siso-tiny"], batches=[1, 2], prompts=[16], contexts=[16, 64],
            min_repeats=2)


def _worker(url, *extra):
    return subprocess.Popen([sys.executable, "-m", "profiler", "worker", "--device", "cpu", "--db", url, "--poll",
                             "0.2", *extra], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _enqueue(url, n, **over):
    with session(url) as s:
        return [repo.create_run(s, request=make_request({**TINY, **over}).to_json(), label=f"q{i}").id
                for i in range(n)]


def test_a_worker_drains_the_queue(sqlite_url):
    ids = _enqueue(sqlite_url, 2, min_duration_s=0)
    with session(sqlite_url) as s:
        other = repo.create_run(s, request=make_request({**TINY, "device": "cuda:1", "impl": "chunked"}).to_json()).id
    w = _worker(sqlite_url, "--exit-when-idle", "1")
    _, err = w.communicate(timeout=180)
    assert w.returncode == 0, err
    with session(sqlite_url) as s:
        runs = repo.read_runs(s).set_index("id")
        frame = repo.read_measurements(s)
    assert list(runs.loc[ids, "status"]) == ["done", "done"]
    assert runs.loc[other, "status"] == "queued", "a run for another GPU is left to its worker"
    assert all(w.startswith("worker:") for w in runs.loc[ids, "worker"])
    assert frame.groupby("run_id").size().to_dict() == {ids[0]: 6, ids[1]: 6}


def test_a_killed_workers_run_is_finished_by_another_without_repeats(sqlite_url):
    [run_id] = _enqueue(sqlite_url, 1, min_duration_s=0.3)
    first = _worker(sqlite_url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session(sqlite_url) as s:
            if len(repo.finished_point_keys(s, run_id=run_id)) >= 2:
                break
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    with session(sqlite_url) as s:
        before = {m.point_key: m.id for m in s.exec(select(Measurement)).scalars()}
    second = _worker(sqlite_url, "--stale-after", "1", "--exit-when-idle", "2")
    _, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert "went back to the queue" in err
    with session(sqlite_url) as s:
        run = repo.get_run(s, run_id=run_id)
        after = {m.point_key: m.id for m in s.exec(select(Measurement)).scalars()}
    assert (run.status, run.attempts, run.points_done) == ("done", 2, 6)
    assert 2 <= len(before) < 6 and all(after[k] == v for k, v in before.items())


def test_enqueue_splits_a_sweep_into_one_queued_run_per_model(sqlite_url, capsys):
    from profiler.__main__ import main

    assert main(["enqueue", "--scenario", "cpu-demo", "--per-model", "--db", sqlite_url]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    with session(sqlite_url) as s:
        runs = [repo.get_run(s, run_id=i) for i in ids]
    assert len(runs) == 5 and {r.status for r in runs} == {"queued"}
    assert sorted(m for r in runs for m in r.request["models"]) == sorted(
        ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny"])
    assert all(len(r.request["models"]) == 1 and r.request["device"] == "cpu" for r in runs)
    assert main(["enqueue", "--models", "mamba3-siso-1.5b", "--device", "cuda", "--db", sqlite_url]) == 0
    gpu_run = int(capsys.readouterr().out.split()[0])
    with session(sqlite_url) as s:
        assert repo.get_run(s, run_id=gpu_run).request["device"] == "any", "'cuda' queues for any GPU worker"
    assert main(["enqueue", "--models", "no-such-model", "--db", sqlite_url]) == 2
    assert "unknown model preset 'no-such-model'" in capsys.readouterr().err


def test_worker_intervals_must_be_positive_seconds(sqlite_url, capsys):
    from profiler.__main__ import main

    for flag, value, says in [("--poll", "-1", "> 0"), ("--poll", "0", "> 0"), ("--poll", "nan", "> 0"),
                              ("--poll", "soon", "not a number"), ("--stale-after", "0", "> 0"),
                              ("--exit-when-idle", "-2", "≥ 0")]:
        with pytest.raises(SystemExit) as exc:
            main(["worker", "--device", "cpu", flag, value, "--db", sqlite_url])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {flag}: {value!r}" in err and says in err
    assert main(["worker", "--device", "cpu", "--exit-when-idle", "0", "--poll", "0.01", "--db", sqlite_url]) == 0


def test_the_profiler_refuses_an_in_memory_store(capsys):
    from profiler.__main__ import main

    assert main(["show", "1", "--db", "sqlite://"]) == 2
    assert "in-memory store cannot be shared with profiling runs" in capsys.readouterr().err


def test_show_and_cancel_do_not_create_a_store_at_a_mistyped_path(tmp_path, capsys):
    from profiler.__main__ import main

    missing = tmp_path / "no" / "such.db"
    for cmd in ("show", "cancel"):
        assert main([cmd, "1", "--db", str(missing)]) == 2
        assert f"there is no store at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()
