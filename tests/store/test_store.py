"""Round trips of every table, concurrent writer/reader, and the stores we must refuse to touch."""

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from store import bundle, db, repo
from store.models import SCHEMA_VERSION, TABLES

ROOT = Path(__file__).resolve().parents[2]


def _populate(s):
    dev = repo.upsert_device(
        s, identity="GPU-1234", kind="gpu", name="NVIDIA H100 80GB HBM3", host="h1", index=0,
        memory_bytes=85_520_000_000, driver_version="580.1", cuda_version="13.0", compute_capability="9.0",
        sm_count=132, measured_copy_bw_bytes_per_s=3.0e12, measured_bf16_flops_per_s=7.95e14,
        datasheet_key="H100-SXM", datasheet_bw_bytes_per_s=3.35e12, datasheet_bf16_flops_per_s=9.89e14,
        datasheet_tdp_w=700.0,
    )
    spec = repo.upsert_model_spec(
        s, preset="mamba3-siso-1.5b", family="mamba3-siso", config={"d_model": 2048, "n_layer": 24},
        param_count=1_494_700_000, weight_bytes=2_989_400_000, state_bytes_fixed=51_118_080,
        kv_bytes_per_token=0, max_context=1 << 20,
    )
    run = repo.create_run(s, request={"models": ["mamba3-siso-1.5b"], "batch": [1]}, label="t",
                          git_revision="abc123", versions={"torch": "2.11"})
    repo.update_run(s, run_id=run.id, status="running", device_id=dev.id, points_total=2)
    rows = [
        dict(run_id=run.id, device_id=dev.id, model_id=spec.id, point_key=f"decode/b{b}/c512", phase="decode",
             dtype="bfloat16", implementation="cuda-graph", batch=b, context_len=512, gen_tokens=1,
             latency_p50_ms=1.2 * b, latency_p10_ms=1.1 * b, latency_p90_ms=1.3 * b, n_samples=50,
             tokens_per_s=b / (1.2e-3 * b), peak_mem_bytes=4 << 30, weight_bytes=spec.weight_bytes,
             state_bytes=spec.state_bytes_fixed * b, bytes_moved=3.0e9, flops=3.08e9 * b,
             achieved_bw_bytes_per_s=2.5e12, arithmetic_intensity=1.0, mbu=0.83, mfu=0.004,
             energy_j=0.5, energy_per_token_j=0.5 / b, mean_power_w=400.0, oom=False, gpu_shared=False)
        for b in (1, 16)
    ]
    assert repo.add_measurements(s, rows=rows) == 2
    assert repo.add_measurements(s, rows=rows) == 0, "a stored point must not be stored twice"
    repo.add_telemetry(s, samples=[dict(run_id=run.id, device_id=dev.id, t=datetime.now(timezone.utc),
                                        power_w=400.0, energy_j=1000.0, sm_clock_mhz=1980, mem_clock_mhz=2619,
                                        gpu_util=99, mem_util=80, mem_used_bytes=5 << 30, temperature_c=55,
                                        throttle_reasons=0, other_processes=0)])
    repo.save_prices(s, rows=[dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=2.99,
                                   source="market mid", as_of="2026-05")])
    repo.set_setting(s, key="usd_per_kwh", value=0.12)
    repo.update_run(s, run_id=run.id, status="done", points_done=2, progress=1.0)
    return dev, spec, run


