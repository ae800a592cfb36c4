"""First start on a new store: the shipped reference measurements are loaded and shown."""

from app_helpers import open_page, texts

from store import db, repo
from store.bundle import REFERENCE_DIR, read_bundle


def test_a_new_store_is_seeded_with_the_shipped_reference_runs(sqlite_url, monkeypatch):
    monkeypatch.setenv("SSMPLAN_DB", sqlite_url)
    monkeypatch.delenv("SSMPLAN_REFERENCE_DIR", raising=False)
    shipped = sorted(REFERENCE_DIR.glob("*.json"))
    assert shipped, "the repository ships reference bundles in data/reference/"
    want_uids = {r["uid"] for p in shipped for r in read_bundle(p)["runs"]}
    want_points = sum(len(read_bundle(p)["measurements"]) for p in shipped)
    at = open_page("overview")
    assert not at.exception
    with db.session(sqlite_url) as s:
        runs = repo.read_runs(s)
        assert set(runs["uid"]) == want_uids
        assert len(repo.read_measurements(s)) == want_points
    headline = at.dataframe[0].value
    assert {"NVIDIA H100 80GB HBM3", "NVIDIA H200"} <= set(headline["GPU"])
    assert {"mamba3-siso-1.5b", "llama-3.2-1b"} <= set(headline["model"])
    assert "quick on 2 GPUs" in texts(at), "the last run shown is the newest reference run"
