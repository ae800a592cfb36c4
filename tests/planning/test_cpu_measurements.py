"""Measurements taken on a CPU (tiny models checking the pipeline) beside GPU ones: left out of the plan
and its CSV unless asked for, planned when they are all the store holds, and said either way; and notes
that repeat are said once, with how many rows they stand for."""

from __future__ import annotations

import io
from dataclasses import replace

import pandas as pd
import pytest

from app.planning import FINANCE_COLUMNS, PlanningError, PlanOptions, default_price_book, finance_csv, plan
from app.planning.planner import count_repeats, cpu_measurements, row_notes

from .helpers import point, spec, workload, write_store

FAST = PlanOptions(crossovers=False, sensitivity=False, surface_errors=False, project_to=())
CPU = dict(identity="cpu-1", kind="cpu", name="AMD EPYC 9654", memory_bytes=64 * 2**30)


def _grid(preset):
    return ([point(preset, "decode", b, c, 2.0 * b) for b in (1, 4) for c in (64, 4096)]
            + [point(preset, "prefill", 1, c, 0.01 * c) for c in (64, 4096)])


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """An H100 run of "big" and a CPU run of "tiny" and "big" in one store: (measurements, models, devices)."""
    path = tmp_path_factory.mktemp("both") / "s.db"
    write_store(path, specs=[spec("big")], points=_grid("big"))
    return write_store(path, specs=[spec("tiny"), spec("big")], device=CPU, points=_grid("tiny") + _grid("big"))


def test_cpu_measurements_beside_gpu_ones_are_left_out_unless_asked_for(both):
    m, models, devices = both
    cpu_points = int((m["device_kind"] == "cpu").sum())
    p = plan(workload(), m, price_book=default_price_book(), options=FAST, models=models, devices=devices)
    assert set(p.rows["gpu"]) == {"H100-SXM"} and set(p.rows["model"]) == {"big"}
    assert p.cpu.left_out and p.cpu.count == cpu_points == 12 and p.cpu.devices == ("AMD EPYC 9654",)
    assert not any("is a CPU" in msg for msg in p.messages)
    table = pd.read_csv(io.StringIO(finance_csv([p])))
    assert list(table.columns) == list(FINANCE_COLUMNS)
    assert set(table["cpu_measurements"]) == {"left out (12 CPU measurements; the store holds GPU measurements)"}
    said = p.assumptions.set_index("name").loc["CPU pipeline-check measurements", "value"]
    assert said.startswith("left out (12")

    mixed = plan(workload(), m, price_book=default_price_book(), options=replace(FAST, include_cpu=True),
                 models=models, devices=devices)
    assert set(mixed.rows["gpu"]) == {"H100-SXM", "AMD EPYC 9654"}
    assert not mixed.cpu.left_out and any(msg.startswith("AMD EPYC 9654 is a CPU") for msg in mixed.messages)
    assert set(pd.read_csv(io.StringIO(finance_csv([mixed])))["cpu_measurements"]) == {
        "included (12 CPU measurements)"}
    # the GPU rows are the same either way
    pd.testing.assert_frame_equal(mixed.rows[mixed.rows["gpu"] == "H100-SXM"].reset_index(drop=True), p.rows,
                                  check_dtype=False)


def test_a_store_of_cpu_measurements_alone_still_plans_and_says_so(tmp_path):
    m, models, devices = write_store(tmp_path / "s.db", specs=[spec("tiny")], device=CPU, points=_grid("tiny"))
    p = plan(workload(), m, price_book=default_price_book(), options=FAST, models=models, devices=devices)
    assert list(p.rows["gpu"]) == ["AMD EPYC 9654"] and p.cpu.only_cpu and not p.cpu.left_out
    assert finance_csv([p]).count("included (6 CPU measurements; the store holds only CPU measurements)") == 1


def test_a_gpu_store_says_it_holds_no_cpu_measurements(analytic):
    p = plan(workload(), analytic[0], price_book=default_price_book(), options=FAST)
    assert p.cpu.count == 0 and set(pd.read_csv(io.StringIO(finance_csv([p])))["cpu_measurements"]) == {
        "none in the store"}
    assert cpu_measurements(analytic[0], include=False)[0] is analytic[0]  # nothing to leave out: not copied


def test_a_model_measured_only_on_the_cpu_is_named_when_they_are_left_out(both):
    m, models, devices = both
    with pytest.raises(PlanningError, match="tiny is measured only on a CPU, and CPU pipeline-check measurements "
                                            "are left out: include them to plan it"):
        plan(workload(), m, price_book=default_price_book(), options=replace(FAST, models=("tiny",)))
    p = plan(workload(), m, price_book=default_price_book(), options=replace(FAST, models=("tiny",), include_cpu=True))
    assert set(p.rows["model"]) == {"tiny"}


def test_repeated_notes_are_said_once_with_a_count():
    assert count_repeats(["a", "b", "a", "a", "c"]) == ("a (×3)", "b", "c")
    assert count_repeats([]) == ()


def test_rows_that_fail_for_one_reason_make_one_note():
    rows = pd.DataFrame([
        dict(model=m, gpu=g, device_name=g, reason=f"cannot project {m} to {g}: no GPU it was measured on has a "
                                                  "datasheet")
        for m in ("mamba2-tiny", "transformer-tiny") for g in ("L4", "T4")
    ] + [dict(model=m, gpu="X1", device_name="X1", reason="the price book has no on-demand price for X1; add one")
         for m in ("big", "big-2")] + [
         dict(model="m.1", gpu="H200", device_name="NVIDIA H200", reason="weight size of m.1 unknown"),
         dict(model="m", gpu="L4", device_name="L4", reason="no usable decode measurements of m on L4 (bfloat16)")])
    assert row_notes(rows) == [
        "cannot project mamba2-tiny, transformer-tiny to L4, T4: no GPU it was measured on has a datasheet (×4)",
        "big, big-2: the price book has no on-demand price for X1; add one (×2)",
        "m.1 on H200: weight size of m.1 unknown",  # one row: as it always read
        "m on L4: no usable decode measurements of m on L4 (bfloat16)",  # "m" in "m.1" is not the model "m"
    ]
