"""kernels.bench_model's rows, run on the CPU with the timing stubbed (the real run needs a GPU): which rows
a session will print, and that the bf16-state twin is built and costed as its own model."""

import dataclasses

import torch

from kernels import bench_model
from model import cost
from model.config import get_config
from model.factory import build_model


def test_mamba3_models_get_bf16_state_rows_and_transformers_do_not(monkeypatch):
    seen = []

    def fake_decode(model, batch, context):
        seen.append((model.config.name, getattr(model.config, "state_dtype", None), batch, context))
        return 1.0

    monkeypatch.setattr(bench_model, "time_decode_ms", fake_decode)
    rows = bench_model.run(["mamba3-siso-tiny", "transformer-tiny"], [1, 4], [64], None, bw=1e12, rate=1e14,
                           device="cpu", impl="chunked")
    twins = [r for r in rows if r.variant == "fused glue, bf16 state"]
    assert [(r.model, r.batch) for r in twins] == [("mamba3-siso-tiny", 1), ("mamba3-siso-tiny", 4)]
    assert ("mamba3-siso-tiny", "bfloat16", 4, 64) in seen  # the twin really holds a bf16 state
    cfg = get_config("mamba3-siso-tiny")
    bf16 = cost.decode_cost(dataclasses.replace(cfg, state_dtype="bfloat16"), 4, 64)
    assert twins[1].floor_ms == max(bf16.bytes / 1e12, bf16.flops / 1e14) * 1e3
    fp32_row = next(r for r in rows if r.model == "mamba3-siso-tiny" and r.batch == 4 and r.variant == "fused glue")
    assert twins[1].floor_ms < fp32_row.floor_ms and twins[1].target_ms is None
    assert all(r.model != "transformer-tiny" or "bf16 state" not in r.variant for r in rows)
    assert not [r for r in bench_model.run(["mamba3-siso-tiny"], [1], [64], None, bw=1e12, rate=1e14,
                                           bf16_state=False, device="cpu", impl="chunked")
                if "bf16 state" in r.variant]


def test_a_segmented_prefill_is_also_timed_on_the_plain_scan(monkeypatch):
    """Where the model's prefill would cut the scan into segments, two more rows time it inside
    `segmented.plain_scans()` and `segmented.chained_by("torch")`; the other rows are timed as the model runs."""
    from kernels.mamba3 import segmented

    timed = []

    def fake_prefill(model, batch, prompt, graph=True):
        timed.append((segmented._PLAIN, segmented._CHAIN))
        return (2.0 if segmented._PLAIN else 1.0), ""

    monkeypatch.setattr(bench_model, "time_decode_ms", lambda *a: 1.0)
    monkeypatch.setattr(bench_model, "time_prefill_ms", fake_prefill)
    monkeypatch.setattr(bench_model, "prefill_segments", lambda model, b, T: 4 if b == 1 else 1)
    rows = bench_model.run(["mamba3-siso-tiny"], [1], [64], (1, 256), bw=1e12, rate=1e14, bf16_state=False,
                           device="cpu", impl="chunked")
    prefill = [r for r in rows if r.phase == "prefill"]
    assert [r.variant for r in prefill][-2:] == [bench_model.PLAIN_SCAN, bench_model.TORCH_CHAIN]
    assert prefill[-2].ms == 2.0
    assert timed == [(False, "triton")] * (len(prefill) - 2) + [(True, "triton"), (False, "torch")]
    assert segmented._PLAIN is False and segmented._CHAIN == "triton"  # switched back after the rows
    again = bench_model.run(["mamba3-siso-tiny"], [1], [64], (16, 256), bw=1e12, rate=1e14, bf16_state=False,
                            device="cpu", impl="chunked")
    assert bench_model.PLAIN_SCAN not in {r.variant for r in again}


