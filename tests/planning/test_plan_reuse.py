"""What a plan builds before it looks at the workload (surfaces, their held-out check) is built once per
state of the frames and options, not once per plan; a surface answers a query it was just asked from
memory. Neither changes a number."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from app.planning import WORKLOAD_PRESETS, PlanOptions, default_price_book, plan
from app.planning import planner

OPTS = PlanOptions(crossovers=False, sensitivity=False)


@pytest.fixture
def counted(monkeypatch):
    """How often the planner built subjects and ran the held-out check, from a clean slate."""
    monkeypatch.setattr(planner, "_prepared", type(planner._prepared)())
    monkeypatch.setattr(planner, "_surface_errors", type(planner._surface_errors)())
    calls = {"build_subjects": 0, "surface_errors": 0}
    for name in calls:
        real = getattr(planner, name)

        def counting(*a, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*a, **kw)

        monkeypatch.setattr(planner, name, counting)
    return calls


def _same(a, b):
    for f in ("rows", "surface_errors", "assumptions"):
        pd.testing.assert_frame_equal(getattr(a, f), getattr(b, f), check_exact=True)
    assert a.recommendation == b.recommendation and a.messages == b.messages


def test_planning_another_workload_on_the_same_store_fits_its_surfaces_once(analytic, counted):
    m, models, devices = analytic
    book = default_price_book()
    first = plan(WORKLOAD_PRESETS["chat"], m, price_book=book, options=OPTS, models=models, devices=devices)
    other = plan(WORKLOAD_PRESETS["doc-qa-32k"], m.copy(), price_book=book, options=replace(OPTS, tier="spot"),
                 models=models.copy(), devices=devices)
    assert counted == {"build_subjects": 1, "surface_errors": 1}
    # the same numbers as planned from nothing
    planner._prepared.clear()
    planner._surface_errors.clear()
    _same(other, plan(WORKLOAD_PRESETS["doc-qa-32k"], m, price_book=book, options=replace(OPTS, tier="spot"),
                      models=models, devices=devices))
    assert first.surface_errors is not other.surface_errors  # each plan has its own frame to show


def test_a_changed_store_or_option_is_planned_afresh(analytic, counted):
    m, models, devices = analytic
    book, w = default_price_book(), WORKLOAD_PRESETS["chat"]
    base = plan(w, m, price_book=book, options=OPTS, models=models, devices=devices)
    slower = m.copy()
    slower["latency_p50_ms"] = slower["latency_p50_ms"] * 2
    again = plan(w, slower, price_book=book, options=OPTS, models=models, devices=devices)
    assert counted["build_subjects"] == 2
    assert again.recommendation.usd_per_task > base.recommendation.usd_per_task  # not the first store's answer
    plan(w, m, price_book=book, options=replace(OPTS, project_to=("L4",)), models=models, devices=devices)
    plan(w, m, price_book=book, options=OPTS, models=models.assign(weight_bytes=models["weight_bytes"] * 2),
         devices=devices)
    assert counted["build_subjects"] == 4


def test_a_surface_answers_a_repeated_query_from_memory_and_the_caller_cannot_spoil_it(analytic):
    from app.planning.subjects import measured_sets

    sets, _ = measured_sets(analytic[0], dtype=None, models=None, weight_by_model={})
    surface = sets[0].decode
    b, L = np.repeat([1.0, 8.0, 700.0], 50), np.tile(np.geomspace(10, 500_000, 50), 3)  # inside and beyond
    ms, labels = surface.latency_ms(b, L)
    ms[:] = -1.0
    again, labels_again = surface.latency_ms(b, L)
    assert (again > 0).all() and np.array_equal(labels, labels_again)
    # value by value what a query of that one pair gives: repeated anchors are shared, not approximated (to the last
    # bit but one: numpy's vector loops and its one-element ones may round an extrapolation's logs differently, as
    # on an AVX-512 CPU, 2e-16 apart; an approximation would be far more)
    one_by_one = [surface._latency_ms(np.array([bi]), np.array([li]))[0][0] for bi, li in zip(b, L)]
    np.testing.assert_allclose(again, np.array(one_by_one), rtol=1e-15, atol=0)
    assert (labels == 2).any() and (labels < 2).any()