def test_every_table_round_trips(any_store_url):
    with db.session(any_store_url) as s:
        dev, spec, run = _populate(s)
    db.dispose_all()
    with db.session(any_store_url) as s:
        counts = repo.counts(s)
        assert counts == {"ssmplan_meta": 2, "devices": 1, "model_specs": 1, "runs": 1, "measurements": 2,
                          "telemetry": 1, "prices": 1, "settings": 1}
        d = repo.read_devices(s).iloc[0]
        assert d["name"] == "NVIDIA H100 80GB HBM3" and d["measured_copy_bw_bytes_per_s"] == 3.0e12
        m = repo.read_models(s).iloc[0]
        assert m["param_count"] == 1_494_700_000 and m["config"] in ({"d_model": 2048, "n_layer": 24},
                                                                     '{"d_model": 2048, "n_layer": 24}')
        r = repo.get_run(s, run_id=run.id)
        assert r.status == "done" and r.request == {"models": ["mamba3-siso-1.5b"], "batch": [1]}
        assert r.started_at is not None and r.finished_at is not None and r.finished_at >= r.started_at
        meas = repo.read_measurements(s, phase="decode")
        assert list(meas["batch"]) == [1, 16]
        assert list(meas["latency_p50_ms"]) == [1.2, 19.2]
        assert set(meas["preset"]) == {"mamba3-siso-1.5b"} and set(meas["device_name"]) == {d["name"]}
        assert meas["state_bytes_fixed"].iloc[0] == 51_118_080
        assert len(repo.read_telemetry(s, run_id=run.id)) == 1
        p = repo.read_prices(s).iloc[0]
        assert (p["gpu"], p["tier"], p["usd_per_gpu_hour"], p["as_of"]) == ("H100-SXM", "on-demand", 2.99, "2026-05")
        assert repo.get_setting(s, key="usd_per_kwh") == 0.12
        assert repo.get_setting(s, key="missing", default="x") == "x"


def test_bad_values_are_refused_with_a_reason(any_store_url):
    with db.session(any_store_url) as s:
        with pytest.raises(ValueError, match="status"):
            repo.create_run(s, request={}, status="finished")
        with pytest.raises(ValueError, match="no field"):
            repo.upsert_device(s, identity="x", kind="cpu", name="cpu", bogus=1)
        run = repo.create_run(s, request={})
        with pytest.raises(ValueError, match="phase"):
            repo.add_measurements(s, rows=[dict(run_id=run.id, device_id=1, model_id=1, point_key="k",
                                                phase="train", dtype="f", implementation="x", batch=1)])


def test_cancel_a_queued_run_at_once_and_a_running_one_by_request(any_store_url):
    with db.session(any_store_url) as s:
        queued = repo.create_run(s, request={})
        running = repo.create_run(s, request={}, status="running")
        assert repo.request_cancel(s, run_id=queued.id)
        assert repo.get_run(s, run_id=queued.id).status == "cancelled"
        assert repo.request_cancel(s, run_id=running.id)
        assert repo.get_run(s, run_id=running.id).status == "running"
        assert repo.cancel_requested(s, run_id=running.id)
        assert not repo.request_cancel(s, run_id=queued.id), "a finished run cannot be cancelled again"


def test_bundle_round_trip_is_idempotent(any_store_url, tmp_path):
    with db.session(any_store_url) as s:
        _, _, run = _populate(s)
        b = bundle.export_runs(s, run_ids=[run.id])
    path = tmp_path / "ref.json"
    bundle.write_bundle(b, path)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with db.session(other) as s:
        assert bundle.import_bundle(s, bundle=bundle.read_bundle(path)) == [run.uid]
        assert bundle.import_bundle(s, bundle=bundle.read_bundle(path)) == []
        meas = repo.read_measurements(s)
        assert len(meas) == 2 and set(meas["run_uid"]) == {run.uid}
        assert len(repo.read_telemetry(s, run_id=int(meas["run_id"].iloc[0]))) == 1
    folder = tmp_path / "ref"
    folder.mkdir()
    bundle.write_bundle(b, folder / "a.json")
    third = f"sqlite:///{tmp_path / 'third.db'}"
    with db.session(third) as s:
        assert bundle.seed_reference(s, folder=folder) == [run.uid]
        assert bundle.seed_reference(s, folder=folder) == [], "a reference bundle loads once per store"


