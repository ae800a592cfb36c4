"""Segment-parallel prefill (kernels/mamba3/segmented.py) vs the float64 sequential reference and vs
`scan_chunked` over the prefix (interpreter on CPU, a real shape on the GPU)."""

import pytest
import torch

from kernels.mamba3 import reference as ref
from kernels.mamba3 import segmented
from kernels.mamba3.chunk import scan_chunked
from kernels.mamba3.reference import ScanState
from kernels.mamba3.segmented import (MIN_SEGMENT_TOKENS, MIN_SEGMENTED_TOKENS, MIN_TWO_SEGMENT_TOKENS, auto_segments,
                                      plain_scans, prefill, scan_segmented, segments_for, start_states,
                                      start_states_fused)
from kernels.mamba3.testing import (TIME_AXIS, angle_err, random_scan_case, rel_max, rel_p95, time_slice, upcast,
                                    upcast_state)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")

# id: (batch, T, H, P, N, S, R, segments, initial state, gate, mamba2, pairing)
CASES = {
    "siso-4-even": (1, 48, 2, 16, 16, 4, 1, 4, False, True, False, "interleaved"),
    "siso-state-b2-tail": (2, 45, 1, 16, 16, 4, 1, 4, True, True, False, "interleaved"),
    "siso-half-pairs": (1, 40, 1, 16, 16, 8, 1, 5, True, False, False, "half"),
    "mimo-r4-state": (1, 36, 2, 16, 32, 4, 4, 3, True, True, False, "interleaved"),
    "mamba2": (1, 40, 2, 16, 16, 0, 1, 4, True, True, True, "interleaved"),
    "mimo-r3-half-p24": (1, 36, 2, 24, 16, 4, 3, 3, True, True, False, "half"),
}


def _inputs(case, dtype, seed=0):
    b, T, H, P, N, S, R, nseg, with_state, gate, mamba2, pairing = case
    kw, state = random_scan_case(b, T, H, P, N, S, R, with_state=with_state, pairing=pairing, seed=seed,
                                 device=DEV, dtype=dtype, gate=gate, mamba2=mamba2)
    return kw, state, nseg


@pytest.mark.parametrize("case", list(CASES))
def test_segmented_scan_matches_the_sequential_reference(case):
    kw, state, nseg = _inputs(CASES[case], torch.float32)
    o, st = scan_segmented(**kw, state=state, segments=nseg)
    ref_kw = {k: v for k, v in kw.items() if k != "pairing"}
    o_ref, st_ref = ref.scan_sequential(**upcast(ref_kw), pairing=kw["pairing"], state=upcast_state(state))
    assert o.shape == kw["x"].shape and torch.isfinite(o).all()
    assert rel_max(o, o_ref) < 1e-4
    assert rel_max(st.ssm, st_ref.ssm) < 1e-4
    assert rel_max(st.k, st_ref.k) < 1e-4
    assert torch.equal(st.x, kw["x"][:, -1])
    assert angle_err(st.angle, st_ref.angle) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["siso-state-b2-tail", "mimo-r4-state", "mamba2", "siso-half-pairs",
                                  "mimo-r3-half-p24"])
