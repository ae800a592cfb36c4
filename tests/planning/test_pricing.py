import math

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