def test_a_bundles_runs_are_added_oldest_first(any_store_url, tmp_path):
    """The app lists runs by id, newest first ("Last run" is the top one): a bundle that lists a newer run before
    an older one still gives the older run the lower id."""
    with db.session(any_store_url) as s:
        _, _, run = _populate(s)
        b = bundle.export_runs(s, run_ids=[run.id])
    newer = b["runs"][0]
    newer["created_at"] = "2026-12-01T10:00:00.5+00:00"
    # listed after the newer one, as an export of runs 1 and 2 may list them; its time zone sorts it wrongly as text
    older = {**newer, "uid": "older-run", "created_at": "2026-12-01T10:30:00+01:00"}
    b["runs"].append(older)
    b["measurements"] += [{**m, "run": "older-run"} for m in b["measurements"]]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with db.session(other) as s:
        assert set(bundle.import_bundle(s, bundle=b)) == {run.uid, "older-run"}
        assert list(repo.read_runs(s)["uid"]) == [run.uid, "older-run"]
        meas = repo.read_measurements(s).sort_values("id")  # the older run's measurements first, too
        assert list(meas["run_uid"]) == ["older-run"] * 2 + [run.uid] * 2


def test_a_bundle_imports_whole_or_not_at_all(any_store_url, tmp_path):
    with db.session(any_store_url) as s:
        _, _, run = _populate(s)
        good = bundle.export_runs(s, run_ids=[run.id, run.id])  # a run named twice is exported once
    assert len(good["runs"]) == 1
    bad = json.loads(json.dumps(good))
    bad["measurements"][1]["device"] = "unknown-gpu"
    refused = json.loads(json.dumps(good))
    refused["measurements"][1]["dtype"] = None  # passes the bundle's checks, refused by the store (NOT NULL)
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with db.session(other) as s:
        with pytest.raises(bundle.BundleError, match="measurements entry 1 refers to device 'unknown-gpu'"):
            bundle.import_bundle(s, bundle=bad)
        with pytest.raises(bundle.BundleError, match="nothing of its runs was added"):
            bundle.import_bundle(s, bundle=refused)
        assert repo.counts(s)["runs"] == 0 and repo.counts(s)["measurements"] == 0
        doubled = json.loads(json.dumps(good))
        doubled["runs"] *= 2  # an older export that listed the run twice
        doubled["measurements"] *= 2
        assert bundle.import_bundle(s, bundle=doubled) == [run.uid]
        assert repo.counts(s)["measurements"] == 2
    for doc, match in (([1, 2], "not an ssmplan bundle"), ({**good, "format_version": "x"}, "format version"),
                       ({k: v for k, v in good.items() if k != "devices"}, "'devices' section")):
        with db.session(other) as s, pytest.raises(bundle.BundleError, match=match):
            bundle.import_bundle(s, bundle=doc)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(bundle.BundleError, match="not a JSON text"):
        bundle.read_bundle(binary)


def test_url_comes_from_argument_then_environment_then_default(monkeypatch, tmp_path):
    monkeypatch.delenv(db.ENV_VAR, raising=False)
    assert db.resolve_url(None) == f"sqlite:///{db.DEFAULT_PATH}"
    monkeypatch.setenv(db.ENV_VAR, "postgresql+psycopg://u:secret@127.0.0.1/x")
    assert db.resolve_url(None).startswith("postgresql")
    assert "secret" not in db.describe(db.resolve_url(None))
    assert db.resolve_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(db.StoreError, match="not a valid"):
        db.resolve_url("nope://")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


META_DDL = "CREATE TABLE ssmplan_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(1024) NOT NULL)"


def _assert_refused_untouched(path: Path, match: str) -> None:
    before = _digest(path)
    with pytest.raises(db.StoreError, match=match):
        db.get_engine(path)
    assert _digest(path) == before


def _sqlite_file(path: Path, *statements: str) -> Path:
    con = sqlite3.connect(path)
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()
    return path


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 10)
    _assert_refused_untouched(path, "not an SQLite database")


def test_a_corrupt_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "broken.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x TEXT)")
    con.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 200)
    con.commit()
    con.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2:4096 * 2 + 512] = os.urandom(512)  # scribble over a b-tree page
    path.write_bytes(bytes(data))
    _assert_refused_untouched(path, "damaged|integrity")


