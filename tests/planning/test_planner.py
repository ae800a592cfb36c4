import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.planning import (
    SLO,
    WORKLOAD_PRESETS,
    PlanningError,
    PlanOptions,
    PriceBook,
    PriceEntry,
    default_price_book,
    plan,
)

from .helpers import workload

ROOT = Path(__file__).resolve().parents[2]
FAST = PlanOptions(crossovers=False, sensitivity=False, surface_errors=False)
FIGURES = ("concurrency_per_gpu", "max_concurrency_memory", "state_bytes_per_seq", "gpus_at_peak", "gpus_n_plus_1",
           "gpus_billed", "ttft_ms", "tpot_ms", "task_latency_p50_s", "prefill_gpu_s_per_task", "decode_gpu_s_per_task",
           "usd_per_task", "usd_per_month", "usd_per_1m_input_tokens", "usd_per_1m_output_tokens", "energy_per_task_j",
           "energy_usd_per_task", "fleet_utilisation", "price_usd_per_gpu_hour")


def test_planning_imports_no_torch_and_no_streamlit():
    code = ("import sys, app.planning, app.planning.analytic, app.planning.export; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'streamlit', 'triton')); "
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_preset_plans_on_the_analytic_data(analytic):
    m, models, devices = analytic
    for w in WORKLOAD_PRESETS.values():
        p = plan(w, m, price_book=default_price_book(), options=FAST, models=models, devices=devices)
        assert p.recommendation is not None, p.messages
        assert set(p.rows["gpu"]) == {"H100-SXM", "A100-80GB", "H200", "L40S", "L4", "T4"}
        assert len(p.rows) == 3 * 6
        ok = p.rows[p.rows["status"] == "ok"]
        assert ok["usd_per_task"].is_monotonic_increasing  # cheapest first
        assert set(p.rows.loc[p.rows["gpu_source"] == "projected", "provenance"]) == {"projected"}


# ------------------------------------------------------------------------------------------------ monotonicity


def _by_subject(p, col):
    ok = p.rows[p.rows["status"] == "ok"]
    return dict(zip(zip(ok["model"], ok["gpu"]), ok[col]))


@pytest.mark.parametrize("name", sorted(WORKLOAD_PRESETS))
def test_more_load_never_needs_fewer_gpus(analytic, name):
    w = WORKLOAD_PRESETS[name]
    previous: dict = {}
    for tasks in (1_000, 30_000, 300_000, 3_000_000):
        now = _by_subject(plan(replace(w, tasks_per_day=tasks), analytic[0], price_book=default_price_book(),
                               options=FAST), "gpus_at_peak")
        for key, gpus in previous.items():
            assert now[key] >= gpus, f"{key}: {gpus} GPUs at lower load, {now[key]} at {tasks}/day"
        previous = now
    assert max(previous.values()) > 1, "the load range must make some configuration need several GPUs"


@pytest.mark.parametrize("name", sorted(WORKLOAD_PRESETS))
def test_a_looser_slo_never_costs_more(analytic, name):
    w = WORKLOAD_PRESETS[name]
    previous: dict = {}
    for factor in (0.5, 0.8, 1.0, 1.5, 3.0):
        now = _by_subject(plan(replace(w, slo=w.slo.loosened(factor)), analytic[0], price_book=default_price_book(),
                               options=FAST), "usd_per_task")
        for key, usd in previous.items():
            assert key in now, f"{key} met the tighter SLO but not the looser one"
            assert now[key] <= usd * (1 + 1e-12), f"{key}: ${usd} at a tighter SLO, ${now[key]} looser"
        previous = now


# ------------------------------------------------------------------------------------------------ bad input


def test_empty_store():
    with pytest.raises(PlanningError, match="no measurements yet"):
        plan(workload(), pd.DataFrame(), price_book=default_price_book())


def test_missing_columns(analytic):
    with pytest.raises(PlanningError, match="lacks the column"):
        plan(workload(), analytic[0].drop(columns=["latency_p50_ms"]), price_book=default_price_book())


def test_unknown_model(analytic):
    with pytest.raises(PlanningError, match="no measurements of gpt-5; measured models: llama-3.2-1b"):
        plan(workload(), analytic[0], price_book=default_price_book(), options=PlanOptions(models=("gpt-5",)))


@pytest.mark.parametrize("opts, message", [
    (dict(utilisation=0), "utilisation"), (dict(utilisation=1.5), "utilisation"), (dict(tier="monthly"), "tier"),
    (dict(prefill_batch=0), "prefill batch"), (dict(usable_memory_fraction=1.2), "usable memory"),
    (dict(workspace_bytes=-1), "workspace"),
])
def test_bad_options(opts, message):
    with pytest.raises(PlanningError, match=message):
        PlanOptions(**opts)


def test_slo_nothing_can_meet(analytic):
    w = replace(WORKLOAD_PRESETS["chat"], slo=SLO(ttft_ms=0.5))
    p = plan(w, analytic[0], price_book=default_price_book(), options=FAST)
    assert p.recommendation is None
    assert (p.rows["status"] == "infeasible").all()
    expected = r"TTFT [0-9.,]+ ms > SLO 0.5 ms \(prefill of up to 2,150 tokens\) even at one sequence per GPU"
    assert p.rows["reason"].str.contains(expected).all()
    assert p.messages[0].startswith("No recommendation for chat: no configuration meets the SLOs; closest:")


def test_context_beyond_every_model(analytic):
    w = workload(system_prompt_tokens=2_000_000)
    p = plan(w, analytic[0], price_book=default_price_book(), options=FAST)
    assert p.recommendation is None
    assert (p.rows["bound_by"] == "context limit").all()
    assert "the longest any model supports is 1,048,576" in p.messages[0]
    llama = p.rows[p.rows["model"] == "llama-3.2-1b"].iloc[0]
    assert llama["reason"] == "the task reaches 2,001,101 tokens of context; this model supports 131,072"


def test_a_gpu_with_no_measurements(analytic):
    m, _, devices = analytic
    extra = pd.DataFrame([dict(id=99, kind="gpu", name="NVIDIA A100-SXM4-80GB", datasheet_key=None),
                          dict(id=98, kind="gpu", name="Acme Tensor X1", datasheet_key=None)])
    p = plan(workload(), m, price_book=default_price_book(), devices=pd.concat([devices, extra], ignore_index=True),
             options=replace(FAST, project_to=()))
    a100 = p.rows[p.rows["gpu"] == "A100-80GB"]
    assert len(a100) == 3 and (a100["gpu_source"] == "projected").all()
    acme = p.rows[p.rows["gpu"] == "Acme Tensor X1"]
    assert len(acme) == 3 and (acme["status"] == "no data").all()
    assert acme["reason"].str.contains("no measurements on Acme Tensor X1, and no datasheet").all()
    assert any("NVIDIA A100-SXM4-80GB has no measurements yet" in msg for msg in p.messages)


def test_a_missing_price(analytic):
    book = PriceBook(entries=(PriceEntry("L4", "on-demand", 0.6, "test", "2026-05"),))
    p = plan(workload(), analytic[0], price_book=book, options=replace(FAST, project_to=("L4", "T4")))
    t4 = p.rows[p.rows["gpu"] == "T4"]
    assert (t4["status"] == "no price").all()
    assert t4["reason"].str.contains("no on-demand price for T4").all()
    assert t4["usd_per_task"].isna().all() and t4["concurrency_per_gpu"].notna().all()
    assert p.recommendation is not None and p.recommendation.gpu == "L4"
    # one note for every model without a price on T4 (and on H100-SXM, which the book lacks as well)
    (note,) = [msg for msg in p.messages if "no on-demand price for" in msg]
    assert "no on-demand price for H100-SXM, T4; add one to cost it (×6)" in note
    only_t4 = plan(workload(), analytic[0], price_book=PriceBook(entries=()), options=replace(FAST, project_to=()))
    assert only_t4.recommendation is None
    assert "no price in the book (H100-SXM)" in only_t4.messages[0]


def test_a_phase_never_measured(tmp_path):
    from .helpers import point, spec, write_store

    m, _, _ = write_store(tmp_path / "s.db", specs=[spec("half")], points=[point("half", "decode", 1, 512, 2.0)])
    p = plan(workload(), m, price_book=default_price_book(), options=replace(FAST, project_to=("L4",)))
    assert (p.rows["status"] == "no data").all()
    assert p.rows["reason"].str.contains("no usable prefill measurements of half").all()


def test_cpu_rows_are_planned_but_unpriced_and_say_so(tmp_path):
    from .helpers import point, spec, write_store

    cpu = dict(identity="cpu-1", kind="cpu", name="AMD EPYC 9654", memory_bytes=64 * 2**30)
    m, _, _ = write_store(tmp_path / "s.db", specs=[spec("x")], device=cpu,
                          points=[point("x", "decode", b, c, 2.0 * b) for b in (1, 4) for c in (64, 4096)]
                          + [point("x", "prefill", 1, c, 0.01 * c) for c in (64, 4096)])
    p = plan(workload(), m, price_book=default_price_book(), options=replace(FAST, project_to=("L4",)))
    cpu_row = p.rows[p.rows["gpu"] == "AMD EPYC 9654"].iloc[0]
    assert cpu_row["status"] == "no price" and cpu_row["concurrency_per_gpu"] >= 1
    l4 = p.rows[p.rows["gpu"] == "L4"].iloc[0]
    assert l4["status"] == "no data" and "no GPU it was measured on has a datasheet" in l4["reason"]
    assert any(msg.startswith("AMD EPYC 9654 is a CPU") for msg in p.messages)


@pytest.mark.parametrize(("device_kind", "label", "flagged"), [
    ("gpu", "triton", True),  # a bundle from before graph-timed prefill
    ("gpu", "chunked+eager", True),  # a capture that failed
    ("gpu", "triton+cuda-graph", False),
    ("cpu", "chunked+eager", False),  # eager is the only way there: not a comparison to warn about
])
def test_eagerly_timed_gpu_prefill_is_said(tmp_path, device_kind, label, flagged):
    from .helpers import H100, point, spec, write_store

    device = H100 if device_kind == "gpu" else dict(identity="cpu-1", kind="cpu", name="AMD EPYC 9654",
                                                       memory_bytes=64 * 2**30)
    pts = [point("x", "decode", b, c, 2.0 * b) for b in (1, 4) for c in (64, 4096)]
    pts += [dict(point("x", "prefill", 1, c, 0.01 * c), implementation=label) for c in (64, 4096)]
    m, _, _ = write_store(tmp_path / "s.db", specs=[spec("x")], device=device, points=pts)
    p = plan(workload(), m, price_book=default_price_book(), options=replace(FAST, project_to=()))
    said = [msg for msg in p.messages if "was timed eagerly" in msg]
    assert said == ([f"prefill on {device['name']} (x) was timed eagerly (measured before the profiler replayed "
                     "prefill from CUDA graphs, or the capture failed): a short prompt's time there includes the "
                     "host launching each kernel, so its prefill costs run high next to a GPU whose prefill was "
                     "graph-timed; profile it again to compare the two fairly"] if flagged else [])


# ------------------------------------------------------------------------------------------------ property


def _workloads():
    slo_ms = st.one_of(st.none(), st.floats(1.0, 1e5))
    return st.builds(
        workload,
        kind=st.sampled_from(["agentic", "chat", "long-doc", "streaming"]),
        calls_per_task=st.integers(1, 20),
        system_prompt_tokens=st.integers(0, 40_000),
        tokens_per_call=st.integers(1, 6_000),
        output_tokens_per_call=st.integers(2, 3_000),
        tasks_per_day=st.floats(1e-3, 1e8),
        peak_factor=st.floats(1.0, 10.0),
        serving=st.sampled_from(["no-reuse", "reuse"]),
        slo=st.builds(SLO, ttft_ms=slo_ms, tpot_ms=st.one_of(st.none(), st.floats(0.5, 500)),
                      task_latency_s=st.one_of(st.none(), st.floats(0.1, 1e4))),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=_workloads(), utilisation=st.floats(0.05, 1.0), tier=st.sampled_from(["on-demand", "reserved", "spot"]))
def test_no_output_is_negative_nan_or_silently_infinite(analytic, w, utilisation, tier):
    p = plan(w, analytic[0], price_book=default_price_book(usd_per_kwh=0.15, pue=1.3),
             options=replace(FAST, utilisation=utilisation, tier=tier))
    rows = p.rows
    assert set(rows["status"]) <= {"ok", "infeasible"}
    for col in FIGURES:
        values = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        assert not np.isinf(values).any(), col
        assert (values[~np.isnan(values)] >= 0).all(), col
        ok_values = values[(rows["status"] == "ok").to_numpy()]
        assert not np.isnan(ok_values).any(), f"{col} is NaN on a feasible row"
    bad = rows[rows["status"] != "ok"]
    assert (bad["reason"].str.len() > 0).all(), "an infeasible row must say why"
    if p.recommendation is None:
        assert p.messages and p.messages[0].startswith("No recommendation")
    else:
        assert math.isfinite(p.recommendation.usd_per_task) and p.recommendation.usd_per_task > 0


def test_points_from_two_cards_of_one_gpu_model_pool_into_one_surface(tmp_path):
    """Two runs on two physical H100s (different NVML identities) plan as one H100 surface, not two rows."""
    from app.planning.subjects import measured_sets
    from tests.planning.helpers import H100, point, spec, write_store

    first = [point("m", "decode", b, c, 10.0) for b in (1, 64) for c in (100, 10_000)]
    first += [point("m", "prefill", 1, c, 100.0) for c in (100, 10_000)]
    write_store(tmp_path / "s.db", specs=[spec("m")], points=first)
    other = dict(H100, identity="GPU-test-h100-second-card")
    m, _, _ = write_store(tmp_path / "s.db", specs=[spec("m")], device=other,
                          points=[point("m", "decode", 16, 1000, 10.0)])
    assert m["device_id"].nunique() == 2
    sets, _ = measured_sets(m, dtype=None, models=None, weight_by_model={})
    assert len(sets) == 1
    assert sets[0].decode.points_ms.size == 5, "the second card's point joins the first card's four"


def test_a_plan_at_a_discount_tier_flags_a_price_above_on_demand(analytic):
    """A reserved price left behind when on-demand was cut (or mistyped) would otherwise cost silently."""
    entries = [e for e in default_price_book().entries if e.gpu != "H100-SXM"]
    book = PriceBook(entries=(*entries, PriceEntry("H100-SXM", "on-demand", 2.0, "quote", "2026-06"),
                              PriceEntry("H100-SXM", "reserved", 2.5, "on-demand $3.00 × 0.65", "2026-05")))
    flagged = ("the reserved price of H100-SXM ($2.50/GPU-hour) is above its on-demand price ($2.00): reserved is "
               "a discount, so check the price book")
    reserved = plan(workload(), analytic[0], price_book=book, options=replace(FAST, tier="reserved", project_to=()))
    assert flagged in reserved.messages
    on_demand = plan(workload(), analytic[0], price_book=book, options=replace(FAST, project_to=()))
    assert not any("above its on-demand" in m for m in on_demand.messages)
