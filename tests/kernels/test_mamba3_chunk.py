"""Triton chunked prefill vs the float64 sequential reference (interpreter on CPU, real shapes on GPU)."""

import pytest
import torch
import triton

from kernels.mamba3 import reference as ref
from kernels.mamba3.chunk import INPUT_DOTS, scan_chunked
from kernels.mamba3.testing import (TIME_AXIS, angle_err, assert_same_build, check_scan, nan_state_like,
                                    random_inputs, random_scan_case, rel_max, run_poisoned, time_slice, upcast,
                                    upcast_state)
from kernels.mamba3.reference import ScanState

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")

# id: (batch, T, H, P, N, S, R, chunk, initial state, gate, mamba2)
CPU_CASES = {
    "siso-odd-T": (1, 37, 2, 16, 16, 4, 1, 16, False, True, False),
    "siso-state-b2": (2, 21, 1, 16, 16, 4, 1, 16, True, True, False),
    "siso-p-split": (1, 19, 1, 32, 32, 8, 1, 16, True, False, False),
    "mimo-r4-state": (1, 29, 2, 16, 32, 4, 4, 4, True, True, False),
    "mimo-r3-padded": (1, 21, 1, 16, 16, 3, 3, 8, True, True, False),
    "mimo-r2-full-rope": (1, 19, 1, 16, 16, 8, 2, 8, True, False, False),
    "mamba2": (1, 19, 2, 16, 16, 0, 1, 16, True, True, True),
}
GPU_CASES = {
    "siso-1.5b-heads": (2, 1000, 8, 64, 128, 32, 1, 64, True, True, False),
    "mimo-r4-1.5b-heads": (2, 999, 8, 64, 128, 32, 4, 16, True, True, False),
    "mamba2-1.5b-heads": (2, 777, 8, 64, 128, 0, 1, 64, True, True, True),
}


def _inputs(case, dtype, seed=0):
    b, T, H, P, N, S, R, chunk, with_state, gate, mamba2 = case
    kw, state = random_scan_case(b, T, H, P, N, S, R, with_state=with_state, seed=seed, device=DEV, dtype=dtype,
                                 gate=gate, mamba2=mamba2)
    return kw, state, chunk


def _run_poisoned(kw, state, chunk, **extra):
    return run_poisoned(scan_chunked, kw, state, chunk_size=chunk, **extra)


def _check(kw, state, chunk, tol, p95, **extra):
    check_scan(scan_chunked, kw, state, tol, p95, chunk_size=chunk, **extra)


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_chunk_fp32_matches_reference(case):
    kw, state, chunk = _inputs(CPU_CASES[case], torch.float32)
    _check(kw, state, chunk, 1e-4, p95=False)


@pytest.mark.parametrize("p_major", [True, False])
def test_chunk_mimo_gate_without_mimo_z_gates_by_z_itself(p_major):
    """A MIMO scan given z but no mimo_z gates every rank by SiLU(z), as the reference does (the kernel read its
    per-rank gate weights from an unrelated buffer before)."""
    kw, state, chunk = _inputs(CPU_CASES["mimo-r4-state"], torch.float32)
    kw["mimo_z"] = None
    _check(kw, state, chunk, 1e-4, p95=False, p_major=p_major)


# tf32 operands: the spec's 2e-2 at p95; bf16 operands: the 5e-2 the public step-kernel test asserts
@pytest.mark.parametrize("precision,tol", [("tf32", 2e-2), ("input", 5e-2)])
@pytest.mark.parametrize("case", ["siso-state-b2", "mimo-r4-state"])
def test_chunk_bf16_io_within_spec_tolerance(case, precision, tol):
    kw, state, chunk = _inputs(CPU_CASES[case], torch.bfloat16)
    _check(kw, state, chunk, tol, p95=True, dot_precision=precision)


@pytest.mark.parametrize("pairing, N, S, groups", [("half", 16, 4, 1), ("interleaved", 24, 5, 1),
                                                   ("half", 24, 12, 1), ("interleaved", 16, 4, 2)],
                         ids=["half-pairs", "n-not-pow2", "half-n-not-pow2-all-rotated", "two-groups"])
def test_chunk_siso_kernel_on_other_layouts(pairing, N, S, groups):
    """The SISO (whole-N) kernel with half-split pairs, an N that is not a power of two (masked columns and
    partners) and more than one B/C group, against the token loop."""
    b, T, H, P = 2, 23, 4, 16
    kw, state = random_scan_case(b, T, H, P, N, S, 1, groups, with_state=True, pairing=pairing, seed=3, device=DEV)
    _check(kw, state, 16, 1e-4, p95=False)


