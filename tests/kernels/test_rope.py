"""Fused rotary + KV-cache write (decode and prefill) vs the twins and vs float64: interpreter on CPU, real
shapes on the GPU. The caches start NaN: a step must write exactly row `pos` (a prefill exactly its
positions) and leave every other row alone."""

import math

import pytest
import torch

from kernels.rope import rope_decode_, rope_decode_reference, rope_prefill_, rope_prefill_reference
from model.layers import rope_inv_freq

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")


def _exact_rope(x: torch.Tensor, pos: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """float64 rotate-half of x (..., d) over the first 2·len(inv_freq) channels."""
    x = x.double()
    rh = inv_freq.numel()
    ang = pos * inv_freq.double().cpu().to(x.device)
    c, s = torch.cos(ang), torch.sin(ang)
    x1, x2, rest = x[..., :rh], x[..., rh:2 * rh], x[..., 2 * rh:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, rest], dim=-1)


def _case(b, nh, n_kv, d, rot, ctx, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, d, generator=g).to(DEV, dtype) for n in (nh, n_kv, n_kv))
    inv = rope_inv_freq(rot, 500000.0, DEV, factor=32.0, original_max_position=8192)
    caches = [torch.full((b, n_kv, ctx, d), float("nan"), device=DEV, dtype=dtype) for _ in range(2)]
    return q, k, v, inv, caches