def test_each_segment_starts_where_the_prefix_scan_ends(case, dtype):
    """Pass 2 alone: segment j's start state is scan_chunked's final state after j segments, from the
    PyTorch chain and from the one-launch kernel alike (half pairs, three ranks, P not a power of two,
    bf16 keys and x)."""
    kw, state, nseg = _inputs(CASES[case], dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    b, T, H, P = kw["x"].shape
    R, N, S = kw["B"].shape[-3], kw["B"].shape[-1], kw["theta"].shape[-1]
    L = T // nseg
    main = time_slice(kw, slice(0, L * nseg))
    lead = time_slice(kw, slice(0, L * (nseg - 1)))  # the last segment's local state is not needed
    seg = {k: (v.reshape(b * (nseg - 1), L, *v.shape[2:]) if k in TIME_AXIS and v is not None else v)
           for k, v in lead.items()}
    _, local = scan_chunked(**seg)
    init = state if state is not None else ScanState.zeros(b, H, P, N, S, R, dtype=kw["x"].dtype)
    args = (local, init, main["dt"], main["adt"], main["lam"], kw.get("mimo_x"), kw["pairing"], nseg)
    starts = start_states(*args)
    fused = start_states_fused(*args)  # the one-launch chain: the same starts
    for name, a, f in zip(ScanState._fields, starts, fused):
        assert a.shape == f.shape and a.dtype == f.dtype, name
        if name == "angle":
            assert angle_err(f, a) < 1e-5
        elif name == "ssm":  # fp32 both ways, the same sums (the kernel rounds keys to bf16 as torch does)
            assert rel_max(f, a) < 1e-5
        else:  # k, x in the input dtype: equal up to one rounding
            assert rel_max(f, a) < (1e-5 if dtype == torch.float32 else 1e-2), name
    for j in range(1, nseg):
        _, want = scan_chunked(**time_slice(kw, slice(0, j * L)), state=state)
        got = ScanState(*(t.unflatten(0, (b, nseg))[:, j] for t in starts))
        assert rel_max(got.ssm, want.ssm) < tol, j
        assert rel_max(got.k, want.k) < tol, j
        assert torch.equal(got.x, want.x), j
        assert angle_err(got.angle, want.angle) < 1e-4, j
        assert ((got.angle >= 0) & (got.angle < 2 * torch.pi)).all(), j  # wrapped, as the kernel keeps them


def test_bf16_io_within_spec_tolerance_and_fallbacks():
    kw, state, nseg = _inputs(CASES["siso-state-b2-tail"], torch.bfloat16)
    o, _ = scan_segmented(**kw, state=state, segments=nseg)
    ref_kw = {k: v for k, v in kw.items() if k != "pairing"}
    o_ref, _ = ref.scan_sequential(**upcast(ref_kw), pairing=kw["pairing"], state=upcast_state(state))
    assert rel_p95(o, o_ref) < 2e-2
    # one segment, or more segments than tokens: plain scan_chunked
    one, _ = scan_segmented(**kw, state=state, segments=1)
    many, _ = scan_segmented(**kw, state=state, segments=10_000)
    plain, _ = scan_chunked(**kw, state=state)
    assert torch.equal(one, plain) and torch.equal(many, plain)
    with pytest.raises(ValueError, match="segments"):
        scan_segmented(**kw, state=state, segments=0)


def test_prefill_segments_into_the_cache_it_continues_from():
    """The model's prefill with explicit segments writes the final state into a cache that is also its
    initial state, like the plain scan; without segments on the CPU it is the plain scan."""
    kw, state, nseg = _inputs(CASES["mimo-r4-state"], torch.float32)
    want_o, want = scan_chunked(**kw, state=state)
    cache = ScanState(*(t.clone() for t in state))
    o, got = prefill(**kw, state=cache, final_state=cache, segments=nseg)
    assert got is cache
    assert rel_max(o, want_o) < 1e-5 and rel_max(cache.ssm, want.ssm) < 1e-5
    assert rel_max(cache.k, want.k) < 1e-5  # the first decode step's β·x_prev·k_prevᵀ reads it
    assert torch.equal(cache.x, want.x) and angle_err(cache.angle, want.angle) < 1e-5
    into = torch.full_like(want_o, float("nan"))
    assert prefill(**kw, state=state, out=into, segments=nseg)[0] is into and rel_max(into, want_o) < 1e-5
    with pytest.raises(ValueError, match="final_state"):
        scan_segmented(**kw, state=state, segments=nseg, final_state=cache)
    with pytest.raises(ValueError, match="chain"):
        scan_segmented(**kw, state=state, segments=nseg, chain="numpy")
    fused_o, fused = scan_segmented(**kw, state=state, segments=nseg, chain="triton")
    with pytest.raises(ValueError, match="chain"), segmented.chained_by("numpy"):
        pass
    assert rel_max(fused_o, want_o) < 1e-5 and rel_max(fused.ssm, want.ssm) < 1e-5 and rel_max(fused.k, want.k) < 1e-5
    plain_o, _ = prefill(**kw, state=state)  # fp32 inputs: fp32 dots at the scan's own tile
    model_o, _ = scan_chunked(**kw, state=state, dot_precision="input")
    assert auto_segments(1, 10**6, 64, "cpu") == 1 and torch.equal(plain_o, model_o)


@pytest.mark.parametrize("case", ["siso-state-b2-tail", "mamba2"])
def test_a_bf16_state_is_rounded_once_not_at_every_segment(case):
    """A bf16 cache (Mamba-2's is in the model dtype; Mamba-3's with state_dtype bf16): the segments chain
    in fp32, so the outputs are as exact as the plain scan's and the final state comes back in bf16."""
    kw, state, nseg = _inputs(CASES[case], torch.float32)
    state = state._replace(ssm=state.ssm.to(torch.bfloat16))
    o, st = scan_segmented(**kw, state=state, segments=nseg)
    ref_kw = {k: v for k, v in kw.items() if k != "pairing"}
    o_ref, st_ref = ref.scan_sequential(**upcast(ref_kw), pairing=kw["pairing"], state=upcast_state(state))
    assert rel_max(o, o_ref) < 1e-5  # one bf16 rounding per boundary made this 3e-4 to 5e-4
    assert st.ssm.dtype == torch.bfloat16 and rel_max(st.ssm, st_ref.ssm) < 2 ** -8


def test_prefill_chains_segment_starts_as_told(monkeypatch):
    kw, state, nseg = _inputs(CASES["mamba2"], torch.float32)
    used = []
    for name, fn in list(segmented.CHAINS.items()):
        monkeypatch.setitem(segmented.CHAINS, name, lambda *a, name=name, fn=fn: used.append(name) or fn(*a))
    want, _ = scan_chunked(**kw, state=state)
    fused, _ = prefill(**kw, state=state, segments=nseg)
    with segmented.chained_by("torch"):
        plain, _ = prefill(**kw, state=state, segments=nseg)
    assert used == ["triton", "torch"] and segmented._CHAIN == "triton"
    assert rel_max(plain, want) < 1e-5 and rel_max(fused, want) < 1e-5


def test_segment_count_rule():
    # the 1.5B models (64 heads) on a 132-SM GPU: batch 1 → 4 segments for ~2 programs per SM, batch 2 → 2
    assert segments_for(64, 132, 16384) == 4
    assert segments_for(128, 132, 16384) == 2
    assert segments_for(64, 132, 4096) == 4
    # not below MIN_SEGMENTED_TOKENS, never segments shorter than MIN_SEGMENT_TOKENS, and nothing to gain
    # once the sequence-heads fill the SMs; batch-1 prompts from 512 tokens are cut (graph-timed wins)
    assert segments_for(64, 132, MIN_SEGMENTED_TOKENS - 1) == 1 and segments_for(64, 132, 2048) == 4
    assert segments_for(64, 132, 512) == 4 and segments_for(64, 132, 256) == 1
    # two segments (batch 2) lost for rank 1 below MIN_TWO_SEGMENT_TOKENS and won for MIMO at every length
    for T in (512, 2048, MIN_TWO_SEGMENT_TOKENS - 1):
        assert segments_for(128, 132, T) == segments_for(128, 132, T, rank=1) == 1
        assert segments_for(128, 132, T, rank=4) == 2
    assert segments_for(128, 132, MIN_TWO_SEGMENT_TOKENS) == 2 and segments_for(64, 132, 512, rank=1) == 4
    assert segments_for(64, 132, MIN_SEGMENTED_TOKENS) == MIN_SEGMENTED_TOKENS // MIN_SEGMENT_TOKENS
    assert segments_for(16, 132, MIN_SEGMENTED_TOKENS) == MIN_SEGMENTED_TOKENS // MIN_SEGMENT_TOKENS  # not 16
    assert segments_for(132, 132, 16384) == 1 and segments_for(8192, 132, 16384) == 1
    # the device's rule without a GPU, and switched off for an A/B timing (also when nested)
    assert auto_segments(1, 16384, 64, "cuda", sms=132) == 4
    assert auto_segments(2, 2048, 64, "cuda", sms=132, rank=4) == 2 and auto_segments(2, 2048, 64, "cuda", sms=132) == 1
    with plain_scans():
        with plain_scans():
            assert auto_segments(1, 16384, 64, "cuda", sms=132) == 1
        assert auto_segments(1, 16384, 64, "cuda", sms=132) == 1
    assert auto_segments(1, 16384, 64, "cuda", sms=132) == 4


@gpu
@pytest.mark.parametrize("chain", ["torch", "triton"])
def test_segmented_matches_scan_chunked_at_a_long_real_shape(chain):
    kw, state, _ = _inputs((1, 4099, 64, 64, 128, 32, 1, 16, True, True, False, "interleaved"), torch.bfloat16)
    o, st = scan_segmented(**kw, state=state, segments=16, chain=chain)
    o_ref, st_ref = scan_chunked(**kw, state=state)
    # both in tf32 products, summed in different orders: the spec's tf32 tolerance (2e-2 at p95)
    assert torch.isfinite(o).all()
    assert rel_p95(o, o_ref) < 2e-2
    assert rel_p95(st.ssm, st_ref.ssm) < 2e-2
    assert angle_err(st.angle, st_ref.angle) < 1e-3


def test_mimo_segments_take_their_own_tile():
    """MIMO segments that give every SM a program take MIMO_SEGMENT_TILE (in time steps: rows / R rounded up
    to a power of two); SISO, fewer sequence-heads than SMs, or the tile switched off: the default tile."""
    assert segmented.segment_tile(4, 256, 132) == {"chunk_size": 8, "num_warps": 4}
    assert segmented.segment_tile(3, 132, 132) == {"chunk_size": 8, "num_warps": 4}
    assert segmented.segment_tile(2, 192, 132) == {"chunk_size": 16, "num_warps": 4}
    assert segmented.segment_tile(8, 192, 132) == {"chunk_size": 4, "num_warps": 4}
    assert segmented.segment_tile(4, 128, 132) == {}
    assert segmented.segment_tile(1, 256, 132) == {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(segmented, "MIMO_SEGMENT_TILE", None)
        assert segmented.segment_tile(4, 256, 132) == {}


@gpu
def test_mimo_segments_on_their_tile_match_the_plain_scan_at_a_real_shape(monkeypatch):
    """1 × 2051 MIMO R=4 at the 1.5B head shapes, 4 segments: every scan of the segmented path (the first pass
    of 3 pieces, the second of 4, the 3-token remainder) takes the tile `segment_tile` gives the segments'
    256 sequence-heads, and the result is the plain scan's within the spec's tf32 tolerance."""
    from kernels.mamba3.tl_utils import sm_count

    sms = sm_count(DEV)
    if not segmented.segment_tile(4, 256, sms):
        pytest.skip(f"{sms} SMs: 256 sequence-heads do not fill them, no scan takes the MIMO segment tile")
    kw, state = random_scan_case(1, 2051, 64, 64, 128, 32, 4, with_state=True, pairing="half", seed=3,
                                 device=DEV, dtype=torch.bfloat16, gate=True, mamba2=False)
    seen = []

    def spy(*args, **kwargs):
        seen.append((args[0].shape[0], {k: kwargs[k] for k in ("chunk_size", "num_warps") if k in kwargs}))
        return scan_chunked(*args, **kwargs)

    monkeypatch.setattr(segmented, "scan_chunked", spy)
    o, st = scan_segmented(**kw, state=state, segments=4)
    monkeypatch.undo()
    assert [b for b, _ in seen] == [3, 4, 1]
    assert all(tile == segmented.segment_tile(4, 256, sms) for _, tile in seen)
    o_ref, st_ref = scan_chunked(**kw, state=state)
    assert torch.isfinite(o).all()
    assert rel_p95(o, o_ref) < 2e-2
    assert rel_p95(st.ssm, st_ref.ssm) < 2e-2
    assert angle_err(st.angle, st_ref.angle) < 1e-3


@pytest.mark.parametrize("case", ["siso-state-b2-tail", "mamba2", "mimo-r4-state", "mimo-r3-half-p24"])
def test_prefill_takes_bf16_dots_at_32_row_chunks_unless_told(case):
    """The model's prefill: every scan (SISO, Mamba-2, MIMO) with bf16 operands at 32-row chunks; inside
    `model_dots("tf32")` with tf32 at the scan's own tiles; a dot_precision or input_dots the caller names always
    wins, a chunk it names is kept (bf16 up to 32 rows, tf32 beyond)."""
    kw, state, nseg = _inputs(CASES[case], torch.bfloat16)
    r = 1 << (CASES[case][6] - 1).bit_length()  # R rounded up to a power of two

    def same(a, b):
        return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))

    tf32 = scan_chunked(**kw, state=state)
    low = scan_chunked(**kw, state=state, dot_precision="input", chunk_size=32 // r)
    assert not same(tf32, low)  # the case tells the two apart
    assert same(prefill(**kw, state=state), low)
    assert same(prefill(**kw, state=state, chunk_size=None), low)
    with segmented.model_dots("tf32"):
        assert same(prefill(**kw, state=state), tf32)
        assert same(prefill(**kw, state=state, dot_precision="input"),
                    scan_chunked(**kw, state=state, dot_precision="input"))
    assert segmented._MODEL_DOTS == "input"
    assert same(prefill(**kw, state=state, dot_precision="tf32"), tf32)
    assert same(prefill(**kw, state=state, chunk_size=16 // r),
                scan_chunked(**kw, state=state, chunk_size=16 // r, dot_precision="input"))
    assert same(prefill(**kw, state=state, chunk_size=64 // r), scan_chunked(**kw, state=state, chunk_size=64 // r))
    if r == 1:
        assert same(prefill(**kw, state=state, input_dots=("update",)),
                    scan_chunked(**kw, state=state, input_dots=("update",)))
    # the segmented path (a long prompt's) takes the same default in all three of its passes
    assert same(prefill(**kw, state=state, segments=nseg),
                scan_segmented(**kw, state=state, segments=nseg, dot_precision="input", chunk_size=32 // r))
    with pytest.raises(ValueError, match="'tf32' or 'input'"):
        with segmented.model_dots("bf16"):
            pass


def test_pair_split_rule():
    """`with_pair_split`: a Mamba-3 SISO scan of 16-bit inputs on bf16 dots from PAIR_SPLIT_MIN_TOKENS takes the
    pair-split kernel (interleaved pairs, named or not); MIMO (its own kernel already), Mamba-2 (S = 0, not timed
    there), shorter prompts, fp32 inputs, tf32 dots, half-split pairs, and a caller's pair_split, p_major or
    input_dots keep the keywords as they are."""
    from kernels.mamba3.segmented import PAIR_SPLIT_MIN_TOKENS as T, with_pair_split

    bf16, b16 = {"dot_precision": "input", "chunk_size": 32}, torch.bfloat16
    assert with_pair_split(1, 32, T, b16, bf16) == {**bf16, "pair_split": True}
    named = {**bf16, "pairing": "interleaved"}
    assert with_pair_split(1, 32, T, torch.float16, named) == {**named, "pair_split": True}
    for R, S, t, dtype, kw in [(4, 32, T, b16, bf16), (1, 0, T, b16, bf16), (1, 32, T - 1, b16, bf16),
                               (1, 32, T, torch.float32, bf16), (1, 32, T, b16, {}),
                               (1, 32, T, b16, {"dot_precision": "tf32"}), (1, 32, T, b16, {**bf16, "pairing": "half"}),
                               (1, 32, T, b16, {**bf16, "pair_split": False}),
                               (1, 32, T, b16, {**bf16, "p_major": False}),
                               (1, 32, T, b16, {**bf16, "input_dots": ("update",)})]:
        assert with_pair_split(R, S, t, dtype, kw) is kw, (R, S, t, dtype, kw)


@pytest.mark.parametrize("T", [21, 20])
def test_prefill_takes_the_pair_split_kernel_for_long_siso_prompts(monkeypatch, T):
    """The model's prefill runs a plain SISO scan of PAIR_SPLIT_MIN_TOKENS or more (here 21) on the pair-split
    kernel, P-major, and a shorter one (20) on the whole-N kernel: the kernel launched says which, and the outputs
    and states are `scan_chunked`'s told so. (The two kernels' bits differ on some CPUs' interpreter runs and not
    on others', so the launches, not the bits, tell them apart.)"""
    from kernels.mamba3 import chunk

    monkeypatch.setattr(segmented, "PAIR_SPLIT_MIN_TOKENS", 21)
    b, _, H, P, N, S, R, *_ = CASES["siso-state-b2-tail"]
    kw, state = random_scan_case(b, T, H, P, N, S, R, with_state=True, seed=3, device=DEV, dtype=torch.bfloat16)
    launched, launch = [], chunk.launch
    monkeypatch.setattr(chunk, "launch", lambda kernel, grid, *a, **meta: launched.append(kernel) or launch(
        kernel, grid, *a, **meta))

    def same(a, b):
        return torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))

    def kernels_of(call):
        launched.clear()
        out = call()
        return out, [k for k in launched if k in (chunk._chunk_scan_kernel, chunk._chunk_scan_pairs_kernel)]

    low = {"dot_precision": "input", "chunk_size": 32, "state": state}
    split, on_split = kernels_of(lambda: scan_chunked(**kw, **low, pair_split=True))
    whole, on_whole = kernels_of(lambda: scan_chunked(**kw, **low))
    assert on_split == [chunk._chunk_scan_pairs_kernel] and on_whole == [chunk._chunk_scan_kernel]
    got, used = kernels_of(lambda: prefill(**kw, state=state))
    assert used == (on_split if T >= 21 else on_whole) and same(got, split if T >= 21 else whole)
    got, used = kernels_of(lambda: prefill(**kw, state=state, pair_split=False))
    assert used == on_whole and same(got, whole)
    with pytest.raises(ValueError, match="p_major"):  # refused at every length, as on the whole-N kernel
        prefill(**kw, state=state, p_major=True)