def test_chunk_block_p_split_equals_whole():
    kw, state, chunk = _inputs(CPU_CASES["siso-p-split"], torch.float32)
    o1, st1 = _run_poisoned(kw, state, chunk, block_p=16)
    o2, st2 = _run_poisoned(kw, state, chunk, block_p=32)
    assert rel_max(o1, o2) < 1e-6 and rel_max(st1.ssm, st2.ssm) < 1e-6
    assert torch.equal(st1.k, st2.k) and torch.equal(st1.angle, st2.angle)


@pytest.mark.parametrize("case,extra", [("siso-state-b2", {}), ("mimo-r4-state", {}), ("mamba2", {}),
                                        ("mimo-r4-state", {"p_major": False})])
def test_chunk_state_only_pass_matches_the_full_scan(case, extra):
    """outputs=False (the segmented prefill's first pass) skips the output products only: no output
    tensor, and the final state and caches the full scan writes (both written over NaN); MIMO in either layout."""
    kw, state, chunk = _inputs(CPU_CASES[case], torch.float32)
    kw = dict(kw, **extra)
    _, want = _run_poisoned(kw, state, chunk)
    b, _, H, P = kw["x"].shape
    R, _, N = kw["B"].shape[-3:]
    fin = nan_state_like(ScanState.zeros(b, H, P, N, kw["theta"].shape[-1], R, device=DEV, dtype=kw["x"].dtype))
    x_before = kw["x"].clone()
    o, got = scan_chunked(**kw, state=state, chunk_size=chunk, final_state=fin, outputs=False)
    assert o is None and got is fin
    assert torch.equal(kw["x"], x_before)  # no caller tensor stands in for the output
    with pytest.raises(ValueError, match="outputs=False"):
        scan_chunked(**kw, state=state, chunk_size=chunk, out=torch.empty_like(kw["x"]), outputs=False)
    with pytest.raises(ValueError, match="out"):
        scan_chunked(**kw, state=state, chunk_size=chunk, out=kw["x"][:, 1:].clone())
    assert rel_max(got.ssm, want.ssm) < 1e-6
    assert torch.equal(got.k, want.k) and torch.equal(got.x, want.x) and torch.equal(got.angle, want.angle)


def test_chunk_continues_in_place_from_its_own_state():
    kw, state, chunk = _inputs(CPU_CASES["mimo-r4-state"], torch.float32, seed=4)
    T = kw["x"].shape[1]
    cache = ScanState(*(t.clone() for t in state))
    o1, _ = scan_chunked(**time_slice(kw, slice(0, 13)), state=cache, final_state=cache, chunk_size=chunk)
    o2, _ = scan_chunked(**time_slice(kw, slice(13, T)), state=cache, final_state=cache, chunk_size=chunk)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=upcast_state(state))
    assert rel_max(torch.cat([o1, o2], 1), o_ref) < 1e-4
    assert rel_max(cache.ssm, st_ref.ssm) < 1e-4
    assert angle_err(cache.angle, st_ref.angle) < 1e-4


def test_chunk_refuses_64_row_chunks_with_bf16_dots():
    kw, _, _ = _inputs(CPU_CASES["siso-odd-T"], torch.bfloat16)
    with pytest.raises(ValueError, match="32 rows"):
        scan_chunked(**kw, chunk_size=64, dot_precision="input")
    scan_chunked(**kw, chunk_size=64, dot_precision="tf32")  # tf32 dots keep 64-row chunks


def test_input_dots_pick_each_products_precision():
    """No product named: the tf32 scan, bit for bit; all four: the input-precision scan; each one alone within
    the bf16-dot tolerance and different from both ends (the flag reaches its product)."""
    kw, state, chunk = _inputs(CPU_CASES["siso-state-b2"], torch.bfloat16)

    def run(**extra):
        o, st = scan_chunked(**kw, state=state, chunk_size=chunk, **extra)
        return torch.cat([o.flatten().float(), st.ssm.flatten().float()])

    tf32, low = run(), run(dot_precision="input")
    assert torch.equal(run(input_dots=()), tf32)
    assert torch.equal(run(input_dots=INPUT_DOTS), low)
    for dot in INPUT_DOTS:
        got = run(input_dots=(dot,))
        assert not torch.equal(got, tf32) and not torch.equal(got, low), dot
        _check(kw, state, chunk, 5e-2, p95=True, input_dots=(dot,))


