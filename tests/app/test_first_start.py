"""First start on a new store: the shipped reference measurements are loaded and shown."""

from app_helpers import open_page, texts

from store import db, repo
from store.bundle import REFERENCE_DIR, read_bundle


def test_a_new_store_is_seeded_with_the_shipped_reference_runs(sqlite_url, monkeypatch):
    monkeypatch.setenv("SSMPLAN_DB", sqlite_url)
    monkeypatch.delenv("SSMPLAN_REFERENCE_DIR", raising=False)
    shipped = sorted(REFERENCE_DIR.glob("*.json"))
    assert shipped, "the repository ships reference bundles in data/reference/"
    bundles = [read_bundle(p) for p in shipped]
    want_uids = {r["uid"] for b in bundles for r in b["runs"]}
    want_points = sum(len(b["measurements"]) for b in bundles)
    want_gpus = {d["name"] for b in bundles for d in b["devices"] if d["kind"] == "gpu"}
    newest = max((r for b in bundles for r in b["runs"]), key=lambda r: r["created_at"])
    at = open_page("overview")
    assert not at.exception
    with db.session(sqlite_url) as s:
        runs = repo.read_runs(s)
        assert set(runs["uid"]) == want_uids
        assert len(repo.read_measurements(s)) == want_points
    headline = at.dataframe[0].value
    assert want_gpus and want_gpus <= set(headline["device"])
    assert {"mamba3-siso-1.5b", "llama-3.2-1b"} <= set(headline["model"])
    assert newest["label"] in texts(at), "the last run shown is the newest reference run"
