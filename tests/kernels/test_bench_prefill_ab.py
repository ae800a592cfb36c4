"""The whole-model prefill A/B tool (kernels.bench_prefill_ab): its variants, the switches they set, on the CPU."""

import pytest
import torch

from kernels import fused, rope
from kernels.bench_prefill_ab import applied, main, parse_variant, run
from kernels.mamba3 import segmented
from model import layers


def test_variants_parse_into_knobs():
    assert parse_variant("mimo:num_warps=8; mimo:chunk_size=4") == {"mimo:num_warps": 8, "mimo:chunk_size": 4}
    assert parse_variant("conv_tile=(16, 128);") == {"conv_tile": (16, 128)}
    assert parse_variant("dots='tf32'; rope_block_t=1; rank1:dot_precision='tf32'") == {
        "dots": "tf32", "rope_block_t": 1, "rank1:dot_precision": "tf32"}
    assert parse_variant("residual_product=False") == {"residual_product": False}
    for bad, match in (("mimo:num_warps", "knob=value"), ("bogus=1", "knob=value"), ("mimo:=1", "knob=value"),
                       ("siso:chunk_size=4", "knob=value"), ("rope_block_t=one", "Python literal"),
                       (";", "no knob=value"), ("conv_tile=16", "two positive integers"),
                       ("conv_tile=(16, 0)", "two positive integers"), ("rope_block_t=2.5", "an integer"),
                       ("dots='bf16'", "'tf32' or 'input'"), ("residual_product=0", "True or False")):
        with pytest.raises(ValueError, match=match):
            parse_variant(bad)


def test_a_variant_sets_its_switches_and_puts_them_back():
    before = (fused.MAMBA2_CONV_PREFILL_TILE, rope.ROPE_PREFILL_BLOCK_T, segmented._MODEL_DOTS, segmented._SCAN_KW)
    before_rows = layers.RESIDUAL_PRODUCT_MIN_ROWS
    with applied({"conv_tile": [8, 128], "rope_block_t": 1, "dots": "tf32", "mimo:num_warps": 8,
                  "rank1:chunk_size": 16}):
        assert fused.MAMBA2_CONV_PREFILL_TILE == (8, 128) and rope.ROPE_PREFILL_BLOCK_T == 1
        assert segmented._MODEL_DOTS == "tf32"
        assert segmented._SCAN_KW == {1: {"chunk_size": 16}, 2: {"num_warps": 8}}
    with pytest.raises(RuntimeError), applied({"rope_block_t": 4, "mimo:chunk_size": 2, "residual_product": False}):
        assert layers.RESIDUAL_PRODUCT_MIN_ROWS > 2 ** 62  # no product deferred
        raise RuntimeError  # restored on an error too
    with applied({"residual_product": True}):
        assert layers.RESIDUAL_PRODUCT_MIN_ROWS == before_rows
    assert (fused.MAMBA2_CONV_PREFILL_TILE, rope.ROPE_PREFILL_BLOCK_T, segmented._MODEL_DOTS,
            segmented._SCAN_KW) == before
    assert layers.RESIDUAL_PRODUCT_MIN_ROWS == before_rows


def test_scan_keywords_reach_the_model_prefills_scans_by_rank():
    """`segmented.scan_keywords`: a MIMO scan takes `mimo`'s keywords as if its caller named them (a chunk named
    keeps bf16 dots up to 32 rows), a rank-1 scan `rank1`'s; neither leaks to the other rank or past the block."""
    from kernels.mamba3.chunk import scan_chunked
    from kernels.mamba3.tl_utils import INTERPRETED
    from kernels.mamba3.testing import random_scan_case

    if not INTERPRETED:
        pytest.skip("runs the scans under TRITON_INTERPRET=1")

    def same(a, b):
        return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))

    mimo, m_state = random_scan_case(1, 20, 2, 16, 32, 4, 4, with_state=True, dtype=torch.bfloat16)
    siso, s_state = random_scan_case(1, 20, 2, 16, 16, 4, 1, with_state=True, dtype=torch.bfloat16)
    with segmented.scan_keywords(mimo={"chunk_size": 4}, rank1={"dot_precision": "tf32"}):
        assert same(segmented.prefill(**mimo, state=m_state),
                    scan_chunked(**mimo, state=m_state, chunk_size=4, dot_precision="input"))
        assert same(segmented.prefill(**siso, state=s_state), scan_chunked(**siso, state=s_state))
    assert same(segmented.prefill(**mimo, state=m_state),
                scan_chunked(**mimo, state=m_state, chunk_size=8, dot_precision="input"))


