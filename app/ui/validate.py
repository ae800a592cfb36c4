"""Checking what people type. Each check returns (value, None) or (None, a message for beside the field);
none raises. Plain Python; no streamlit."""

from __future__ import annotations

import math
import re
from datetime import date

import pandas as pd

PRICE_TIERS = ("on-demand", "reserved", "spot")
_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$")


def int_list(text: str, *, lo: int, hi: int, max_items: int = 32) -> tuple[list[int] | None, str | None]:
    """Whole numbers separated by commas or spaces, each in [lo, hi]; sorted, duplicates dropped."""
    parts = [p for p in re.split(r"[,\s]+", (text or "").strip()) if p]
    if not parts:
        return None, "enter at least one number"
    values = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            return None, f"{p!r} is not a whole number"
        if not lo <= v <= hi:
            return None, f"{v:,} is outside {lo:,}–{hi:,}"
        values.append(v)
    values = sorted(set(values))
    if len(values) > max_items:
        return None, f"at most {max_items} values ({len(values)} given)"
    return values, None


def number(x, *, lo: float = 0.0, hi: float = math.inf, lo_open: bool = False) -> tuple[float | None, str | None]:
    """A finite number in [lo, hi] (or (lo, hi] with `lo_open`)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None, f"{x!r} is not a number"
    if math.isnan(v) or math.isinf(v):
        return None, "must be a finite number"
    if v < lo or (lo_open and v == lo):
        return None, f"must be {'above' if lo_open else 'at least'} {lo:g}"
    if v > hi:
        return None, f"must be at most {hi:g}"
    return v, None


def as_of(text) -> tuple[str | None, str | None]:
    """A price date: YYYY-MM or YYYY-MM-DD, not in the future."""
    t = str(text or "").strip()
    if not _DATE.match(t):
        return None, f"date {t!r} should read YYYY-MM or YYYY-MM-DD"
    try:
        d = date.fromisoformat(t if len(t) == 10 else t + "-01")
    except ValueError:
        return None, f"{t} is not a calendar date"
    if d > date.today():
        return None, f"{t} is in the future"
    return t, None


def price_rows(frame: pd.DataFrame, known_gpus: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """The edited price book as rows for `store.repo.save_prices`, and one message per bad row. With
    `known_gpus`, a GPU is written as the known name it matches whatever its case, and one matching none is
    refused (a price the planner would never find)."""
    rows, errors = [], []
    seen: set[tuple[str, str]] = set()
    known = {g.casefold(): g for g in known_gpus or []}
    unknown = False
    for i, r in enumerate(frame.to_dict("records"), start=1):
        if all(v is None or (isinstance(v, float) and math.isnan(v)) or v == "" for v in r.values()):
            continue
        gpu = str(r.get("gpu") or "").strip()
        tier = str(r.get("tier") or "").strip()
        price, price_err = number(r.get("usd_per_gpu_hour"), lo=0.0, hi=1000.0, lo_open=True)
        when, when_err = as_of(r.get("as_of"))
        problems = []
        if not gpu:
            problems.append("GPU is empty")
        elif known_gpus is not None:
            if gpu.casefold() in known:
                gpu = known[gpu.casefold()]
            else:
                problems.append(f"GPU {gpu!r} is not a known GPU")
                unknown = True
        if tier not in PRICE_TIERS:
            problems.append(f"tier must be one of {', '.join(PRICE_TIERS)}")
        if price_err:
            problems.append(f"$/GPU-hour {price_err}")
        if when_err:
            problems.append(when_err)
        if (gpu, tier) in seen:
            problems.append(f"{gpu} {tier} appears twice")
        seen.add((gpu, tier))
        if problems:
            errors.append(f"row {i}: " + "; ".join(problems))
            continue
        rows.append({"gpu": gpu, "tier": tier, "usd_per_gpu_hour": price,
                     "source": str(r.get("source") or "").strip(), "as_of": when})
    if unknown:
        errors.append(f"known GPUs: {', '.join(known_gpus) or 'none'}")
    return rows, errors
