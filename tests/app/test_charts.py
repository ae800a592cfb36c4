"""The Explore charts: what each encodes, and that the hover carries exact values and provenance."""

import pandas as pd
import pytest

from app import charts
from app.ui import points


def shaped(rows):
    base = dict(id=0, device_id=1, model_id=1, dtype="bfloat16", implementation="chunked", device_name="H100",
                preset="m", family="mamba3-siso", run_id=7, run_uid="abc", git_revision="deadbeef", gpu_shared=False,
                n_samples=20, oom=False, batch=1, prompt_len=0, context_len=0, latency_p50_ms=1.0,
                latency_p10_ms=0.9, latency_p90_ms=1.1, tokens_per_s=1e3, peak_mem_bytes=2**30, weight_bytes=2**29,
                state_bytes=2**20, flops=1e9, bytes_moved=1e8, achieved_bw_bytes_per_s=1e11,
                arithmetic_intensity=10.0, mbu=0.5, mfu=0.1)
    df = pd.DataFrame([{**base, "id": i, **r} for i, r in enumerate(rows)])
    return points.with_rates(points.with_series(df))


DECODE = [dict(phase="decode", context_len=c, batch=b) for c in (256, 1024) for b in (1, 4)]
PREFILL = [dict(phase="prefill", prompt_len=p, batch=1) for p in (128, 512)]
CAPACITY = pd.DataFrame({"device_name": ["H100"], "memory_bytes": [80 * 2**30]})
ROOF = pd.DataFrame({"arithmetic_intensity": [1.0, 300.0], "flops_per_s": [2e12, 6e14], "ceiling": ["measured"] * 2})

CHARTS = {
    "decode": (lambda df: charts.decode_latency_vs_context(df), "context_len", "latency_p50_ms", 4),
    "prefill": (lambda df: charts.prefill_latency_vs_prompt(df), "prompt_len", "latency_p50_ms", 2),
    "throughput": (lambda df: charts.throughput_vs_batch(df, "decode"), "batch", "tokens_per_s", 4),
    "memory": (lambda df: charts.memory_vs_context(df, CAPACITY), "context_len", "peak_mem_gib", 4),
    "roofline": (lambda df: charts.roofline(df, ROOF), "arithmetic_intensity", "achieved_flops_per_s", 6),
}


def layers(spec):
    return spec.get("layer", [spec])


@pytest.mark.parametrize("name", list(CHARTS))
def test_chart_encodes_its_axes_and_hover(name):
    build, x, y, n_points = CHARTS[name]
    spec = build(shaped(DECODE + PREFILL)).to_dict()
    point_layer = next(l for l in layers(spec) if l["encoding"]["x"]["field"] == x and l["encoding"]["y"]["field"] == y)
    tooltip = {t["field"] for t in point_layer["encoding"]["tooltip"]}
    assert {"run_id", "run_uid", "git_revision", "device_name", "gpu_shared", "latency_p50_ms", "n_samples"} <= tooltip
    data = spec["datasets"][point_layer.get("data", spec.get("data", {})).get("name")]
    assert len(data) == n_points


def test_latency_charts_drop_out_of_memory_points():
    df = shaped(DECODE + [dict(phase="decode", context_len=65536, batch=64, oom=True, latency_p50_ms=None)])
    spec = charts.decode_latency_vs_context(df).to_dict()
    assert all(len(rows) == 4 for rows in spec["datasets"].values())


def test_memory_chart_draws_the_capacity_rule():
    spec = charts.memory_vs_context(shaped(DECODE), CAPACITY).to_dict()
    rule = next(l for l in layers(spec) if l["mark"]["type"] == "rule")
    data = spec["datasets"][rule["data"]["name"]]
    assert data[0]["capacity_gib"] == 80.0


def test_roofline_without_a_roof_says_so_in_its_title():
    spec = charts.roofline(shaped(DECODE), ROOF.iloc[:0]).to_dict()
    assert "no measured peaks" in spec["title"]