def test_prefill_segments_follows_the_models_path(monkeypatch):
    """Only the Triton path segments; it asks the rule with the model's heads and MIMO rank."""
    from kernels.mamba3 import segmented
    from model.factory import build_model

    asked = []
    monkeypatch.setattr(segmented, "auto_segments", lambda *a, rank: asked.append((*a, rank)) or 4)
    model = build_model("mamba3-mimo-tiny", device="cpu", impl="chunked")
    assert bench_model.prefill_segments(model, 1, 10**6) == 1 and not asked  # the PyTorch path never segments
    model.impl = "triton"  # as a CUDA build would be (the rule itself is tested in test_mamba3_segmented)
    cfg = model.config
    assert bench_model.prefill_segments(model, 2, 4096) == 4
    assert asked == [(2, 4096, cfg.nheads, torch.device("cpu"), cfg.mimo_rank)] and cfg.mimo_rank > 1
    mamba2 = build_model("mamba2-tiny", device="cpu", impl="chunked")
    mamba2.impl = "triton"  # Mamba-2 prefills through the same segmented scan
    assert bench_model.prefill_segments(mamba2, 1, 8192) == 4 and asked[-1][2] == mamba2.config.nheads
    assert asked[-1][-1] == 1  # Mamba-2 has no MIMO rank: 1
    transformer = build_model("transformer-tiny", device="cpu", impl="chunked")
    transformer.impl = "triton"
    assert bench_model.prefill_segments(transformer, 1, 10**6) == 1  # no scan to cut


def test_the_no_pdl_row_is_timed_without_programmatic_dependent_launch(monkeypatch):
    """Each decode shape of a Triton-path model gets a "no PDL" row, captured inside `without_pdl()`;
    every other row (and everything after the run) launches with PDL where the GPU has it."""
    from kernels.mamba3 import tl_utils

    timed = []

    def fake_decode(model, batch, context):
        timed.append(tl_utils._PDL)
        return 1.0 if tl_utils._PDL else 1.5

    def labelled_triton(name, **kw):  # the Triton path needs CUDA; the timing is stubbed, so only the label
        model = build_model(name, **kw | {"impl": "chunked"})
        model.impl = kw["impl"]
        return model

    monkeypatch.setattr(bench_model, "time_decode_ms", fake_decode)
    monkeypatch.setattr(bench_model, "build_model", labelled_triton)
    rows = bench_model.run(["mamba3-siso-tiny"], [1, 4], [64], None, bw=1e12, rate=1e14, bf16_state=False,
                           device="cpu", impl="triton")
    no_pdl = [r for r in rows if r.variant == bench_model.NO_PDL]
    assert [r.batch for r in no_pdl] == [1, 4] and all(r.ms == 1.5 for r in no_pdl)
    assert timed.count(False) == 2 and all(r.ms == 1.0 for r in rows if r.variant != bench_model.NO_PDL)
    assert tl_utils._PDL is True
    chunked = bench_model.run(["mamba3-siso-tiny"], [1], [64], None, bw=1e12, rate=1e14, bf16_state=False,
                              device="cpu", impl="chunked")
    assert bench_model.NO_PDL not in {r.variant for r in chunked}  # PyTorch path: no Triton kernels to A/B


def test_the_separate_and_prologue_rows_are_timed_with_their_switches(monkeypatch):
    """Llama's "separate" row is captured inside `separate_products()` and Mamba-2's "PyTorch prologue" row
    with the mixers' fast flag off; every other row with products stacked and the prologue kernels on."""
    from model import layers
    from model.mamba2 import Mamba2Mixer

    seen = {}

    def fake_decode(model, batch, context):
        fast = {m.fast for m in model.modules() if isinstance(m, Mamba2Mixer)}
        seen.setdefault(model.config.name, []).append((layers._STACKING[-1], fast))
        return 1.0

    def labelled_triton(name, **kw):
        model = build_model(name, **kw | {"impl": "chunked"})
        model.impl = kw["impl"]
        return model

    monkeypatch.setattr(bench_model, "time_decode_ms", fake_decode)
    monkeypatch.setattr(bench_model, "build_model", labelled_triton)
    rows = bench_model.run(["transformer-tiny", "mamba2-tiny"], [2], [16], None, bw=1e12, rate=1e14,
                           bf16_state=False, device="cpu", impl="triton")
    labels = {name: [r.variant for r in rows if r.model == name] for name in seen}
    llama = dict(zip(labels["transformer-tiny"], seen["transformer-tiny"]))
    assert llama.pop(bench_model.SEPARATE)[0] is False and all(st for st, _ in llama.values())
    mamba2 = dict(zip(labels["mamba2-tiny"], seen["mamba2-tiny"]))
    assert mamba2.pop(bench_model.PROLOGUE_TORCH)[1] == {False}
    assert mamba2.pop("twin glue")[1] == {False} and all(f == {True} for _, f in mamba2.values())
    assert layers._STACKING == [True]


