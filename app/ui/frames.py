"""The store read as DataFrames. The measurement frame is cached until a row is added or removed; the
small tables (devices, models, runs, prices) are read fresh on every render so progress shows at once.

Cached frames are shared between sessions: callers never modify them in place.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
from sqlalchemy import func, select

from app.ui.context import session, store_url
from store import repo
from store.db import get_engine
from store.db import session as store_session
from store.models import Measurement


def _measurement_stamp() -> tuple[int, int]:
    with session() as s:
        n, last = s.exec(select(func.count(), func.max(Measurement.id))).one()
    return int(n), int(last or 0)


@st.cache_resource(show_spinner="Reading measurements…", max_entries=4)
def _measurements(url: str, stamp: tuple[int, int]) -> pd.DataFrame:
    with store_session(get_engine(url)) as s:
        return repo.read_measurements(s)


def measurements() -> pd.DataFrame:
    """Every measured point joined with device, model and run provenance (read-only, shared)."""
    return _measurements(store_url(), _measurement_stamp())


def devices() -> pd.DataFrame:
    with session() as s:
        return repo.read_devices(s)


def models() -> pd.DataFrame:
    with session() as s:
        return repo.read_models(s)


def runs(limit: int | None = None) -> pd.DataFrame:
    with session() as s:
        return repo.read_runs(s, limit=limit)


def prices() -> pd.DataFrame:
    with session() as s:
        return repo.read_prices(s)


def counts() -> dict[str, int]:
    with session() as s:
        return repo.counts(s)


def telemetry(run_id: int) -> pd.DataFrame:
    with session() as s:
        return repo.read_telemetry(s, run_id=run_id)
