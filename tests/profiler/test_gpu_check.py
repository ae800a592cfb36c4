"""The reference-dataset command, exercised on the CPU: steps, resume of done steps, the bundle, and
loading that bundle into a new store."""

import pytest

from profiler import gpu_check
from store import bundle, repo
from store.db import session


@pytest.fixture
def tiny_step(monkeypatch):
    monkeypatch.setitem(gpu_check.STEPS, "tiny", {"models": ["mamba3-siso-tiny"], "batches": [1, 2], "prompts": [8],
                                                  "contexts": [16], "min_repeats": 1, "min_duration_s": 0})


def test_bundle_written_and_loadable(tiny_step, tmp_path, capsys):
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--steps", "tiny", "--device", "cpu"]) == 0
    assert (out / "summary.txt").read_text().startswith("model ")
    doc = bundle.read_bundle(out / "reference.json")
    assert [r["label"] for r in doc["runs"]] == ["reference tiny"] and len(doc["measurements"]) == 4
    assert doc["runs"][0]["versions"]["torch"] and doc["devices"][0]["kind"] == "cpu"
    assert gpu_check.main(["--out", str(out), "--steps", "tiny", "--device", "cpu"]) == 0
    assert "reference tiny: done already" in capsys.readouterr().err
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    with session(fresh) as s:
        assert len(bundle.import_bundle(s, bundle=doc)) == 1
        frame = repo.read_measurements(s)
    assert len(frame) == 4 and set(frame["preset"]) == {"mamba3-siso-tiny"} and frame["latency_p50_ms"].notna().all()


def test_unknown_step_refused(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path), "--steps", "quick,fast"]) == 2
    assert "unknown step(s) fast" in capsys.readouterr().err
