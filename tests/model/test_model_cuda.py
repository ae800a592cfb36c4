"""GPU only: a Transformer decode step (static KV cache, position in a device tensor) captures in a
CUDA graph and replays to the eager logits."""

from __future__ import annotations

import pytest
import torch

from model.factory import build_model

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_transformer_decode_step_replays_in_a_cuda_graph():
    model = build_model("transformer-tiny", device="cuda", dtype=torch.float32, seed=0)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0)).cuda()
    eager = model.allocate_cache(batch=2, max_context=16)
    model.prefill(tokens[:, :8], eager)
    want = [model.decode_step(tokens[:, t], eager) for t in range(8, 12)]

    cache = model.allocate_cache(batch=2, max_context=16)
    model.prefill(tokens[:, :8], cache)
    held = [t.clone() for t in cache.tensors()] + [cache.pos.clone()]
    token = tokens[:, 8].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up before capture, then put the cache back
        model.decode_step(token, cache)
    torch.cuda.current_stream().wait_stream(side)
    for t, saved in zip(cache.tensors() + [cache.pos], held):
        t.copy_(saved)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits = model.decode_step(token, cache)
    got = []
    for t in range(8, 12):
        token.copy_(tokens[:, t])
        graph.replay()
        got.append(logits.clone())
    assert int(cache.pos) == 12
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
