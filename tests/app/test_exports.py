"""The raw measurements CSV: parses, has exactly the documented columns, neutralises formula-like text."""

import io

import pandas as pd
import seed_stores

from app.ui import exports
from store import repo
from store.db import session


def test_documented_columns_are_the_stores_columns(sqlite_url):
    seed_stores.seeded(sqlite_url)
    with session(sqlite_url) as s:
        frame = repo.read_measurements(s)
    assert set(exports.MEASUREMENT_COLUMNS) == set(frame.columns) | set(exports.DERIVED_COLUMNS)
    assert not set(exports.DERIVED_COLUMNS) & set(frame.columns)


def test_measurement_csv_parses_with_documented_columns_and_neutralises_formulas(sqlite_url):
    ids = seed_stores.seeded(sqlite_url)
    with session(sqlite_url) as s:
        run = repo.get_run(s, run_id=ids["cpu_run"])
        point = repo.read_measurements(s, run_ids=[run.id]).iloc[0]
        from store.models import Measurement

        row = s.get(Measurement, int(point["id"]))
        row.notes = "=HYPERLINK(\"http://example.invalid\")"
        s.add(row)
        s.commit()
        frame = repo.read_measurements(s)
    text = exports.measurement_csv(frame, run_ids=[ids["cpu_run"]])
    parsed = pd.read_csv(io.StringIO(text))
    assert list(parsed.columns) == list(exports.MEASUREMENT_COLUMNS)
    assert len(parsed) == int((frame["run_id"] == ids["cpu_run"]).sum())
    assert parsed.loc[parsed["id"] == point["id"], "notes"].item() == "'=HYPERLINK(\"http://example.invalid\")"
    assert parsed["latency_p50_ms"].dtype == float and (parsed["latency_p50_ms"] > 0).all()


def test_all_runs_when_none_chosen(sqlite_url):
    seed_stores.seeded(sqlite_url)
    with session(sqlite_url) as s:
        frame = repo.read_measurements(s)
    assert len(exports.measurement_table(frame)) == len(frame)


def test_points_whose_calls_spread_are_marked_unstable_and_out_of_memory_ones_never(sqlite_url):
    seed_stores.seeded(sqlite_url)
    with session(sqlite_url) as s:
        frame = repo.read_measurements(s)
    ok = frame.index[~frame["oom"].astype(bool)]
    shaky = frame.assign(latency_p10_ms=1.0, latency_p90_ms=1.0)
    shaky.loc[ok[0], "latency_p90_ms"] = 1.6
    shaky.loc[frame.index[frame["oom"].astype(bool)], "latency_p90_ms"] = 9.0  # (stored null; never counted)
    table = exports.measurement_table(shaky).set_index("id")
    assert table["timing_unstable"].tolist().count(True) == 1 and table.loc[frame.loc[ok[0], "id"], "timing_unstable"]
    parsed = pd.read_csv(io.StringIO(exports.measurement_csv(shaky)))
    assert parsed["timing_unstable"].sum() == 1
