"""Formatting: units people read, and "n/a" (never 0) for what is unknown."""

import math
from datetime import datetime, timezone

import pytest

from app.ui import fmt

CASES = {
    "ms-sub-ms": (fmt.ms, 0.0123, "12.3 µs"),
    "ms": (fmt.ms, 12.34, "12.3 ms"),
    "ms-seconds": (fmt.ms, 2500.0, "2.5 s"),
    "gib": (fmt.nbytes, 80 * 2**30, "80 GiB"),
    "kib": (fmt.nbytes, 1536, "1.5 KiB"),
    "tb-per-s": (fmt.bytes_per_s, 3.35e12, "3.35 TB/s"),
    "tflops": (fmt.flops_per_s, 9.89e14, "989 TFLOP/s"),
    "tok-per-s": (fmt.per_s, 12_345.0, "12.3k tok/s"),
    "tok-per-s-small": (fmt.per_s, 12.0, "12 tok/s"),
    "pct": (fmt.pct, 0.4567, "45.7 %"),
    "usd": (fmt.usd, 1234.5, "$1,234.50"),
    "usd-cents": (fmt.usd, 0.000123, "$0.00012"),
    "usd-tiny": (fmt.usd, 5.2e-6, "$0.0000052"),
    "count": (fmt.count, 105000, "105,000"),
    "duration-s": (fmt.duration_s, 42.4, "42 s"),
    "duration-min": (fmt.duration_s, 125, "2 min 05 s"),
    "duration-h": (fmt.duration_s, 3 * 3600 + 7 * 60, "3 h 07 min"),
    "when": (fmt.when, datetime(2026, 5, 1, 12, 30, tzinfo=timezone.utc), "2026-05-01 12:30 UTC"),
    "when-naive-is-utc": (fmt.when, datetime(2026, 5, 1, 12, 30), "2026-05-01 12:30 UTC"),
}


@pytest.mark.parametrize("fn,value,expected", CASES.values(), ids=CASES.keys())
def test_format(fn, value, expected):
    assert fn(value) == expected


@pytest.mark.parametrize("fn", [fmt.ms, fmt.nbytes, fmt.bytes_per_s, fmt.flops_per_s, fmt.per_s, fmt.pct,
                                fmt.usd, fmt.count, fmt.duration_s, fmt.when])
@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_reads_na(fn, missing):
    assert fn(missing) == "n/a"


def test_definitions_cover_the_product_metrics():
    text = fmt.definitions_markdown()
    for name in ("TTFT", "TPOT", "Throughput", "Peak memory", "Achieved bandwidth", "Arithmetic intensity",
                 "MBU / MFU", "Energy"):
        assert f"**{name}**" in text
    assert "(E2E − TTFT) / (N − 1)" in text
