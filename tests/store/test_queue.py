"""The store as a work queue, on SQLite and PostgreSQL: real worker processes claim, run and finish."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from store import db, queue, repo

from tests.conftest import ROOT

POINTS = 3
WORKER = textwrap.dedent(
    """
    import os, sys, time
    from store import db, queue, repo
    url, name, hang_after, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with db.session(url) as s:
        dev = repo.upsert_device(s, identity="cpu-q", kind="cpu", name="cpu")
        spec = repo.upsert_model_spec(s, preset="t", family="mamba3-siso", config={}, param_count=1,
                                      weight_bytes=2, state_bytes_fixed=3, kv_bytes_per_token=0, max_context=8)
        if go:  # start together: a worker that starts first must not find the queue to itself
            print("ready", flush=True)
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
        written = 0
        while True:
            run = queue.claim_next_run(s, worker=name)
            if run is None:
                break
            done = repo.finished_point_keys(s, run_id=run.id)
            for i in range(%d):
                key = f"p{i}"
                if key in done:
                    continue
                if written == hang_after:
                    print("hanging", run.id, flush=True)
                    time.sleep(3600)
                repo.add_measurements(s, rows=[dict(run_id=run.id, device_id=dev.id, model_id=spec.id,
                    point_key=key, phase="decode", dtype="float32", implementation=name, batch=1,
                    context_len=i, latency_p50_ms=1.0)])
                written += 1
                assert queue.heartbeat(s, run_id=run.id, worker=name)
                time.sleep(0.05)  # a point takes time, so a worker that starts first cannot drain the queue alone
            repo.update_run(s, run_id=run.id, status="done", progress=1.0)
    """ % POINTS
)


def _spawn(url, name, hang_after=-1, go=""):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", WORKER, url, name, str(hang_after), str(go)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_three_workers_drain_thirty_requests_none_lost_or_run_twice(any_store_url, tmp_path):
    with db.session(any_store_url) as s:
        ids = [repo.create_run(s, request={"n": i}).id for i in range(30)]
    reader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from store import db, repo
            with db.session(sys.argv[1]) as s:
                reads = 0
                while reads < 400:
                    repo.read_measurements(s); repo.read_runs(s); s.rollback(); reads += 1
                    if set(repo.read_runs(s)["status"]) == {"done"}:
                        break
            print(reads)
        """), any_store_url],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    go = tmp_path / "go"
    workers = [_spawn(any_store_url, f"w{i}", go=go) for i in range(3)]
    for w in workers:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
    go.touch()
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    rout, rerr = reader.communicate(timeout=300)
    assert reader.returncode == 0 and "locked" not in rerr, rerr
    with db.session(any_store_url) as s:
        runs = repo.read_runs(s).set_index("id")
        meas = repo.read_measurements(s)
    assert sorted(runs.index) == sorted(ids)
    assert set(runs["status"]) == {"done"}
    assert set(runs["attempts"]) == {1}, "a run was claimed twice"
    per_run = meas.groupby("run_id").size()
    assert len(per_run) == 30 and set(per_run) == {POINTS}
    # each run's points were written by the worker that claimed it
    for run_id, grp in meas.groupby("run_id"):
        assert set(grp["implementation"]) == {runs.loc[run_id, "worker"]}
    assert runs["worker"].nunique() > 1, "the three workers should share the queue"


def test_a_killed_worker_request_is_requeued_and_finished_by_another(any_store_url):
    with db.session(any_store_url) as s:
        run_id = repo.create_run(s, request={}).id
    victim = _spawn(any_store_url, "victim", hang_after=1)
    line = victim.stdout.readline()
    assert line.startswith("hanging"), victim.stderr.read()
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with db.session(any_store_url) as s:
        assert queue.requeue_stale(s, stale_after_s=3600) == [], "a fresh heartbeat is not stale"
        time.sleep(1.2)
        assert queue.requeue_stale(s, stale_after_s=1.0) == [run_id]
        assert repo.get_run(s, run_id=run_id).status == "queued"
    rescuer = _spawn(any_store_url, "rescuer")
    _, err = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, err
    with db.session(any_store_url) as s:
        run = repo.get_run(s, run_id=run_id)
        meas = repo.read_measurements(s, run_ids=[run_id])
    assert run.status == "done" and run.attempts == 2 and run.worker == "rescuer"
    assert sorted(meas["point_key"]) == [f"p{i}" for i in range(POINTS)], "no point repeated, none lost"
    assert list(meas.sort_values("point_key")["implementation"]) == ["victim", "rescuer", "rescuer"]


def test_stale_runs_fail_after_too_many_attempts_and_cancelled_ones_stay_cancelled(any_store_url):
    with db.session(any_store_url) as s:
        a = repo.create_run(s, request={})
        b = repo.create_run(s, request={})
        for _ in range(3):
            assert queue.claim_next_run(s, worker="x").id == a.id
            repo.update_run(s, run_id=a.id, heartbeat_at=None)
            queue.requeue_stale(s, stale_after_s=0)
        assert repo.get_run(s, run_id=a.id).status == "failed"
        assert "gave up after 3 attempts" in repo.get_run(s, run_id=a.id).error
        assert queue.claim_next_run(s, worker="y").id == b.id
        repo.request_cancel(s, run_id=b.id)
        repo.update_run(s, run_id=b.id, heartbeat_at=None)
        assert queue.requeue_stale(s, stale_after_s=0) == []
        assert repo.get_run(s, run_id=b.id).status == "cancelled"
        assert queue.claim_next_run(s, worker="z") is None


def test_a_worker_takes_only_runs_for_its_device(any_store_url):
    with db.session(any_store_url) as s:
        other = repo.create_run(s, request={"device": "cuda:1"})
        mine = repo.create_run(s, request={"device": "cuda:0"})
        anyd = repo.create_run(s, request={})
        assert queue.claim_next_run(s, worker="g0", device_filter="cuda:0").id == mine.id
        assert queue.claim_next_run(s, worker="g0", device_filter="cuda:0").id == anyd.id
        assert queue.claim_next_run(s, worker="g0", device_filter="cuda:0") is None
        assert queue.queue_depth(s) == 1 and repo.get_run(s, run_id=other.id).status == "queued"


def test_a_cpu_worker_leaves_runs_for_any_gpu_to_the_gpu_workers(any_store_url):
    with db.session(any_store_url) as s:
        gpu = repo.create_run(s, request={"device": "any"})
        cpu = repo.create_run(s, request={"device": "cpu"})
        assert queue.claim_next_run(s, worker="c", device_filter="cpu").id == cpu.id
        assert queue.claim_next_run(s, worker="c", device_filter="cpu") is None
        assert queue.claim_next_run(s, worker="g", device_filter="cuda:1").id == gpu.id
