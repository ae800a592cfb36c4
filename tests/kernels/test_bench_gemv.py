"""kernels.bench_gemv without a GPU: the weight shapes it enumerates from the models (built on the meta
device), its floor and L2-defeating weight ring, the sweep grid it may run, and one shape's rows and
sweep with the timer stubbed (the kernel itself runs interpreted on a tiny shape)."""

import pytest
import torch

from kernels import bench_gemv
from model.config import get_config


def _uses(shapes):
    return {(s.n, s.k): s.uses for s in shapes}


def test_llama_shapes_include_the_head_and_every_product():
    """q/k/v and gate/up run as one product each over their stacked weights: those are the shapes."""
    got = _uses(bench_gemv.decode_shapes(["llama-3.2-1b"]))
    assert got[(128256, 2048)] == ("llama-3.2-1b lm_head",)
    assert got[(2048, 8192)] == ("llama-3.2-1b mlp.down_proj",)
    assert got[(3072, 2048)] == ("llama-3.2-1b self_attn.q_proj+k_proj+v_proj",)
    assert got[(16384, 2048)] == ("llama-3.2-1b mlp.gate_proj+up_proj",)
    assert set(got) == {(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048)}


def test_mamba3_in_proj_widths_come_from_the_configs():
    shapes = bench_gemv.decode_shapes()
    got = _uses(shapes)
    for name in ("mamba3-siso-1.5b", "mamba3-mimo-1.5b"):
        cfg = get_config(name)
        assert f"{name} mixer.in_proj" in got[(cfg.d_proj, cfg.d_model)]
        assert f"{name} mixer.out_proj" in got[(cfg.d_model, cfg.d_inner)]
    assert got[(8672, 2048)] == ("mamba3-siso-1.5b mixer.in_proj",)
    assert len(shapes) == len(got) == 11  # shared shapes (the head, out_proj = fc2) are timed once
    assert len(got[(128256, 2048)]) == 3


def test_floor_and_ring():
    s = bench_gemv.Shape(8672, 2048)
    assert bench_gemv.floor_us(s, 1, 4e12) == pytest.approx(2 * (8672 * 2048 + 2048 + 8672) / 4e12 * 1e6)
    l2 = 50 * 2**20
    assert bench_gemv.ring_copies(128256 * 2048 * 2, l2) == 1
    copies = bench_gemv.ring_copies(8672 * 2048 * 2, l2)
    assert (copies - 1) * 8672 * 2048 * 2 >= 2 * l2  # the other copies between two reads outsize the L2
    assert bench_gemv.ring_copies(1024, l2) == bench_gemv.RING_MAX_COPIES


def test_sweep_grid_keeps_only_runnable_configs():
    one, eight = bench_gemv.sweep_configs(1, 2048), bench_gemv.sweep_configs(8, 2048)
    assert all(bn >= 16 for bn, _, _, _ in eight) and {bn for bn, _, _, _ in one} == {4, 8, 16, 32}
    assert (8, 1024, 4, 4) not in one and (8, 1024, 2, 4) in one  # K 2048 has two 1024-blocks
    assert len(one) == 64 and len(eight) == 32
    # past 16 rows the wide grid: N blocks of 32–128, K blocks of 32/64 (the x tile grows with the rows),
    # K split up to 8
    wide = bench_gemv.sweep_configs(128, 2048)
    assert len(wide) == 48 and {(bn, bk) for bn, bk, _, _ in wide} == {(n, k) for n in (32, 64, 128) for k in (32, 64)}
    assert {sk for _, _, sk, _ in wide} == {1, 2, 4, 8}
    assert bench_gemv.sweep_configs(16, 2048) == eight  # 16 rows still take the narrow grid's dot configs


def test_one_shape_with_the_timer_stubbed(monkeypatch):
    """Rows for M 1 and 8 at a tiny shape on the CPU: floors, default configs, a sweep in which one config
    fails to build (reported, skipped) and the fastest runnable one is kept."""
    calls = []

    def fake_time(call, ring, quick=False):
        calls.append(quick)
        if len(calls) == 4:
            raise RuntimeError("out of resources")
        return 10.0 - 0.01 * len(calls)

    monkeypatch.setattr(bench_gemv, "time_us", fake_time)
    shape = bench_gemv.Shape(40, 64, ("tiny",))
    rows, timings = bench_gemv.run([shape], (1, 2, 8), bw=1e12, sweep=True, device="cpu")
    assert [r.m for r in rows] == [1, 2, 8]
    assert all(r.max_rel_err < 2 ** -7 for r in rows)
    assert rows[0].floor_us == bench_gemv.floor_us(shape, 1, 1e12)
    n_sweep = len(bench_gemv.sweep_configs(1, 64)) + len(bench_gemv.sweep_configs(8, 64))
    assert len(timings) == n_sweep - 1  # the failing config is left out
    assert {t["m"] for t in timings} == {1, 8} and all(t["block_n"] >= 16 for t in timings if t["m"] == 8)
    assert calls.count(False) == 6  # ours and cuBLAS per row


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
def test_main_refuses_without_a_gpu(capsys):
    assert bench_gemv.main([]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_gemv.main(["--rows", "129"])
