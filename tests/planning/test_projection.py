import numpy as np
import pytest

from app.planning import PlanOptions, default_price_book, plan
from app.planning.analytic import analytic_points
from model.config import get_config
from app.planning.projection import ProjectedSurface
from app.planning.surfaces import PROJECTED, Surface
from store.datasheets import DATASHEETS

from .helpers import workload


def _surfaces(preset: str, gpu: str, seed: int = 0) -> dict[str, Surface]:
    rows = [r for r in analytic_points(get_config(preset), DATASHEETS[gpu], seed=seed) if not r["oom"]]
    out = {}
    for phase in ("prefill", "decode"):
        ph = [r for r in rows if r["phase"] == phase]
        key = "prompt_len" if phase == "prefill" else "context_len"
        out[phase] = Surface(phase, [r["batch"] for r in ph], [r[key] for r in ph], [r["latency_p50_ms"] for r in ph],
                             [r["bytes_moved"] for r in ph], [r["flops"] for r in ph],
                             peak_bw=DATASHEETS[gpu].bw_bytes_per_s, peak_flops=DATASHEETS[gpu].bf16_flops_per_s)
    return out


@pytest.mark.parametrize("preset", ["mamba3-siso-1.5b", "llama-3.2-1b"])
@pytest.mark.parametrize("target", ["A100-80GB", "L4", "H200"])
def test_projection_matches_the_same_roofline_computed_on_the_target(preset, target):
    # The analytic stand-in is itself a roofline with fixed efficiencies, so projecting its H100 surfaces by
    # datasheet ratios must land on the analytic surfaces computed for the target (up to the 2 % noise).
    src, truth = _surfaces(preset, "H100-SXM"), _surfaces(preset, target, seed=1)
    for phase, batches, lengths in (("decode", (1, 16, 64), (1024, 8192)), ("prefill", (1, 4), (2048, 16384))):
        proj = ProjectedSurface(src[phase], DATASHEETS["H100-SXM"], DATASHEETS[target])
        for b in batches:
            got, labels = proj.latency_ms(b, lengths)
            want, _ = truth[phase].latency_ms(b, lengths)
            assert (labels == PROJECTED).all()
            np.testing.assert_allclose(got, want, rtol=0.08, err_msg=f"{phase} b={b}")


def test_projected_rows_use_the_target_memory_exactly(analytic):
    m, _, _ = analytic
    opts = PlanOptions(project_to=("T4",), crossovers=False, sensitivity=False, surface_errors=False)
    w = workload(tokens_per_call=4000, output_tokens_per_call=100)
    p = plan(w, m, price_book=default_price_book(), options=opts)
    t4 = p.rows[p.rows["gpu"] == "T4"].set_index("model")
    assert (t4["gpu_source"] == "projected").all() and (t4["provenance"] == "projected").all()
    # T4: 0.9 × 16e9 − 2 GiB = 12,252,516,352 B usable. Llama-3.2-1B: (12,252,516,352 − 2,471,628,800) /
    # (4,100 tokens × 32,768 B) = 72.8 → 72. Mamba-3 SISO: (12,252,516,352 − 2,989,400,000) / 51,118,080
    # = 181.2 → 181
    assert t4.loc["llama-3.2-1b", "max_concurrency_memory"] == 72
    assert t4.loc["mamba3-siso-1.5b", "max_concurrency_memory"] == 181
    assert "from H100-SXM" in t4.loc["llama-3.2-1b", "implementation"]
    assert t4.loc["llama-3.2-1b", "energy_source"].startswith("projected from H100-SXM")


def test_unknown_projection_target(analytic):
    from app.planning import PlanningError

    with pytest.raises(PlanningError, match="no datasheet"):
        plan(workload(), analytic[0], price_book=default_price_book(),
             options=PlanOptions(project_to=("B200",), crossovers=False, sensitivity=False, surface_errors=False))


@pytest.mark.parametrize("with_config", [True, False], ids=["cost-model basis", "spec basis"])
def test_a_batch_one_profile_extrapolates_across_batch(tmp_path, with_config):
    # Only batch 1 was profiled: the bytes/FLOPs basis cannot be fitted from the points (b is constant), so it
    # comes from model.cost for the stored config, or from the spec; either way batch 64 must follow the
    # roofline, not scale the weights with the batch.
    from app.planning.analytic import _time_ms, spec_row
    from app.planning.subjects import measured_sets
    from model import cost
    from store import db, repo

    cfg, sheet = get_config("llama-3.2-1b"), DATASHEETS["H100-SXM"]
    rows = [r for r in analytic_points(cfg, sheet) if r["batch"] == 1 and not r["oom"]]
    with db.session(f"sqlite:///{tmp_path / 's.db'}") as s:
        dev = repo.upsert_device(s, identity="g", kind="gpu", name="NVIDIA H100 80GB HBM3", memory_bytes=int(80e9))
        spec = repo.upsert_model_spec(s, **spec_row(cfg))
        run = repo.create_run(s, request={})
        repo.add_measurements(s, rows=[dict(run_id=run.id, device_id=dev.id, model_id=spec.id, **r) for r in rows])
        m, models = repo.read_measurements(s), repo.read_models(s)
    db.dispose_all()
    configs = dict(zip(models["id"], models["config"])) if with_config else {}
    (measured,), _ = measured_sets(m, dtype=None, models=None, weight_by_model={}, config_by_model=configs)
    for b, ctx in ((64, 4096), (16, 1024), (128, 512)):
        got, labels = measured.decode.latency_ms(b, ctx)
        want = _time_ms(cfg, sheet, "decode", cost.decode_cost(cfg, b, ctx))
        assert labels[0] == 2  # extrapolated
        assert got[0] == pytest.approx(want, rel=0.10), (b, ctx)
