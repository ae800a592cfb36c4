"""The bf16-state what-if: Mamba-3 decode with the SSM state in bf16, scaled by the measured surface's roofline."""

import dataclasses

import numpy as np
import pytest

from app.planning import PlanOptions, default_price_book, plan
from app.planning.routing import recommend
from app.planning.subjects import build_subjects
from app.planning.surfaces import PROJECTED, Surface
from app.planning.whatif import LABEL, REALISED, StatePrecisionSurface, realised_fraction, state_bytes_saved
from model import cost
from model.config import get_config

from .helpers import workload

FAST = PlanOptions(crossovers=False, sensitivity=False, surface_errors=False, project_to=())


def test_saved_bytes_are_half_the_fp32_ssm_state_and_nothing_without_one():
    cfg = get_config("mamba3-siso-1.5b")  # every layer a Mamba-3 mixer: fp32 (4 B) → bf16 (2 B) per element
    assert state_bytes_saved(cfg, 2) == 2 * cfg.nheads * cfg.headdim * cfg.d_state * cfg.n_layer
    bf16 = dataclasses.replace(cfg, state_dtype="bfloat16")
    assert cost.state_bytes_fixed(cfg, 2) - cost.state_bytes_fixed(bf16, 2) == state_bytes_saved(cfg, 2)
    assert state_bytes_saved(bf16, 2) == 0  # already bf16
    assert state_bytes_saved(get_config("llama-3.2-1b"), 2) == 0
    assert state_bytes_saved(get_config("mamba2-1.5b"), 2) == 0  # its state is in the model dtype already


def test_the_realised_fraction_comes_from_the_measured_step():
    # H200, batch 128 at 768 tokens, fp32 → bf16 state, whole models (3416ff8's step): SISO 4.742 → 3.234 ms, MIMO
    # 5.188 → 4.322 ms on the TMA-fed step with the lane readout; before sm_90 MIMO's pointer-load step, whose whole
    # model went 6.666 → 6.106 ms against the surface shipped then
    assert REALISED[1] == pytest.approx(1.508 / 1.573) and REALISED[4] == pytest.approx(0.866 / 1.690)
    assert realised_fraction(get_config("mamba3-siso-1.5b")) == REALISED[1]
    assert realised_fraction(get_config("mamba3-mimo-1.5b")) == REALISED[4]
    assert realised_fraction(get_config("hybrid-1.5b")) == REALISED[1]  # its Mamba-3 layers are SISO
    mimo = get_config("mamba3-mimo-1.5b")
    assert realised_fraction(mimo, "H200") == realised_fraction(mimo, "H100-PCIe") == REALISED[4] > 0
    for gpu in ("A100-80GB", "L40S", "L4", "T4"):
        assert realised_fraction(mimo, gpu) == pytest.approx(0.560 / 2.402)
        assert realised_fraction(get_config("mamba3-siso-1.5b"), gpu) == REALISED[1]
    assert realised_fraction(mimo, "some GPU with no datasheet") == REALISED[4]


def _surface():
    b = np.array([1, 1, 16, 16, 128, 128], dtype=float)
    L = np.array([512, 4096] * 3, dtype=float)
    nbytes = 3e9 + b * 5e7 + b * L * 2e4  # weights, state, a growing cache
    flops = b * 3e9
    ms = 0.05 + nbytes / 3e9 + flops / 7e11  # 3 TB/s, 700 TFLOP/s, 50 µs fixed
    return Surface("decode", b, L, ms, nbytes, flops)


def test_the_surface_loses_the_saved_traffic_at_its_fitted_bandwidth():
    src = _surface()
    assert src.roofline.ms_per_byte > 0  # the fit saw the memory term
    what = StatePrecisionSurface(src, 2.5e7)
    b, L = np.array([1.0, 16.0, 128.0]), np.array([512.0, 512.0, 4096.0])
    ms, codes = what.latency_ms(b, L)
    base, _ = src.latency_ms(b, L)
    t0, tb, tf = src.roofline.terms_ms(b, L)
    expect = base * (t0 + tb - b * 2.5e7 * src.roofline.ms_per_byte + tf) / (t0 + tb + tf)
    np.testing.assert_allclose(ms, expect, rtol=1e-12)
    assert np.all(ms < base) and np.all(codes == PROJECTED)
    # more saved than the whole memory term: the memory term stops at zero, never negative time
    huge = StatePrecisionSurface(src, 1e12).latency_ms(b, L)[0]
    np.testing.assert_allclose(huge, base * (t0 + tf) / (t0 + tb + tf), rtol=1e-12)
    assert what.phase == "decode"