def test_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "newer.db"
    db.get_engine(path)
    db.dispose_all()
    _sqlite_file(path, f"UPDATE ssmplan_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = 'schema_version'")
    _assert_refused_untouched(path, "newer ssmplan")


def test_a_foreign_database_is_refused_and_left_untouched(tmp_path):
    path = _sqlite_file(tmp_path / "other_app.db", "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    _assert_refused_untouched(path, "not an ssmplan store")


def test_a_new_store_gets_every_table_and_the_schema_version(any_store_url):
    with db.session(any_store_url) as s:
        c = repo.counts(s)
    assert set(c) == {t.__tablename__ for t in TABLES}


WRITER = textwrap.dedent(
    """
    import sys
    from store import db, repo
    url, run_id, dev_id, model_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    with db.session(url) as s:
        for i in range(1000):
            repo.add_measurements(s, rows=[dict(run_id=run_id, device_id=dev_id, model_id=model_id,
                point_key=f"p{i}", phase="decode", dtype="bfloat16", implementation="eager", batch=1,
                context_len=i, latency_p50_ms=float(i))])
    """
)
READER = textwrap.dedent(
    """
    import sys, time
    from store import db, repo
    url = sys.argv[1]
    seen, reads = 0, 0
    deadline = time.time() + 120
    with db.session(url) as s:
        while seen < 1000 and time.time() < deadline:
            n = len(repo.read_measurements(s))
            s.rollback()
            assert n >= seen, f"a reader saw rows vanish: {seen} -> {n}"
            seen, reads = n, reads + 1
    print(seen, reads)
    """
)


def test_one_process_writes_1000_points_while_another_reads(any_store_url):
    with db.session(any_store_url) as s:
        dev = repo.upsert_device(s, identity="cpu-test", kind="cpu", name="test cpu")
        spec = repo.upsert_model_spec(s, preset="t", family="mamba3-siso", config={}, param_count=1,
                                      weight_bytes=2, state_bytes_fixed=3, kv_bytes_per_token=0, max_context=8)
        run = repo.create_run(s, request={}, status="running")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, any_store_url, str(run.id), str(dev.id), str(spec.id)],
                              env=env, stderr=subprocess.PIPE, text=True)
    reader = subprocess.Popen([sys.executable, "-c", READER, any_store_url], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _, werr = writer.communicate(timeout=300)
    rout, rerr = reader.communicate(timeout=300)
    assert writer.returncode == 0, werr
    assert reader.returncode == 0, rerr
    assert "locked" not in werr + rerr
    seen, reads = map(int, rout.split())
    assert seen == 1000 and reads > 1, (seen, reads)
    with db.session(any_store_url) as s:
        meas = repo.read_measurements(s, run_ids=[run.id])
    assert sorted(meas["context_len"]) == list(range(1000))


def test_python_m_store_prints_location_version_and_counts(tmp_path):
    path = tmp_path / "cli.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT), db.ENV_VAR: str(path)}
    out = subprocess.run([sys.executable, "-m", "store"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout and f"schema version: {SCHEMA_VERSION}" in out.stdout
    assert "measurements" in out.stdout
    bad = tmp_path / "bad.db"
    bad.write_text("x")
    out = subprocess.run([sys.executable, "-m", "store", "--db", str(bad)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "not an SQLite database" in out.stderr and "Traceback" not in out.stderr
    # import: a bad file is reported and skipped, the good one after it still imports
    with db.session(path) as s:
        _, _, run = _populate(s)
        good = bundle.export_runs(s, run_ids=[run.id])
    db.dispose_all()
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "list.json").write_text("[1, 2]")
    new = tmp_path / "new.db"
    out = subprocess.run([sys.executable, "-m", "store", "--db", str(new), "import", str(tmp_path / "list.json"),
                          str(tmp_path / "good.json")], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "list.json: not an ssmplan bundle" in out.stderr and "good.json: 1 run(s) added" in out.stdout


def test_a_store_another_process_is_creating_is_waited_for(tmp_path, monkeypatch):
    import threading

    path = _sqlite_file(tmp_path / "racing.db", META_DDL)

    def finish():
        time.sleep(0.5)
        con2 = sqlite3.connect(path)
        con2.execute("INSERT INTO ssmplan_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        con2.commit()
        con2.close()

    threading.Thread(target=finish).start()
    db.get_engine(path)  # waits for the version instead of refusing a half-made store
    db.dispose_all()
    monkeypatch.setattr(db, "CREATION_WAIT_S", 0.3)
    other = _sqlite_file(tmp_path / "half.db", META_DDL)
    _assert_refused_untouched(other, "part of an ssmplan schema")


def test_processes_that_open_one_new_store_at_once_all_succeed(any_store_url):
    opener = ("import sys; from store import db, repo\n"
              "with db.session(sys.argv[1]) as s: print(repo.counts(s)['ssmplan_meta'])")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", opener, any_store_url], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "2"


def test_a_new_store_file_appears_only_when_whole(tmp_path, monkeypatch):
    """No other process can open a half-made store: its file is built aside and appears complete, in WAL mode."""
    path = tmp_path / "new.db"
    existed_while_creating = []
    real = db._create_schema

    def spy(engine):
        existed_while_creating.append(path.exists())
        real(engine)

    monkeypatch.setattr(db, "_create_schema", spy)
    db.get_engine(path)
    db.dispose_all()
    assert existed_while_creating == [False]
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT value FROM ssmplan_meta WHERE key = 'schema_version'").fetchone()[0] == \
            str(SCHEMA_VERSION)
    finally:
        con.close()
    assert {p.name for p in tmp_path.iterdir()} <= {"new.db", "new.db-wal", "new.db-shm"}, "temporary files left"


def test_a_store_published_by_another_process_first_is_kept(tmp_path, monkeypatch):
    """A creator that finds the store made while it waited for the folder's lock keeps that store."""
    path = tmp_path / "raced.db"
    real_lock = db._creation_lock

    @contextmanager
    def other_process_held_the_lock(folder):
        other = tmp_path / "other.db"  # the other process publishes its store, with a row of its own
        eng = db.create_engine(f"sqlite:///{other}")
        db._create_schema(eng)
        eng.dispose()
        _sqlite_file(other, "INSERT INTO settings (key, value) VALUES ('mine', '1')")
        os.replace(other, path)
        with real_lock(folder):
            yield

    monkeypatch.setattr(db, "_creation_lock", other_process_held_the_lock)
    with db.session(path) as s:
        assert repo.get_setting(s, key="mine") == 1
    db.dispose_all()
    assert {p.name for p in tmp_path.iterdir()} <= {"raced.db", "raced.db-wal", "raced.db-shm"}, "temporary files left"


def test_a_store_that_cannot_be_created_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    def fail(engine):
        raise OperationalError("CREATE TABLE", {}, sqlite3.OperationalError("unable to open database file"))

    monkeypatch.setattr(db, "_create_schema", fail)
    with pytest.raises(db.StoreError, match="cannot create the store .*unable to open database file"):
        db.get_engine(tmp_path / "new.db")
    assert list(tmp_path.iterdir()) == []
    db.dispose_all()
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(db.StoreError, match="its folder .*a-file is not a folder"):
        db.get_engine(tmp_path / "a-file" / "store.db")
    with pytest.raises(db.StoreError, match="is a folder, not a database file"):
        db.get_engine(tmp_path)


def test_a_zero_byte_file_becomes_an_empty_store(tmp_path):
    path = tmp_path / "touched.db"
    path.touch()
    with db.session(path) as s:
        assert repo.counts(s)["ssmplan_meta"] == 2


def test_measurements_carry_their_provenance_columns_and_filters(any_store_url):
    with db.session(any_store_url) as s:
        dev, spec, run = _populate(s)
        other = repo.create_run(s, request={}, status="running")
        repo.add_measurements(s, rows=[dict(run_id=other.id, device_id=dev.id, model_id=spec.id, point_key="oom",
                                            phase="prefill", dtype="bfloat16", implementation="x", batch=512,
                                            prompt_len=65536, oom=True)])
        every = repo.read_measurements(s)
        mine = repo.read_measurements(s, run_ids=[run.id])
        none = repo.read_measurements(s, run_ids=[])
        fits = repo.read_measurements(s, include_oom=False)
        prefill = repo.read_measurements(s, phase="prefill", device_ids=[dev.id], model_ids=[spec.id])
    assert list(every["id"]) == sorted(every["id"]) and len(every) == 3
    row = mine.iloc[0]
    assert (row["device_name"], row["device_kind"], row["device_memory_bytes"], row["device_datasheet_key"]) == (
        "NVIDIA H100 80GB HBM3", "gpu", 85_520_000_000, "H100-SXM")
    assert (row["preset"], row["family"], row["param_count"], row["state_bytes_fixed"], row["kv_bytes_per_token"],
            row["max_context"]) == ("mamba3-siso-1.5b", "mamba3-siso", 1_494_700_000, 51_118_080, 0, 1 << 20)
    assert ((row["run_uid"], row["run_label"], row["git_revision"], row["run_status"])
            == (run.uid, "t", "abc123", "done"))
    assert len(mine) == 2 and set(mine["run_id"]) == {run.id}
    assert none.empty and list(none.columns) == list(every.columns)
    assert len(fits) == 2 and not fits["oom"].any()
    assert list(prefill["point_key"]) == ["oom"] and prefill["run_status"].iloc[0] == "running"


def test_workers_registering_one_device_and_model_at_once_share_the_rows(any_store_url, monkeypatch):
    """Two workers look up a device/model, both miss, both insert: the loser reads the winner's row."""
    device = dict(identity="GPU-race", kind="gpu", name="NVIDIA H200")
    spec = dict(preset="m", family="mamba3-siso", config={"d": 1}, param_count=1, weight_bytes=2,
                state_bytes_fixed=3, kv_bytes_per_token=0, max_context=8)
    winners = {}
    insert = repo._insert_or_get

    def other_worker_wins_first(s, row, query):
        monkeypatch.setattr(repo, "_insert_or_get", insert)  # the other worker inserts undisturbed
        with db.session(any_store_url) as other:
            winners["dev_id"] = repo.upsert_device(other, **device).id
            winners["spec_id"] = repo.upsert_model_spec(other, **spec).id
        return insert(s, row, query)

    with db.session(any_store_url) as s:
        monkeypatch.setattr(repo, "_insert_or_get", other_worker_wins_first)
        dev = repo.upsert_device(s, **device, memory_bytes=141 << 30)
        assert dev.id == winners["dev_id"] and dev.memory_bytes == 141 << 30
        spec["preset"] = "m2"
        monkeypatch.setattr(repo, "_insert_or_get", other_worker_wins_first)
        assert repo.upsert_model_spec(s, **spec).id == winners["spec_id"]
        counts = repo.counts(s)
    assert counts["devices"] == 1 and counts["model_specs"] == 2


def _two_reference_bundles(tmp_path):
    """Two finished runs exported as bundles (each with 2 points and telemetry): (uid, bundle) pairs."""
    with db.session(f"sqlite:///{tmp_path / 'made.db'}") as s:
        out = []
        for _ in range(2):
            _, _, run = _populate(s)  # a finished run
            out.append((run.uid, bundle.export_runs(s, run_ids=[run.id])))
    return out


def _release(tmp_path, old, new, old_name="h100-old.json", archived_name="h100-old.json"):
    """A store seeded from a folder holding `old`; then the next release: `old` archived, `new` shipped."""
    ref, arch = tmp_path / "ref", tmp_path / "archive"
    ref.mkdir()
    arch.mkdir()
    bundle.write_bundle(old, ref / old_name)

    def next_release():
        (ref / old_name).rename(arch / archived_name)
        bundle.write_bundle(new, ref / "new.json")

    return ref, arch, next_release


def test_seeding_retires_a_reference_bundle_that_a_release_archived(any_store_url, tmp_path):
    """A store seeded with a bundle that later moved to the archive (re-measured on newer kernels) drops its
    runs once, measurements and telemetry included, and keeps everything else; a bundle imported again
    by hand stays."""
    (old_uid, old), (new_uid, new) = _two_reference_bundles(tmp_path)
    ref, arch, next_release = _release(tmp_path, old, new)
    with db.session(any_store_url) as s:
        assert bundle.seed_reference(s, folder=ref, archive=arch) == [old_uid]
        old_id = int(repo.read_measurements(s)["run_id"].iloc[0])
        assert len(repo.read_telemetry(s, run_id=old_id)) == 1
        mine = repo.create_run(s, request={"models": ["mamba3-siso-1.5b"], "batch": [1]}, label="mine")
    next_release()
    with db.session(any_store_url) as s:
        assert bundle.seed_reference(s, folder=ref, archive=arch) == [new_uid]
        assert set(repo.read_runs(s)["uid"]) == {new_uid, mine.uid}
        meas = repo.read_measurements(s)
        assert set(meas["run_uid"]) == {new_uid} and len(meas) == 2
        assert repo.read_telemetry(s, run_id=old_id).empty
        assert len(repo.read_telemetry(s, run_id=int(meas["run_id"].iloc[0]))) == 1  # the new run's is kept
        assert bundle.seed_reference(s, folder=ref, archive=arch) == []
        assert bundle.import_bundle(s, bundle=bundle.read_bundle(arch / "h100-old.json")) == [old_uid]
        assert bundle.seed_reference(s, folder=ref, archive=arch) == []
        assert old_uid in set(repo.read_runs(s)["uid"]), "a bundle imported by hand is not retired again"


def test_retiring_keeps_what_is_still_shipped_changed_or_unreadable(sqlite_url, tmp_path, monkeypatch):
    (old_uid, old), (new_uid, new) = _two_reference_bundles(tmp_path)
    # the next release ships the old run again inside a renamed bundle: it must survive the swap
    both = {**new, "runs": new["runs"] + old["runs"], "measurements": new["measurements"] + old["measurements"],
            "telemetry": new["telemetry"] + old["telemetry"]}
    ref, arch, next_release = _release(tmp_path, old, both)
    with db.session(sqlite_url) as s:
        bundle.seed_reference(s, folder=ref, archive=arch)
    next_release()
    with db.session(sqlite_url) as s:
        assert bundle.seed_reference(s, folder=ref, archive=arch) == [new_uid]
        assert set(repo.read_runs(s)["uid"]) == {old_uid, new_uid}


def test_retiring_keeps_a_resumed_run_and_skips_a_broken_archive(sqlite_url, tmp_path, monkeypatch):
    (old_uid, old), (_, new) = _two_reference_bundles(tmp_path)
    ref, arch, next_release = _release(tmp_path, old, new, old_name="h100-2026.json", archived_name="h100-abc.json")
    monkeypatch.setitem(bundle.ARCHIVED_AS, "h100-abc.json", "h100-2026.json")  # renamed when archived
    with db.session(sqlite_url) as s:
        bundle.seed_reference(s, folder=ref, archive=arch)
    next_release()
    good = (arch / "h100-abc.json").read_text()
    (arch / "h100-abc.json").write_text("{not json")
    with db.session(sqlite_url) as s, pytest.warns(UserWarning, match="could not be read"):
        bundle.seed_reference(s, folder=ref, archive=arch)
    with db.session(sqlite_url) as s:
        assert old_uid in set(repo.read_runs(s)["uid"]), "an unreadable archive retires nothing"
        run_id = int(repo.read_runs(s).set_index("uid").loc[old_uid, "id"])
        repo.update_run(s, run_id=run_id, status="running")  # being measured into on this machine
    (arch / "h100-abc.json").write_text(good)
    with db.session(sqlite_url) as s:
        bundle.seed_reference(s, folder=ref, archive=arch)
        assert old_uid in set(repo.read_runs(s)["uid"]), "a running run is not deleted"
        repo.update_run(s, run_id=run_id, status="done", points_done=3)
        repo.add_measurements(s, rows=[{**repo.read_measurements(s).iloc[0][
            ["device_id", "model_id", "phase", "dtype", "implementation", "batch", "context_len", "gen_tokens",
             "latency_p50_ms", "latency_p10_ms", "latency_p90_ms", "n_samples", "tokens_per_s", "peak_mem_bytes",
             "weight_bytes", "state_bytes", "bytes_moved", "flops", "oom"]].to_dict(),
            "run_id": run_id, "point_key": "decode/b64/c512"}])  # resumed: a point of this machine's own
        bundle.seed_reference(s, folder=ref, archive=arch)
        assert old_uid in set(repo.read_runs(s)["uid"]), "a run that changed since seeding is the user's now"


def test_deleting_runs_refuses_unfinished_ones(tmp_path):
    with db.session(f"sqlite:///{tmp_path / 'a.db'}") as s:
        _, _, running = _populate(s)
        repo.update_run(s, run_id=running.id, status="running")
        with pytest.raises(ValueError, match="not finished"):
            repo.delete_finished_runs(s, uids=[running.uid])
        assert len(repo.read_measurements(s)) == 2
        repo.update_run(s, run_id=running.id, status="failed")
        assert repo.delete_finished_runs(s, uids=[running.uid, "no-such-run"]) == [running.uid]
        assert repo.read_measurements(s).empty and repo.get_run(s, run_id=running.id) is None
        assert repo.read_telemetry(s, run_id=running.id).empty


def test_settings_changed_by_two_sessions_at_once_lose_no_change(any_store_url):
    """Two sessions each append to one setting 15 times, at once, each change reading the value and then writing
    it back after a pause; a get then a set would drop most of one side's appends."""
    import threading
    import time

    with db.session(any_store_url) as s:
        repo.set_setting(s, key="list", value=[])
    errors = []

    def append(who: str) -> None:
        def change(value):
            time.sleep(0.005)  # the window a get-then-set leaves open
            return [*value, who]

        try:
            with db.session(any_store_url) as s:
                for _ in range(15):
                    repo.update_setting(s, key="list", change=change)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(who,)) for who in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with db.session(any_store_url) as s:
        value = repo.get_setting(s, key="list")
        assert sorted(value) == ["a"] * 15 + ["b"] * 15
        with pytest.raises(ValueError):
            repo.update_setting(s, key="list", change=lambda v: (_ for _ in ()).throw(ValueError("no")))
        assert len(repo.get_setting(s, key="list")) == 30  # a failed change leaves it as it was
        assert repo.update_setting(s, key="new", change=lambda v: [v]) == [None]
        assert repo.get_setting(s, key="new") == [None]


def test_a_setting_another_session_adds_first_is_changed_from_its_value(any_store_url):
    """On PostgreSQL no lock covers a key that is not there yet: when another session adds it between the read and
    the write, the change runs again on that session's value instead of failing on the duplicate key."""
    if not any_store_url.startswith("postgresql"):
        pytest.skip("SQLite's write lock, taken before the read, keeps another session from adding the key")
    seen = []

    def change(value):
        seen.append(value)
        if len(seen) == 1:
            with db.session(any_store_url) as other:
                repo.set_setting(other, key="k", value=["theirs"])
        return [*(value or []), "mine"]

    with db.session(any_store_url) as s:
        assert repo.update_setting(s, key="k", change=change) == ["theirs", "mine"]
        assert seen == [None, ["theirs"]]
        assert repo.get_setting(s, key="k") == ["theirs", "mine"]
