"""GPU only: a decode step (static cache, position in a device tensor) captures in a CUDA graph and
replays to the eager logits, for every family on the PyTorch path and on the Triton kernels; and the
Triton path decodes like the PyTorch one."""

from __future__ import annotations

import pytest
import torch

from kernels.mamba3.testing import angle_err
from model.factory import build_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


FAMILIES = ["transformer-tiny", "mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "hybrid-tiny"]


def _graph_logits(model, tokens, prompt: int, max_context: int | None = None):
    """(logits of decoding tokens[:, prompt:] one by one from a captured CUDA graph after an eager prefill,
    the cache): a warm-up step on a side stream, the cache put back, then capture and replay."""
    batch = tokens.shape[0]
    cache = model.allocate_cache(batch=batch, max_context=max_context or tokens.shape[1])
    model.prefill(tokens[:, :prompt], cache)
    held = [t.clone() for t in cache.tensors()] + [cache.pos.clone()]
    token = tokens[:, prompt].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        model.decode_step(token, cache)
    torch.cuda.current_stream().wait_stream(side)
    for t, saved in zip(cache.tensors() + [cache.pos], held):
        t.copy_(saved)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.decode_step(token, cache)
    out = []
    for t in range(prompt, tokens.shape[1]):
        token.copy_(tokens[:, t])
        graph.replay()
        out.append(logits.clone())
    return out, cache


@pytest.mark.parametrize("batch", [2, 1])  # batch 1: impl "triton" runs its products on kernels.gemv
@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("name", FAMILIES)
def test_decode_step_replays_in_a_cuda_graph(name, impl, batch):
    model = build_model(name, device="cuda", dtype=torch.float32, impl=impl, seed=0)
    tokens = torch.randint(0, 256, (batch, 12), generator=torch.Generator().manual_seed(0)).cuda()
    eager = model.allocate_cache(batch=batch, max_context=16)
    model.prefill(tokens[:, :8], eager)
    want = [model.decode_step(tokens[:, t], eager) for t in range(8, 12)]
    got, cache = _graph_logits(model, tokens, 8, max_context=16)
    assert int(cache.pos) == 12
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "triton"])
@pytest.mark.parametrize("name", FAMILIES + ["mamba3-siso-1.5b", "llama-3.2-1b"])
def test_prefill_replays_in_a_cuda_graph(name, impl):
    """The profiler times prefill from a CUDA graph (profiler.timing.capture_cuda_graph, the cache reset
    before each call): each replay gives the eager prefill's logits and leaves the cache as it would."""
    from profiler.timing import capture_cuda_graph

    model = build_model(name, device="cuda", dtype=torch.bfloat16, impl=impl, seed=0)
    tokens = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1)).cuda()
    eager = model.allocate_cache(batch=2, max_context=40)
    want = model.prefill(tokens, eager)
    cache = model.allocate_cache(batch=2, max_context=40)
    out = []
    replay = capture_cuda_graph(lambda: out.append(model.prefill(tokens, cache, start=0)), before=cache.reset)
    for _ in range(2):
        cache.reset()
        replay()
        torch.testing.assert_close(out[-1], want)
        assert int(cache.pos) == 40
        for got, held in zip(cache.tensors(), eager.tensors()):
            torch.testing.assert_close(got, held)


@pytest.mark.parametrize("name", ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "hybrid-tiny",
                                  "mamba3-siso-1.5b", "mamba3-mimo-1.5b"])
