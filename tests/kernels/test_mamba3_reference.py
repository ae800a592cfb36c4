"""The readable twins agree with each other: sequential loop, chunked scan, decode step."""

import pytest
import torch

from kernels.mamba3.testing import random_inputs, random_state
from kernels.mamba3.reference import (ScanState, rotation_pairs, rotation_slices, scan_chunked, scan_sequential,
                                      step)

F64 = torch.float64

# id: (batch, T, H, P, N, S, R, G, chunk, initial state, gate)
CASES = {
    "siso-odd": (2, 37, 3, 4, 8, 2, 1, 1, 8, False, True),
    "siso-state-groups": (2, 23, 4, 4, 8, 2, 1, 2, 5, True, True),
    "siso-one-token": (1, 1, 2, 4, 8, 2, 1, 1, 64, True, True),
    "siso-chunk-gt-T": (1, 13, 2, 3, 6, 1, 1, 1, 16, True, False),
    "mimo-r3-state": (2, 29, 3, 4, 8, 2, 3, 1, 6, True, True),
    "mimo-r2-nogate": (1, 17, 2, 5, 8, 4, 2, 1, 4, False, False),
    "mimo-r4-full-rope": (1, 11, 2, 4, 8, 4, 4, 1, 3, True, True),
}


def _make(case, seed=0, dtype=F64):
    b, T, H, P, N, S, R, G, chunk, with_state, gate = CASES[case]
    kw = random_inputs(b, T, H, P, N, S, R, G, seed=seed, dtype=dtype, gate=gate)
    state = None
    if with_state:
        state = random_state(b, H, P, N, S, R, seed=seed + 1, dtype=dtype, ssm_dtype=dtype)
    return kw, state, chunk


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _assert_states_close(got: ScanState, want: ScanState, tol):
    wrapped = torch.remainder(got.angle.double() - want.angle.double() + torch.pi, 2 * torch.pi) - torch.pi
    assert wrapped.abs().max().item() <= tol * 10
    for name in ("ssm", "k", "x"):
        assert _rel(getattr(got, name), getattr(want, name)) <= tol, name


@pytest.mark.parametrize("case", list(CASES))
def test_sequential_equals_chunked_float64(case):
    kw, state, chunk = _make(case)
    o_seq, st_seq = scan_sequential(**kw, state=state)
    o_chk, st_chk = scan_chunked(**kw, state=state, chunk_size=chunk)
    assert torch.isfinite(o_seq).all() and o_seq.abs().max() > 0.1
    assert _rel(o_chk, o_seq) < 1e-12
    _assert_states_close(st_chk, st_seq, 1e-12)


@pytest.mark.parametrize("case", ["siso-odd", "siso-state-groups", "mimo-r3-state", "mimo-r2-nogate"])
def test_prefill_then_continue_equals_full(case):
    kw, state, chunk = _make(case, seed=3)
    T = kw["x"].shape[1]
    half = T // 2
    o_full, st_full = scan_sequential(**kw, state=state)

    def part(sl):
        return {k: (v[:, sl] if k in ("x", "z", "B", "C", "dt", "adt", "lam", "theta") and v is not None
                    else v) for k, v in kw.items()}

    o_pre, st_pre = scan_chunked(**part(slice(0, half)), state=state, chunk_size=chunk)
    o_rest, st_rest = scan_chunked(**part(slice(half, T)), state=st_pre, chunk_size=chunk)
    assert _rel(torch.cat([o_pre, o_rest], 1), o_full) < 1e-12
    _assert_states_close(st_rest, st_full, 1e-12)

    cache = ScanState(*(t.clone() for t in st_pre))
    rest = part(slice(half, T))
    outs = [step(**{k: (v[:, t] if k in ("x", "z", "B", "C", "dt", "adt", "lam", "theta") and v is not None
                        else v) for k, v in rest.items()}, state=cache) for t in range(T - half)]
    assert _rel(torch.stack(outs, 1), o_full[:, half:]) < 1e-12
    _assert_states_close(cache, st_full, 1e-12)


def test_sequential_leaves_given_state_alone():
    kw, state, _ = _make("siso-state-groups")
    before = [t.clone() for t in state]
    scan_sequential(**kw, state=state)
    assert all(torch.equal(a, b) for a, b in zip(before, state))


