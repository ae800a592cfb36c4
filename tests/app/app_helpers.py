"""Opening the dashboard headless and reading what it shows (Streamlit AppTest)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
from streamlit.testing.v1 import AppTest

import seed_stores

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "app" / "main.py"
PAGES = {"overview": "Overview", "profile": "Profile", "explore": "Explore", "plan": "Plan", "export": "Export",
         "settings": "Settings"}
STORES = {"empty": None, "seeded": seed_stores.seeded, "cpu_only": seed_stores.cpu_only, "failed": seed_stores.failed,
          "reference": seed_stores.reference}


def open_page(page: str = "overview") -> AppTest:
    """The app on `page`, reading the store in SSMPLAN_DB."""
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    return at


def chart_frames(at: AppTest) -> list[tuple[dict, list[pd.DataFrame]]]:
    """Each Vega-Lite chart on the screen: its spec and the data frames sent with it."""
    out = []
    for chart in at.get("vega_lite_chart"):
        frames = [pa.ipc.open_stream(io.BytesIO(d.data.data)).read_pandas() for d in chart.proto.datasets]
        out.append((json.loads(chart.proto.spec), frames))
    return out


def texts(at: AppTest) -> str:
    """Every piece of text on the screen, for "does it say X" checks."""
    parts = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the screen that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)
