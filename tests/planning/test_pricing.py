import math
from datetime import date

import pandas as pd
import pytest

from app.planning import (
    TIERS,
    PlanningError,
    PriceBook,
    PriceEntry,
    default_price_book,
    load_price_book,
    save_price_book,
)
from app.planning.pricing import SOURCE_MAX_CHARS, derived_factor, edit_note, stamp_edits
from store import db


def test_defaults_are_dated_and_complete():
    book = default_price_book()
    gpus = {e.gpu for e in book.entries}
    assert {"H100-SXM", "H200", "A100-80GB", "L40S", "L4"} <= gpus
    for g in gpus:
        for tier in TIERS:
            e = book.price(g, tier)
            assert e.as_of and e.source and e.usd_per_gpu_hour > 0
        assert book.price(g, "spot").usd_per_gpu_hour < book.price(g, "reserved").usd_per_gpu_hour \
            < book.price(g, "on-demand").usd_per_gpu_hour
    assert book.price("H100-SXM", "on-demand").usd_per_gpu_hour == 2.99


def test_energy_price_per_joule():
    # $0.36/kWh × PUE 1.5 = $0.54 per 3.6e6 J = 1.5e-7 $/J
    assert PriceBook(entries=(), usd_per_kwh=0.36, pue=1.5).energy_usd_per_j() == pytest.approx(1.5e-7)
    assert PriceBook(entries=()).energy_usd_per_j() == 0.0


def test_missing_price_is_named():
    with pytest.raises(PlanningError, match="no on-demand price for RTX-4080"):
        default_price_book().price("RTX-4080", "on-demand")


@pytest.mark.parametrize(
    "entry, message",
    [
        (dict(usd_per_gpu_hour=0.0), "positive"),
        (dict(usd_per_gpu_hour=-1.0), "positive"),
        (dict(usd_per_gpu_hour=math.nan), "positive"),
        (dict(tier="hourly"), "tier"),
        (dict(as_of=""), "no date"),
        (dict(gpu=""), "GPU type"),
    ],
)
def test_bad_prices(entry, message):
    base = dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=2.0, source="s", as_of="2026-05")
    base.update(entry)
    with pytest.raises(PlanningError, match=message):
        PriceEntry(**base)


def test_bad_book():
    e = PriceEntry("H100-SXM", "on-demand", 2.0, "s", "2026-05")
    with pytest.raises(PlanningError, match="twice"):
        PriceBook(entries=(e, e))
    with pytest.raises(PlanningError, match="PUE"):
        PriceBook(entries=(), pue=0.5)
    with pytest.raises(PlanningError, match="energy price"):
        PriceBook(entries=(), usd_per_kwh=-0.1)


def test_scaled_only_the_named_gpu():
    book = default_price_book().scaled(1.5, ("H200",))
    assert book.price("H200", "spot").usd_per_gpu_hour == pytest.approx(3.79 * 0.425 * 1.5, abs=0.01)
    assert book.price("H100-SXM", "on-demand").usd_per_gpu_hour == 2.99