def test_run_times_every_variant_inside_its_switches_between_two_defaults():
    from model.factory import build_model

    model = build_model("transformer-tiny", device="cpu", dtype=torch.float32, impl="chunked", seed=0)
    seen = []

    def timer(model, batch, prompt):
        seen.append((rope.ROPE_PREFILL_BLOCK_T, batch, prompt))
        return float(len(seen)), ""

    rows = run(model, [(1, 8), (2, 4)], [("rope 1", {"rope_block_t": 1})], repeats=2, timer=timer,
               logits=lambda m: m.prefill(torch.arange(8)[None], m.allocate_cache(batch=1, max_context=8), start=0))
    assert [(label, shape) for label, shape, _, _ in rows] == [
        (label, shape) for label in ("default", "rope 1", "default again") for shape in ((1, 8), (2, 4))]
    assert [ms for _, _, ms, _ in rows] == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]  # the fastest of two each
    assert [b for b, *_ in seen] == [32] * 4 + [1] * 4 + [32] * 4
    assert all(dist == 0.0 for *_, dist in rows)  # the reference scan: no knob moves its logits


def test_main_refuses_bad_arguments_and_a_missing_gpu(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "mamba2-1.5b", "--variant", "bogus=1"])
    assert "knob=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "mamba2-1.5b", "--repeats", "0"])
    if not torch.cuda.is_available():
        assert main(["--model", "mamba2-1.5b"]) == 1
        assert "needs a CUDA GPU" in capsys.readouterr().out


def test_layer_mode_times_one_scan_layer_with_each_variant_applied():
    """`--layer`: `segmented.prefill` on the model's head shapes (scaled-down presets here, under the interpreter), the
    defaults first and last, each variant's keywords reaching the scan (a MIMO scan's rows-major layout gives the
    same outputs as its P-major default up to the order of sums), the distance taken at the first shape."""
    from kernels.bench_prefill_ab import layer_inputs, run_layer
    from kernels.mamba3.tl_utils import INTERPRETED
    from model.config import get_config

    if not INTERPRETED:
        pytest.skip("runs the scans under TRITON_INTERPRET=1")
    seen = []

    def timer(fn):
        seen.append((dict(segmented._SCAN_KW[2]), fn()[0].shape))
        return 1.0

    def inputs(cfg, b, T):
        return layer_inputs(cfg, b, T, device="cpu")

    cfg = get_config("mamba3-mimo-tiny")
    rows = run_layer(cfg, [(1, 16), (2, 8)], [("rows-major", {"mimo:p_major": False})], timer=timer, inputs=inputs)
    assert [(r[0], r[1]) for r in rows] == [("default", (1, 16)), ("default", (2, 8)), ("rows-major", (1, 16)),
                                            ("rows-major", (2, 8)), ("default again", (1, 16)),
                                            ("default again", (2, 8))]
    assert [kw for kw, _ in seen] == [{}, {}, {"p_major": False}, {"p_major": False}, {}, {}]
    assert seen[1][1] == (2, 8, cfg.nheads, cfg.headdim)
    assert rows[0][3] == 0.0 and 0.0 <= rows[2][3] < 1e-2
    m2 = layer_inputs(get_config("mamba2-tiny"), 1, 4, device="cpu")
    assert m2["B_bias"] is None and m2["theta"].shape[-1] == 0


def test_layer_mode_refuses_a_model_without_scans(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "llama-3.2-1b", "--layer"])
    assert "no scan layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "mamba3-siso-1.5b", "--layer", "--shape", "0", "512"])
    assert "positive batch" in capsys.readouterr().err
