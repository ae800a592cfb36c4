"""The price book as the Settings page edits it: the planner's `PriceBook`, kept in the store."""

from __future__ import annotations

from datetime import date

import pandas as pd
import streamlit as st

from app.planning import PlanningError, PriceBook, default_price_book, load_price_book, save_price_book
from app.planning.pricing import stamp_edits
from app.planning.projection import sheet_for
from app.ui import context, validate
from store import repo
from store.datasheets import DATASHEETS

EDITOR_COLUMNS = {
    # no column is `required`: the table would then hold back a half-filled new row from the page, which would
    # save without it and say nothing; the page's own check names what the row lacks instead
    "gpu": st.column_config.TextColumn(
        "GPU", help="a datasheet key (H100-SXM, A100-80GB, H200, L40S, L4, T4…), or the name of a measured device "
                    "that has no datasheet"),
    "tier": st.column_config.SelectboxColumn("tier", options=list(validate.PRICE_TIERS)),
    "usd_per_gpu_hour": st.column_config.NumberColumn("$/GPU-hour", format="%.3f"),  # the check refuses ≤ 0
    "source": st.column_config.TextColumn("source", help="where the price comes from (provider, link)"),
    "as_of": st.column_config.TextColumn("as of", help="the date the price was read: YYYY-MM or YYYY-MM-DD"),
}


def current() -> tuple[PriceBook, str | None]:
    """The store's price book, and a note when it is not what the store holds (nothing saved yet, or
    saved prices the planner rejects)."""
    with context.session() as s:
        if repo.read_prices(s).empty:
            return load_price_book(s), ("These are the planner's default prices, with their sources and dates; "
                                        "nothing is saved in this store yet. Edit them and save to keep them.")
        try:
            return load_price_book(s), None
        except PlanningError as exc:
            return default_price_book(), f"The saved price book cannot be used ({exc}); showing the defaults."


def known_gpus() -> list[str]:
    """The names a price can be given under: the datasheet keys, then the store's devices that have no
    datasheet (the planner prices those under their device name, a CPU included)."""
    with context.session() as s:
        devices = repo.read_devices(s)
    own = {name for name, key in zip(devices["name"], devices["datasheet_key"])
           if sheet_for(datasheet_key=key if isinstance(key, str) else None, device_name=name) is None}
    return [*DATASHEETS, *sorted(own)]


def check(edited: pd.DataFrame, *, usd_per_kwh: float | None, pue: float, known_gpus: list[str],
          before: pd.DataFrame | None = None, today: date | None = None) -> tuple[PriceBook | None, list[str]]:
    """The edited table as a price book, or one message per problem. A GPU name is matched to one of
    `known_gpus` whatever its case; one matching none is refused. With `before` (the table as the editor was
    given it), a price changed without a new source says it was edited in the app, and is dated `today`
    (`pricing.stamp_edits`); a new row without a source says it was entered in the app."""
    if before is not None:
        edited = stamp_edits(before, edited, today=today or date.today())
    rows, problems = validate.price_rows(edited, known_gpus)
    if not rows and not problems:
        problems = ["the price book needs at least one price"]
    if problems:
        return None, problems
    try:
        return PriceBook.from_frame(pd.DataFrame(rows), usd_per_kwh=usd_per_kwh, pue=pue), []
    except PlanningError as exc:
        return None, [str(exc)]


def rederived(edited: pd.DataFrame, *, before: pd.DataFrame, today: date | None = None) -> list[str]:
    """A sentence per reserved or spot price that saving `edited` will re-derive from an on-demand price changed
    in it (`pricing.stamp_edits`): the table shows what was typed, so the page says what else will change."""
    stamped = stamp_edits(before, edited, today=today or date.today())
    out = []
    typed = pd.to_numeric(edited["usd_per_gpu_hour"], errors="coerce")
    for label, row in stamped.iterrows():
        old, new = typed.get(label), row["usd_per_gpu_hour"]
        if pd.notna(old) and pd.notna(new) and float(old) != float(new):
            out.append(f"{row['gpu']} {row['tier']}: ${float(old):.2f} → ${float(new):.2f} "
                       "(it was derived from the on-demand price you changed; its source will say so)")
    return out


def save(book: PriceBook) -> None:
    with context.session() as s:
        save_price_book(s, book)
