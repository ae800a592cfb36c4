"""The benchmark's byte and FLOP counts reproduce the spec's per-layer figures (§5.2–5.3)."""

import pytest
import torch

from kernels import bench


def test_step_cost_matches_spec_decode_figures():
    nbytes, flops = bench.step_cost(1, 1, 4, fused=False)
    # fp32 state r/w + k/x/angle caches r/w ≈ 4.26 MB per layer per sequence (spec §5.3)
    cache = 2 * (4 * 64 * 64 * 128 + 2 * 64 * 128 + 2 * 64 * 64 + 4 * 64 * 32)
    assert cache == pytest.approx(4.26e6, rel=2e-3)
    assert cache < nbytes < cache * 1.05
    assert flops == pytest.approx(3.7e6, rel=0.02)  # F_ssm SISO
    assert bench.step_cost(1, 4, 4, fused=False)[1] == pytest.approx(13.4e6, rel=0.01)  # MIMO R=4
    b128, _ = bench.step_cost(128, 1, 2, fused=True)
    assert b128 == pytest.approx(128 * (2 * (2 * 64 * 64 * 128 + 2 * 64 * 128 + 2 * 64 * 64 + 4 * 64 * 32)
                                        + 2 * 8672 + 2 * 64 * 64), rel=1e-3)


def test_prefill_cost_counts_ssd_flops():
    _, flops = bench.prefill_cost(1, 16384, 1, 64)
    assert flops == 16384 * 64 * (2 * 64 * (128 + 64) + 4 * 128 * 64)  # 57.3k per token per head


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_bench_refuses_without_cuda(capsys):
    assert bench.main([]) == 2
    assert bench.main(["--ssd-only", "--segmented-only", "--cases", "1x512:4", "128x512:mamba2", "1x16384"]) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU exit path")
def test_model_bench_refuses_without_cuda(capsys):
    from kernels import bench_model

    with pytest.raises(SystemExit) as e:
        bench_model.main([])
    assert e.value.code == 2 and "CUDA" in capsys.readouterr().err


def test_model_bench_switches_the_glue_it_labels():
    import torch.nn.functional as F

    from kernels import bench_model, fused, gemv
    from model.factory import build_model
    from model.layers import silu_mul

    model = build_model("hybrid-tiny", dtype=torch.float32, impl="chunked")
    seen = []
    for label, settings in bench_model.variants(model):
        bench_model._apply(model, settings)
        act = model.blocks()[0].mlp.act
        seen.append(label)
        # "fused glue" folds the batch-1 SiLU·product into the down product (gemv.deferred_silu_mul)
        want_act = {"fused glue": gemv.deferred_silu_mul, "twin glue": silu_mul}.get(label, fused.silu_mul)
        assert act is want_act, label
        # the matrix-vector kernel in "fused glue" and its SiLU·product A/B only; cuBLAS (F.linear) in the others
        on_gemv = label in ("fused glue", bench_model.APART)
        assert model.blocks()[0].mlp.fc1.product is (gemv.small_linear if on_gemv else F.linear)
        assert all(m.impl == "chunked" for m in bench_model._attention_modules(model))  # no triton here
    assert seen == ["fused glue", bench_model.CUBLAS, bench_model.APART, "twin glue"]


def test_model_bench_switches_mamba2_prologue_and_llama_stacking():
    """On the Triton path (impl set by hand: the CPU cannot build it) Mamba-2 gets an A/B of its decode
    prologue kernel, which goes with the fused glue only (Mamba-3 the same, for its prefill); Llama an A/B
    of its stacked products."""
    from kernels import bench_model
    from model.factory import build_model
    from model.mamba2 import Mamba2Mixer

    model = build_model("mamba2-tiny", dtype=torch.float32, impl="chunked")
    model.impl = "triton"
    fast = {}
    for label, settings in bench_model.variants(model):
        bench_model._apply(model, settings)
        fast[label] = {m.fast for m in model.modules() if isinstance(m, Mamba2Mixer)}
    assert fast == {"fused glue": {True}, bench_model.CUBLAS: {True}, bench_model.APART: {True}, "twin glue": {False},
                    bench_model.NO_PDL: {True}, bench_model.PROLOGUE_TORCH: {False}}
    llama = build_model("transformer-tiny", dtype=torch.float32, impl="chunked")
    llama.impl = "triton"
    labels = [label for label, _ in bench_model.variants(llama)]
    assert bench_model.SEPARATE in labels and bench_model.PROLOGUE_TORCH not in labels


