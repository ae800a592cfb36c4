"""The price book: $/GPU-hour per GPU type and pricing tier, each with its source and date; energy price.

GPU types are datasheet keys (`store.datasheets`: "H100-SXM", "A100-80GB", …); a measured GPU with no
datasheet is priced under its device name. Defaults are the mid market prices of May 2026 per GPU, and
reserved and spot derived from them with the typical Q1-2026 discounts (1-year reserved −30…−40 %,
taken as −35 %; spot −50…−65 %, taken as −57.5 %). Prices move fast: edit them, and keep the dates.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import date

import pandas as pd

from app.planning.errors import PlanningError

TIERS = ("on-demand", "reserved", "spot")
RESERVED_FACTOR = 0.65
SPOT_FACTOR = 0.425
HOURS_PER_MONTH = 365.25 * 24 / 12
J_PER_KWH = 3.6e6
SOURCE_MAX_CHARS = 512  # the store's limit on a price's source text
EDITED, ENTERED = "edited in the app on", "entered in the app on"


@dataclass(frozen=True)
class PriceEntry:
    gpu: str
    tier: str
    usd_per_gpu_hour: float
    source: str
    as_of: str  # date the price was read: ISO date or YYYY-MM

    def __post_init__(self) -> None:
        if not isinstance(self.gpu, str) or not self.gpu.strip():
            raise PlanningError("a price needs a GPU type")
        if self.tier not in TIERS:
            raise PlanningError(f"price tier for {self.gpu} must be one of {', '.join(TIERS)} (got {self.tier!r})")
        p = self.usd_per_gpu_hour
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise PlanningError(f"{self.tier} price for {self.gpu} must be a positive $/GPU-hour (got {p!r})")
        if not isinstance(self.as_of, str) or not self.as_of.strip():
            raise PlanningError(
                f"{self.tier} price for {self.gpu} has no date: prices move fast, give the date it was read (as_of)"
            )


@dataclass(frozen=True)
class PriceBook:
    entries: tuple[PriceEntry, ...]
    usd_per_kwh: float | None = None  # None: energy is not charged
    pue: float = 1.0  # facility power ÷ IT power; multiplies GPU energy when it is charged

    def __post_init__(self) -> None:
        seen: set[tuple[str, str]] = set()
        for e in self.entries:
            if not isinstance(e, PriceEntry):
                raise PlanningError("price book entries must be PriceEntry rows")
            if (e.gpu, e.tier) in seen:
                raise PlanningError(f"the price book lists {e.gpu} {e.tier} twice")
            seen.add((e.gpu, e.tier))
        if self.usd_per_kwh is not None:
            k = self.usd_per_kwh
            if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k < 0:
                raise PlanningError(f"energy price must be zero or more $/kWh (got {k!r})")
        p = self.pue
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 1.0 <= p <= 3.0:
            raise PlanningError(f"PUE must be between 1.0 and 3.0 (got {p!r})")

    def get(self, gpu: str, tier: str) -> PriceEntry | None:
        for e in self.entries:
            if e.gpu == gpu and e.tier == tier:
                return e
        return None

    def price(self, gpu: str, tier: str) -> PriceEntry:
        if tier not in TIERS:
            raise PlanningError(f"pricing tier must be one of {', '.join(TIERS)} (got {tier!r})")
        e = self.get(gpu, tier)
        if e is None:
            have = sorted({x.gpu for x in self.entries if x.tier == tier})
            raise PlanningError(
                f"the price book has no {tier} price for {gpu}; add one (priced: {', '.join(have) or 'none'})"
            )
        return e

    def scaled(self, factor: float, gpus: tuple[str, ...] | None = None) -> "PriceBook":
        """Prices multiplied by `factor` (only for `gpus` when given); sources say so."""
        out = []
        for e in self.entries:
            if gpus is None or e.gpu in gpus:
                e = replace(e, usd_per_gpu_hour=e.usd_per_gpu_hour * factor, source=f"{e.source} ×{factor:g}")
            out.append(e)
        return replace(self, entries=tuple(out))

    def above_on_demand(self, gpus: tuple[str, ...] | None = None, tiers: tuple[str, ...] = TIERS[1:]) -> list[str]:
        """A sentence per reserved or spot price (of `tiers`; of `gpus` when given) above the same GPU's
        on-demand price: those tiers are discounts, so such a row is almost surely stale or mistyped."""
        out = []
        for e in self.entries:
            if e.tier not in tiers or e.tier == "on-demand" or (gpus is not None and e.gpu not in gpus):
                continue
            base = self.get(e.gpu, "on-demand")
            if base is not None and e.usd_per_gpu_hour > base.usd_per_gpu_hour:
                out.append(f"the {e.tier} price of {e.gpu} ({_usd(e.usd_per_gpu_hour)}/GPU-hour) is above its "
                           f"on-demand price ({_usd(base.usd_per_gpu_hour)}): {e.tier} is a discount, so check "
                           "the price book")
        return out

    def energy_usd_per_j(self) -> float:
        """$ per joule of GPU energy at the wall (× PUE); 0 when energy is not charged."""
        return 0.0 if self.usd_per_kwh is None else self.usd_per_kwh * self.pue / J_PER_KWH

    # ------------------------------------------------------------------------------------ frames, store

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [dict(gpu=e.gpu, tier=e.tier, usd_per_gpu_hour=e.usd_per_gpu_hour, source=e.source, as_of=e.as_of)
             for e in self.entries],
            columns=["gpu", "tier", "usd_per_gpu_hour", "source", "as_of"],
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, usd_per_kwh: float | None = None, pue: float = 1.0) -> "PriceBook":
        """From `store.repo.read_prices` (or an edited table with the same columns)."""
        need = {"gpu", "tier", "usd_per_gpu_hour"}
        if not need <= set(df.columns):
            raise PlanningError(f"a price table needs the columns {', '.join(sorted(need))}")
        rows = []
        for r in df.to_dict("records"):
            price = r["usd_per_gpu_hour"]
            try:
                price = float(price)
            except (TypeError, ValueError):
                raise PlanningError(f"price for {r['gpu']} {r['tier']} is not a number: {price!r}") from None
            rows.append(PriceEntry(gpu=str(r["gpu"]), tier=str(r["tier"]), usd_per_gpu_hour=price,
                                   source=str(r.get("source") or ""), as_of=str(r.get("as_of") or "")))
        return cls(entries=tuple(rows), usd_per_kwh=usd_per_kwh, pue=pue)


def _usd(x: float) -> str:
    return f"${x:.2f}" if abs(round(x, 2) - x) < 1e-9 else f"${x:.4g}"


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()


def _number(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# an earlier note of ours: "edited in the app on D, was $P" then " (…); first $P0 from S" or " from S"
_OUR_EDIT = re.compile(r"^edited in the app on (?P<on>[\d-]+), was (?P<was>.+?)"
                       r"(?: \((?:edited|entered) in the app on [\d-]+\))?"
                       r"(?:; first (?P<first>.+?) from (?P<first_src>.*)| from (?P<src>.*))?$", re.S)


def edit_note(*, old_price: float, old_source: str, today: date, was: str = "") -> str:
    """The source of a price changed in the app: when, what it was and where that came from, so the row
    never claims a published source for a number someone typed. `was` names the old GPU and tier when the
    row was moved to another one. An earlier note of ours is folded in, not nested: the note says the
    previous price, when it was set in the app, and the first price with its published source."""
    head = f"{EDITED} {today.isoformat()}, was {was}{_usd(old_price)}"
    old_source = old_source.strip()
    ours = _OUR_EDIT.match(old_source)
    if ours:
        first, src = (ours["first"], ours["first_src"]) if ours["first"] else (ours["was"], ours["src"])
        note = f"{head} (edited in the app on {ours['on']})" + (f"; first {first} from {src}" if src else "")
    elif old_source.startswith(ENTERED):
        note = f"{head} ({old_source})"
    else:
        note = f"{head} from {old_source}" if old_source else head
    return note if len(note) <= SOURCE_MAX_CHARS else note[:SOURCE_MAX_CHARS - 1] + "…"


# a price derived from the on-demand one by a factor, as the default book writes them ("on-demand $3.79 × 0.65
# (1-yr reserved …)"), possibly re-derived in the app already ("…; re-derived in the app on D when …")
_DERIVED = re.compile(r"^on-demand \$(?P<base>[\d.,]+) × (?P<factor>\d+(?:\.\d+)?)(?P<rest>.*?)"
                      r"(?:; re-derived in the app on [\d-]+ when on-demand went .*)?$", re.S)
REDERIVED = "re-derived in the app on"


def derived_factor(source: str) -> tuple[float, str, str] | None:
    """(factor, factor as written, the rest of the note) when a price's source says it is the on-demand price
    times a factor; None for any other source (a quote, an edit in the app)."""
    m = _DERIVED.match(_text(source))
    if m is None:
        return None
    factor = float(m["factor"])
    return (factor, m["factor"], m["rest"]) if 0 < factor else None


def rederive(old: float, new: float, source: str, *, today: date) -> tuple[float, str] | None:
    """(price, source) of a row derived from an on-demand price that went from `old` to `new`: the same factor
    of the new price, its note saying when and from what; None when `source` does not say it was derived."""
    derived = derived_factor(source)
    if derived is None:
        return None
    factor, written, rest = derived
    price = round(new * factor, 2) or new * factor  # cents, as the default book, unless that rounds to nothing
    note = (f"on-demand {_usd(new)} × {written}{rest}; {REDERIVED} {today.isoformat()} when on-demand went "
            f"{_usd(old)} → {_usd(new)}")
    return price, (note if len(note) <= SOURCE_MAX_CHARS else note[:SOURCE_MAX_CHARS - 1] + "…")


def stamp_edits(before: pd.DataFrame, after: pd.DataFrame, *, today: date) -> pd.DataFrame:
    """`after`, an edited copy of the price table `before`, with the provenance of what was changed in it.

    Rows are matched by index label (the table editor keeps the labels of the rows it was given and gives
    new rows new ones). A row whose price, GPU or tier changed while its source did not (or was cleared)
    gets `edit_note` as its source, and today as its date unless that was changed too; an unchanged row
    keeps its source and date. A new row with no source says it was entered in the app.

    When an on-demand price changes, the reserved and spot rows of that GPU whose source says they are the
    on-demand price times a factor (as the defaults are), and that were left alone in this edit, follow it:
    the same factor of the new price, dated today, their source saying so (`rederive`). Otherwise a reserved
    price could end up above on-demand while still claiming to be its discount."""
    out = after.copy()
    for col in ("source", "as_of"):
        if col not in out.columns:
            out[col] = ""
        out[col] = out[col].astype(object)
    old_rows = before.to_dict("index")
    stamp = today.isoformat()
    for label, row in after.to_dict("index").items():
        old = old_rows.get(label)
        source = _text(row.get("source"))
        if old is None:
            if not source and any(_text(v) for v in row.values()):
                out.at[label, "source"] = f"{ENTERED} {stamp}"
            continue
        price, old_price = _number(row.get("usd_per_gpu_hour")), _number(old.get("usd_per_gpu_hour"))
        moved = (_text(row.get("gpu")).casefold() != _text(old.get("gpu")).casefold()
                 or _text(row.get("tier")) != _text(old.get("tier")))
        repriced = price is not None and old_price is not None and not math.isclose(price, old_price, rel_tol=1e-9)
        if not (moved or repriced) or old_price is None or (source and source != _text(old.get("source"))):
            continue
        was = f"{_text(old.get('gpu'))} {_text(old.get('tier'))} " if moved else ""
        out.at[label, "source"] = edit_note(old_price=old_price, old_source=_text(old.get("source")), today=today,
                                            was=was)
        if _text(row.get("as_of")) == _text(old.get("as_of")):
            out.at[label, "as_of"] = stamp
    _follow_on_demand(before, after, out, today=today)
    return out


def _unchanged(row: dict, old: dict | None) -> bool:
    return old is not None and all(_text(row.get(c)) == _text(old.get(c)) for c in ("gpu", "tier", "source")) \
        and _number(row.get("usd_per_gpu_hour")) == _number(old.get("usd_per_gpu_hour"))


def _follow_on_demand(before: pd.DataFrame, after: pd.DataFrame, out: pd.DataFrame, *, today: date) -> None:
    """Re-derive in `out` the rows derived from an on-demand price that this edit changed (see stamp_edits)."""
    old_rows, new_rows = before.to_dict("index"), after.to_dict("index")
    for label, row in new_rows.items():
        old = old_rows.get(label)
        if old is None or _text(row.get("tier")) != "on-demand" or _text(old.get("tier")) != "on-demand" \
                or _text(row.get("gpu")).casefold() != _text(old.get("gpu")).casefold():
            continue
        price, old_price = _number(row.get("usd_per_gpu_hour")), _number(old.get("usd_per_gpu_hour"))
        if price is None or price <= 0 or old_price is None or math.isclose(price, old_price, rel_tol=1e-9):
            continue
        gpu = _text(row.get("gpu")).casefold()
        for other, derived in new_rows.items():
            if _text(derived.get("tier")) in ("", "on-demand") or _text(derived.get("gpu")).casefold() != gpu \
                    or not _unchanged(derived, old_rows.get(other)):
                continue
            followed = rederive(old_price, price, _text(derived.get("source")), today=today)
            if followed is not None:
                out.at[other, "usd_per_gpu_hour"], out.at[other, "source"] = followed
                out.at[other, "as_of"] = today.isoformat()


def _tiers(gpu: str, mid: float, sources: str, as_of: str) -> tuple[PriceEntry, ...]:
    return (
        PriceEntry(gpu, "on-demand", mid, f"market mid: {sources}", as_of),
        PriceEntry(gpu, "reserved", round(mid * RESERVED_FACTOR, 2),
                   f"on-demand ${mid:.2f} × {RESERVED_FACTOR} (1-yr reserved −30…−40 %, Q1 2026)", as_of),
        PriceEntry(gpu, "spot", round(mid * SPOT_FACTOR, 2),
                   f"on-demand ${mid:.2f} × {SPOT_FACTOR} (spot −50…−65 %, Q1 2026)", as_of),
    )


DEFAULT_ENTRIES: tuple[PriceEntry, ...] = (
    *_tiers("H100-SXM", 2.99, "RunPod $2.69 (2026-03), Lambda $3.78 (2026-05-07), Modal $3.95 (2026-05), "
            "specialty clouds $2.50–3.50 (2026-05)", "2026-05"),
    *_tiers("H200", 3.79, "RunPod $3.59 (2026-03), specialty clouds $3.50–4.50 (2026-05), "
            "AWS capacity blocks $5.41 (late 2024)", "2026-05"),
    *_tiers("A100-80GB", 1.39, "RunPod SXM $1.39 (2026-03), Modal $2.50 (2026-05), "
            "specialty clouds $1.10–1.50 (2026-05)", "2026-05"),
    *_tiers("L40S", 0.99, "RunPod $0.79 (2026-03), Modal $1.95 (2026-05)", "2026-05"),
    *_tiers("L4", 0.60, "RunPod $0.44 (2026-03), Modal $0.80 (2026-05)", "2026-05"),
    *_tiers("RTX-4090", 0.45, "RunPod $0.34 (2026-03), long-tail clouds", "2026-03"),
    *_tiers("T4", 0.59, "Modal $0.59 (2026-05)", "2026-05"),
)


def default_price_book(*, usd_per_kwh: float | None = None, pue: float = 1.0) -> PriceBook:
    return PriceBook(entries=DEFAULT_ENTRIES, usd_per_kwh=usd_per_kwh, pue=pue)


ENERGY_KEY, PUE_KEY = "usd_per_kwh", "pue"


def save_price_book(s, book: PriceBook) -> None:
    """Store the price book (prices table) and the energy settings."""
    from store import repo

    repo.save_prices(s, rows=book.to_frame().to_dict("records"))
    repo.set_setting(s, key=ENERGY_KEY, value=book.usd_per_kwh)
    repo.set_setting(s, key=PUE_KEY, value=book.pue)


def load_price_book(s) -> PriceBook:
    """The store's price book; the defaults when the store has none."""
    from store import repo

    df = repo.read_prices(s)
    kwh = repo.get_setting(s, key=ENERGY_KEY)
    pue = repo.get_setting(s, key=PUE_KEY) or 1.0
    if df.empty:
        return default_price_book(usd_per_kwh=kwh, pue=pue)
    return PriceBook.from_frame(df, usd_per_kwh=kwh, pue=pue)
