"""Runs of several git revisions in one store: a point measured again by newer code replaces the older
code's measurement of it; runs of one revision still pool; a surface that mixes revisions says so."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from app.planning import WORKLOAD_PRESETS, PlanOptions, default_price_book, plan, recency
from app.planning.subjects import measured_sets
from store import bundle, db, repo

from .helpers import H100, point, spec, workload

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 12, 1, 12, 0, 0)
DECODE = [(b, c) for b in (1, 64) for c in (100, 10_000)]
PREFILL = [(1, c) for c in (100, 10_000)]
FAST = dict(options=PlanOptions(crossovers=False, sensitivity=False, surface_errors=False, project_to=()))


def grid(scale: float, *, decode=DECODE, prefill=PREFILL) -> list[dict]:
    """A model "m" measured at `decode` and `prefill` points, its latencies × `scale`."""
    return ([point("m", "decode", b, c, scale * (5.0 + 0.1 * b), power_w=300.0) for b, c in decode]
            + [point("m", "prefill", b, c, scale * (1.0 + 0.01 * c), power_w=500.0) for b, c in prefill])


def write_runs(path: Path, runs: list[tuple[str | None, datetime, list[dict]]]):
    """A store whose runs (git revision, when measured, points) were written in this order, on two cards of
    one GPU type (alternating), so pooling across cards is exercised too."""
    url = f"sqlite:///{path}"
    with db.session(url) as s:
        cards = [repo.upsert_device(s, **{**H100, "identity": f"GPU-card-{i}"}) for i in range(2)]
        model_id = repo.upsert_model_spec(s, **spec("m", kv_bytes_per_token=1000)).id
        for i, (revision, measured_at, points) in enumerate(runs):
            card = cards[i % 2]
            run = repo.create_run(s, request={"test": i}, label=f"run {i}", status="running", git_revision=revision)
            repo.add_measurements(s, rows=[
                dict(run_id=run.id, device_id=card.id, model_id=model_id, point_key=f"{p['phase']}-{j}",
                     created_at=measured_at + timedelta(seconds=j), **{k: v for k, v in p.items() if k != "preset"})
                for j, p in enumerate(points)])
            repo.update_run(s, run_id=run.id, status="done", device_id=card.id)
        out = repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
    db.dispose_all()
    return out


def cost(stores, w=None) -> float:
    measurements, models, devices = stores
    p = plan(w or workload(), measurements, price_book=default_price_book(), models=models, devices=devices, **FAST)
    return float(p.rows.loc[p.rows["status"] == "ok", "usd_per_task"].iloc[0])


def test_a_point_measured_again_by_newer_code_replaces_the_older_measurement(tmp_path):
    mixed = write_runs(tmp_path / "mixed.db", [("old", T0, grid(1.4)), ("new", T0 + timedelta(days=1), grid(1.0))])
    alone = write_runs(tmp_path / "alone.db", [("new", T0 + timedelta(days=1), grid(1.0))])
    assert cost(mixed) == pytest.approx(cost(alone), rel=1e-12)
    sets, messages = measured_sets(mixed[0], dtype=None, models=None, weight_by_model={})
    assert sets[0].decode.n_points == len(DECODE) and sets[0].prefill.n_points == len(PREFILL)
    assert len(sets[0].run_uids.split()) == 1
    note = next(m for m in messages if "measured again" in m)
    assert note.startswith(f"{len(DECODE) + len(PREFILL)} points on NVIDIA H100 80GB HBM3 measured by older runs "
                           "(revision old)")
    assert "newest run's measurement" in note


def test_an_old_bundle_imported_later_does_not_replace_newer_measurements(tmp_path):
    """What decides is when a point was measured, not when its rows reached this store."""
    imported_late = write_runs(tmp_path / "late.db", [("new", T0 + timedelta(days=1), grid(1.0)),
                                                      ("old", T0, grid(1.4))])
    alone = write_runs(tmp_path / "alone.db", [("new", T0 + timedelta(days=1), grid(1.0))])
    assert cost(imported_late) == pytest.approx(cost(alone), rel=1e-12)


def test_runs_of_one_revision_pool_as_before(tmp_path):
    """Two machines, the same code: both runs' measurements of a point stand, whichever came last."""
    stores = write_runs(tmp_path / "same.db", [("r1", T0, grid(1.0)), ("r1", T0 + timedelta(days=1), grid(1.2))])
    sets, messages = measured_sets(stores[0], dtype=None, models=None, weight_by_model={})
    decode = sets[0].decode  # each point: the median of both runs' measurements
    assert decode.points_ms == pytest.approx(1.1 * (5.0 + 0.1 * decode.points_b))
    assert len(sets[0].run_uids.split()) == 2
    assert not any("revision" in m for m in messages)


