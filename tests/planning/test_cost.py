import pytest

from app.planning import SLO, PlanOptions, PriceBook, PriceEntry, plan

from .helpers import flat_store, workload

OPTS = PlanOptions(project_to=(), max_concurrency=64, utilisation=0.5, crossovers=False, sensitivity=False,
                   surface_errors=False)


def test_cost_per_task_by_hand(tmp_path):
    # Same task as the capacity example: at 20 sequences per GPU, P = 0.1 GPU-s, D = 0.05 GPU-s per task.
    # $3.60/GPU-hour = $0.001/GPU-s; at 50 % utilisation each task is billed (0.1 + 0.05) / 0.5 = 0.3 GPU-s.
    # GPU cost: 0.3 × 0.001 = $0.0003. Energy: 0.1 s × 500 W + 0.05 s × 300 W = 65 J; at $0.36/kWh and PUE 1.0
    # that is 65 × 0.36 / 3.6e6 = $6.5e-6. $/task = $0.0003065.
    # Input: (0.1 / 0.5 × 0.001 + 50 J × 1e-7) / 1000 tokens × 1e6 = $0.205 per 1M.
    # Output: (0.05 / 0.5 × 0.001 + 15 J × 1e-7) / 101 tokens × 1e6 = $1.00495 per 1M.
    # Peak: 864,000 tasks/day = 10/s, × 2 = 20/s; GPUs = 20 × 0.15 / 0.5 = 6 exactly; N+1 bills 7.
    # $/month = 7 × 730.5 h × $3.60 + $6.5e-6 × 864,000 × 30.4375 = 18,408.60 + 170.94 = $18,579.54.
    m, _, _ = flat_store(tmp_path / "s.db")
    book = PriceBook(entries=(PriceEntry("H100-SXM", "on-demand", 3.60, "test", "2026-05"),), usd_per_kwh=0.36)
    r = plan(workload(slo=SLO(tpot_ms=30)), m, price_book=book, options=OPTS).rows.iloc[0]
    assert r["usd_per_task"] == pytest.approx(0.0003065)
    assert r["energy_per_task_j"] == pytest.approx(65.0)
    assert r["energy_usd_per_task"] == pytest.approx(6.5e-6)
    assert r["usd_per_1m_input_tokens"] == pytest.approx(0.205)
    assert r["usd_per_1m_output_tokens"] == pytest.approx(1.015e-4 / 101 * 1e6)
    assert r["gpus_at_peak"] == 6 and r["gpus_billed"] == 7
    assert r["usd_per_month"] == pytest.approx(7 * 730.5 * 3.60 + 6.5e-6 * 864_000 * 365.25 / 12)
    assert r["price_as_of"] == "2026-05" and r["energy_source"] == "measured"


def test_no_spare_gpu(tmp_path):
    m, _, _ = flat_store(tmp_path / "s.db")
    book = PriceBook(entries=(PriceEntry("H100-SXM", "on-demand", 3.60, "test", "2026-05"),))
    opts = PlanOptions(**{**OPTS.__dict__, "n_plus_1": False})
    r = plan(workload(slo=SLO(tpot_ms=30)), m, price_book=book, options=opts).rows.iloc[0]
    assert r["gpus_billed"] == 6
    assert r["usd_per_month"] == pytest.approx(6 * 730.5 * 3.60)
    assert r["usd_per_task"] == pytest.approx(0.0003)  # energy not charged


def test_without_power_readings_energy_is_labelled_not_zero(tmp_path):
    m, _, _ = flat_store(tmp_path / "s.db", power=False)
    book = PriceBook(entries=(PriceEntry("H100-SXM", "on-demand", 3.60, "test", "2026-05"),))
    r = plan(workload(slo=SLO(tpot_ms=30)), m, price_book=book, options=OPTS).rows.iloc[0]
    # H100 SXM has a datasheet: its 700 W board power bounds the energy from above, and the row says so
    assert r["energy_source"].startswith("TDP upper bound")
    assert r["energy_per_task_j"] == pytest.approx(0.15 * 700)
