"""Which measurement of a point stands when several runs measured it: the newest one.

A store gathers runs made by different revisions of the code (the shipped bundles, archived bundles imported
again, the user's own runs). Kernels change between revisions, so a point measured again by newer code
replaces the older measurement rather than being averaged with it. "Newest" is when the point was measured
(the measurement's `created_at`, which bundles carry across stores, so an old bundle imported today is still
old), then the order the rows were written (`id`) for rows without a time or measured at the same instant.

Two uses share this order: the Explore page shows one measurement per point (`latest_rows`); the planner
keeps every measurement of a point made by the newest measurement's git revision (`newest_revision_rows`),
so runs of the same code on several machines still pool into one surface.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNRECORDED_REVISION = "unrecorded"  # a run made outside a git checkout


def oldest_first(df: pd.DataFrame) -> np.ndarray:
    """Positions of `df`'s rows ordered by when each point was measured, then by row id; rows without a
    time come first."""
    order = pd.DataFrame(index=range(len(df)))  # positions: the frame's own index may repeat labels
    if "created_at" in df.columns:
        measured = pd.to_datetime(df["created_at"], errors="coerce", utc=True).dt.tz_convert(None)
        order["measured"] = measured.to_numpy()
    if "id" in df.columns:
        order["id"] = pd.to_numeric(df["id"], errors="coerce").to_numpy()
    if order.columns.empty:
        return np.arange(len(df))
    return order.sort_values(list(order.columns), na_position="first", kind="stable").index.to_numpy()


def latest_rows(df: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """The newest measurement of each point named by `key`."""
    if df.empty:
        return df
    positions = oldest_first(df)
    newest = df[key].iloc[positions].reset_index(drop=True).duplicated(keep="last").to_numpy()
    return df.iloc[positions[~newest]]


def revisions(df: pd.DataFrame) -> pd.Series:
    """Each row's git revision as text ("unrecorded" when its run had none)."""
    if "git_revision" not in df.columns:
        return pd.Series(UNRECORDED_REVISION, index=df.index, dtype=object)
    text = df["git_revision"].astype(object).where(df["git_revision"].notna(), "").astype(str)
    return text.where(text != "", UNRECORDED_REVISION)


def newest_revision_rows(df: pd.DataFrame, key: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, superseded): per point named by `key`, the measurements made by the git revision of its newest
    measurement are kept (every run of that revision pools), and those of other revisions are superseded."""
    if df.empty:
        return df, df.iloc[0:0]
    positions = oldest_first(df)
    points = df[key].iloc[positions].reset_index(drop=True)
    points["_revision"] = revisions(df).to_numpy()[positions]
    newest = points.groupby(key, dropna=False, sort=False)["_revision"].transform("last")
    keep = np.zeros(len(df), dtype=bool)
    keep[positions[(points["_revision"] == newest).to_numpy()]] = True
    return df[keep], df[~keep]
