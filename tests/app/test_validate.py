"""Field validation: a value, or a message for beside the field; never an exception."""

import math

import pandas as pd
import pytest

from app.ui import validate

INT_LISTS = {
    "sorted-unique": ("4, 1 2,4", [1, 2, 4], None),
    "empty": ("  ", None, "enter at least one number"),
    "word": ("1, two", None, "'two' is not a whole number"),
    "float": ("1.5", None, "'1.5' is not a whole number"),
    "too-big": ("1, 5000", None, "5,000 is outside 1–4,096"),
    "zero": ("0", None, "0 is outside 1–4,096"),
}


@pytest.mark.parametrize("text,value,message", INT_LISTS.values(), ids=INT_LISTS.keys())
def test_int_list(text, value, message):
    assert validate.int_list(text, lo=1, hi=4096) == (value, message)


def test_int_list_caps_the_count():
    value, message = validate.int_list(" ".join(str(i) for i in range(1, 40)), lo=1, hi=100, max_items=8)
    assert value is None and message == "at most 8 values (39 given)"


NUMBERS = {
    "ok": (dict(x="2.5"), (2.5, None)),
    "nan": (dict(x=math.nan), (None, "must be a finite number")),
    "text": (dict(x="abc"), (None, "'abc' is not a number")),
    "below": (dict(x=-1, lo=0.0), (None, "must be at least 0")),
    "open-low": (dict(x=0, lo=0.0, lo_open=True), (None, "must be above 0")),
    "above": (dict(x=5, hi=3.0), (None, "must be at most 3")),
}


@pytest.mark.parametrize("kwargs,expected", NUMBERS.values(), ids=NUMBERS.keys())
def test_number(kwargs, expected):
    x = kwargs.pop("x")
    assert validate.number(x, **kwargs) == expected


@pytest.mark.parametrize("text,ok", [("2026-05", True), ("2026-05-07", True), ("2026-13", False),
                                     ("2026-02-30", False), ("May 2026", False), ("", False), ("2999-01", False)])
def test_as_of(text, ok):
    value, message = validate.as_of(text)
    assert (value == text and message is None) if ok else (value is None and message)


def test_price_rows_reports_each_bad_row_and_keeps_the_good():
    frame = pd.DataFrame([
        dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=2.99, source="x", as_of="2026-05"),
        dict(gpu="", tier="spot", usd_per_gpu_hour=1.0, source="", as_of="2026-05"),
        dict(gpu="L4", tier="weekly", usd_per_gpu_hour=-1, source="", as_of="soon"),
        dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=3.5, source="y", as_of="2026-04"),
        dict(gpu=None, tier=None, usd_per_gpu_hour=math.nan, source=None, as_of=None),  # the editor's blank row
    ])
    rows, errors = validate.price_rows(frame)
    assert rows == [dict(gpu="H100-SXM", tier="on-demand", usd_per_gpu_hour=2.99, source="x", as_of="2026-05")]
    assert errors == [
        "row 2: GPU is empty",
        "row 3: tier must be one of on-demand, reserved, spot; $/GPU-hour must be above 0; "
        "date 'soon' should read YYYY-MM or YYYY-MM-DD",
        "row 4: H100-SXM on-demand appears twice",
    ]
