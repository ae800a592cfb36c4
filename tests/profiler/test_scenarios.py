"""Named scenarios, grid order, and the capacity search converging on a known boundary."""

import pytest

from profiler.request import make_request, plan
from profiler.scenarios import (PAPER_N, SCENARIOS, Point, capacity_boundary, grid_points, next_capacity_batch,
                                paper_contexts)


def _search(limit: int, max_batch: int) -> dict[int, bool]:
    fits: dict[int, bool] = {}
    while (b := next_capacity_batch(fits, max_batch)) is not None:
        assert b not in fits, "a batch is tried twice"
        fits[b] = b <= limit
    return fits


@pytest.mark.parametrize("limit, max_batch, lo, hi", [
    (37, 4096, 36, 38),  # bracketed within 36 // 16 = 2
    (1500, 4096, 1472, 1536),  # 1024 … 2048 bisected to within 1472 // 16
    (0, 4096, 0, 1),  # nothing fits
    (4096, 4096, 4096, None),  # everything up to the cap fits
    (100, 64, 64, None),
    (1, 4096, 1, 2),
])
def test_capacity_search_brackets_the_boundary(limit, max_batch, lo, hi):
    fits = _search(limit, max_batch)
    got_lo, got_hi = capacity_boundary(fits)
    assert got_lo <= limit and (got_hi is None or got_hi > limit)
    if got_hi is not None:
        assert got_hi - got_lo <= max(1, got_lo // 16)
    assert len(fits) <= max_batch.bit_length() + 8
    assert (got_lo, got_hi) == (lo, hi)


def test_grid_points_smallest_first_prefill_before_decode():
    pts = grid_points((1, 16), (512, 64), (1, 4), (1024, 128))
    assert [p.phase for p in pts] == ["prefill"] * 4 + ["decode"] * 4
    assert pts[0] == Point("prefill", 1, prompt_len=64) and pts[3] == Point("prefill", 16, prompt_len=512)
    assert pts[-1] == Point("decode", 4, context_len=1024)
    keys = {p.key("m", "bfloat16", "triton") for p in pts}
    assert len(keys) == len(pts)


def test_paper_contexts_cover_each_decode_span():
    ctx = paper_contexts(PAPER_N)
    for n in PAPER_N:
        assert {n, n + n // 2, 2 * n} <= set(ctx)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_plans(name):
    sc = SCENARIOS[name]
    req = make_request({"scenario": name, "device": sc.device or "cuda:0", "impl": "chunked"})
    plans = plan(req)
    assert [mp.ref.key for mp in plans] == list(sc.models)
    if sc.kind == "capacity":
        assert all(mp.capacity_contexts == sc.contexts and not mp.points for mp in plans)
    else:
        assert all(len(mp.points) == len(req.prefill_batches) * len(req.prompts) + len(req.batches) * len(req.contexts)
                   for mp in plans)


def test_default_scenarios_cover_every_family():
    from model.config import FAMILIES, get_config

    for name in ("quick", "cpu-demo"):
        assert {get_config(m).family for m in SCENARIOS[name].models} == set(FAMILIES)
