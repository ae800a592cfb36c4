"""The chunk-parallel prefill scan (kernels/mamba3/ssd.py) against the float64 token loop, as the chunked
scan's tests check it (interpreter on the CPU, real shapes on the GPU)."""

import pytest
import torch

from kernels.mamba3 import reference as ref
from kernels.mamba3.chunk import scan_chunked
from kernels.mamba3.reference import ScanState
from kernels.mamba3.ssd import chunk_offsets, scan_ssd
from kernels.mamba3.testing import (angle_err, check_scan, random_inputs, random_scan_case, rel_max, run_poisoned,
                                    time_slice)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")

# id: (batch, T, H, P, N, S, R, chunk (None: the default), initial state, gate, mamba2, groups, pairing)
CASES = {
    "odd-T": (1, 37, 2, 16, 16, 4, 1, 16, False, True, False, 1, "interleaved"),
    "state-b2": (2, 21, 1, 16, 16, 4, 1, 16, True, True, False, 1, "interleaved"),
    "one-chunk": (1, 9, 1, 16, 16, 4, 1, 16, True, False, False, 1, "interleaved"),
    "chunk-32": (1, 70, 1, 16, 32, 8, 1, 32, True, True, False, 1, "interleaved"),
    "chunk-64-default": (1, 70, 1, 16, 16, 4, 1, None, True, True, False, 1, "interleaved"),
    "n-8-p-24": (1, 20, 1, 24, 8, 2, 1, 16, True, True, False, 1, "interleaved"),
    "half-pairs-two-groups": (2, 23, 4, 16, 16, 4, 1, 16, True, True, False, 2, "half"),
    "n-not-pow2": (1, 23, 2, 16, 24, 5, 1, 16, True, True, False, 1, "interleaved"),
    "mamba2": (1, 19, 2, 16, 16, 0, 1, 16, True, True, True, 1, "interleaved"),
    "mimo-r4-state": (1, 29, 2, 16, 32, 4, 4, 4, True, True, False, 1, "half"),
    "mimo-r4-default-chunk": (1, 37, 1, 16, 16, 4, 4, None, True, True, False, 1, "interleaved"),
    "mimo-r3-padded": (1, 21, 1, 16, 16, 3, 3, 8, True, True, False, 1, "interleaved"),
    "mimo-r2-no-gate": (2, 19, 1, 16, 16, 8, 2, 8, False, False, False, 1, "interleaved"),
}


def _inputs(case, dtype, seed=0):
    b, T, H, P, N, S, R, chunk, with_state, gate, mamba2, groups, pairing = case
    kw, state = random_scan_case(b, T, H, P, N, S, R, groups, with_state=with_state, pairing=pairing, seed=seed,
                                 device=DEV, dtype=dtype, gate=gate, mamba2=mamba2)
    return kw, state, chunk


def _run_poisoned(kw, state, chunk, **extra):
    return run_poisoned(scan_ssd, kw, state, chunk_size=chunk, **extra)


def _check(kw, state, chunk, tol, p95, **extra):
    check_scan(scan_ssd, kw, state, tol, p95, chunk_size=chunk, **extra)


@pytest.mark.parametrize("case", list(CASES))
def test_ssd_fp32_matches_the_token_loop(case):
    kw, state, chunk = _inputs(CASES[case], torch.float32)
    _check(kw, state, chunk, 1e-4, p95=False)


def test_ssd_mimo_gate_without_mimo_z_gates_by_z_itself():
    """A MIMO chunk-parallel scan given z but no mimo_z gates every rank by SiLU(z), as the reference does (its
    output kernel read the per-rank gate weights from an unrelated buffer before)."""
    kw, state, chunk = _inputs(CASES["mimo-r4-state"], torch.float32)
    kw["mimo_z"] = None
    _check(kw, state, chunk, 1e-4, p95=False)


@pytest.mark.parametrize("precision,tol", [("tf32", 2e-2), ("input", 5e-2)])
@pytest.mark.parametrize("case", ["state-b2", "mimo-r4-state"])
def test_ssd_bf16_io_within_spec_tolerance(case, precision, tol):
    kw, state, chunk = _inputs(CASES[case], torch.bfloat16)
    _check(kw, state, chunk, tol, p95=True, dot_precision=precision)


def test_ssd_agrees_with_the_chunked_scan_and_continues_in_place():
    """Split in two calls on one cache (final_state aliasing state, as a model's cache does), it gives the
    one-call outputs and state; and it matches `chunk.scan_chunked` on the same inputs."""
    kw, state, chunk = _inputs(CASES["chunk-32"], torch.float32, seed=5)
    T = kw["x"].shape[1]
    whole, st_whole = scan_ssd(**kw, state=state, chunk_size=chunk)
    o_chunked, st_chunked = scan_chunked(**kw, state=state, chunk_size=16)
    assert rel_max(whole, o_chunked) < 1e-5 and rel_max(st_whole.ssm, st_chunked.ssm) < 1e-5
    cache = ScanState(*(t.clone() for t in state))
    o1, _ = scan_ssd(**time_slice(kw, slice(0, 41)), state=cache, final_state=cache, chunk_size=chunk)
    o2, _ = scan_ssd(**time_slice(kw, slice(41, T)), state=cache, final_state=cache, chunk_size=chunk)
    assert rel_max(torch.cat([o1, o2], 1), whole) < 1e-5
    assert rel_max(cache.ssm, st_whole.ssm) < 1e-5 and angle_err(cache.angle, st_whole.angle) < 1e-5
    assert rel_max(cache.k, st_whole.k) < 1e-5 and torch.equal(cache.x, st_whole.x)


