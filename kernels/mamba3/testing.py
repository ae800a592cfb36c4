"""What the scan tests and the benchmark share: seeded random inputs with the distributions of the
public tests (spec §7.11: RMS-normalised Gaussian B/C, Δ log-uniform in [1e-3, 1e-1], a = −U(1, 16)·Δ,
λ = sigmoid(U(0, 1)), N(0, 1) biases, θ = π·tanh(N(0, 1))) and the error metrics of spec §7.10."""

from __future__ import annotations

import math

import torch

from kernels.mamba3.reference import ScanState


def random_inputs(batch: int, seqlen: int | None, heads: int, headdim: int, d_state: int, n_angles: int,
                  rank: int = 1, groups: int = 1, *, seed: int = 0, device="cpu",
                  dtype: torch.dtype = torch.float32, gate: bool = True, mamba2: bool = False) -> dict:
    """Keyword arguments for `scan_*` (seqlen given) or `step` (seqlen None), minus `state`.

    x, z, B, C come in `dtype`; dt, adt, lam, theta and the parameters in float32 (float64 when
    dtype is float64). `mamba2=True` gives λ = 1, no angles and zero biases. rank > 1 means MIMO
    with half-split pairing.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    f32 = torch.float64 if dtype == torch.float64 else torch.float32
    t = () if seqlen is None else (seqlen,)
    n_angles = 0 if mamba2 else n_angles

    def randn(*shape, dt=f32):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dt)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=f32)

    def rms_normed(*shape):
        v = randn(*shape, dt=torch.float64)
        return (v / v.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()).to(dtype)

    dt = torch.exp(math.log(1e-3) + rand(batch, *t, heads) * (math.log(1e-1) - math.log(1e-3)))
    out = dict(
        x=randn(batch, *t, heads, headdim, dt=dtype),
        z=randn(batch, *t, heads, headdim, dt=dtype) if gate else None,
        B=rms_normed(batch, *t, rank, groups, d_state),
        C=rms_normed(batch, *t, rank, groups, d_state),
        dt=dt,
        adt=-(1 + 15 * rand(batch, *t, heads)) * dt,
        lam=torch.ones_like(dt) if mamba2 else torch.sigmoid(rand(batch, *t, heads)),
        theta=math.pi * torch.tanh(randn(batch, *t, n_angles)),
        B_bias=torch.zeros(heads, rank, d_state, dtype=f32, device=device) if mamba2
        else randn(heads, rank, d_state),
        C_bias=torch.zeros(heads, rank, d_state, dtype=f32, device=device) if mamba2
        else randn(heads, rank, d_state),
        D=1 + 0.5 * randn(heads),
        pairing="interleaved" if rank == 1 else "half",
    )
    if rank > 1:
        out.update(mimo_x=1 / rank + 0.3 * randn(heads, rank, headdim),
                   mimo_z=1 + 0.3 * randn(heads, rank, headdim) if gate else None,
                   mimo_o=1 / rank + 0.3 * randn(heads, rank, headdim))
    return out


def random_scan_case(batch: int, seqlen: int, heads: int, headdim: int, d_state: int, n_angles: int,
                     rank: int = 1, groups: int = 1, *, with_state: bool, pairing: str | None = None,
                     seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32, gate: bool = True,
                     mamba2: bool = False) -> tuple[dict, ScanState | None]:
    """One seeded prefill-scan case, as the scans' tests build it: `random_inputs` from `seed` (with `pairing`
    when given) and, with `with_state`, the cache it continues from, `random_state` from seed + 1."""
    kw = random_inputs(batch, seqlen, heads, headdim, d_state, n_angles, rank, groups, seed=seed, device=device,
                       dtype=dtype, gate=gate, mamba2=mamba2)
    if pairing is not None:
        kw["pairing"] = pairing
    state = random_state(batch, heads, headdim, d_state, kw["theta"].shape[-1], rank, seed=seed + 1,
                         device=device, dtype=dtype) if with_state else None
    return kw, state


def random_state(batch: int, heads: int, headdim: int, d_state: int, n_angles: int, rank: int = 1, *,
                 seed: int = 0, device="cpu", dtype: torch.dtype = torch.float32,
                 ssm_dtype: torch.dtype = torch.float32) -> ScanState:
    """A cache as left by an earlier prefill: angles in [0, 2π), N(0, 1) state, RMS-scale k and x."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    f32 = torch.float64 if ssm_dtype == torch.float64 else torch.float32

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    return ScanState(
        angle=(2 * math.pi * torch.rand(batch, heads, n_angles, generator=g, dtype=torch.float64)).to(
            device=device, dtype=f32),
        ssm=randn(batch, heads, headdim, d_state).to(ssm_dtype),
        k=randn(batch, rank, heads, d_state).to(dtype),
        x=randn(batch, heads, headdim).to(dtype),
    )


