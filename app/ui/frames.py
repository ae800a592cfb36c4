"""The store read as DataFrames. The measurement frame is cached per run and re-read only where rows
were added or removed; the small tables (devices, models, runs, prices) are read fresh on every render
so progress shows at once.

Cached frames are shared between sessions: callers never modify them in place.
"""

from __future__ import annotations

import threading

import pandas as pd
import streamlit as st
from sqlalchemy import func, select

from app.ui import points
from app.ui.context import engine, session, store_url
from store import repo
from store.db import get_engine
from store.db import session as store_session
from store.models import Measurement


def _sizes(s) -> dict[int, int]:
    rows = s.exec(select(Measurement.run_id, func.count()).group_by(Measurement.run_id)).all()
    return {int(run_id): int(n) for run_id, n in rows}


class _PointCache:
    """Measured points of one store. A run's points only grow (and not at all once it has finished), so
    when the per-run row counts change only the runs that changed are re-read, not the whole store.
    Frames derived from the points (the Overview headline) are kept until the points change."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self.sizes: dict[int, int] | None = None
        self.points: pd.DataFrame | None = None
        self.derived: dict[str, pd.DataFrame] = {}

    def _refresh(self) -> None:
        with store_session(get_engine(self.url)) as s:
            sizes = _sizes(s)
            if self.points is not None and sizes == self.sizes:
                return
            old = self.sizes or {}
            changed = [r for r, n in sizes.items() if old.get(r) != n]
            gone = [r for r in old if r not in sizes]
            if self.points is None or len(changed) == len(sizes):
                points = repo.read_measurements(s)
            else:
                kept = self.points[~self.points["run_id"].isin(changed + gone)]
                fresh = repo.read_measurements(s, run_ids=changed) if changed else kept.iloc[:0]
                points = pd.concat([kept, fresh], ignore_index=True)
            self.sizes, self.points, self.derived = sizes, points, {}

    def frame(self) -> pd.DataFrame:
        with self.lock:
            self._refresh()
            return self.points

    def version(self) -> tuple:
        """Changes whenever the points do: (run id, rows) per run."""
        with self.lock:
            self._refresh()
            return tuple(sorted(self.sizes.items()))

    def derive(self, name: str, fn) -> pd.DataFrame:
        """`fn(points)`, computed once per state of the store's points."""
        with self.lock:
            self._refresh()
            if name not in self.derived:
                self.derived[name] = fn(self.points)
            return self.derived[name]


@st.cache_resource(show_spinner=False)
def _point_cache(url: str) -> _PointCache:
    return _PointCache(url)


def _points() -> _PointCache:
    engine()
    return _point_cache(store_url())


def measurements() -> pd.DataFrame:
    """Every measured point joined with device, model and run provenance (read-only, shared)."""
    with st.spinner("Reading measurements…", show_time=True):
        return _points().frame()


def run_sizes() -> dict[int, int]:
    """Points stored per run id (one cheap query; no points read)."""
    with session() as s:
        return _sizes(s)


def points_version() -> tuple:
    return _points().version()


def headline() -> pd.DataFrame:
    """The Overview's comparison table (see `points.headline`), cached with the points."""
    with st.spinner("Reading measurements…", show_time=True):
        return _points().derive("headline", points.headline)


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
