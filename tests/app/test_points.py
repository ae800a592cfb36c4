"""Shaping measured points for the charts: filters, latest per point, labels, derived rates, the roof."""

import numpy as np
import pandas as pd
import pytest

from app.ui import points


def frame(rows):
    base = dict(device_id=1, model_id=1, dtype="bfloat16", implementation="chunked", phase="decode", batch=1,
                prompt_len=0, context_len=1024, device_name="H100", device_kind="gpu", preset="m", family="mamba3-siso",
                run_id=1, oom=False, latency_p50_ms=1.0, flops=1e9, peak_mem_bytes=2**30, tokens_per_s=1000.0)
    return pd.DataFrame([{**base, "id": i, **r} for i, r in enumerate(rows, start=1)])


def test_latest_per_point_keeps_the_newest_measurement():
    df = frame([dict(latency_p50_ms=1.0, run_id=1), dict(latency_p50_ms=2.0, run_id=2),
                dict(context_len=2048, latency_p50_ms=3.0, run_id=1)])
    out = points.latest_per_point(df).sort_values("context_len")
    assert out["latency_p50_ms"].tolist() == [2.0, 3.0]
    assert out["run_id"].tolist() == [2, 1]


def test_latest_per_point_goes_by_when_it_was_measured_not_by_row_id():
    """An old bundle imported after a newer run gets higher row ids; its measurement is still the older one."""
    df = frame([dict(latency_p50_ms=1.0, run_id=1, created_at=pd.Timestamp("2026-12-02")),
                dict(latency_p50_ms=2.0, run_id=2, created_at=pd.Timestamp("2026-12-01"))])
    out = points.latest_per_point(df)
    assert out["run_id"].tolist() == [1]


def test_filters_are_and_ed_and_empty_means_all():
    df = frame([dict(preset="a", batch=1), dict(preset="b", batch=1), dict(preset="a", batch=4)])
    assert len(points.apply(df, points.Filters())) == 3
    out = points.apply(df, points.Filters(presets=("a",), batches=(4,)))
    assert out[["preset", "batch"]].values.tolist() == [["a", 4]]


def test_series_names_only_what_varies():
    one = points.with_series(frame([dict(preset="a"), dict(preset="b")]))
    assert one["series"].tolist() == ["a", "b"]
    two = points.with_series(frame([dict(preset="a", device_name="H100"), dict(preset="a", device_name="L4",
                                                                                 dtype="float16")]))
    assert two["series"].tolist() == ["a · H100 · bfloat16", "a · L4 · float16"]


def test_rates_derive_flops_per_second_and_gib():
    out = points.with_rates(frame([dict(latency_p50_ms=2.0, flops=4e9, peak_mem_bytes=3 * 2**30),
                                   dict(latency_p50_ms=None, oom=True)]))
    assert out["achieved_flops_per_s"].iloc[0] == pytest.approx(2e12)
    assert np.isnan(out["achieved_flops_per_s"].iloc[1])
    assert out["peak_mem_gib"].iloc[0] == pytest.approx(3.0)


def test_capped_samples_evenly_and_counts_the_rest():
    df = pd.DataFrame({"x": range(10_000)})
    out, left = points.capped(df, limit=100)
    assert len(out) == 100 and left == 9_900
    assert out["x"].iloc[0] == 0 and out["x"].iloc[-1] == 9_999
    same, none = points.capped(df.head(50), limit=100)
    assert len(same) == 50 and none == 0


def test_headline_reads_batch_one_decode_at_both_ends():
    df = frame([dict(context_len=256, latency_p50_ms=1.0), dict(context_len=8192, latency_p50_ms=4.0),
                dict(context_len=4096, batch=8, latency_p50_ms=9.0, tokens_per_s=5000.0),
                dict(phase="prefill", context_len=0, prompt_len=512, tokens_per_s=80_000.0),
                dict(context_len=65536, latency_p50_ms=None, oom=True)])
    (row,) = points.headline(df).to_dict("records")
    assert (row["context short"], row["decode ms (b=1, short)"]) == (256, 1.0)
    assert (row["context long"], row["decode ms (b=1, long)"]) == (8192, 4.0)
    assert row["best decode tok/s"] == 5000.0 and row["best prefill tok/s"] == 80_000.0


def test_headline_names_its_device_column_for_what_it_holds_and_lists_gpus_first():
    df = frame([dict(device_id=2, device_name="AMD EPYC 9654 (8 cores)", device_kind="cpu"),
                dict(device_id=1, device_name="NVIDIA H200", device_kind="gpu"),
                dict(device_id=3, device_name="NVIDIA A100", device_kind="gpu", model_id=2, preset="n")])
    table = points.headline(df)
    assert "GPU" not in table.columns
    assert table["device"].tolist() == ["NVIDIA A100", "NVIDIA H200", "AMD EPYC 9654 (8 cores)"]


def test_headline_of_nothing_is_an_empty_table():
    assert points.headline(frame([]).iloc[:0]).empty


def test_roof_bends_at_the_ridge_of_the_measured_peaks():
    device = pd.Series(dict(measured_copy_bw_bytes_per_s=2e12, measured_bf16_flops_per_s=6e14,
                            datasheet_bw_bytes_per_s=None, datasheet_bf16_flops_per_s=None))
    inside = points.roofline_ceilings(device, 1.0, 1000.0)
    assert inside["ceiling"].unique().tolist() == ["measured"]
    assert inside["arithmetic_intensity"].tolist() == [1.0, 300.0, 1000.0]
    assert inside["flops_per_s"].tolist() == [2e12, 6e14, 6e14]
    widened = points.roofline_ceilings(device, 1.0, 10.0)  # the range grows to show the ridge
    assert widened["arithmetic_intensity"].tolist() == [1.0, 300.0]


def test_roof_is_empty_without_peaks():
    device = pd.Series(dict(measured_copy_bw_bytes_per_s=np.nan, measured_bf16_flops_per_s=None,
                            datasheet_bw_bytes_per_s=None, datasheet_bf16_flops_per_s=None))
    assert points.roofline_ceilings(device, 1.0, 10.0).empty


def test_notes_count_points_to_read_with_care():
    df = frame([dict(), dict(context_len=2048, oom=True, gpu_shared=False),
                dict(context_len=4096, gpu_shared=True)]).assign(gpu_shared=lambda d: d["gpu_shared"].fillna(False))
    assert points.notes(df) == ("3 point(s), the latest measurement of each · 1 ran out of memory (left off the "
                                "latency charts) · 1 measured while another process used the GPU.")
    spread = df.assign(latency_p10_ms=[1.0, 1.0, 1.0], latency_p90_ms=[1.6, 9.0, 1.1])  # the OOM point not counted
    assert points.notes(spread).endswith("· 1 with unstable timings (p90 above 1.5× p10: read their latency with "
                                         "care).")
