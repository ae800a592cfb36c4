"""Inputs the store must refuse or make safe: exports over files, read-only stores, relative and in-memory URLs,
bundles with values no measurement can have."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from store import bundle, db, repo
from store.__main__ import main as store_cli

ROOT = Path(__file__).resolve().parents[2]


def _store_with_a_run(path: Path) -> dict:
    """A SQLite store at `path` holding one finished run of two decode points; returns the run as a bundle."""
    with db.session(path) as s:
        dev = repo.upsert_device(s, identity="GPU-1", kind="gpu", name="NVIDIA H100 80GB HBM3")
        spec = repo.upsert_model_spec(s, preset="m", family="mamba3-siso", config={"d": 1}, param_count=1,
                                      weight_bytes=2, state_bytes_fixed=3, kv_bytes_per_token=0, max_context=8)
        run = repo.create_run(s, request={}, status="running")
        repo.add_measurements(s, rows=[dict(run_id=run.id, device_id=dev.id, model_id=spec.id,
                                            point_key=f"decode/b{b}/c512", phase="decode", dtype="bfloat16",
                                            implementation="eager", batch=b, context_len=512, gen_tokens=1,
                                            latency_p50_ms=1.0 * b, latency_p90_ms=1.1 * b) for b in (1, 16)])
        repo.update_run(s, run_id=run.id, status="done")
        out = bundle.export_runs(s, run_ids=[run.id])
    db.dispose_all()
    return out


# ------------------------------------------------------------------------------------------------ export


def test_export_refuses_to_write_over_its_own_store(tmp_path, capsys):
    store = tmp_path / "self.db"
    _store_with_a_run(store)
    (tmp_path / "link.db").symlink_to(store)
    before = store.read_bytes()
    for target, flags in ((store, []), (store, ["--force"]), (tmp_path / "link.db", ["--force"]),
                          (tmp_path / "self.db-wal", ["--force"])):
        assert store_cli(["--db", str(store), "export", "--run", "1", "-o", str(target), *flags]) == 2
        err = capsys.readouterr().err
        assert "is the store being exported" in err and "Traceback" not in err
    db.dispose_all()
    assert store.read_bytes() == before
    with db.session(store) as s:
        assert repo.counts(s)["measurements"] == 2


def test_export_overwrites_an_existing_file_only_with_force(tmp_path, capsys):
    store, out = tmp_path / "s.db", tmp_path / "out.json"
    _store_with_a_run(store)
    out.write_text("keep me")
    assert store_cli(["--db", str(store), "export", "--run", "1", "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert store_cli(["--db", str(store), "export", "--run", "1", "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert store_cli(["--db", str(store), "export", "--run", "1", "-o", str(out), "--force"]) == 0
    assert len(bundle.read_bundle(out)["measurements"]) == 2
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"], "no temporary file is left"


def test_export_all_writes_every_run_and_still_needs_force_to_overwrite(tmp_path, capsys):
    store, out = tmp_path / "s.db", tmp_path / "all.json"
    _store_with_a_run(store)
    with db.session(store) as s:
        repo.create_run(s, request={}, label="second")
    assert store_cli(["--db", str(store), "export", "--all", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (2 run(s))"
    doc = bundle.read_bundle(out)
    assert len(doc["runs"]) == 2 and len(doc["measurements"]) == 2
    assert store_cli(["--db", str(store), "export", "--all", "-o", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert store_cli(["--db", str(store), "export", "--all", "-o", str(out), "--force"]) == 0
    with pytest.raises(SystemExit):  # --run or --all, not both and not neither
        store_cli(["--db", str(store), "export", "--all", "--run", "1", "-o", str(out)])
    with pytest.raises(SystemExit):
        store_cli(["--db", str(store), "export", "-o", str(out)])
    capsys.readouterr()
    assert store_cli(["--db", str(tmp_path / "empty.db"), "export", "--all", "-o", str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip() == "error: the store holds no runs; nothing was exported"
    assert not (tmp_path / "x.json").exists()
    db.dispose_all()


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    out.write_text("old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match=f"cannot write {out}: No space left"):
        bundle.write_bundle({"format": bundle.FORMAT}, out)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# ------------------------------------------------------------------------------------------- read-only


def _read_only(monkeypatch, path: Path) -> None:
    """Make `path` (a file or folder) read-only. Root may write it all the same, as a read-only file system
    refuses root too: for root, os.access answers as that file system would."""
    path.chmod(0o555 if path.is_dir() else 0o444)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (mode & os.W_OK and Path(p) == path)
                            else real(p, mode, **kw))


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_store_is_called_read_only_not_damaged(tmp_path, monkeypatch, what):
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "s.db"
    _store_with_a_run(store)
    before = store.read_bytes()
    try:
        _read_only(monkeypatch, folder if what == "folder" else store)
        with pytest.raises(db.StoreError, match=f"cannot be opened for writing: .*{what} .*is read-only") as exc:
            db.get_engine(store)
        assert "damaged" not in str(exc.value)
        if what == "folder":
            with pytest.raises(db.StoreError, match="cannot be created: .*is read-only"):
                db.get_engine(folder / "new.db")
    finally:
        folder.chmod(0o755)
        store.chmod(0o644)
    assert store.read_bytes() == before and not (folder / "new.db").exists()


def test_a_store_sqlite_cannot_open_is_not_called_damaged(tmp_path, monkeypatch):
    store = tmp_path / "s.db"
    _store_with_a_run(store)

    def cannot_open(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(db.sqlite3, "connect", cannot_open)
    with pytest.raises(db.StoreError, match="cannot be opened .*check the permissions") as exc:
        db.get_engine(store)
    assert "damaged" not in str(exc.value)


# ---------------------------------------------------------------------------------------------- URLs


def test_a_relative_sqlite_url_names_one_file_for_every_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = db.resolve_url("sqlite:///rel.db?timeout=5")
    assert url == f"sqlite:///{tmp_path.resolve() / 'rel.db'}?timeout=5"
    assert db.resolve_url(url) == url
    assert db.resolve_url(f"sqlite:///{tmp_path}/abs.db") == f"sqlite:///{tmp_path}/abs.db"
    _store_with_a_run(tmp_path / "rel.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    child = ("import sys; from store import db, repo\n"
             "with db.session(sys.argv[1]) as s: print(repo.counts(s)['measurements'])")
    out = subprocess.run([sys.executable, "-c", child, url], cwd=elsewhere, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2", "the child opened another file than the one the URL was made from"
    assert not (elsewhere / "rel.db").exists()


def test_a_store_in_a_folder_that_does_not_exist_is_refused_not_created(tmp_path, capsys):
    missing = tmp_path / "no" / "such" / "x.db"
    assert store_cli(["--db", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the store {missing} cannot be opened: its folder {missing.parent} does not exist; "
                   "check --db or SSMPLAN_DB (a new store goes into a folder that exists)")
    assert not (tmp_path / "no").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(db.StoreError, match=r"its folder .*file is not a folder"):
        db.get_engine(tmp_path / "file" / "x.db")
    with db.session(tmp_path / "x.db") as s:  # an existing folder: a new store, as before
        assert repo.counts(s)["runs"] == 0
    db.dispose_all()


def test_the_default_stores_folder_is_made_when_missing(tmp_path, monkeypatch):
    default = tmp_path / "data" / "ssmplan.db"
    monkeypatch.setattr(db, "DEFAULT_PATH", default)
    monkeypatch.delenv(db.ENV_VAR, raising=False)
    with db.session(default) as s:
        assert repo.counts(s)["runs"] == 0
    assert default.is_file()
    db.dispose_all()


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_db_is_refused_not_read_as_the_default(empty, capsys, monkeypatch):
    from profiler.__main__ import main as profiler_cli

    says = ("error: the store location is empty: give --db a SQLAlchemy URL or a SQLite file path, or leave --db "
            "out to use $SSMPLAN_DB or the default")
    assert store_cli(["--db", empty]) == 2
    assert capsys.readouterr().err.strip() == says
    assert profiler_cli(["show", "1", "--db", empty]) == 2
    assert capsys.readouterr().err.strip() == says
    monkeypatch.setenv(db.ENV_VAR, empty)  # an empty variable is an unset one
    assert db.resolve_url(None) == f"sqlite:///{db.DEFAULT_PATH}"


def test_an_in_memory_store_cannot_be_shared(tmp_path, capsys):
    for url in ("sqlite://", "sqlite:///:memory:"):
        assert db.in_memory(url) and db.sqlite_path(url) is None
        with pytest.raises(db.StoreError, match="in-memory store cannot be shared"):
            db.shared_url(url)
        assert store_cli(["--db", url, "import", "x.json"]) == 2
        assert "in-memory store would be gone when this command ends" in capsys.readouterr().err
    with db.session("sqlite://") as s:  # in one process it is a store like any other
        assert repo.counts(s)["ssmplan_meta"] == 2
    assert db.shared_url(tmp_path / "a.db") == f"sqlite:///{tmp_path / 'a.db'}"
    db.dispose_all()


# ------------------------------------------------------------------------------------------- bundles


def _bad(good: dict, section: str, index: int, **changes) -> dict:
    doc = json.loads(json.dumps(good))
    doc[section][index].update(changes)
    return doc


@pytest.mark.parametrize("section, changes, match", [
    ("measurements", dict(latency_p50_ms=-5.0), r"entry 1 \(run \w+, point 'decode/b16/c512'\): latency_p50_ms -5"),
    ("measurements", dict(latency_p90_ms=float("nan")), "latency_p90_ms nan is not a finite number"),
    ("measurements", dict(latency_p10_ms=0), "latency_p10_ms 0 is not a finite number above 0"),
    ("measurements", dict(latency_p50_ms="fast"), "latency_p50_ms 'fast'"),
    ("measurements", dict(batch=-3), "batch -3 is not a whole number of at least 1"),
    ("measurements", dict(batch=0), "batch 0 is not a whole number of at least 1"),
    ("measurements", dict(batch=2.5), "batch 2.5 is not a whole number"),
    ("measurements", dict(prompt_len=-1), "prompt_len -1 is not a whole number of at least 0"),
    ("measurements", dict(context_len=True), "context_len True is not a whole number"),
    ("measurements", dict(phase="warmup"), "phase 'warmup' is not one of prefill, decode"),
    ("measurements", dict(point_key="decode/b1/c512"), "entry 0 is another measurement of the same point"),
    ("runs", dict(status="exploded"), r"runs entry 0 \(run \w+\): status 'exploded' is not one of queued"),
])
def test_a_bundle_with_an_impossible_value_adds_nothing(tmp_path, section, changes, match):
    good = _store_with_a_run(tmp_path / "made.db")
    with db.session(tmp_path / "other.db") as s:
        with pytest.raises(bundle.BundleError, match=match):
            bundle.import_bundle(s, bundle=_bad(good, section, 1 if section == "measurements" else 0, **changes))
        counts = repo.counts(s)
        assert (counts["devices"], counts["model_specs"], counts["runs"], counts["measurements"]) == (0, 0, 0, 0)
        assert len(bundle.import_bundle(s, bundle=good)) == 1


def test_the_cli_refuses_a_bad_bundle_with_one_line(tmp_path, capsys):
    good = _store_with_a_run(tmp_path / "made.db")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(_bad(good, "measurements", 0, latency_p50_ms=float("nan"))))
    assert store_cli(["--db", str(tmp_path / "other.db"), "import", str(path)]) == 2
    err = capsys.readouterr().err
    assert "latency_p50_ms nan is not a finite number above 0; nothing of it was imported" in err
    assert len(err.strip().splitlines()) == 1
    db.dispose_all()


def test_the_cli_names_an_unreadable_bundle_once(tmp_path, capsys):
    (tmp_path / "g.json").write_text("{")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe")
    files = [tmp_path / "g.json", tmp_path / "gone.json", tmp_path / "bin.json", tmp_path]
    assert store_cli(["--db", str(tmp_path / "s.db"), "import", *map(str, files)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"error: {files[0]} is not a JSON text (Expecting property name")
    assert lines[1] == f"error: {files[1]} cannot be read (No such file or directory); nothing of it was imported"
    assert lines[2].startswith(f"error: {files[2]} is not a JSON text (")
    assert lines[3] == f"error: {tmp_path} cannot be read (Is a directory); nothing of it was imported"
    assert all(line.count(str(f)) == 1 for line, f in zip(lines, files)), "each file is named once"
    db.dispose_all()


def test_every_shipped_bundle_imports_into_a_new_store(tmp_path):
    shipped = sorted(bundle.REFERENCE_DIR.glob("*.json")) + sorted(bundle.ARCHIVE_DIR.glob("*.json"))
    assert len(shipped) > 2
    uids, points = set(), 0
    with db.session(tmp_path / "all.db") as s:
        for path in shipped:
            doc = bundle.read_bundle(path)
            new = {r["uid"] for r in doc["runs"]} - uids
            added = bundle.import_bundle(s, bundle=doc)
            assert set(added) == new, path.name
            uids |= new
            points += sum(1 for m in doc["measurements"] if m["run"] in set(added))
        assert repo.counts(s)["measurements"] == points
    db.dispose_all()