@pytest.mark.parametrize("extra, match", [
    (dict(input_dots=("qk", "scores")), "unknown 'scores'"),
    (dict(input_dots="update"), "tuple of names"),
    (dict(input_dots=("update",), dot_precision="input"), "dot_precision='tf32'"),
    (dict(input_dots=("update",), chunk_size=64), "32 rows"),
])
def test_input_dots_refused_where_they_cannot_apply(extra, match):
    kw, _, _ = _inputs(CPU_CASES["siso-odd-T"], torch.bfloat16)
    with pytest.raises(ValueError, match=match):
        scan_chunked(**kw, **extra)


def test_input_dots_refused_for_mimo():
    kw, _, chunk = _inputs(CPU_CASES["mimo-r4-state"], torch.bfloat16)
    with pytest.raises(ValueError, match="MIMO"):
        scan_chunked(**kw, chunk_size=chunk, input_dots=("update",))


def test_chunk_rejects_chunk_too_small_for_tensor_cores():
    kw, state, _ = _inputs(CPU_CASES["siso-odd-T"], torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        scan_chunked(**kw, chunk_size=8)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GPU_CASES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_chunk_real_shapes_gpu(case, dtype):
    kw, state, chunk = _inputs(GPU_CASES[case], dtype)
    if dtype == torch.bfloat16:  # bf16 dots take at most 32 rows a chunk
        _check(kw, state, min(chunk, 32 // triton.next_power_of_2(kw["B"].shape[-3])), 5e-2, p95=True,
               dot_precision="input")
    if dtype == torch.float32:
        _check(kw, state, chunk, 1e-4, p95=False)
    else:
        _check(kw, state, chunk, 2e-2, p95=True)


@gpu
@pytest.mark.gpu
def test_chunk_batch_offsets_past_int32_gpu():
    """128 × 2048 tokens with x and z read as views of one in_proj output (2.3e9 elements, the model's
    layout): the last sequences start past 2**31 elements, which 32-bit batch offsets turned into an
    illegal memory access. The last sequence must come out as it does when run alone."""
    b, T, H, P, N, S = 128, 2048, 64, 64, 128, 32
    g = torch.Generator(device=DEV).manual_seed(0)
    proj = torch.randn(b, T, 2 * H * P + 2 * N + 3 * H + S, device=DEV, dtype=torch.bfloat16, generator=g)
    assert proj.numel() > 2**31
    kw = ref.preprocess(proj, dt_bias=torch.rand(H, device=DEV, generator=g) * 4 - 5,
                        B_norm_weight=torch.ones(N, device=DEV, dtype=torch.bfloat16),
                        C_norm_weight=torch.ones(N, device=DEV, dtype=torch.bfloat16),
                        heads=H, headdim=P, d_state=N, rank=1, n_angles=S)
    assert kw["x"].stride(0) * (b - 1) > 2**31
    params = random_inputs(1, 1, H, P, N, S, seed=1, device=DEV, dtype=torch.bfloat16)
    kw.update(B_bias=params["B_bias"], C_bias=params["C_bias"], D=params["D"], pairing="interleaved")
    o_all, st_all = scan_chunked(**kw, block_p=P)
    alone = {k: (v[-1:].contiguous() if k in TIME_AXIS else v) for k, v in kw.items()}
    o_one, st_one = scan_chunked(**alone, block_p=P)
    assert torch.isfinite(o_all[-1]).all()
    assert rel_max(o_all[-1:], o_one) < 1e-6
    assert rel_max(st_all.ssm[-1:], st_one.ssm) < 1e-6


def test_default_tile_rule(monkeypatch):
    """16 rows at 4 warps, 32 rows for rank 1 with angles (SISO); all of P (up to 64), or half of it for MIMO with
    fewer sequence-heads than SMs (a GPU of 132 SMs here; the CPU has none to fill)."""
    from kernels.mamba3 import chunk

    monkeypatch.setattr(chunk, "sm_count", lambda device: 132)
    assert chunk.default_tile(1, 64, 64, 4, "cuda") == (16, 32, 4)
    assert chunk.default_tile(2, 64, 64, 4, "cuda") == (16, 32, 4)
    assert chunk.default_tile(3, 64, 64, 4, "cuda") == (16, 64, 4)
    assert chunk.default_tile(1, 64, 64, 1, "cuda") == (16, 64, 4)
    assert chunk.default_tile(1, 64, 24, 4, "cuda") == (16, 32, 4)
    assert chunk.default_tile(1, 64, 64, 4, "cpu") == (16, 64, 4)
    assert chunk.default_tile(128, 64, 64, 1, "cuda", 32) == (32, 64, 4)
    assert chunk.default_tile(1, 64, 64, 1, "cpu", 32) == (32, 64, 4)
    assert chunk.default_tile(1, 64, 64, 4, "cuda", 32) == (16, 32, 4)


def _same(got, want):
    (o1, s1), (o2, s2) = got, want
    assert_same_build(o1, o2)
    for name in ScanState._fields:
        assert_same_build(getattr(s1, name), getattr(s2, name))


@pytest.mark.parametrize("groups,chunk_size", [(1, 16), (2, None)], ids=["one-group", "two-groups-default-tile"])
def test_paired_word_loads_match_the_generic_path(monkeypatch, groups, chunk_size):
    """bf16 B/C with rotating interleaved pairs are read as 32-bit words (`chunk.pair_words`); the scan's outputs and
    caches are those of the generic 16-bit reads (bit for bit under the interpreter; `assert_same_build`), which a
    view at an odd offset still takes. Two groups of B/C (heads 0–1 and 2–3 read different rows) on the default
    tile, with T not a multiple of its chunk."""
    from kernels.mamba3 import chunk

    kw, state = random_scan_case(2, 37, 4, 16, 16, 4, 1, groups, with_state=True, seed=5, device=DEV,
                                 dtype=torch.bfloat16)
    assert chunk.pair_words(kw["B"], kw["C"], "interleaved", kw["theta"].shape[-1])
    words = scan_chunked(**kw, state=state, chunk_size=chunk_size)
    monkeypatch.setattr(chunk, "pair_words", lambda *a: False)
    _same(words, scan_chunked(**kw, state=state, chunk_size=chunk_size))
    monkeypatch.undo()
    # B and C as views one element into a wider buffer: misaligned words, so the generic reads, same result
    wide = [torch.cat([t.new_zeros(*t.shape[:-1], 1), t], -1)[..., 1:] for t in (kw["B"], kw["C"])]
    assert not chunk.pair_words(*wide, "interleaved", kw["theta"].shape[-1])
    _same(scan_chunked(**dict(kw, B=wide[0], C=wide[1]), state=state, chunk_size=chunk_size), words)
    assert not chunk.pair_words(kw["B"], kw["C"], "half", kw["theta"].shape[-1])
    assert not chunk.pair_words(kw["B"].float(), kw["C"].float(), "interleaved", kw["theta"].shape[-1])


def test_the_caches_after_a_bf16_scan_are_the_last_token_rounded():
    """The x cache is the last token's x as stored (bf16 stays bf16 bit for bit), read after the chunk loop."""
    kw, state, size = _inputs(CPU_CASES["siso-odd-T"], torch.bfloat16)
    _, fin = scan_chunked(**kw, state=state, chunk_size=size)
    assert torch.equal(fin.x, kw["x"][:, -1])
    with pytest.raises(ValueError, match="alias"):
        scan_chunked(**kw, state=state, chunk_size=size, out=kw["x"])


@pytest.mark.parametrize("case,pairing,extra", [
    ("siso-state-b2", None, {}), ("mamba2", None, {}), ("siso-state-b2", "half", {}), ("mimo-r2-full-rope", None, {}),
    ("mamba2", None, {"pair_split": True}), ("siso-state-b2", None, {"pair_split": True}),
    ("mimo-r4-state", None, {"p_major": False})])
def test_absent_biases_are_zero_biases(case, pairing, extra):
    """B_bias = C_bias = None (Mamba-2's: the kernel neither reads nor adds them; zeros where it cannot skip them)
    gives exactly what zero biases give, on either kernel and layout; one of the two alone is refused."""
    kw, state, size = _inputs(CPU_CASES[case], torch.bfloat16)
    if pairing:
        kw["pairing"] = pairing
    zeros = dict(kw, B_bias=torch.zeros_like(kw["B_bias"]), C_bias=torch.zeros_like(kw["C_bias"]))
    _same(scan_chunked(**dict(kw, B_bias=None, C_bias=None), state=state, chunk_size=size, **extra),
          scan_chunked(**zeros, state=state, chunk_size=size, **extra))
    with pytest.raises(ValueError, match="both B_bias and C_bias"):
        scan_chunked(**dict(kw, B_bias=None), state=state, chunk_size=size)


@pytest.mark.parametrize("case", ["siso-odd-T", "siso-state-b2", "siso-p-split", "mimo-r4-state", "mimo-r3-padded",
                                  "mimo-r2-full-rope", "mamba2"])
@pytest.mark.parametrize("p_major", [True, False], ids=["p-major", "rows-major"])
def test_pair_split_kernel_both_layouts_match_reference(case, p_major):
    """The pair-split kernel (MIMO's; SISO and Mamba-2 with pair_split=True) in both output layouts: fp32 against
    the float64 token loop, with and without an initial state, odd lengths, padded ranks and P split in blocks."""
    kw, state, chunk = _inputs(CPU_CASES[case], torch.float32)
    block_p = 16 if case == "siso-p-split" else None
    _check(kw, state, chunk, 1e-4, p95=False, pair_split=True, p_major=p_major, block_p=block_p)


@pytest.mark.parametrize("case", ["siso-state-b2", "mimo-r4-state"])
def test_pair_split_kernel_bf16_layouts_agree(case):
    """bf16 I/O with bf16 dots (the model's prefill): the P-major outputs are the rows-major ones up to the order of
    the fp32 sums, both within the bf16-dot tolerance of the reference; SISO's interleaved pairs are read as words
    here (`chunk.pair_words`), the state-only pass gives the same state."""
    from kernels.mamba3 import chunk as chunk_mod

    kw, state, size = _inputs(CPU_CASES[case], torch.bfloat16)
    if kw["B"].shape[-3] == 1:
        assert chunk_mod.pair_words(kw["B"], kw["C"], kw["pairing"], kw["theta"].shape[-1])
    runs = {}
    for p_major in (True, False):
        _check(kw, state, size, 5e-2, p95=True, pair_split=True, p_major=p_major, dot_precision="input")
        runs[p_major] = scan_chunked(**kw, state=state, chunk_size=size, pair_split=True, p_major=p_major,
                                     dot_precision="input")
    (o1, s1), (o2, s2) = runs[True], runs[False]
    assert rel_max(o1, o2) < 1e-2 and rel_max(s1.ssm, s2.ssm) < 1e-5
    assert torch.equal(s1.x, s2.x) and rel_max(s1.k, s2.k) < 1e-2 and angle_err(s1.angle, s2.angle) < 1e-5
    none, only = scan_chunked(**kw, state=state, chunk_size=size, pair_split=True, outputs=False,
                              dot_precision="input")
    assert none is None and rel_max(only.ssm, s1.ssm) < 1e-5


@pytest.mark.parametrize("p_major", [True, False], ids=["p-major", "rows-major"])
def test_mimo_on_word_loads_and_p_blocks_matches_reference(p_major):
    """MIMO with interleaved bf16 pairs (word loads with a rank's bias row per chunk row, which the model's
    half-split MIMO never takes) and P split in two blocks, padded ranks too, in both layouts; and without biases,
    where the kernel reads none (D, standing in for them, made large to show any read)."""
    from kernels.mamba3 import chunk as chunk_mod

    for R in (4, 3):
        kw, state = random_scan_case(1, 21, 2, 16, 16, 4, R, with_state=True, seed=3, device=DEV,
                                     dtype=torch.bfloat16, pairing="interleaved")
        assert chunk_mod.pair_words(kw["B"], kw["C"], "interleaved", kw["theta"].shape[-1])
        _check(kw, state, 4, 5e-2, p95=True, p_major=p_major, block_p=8, dot_precision="input")
    zeros = dict(kw, B_bias=torch.zeros_like(kw["B_bias"]), C_bias=torch.zeros_like(kw["C_bias"]))
    none = dict(kw, B_bias=None, C_bias=None, D=kw["D"] + 1000.0)
    _same(scan_chunked(**none, state=state, chunk_size=4, p_major=p_major, block_p=8),
          scan_chunked(**dict(zeros, D=none["D"]), state=state, chunk_size=4, p_major=p_major, block_p=8))


def test_pair_split_and_p_major_refused_where_they_cannot_apply():
    kw, state, size = _inputs(CPU_CASES["mimo-r4-state"], torch.float32)
    with pytest.raises(ValueError, match="pair-split kernel only"):
        scan_chunked(**kw, state=state, chunk_size=size, pair_split=False)
    kw, state, size = _inputs(CPU_CASES["siso-state-b2"], torch.bfloat16)
    with pytest.raises(ValueError, match="p_major is a pair-split"):
        scan_chunked(**kw, state=state, chunk_size=size, p_major=True)
    with pytest.raises(ValueError, match="one precision for every product"):
        scan_chunked(**kw, state=state, chunk_size=size, pair_split=True, input_dots=("qk",))
