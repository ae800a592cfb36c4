import math

import pytest

from app.planning import SLO, PlanOptions, PriceBook, PriceEntry, plan
from app.planning.capacity import (
    GIB,
    concurrency_grid,
    max_concurrency_by_memory,
    max_context_by_memory,
    state_bytes_per_seq,
)

from .helpers import flat_store, workload

BOOK = PriceBook(entries=(PriceEntry("H100-SXM", "on-demand", 3.60, "test", "2026-05"),))
OPTS = PlanOptions(project_to=(), max_concurrency=64, utilisation=0.5, crossovers=False, sensitivity=False,
                   surface_errors=False)


def test_memory_limit_by_hand():
    # H100: 0.90 × 80e9 = 72e9 usable; less 2 GiB workspace = 69,852,516,352 bytes.
    # Llama-3.2-1B: 2,471,628,800 bytes of weights leave 67,380,887,552; at 32,768 tokens each sequence holds
    # 32,768 × 32,768 B = 1,073,741,824 B of KV → 67,380,887,552 / 1,073,741,824 = 62.75 → 62 sequences.
    kv = state_bytes_per_seq(0, 32_768, 32_768)
    assert kv == 1_073_741_824
    assert max_concurrency_by_memory(memory_bytes=80e9, weight_bytes=2_471_628_800, state_bytes=kv) == 62
    # Mamba-3 SISO 1.5B: 2,989,400,000 B of weights leave 66,863,116,352; 51,118,080 B of state per sequence
    # at any context → 1,308.01 → 1,308 sequences.
    assert max_concurrency_by_memory(memory_bytes=80e9, weight_bytes=2_989_400_000, state_bytes=51_118_080) == 1308
    # nothing fits: weights alone exceed 16 GB × 0.9 − 2 GiB = 12,252,516,352 B
    assert max_concurrency_by_memory(memory_bytes=16e9, weight_bytes=13e9, state_bytes=1) == 0


def test_max_context_by_hand():
    # 16 GB card, one sequence: 12,252,516,352 − 2,471,628,800 = 9,780,887,552 B → / 32,768 = 298,489.0 tokens
    assert max_context_by_memory(memory_bytes=16e9, weight_bytes=2_471_628_800, state_bytes_fixed=0,
                                 kv_bytes_per_token=32_768, concurrency=1) == pytest.approx(298_489.0, abs=1)
    assert math.isinf(max_context_by_memory(memory_bytes=16e9, weight_bytes=3e9, state_bytes_fixed=51_118_080,
                                            kv_bytes_per_token=0, concurrency=64))
    assert max_context_by_memory(memory_bytes=16e9, weight_bytes=15e9, state_bytes_fixed=0,
                                 kv_bytes_per_token=1, concurrency=1) == 0.0


def test_concurrency_grid():
    assert concurrency_grid(20) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20]
    assert concurrency_grid(1) == [1]
    g = concurrency_grid(1000)
    assert g[-1] == 1000 and len(g) == len(set(g)) and g == sorted(g)


def test_capacity_by_hand(tmp_path):
    # One call: 1000 prompt tokens, 101 output tokens → 100 decode steps at 10 ms, prefill 100 ms (batch 1).
    # Per task at concurrency n: P = 0.1 s, D = 100 × 0.010 / n = 1/n s; prefill share f = P / (P + D);
    # TPOT = 10 ms / (1 − f) = 10 · (1 + 0.1 n) ms. A 30 ms TPOT SLO allows n ≤ 20; the grid's next step, 24,
    # gives 34 ms. TTFT = 100 + 10 = 110 ms. Task = 0.110 + 100 × 0.030 = 3.110 s.
    m, _, _ = flat_store(tmp_path / "s.db")
    p = plan(workload(slo=SLO(tpot_ms=30)), m, price_book=BOOK, options=OPTS)
    r = p.rows.iloc[0]
    assert r["status"] == "ok" and r["bound_by"] == "TPOT SLO"
    assert r["concurrency_per_gpu"] == 20
    assert r["tpot_ms"] == pytest.approx(30.0)
    assert r["ttft_ms"] == pytest.approx(110.0)
    assert r["task_latency_p50_s"] == pytest.approx(3.110)
    assert r["prefill_gpu_s_per_task"] == pytest.approx(0.1)
    assert r["decode_gpu_s_per_task"] == pytest.approx(0.05)
    assert r["provenance"] == "interpolated"


def test_ttft_slo_that_cannot_be_met(tmp_path):
    m, _, _ = flat_store(tmp_path / "s.db")
    p = plan(workload(slo=SLO(ttft_ms=100)), m, price_book=BOOK, options=OPTS)
    r = p.rows.iloc[0]
    assert r["status"] == "infeasible" and r["bound_by"] == "TTFT SLO"
    assert "TTFT 110 ms > SLO 100 ms" in r["reason"]
    assert p.recommendation is None
    assert "no configuration meets the SLOs" in p.messages[0]


def test_memory_binds_by_hand(tmp_path):
    # 5e6 B of KV per token × 1,101 tokens = 5.505e9 B per sequence; (69,852,516,352 − 2e9) / 5.505e9 = 12.33 → 12
    m, _, _ = flat_store(tmp_path / "s.db", kv_bytes_per_token=5_000_000)
    r = plan(workload(slo=SLO(tpot_ms=30)), m, price_book=BOOK, options=OPTS).rows.iloc[0]
    assert r["max_concurrency_memory"] == 12
    assert r["concurrency_per_gpu"] == 12 and r["bound_by"] == "memory"
    assert r["tpot_ms"] == pytest.approx(10 * (1 + 0.1 * 12))


def test_too_big_to_fit(tmp_path):
    m, _, _ = flat_store(tmp_path / "s.db", kv_bytes_per_token=80_000_000)
    r = plan(workload(), m, price_book=BOOK, options=OPTS).rows.iloc[0]
    assert r["status"] == "infeasible" and r["bound_by"] == "memory"
    assert r["reason"].startswith("does not fit: weights 1.86 GiB + one sequence's state at 1,101 tokens")
    assert GIB == 2**30