def test_every_family_gets_prefill_rows_with_the_variants_that_apply(monkeypatch):
    """A Transformer's prefill is timed too, with the SDPA rows (its PyTorch rotary path) and without the
    one-row, PDL, stacking and Mamba-3-prologue A/Bs, which do not apply to it."""
    def labelled_triton(name, **kw):
        model = build_model(name, **kw | {"impl": "chunked"})
        model.impl = kw["impl"]
        return model

    monkeypatch.setattr(bench_model, "time_decode_ms", lambda model, batch, context: 1.0)
    from kernels.mamba3 import segmented

    from model import layers

    graphs, ssd, switches, deferring = [], [], [], []
    monkeypatch.setattr(bench_model, "time_prefill_ms", lambda model, batch, prompt, graph=True: (
        graphs.append(graph) or ssd.append(segmented._SSD) or switches.append(segmented._MODEL_DOTS)
        or deferring.append(layers.RESIDUAL_PRODUCT_MIN_ROWS == 256) or 2.0, ""))
    monkeypatch.setattr(bench_model, "build_model", labelled_triton)
    rows = bench_model.run(["transformer-tiny", "mamba3-siso-tiny", "mamba2-tiny"], [1], [16], (2, 8), bw=1e12,
                           rate=1e14, bf16_state=False, device="cpu", impl="triton", chunk_parallel=True)
    prefill = {name: [r.variant for r in rows if r.phase == "prefill" and r.model == name]
               for name in ("transformer-tiny", "mamba3-siso-tiny", "mamba2-tiny")}
    assert prefill["transformer-tiny"] == ["fused glue", "twin glue", bench_model.EAGER, bench_model.RESIDUAL_APART,
                                           "fused glue, SDPA attention", "twin glue, SDPA attention"]
    assert prefill["mamba3-siso-tiny"] == ["fused glue", "twin glue", bench_model.EAGER, bench_model.PROLOGUE_TORCH,
                                           bench_model.SSD, bench_model.TF32_DOTS, bench_model.RESIDUAL_APART]
    assert prefill["mamba2-tiny"] == prefill["mamba3-siso-tiny"]
    labels = prefill["transformer-tiny"] + prefill["mamba3-siso-tiny"] + prefill["mamba2-tiny"]
    # every prefill row replayed from a graph but the eager one; the chunk-parallel and tf32 rows inside
    # their switches, and every switch put back after
    assert graphs == [label != bench_model.EAGER for label in labels]
    assert ssd == [label == bench_model.SSD for label in labels] and segmented._SSD is False
    assert switches == ["tf32" if label == bench_model.TF32_DOTS else "input" for label in labels]
    assert segmented._MODEL_DOTS == "input"
    assert deferring == [label != bench_model.RESIDUAL_APART for label in labels]
    assert layers.RESIDUAL_PRODUCT_MIN_ROWS == 256
    # without chunk_parallel (the default since it lost on an H200) there is no such row
    model = labelled_triton("mamba3-siso-tiny", device="cpu", dtype=torch.bfloat16, impl="triton", seed=0)
    assert bench_model.SSD not in [label for label, _ in bench_model.variants(model, "prefill")]


def test_mimo_over_siso_pairs_each_mimo_decode_row_with_its_siso_twin():
    def row(model, batch, variant="fused glue", ms=1.0, phase="decode"):
        return bench_model.Row(model, phase, batch, 768, variant, ms, 0.5, None)

    rows = [row("mamba3-siso-1.5b", 1, ms=1.0), row("mamba3-siso-1.5b", 128, ms=5.0),
            row("mamba3-mimo-1.5b", 1, ms=1.1), row("mamba3-mimo-1.5b", 128, ms=6.7),
            row("mamba3-mimo-1.5b", 128, "fused glue, bf16 state", ms=6.1),  # no SISO bf16 row: no ratio
            row("mamba3-mimo-180m", 128, ms=2.0),  # another size: no twin
            row("mamba3-mimo-1.5b", 128, phase="prefill"), row("mamba3-siso-1.5b", 128, phase="prefill")]
    got = bench_model.mimo_over_siso(rows)
    assert [(m, b, v) for m, b, _, v, _ in got] == [("mamba3-mimo-1.5b", 1, "fused glue"),
                                                   ("mamba3-mimo-1.5b", 128, "fused glue")]
    assert [round(r, 6) for *_, r in got] == [1.1, 1.34]
