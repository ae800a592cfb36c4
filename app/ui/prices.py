"""The price book as the Settings page edits it."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.ui import context, validate
from store import repo

COLUMNS = ["gpu", "tier", "usd_per_gpu_hour", "source", "as_of"]
EDITOR_COLUMNS = {
    "gpu": st.column_config.TextColumn("GPU", required=True, help="as the planner names it, e.g. H100-SXM"),
    "tier": st.column_config.SelectboxColumn("tier", options=list(validate.PRICE_TIERS), required=True),
    "usd_per_gpu_hour": st.column_config.NumberColumn("$/GPU-hour", min_value=0.0, format="%.3f", required=True),
    "source": st.column_config.TextColumn("source", help="where the price comes from (provider, link)"),
    "as_of": st.column_config.TextColumn("as of", help="YYYY-MM or YYYY-MM-DD", required=True),
}


def editable(prices: pd.DataFrame) -> pd.DataFrame:
    return prices.reindex(columns=COLUMNS).reset_index(drop=True)


def check(edited: pd.DataFrame) -> tuple[list[dict], list[str]]:
    return validate.price_rows(edited)


def save(rows: list[dict]) -> None:
    with context.session() as s:
        repo.save_prices(s, rows=rows)