# id: (b, heads, kv heads, head_dim, rotary dims, max_context, pos, dtype)
CASES = {
    "llama-like-bf16": (2, 8, 2, 32, 32, 9, 5, torch.bfloat16),
    "first-position-fp32": (1, 4, 4, 16, 16, 4, 0, torch.float32),
    "last-position-partial-rotary": (2, 4, 1, 16, 8, 7, 6, torch.float32),
    "far-position-bf16": (1, 2, 1, 16, 16, 20000, 19999, torch.bfloat16),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_rope_decode_rotates_and_writes_only_row_pos(case):
    b, nh, n_kv, d, rot, ctx, pos, dt = case
    q, k, v, inv, (kc, vc) = _case(b, nh, n_kv, d, rot, ctx, dt, seed=pos)
    p = torch.tensor(pos, device=DEV)
    q_exact, k_exact = _exact_rope(q, pos, inv), _exact_rope(k, pos, inv)
    got = rope_decode_(q.clone(), k, v, kc, vc, p, inv)
    others = torch.arange(ctx, device=DEV) != pos
    assert kc[:, :, others].isnan().all() and vc[:, :, others].isnan().all()
    assert torch.equal(vc[:, :, pos], v)
    bound = 1e-5 if dt == torch.float32 else 4e-3
    for out, exact in ((got, q_exact), (kc[:, :, pos], k_exact)):
        assert out.dtype == dt
        assert ((out.double() - exact).norm() / exact.norm()).item() < bound
    # the model's PyTorch path: same rotation, rounded more often in bf16
    twin_k, twin_v = torch.zeros_like(kc), torch.zeros_like(vc)
    twin_q = rope_decode_reference(q, k, v, twin_k, twin_v, p, inv)
    assert ((twin_q.double() - q_exact).norm() / q_exact.norm()).item() < 4 * bound
    torch.testing.assert_close(twin_k[:, :, pos].double(), kc[:, :, pos].double(), rtol=4 * bound,
                               atol=4 * bound * math.sqrt(d))


def test_rope_decode_refuses_mismatched_shapes():
    q, k, v, inv, (kc, vc) = _case(1, 4, 2, 16, 16, 4, torch.float32, seed=0)
    with pytest.raises(ValueError, match="rope_decode"):
        rope_decode_(q, k[:, :1], v, kc, vc, torch.tensor(0, device=DEV), inv)
    with pytest.raises(ValueError, match="rope_decode"):
        rope_decode_(q, k, v, kc, vc, torch.tensor(0, device=DEV), torch.ones(9, device=DEV))


@gpu
@pytest.mark.parametrize("b", [1, 128])
def test_rope_decode_llama_shapes_gpu(b):
    q, k, v, inv, (kc, vc) = _case(b, 32, 8, 64, 64, 16384, torch.bfloat16, seed=b)
    pos = 12345
    got = rope_decode_(q.clone(), k, v, kc, vc, torch.tensor(pos, device=DEV), inv)
    q_exact, k_exact = _exact_rope(q, pos, inv), _exact_rope(k, pos, inv)
    assert ((got.double() - q_exact).norm() / q_exact.norm()).item() < 4e-3
    assert ((kc[:, :, pos].double() - k_exact).norm() / k_exact.norm()).item() < 4e-3
    assert torch.equal(vc[:, :, pos], v) and kc[:, :, pos + 1].isnan().all()


@pytest.mark.parametrize("block_t", [1, 4])  # one token a program, or tiles of 4 (partial at T = 5 and 1)
@pytest.mark.parametrize("start, T, dt", [(0, 5, torch.float32), (3, 4, torch.bfloat16), (6, 1, torch.float32)])
def test_rope_prefill_rotates_views_and_writes_only_its_positions(start, T, dt, block_t):
    """q, k, v as views of one projection row (b, T, (h + 2·h_kv)·d), as the model passes them: q rotated in
    place, rotated k and v written at start … start + T − 1 of each sequence's cache rows."""
    b, nh, n_kv, d, ctx = 2, 4, 2, 16, 10
    g = torch.Generator().manual_seed(start)
    proj = torch.randn(b, T, (nh + 2 * n_kv) * d, generator=g).to(DEV, dt)
    q, k, v = (t.unflatten(-1, (-1, d)) for t in proj.split([nh * d, n_kv * d, n_kv * d], dim=-1))
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    inv = rope_inv_freq(d, 500000.0, DEV, factor=32.0, original_max_position=8192)
    kc, vc = (torch.full((b, n_kv, ctx, d), float("nan"), device=DEV, dtype=dt) for _ in range(2))
    got = rope_prefill_(q, k, v, kc, vc, start, inv, block_t=block_t)
    assert got.data_ptr() == q.data_ptr()  # in place
    span = torch.zeros(ctx, dtype=torch.bool)
    span[start:start + T] = True
    assert kc[:, :, ~span].isnan().all() and vc[:, :, ~span].isnan().all()
    assert torch.equal(vc[:, :, span], v0.transpose(1, 2))
    bound = 1e-5 if dt == torch.float32 else 4e-3
    for t in range(T):
        for out, x in ((got[:, t], q0[:, t]), (kc[:, :, start + t], k0[:, t])):
            exact = _exact_rope(x, start + t, inv)
            assert ((out.double() - exact).norm() / exact.norm()).item() < bound
    twin_k, twin_v = torch.zeros_like(kc), torch.zeros_like(vc)
    twin_q = rope_prefill_reference(q0, k0, v0, twin_k, twin_v, start, inv)
    torch.testing.assert_close(twin_q.double(), got.double(), rtol=4 * bound, atol=4 * bound * math.sqrt(d))
    torch.testing.assert_close(twin_k[:, :, span].double(), kc[:, :, span].double(), rtol=4 * bound,
                               atol=4 * bound * math.sqrt(d))


def test_rope_prefill_refuses_positions_past_the_cache_and_odd_tiles():
    q, k, v, inv, (kc, vc) = _case(1, 4, 2, 16, 16, 4, torch.float32, seed=0)
    qkv = q[:, None].expand(1, 3, 4, 16), k[:, None].expand(1, 3, 2, 16), v[:, None].expand(1, 3, 2, 16)
    with pytest.raises(ValueError, match="positions 2…4 in a cache of 4"):
        rope_prefill_(*qkv, kc, vc, 2, inv)
    for block_t in (0, 3):
        with pytest.raises(ValueError, match="power of two"):
            rope_prefill_(*qkv, kc, vc, 0, inv, block_t=block_t)


@gpu
@pytest.mark.parametrize("block_t", [1, 32])
@pytest.mark.parametrize("b, start, T", [(1, 0, 512), (4, 1000, 333)])
def test_rope_prefill_llama_shapes_gpu(b, start, T, block_t):
    g = torch.Generator().manual_seed(T)
    proj = torch.randn(b, T, 48 * 64, generator=g).to(DEV, torch.bfloat16)
    q, k, v = (t.unflatten(-1, (-1, 64)) for t in proj.split([32 * 64, 8 * 64, 8 * 64], dim=-1))
    q0, k0, v0 = q.clone(), k.clone(), v.clone()
    inv = rope_inv_freq(64, 500000.0, DEV, factor=32.0, original_max_position=8192)
    kc, vc = (torch.full((b, 8, 2048, 64), float("nan"), device=DEV, dtype=torch.bfloat16) for _ in range(2))
    rope_prefill_(q, k, v, kc, vc, start, inv, block_t=block_t)
    twin_k, twin_v = torch.zeros_like(kc), torch.zeros_like(vc)
    twin_q = rope_prefill_reference(q0, k0, v0, twin_k, twin_v, start, inv)
    span = slice(start, start + T)
    assert ((q.double() - twin_q.double()).norm() / twin_q.double().norm()).item() < 1e-2
    assert ((kc[:, :, span].double() - twin_k[:, :, span].double()).norm() / twin_k.double().norm()).item() < 1e-2
    assert torch.equal(vc[:, :, span], twin_v[:, :, span]) and kc[:, :, start + T:].isnan().all()