def test_prefill_on_the_chunk_parallel_scan(name, monkeypatch):
    """Inside `segmented.chunk_parallel()` the model's scans run on kernels.mamba3.ssd: the same
    logits and caches as the chunked scan, to the scans' tf32 tolerance (bf16 model)."""
    from kernels.mamba3 import segmented, ssd

    calls = []
    monkeypatch.setattr(segmented, "scan_ssd", lambda *a, **k: calls.append(1) or ssd.scan_ssd(*a, **k))
    model = build_model(name, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
    tokens = torch.randint(0, 256, (2, 300), generator=torch.Generator().manual_seed(2)).cuda()
    want_cache, got_cache = (model.allocate_cache(batch=2, max_context=300) for _ in range(2))
    with segmented.model_dots("tf32"):  # the chunk-parallel scan's products are tf32: compare like with like
        want = model.prefill(tokens, want_cache)
    assert not calls
    with segmented.chunk_parallel():
        got = model.prefill(tokens, got_cache)
    assert len(calls) == sum(1 for m in model.modules() if hasattr(m, "ops"))  # every scan layer switched
    # The first layer's inputs are the same on both sides: every cache tensor agrees to the scans' tf32
    # rounding (H200: ≤ 3e-4 by norm), its angles to 1e-2 rad. After it the bf16 activations round
    # differently, so later layers compare loosely: their angles sum ~300 Δ·θ computed from those
    # activations (H200: up to 0.4 rad apart in the 1.5B models; bounded at 1 rad, which a wrong offset
    # such as π would break) and their states drift (H200: ≤ 4.8e-2 by norm in layers 15–23 of the 1.5B
    # models, ≤ 6e-3 in the tiny ones); the logits agree by norm (H200: ≤ 9e-3).
    first, later = {}, {}
    for i, (g_layer, w_layer) in enumerate(zip(got_cache.layers, want_cache.layers)):
        for field, g, w in zip(g_layer._fields, g_layer, w_layer):  # every layer cache is a NamedTuple
            if field == "angle":
                assert angle_err(g, w) < (1e-2 if i == 0 else 1.0), (i, angle_err(g, w))
            else:
                (later if i else first)[f"layer {i} {field}"] = _norm_err(g, w)
    assert _norm_err(got, want) < 3e-2
    assert max(first.values()) < 1e-3, first
    assert max(later.values(), default=0.0) < 1e-1, sorted(later.items(), key=lambda kv: -kv[1])[:6]


def _norm_err(got, want) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.mark.parametrize("batch", [3, 1])  # batch 1: the one-row products on kernels.gemv vs cuBLAS
@pytest.mark.parametrize("name", FAMILIES)
def test_triton_path_decodes_like_the_pytorch_path(name, batch):
    ref, fast = (build_model(name, device="cuda", dtype=torch.bfloat16, impl=i, seed=0) for i in ("chunked", "triton"))
    tokens = torch.randint(0, 256, (batch, 24), generator=torch.Generator().manual_seed(2)).cuda()
    caches = [m.allocate_cache(batch=batch, max_context=24) for m in (ref, fast)]
    for m, c in zip((ref, fast), caches):
        m.prefill(tokens[:, :16], c)
    for t in range(16, 24):
        want, got = (m.decode_step(tokens[:, t], c).float() for m, c in zip((ref, fast), caches))
        assert ((got - want).norm() / want.norm()).item() < 3e-2, t


@pytest.mark.parametrize("chain", ["torch", "triton"])
@pytest.mark.parametrize("name", ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "hybrid-tiny"])
def test_segmented_prefill_hands_decoding_the_same_cache(name, chain, monkeypatch):
    """The model's Triton prefill cut into 4 segments (forced; the rule keeps short prompts whole) gives the
    plain scan's logits, and the cache it leaves (state, angle, cached key and x) decodes the same."""
    import kernels.mamba3.segmented as segmented

    model = build_model(name, device="cuda", dtype=torch.float32, impl="triton", seed=0)
    tokens = torch.randint(0, 256, (1, 206), generator=torch.Generator().manual_seed(3)).cuda()
    runs = []
    for segments in (1, 4):
        monkeypatch.setattr(segmented, "auto_segments", lambda *a, n=segments, rank=1: n)
        cache = model.allocate_cache(batch=1, max_context=206)
        with segmented.chained_by(chain):
            logits = [model.prefill(tokens[:, :201], cache)]
        logits += [model.decode_step(tokens[:, t], cache) for t in range(201, 206)]
        runs.append(logits)
    for t, (plain, cut) in enumerate(zip(*runs)):
        torch.testing.assert_close(cut, plain, rtol=1e-3, atol=1e-4, msg=f"step {t}")


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9,
                    reason="programmatic dependent launch needs compute capability 9.0 (Hopper) or later")
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("name", ["mamba3-siso-1.5b", "mamba3-mimo-1.5b", "mamba2-1.5b", "llama-3.2-1b"])
def test_pdl_graph_decodes_bit_for_bit_like_plain_launches(name, batch):
    """The real-size decode graph with programmatic dependent launch (each Triton kernel scheduled while the
    one before drains, waiting on the device) gives exactly the logits of the same graph launched plainly:
    a kernel reading or writing before its wait would race with the kernel before it and show here."""
    from kernels.mamba3.tl_utils import pdl_meta, without_pdl

    model = build_model(name, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
    assert pdl_meta(torch.empty(1, device="cuda"))["PDL"]
    tokens = torch.randint(0, model.config.vocab_size, (batch, 40), generator=torch.Generator().manual_seed(3)).cuda()
    with_pdl, _ = _graph_logits(model, tokens, 32)
    with without_pdl():
        assert not pdl_meta(torch.empty(1, device="cuda"))["PDL"]
        plain, _ = _graph_logits(model, tokens, 32)
    for a, b in zip(with_pdl, plain):
        assert torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("name", ["mamba3-siso-tiny", "transformer-tiny", "hybrid-tiny", "mamba2-tiny"])
def test_deferred_residual_products_prefill_like_the_norm_kernel_add(name, monkeypatch):
    """impl "triton" at a prefill of 400 rows (≥ model.layers.RESIDUAL_PRODUCT_MIN_ROWS): every branch's last
    product is left to the next pre-norm, which runs it as one addmm with the stream added, into the stream
    (fp32 output for the fp32 residual stream of the SSM models and the hybrid), eagerly and replayed from a CUDA
    graph; the logits agree with the branch outputs added by the norm kernel (`residual_add_apart`) to bf16
    rounding (H200: ≤ 9e-3 by norm), and an addmm into a new tensor gives the in-place one's exactly."""
    from model import layers
    from profiler.timing import capture_cuda_graph

    model = build_model(name, device="cuda", dtype=torch.bfloat16, impl="triton", seed=0)
    tokens = torch.randint(0, 256, (2, 200), generator=torch.Generator().manual_seed(5)).cuda()
    with layers.residual_add_apart():
        want = model.prefill(tokens, model.allocate_cache(batch=2, max_context=200))
    calls, addmm = [], torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **kw: calls.append((kw.get("out_dtype"), "out" in kw))
                        or addmm(*a, **kw))
    got = model.prefill(tokens, model.allocate_cache(batch=2, max_context=200))
    n = model.config.n_layer
    out_dtype = torch.float32 if name != "transformer-tiny" else None
    # into the stream in place; the head's last-token rows (a strided view of it, 2 rows) into a new tensor
    assert calls == [(out_dtype, True)] * (2 * n - 1) + [(out_dtype, False)]
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2
    cache = model.allocate_cache(batch=2, max_context=200)
    out = []
    replay = capture_cuda_graph(lambda: out.append(model.prefill(tokens, cache, start=0)), before=cache.reset)
    cache.reset()
    replay()
    torch.testing.assert_close(out[-1], got)
    add_to = layers.PendingProduct.add_to
    monkeypatch.setattr(layers.PendingProduct, "add_to", lambda self, h, in_place=False: add_to(self, h))
    assert torch.equal(model.prefill(tokens, model.allocate_cache(batch=2, max_context=200)), got)