def test_plan_prices_a_bf16_twin_of_each_mamba3_model_only_when_asked(analytic):
    m, models, devices = analytic
    w = workload()
    off = plan(w, m, price_book=default_price_book(), options=FAST, models=models, devices=devices).rows
    assert not off["model"].str.contains(LABEL).any()
    on = plan(w, m, price_book=default_price_book(), options=dataclasses.replace(FAST, bf16_state=True),
              models=models, devices=devices).rows
    twins = on[on["model"].str.endswith(f" · {LABEL}")]
    assert sorted(twins["model"]) == [f"mamba3-mimo-1.5b · {LABEL}", f"mamba3-siso-1.5b · {LABEL}"]
    for r in twins.to_dict("records"):
        base = on[(on["model"] == r["model"].split(" · ")[0]) & (on["gpu"] == r["gpu"])].iloc[0]
        saved = state_bytes_saved(get_config(base["model"]), 2)
        assert r["state_bytes_per_seq"] == base["state_bytes_per_seq"] - saved
        assert r["decode_provenance"] == "projected" and "what-if" in r["implementation"]
        _rows_beat_or_match(r, base, base["model"])
        if realised_fraction(get_config(base["model"]), base["gpu"]) > 0:
            assert r["usd_per_task"] < base["usd_per_task"]
        assert r["prefill_gpu_s_per_task"] == pytest.approx(base["prefill_gpu_s_per_task"], rel=1e-9)


def _rows_beat_or_match(twin, base, preset):
    """A twin needs no more memory per sequence, so it fits at least as many sequences. Where the measured
    step realised part of the saving, it decodes faster and costs no more per task, and at the same
    concurrency its time per output token is lower; where a bf16 state was measured slower (MIMO on the
    current step: a negative fraction), the same concurrency takes longer per token."""
    assert twin["concurrency_per_gpu"] >= base["concurrency_per_gpu"]
    faster = realised_fraction(get_config(preset), twin["gpu"]) > 0
    if faster:
        assert twin["usd_per_task"] <= base["usd_per_task"] * (1 + 1e-9)
    if twin["concurrency_per_gpu"] == base["concurrency_per_gpu"]:
        assert (twin["tpot_ms"] < base["tpot_ms"]) == faster


def test_projected_gpus_get_the_what_if_projected_from_the_measured_one(analytic):
    m, models, devices = analytic  # measured on the H100 only
    opts = dataclasses.replace(FAST, bf16_state=True, project_to=("L40S",))
    rows = plan(workload(), m, price_book=default_price_book(), options=opts, models=models, devices=devices).rows
    l40s = rows[rows["gpu"] == "L40S"].set_index("model")
    for preset in ("mamba3-siso-1.5b", "mamba3-mimo-1.5b"):
        twin, base = l40s.loc[f"{preset} · {LABEL}"], l40s.loc[preset]
        assert twin["gpu_source"] == "projected" and twin["decode_provenance"] == "projected"
        assert twin["state_bytes_per_seq"] == base["state_bytes_per_seq"] - state_bytes_saved(get_config(preset), 2)
        _rows_beat_or_match(twin, base, preset)
    # the step itself: the L40S has less bandwidth than the H100, so the same saved bytes are worth more
    # milliseconds there
    cfgs = dict(zip(models["id"].astype(int), models["config"]))
    subjects, _, _ = build_subjects(m, dtype=None, models=("mamba3-siso-1.5b",), project_to=("L40S",),
                                    weight_by_model={}, config_by_model=cfgs, devices=None, bf16_state=True)
    ms = {(s.gpu, s.preset.endswith(LABEL)): s.candidate.decode.latency_ms(128, 4096)[0][0] for s in subjects}
    gain = {g: ms[(g, False)] - ms[(g, True)] for g in ("H100-SXM", "L40S")}
    assert gain["L40S"] > gain["H100-SXM"] > 0


