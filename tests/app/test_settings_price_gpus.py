"""Price rows must name a GPU the planner knows: matched whatever the case, refused otherwise."""

from __future__ import annotations

from datetime import date

import pandas as pd
from app_helpers import texts

from app.ui import prices
from store import repo
from store.datasheets import DATASHEETS
from store.db import session

SAVE = "Save the price book"


def _row(gpu, tier="on-demand"):
    return dict(gpu=gpu, tier=tier, usd_per_gpu_hour=3.0, source="quote", as_of="2026-01")


def test_check_writes_a_gpu_as_the_known_name_whatever_its_case():
    book, problems = prices.check(pd.DataFrame([_row("h200"), _row(" l40s ", "spot")]), usd_per_kwh=None, pue=1.0,
                                  known_gpus=list(DATASHEETS))
    assert problems == []
    assert [(e.gpu, e.tier) for e in book.entries] == [("H200", "on-demand"), ("L40S", "spot")]


def test_check_refuses_an_unknown_gpu_and_lists_the_known_ones():
    book, problems = prices.check(pd.DataFrame([_row("H200"), _row("H2000")]), usd_per_kwh=None, pue=1.0,
                                  known_gpus=["H200", "L4"])
    assert book is None
    assert problems == ["row 2: GPU 'H2000' is not a known GPU", "known GPUs: H200, L4"]


def test_check_counts_a_case_variant_as_the_same_gpu():
    book, problems = prices.check(pd.DataFrame([_row("H200"), _row("h200")]), usd_per_kwh=None, pue=1.0,
                                  known_gpus=["H200"])
    assert book is None and problems == ["row 2: H200 on-demand appears twice"]


def _settings_with_prices(open_app, sqlite_url, kind, rows):
    at, _ = open_app(kind, "settings")
    with session(sqlite_url) as s:
        repo.save_prices(s, rows=rows)
    at.run()
    return at


def test_settings_refuses_to_save_an_unknown_gpu(open_app, sqlite_url):
    at = _settings_with_prices(open_app, sqlite_url, "seeded", [_row("H100-SXM"), _row("no-such-gpu")])
    said = texts(at)
    assert "GPU 'no-such-gpu' is not a known GPU" in said and "known GPUs: H100-SXM" in said
    assert next(b for b in at.button if b.label == SAVE).disabled


def test_settings_saves_a_store_devices_name_in_its_own_case(open_app, sqlite_url):
    # a CPU has no datasheet: the planner prices it under its device name
    at = _settings_with_prices(open_app, sqlite_url, "cpu_only", [_row("test cpu (2 cores)"), _row("h200")])
    next(b for b in at.button if b.label == SAVE).click().run()
    assert not at.exception and "Saved 2 price(s)" in texts(at)
    with session(sqlite_url) as s:
        assert sorted(repo.read_prices(s)["gpu"]) == ["H200", "Test CPU (2 cores)"]


def test_no_price_column_is_required_so_a_half_filled_row_reaches_the_check():
    # a required column makes the table hold a half-filled new row back from the page, which then saved without it
    assert not any(col.get("required") for col in prices.EDITOR_COLUMNS.values())
    # nor a minimum: the table would drop a typed minus sign, turning −2 into 2 without a word
    assert prices.EDITOR_COLUMNS["usd_per_gpu_hour"]["type_config"]["min_value"] is None
    _, problems = prices.check(pd.DataFrame([{**_row("H200"), "usd_per_gpu_hour": -2.0}]), usd_per_kwh=None,
                               pue=1.0, known_gpus=list(DATASHEETS))
    assert problems and "row 1" in problems[0], problems
    half = pd.DataFrame([_row("H200"), dict(gpu="H100-SXM", tier=None, usd_per_gpu_hour=2.2, source=None,
                                            as_of="2026-05")])
    book, problems = prices.check(half, usd_per_kwh=None, pue=1.0, known_gpus=list(DATASHEETS))
    assert book is None and any("row 2" in p and "tier" in p for p in problems), problems