def rel_max(got, want) -> float:
    """max |got − want| / max |want|."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def assert_same_build(got, want) -> None:
    """Two code paths that should compute the same numbers: bit for bit under the interpreter (CPU tensors);
    compiled for a GPU, paths with different register layouts may contract and order their sums differently, so
    within a few roundings of the stored dtype there (max error over max value: 1e-5 fp32, 1e-2 bf16)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    if got.device.type == "cpu" or not got.is_floating_point() or torch.equal(got, want):
        assert torch.equal(got, want)
    else:
        err = rel_max(got, want)
        assert err < (1e-5 if got.dtype in (torch.float32, torch.float64) else 1e-2), err


def rel_p95(got, want, floor=1e-2) -> float:
    """95th percentile of |got − want| / (|want| + 1e-6) over entries with |want| ≥ floor."""
    got, want = got.double().flatten(), want.double().flatten()
    keep = want.abs() >= floor
    err = (got[keep] - want[keep]).abs() / (want[keep].abs() + 1e-6)
    # kthvalue rather than quantile: quantile refuses more than 2^24 entries (a batch-128 state)
    return err.kthvalue(max(1, math.ceil(0.95 * err.numel()))).values.item()


def angle_err(got, want) -> float:
    """Largest wrapped angle difference."""
    if got.numel() == 0:
        return 0.0
    d = torch.remainder(got.double() - want.double() + math.pi, 2 * math.pi) - math.pi
    return d.abs().max().item()


def nan_state_like(st: ScanState) -> ScanState:
    return ScanState(*(torch.full_like(t, float("nan")) for t in st))


def upcast(kw: dict) -> dict:
    return {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}


def upcast_state(st):
    return None if st is None else ScanState(*(t.double() for t in st))


TIME_AXIS = ("x", "z", "B", "C", "dt", "adt", "lam", "theta")


def time_slice(kw: dict, sl) -> dict:
    return {k: (v[:, sl] if k in TIME_AXIS and v is not None else v) for k, v in kw.items()}


def at_time(kw: dict, t: int) -> dict:
    return {k: (v[:, t] if k in TIME_AXIS and v is not None else v) for k, v in kw.items()}


def run_poisoned(scan, kw: dict, state: ScanState | None, **extra) -> tuple:
    """`scan(**kw, state=state, **extra)` writing into an output and a final state filled with NaN
    beforehand (so a place the scan never writes shows), checked to be the ones returned."""
    b, T, H, P = kw["x"].shape
    R, _, N = kw["B"].shape[-3:]
    out = torch.full((b, T, H, P), float("nan"), device=kw["x"].device, dtype=kw["x"].dtype)
    fin = nan_state_like(ScanState.zeros(b, H, P, N, kw["theta"].shape[-1], R, device=kw["x"].device,
                                         dtype=kw["x"].dtype))
    o, st = scan(**kw, state=state, out=out, final_state=fin, **extra)
    assert o is out and st is fin
    return o, st


def check_scan(scan, kw: dict, state: ScanState | None, tol: float, p95: bool, **extra) -> None:
    """A prefill scan against the float64 token loop (`reference.scan_sequential`): output, state and cached
    key within `tol` (p95 or max relative error), the cached x exact, the final angle within 1e-4."""
    from kernels.mamba3.reference import scan_sequential

    o, st = run_poisoned(scan, kw, state, **extra)
    o_ref, st_ref = scan_sequential(**upcast(kw), state=upcast_state(state))
    assert torch.isfinite(o).all() and all(torch.isfinite(t).all() for t in st)
    err = rel_p95 if p95 else rel_max
    assert err(o, o_ref) < tol
    assert err(st.ssm, st_ref.ssm) < tol
    assert err(st.k, st_ref.k) < tol
    assert torch.equal(st.x, kw["x"][:, -1])
    assert angle_err(st.angle, st_ref.angle) < 1e-4