def test_the_chunk_parallel_row_is_for_ssm_prefills():
    """With `--chunk-parallel` (off by default: the experiment lost on an H200), SSM prefills get the row."""
    from kernels import bench_model
    from model.factory import build_model

    def prefill_labels(name, chunk_parallel=True):
        model = build_model(name, dtype=torch.float32, impl="chunked")
        model.impl = "triton"  # the CPU cannot build the Triton path; the labels depend on the impl only
        return [label for label, _ in bench_model.variants(model, "prefill", chunk_parallel=chunk_parallel)]

    assert bench_model.SSD not in prefill_labels("mamba3-siso-tiny", chunk_parallel=False)

    assert bench_model.SSD in prefill_labels("mamba2-tiny") and bench_model.SSD in prefill_labels("hybrid-tiny")
    assert bench_model.SSD in prefill_labels("mamba3-siso-tiny")
    assert bench_model.SSD in prefill_labels("mamba3-mimo-tiny")
    assert bench_model.SSD not in prefill_labels("transformer-tiny")
    model = build_model("mamba2-tiny", dtype=torch.float32, impl="chunked")
    model.impl = "triton"
    assert bench_model.SSD not in [label for label, _ in bench_model.variants(model)]  # not a decode row


def test_the_chunk_parallel_bound_follows_the_model():
    """128 × 512 tokens: SISO's carried states (64-token chunks) fit the bound, MIMO's (16-token chunks, 4×
    as many) do not, and the bench says so on that row instead of timing the chunked scan under its label."""
    from kernels import bench_model
    from model.factory import build_model

    siso = build_model("mamba3-siso-tiny", dtype=torch.float32, impl="chunked")
    mimo = build_model("mamba3-mimo-tiny", dtype=torch.float32, impl="chunked")
    llama = build_model("transformer-tiny", dtype=torch.float32, impl="chunked")
    assert bench_model.chunk_parallel_fits(siso, 128, 512) and bench_model.chunk_parallel_fits(llama, 10**6, 10**6)
    big = 128 * 16384
    assert not bench_model.chunk_parallel_fits(siso, 128, big)
    cfg_s, cfg_m = siso.config, mimo.config
    from kernels.mamba3.ssd import carried_bytes
    assert carried_bytes(2, 512, cfg_m.nheads, cfg_m.headdim, cfg_m.d_state, cfg_m.mimo_rank) == 4 * carried_bytes(
        2, 512, cfg_m.nheads, cfg_m.headdim, cfg_m.d_state, 1)
    assert cfg_s.mimo_rank == 1


def test_cases_pick_shapes_ranks_and_mamba2():
    """`--cases` picks by BxT, BxT:R or BxT:mamba2."""
    assert bench._picked(["1x512:4", "128x512:mamba2"], 1, 512, 4, False)
    assert not bench._picked(["1x512:4"], 1, 512, 1, False)
    assert bench._picked(["128x512:mamba2"], 128, 512, 1, True)
    assert not bench._picked(["128x512:1"], 128, 512, 1, True)  # rank 1 means Mamba-3 SISO
    assert bench._picked(["128x512"], 128, 512, 4, False) and bench._picked(None, 1, 1, 1, False)


@pytest.mark.parametrize("argv, error", [
    (["--ssd-only", "--cases", "1x5x2"], "is not BxT"),
    (["--ssd-only", "--cases", "1x512:0"], "is not BxT"),
    (["--ssd-only", "--cases", "0x512"], "is not BxT"),
    (["--ssd-only", "--cases", "1x512:"], "is not BxT"),
    (["--ssd-only", "--cases", "1x\u00b2".encode().decode("unicode_escape")], "is not BxT"),
    (["--ssd-only", "--cases", "1x300"], "none of the rows"),
    (["--segmented-only", "--cases", "1x512:mamba2"], "none of the rows"),
    (["--cases", "1x512"], "give one of them"),
])
def test_a_bad_case_stops_the_run_before_any_gpu_work(argv, error, capsys):
    """Each case must parse and name a row of the tables asked for; otherwise argparse's error (exit 2)
    comes first, with or without a GPU, instead of an empty table after the device's peaks are measured."""
    with pytest.raises(SystemExit) as exit_info:
        bench.main(argv)
    assert exit_info.value.code == 2 and error in capsys.readouterr().err