def test_store_round_trip(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with db.session(url) as s:
        assert load_price_book(s) == default_price_book()
        mine = PriceBook(entries=(PriceEntry("H100-SXM", "spot", 1.11, "my quote", "2026-06-01"),), usd_per_kwh=0.2,
                         pue=1.2)
        save_price_book(s, mine)
        assert load_price_book(s) == mine
    db.dispose_all()


def test_from_frame_rejects_text_prices():
    import pandas as pd

    df = pd.DataFrame([dict(gpu="L4", tier="spot", usd_per_gpu_hour="cheap", source="", as_of="2026")])
    with pytest.raises(PlanningError, match="not a number"):
        PriceBook.from_frame(df)


# ------------------------------------------------------------------------------ edits keep their provenance

TODAY = date(2026, 6, 2)


def _table(*rows):
    return pd.DataFrame([dict(gpu=g, tier=t, usd_per_gpu_hour=p, source=s, as_of=a) for g, t, p, s, a in rows])


def test_a_changed_price_says_it_was_edited_here_today_and_what_it_replaced():
    before = _table(("H200", "on-demand", 3.79, "market mid: RunPod $3.59 (2026-03)", "2026-05"),
                    ("H200", "spot", 1.50, "spot quote from a broker", "2026-05"))
    after = before.copy()
    after.loc[0, "usd_per_gpu_hour"] = 3.25
    out = stamp_edits(before, after, today=TODAY)
    assert out.loc[0, "source"] == "edited in the app on 2026-06-02, was $3.79 from market mid: RunPod $3.59 (2026-03)"
    assert out.loc[0, "as_of"] == "2026-06-02"
    assert out.loc[1].to_dict() == before.loc[1].to_dict()  # unchanged and not derived: keeps its source and date
    assert before.loc[0, "source"].startswith("market mid")  # the table given is not modified


def test_a_price_changed_with_a_new_source_or_date_keeps_what_was_typed():
    before = _table(("L4", "on-demand", 0.60, "Modal $0.80", "2026-05"))
    after = before.copy()
    after.loc[0, ["usd_per_gpu_hour", "source", "as_of"]] = [0.55, "my quote", "2026-05-20"]
    assert stamp_edits(before, after, today=TODAY).loc[0].to_dict() == after.loc[0].to_dict()
    after.loc[0, "source"] = "Modal $0.80"  # the date alone was changed: the source still says edited
    out = stamp_edits(before, after, today=TODAY).loc[0]
    assert out["source"] == "edited in the app on 2026-06-02, was $0.60 from Modal $0.80"
    assert out["as_of"] == "2026-05-20"
    after.loc[0, "source"] = None  # a cleared source is not a source
    assert stamp_edits(before, after, today=TODAY).loc[0, "source"].startswith("edited in the app on 2026-06-02")


def test_new_rows_without_a_source_say_they_were_entered_here_and_deleted_rows_shift_nothing():
    before = _table(("H200", "on-demand", 3.79, "a", "2026-05"), ("L4", "spot", 0.26, "b", "2026-05"),
                    ("T4", "spot", 0.25, "c", "2026-05"))
    after = before.drop(index=1)  # the editor keeps the labels of the rows left
    after.loc[3] = dict(gpu="L40S", tier="spot", usd_per_gpu_hour=0.4, source=None, as_of="2026-06")
    after.loc[4] = dict(gpu="A100-80GB", tier="spot", usd_per_gpu_hour=0.6, source="quote", as_of="2026-06")
    after.loc[5] = dict(gpu=None, tier=None, usd_per_gpu_hour=float("nan"), source=None, as_of=None)  # blank
    out = stamp_edits(before, after, today=TODAY)
    assert list(out["source"])[:4] == ["a", "c", "entered in the app on 2026-06-02", "quote"]
    assert pd.isna(out.loc[5, "source"])  # a blank row stays blank (the check skips it)
    assert list(out["as_of"])[:4] == ["2026-05", "2026-05", "2026-06", "2026-06"]


def test_a_row_moved_to_another_gpu_says_what_it_was():
    before = _table(("H200", "on-demand", 3.79, "market mid", "2026-05"))
    after = before.copy()
    after.loc[0, "gpu"] = "h200"  # the same GPU in another case is no edit
    assert stamp_edits(before, after, today=TODAY).loc[0, "source"] == "market mid"
    after.loc[0, "gpu"] = "H100-SXM"
    assert stamp_edits(before, after, today=TODAY).loc[0, "source"] == (
        "edited in the app on 2026-06-02, was H200 on-demand $3.79 from market mid")


def test_edit_notes_fold_in_earlier_ones_instead_of_nesting_them():
    first = edit_note(old_price=2.99, old_source="market mid: RunPod", today=date(2026, 6, 1))
    second = edit_note(old_price=3.1, old_source=first, today=TODAY)
    assert second == ("edited in the app on 2026-06-02, was $3.10 (edited in the app on 2026-06-01); "
                      "first $2.99 from market mid: RunPod")
    third = edit_note(old_price=3.2, old_source=second, today=date(2026, 6, 3))
    assert third == ("edited in the app on 2026-06-03, was $3.20 (edited in the app on 2026-06-02); "
                     "first $2.99 from market mid: RunPod")
    entered = edit_note(old_price=1.0, old_source="entered in the app on 2026-05-30", today=TODAY)
    assert entered == "edited in the app on 2026-06-02, was $1.00 (entered in the app on 2026-05-30)"
    assert edit_note(old_price=0.4255, old_source="", today=TODAY) == "edited in the app on 2026-06-02, was $0.4255"
    assert len(edit_note(old_price=1.0, old_source="x" * 600, today=TODAY)) == SOURCE_MAX_CHARS


# ------------------------------------------------- reserved and spot rows derived from on-demand follow it


def test_rows_derived_from_an_edited_on_demand_price_are_derived_again_from_the_new_one():
    before = default_price_book().to_frame()
    h200 = before.index[before["gpu"] == "H200"]
    on_demand, reserved, spot = (h200[before.loc[h200, "tier"] == t][0] for t in TIERS)
    assert before.loc[reserved, "source"].startswith("on-demand $3.79 × 0.65")
    after = before.copy()
    after.loc[on_demand, "usd_per_gpu_hour"] = 4.50
    out = stamp_edits(before, after, today=TODAY)
    assert out.loc[reserved, "usd_per_gpu_hour"] == pytest.approx(2.93)  # round(4.50 × 0.65, 2)
    assert out.loc[spot, "usd_per_gpu_hour"] == pytest.approx(1.91)  # round(4.50 × 0.425, 2)
    assert out.loc[reserved, "source"] == ("on-demand $4.50 × 0.65 (1-yr reserved −30…−40 %, Q1 2026); re-derived "
                                           "in the app on 2026-06-02 when on-demand went $3.79 → $4.50")
    assert out.loc[reserved, "as_of"] == out.loc[spot, "as_of"] == "2026-06-02"
    others = before.index[before["gpu"] != "H200"]
    pd.testing.assert_frame_equal(out.loc[others], before.loc[others].astype(out.dtypes.to_dict()))
    book = PriceBook.from_frame(out)
    assert book.above_on_demand() == []
    # edited again: the note is replaced, not nested
    again = out.copy()
    again.loc[on_demand, "usd_per_gpu_hour"] = 5.00
    source = stamp_edits(out, again, today=date(2026, 6, 3)).loc[reserved, "source"]
    assert source == ("on-demand $5.00 × 0.65 (1-yr reserved −30…−40 %, Q1 2026); re-derived in the app on "
                      "2026-06-03 when on-demand went $4.50 → $5.00")


def test_rows_entered_or_edited_by_hand_do_not_follow_on_demand():
    before = _table(("L4", "on-demand", 0.60, "Modal", "2026-05"),
                    ("L4", "reserved", 0.39, "on-demand $0.60 × 0.65", "2026-05"),
                    ("L4", "spot", 0.20, "broker quote", "2026-05"),
                    ("T4", "reserved", 0.38, "on-demand $0.59 × 0.65", "2026-05"))
    after = before.copy()
    after.loc[0, "usd_per_gpu_hour"] = 0.80
    after.loc[1, "usd_per_gpu_hour"] = 0.45  # typed in the same edit: the typed price stands
    out = stamp_edits(before, after, today=TODAY)
    assert out.loc[1, "usd_per_gpu_hour"] == 0.45 and out.loc[1, "source"].startswith("edited in the app on")
    assert out.loc[2].to_dict() == before.loc[2].to_dict()  # a quote: not derived
    assert out.loc[3].to_dict() == before.loc[3].to_dict()  # another GPU
    # a new source typed for the on-demand price still moves the rows derived from it
    after = before.copy()
    after.loc[0, ["usd_per_gpu_hour", "source"]] = [0.80, "my quote"]
    assert stamp_edits(before, after, today=TODAY).loc[1, "usd_per_gpu_hour"] == pytest.approx(0.52)


def test_derived_factor_reads_only_the_on_demand_times_a_factor_form():
    assert derived_factor("on-demand $3.79 × 0.65 (1-yr reserved)")[:2] == (0.65, "0.65")
    for source in ("quote: on-demand $3.79 × 0.65", "edited in the app on 2026-06-02, was $2.46 from on-demand "
                   "$3.79 × 0.65", "on-demand × 0.65", "", None):
        assert derived_factor(source) is None


def test_a_discount_tier_above_on_demand_is_named():
    book = PriceBook(entries=(PriceEntry("H200", "on-demand", 3.0, "q", "2026-06"),
                              PriceEntry("H200", "reserved", 3.5, "q", "2026-06"),
                              PriceEntry("H200", "spot", 1.0, "q", "2026-06"),
                              PriceEntry("L4", "reserved", 9.0, "q", "2026-06")))  # no on-demand to compare with
    assert book.above_on_demand() == [
        "the reserved price of H200 ($3.50/GPU-hour) is above its on-demand price ($3.00): reserved is a discount, "
        "so check the price book"]
    assert book.above_on_demand(tiers=("spot",)) == [] and book.above_on_demand(gpus=("L4",)) == []