def test_a_what_if_is_never_the_recommendation_but_is_named_beside_it(analytic):
    m, models, devices = analytic
    on = plan(workload(), m, price_book=default_price_book(), options=dataclasses.replace(FAST, bf16_state=True),
              models=models, devices=devices)
    off = plan(workload(), m, price_book=default_price_book(), options=FAST, models=models, devices=devices)
    assert LABEL not in on.recommendation.model
    assert (on.recommendation.model, on.recommendation.gpu) == (off.recommendation.model, off.recommendation.gpu)
    assert not any(r.startswith("What-if") for r in off.recommendation.reasons)
    # make a twin the cheapest row: still not recommended, but named with its price
    rows = on.rows.copy()
    ok = rows["status"] == "ok"
    twin = rows.index[ok & rows["model"].str.endswith(LABEL)][0]
    rows.loc[twin, "usd_per_task"] = rows.loc[ok, "usd_per_task"].min() / 2
    rec, _ = recommend(rows, workload(), FAST.tier)
    assert (rec.model, rec.gpu) == (off.recommendation.model, off.recommendation.gpu)
    assert any(r.startswith(f"What-if: {rows.loc[twin, 'model']} on {rows.loc[twin, 'gpu']}") and "50% less" in r
               for r in rec.reasons)
    # a twin that packs more sequences and so takes longer per token: the line says why it still costs
    # less; at the same concurrency it says nothing of the kind
    same_gpu = rows["gpu"] == rows.loc[twin, "gpu"]
    base = rows.index[(rows["model"] == rows.loc[twin, "model"].split(" · ")[0]) & same_gpu][0]
    rows.loc[twin, "concurrency_per_gpu"] = rows.loc[base, "concurrency_per_gpu"]
    rec, _ = recommend(rows, workload(), FAST.tier)
    assert not any("half-size state packs" in r for r in rec.reasons)
    rows.loc[twin, "concurrency_per_gpu"] = rows.loc[base, "concurrency_per_gpu"] * 2
    rows.loc[twin, "tpot_ms"] = rows.loc[base, "tpot_ms"] * 1.25
    rec, _ = recommend(rows, workload(), FAST.tier)
    line = next(r for r in rec.reasons if r.startswith("What-if"))
    assert (f"packs {int(rows.loc[twin, 'concurrency_per_gpu'])} sequences per GPU against "
            f"{int(rows.loc[base, 'concurrency_per_gpu'])}") in line
    assert f"each token takes {rows.loc[twin, 'tpot_ms']:.1f} ms against {rows.loc[base, 'tpot_ms']:.1f}" in line


def test_the_what_if_says_so_when_nothing_qualifies(analytic):
    m, models, devices = analytic
    opts = dataclasses.replace(FAST, bf16_state=True, models=("llama-3.2-1b",))
    p = plan(workload(), m, price_book=default_price_book(), options=opts, models=models, devices=devices)
    assert any("bf16-state what-if" in msg for msg in p.messages)


@pytest.mark.parametrize("preset", ["mamba3-siso-1.5b", "mamba3-mimo-1.5b"])
def test_the_calibration_matches_the_shipped_h200_surface(preset):
    """SURFACE_SAVING_MS is what the shipped H200 decode surface (datasheet peaks as the planner builds it)
    gives the whole saved traffic at batch 128, 768 tokens: re-measuring the bundle flags a stale
    calibration here."""
    import json
    from pathlib import Path

    from app.planning.whatif import SURFACE_SAVING_MS
    from store.datasheets import DATASHEETS

    path = (Path(__file__).resolve().parents[2] / "data" / "reference"
            / "h200-quick-3416ff8-paper-3416ff8-2026-12-03.json")
    bundle = json.loads(path.read_text())
    model_hash = next(m["config_hash"] for m in bundle["models"] if m["preset"] == preset)
    rows = [m for m in bundle["measurements"]
            if m["model"] == model_hash and m["phase"] == "decode" and not m["oom"]]
    sheet = DATASHEETS["H200"]
    src = Surface("decode", [r["batch"] for r in rows], [r["context_len"] for r in rows],
                  [r["latency_p50_ms"] for r in rows], [r["bytes_moved"] for r in rows], [r["flops"] for r in rows],
                  peak_bw=sheet.bw_bytes_per_s, peak_flops=sheet.bf16_flops_per_s)
    cfg = get_config(preset)
    at = (np.array([128.0]), np.array([768.0]))
    full = src.latency_ms(*at)[0][0] - StatePrecisionSurface(src, 2.0 * state_bytes_saved(cfg, 2)).latency_ms(*at)[0][0]
    assert full == pytest.approx(SURFACE_SAVING_MS[cfg.mimo_rank], rel=0.01)