@pytest.mark.parametrize("case", ["siso-odd", "mimo-r3-state"])
def test_float32_chunked_close_to_float64_sequential(case):
    b, _, H, P, N, S, R, G, _, with_state, gate = CASES[case]
    kw = random_inputs(b, 96, H, P, N, S, R, G, seed=5, dtype=F64, gate=gate)
    state = random_state(b, H, P, N, S, R, seed=6, dtype=F64, ssm_dtype=F64) if with_state else None
    o_ref, st_ref = scan_sequential(**kw, state=state)
    f32 = lambda t: t.float() if torch.is_tensor(t) else t  # noqa: E731
    o32, st32 = scan_chunked(**{k: f32(v) for k, v in kw.items()},
                             state=None if state is None else ScanState(*(t.float() for t in state)),
                             chunk_size=16)
    assert o32.dtype == torch.float32 and st32.ssm.dtype == torch.float32
    assert _rel(o32, o_ref) < 1e-5
    assert _rel(st32.ssm, st_ref.ssm) < 1e-5


def test_mamba2_reduction_is_plain_recurrence():
    b, T, H, P, N = 2, 19, 3, 4, 6
    kw = random_inputs(b, T, H, P, N, 0, seed=7, dtype=F64, mamba2=True)
    assert kw["theta"].shape[-1] == 0 and (kw["lam"] == 1).all()
    o, st = scan_chunked(**kw, chunk_size=5)
    x, z, B, C, dt, adt, D = (kw[k] for k in ("x", "z", "B", "C", "dt", "adt", "D"))
    Bh, Ch = B[:, :, 0, 0], C[:, :, 0, 0]  # (b, T, N), G = 1
    S = torch.zeros(b, H, P, N, dtype=F64)
    want = []
    for t in range(T):
        dx = dt[:, t, :, None] * x[:, t]  # (b, H, P)
        S = torch.exp(adt[:, t])[..., None, None] * S + dx[..., None] * Bh[:, t, None, None, :]
        y = (S * Ch[:, t, None, None, :]).sum(-1) + D[:, None] * x[:, t]
        want.append(y * torch.nn.functional.silu(z[:, t]))
    assert _rel(o, torch.stack(want, 1)) < 1e-12
    assert _rel(st.ssm, S) < 1e-12


@pytest.mark.parametrize("rank", [1, 2])
def test_pairings_are_a_permutation_of_state_coordinates(rank):
    """Half-split pairing equals interleaved pairing after permuting the N coordinates."""
    b, T, H, P, N, S = 1, 9, 2, 3, 8, 3
    kw = random_inputs(b, T, H, P, N, S, rank, seed=8, dtype=F64)
    state = random_state(b, H, P, N, S, rank, seed=9, dtype=F64, ssm_dtype=F64)
    inter, half = rotation_pairs(N, S, "interleaved"), rotation_pairs(N, S, "half")
    perm = list(range(N))  # perm[interleaved coordinate] = half-split coordinate
    for pair_i, pair_h in zip(inter, half):
        for ci, ch in zip(pair_i, pair_h):
            perm[ci] = ch
    rest = sorted(set(range(N)) - set(perm[c] for c in inter[0] + inter[1]))
    for c, h in zip(sorted(set(range(N)) - set(inter[0] + inter[1])), rest):
        perm[c] = h
    p = torch.tensor(perm)
    o_h, st_h = scan_sequential(**{**kw, "pairing": "half"}, state=state)
    kw_i = {**kw, "pairing": "interleaved", "B": kw["B"][..., p], "C": kw["C"][..., p],
            "B_bias": kw["B_bias"][..., p], "C_bias": kw["C_bias"][..., p]}
    st_i = ScanState(state.angle, state.ssm[..., p], state.k[..., p], state.x)
    o_i, st_i_out = scan_sequential(**kw_i, state=st_i)
    assert _rel(o_i, o_h) < 1e-13
    assert _rel(st_i_out.ssm, st_h.ssm[..., p]) < 1e-13


def test_rotation_preserves_norm_and_leaves_unpaired_coordinates():
    from kernels.mamba3.reference import rotate
    v = torch.randn(5, 8, dtype=F64)
    phi = torch.rand(5, 2, dtype=F64) * 6
    for pairing in ("interleaved", "half"):
        r = rotate(v, phi, pairing)
        assert torch.allclose(r.norm(dim=-1), v.norm(dim=-1))
        first, second = rotation_pairs(8, 2, pairing)
        assert [list(range(8))[s] for s in rotation_slices(8, 2, pairing)] == [first, second]
        untouched = sorted(set(range(8)) - set(first + second))
        assert torch.equal(r[:, untouched], v[:, untouched])
        assert not torch.allclose(r[:, first], v[:, first])


def test_siso_rejects_rank_above_one():
    kw = random_inputs(1, 4, 2, 3, 8, 2, rank=2, seed=0, dtype=F64)
    kw.pop("mimo_x")
    with pytest.raises(ValueError, match="MIMO needs"):
        scan_chunked(**kw)