def test_saving_a_changed_price_says_it_was_edited_here_and_the_finance_export_carries_it(
        open_app, sqlite_url, monkeypatch):
    import streamlit as st

    at = _settings_with_prices(open_app, sqlite_url, "seeded",
                               [_row("H100-SXM"), dict(_row("H100-SXM", "spot"), usd_per_gpu_hour=1.5)])
    real = st.data_editor

    def editing(data, **kw):  # what a user typing 2.5 over the first price sends back
        out = real(data, **kw).copy()
        out.loc[0, "usd_per_gpu_hour"] = 2.5
        return out

    monkeypatch.setattr(st, "data_editor", editing)
    at.run()
    next(b for b in at.button if b.label == SAVE).click().run()
    assert not at.exception and "Saved 2 price(s)" in texts(at)
    with session(sqlite_url) as s:
        saved = repo.read_prices(s).set_index("tier")
    today = date.today().isoformat()
    assert saved.loc["on-demand", "source"] == f"edited in the app on {today}, was $3.00 from quote"
    assert saved.loc["on-demand", "as_of"] == today and saved.loc["on-demand", "usd_per_gpu_hour"] == 2.5
    assert saved.loc["spot", ["source", "as_of"]].tolist() == ["quote", "2026-01"]  # not changed: kept

    from app.planning import WORKLOAD_PRESETS, finance_table, load_price_book, plan

    with session(sqlite_url) as s:
        p = plan(WORKLOAD_PRESETS["chat"], repo.read_measurements(s), price_book=load_price_book(s))
    priced = finance_table([p]).query("gpu == 'H100-SXM' and status == 'ok'")
    assert len(priced) and set(priced["price_source"]) == {f"edited in the app on {today}, was $3.00 from quote"}


def test_saving_a_new_on_demand_price_re_derives_the_rows_derived_from_it(open_app, sqlite_url, monkeypatch):
    import streamlit as st

    derived = dict(_row("H200", "reserved"), usd_per_gpu_hour=1.95, source="on-demand $3.00 × 0.65 (reserved)")
    typed = dict(_row("H200", "spot"), usd_per_gpu_hour=1.2, source="broker quote")
    at = _settings_with_prices(open_app, sqlite_url, "seeded", [_row("H200"), derived, typed])
    real = st.data_editor

    def editing(data, **kw):  # a user typing 4.00 over the on-demand price
        out = real(data, **kw).copy()
        out.loc[out["tier"] == "on-demand", "usd_per_gpu_hour"] = 4.0
        return out

    monkeypatch.setattr(st, "data_editor", editing)
    at.run()
    assert "Saving also re-derives H200 reserved: $1.95 → $2.60" in texts(at)
    next(b for b in at.button if b.label == SAVE).click().run()
    assert not at.exception and "Saved 3 price(s)" in texts(at)
    with session(sqlite_url) as s:
        saved = repo.read_prices(s).set_index("tier")
    today = date.today().isoformat()
    assert saved.loc["reserved", "usd_per_gpu_hour"] == 2.6 and saved.loc["reserved", "as_of"] == today
    assert saved.loc["reserved", "source"] == (f"on-demand $4.00 × 0.65 (reserved); re-derived in the app on {today} "
                                               "when on-demand went $3.00 → $4.00")
    assert saved.loc["spot", ["usd_per_gpu_hour", "source"]].tolist() == [1.2, "broker quote"]  # typed: kept


def test_settings_warns_of_a_discount_price_above_on_demand(open_app, sqlite_url):
    at = _settings_with_prices(open_app, sqlite_url, "seeded",
                               [_row("H200"), dict(_row("H200", "spot"), usd_per_gpu_hour=3.5)])
    assert any("The spot price of H200 ($3.50/GPU-hour) is above its on-demand price ($3.00)" in w.value
               for w in at.warning)
