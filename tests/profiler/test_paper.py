"""The paper table composed from measurements, against hand-computed seconds."""

import pandas as pd
import pytest

from profiler.paper import format_table, mean_over, paper_row, paper_table


def _frame(rows):
    base = dict(preset="mamba3-siso-1.5b", batch=128, prompt_len=0, context_len=0, oom=False, latency_p50_ms=None)
    return pd.DataFrame([{**base, **r} for r in rows])


@pytest.mark.parametrize("points, lo, hi, expected", [
    ([(512, 8.0), (1024, 8.0)], 512, 1024, 8.0),
    ([(512, 2.0), (768, 3.0), (1024, 4.0)], 512, 1024, 3.0),
    ([(512, 2.0), (1024, 6.0), (4096, 99.0)], 512, 1024, 4.0),  # points outside the span ignored
    ([(512, 2.0), (768, 3.0)], 512, 1024, None),  # the far end is missing
])
def test_mean_over(points, lo, hi, expected):
    assert mean_over(points, lo, hi) == (None if expected is None else pytest.approx(expected))


def test_row_composes_prefill_and_decode_and_compares_with_the_paper():
    f = _frame([
        dict(phase="prefill", prompt_len=512, latency_p50_ms=500.0),
        dict(phase="decode", context_len=512, latency_p50_ms=7.0),
        dict(phase="decode", context_len=768, latency_p50_ms=7.5),
        dict(phase="decode", context_len=1024, latency_p50_ms=8.0),
    ])
    row = paper_row(f, "mamba3-siso-1.5b", 512)
    # 0.5 s + 512 steps × 7.5 ms = 4.34 s; the paper: 4.39 s
    assert row["prefill_s"] == pytest.approx(0.5) and row["decode_s"] == pytest.approx(3.84)
    assert row["total_s"] == pytest.approx(4.34) and row["paper_total_s"] == 4.39
    assert row["ratio_to_paper"] == pytest.approx(4.34 / 4.39) and row["note"] is None
    assert paper_table(f) == [row]
    assert "mamba3-siso-1.5b" in format_table([row])


def test_an_out_of_memory_decode_makes_the_row_n_a():
    f = _frame([
        dict(preset="llama-3.2-1b", phase="prefill", prompt_len=16384, latency_p50_ms=9000.0),
        dict(preset="llama-3.2-1b", phase="decode", context_len=16384, latency_p50_ms=30.0),
        dict(preset="llama-3.2-1b", phase="decode", context_len=24576, oom=True),
        dict(preset="llama-3.2-1b", phase="decode", context_len=32768, oom=True),
    ])
    row = paper_row(f, "llama-3.2-1b", 16384)
    assert row["total_s"] is None and row["prefill_s"] == pytest.approx(9.0)
    assert row["note"] == "decode at batch 128, context 24576 ran out of memory"
    assert row["paper_total_s"] == 976.50


def test_a_prefill_too_large_for_one_call_is_composed_from_micro_batches():
    f = _frame([
        dict(phase="prefill", prompt_len=16384, oom=True),
        dict(phase="prefill", batch=16, prompt_len=16384, latency_p50_ms=2000.0),
        dict(phase="prefill", batch=1, prompt_len=16384, latency_p50_ms=140.0),
        dict(phase="decode", context_len=16384, latency_p50_ms=7.0),
        dict(phase="decode", context_len=32768, latency_p50_ms=7.0),
    ])
    row = paper_row(f, "mamba3-siso-1.5b", 16384)
    # 128 / 16 = 8 micro-batches of 2.0 s = 16 s; decode 16384 × 7 ms = 114.688 s
    assert row["prefill_s"] == pytest.approx(16.0) and row["decode_s"] == pytest.approx(114.688)
    assert row["total_s"] == pytest.approx(130.688)
    assert row["note"] == "prefill as 8 micro-batches of 16 (128×16384 does not fit in one call)"
