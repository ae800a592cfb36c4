"""The dashboard headless against a temporary SQLite store of a chosen kind (empty, seeded, CPU-only,
failed runs). Helpers live beside this file (app_helpers, seed_stores); pytest's importlib mode does not
put test folders on the path, so this does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app_helpers import STORES, open_page  # noqa: E402


@pytest.fixture
def open_app(sqlite_url, monkeypatch, tmp_path):
    """open_app(kind, page) → (AppTest on that page, the ids the seeding returned).

    The shipped reference bundles are kept out (an empty reference folder), so each kind of store is
    exactly what its builder wrote."""

    def open_(kind: str = "empty", page: str = "overview"):
        ids = STORES[kind](sqlite_url) if STORES[kind] else {}
        monkeypatch.setenv("SSMPLAN_DB", sqlite_url)
        monkeypatch.setenv("SSMPLAN_REFERENCE_DIR", str(tmp_path / "no-reference-bundles"))
        return open_page(page), ids

    return open_
