import io

import pandas as pd
import pytest

from app.planning import FINANCE_COLUMNS, WORKLOAD_PRESETS, PlanOptions, default_price_book, finance_csv, plan
from app.planning.export import finance_table, measurements_csv, neutralise

FAST = PlanOptions(crossovers=False, sensitivity=False, surface_errors=False)


@pytest.fixture(scope="module")
def plans(analytic):
    book = default_price_book(usd_per_kwh=0.12, pue=1.4)
    return [plan(w, analytic[0], price_book=book, options=FAST) for w in WORKLOAD_PRESETS.values()]


def test_one_row_per_workload_model_gpu(plans):
    t = finance_table(plans)
    assert list(t.columns) == list(FINANCE_COLUMNS)
    assert len(t) == 4 * 3 * 6
    assert not t.duplicated(["workload", "model", "gpu"]).any()
    assert t.groupby("workload")["recommended"].sum().eq(1).all()


def test_assumptions_are_dated_and_runs_named(plans):
    t = finance_table(plans)
    ok = t[t["status"] == "ok"]
    assert ok["price_as_of"].str.match(r"20\d\d-\d\d").all()
    assert ok["price_source"].str.len().gt(0).all()
    assert ok["run_uids"].str.len().gt(0).all()
    assert (ok["usd_per_kwh"] == 0.12).all() and (ok["pue"] == 1.4).all()


def test_csv_reads_back_with_numbers_as_numbers(plans):
    back = pd.read_csv(io.StringIO(finance_csv(plans)))
    assert list(back.columns) == list(FINANCE_COLUMNS)
    assert pd.api.types.is_float_dtype(back["usd_per_task"])
    assert back["usd_per_task"].dropna().gt(0).all()


@pytest.mark.parametrize("text", ["=HYPERLINK(\"x\")", "+1+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1"])
def test_formula_text_is_neutralised(text):
    out = neutralise(pd.DataFrame({"notes": [text, "plain"], "x": [-1.5, 2.0]}))
    assert out["notes"].tolist() == ["'" + text, "plain"]
    assert out["x"].tolist() == [-1.5, 2.0]  # numbers stay numbers, signs included


def test_measurements_csv_neutralises_notes(analytic):
    m = analytic[0].copy()
    m.loc[0, "notes"] = "=cmd|' /C calc'!A0"
    text = measurements_csv(m)
    assert "'=cmd" in text and "\n=cmd" not in text and ",=cmd" not in text
    assert len(pd.read_csv(io.StringIO(text))) == len(m)