def test_a_surface_that_mixes_revisions_names_them(tmp_path):
    """The newer run measured only batch 1: its points replace the old ones there, the old batch-64 points stand."""
    stores = write_runs(tmp_path / "part.db", [
        ("0ld", T0, grid(1.4)),
        ("n3w", T0 + timedelta(days=1), grid(1.0, decode=[(1, 100), (1, 10_000)])),
    ])
    sets, messages = measured_sets(stores[0], dtype=None, models=None, weight_by_model={})
    assert sets[0].decode.n_points == len(DECODE)  # two new batch-1 points, two old batch-64 points
    decode = sets[0].decode
    assert decode.points_ms == pytest.approx([1.0 * 5.1 if b == 1 else 1.4 * 11.4 for b in decode.points_b])
    assert sets[0].prefill.n_points == len(PREFILL)  # prefill: all points measured again
    note = next(m for m in messages if "git revisions" in m)
    assert note.startswith("surfaces of m on NVIDIA H100 80GB HBM3 draw on runs of 2 git revisions (0ld, n3w)")
    assert "newest run's measurement" in note
    assert not any("measured again" in m for m in messages)  # said once, in the mixed-surface note


def test_runs_without_a_revision_count_as_one_unrecorded_revision(tmp_path):
    stores = write_runs(tmp_path / "norev.db", [(None, T0, grid(1.4)), ("new", T0 + timedelta(days=1), grid(1.0))])
    _, messages = measured_sets(stores[0], dtype=None, models=None, weight_by_model={})
    assert any("(revision unrecorded)" in m for m in messages)


def test_newest_revision_rows_orders_by_time_then_id_and_keeps_the_frame_index():
    df = pd.DataFrame(dict(
        id=[1, 2, 3, 4, 5], point=["a", "a", "a", "b", "b"], git_revision=["x", "y", "x", "x", None],
        created_at=pd.to_datetime(["2026-01-02", "2026-01-01", "2026-01-02", "2026-01-01", pd.NaT]),
    ), index=[10, 10, 11, 12, 13])
    kept, superseded = recency.newest_revision_rows(df, ["point"])
    # point a: newest by time is id 3 (tied with id 1 on time, written later), revision x; y is superseded.
    # point b: id 5 has no time, so it counts as oldest; id 4's revision x stands.
    assert kept["id"].tolist() == [1, 3, 4] and superseded["id"].tolist() == [2, 5]
    assert recency.latest_rows(df, ["point"])["id"].tolist() == [4, 3]


@pytest.mark.parametrize("workload_name", ["coding-agent-15", "doc-qa-32k"])
def test_importing_an_archived_bundle_leaves_the_reference_plan_unchanged(tmp_path, workload_name):
    """The reviewer's case: an archived H200 bundle (older kernels, measured before the shipped one) imported
    into a seeded store changed the pick's cost by ~40 %; now every row matches the reference plan."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    with db.session(url) as s:
        bundle.seed_reference(s, folder=ROOT / "data" / "reference", archive=tmp_path)
        reference = repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
        bundle.import_bundle(s, bundle=bundle.read_bundle(
            ROOT / "data" / "archive" / "h200-quick-paper-ed1cb62-2026-12-01.json"))
        imported = repo.read_measurements(s), repo.read_models(s), repo.read_devices(s)
    db.dispose_all()
    w = WORKLOAD_PRESETS[workload_name]
    before, after = (plan(w, m, price_book=default_price_book(), models=mo, devices=d, **FAST)
                     for m, mo, d in (reference, imported))
    columns = ["model", "gpu", "status", "concurrency_per_gpu", "usd_per_task", "usd_per_month"]
    pd.testing.assert_frame_equal(before.rows[columns], after.rows[columns])
    assert any(m.startswith("160 points on NVIDIA H200 measured by older runs (revision ed1cb62)")
               for m in after.messages)
