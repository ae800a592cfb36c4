"""Metric arithmetic against hand-computed values."""

import math

import pytest

from profiler.metrics import (derive, energy_from_counter_j, integrate_power_j, latency_stats, per_token, percentile,
                              tokens_per_s)


@pytest.mark.parametrize("values, q, expected", [
    ([1.0, 2.0, 3.0, 4.0, 5.0], 0.5, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
    ([1.0, 2.0, 3.0, 4.0, 5.0], 0.1, 1.4),  # pos 0.4 between 1 and 2
    ([1.0, 2.0, 3.0, 4.0, 5.0], 0.9, 4.6),
    ([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0], 0.1, 20.0),
    ([7.0], 0.9, 7.0),
], ids=["median-odd", "median-even", "p10-five", "p90-five", "p10-eleven", "single"])
def test_percentile(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_latency_stats_sorts_and_counts():
    st = latency_stats([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (st.p10_ms, st.p50_ms, st.p90_ms, st.n) == pytest.approx((1.4, 3.0, 4.6, 5))


def test_percentile_of_nothing_refuses():
    with pytest.raises(ValueError):
        percentile([], 0.5)


@pytest.mark.parametrize("phase, batch, prompt, ms, expected", [
    ("decode", 128, 0, 8.0, 16_000.0),  # 128 tokens / 8 ms
    ("prefill", 128, 512, 500.0, 131_072.0),  # 65,536 tokens / 0.5 s
    ("decode", 1, 0, 1.25, 800.0),
])
def test_tokens_per_s(phase, batch, prompt, ms, expected):
    assert tokens_per_s(phase, batch, prompt, ms) == pytest.approx(expected)


def test_derive_against_hand_values():
    # 3 GB in 2 ms = 1.5 TB/s; 6 TFLOP in 2 ms = 3 PFLOP/s; against 3 TB/s and 1 PFLOP/s peaks.
    d = derive(phase="decode", batch=16, prompt_len=0, latency_ms=2.0, bytes_moved=3e9, flops=6e12,
               peak_bw_bytes_per_s=3e12, peak_flops_per_s=1e15)
    assert d.tokens_per_s == pytest.approx(8000.0)
    assert d.achieved_bw_bytes_per_s == pytest.approx(1.5e12)
    assert d.achieved_flops_per_s == pytest.approx(3e15)
    assert d.arithmetic_intensity == pytest.approx(2000.0)
    assert d.mbu == pytest.approx(0.5)
    assert d.mfu == pytest.approx(3.0)


def test_unknown_peak_gives_no_ratio_and_no_latency_gives_only_intensity():
    d = derive(phase="prefill", batch=1, prompt_len=8, latency_ms=4.0, bytes_moved=100.0, flops=400.0,
               peak_bw_bytes_per_s=None, peak_flops_per_s=0.0)
    assert d.mbu is None and d.mfu is None and d.achieved_bw_bytes_per_s == pytest.approx(25_000.0)
    oom = derive(phase="decode", batch=1, prompt_len=0, latency_ms=None, bytes_moved=100.0, flops=400.0,
                 peak_bw_bytes_per_s=1.0, peak_flops_per_s=1.0)
    assert oom.arithmetic_intensity == 4.0
    assert (oom.tokens_per_s, oom.achieved_bw_bytes_per_s, oom.mbu, oom.mfu) == (None, None, None, None)


@pytest.mark.parametrize("start, end, expected", [
    (1_000_000.0, 1_250_000.0, 250.0),  # mJ → J
    (5.0, 5.0, 0.0),
    (2_000.0, 1_000.0, None),  # the counter went backwards: driver reset
    (None, 1_000.0, None),
])
def test_energy_from_counter(start, end, expected):
    assert energy_from_counter_j(start, end) == expected


@pytest.mark.parametrize("samples, t0, t1, expected", [
    ([(0.0, 100.0), (1.0, 100.0), (2.0, 100.0)], 0.0, 2.0, 200.0),  # flat 100 W for 2 s
    ([(0.0, 100.0), (2.0, 300.0)], 0.0, 2.0, 400.0),  # ramp: mean 200 W
    ([(0.0, 100.0), (2.0, 300.0)], 0.5, 1.5, 200.0),  # window inside the ramp: 150 → 250 W
    ([(1.0, 50.0)], 0.0, 2.0, 100.0),  # one sample inside, held flat to both edges
    ([(5.0, 50.0)], 0.0, 2.0, None),  # the only sample is outside the window
    ([], 0.0, 1.0, None),
    ([(0.0, 100.0)], 1.0, 1.0, None),  # empty window
], ids=["flat", "ramp", "inside-ramp", "one-inside", "far-away", "none", "empty-window"])
def test_integrate_power(samples, t0, t1, expected):
    got = integrate_power_j(samples, t0, t1)
    assert got == (None if expected is None else pytest.approx(expected))


def test_per_token():
    assert per_token(12.0, 4) == 3.0
    assert per_token(None, 4) is None and per_token(1.0, 0) is None
    assert math.isclose(per_token(1.0, 3), 1 / 3)


def test_unstable_points_spread_past_one_and_a_half():
    import pandas as pd

    from profiler.metrics import UNSTABLE_SPREAD, unstable, unstable_mask

    assert UNSTABLE_SPREAD == 1.5
    assert unstable(1.0, 1.51) and not unstable(1.0, 1.5) and not unstable(1.0, 1.2)
    assert not unstable(None, 3.0) and not unstable(1.0, None) and not unstable(0.0, 3.0)
    assert not unstable(1.0, float("nan"))
    frame = pd.DataFrame(dict(latency_p10_ms=[1.0, 1.0, None, 2.0], latency_p90_ms=[2.0, 1.1, 5.0, None]))
    assert unstable_mask(frame).tolist() == [True, False, False, False]
    assert unstable_mask(pd.DataFrame(dict(latency_p50_ms=[1.0]))).tolist() == [False]
    assert unstable_mask(frame.assign(oom=[True, False, False, False])).tolist() == [False] * 4  # no timing