def test_ssd_p_blocks_equal_the_whole():
    kw, state, chunk = _inputs(CASES["n-8-p-24"], torch.float32)
    whole, st_whole = _run_poisoned(kw, state, chunk)
    split, st_split = _run_poisoned(kw, state, chunk, block_p=16)  # P = 24: a full block and a masked one
    assert rel_max(split, whole) < 1e-6 and rel_max(st_split.ssm, st_whole.ssm) < 1e-6
    with pytest.raises(ValueError, match="block_p"):
        scan_ssd(**kw, block_p=24)


def test_chunk_offsets_wrap_the_running_angle():
    dt = torch.rand(2, 50, 3, dtype=torch.float64) * 3
    theta = torch.rand(2, 50, 4, dtype=torch.float64) * 3
    angle0 = torch.rand(2, 3, 4, dtype=torch.float64) * 6
    starts, final = chunk_offsets(dt, theta, angle0, 16)
    run = angle0[:, None] + torch.cumsum(dt[..., None] * theta[:, :, None, :], dim=1)  # (b, T, H, S)
    want = torch.remainder(torch.cat([angle0[:, None], run[:, 15:-1:16]], dim=1), ref.TWO_PI)
    assert starts.shape == (2, 4, 3, 4) and (starts >= 0).all() and (starts < ref.TWO_PI).all()
    assert angle_err(starts, want) < 1e-5 and angle_err(final, torch.remainder(run[:, -1], ref.TWO_PI)) < 1e-5


def test_ssd_refuses_what_it_does_not_run():
    kw, _, _ = _inputs(CASES["odd-T"], torch.float32)
    with pytest.raises(ValueError, match="power of two"):
        scan_ssd(**kw, chunk_size=24)
    with pytest.raises(ValueError, match=">= 16 rows"):
        scan_ssd(**kw, chunk_size=8)
    with pytest.raises(ValueError, match="dot_precision"):
        scan_ssd(**kw, dot_precision="fp8")
    bf16, _, _ = _inputs(CASES["odd-T"], torch.bfloat16)
    with pytest.raises(ValueError, match="<= 32 rows"):
        scan_ssd(**bf16, dot_precision="input")  # the default 64-row chunk: bf16 dots refused there
    scan_ssd(**bf16, dot_precision="input", chunk_size=32)
    mimo = random_inputs(1, 9, 1, 16, 16, 4, 2, seed=0, device=DEV, dtype=torch.float32)
    with pytest.raises(ValueError, match="MIMO needs mimo_x and mimo_o"):
        scan_ssd(**{k: v for k, v in mimo.items() if not k.startswith("mimo_")})


@pytest.mark.parametrize("case", ["half-pairs-two-groups", "mimo-r4-state"])
def test_prefill_switches_to_it_inside_chunk_parallel(monkeypatch, case):
    """Inside `segmented.chunk_parallel()` the model's prefill entry runs on `scan_ssd` (the chunked scan's
    outputs and state), up to SSD_MAX_BYTES of carried states; outside, nothing changes."""
    from kernels.mamba3 import segmented, ssd

    calls = []
    monkeypatch.setattr(segmented, "scan_ssd", lambda *a, **k: calls.append(1) or ssd.scan_ssd(*a, **k))
    kw, state, _ = _inputs(CASES[case], torch.float32)
    want, want_st = scan_chunked(**kw, state=state)
    with segmented.chunk_parallel():
        got, got_st = segmented.prefill(**kw, state=state)
        with pytest.raises(ValueError, match="takes no chunk_size"):
            segmented.prefill(**kw, chunk_size=16)
    segmented.prefill(**kw, state=state)
    assert calls == [1] and segmented._SSD is False
    assert rel_max(got, want) < 1e-5 and rel_max(got_st.ssm, want_st.ssm) < 1e-5
    assert rel_max(got_st.k, want_st.k) < 1e-5
    monkeypatch.setattr(segmented, "SSD_MAX_BYTES", 0)  # a prefill whose carried states would not fit stays
    with segmented.chunk_parallel():
        segmented.prefill(**kw, state=state)
    assert calls == [1]


@gpu
def test_ssd_real_shapes_gpu():
    """1.5B head shapes (H 64 → 8 here, P 64, N 128, S 32), bf16 I/O, 64-token chunks, an initial state."""
    kw, state = random_scan_case(2, 1000, 8, 64, 128, 32, with_state=True, device=DEV, dtype=torch.bfloat16)
    _check(kw, state, 64, 2e-2, p95=True)
