"""Mixers alone: the sequential and chunked scans agree (float64, odd lengths and chunk sizes,
fresh and continued states, SISO/MIMO/Mamba-2); fp32 chunked stays within 1e-5 of float64
sequential; Mamba-2 through the Mamba-3 operator (λ = 1, no rotation, zero biases) is its own
recurrence S_t = e^{Δ_t A} S_{t−1} + Δ_t x_t B_tᵀ, y_t = S_t C_t + D x_t."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model.config import get_config
from model.factory import build_model
from model.scan import scan_ops

DEV = "cuda" if torch.cuda.is_available() else "cpu"

FAMILIES = ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny"]


def _mixer(name: str, impl: str, dtype: torch.dtype, chunk_size: int | None = None, seed: int = 0):
    """Layer 0's mixer with every parameter perturbed away from its structured init (seeded)."""
    cfg = get_config(name)
    if chunk_size is not None:
        cfg = dataclasses.replace(cfg, chunk_size=chunk_size)
    mixer = build_model(cfg, dtype=torch.float64, impl=impl, seed=seed).blocks()[0].mixer
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, p in mixer.named_parameters():
            if pname in ("B_bias", "C_bias", "D", "mimo_x", "mimo_z", "mimo_o") or pname.endswith("norm.weight"):
                p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return mixer.to(dtype) if dtype != torch.float64 else mixer


def _inputs(cfg, batch: int, T: int, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, T, cfg.d_model, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(mixer, u, cache=None):
    if cache is None:
        cache = mixer.allocate(u.shape[0], u.shape[1], u.device)
    return mixer(u, cache, 0), cache


def _rel(got, want) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("T, chunk_size", [(1, 4), (7, 3), (13, 4), (29, 8), (30, 5)])
def test_sequential_equals_chunked(name, T, chunk_size):
    seq = _mixer(name, "sequential", torch.float64)
    chk = _mixer(name, "chunked", torch.float64, chunk_size)
    u = _inputs(seq.cfg, 2, T, torch.float64)
    (y_seq, c_seq), (y_chk, c_chk) = _run(seq, u), _run(chk, u)
    assert _rel(y_chk, y_seq) < 1e-12
    for a, b in zip(c_chk, c_seq):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_sequential_equals_chunked_from_a_held_state(name):
    seq = _mixer(name, "sequential", torch.float64)
    chk = _mixer(name, "chunked", torch.float64, 4)
    u = _inputs(seq.cfg, 2, 23, torch.float64)
    _, held = _run(seq, u[:, :10])
    held_copy = type(held)(*(t.clone() for t in held))
    y_seq, _ = _run(seq, u[:, 10:], held)
    y_chk, _ = _run(chk, u[:, 10:], held_copy)
    assert _rel(y_chk, y_seq) < 1e-12
    for a, b in zip(held, held_copy):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_fp32_chunked_close_to_float64_sequential(name):
    ref = _mixer(name, "sequential", torch.float64)
    fast = _mixer(name, "chunked", torch.float32)
    u = _inputs(ref.cfg, 2, 37, torch.float64)
    y_ref, _ = _run(ref, u)
    y_fast, _ = _run(fast, u.float())
    assert y_fast.dtype == torch.float32
    assert _rel(y_fast, y_ref) < 1e-5


def _mamba2_recurrence(mixer, u: torch.Tensor) -> torch.Tensor:
    """Spec §6.1 written out: causal conv + SiLU, the 2-term recurrence, gate, grouped RMSNorm."""
    cfg = mixer.cfg
    H, P, N, K, T = cfg.nheads, cfg.headdim, cfg.d_state, cfg.d_conv, u.shape[1]
    z, xBC, dd_dt = (u @ mixer.in_proj.weight.T).split([cfg.d_inner, cfg.conv_dim, H], dim=-1)
    padded = F.pad(xBC, (0, 0, K - 1, 0))  # zeros before the first token, (b, K−1+T, conv_dim)
    w = mixer.conv1d.weight[:, 0]  # (conv_dim, K)
    xBC = F.silu(mixer.conv1d.bias + sum(w[:, j] * padded[:, j:j + T] for j in range(K)))
    x, B, C = xBC.split([cfg.d_inner, N, N], dim=-1)
    x = x.unflatten(-1, (H, P))
    dt = F.softplus(dd_dt + mixer.dt_bias)
    A = -torch.exp(mixer.A_log)
    S = u.new_zeros(u.shape[0], H, P, N)
    ys = []
    for t in range(T):
        S = torch.exp(dt[:, t] * A)[..., None, None] * S + \
            dt[:, t, :, None, None] * x[:, t, :, :, None] * B[:, t, None, None, :]
        ys.append((S @ C[:, t, None, :, None]).squeeze(-1) + mixer.D[:, None] * x[:, t])
    y = (torch.stack(ys, dim=1) * F.silu(z.unflatten(-1, (H, P)))).flatten(-2)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * mixer.norm.weight
    return y @ mixer.out_proj.weight.T


@pytest.mark.parametrize("impl", ["sequential", "chunked"])
@pytest.mark.parametrize("T", [1, 5, 19])
def test_mamba2_is_its_own_recurrence(impl, T):
    mixer = _mixer("mamba2-tiny", impl, torch.float64, chunk_size=4)
    u = _inputs(mixer.cfg, 2, T, torch.float64)
    y, _ = _run(mixer, u)
    assert _rel(y, _mamba2_recurrence(mixer, u)) < 1e-12


@pytest.mark.parametrize("name", ["mamba3-siso-tiny", "mamba3-mimo-tiny"])
def test_triton_ops_match_chunked_through_prefill_and_fused_decode(name):
    """The mixer on the Triton scan (prefill into the cache in place, then the one-launch fused decode
    step from the in_proj row) against the same mixer on the reference ops; interpreted on CPU."""
    mixer = _mixer(name, "chunked", torch.float32)
    fast = copy.deepcopy(mixer)
    fast.ops = scan_ops("triton", mixer.cfg.chunk_size)
    assert fast.ops.step_fused is not None
    u = _inputs(mixer.cfg, 2, 17, torch.float32).to(DEV)
    mixer, fast = mixer.to(DEV), fast.to(DEV)
    caches = [m.allocate(2, 17, DEV) for m in (mixer, fast)]
    want, got = (m(u[:, :13], c, 0) for m, c in zip((mixer, fast), caches))
    assert _rel(got, want) < 1e-4
    for t in range(13, 17):
        want, got = (m.step(u[:, t], c, torch.tensor(t)) for m, c in zip((mixer, fast), caches))
        assert _rel(got, want) < 1e-4
    for held, ref_held in zip(caches[1], caches[0]):
        assert _rel(held, ref_held) < 1e-4
