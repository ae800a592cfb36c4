"""The inference interface of every family: prefill of part of a sequence then decode steps equals a
full-sequence forward; prefill continues from a held cache; sequential == chunked at model level;
cache bytes equal the cost model; reset and misuse."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import cost
from model.config import get_config
from model.factory import build_model

TINY = ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny"]
IMPLS = ["sequential", "chunked"]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def _tokens(batch: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, T), generator=torch.Generator().manual_seed(seed))


def _rel(got, want) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", TINY)
def test_prefill_then_decode_equals_full_forward(name, impl, dtype):
    model = build_model(name, dtype=dtype, impl=impl, seed=1)
    tokens = _tokens(2, 19)
    full = model(tokens)  # (b, T, V)
    assert full.shape == (2, 19, model.config.padded_vocab)
    cache = model.allocate_cache(batch=2, max_context=32)
    logits = [model.prefill(tokens[:, :9], cache)]
    for t in range(9, 19):
        logits.append(model.decode_step(tokens[:, t], cache))
    assert int(cache.pos) == 19
    assert _rel(torch.stack(logits, dim=1), full[:, 8:]) < TOL[dtype]


@pytest.mark.parametrize("name", TINY)
def test_prefill_continues_from_held_cache(name):
    model = build_model(name, dtype=torch.float64, impl="chunked", seed=2)
    tokens = _tokens(3, 21, seed=1)
    whole = model.allocate_cache(batch=3, max_context=21)
    parts = model.allocate_cache(batch=3, max_context=21)
    last_whole = model.prefill(tokens, whole)
    model.prefill(tokens[:, :8], parts)
    last_parts = model.prefill(tokens[:, 8:], parts)
    assert _rel(last_parts, last_whole) < 1e-12
    for a, b in zip(parts.tensors(), whole.tensors()):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", TINY)
def test_sequential_equals_chunked_model(name):
    tokens = _tokens(2, 23, seed=3)
    seq = build_model(name, dtype=torch.float64, impl="sequential", seed=4)(tokens)
    chk = build_model(name, dtype=torch.float64, impl="chunked", seed=4)(tokens)
    assert _rel(chk, seq) < 1e-12


@pytest.mark.parametrize("dtype, nbytes", [(torch.bfloat16, 2), (torch.float32, 4)], ids=["bf16", "f32"])
@pytest.mark.parametrize("name", TINY)
def test_cache_bytes_equal_cost_model(name, dtype, nbytes):
    model = build_model(name, dtype=dtype)
    cache = model.allocate_cache(batch=3, max_context=40)
    assert cache.nbytes == cost.cache_bytes(model.config, 3, 40, dtype_bytes=nbytes)


def test_mamba3_cache_dtypes_and_bf16_state_what_if():
    cfg = get_config("mamba3-siso-tiny")
    layer = build_model(cfg).allocate_cache(batch=2, max_context=8).layers[0]
    assert (layer.angle.dtype, layer.ssm.dtype, layer.k.dtype, layer.x.dtype) == \
        (torch.float32, torch.float32, torch.bfloat16, torch.bfloat16)
    bf16_state = dataclasses.replace(cfg, state_dtype="bfloat16")
    cache = build_model(bf16_state).allocate_cache(batch=2, max_context=8)
    assert cache.layers[0].ssm.dtype == torch.bfloat16
    assert cache.nbytes == cost.cache_bytes(bf16_state, 2, 8) < cost.cache_bytes(cfg, 2, 8)


@pytest.mark.parametrize("name", TINY)
def test_bf16_decode_tracks_fp32(name):
    tokens = _tokens(2, 12, seed=5)
    ref = build_model(name, dtype=torch.float32, seed=6)(tokens)[:, -1]
    model = build_model(name, dtype=torch.bfloat16, seed=6)
    cache = model.allocate_cache(batch=2, max_context=12)
    model.prefill(tokens[:, :6], cache)
    for t in range(6, 12):
        logits = model.decode_step(tokens[:, t], cache)
    assert logits.dtype == torch.bfloat16
    assert _rel(logits, ref) < 5e-2


@pytest.mark.parametrize("name", TINY)
def test_reset_gives_a_fresh_sequence(name):
    model = build_model(name, dtype=torch.float32, seed=7)
    tokens = _tokens(2, 10, seed=8)
    cache = model.allocate_cache(batch=2, max_context=16)
    first = model.prefill(tokens, cache)
    cache.reset()
    assert int(cache.pos) == 0
    assert torch.equal(model.prefill(tokens, cache), first)


@pytest.mark.parametrize("name", ["mamba3-siso-tiny", "transformer-tiny"])
def test_prefill_refuses_misuse(name):
    model = build_model(name)
    cache = model.allocate_cache(batch=2, max_context=8)
    with pytest.raises(ValueError, match="batch"):
        model.prefill(_tokens(3, 4), cache)
    with pytest.raises(ValueError, match="max_context"):
        model.prefill(_tokens(2, 9), cache)
    with pytest.raises(ValueError, match="start must be ≥ 0"):
        model.prefill(_tokens(2, 4), cache, start=-1)
    with pytest.raises(ValueError, match="start 5 given, the cache holds 0 tokens"):
        model.prefill(_tokens(2, 4), cache, start=5)
    model.prefill(_tokens(2, 6), cache)
    with pytest.raises(ValueError, match="start 0 given, the cache holds 6 tokens"):
        model.prefill(_tokens(2, 2), cache, start=0)
    assert int(cache.pos) == 6  # refused before any write


@pytest.mark.parametrize("name", TINY)
def test_prefill_with_a_known_start(name):
    """`start` given (as a CUDA-graph capture needs) is the same prefill as read from the cache."""
    model = build_model(name, dtype=torch.float32, seed=7)
    tokens = _tokens(2, 10, seed=9)
    read, given = (model.allocate_cache(batch=2, max_context=16) for _ in range(2))
    torch.testing.assert_close(model.prefill(tokens[:, :6], given, start=0), model.prefill(tokens[:, :6], read),
                               rtol=0, atol=0)
    torch.testing.assert_close(model.prefill(tokens[:, 6:], given, start=6), model.prefill(tokens[:, 6:], read),
                               rtol=0, atol=0)
    assert int(given.pos) == int(read.pos) == 10
