"""Triton decode step (plain and fused) vs the reference step (interpreter on CPU, real shapes on GPU)."""

import numpy as np
import pytest
import torch

from kernels.mamba3 import reference as ref
from kernels.mamba3.chunk import scan_chunked
from kernels.mamba3.reference import ScanState
from kernels.mamba3.step import (MANY_PROGRAMS_PER_SM, MIMO_TMA_MANY_PROGRAMS_PER_SM, REGIMES, _state_descriptor,
                                 _tma_can_take, launch_regime, step, step_fused)
from kernels.mamba3.testing import (angle_err, assert_same_build, at_time, random_inputs, random_state, rel_max,
                                    rel_p95, time_slice, upcast, upcast_state)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")

# id: (batch, H, P, N, S, R, G, gate, mamba2)
CPU_CASES = {
    "siso": (2, 2, 16, 16, 4, 1, 1, True, False),
    "siso-odd-sizes-groups": (1, 4, 12, 24, 5, 1, 2, True, False),
    "mimo-r4": (1, 2, 16, 32, 4, 4, 1, True, False),
    "mimo-r3-nogate": (2, 1, 16, 16, 8, 3, 1, False, False),
    "mimo-r8": (1, 2, 16, 16, 4, 8, 1, True, False),  # the most ranks the kernel takes
    "mamba2": (2, 2, 16, 16, 0, 1, 1, True, True),
}
GPU_CASES = {
    "siso-1.5b": (128, 64, 64, 128, 32, 1, 1, True, False),
    "mimo-r4-1.5b": (128, 64, 64, 128, 32, 4, 1, True, False),
    "mamba2-1.5b": (64, 64, 64, 128, 0, 1, 1, True, True),
}
STEPS = 6


def _seq(case, T, dtype, seed=0, ssm_dtype=torch.float32):
    b, H, P, N, S, R, G, gate, mamba2 = case
    kw = random_inputs(b, T, H, P, N, S, R, G, seed=seed, device=DEV, dtype=dtype, gate=gate, mamba2=mamba2)
    state = random_state(b, H, P, N, kw["theta"].shape[-1], R, seed=seed + 1, device=DEV, dtype=dtype,
                         ssm_dtype=ssm_dtype)
    return kw, state


def _misaligned(t):
    """A copy of `t` one element past a 16-byte boundary, where TMA cannot take it."""
    return torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:].view(t.shape).copy_(t)


def _decode(kw, state, n_steps, **cfg):
    outs = []
    for t in range(n_steps):
        out = torch.full_like(kw["x"][:, 0], float("nan"))
        assert step(**at_time(kw, t), state=state, out=out, **cfg) is out
        outs.append(out)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_step_fp32_matches_reference(case):
    kw, state = _seq(CPU_CASES[case], STEPS, torch.float32)
    cache = ScanState(*(t.clone() for t in state))
    ptrs = [t.data_ptr() for t in cache]
    o = _decode(kw, cache, STEPS)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=upcast_state(state))
    assert [t.data_ptr() for t in cache] == ptrs
    assert rel_max(o, o_ref) < 1e-5
    assert rel_max(cache.ssm, st_ref.ssm) < 1e-5
    assert rel_max(cache.k, st_ref.k) < 1e-5
    assert torch.equal(cache.x, kw["x"][:, -1])
    assert angle_err(cache.angle, st_ref.angle) < 1e-5


# P = 20 in blocks of 8: three blocks, the last one partial (SISO and Mamba-2 load each block's state one
# block ahead; MIMO does not)
BLOCKED = {"siso-p20": (2, 2, 20, 16, 4, 1, 1, True, False), "mamba2-p20": (1, 2, 20, 16, 0, 1, 1, True, True),
           "mimo-r4-p20": (1, 2, 20, 16, 4, 4, 1, True, False)}


@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", list(BLOCKED))
def test_step_in_several_p_blocks_matches_reference(case, ssm_dtype):
    kw, state = _seq(BLOCKED[case], 4, torch.float32, ssm_dtype=ssm_dtype)
    state_ref = ScanState(*(t.clone() for t in state))
    o = _decode(kw, state, 4, block_p=8)
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(4)], 1)
    tol = 1e-5 if ssm_dtype == torch.float32 else 2e-3
    assert not o.isnan().any()
    assert rel_max(o, o_ref) < tol
    assert rel_max(state.ssm, state_ref.ssm) < tol


@pytest.mark.parametrize("case", ["siso", "mimo-r4"])
def test_step_bf16_io_within_spec_tolerance(case):
    kw, state = _seq(CPU_CASES[case], STEPS, torch.bfloat16)
    o = _decode(kw, state, STEPS)
    o_ref, _ = ref.scan_sequential(**upcast(kw), state=upcast_state(random_state(
        *_dims(CPU_CASES[case]), seed=1, device=DEV, dtype=torch.bfloat16)))
    assert rel_p95(o, o_ref) < 2e-2


def _dims(case):
    b, H, P, N, S, R, *_ = case
    return b, H, P, N, S, R


@pytest.mark.parametrize("case", ["siso", "mimo-r4"])
def test_step_bf16_state_option(case):
    """A bf16 state stays bf16, rounds once per step like the reference step does, and so differs
    from the fp32-state decode (the size of that drift is the benchmark's business)."""
    kw, st32 = _seq(CPU_CASES[case], 12, torch.float32)
    st16 = ScanState(st32.angle.clone(), st32.ssm.to(torch.bfloat16), st32.k.clone(), st32.x.clone())
    st16_ref = ScanState(*(t.clone() for t in st16))
    o16 = _decode(kw, st16, 12)
    o16_ref = torch.stack([ref.step(**at_time(kw, t), state=st16_ref) for t in range(12)], 1)
    o32 = _decode(kw, st32, 12)
    assert st16.ssm.dtype == torch.bfloat16
    assert rel_max(o16, o16_ref) < 2e-3
    assert rel_max(st16.ssm, st16_ref.ssm) < 2e-3
    assert rel_max(o16, o32) > 1e-4


@pytest.mark.parametrize("case", ["siso", "mimo-r3-nogate"])
def test_chunk_prefill_then_step_decode_equals_full_sequence(case):
    kw, state = _seq(CPU_CASES[case], 23, torch.float32, seed=5)
    _, cache = scan_chunked(**time_slice(kw, slice(0, 17)), state=state, chunk_size=16)
    o_dec = _decode(time_slice(kw, slice(17, 23)), cache, 6)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=upcast_state(state))
    assert rel_max(o_dec, o_ref[:, 17:]) < 1e-4
    assert rel_max(cache.ssm, st_ref.ssm) < 1e-4


def _fused_inputs(case, dtype, seed=0):
    b, H, P, N, S, R, G, gate, _ = case
    g = torch.Generator().manual_seed(seed)
    d_proj = 2 * H * P + 2 * R * G * N + 3 * H + S
    proj = torch.randn(b, d_proj, generator=g).to(DEV, dtype)
    params = dict(dt_bias=(torch.rand(H, generator=g) * 4 - 5).to(DEV),
                  B_norm_weight=(1 + 0.2 * torch.randn(N, generator=g)).to(DEV, dtype),
                  C_norm_weight=(1 + 0.2 * torch.randn(N, generator=g)).to(DEV, dtype))
    kw = random_inputs(b, None, H, P, N, S, R, G, seed=seed, device=DEV, dtype=dtype)
    for name in ("x", "z", "B", "C", "dt", "adt", "lam", "theta"):
        kw.pop(name)
    state = random_state(b, H, P, N, S, R, seed=seed + 1, device=DEV, dtype=dtype)
    return proj, params, kw, state


@pytest.mark.parametrize("case", ["siso", "siso-odd-sizes-groups", "mimo-r4"])
def test_step_fused_matches_preprocess_then_reference_step(case):
    proj, params, kw, state = _fused_inputs(CPU_CASES[case], torch.float32)
    b, H, P, N, S, R, *_ = CPU_CASES[case]
    want_state = upcast_state(state)
    pre = ref.preprocess(proj.double(), **{k: v.double() for k, v in params.items()}, heads=H, headdim=P,
                         d_state=N, rank=R, n_angles=S)
    want = ref.step(**pre, **upcast(kw), state=want_state)
    out = torch.full((b, H, P), float("nan"), device=DEV)
    got = step_fused(proj, **params, **kw, state=state, out=out)
    assert rel_max(got, want) < 1e-5
    assert rel_max(state.ssm, want_state.ssm) < 1e-5
    assert rel_max(state.k, want_state.k) < 1e-5
    assert angle_err(state.angle, want_state.angle) < 1e-5


# (case, regime, PAIRS): pairs swapped in registers where they lie within a warp; N = 24 in a 32-wide tile; N = 7
# odd (its last coordinate unpaired); the most ranks; MIMO's 8-warp key tile (`kq_tile`) with interleaved pairs
PAIRS_CASES = [("siso", "many", "interleaved"), ("siso-odd-sizes-groups", "mid", "interleaved"),
               ("siso-n7", "few", "interleaved"), ("mimo-r4", "many", "half"), ("mimo-r4", "mid", "load"),
               ("mimo-r4", "few", "load"), ("mimo-r4-interleaved", "few", "interleaved"), ("mimo-r8", "many", "half"),
               ("mimo-r3-p20-n24-groups", "many", "load"), ("mamba2", "many", "none")]
PAIRS_SHAPES = {"siso-n7": (1, 2, 8, 7, 3, 1, 1, True, False), "mimo-r4-interleaved": CPU_CASES["mimo-r4"]}


@pytest.mark.parametrize("case, regime, want", PAIRS_CASES)
def test_key_pairs_swapped_in_registers_match_their_loads(monkeypatch, case, regime, want):
    """`StepLaunch.pairs_in_registers`: each key and query coordinate's rotation partner comes from its finished
    row in registers where a pair lies within a warp (interleaved pairs always; half-split pairs with one warp a
    program and N its own block), else from its own loads. Either way the fused step gives the same numbers, and
    the reference's; off, every launch loads."""
    from kernels.mamba3 import step as stepmod

    shape = {**CPU_CASES, **REGIME_CASES, **PAIRS_SHAPES}[case]
    seen = _spy_tiles(monkeypatch, ("PAIRS",))
    runs = []
    for on in (True, False):
        for key, cfg in list(stepmod.DEFAULT_CONFIG.items()):
            monkeypatch.setitem(stepmod.DEFAULT_CONFIG, key, cfg._replace(pairs_in_registers=on))
        proj, params, kw, state = _fused_inputs(shape, torch.float32)
        if case.endswith("-interleaved"):
            kw["pairing"] = "interleaved"
        want_state = upcast_state(state)
        b, H, P, N, S, R, *_ = shape
        pre = ref.preprocess(proj.double(), **{k: v.double() for k, v in params.items()}, heads=H, headdim=P,
                             d_state=N, rank=R, n_angles=S)
        o_ref = ref.step(**pre, **upcast(kw), state=want_state)
        out = torch.full((b, H, P), float("nan"), device=DEV)
        runs.append((step_fused(proj, **params, **kw, state=state, out=out, regime=regime), state))
        assert rel_max(out, o_ref) < 1e-5 and rel_max(state.ssm, want_state.ssm) < 1e-5
        assert rel_max(state.k, want_state.k) < 1e-5
    assert seen == [(want,), ("load",)]
    (o1, s1), (o0, s0) = runs
    for got, other in ((o1, o0), (s1.ssm, s0.ssm), (s1.k, s0.k), (s1.angle, s0.angle)):
        assert_same_build(got, other)


def test_pairs_rule():
    """`_pairs`: no rotated pairs, nothing to swap or load ("none"); interleaved pairs in registers; half-split
    ones only with one warp a program and N a power of two; the knob off loads, as before it."""
    from kernels.mamba3.step import DEFAULT_CONFIG, _pairs

    on = DEFAULT_CONFIG[(True, "many")]
    off = on._replace(pairs_in_registers=False)
    assert on.pairs_in_registers
    assert _pairs(on, 0, "interleaved", True, 4) == _pairs(on, 0, "half", True, 1) == "none"
    assert _pairs(on, 16, "interleaved", False, 8) == "interleaved"
    assert _pairs(on, 16, "half", True, 1) == "half"
    assert _pairs(on, 16, "half", True, 4) == _pairs(on, 16, "half", False, 1) == "load"
    assert _pairs(off, 16, "interleaved", True, 1) == _pairs(off, 0, "half", True, 1) == "load"


def test_step_fused_rejects_mismatched_projection_width():
    proj, params, kw, state = _fused_inputs(CPU_CASES["siso"], torch.float32)
    with pytest.raises(ValueError, match="d_proj"):
        step_fused(proj[:, :-1], **params, **kw, state=state)


# the launch defaults of every regime (the CPU alone would pick "many"), on sizes that mask: P = 20 in
# blocks, N = 24 in a 32-wide tile, with and without the z gate, up to the most ranks
REGIME_CASES = {"siso-p20-n24": (2, 2, 20, 24, 4, 1, 1, True, False),
                "mimo-r3-p20-n24-groups": (1, 4, 20, 24, 4, 3, 2, False, False),
                "mimo-r8": CPU_CASES["mimo-r8"], "mamba2": CPU_CASES["mamba2"]}


def test_launch_regime_by_programs_per_sm():
    assert [launch_regime(p, 132) for p in (1, 131, 132, MANY_PROGRAMS_PER_SM * 132 - 1)] == ["few"] * 2 + ["mid"] * 2
    assert launch_regime(MANY_PROGRAMS_PER_SM * 132, 132) == "many"
    assert launch_regime(1, 0) == "many"  # the CPU
    # MIMO whose state TMA can feed takes the "many" defaults from 5 programs per SM
    assert [launch_regime(p, 132, MIMO_TMA_MANY_PROGRAMS_PER_SM) for p in (5 * 132 - 1, 5 * 132)] == ["mid", "many"]
    assert _tma_can_take(torch.zeros(1, 2, 4, 16))
    assert not _tma_can_take(torch.zeros(1, 2, 4, 24))  # N not a power of two
    assert not _tma_can_take(_misaligned(torch.zeros(1, 2, 4, 16)))


@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("case", list(REGIME_CASES))
def test_step_every_launch_regime_matches_reference(case, regime, ssm_dtype):
    kw, state = _seq(REGIME_CASES[case], 3, torch.float32, ssm_dtype=ssm_dtype)
    state_ref = ScanState(*(t.clone() for t in state))
    o = _decode(kw, state, 3, regime=regime)
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(3)], 1)
    tol = 1e-5 if ssm_dtype == torch.float32 else 2e-3
    assert rel_max(o, o_ref) < tol
    assert rel_max(state.ssm, state_ref.ssm) < tol
    assert rel_max(state.k, state_ref.k) < 1e-5


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("case", ["siso-p20-n24", "mimo-r3-p20-n24-groups", "mimo-r8"])
def test_step_fused_every_launch_regime(case, regime):
    proj, params, kw, state = _fused_inputs(REGIME_CASES[case], torch.float32)
    b, H, P, N, S, R, *_ = REGIME_CASES[case]
    gate = REGIME_CASES[case][7]
    want_state = upcast_state(state)
    pre = ref.preprocess(proj.double(), **{k: v.double() for k, v in params.items()}, heads=H, headdim=P,
                         d_state=N, rank=R, n_angles=S)
    want = ref.step(**(pre if gate else {**pre, "z": None}), **upcast(kw), state=want_state)
    out = torch.full((b, H, P), float("nan"), device=DEV)
    got = step_fused(proj, **params, **kw, state=state, has_z=gate, regime=regime, out=out)
    assert rel_max(got, want) < 1e-5
    assert rel_max(state.ssm, want_state.ssm) < 1e-5
    assert rel_max(state.k, want_state.k) < 1e-5


@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", ["siso", "mimo-r4", "mamba2"])
def test_state_blocks_by_tma_equal_pointer_loads(monkeypatch, case, ssm_dtype):
    """The state's row blocks through a TMA pipeline (1 and 3 stages) give the pointer loads' outputs and
    state (bit for bit under the interpreter; `assert_same_build`), over several blocks and steps; a layout TMA
    cannot take falls back to them. (A bf16 state's pointer loads keep MIMO's per-row readout, which rounds
    differently from the lane readout a TMA-fed block takes: held to the per-row readout for that comparison.)"""
    from kernels.mamba3 import step as stepmod

    b, H, P, N, S, R, G, gate, mamba2 = CPU_CASES[case]
    if ssm_dtype == torch.bfloat16:
        many = stepmod.DEFAULT_CONFIG[(True, "many")]
        monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), many._replace(lane_readout=False))
    kw, state0 = _seq(CPU_CASES[case], 3, torch.float32, ssm_dtype=ssm_dtype)
    runs = {}
    for stages in (0, 1, 3):
        state = ScanState(*(t.clone() for t in state0))
        assert (_state_descriptor(state.ssm, 4, N, stages) is None) == (stages == 0)
        runs[stages] = _decode(kw, state, 3, block_p=4, state_stages=stages, previous_term=not mamba2), state
    for stages in (1, 3):
        assert_same_build(runs[stages][0], runs[0][0])
        for a, c in zip(runs[stages][1], runs[0][1]):
            assert_same_build(a, c)
    assert _state_descriptor(state0.ssm, 3, N, 3) is None  # P = 16 is not a multiple of 3 rows
    assert _state_descriptor(state0.ssm, 4, 2 * N, 3) is None  # N short of its block
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="state_stages"):
            _state_descriptor(state0.ssm, 4, N, bad)
    assert _state_descriptor(state0.ssm, 4, N, np.int64(2)) is not None  # numpy integers count
    assert _state_descriptor(_misaligned(state0.ssm), 4, N, 3) is None


def _spy_tiles(monkeypatch, keys=("BLOCK_P", "TMA")) -> list:
    """A list that each step launch appends its meta values of `keys` to, while the launch goes on as usual."""
    from kernels.mamba3 import step as stepmod

    seen, launch = [], stepmod.launch

    def spy(kernel, grid, *args, **meta):
        seen.append(tuple(meta[k] for k in keys))
        return launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(stepmod, "launch", spy)
    return seen


def test_mimo_many_programs_take_tma_tiles_where_tma_can_feed_the_state(monkeypatch):
    """MIMO's many-programs default takes 4-row blocks by TMA (`StepLaunch.tma_rows`, `stages`) where a
    descriptor can be made, and the pointer loads' tile (2 rows fp32, 4 bf16) where it cannot or when told
    `state_stages=0`; every way gives the reference's numbers."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    assert cfg.stages > 0 and cfg.tma_rows == 4 and cfg.rows == 2 and cfg.bf16_rows == 4
    seen = _spy_tiles(monkeypatch)
    case = (1, 2, 16, 128, 4, 4, 1, True, False)  # N = 128: a row of the tile is a row of the state
    for ssm_dtype, shifted, stages, want in [(torch.float32, False, None, (4, True)),
                                             (torch.float32, True, None, (2, False)),
                                             (torch.float32, False, 0, (2, False)),
                                             (torch.bfloat16, False, 0, (4, False)),
                                             (torch.bfloat16, False, None, (4, True))]:
        kw, state = _seq(case, 1, torch.float32, ssm_dtype=ssm_dtype)
        if shifted:
            state = state._replace(ssm=_misaligned(state.ssm))
        state_ref = upcast_state(state)
        seen.clear()
        o = _decode(kw, state, 1, regime="many", state_stages=stages)
        assert seen == [want], (ssm_dtype, shifted, stages)
        o_ref = ref.step(**upcast(at_time(kw, 0)), state=state_ref)
        tol = 1e-5 if ssm_dtype == torch.float32 else 4e-3  # a bf16 state: one rounding of its own
        assert rel_max(o[:, 0], o_ref) < tol and rel_max(state.ssm, state_ref.ssm) < tol
    # P = 6 is no multiple of the 4-row TMA block: the pointer loads' 2-row tile, not a TMA pipeline on it
    kw, state = _seq((1, 2, 6, 128, 4, 4, 1, True, False), 1, torch.float32)
    seen.clear()
    _decode(kw, state, 1, regime="many")
    assert seen == [(2, False)]


@pytest.mark.parametrize("regime", ["mid", "many"])
def test_siso_rows_follow_the_angles_and_the_state_dtype(monkeypatch, regime):
    """A Mamba-3 SISO step over an fp32 state walks `angle_rows` rows a block from ANGLE_ROWS_PROGRAMS_PER_SM
    programs per SM; Mamba-2 (no angles), a bf16 state and fewer programs keep `rows`. The fp32 16-row tile loads
    the next block's x, cached x and z ahead (`xz_ahead`), the bf16 one stores its outputs from every holder
    (`replicated_o`). Each gives the reference's numbers."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(False, regime)]
    assert cfg.angle_rows == 8 and cfg.rows == 16 and cfg.bf16_rows is None and cfg.prefetch
    assert (cfg.xz_ahead, cfg.replicated_o) == ("fp32", "bf16")
    monkeypatch.setattr(stepmod, "_sms", lambda x: 1)  # b·H = 2 programs on one SM
    seen = _spy_tiles(monkeypatch, ("BLOCK_P", "XZ_AHEAD", "REPLICATED_O"))
    for mamba2, ssm_dtype, per_sm, want in [(False, torch.float32, 2, (8, False, False)),
                                            (False, torch.float32, 3, (16, True, False)),
                                            (True, torch.float32, 2, (16, True, False)),
                                            (False, torch.bfloat16, 2, (16, False, True))]:
        monkeypatch.setattr(stepmod, "ANGLE_ROWS_PROGRAMS_PER_SM", per_sm)
        case = (1, 2, 32, 128, 0 if mamba2 else 16, 1, 1, True, mamba2)  # P = 32: two 16-row blocks, four 8-row
        kw, state = _seq(case, 1, torch.float32, ssm_dtype=ssm_dtype)
        state_ref = upcast_state(state)
        seen.clear()
        o = _decode(kw, state, 1, regime=regime)
        assert seen == [want], (mamba2, ssm_dtype, per_sm)
        o_ref = ref.step(**upcast(at_time(kw, 0)), state=state_ref)
        tol = 1e-5 if ssm_dtype == torch.float32 else 4e-3
        assert rel_max(o[:, 0], o_ref) < tol and rel_max(state.ssm, state_ref.ssm) < tol
    # a caller's rows: the angle tile's (8) count as that tile whatever the programs per SM, others as "fp32"
    monkeypatch.setattr(stepmod, "ANGLE_ROWS_PROGRAMS_PER_SM", 3)
    for block_p, want in [(8, (8, False, False)), (16, (16, True, False)), (4, (4, True, False))]:
        kw, state = _seq((1, 2, 32, 128, 16, 1, 1, True, False), 1, torch.float32)
        seen.clear()
        _decode(kw, state, 1, regime=regime, block_p=block_p)
        assert seen == [want], block_p


def test_mimo_many_programs_pipeline_depth_follows_the_state_dtype(monkeypatch):
    """The TMA pipeline is `StepLaunch.stages` deep over an fp32 state and `bf16_stages` deep over a bf16 one;
    an explicit `state_stages` wins over both."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    assert cfg.bf16_stages is not None and cfg.bf16_stages != cfg.stages  # else this test checks nothing
    seen = _spy_tiles(monkeypatch, ("TMA", "STAGES"))
    case = (1, 2, 16, 128, 4, 4, 1, True, False)
    for ssm_dtype, asked, want in [(torch.float32, None, cfg.stages), (torch.bfloat16, None, cfg.bf16_stages),
                                   (torch.float32, 2, 2), (torch.bfloat16, 2, 2)]:
        kw, state = _seq(case, 1, torch.float32, ssm_dtype=ssm_dtype)
        seen.clear()
        _decode(kw, state, 1, regime="many", state_stages=asked)
        assert seen == [(True, want)], (ssm_dtype, asked)


def test_mimo_takes_the_many_programs_defaults_earlier_only_where_tma_would_feed_the_state(monkeypatch):
    """The regime threshold: 5 programs per SM for MIMO whose default TMA tile fits an fp32 state and for MIMO over a
    bf16 state (its pointer tile there), 12 otherwise (SISO, `state_stages=0`, a misaligned fp32 state, P no
    multiple of the TMA block)."""
    from kernels.mamba3 import step as stepmod

    asked = []

    def spy(programs, sms, many_from=MANY_PROGRAMS_PER_SM):
        asked.append(many_from)
        return launch_regime(programs, sms, many_from)

    monkeypatch.setattr(stepmod, "launch_regime", spy)
    monkeypatch.setattr(stepmod, "MIMO_BF16_MANY_PROGRAMS_PER_SM", 7)  # told apart from the fp32 TMA threshold
    mimo, siso = (1, 2, 16, 128, 4, 4, 1, True, False), (1, 2, 16, 128, 4, 1, 1, True, False)
    kw, state = _seq(mimo, 1, torch.float32, ssm_dtype=torch.bfloat16)
    _decode(kw, state, 1)
    assert asked == [7]
    kw, state = _seq(siso, 1, torch.float32, ssm_dtype=torch.bfloat16)
    asked.clear()
    _decode(kw, state, 1)
    assert asked == [MANY_PROGRAMS_PER_SM]
    for case, extra, shifted, want in [(mimo, {}, False, MIMO_TMA_MANY_PROGRAMS_PER_SM),
                                       (mimo, {"state_stages": 0}, False, MANY_PROGRAMS_PER_SM),
                                       (mimo, {}, True, MANY_PROGRAMS_PER_SM),
                                       ((1, 2, 6, 128, 4, 4, 1, True, False), {}, False, MANY_PROGRAMS_PER_SM),
                                       (siso, {}, False, MANY_PROGRAMS_PER_SM)]:
        kw, state = _seq(case, 1, torch.float32)
        if shifted:
            state = state._replace(ssm=_misaligned(state.ssm))
        asked.clear()
        _decode(kw, state, 1, **extra)
        assert asked == [want], (case, extra, shifted)


def test_a_bf16_state_comes_by_tma_only_with_enough_programs_per_sm(monkeypatch):
    """MIMO's many-programs tile with a bf16 state: TMA's from MIMO_BF16_TMA_PROGRAMS_PER_SM programs per SM, the
    pointer loads' 4-row tile below (and on the CPU, with no SMs to count, TMA's); an fp32 state keeps TMA's."""
    from kernels.mamba3 import step as stepmod

    seen = _spy_tiles(monkeypatch)
    case = (2, 2, 16, 128, 4, 4, 1, True, False)  # 4 programs
    at_limit = (stepmod.MIMO_BF16_TMA_PROGRAMS_PER_SM // 2, 2, 16, 128, 4, 4, 1, True, False)  # exactly the limit
    for case, ssm_dtype, sms, extra, want in [(case, torch.bfloat16, 0, {}, (4, True)),
                                              (case, torch.bfloat16, 1, {}, (4, False)),
                                              (case, torch.bfloat16, 1, {"state_stages": 3}, (4, True)),  # as told
                                              (case, torch.float32, 1, {}, (4, True)),
                                              (at_limit, torch.bfloat16, 1, {}, (4, True))]:
        monkeypatch.setattr(stepmod, "_sms", lambda x, sms=sms: sms)
        kw, state = _seq(case, 1, torch.float32, ssm_dtype=ssm_dtype)
        state_ref = upcast_state(state)
        seen.clear()
        o = _decode(kw, state, 1, regime="many", **extra)
        assert seen == [want], (case, ssm_dtype, sms, extra)
        assert rel_max(o[:, 0], ref.step(**upcast(at_time(kw, 0)), state=state_ref)) < 4e-3


@pytest.mark.parametrize("case", ["mimo-r4", "mimo-r3-nogate", "mimo-r8"])
def test_folded_mimo_readout_matches_reference(monkeypatch, case):
    """`StepLaunch.fold_q`: the ranks' queries folded with their gate and output weight, one reduction along N
    (an option for timing; off by default), gives the reference's outputs over several steps."""
    from kernels.mamba3 import step as stepmod

    many = stepmod.DEFAULT_CONFIG[(True, "many")]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), many._replace(fold_q=True))
    kw, state = _seq(CPU_CASES[case], 3, torch.float32)
    state_ref = ScanState(*(t.clone() for t in state))
    o = _decode(kw, state, 3, regime="many")
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(3)], 1)
    assert rel_max(o, o_ref) < 1e-5 and rel_max(state.ssm, state_ref.ssm) < 1e-5


@pytest.mark.parametrize("case", ["mimo-r4", "mimo-r3-nogate", "mimo-r8", "mimo-r4-p10", "mimo-r4-no-previous"])
@pytest.mark.parametrize("regime,coef", [("many", True), ("mid", True), ("few", True), ("few", False)])
def test_mimo_row_terms_once_per_program_match_reference(monkeypatch, case, regime, coef):
    """`StepLaunch.coef`: MIMO's gates and skip terms computed for all rows before the row blocks, β and γ carried
    by the keys, the cached k written before the loop: the reference's outputs and every cache, over several
    steps, in every regime (the few-programs one, whose default it is, with its keys built as a tile, and without
    it); a P of 10 too, which is padded and which TMA cannot take in blocks, and λ ≡ 1 without the previous-token
    term (Mamba-2's promise, whose caches are then neither read nor written)."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(True, regime)]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, regime), cfg._replace(coef=coef))
    shape = {"mimo-r4-p10": (1, 2, 10, 16, 4, 4, 1, True, False),
             "mimo-r4-no-previous": CPU_CASES["mimo-r4"]}.get(case) or CPU_CASES[case]
    kw, state = _seq(shape, 3, torch.float32)
    previous = case != "mimo-r4-no-previous"
    if not previous:
        kw["lam"] = torch.ones_like(kw["lam"])
    state_ref = ScanState(*(t.clone() for t in state))
    k0, x0 = state.k.clone(), state.x.clone()
    o = _decode(kw, state, 3, regime=regime, previous_term=previous)
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(3)], 1)
    assert rel_max(o, o_ref) < 1e-5
    for name in ("ssm", "angle") + (("k", "x") if previous else ()):
        assert rel_max(getattr(state, name), getattr(state_ref, name)) < 1e-5, name
    if not previous:
        assert torch.equal(state.k, k0) and torch.equal(state.x, x0)


def _mimo_variant_inputs(shape, case: str, ssm_dtype):
    """Three steps' inputs and a state for a MIMO launch variant's case: λ ≡ 1 for "…-no-previous" (Mamba-2's
    promise, the previous-token term skipped), no mimo_z for "…-gate-without-mimo-z"; and whether the previous
    term runs."""
    kw, state = _seq(shape, 3, torch.float32, ssm_dtype=ssm_dtype)
    previous = not case.endswith("-no-previous")
    if not previous:
        kw["lam"] = torch.ones_like(kw["lam"])
    if case.endswith("-gate-without-mimo-z"):
        kw["mimo_z"] = None
    return kw, state, previous


def _decode_matches_reference(kw, state, previous: bool, ssm_dtype, extra: dict) -> None:
    """Three "many"-regime steps give the reference's outputs and every cache (the k and x caches untouched without
    the previous term)."""
    state_ref = ScanState(*(t.clone().float() for t in state))
    k0, x0 = state.k.clone(), state.x.clone()
    o = _decode(kw, state, 3, regime="many", previous_term=previous, **extra)
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(3)], 1)
    tol = 1e-5 if ssm_dtype == torch.float32 else 1e-2  # a bf16 state: three steps' roundings (≈ 2e-3 each)
    assert rel_max(o, o_ref) < tol
    for name in ("ssm", "angle") + (("k", "x") if previous else ()):
        assert rel_max(getattr(state, name).float(), getattr(state_ref, name)) < tol, name
    if not previous:
        assert torch.equal(state.k, k0) and torch.equal(state.x, x0)


# `StepLaunch.mma` launches: (StepLaunch fields, step keywords). At the CPU cases' N the default rows make one block
# of all P, so `block_p` asks for several: 8-row blocks by TMA (P = 10 by pointer loads, a partial second block) with
# the update on tensor cores, 4-row blocks (the compiler pads the products' M) with the update by multiply-adds and
# the readout alone on tensor cores, and one 64-row block at 4 warps by pointer loads
MMA_LAUNCHES = {
    "tf32x3-8row-blocks-tma": (dict(mma=True, num_warps=1, stages=3), dict(block_p=8)),
    "tf32-64rows-4warps": (dict(mma=True, rows=64, tma_rows=64, num_warps=4, stages=0, mma_update="tf32"), {}),
    "fma-4row-blocks-tma": (dict(mma=True, num_warps=1, stages=3, mma_update="fma"), dict(block_p=4)),
}


@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("launch", list(MMA_LAUNCHES))
@pytest.mark.parametrize("case", ["mimo-r4", "mimo-r3-nogate", "mimo-r8", "mimo-r2-p10", "mimo-r4-no-previous",
                                  "mimo-r4-gate-without-mimo-z"])
def test_mimo_step_on_tensor_cores_matches_reference(monkeypatch, case, launch, ssm_dtype):
    """`StepLaunch.mma`: MIMO's update and readout as products (K = N for the readout of the old state, K = 16 for
    the ranks' terms, zero-padded) give the reference's outputs and every cache over several steps: R of 2, 3, 4
    and 8, a padded P of 10 that TMA cannot take in blocks, λ ≡ 1 without the previous-token term (caches then
    untouched), a gate without mimo_z (z itself, as the reference), an fp32 or a bf16 state."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    fields, extra = MMA_LAUNCHES[launch]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), cfg._replace(**fields))
    shape = {"mimo-r2-p10": (1, 2, 10, 16, 4, 2, 1, True, False), "mimo-r4-no-previous": CPU_CASES["mimo-r4"],
             "mimo-r4-gate-without-mimo-z": CPU_CASES["mimo-r4"]}.get(case) or CPU_CASES[case]
    kw, state, previous = _mimo_variant_inputs(shape, case, ssm_dtype)
    _decode_matches_reference(kw, state, previous, ssm_dtype, extra)


# R = 4 and N ≥ 128, as the lane readout takes, in 4-row blocks (the default's at N = 128): (shape, step keywords)
MIMO_R4_N128 = (1, 2, 16, 128, 4, 4, 1, True, False)
LANE_CASES = {
    "mimo-r4": (MIMO_R4_N128, {}),
    "mimo-r4-nogate-n256-groups": ((2, 2, 8, 256, 8, 4, 2, False, False), dict(block_p=4)),
    "mimo-r4-p10-pointer-loads": ((1, 2, 10, 128, 4, 4, 1, True, False), dict(block_p=4)),
    "mimo-r4-no-previous": (MIMO_R4_N128, {}),
    "mimo-r4-gate-without-mimo-z": (MIMO_R4_N128, {}),
}


# the lane readout's own launch options, with and without (`StepLaunch` fields)
LANE_KNOBS = {"in-block": dict(lane_ahead=False, lane_keep=False, tma_store=True),
              "ahead-keep": dict(lane_ahead=True, lane_keep=True, tma_store=True),
              "ahead-keep-lane-stores": dict(lane_ahead=True, lane_keep=True, tma_store=False)}


@pytest.mark.parametrize("knobs", list(LANE_KNOBS))
@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", list(LANE_CASES))
def test_mimo_lane_readout_matches_reference(monkeypatch, case, ssm_dtype, knobs):
    """`StepLaunch.lane_readout`: MIMO's readout with one (row, rank) a lane after a warp-wide reduce-scatter (its
    plain-Triton twin under the interpreter) gives the reference's outputs and every cache over several steps, and
    is what the launch ran: R = 4 with and without a gate, a gate without mimo_z, a P of 10 in 4-row blocks by
    pointer loads (the last block half empty; an fp32 state's), λ ≡ 1 without the previous-token term, an fp32 or
    a bf16 state; each with the lanes' z and x loaded in their block and x kept after the loop, loaded a block
    ahead and x kept in the loop (`lane_ahead`, `lane_keep`), and those with a TMA-fed state stored by the lanes
    (`tma_store=False`)."""
    from kernels.mamba3 import step as stepmod
    from kernels.mamba3.tl_utils import record_launches

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), cfg._replace(lane_readout=True, **LANE_KNOBS[knobs]))
    shape, extra = LANE_CASES[case]
    kw, state, previous = _mimo_variant_inputs(shape, case, ssm_dtype)
    with record_launches() as launches:
        step(**at_time(kw, 0), state=ScanState(*(t.clone() for t in state)), regime="many", previous_term=previous,
             **extra)
    # pointer loads of a bf16 state put 8 columns in a lane: the per-row readout there
    lane = case != "mimo-r4-p10-pointer-loads" or ssm_dtype == torch.float32
    assert [meta["LANE"] for *_, meta in launches] == [lane]
    knob = LANE_KNOBS[knobs]
    assert [(m["LANE_AHEAD"], m["LANE_KEEP"], m["TMA_STORE"]) for *_, m in launches] == [
        (knob["lane_ahead"], knob["lane_keep"], knob["tma_store"])]
    _decode_matches_reference(kw, state, previous, ssm_dtype, extra)


def _run_warp_ptx(asm: str, inputs: list[np.ndarray]) -> np.ndarray:
    """The lane readout's PTX run for a warp of 32 lanes, line by line, on the few instructions it uses (float64):
    operand $0 the output, $1… the inputs, each a (32,) array of the lanes' values."""
    lanes = np.arange(32)
    regs = {f"${i + 1}": np.asarray(v, dtype=np.float64) for i, v in enumerate(inputs)}

    def val(x):
        return regs[x] if x in regs else np.full(32, int(x, 0), dtype=np.int64)

    for line in asm.splitlines():
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        op, args = line.rstrip(";").split(None, 1)
        d, *a = [t.strip() for t in args.split(",")]
        if op == "mov.u32" and a == ["%laneid"]:
            regs[d] = lanes.copy()
        elif op == "and.b32":
            regs[d] = val(a[0]) & val(a[1])
        elif op == "setp.ne.u32":
            regs[d] = val(a[0]) != val(a[1])
        elif op == "selp.b32":
            regs[d] = np.where(regs[a[2]], val(a[0]), val(a[1]))
        elif op == "shfl.sync.bfly.b32":
            assert a[2:] == ["0x1f", "0xffffffff"], line
            regs[d] = val(a[0])[lanes ^ int(a[1])]
        elif op == "add.f32":
            regs[d] = val(a[0]) + val(a[1])
        elif op == "fma.rn.f32":
            regs[d] = val(a[0]) * val(a[1]) + val(a[2])
        elif op == "mov.b32":
            regs[d] = val(a[0])
        else:
            raise AssertionError(f"instruction not simulated: {line}")
    return regs["$0"]


@pytest.mark.parametrize("slots,ranks", [(16, 4), (8, 2), (32, 4), (2, 1), (4, 4)])
def test_lane_readout_ptx_sums_each_rows_ranks(slots, ranks):
    """`lane_readout_asm`, run lane by lane: from the lanes' partial sums of every (row, rank) slot and each lane's
    own slot's gate c and skip, every lane returns Σ_r (c·total + skip) over its row's ranks, its row being
    (L >> shift) // R, as `_lane_readout` (and its interpreter twin) reads it."""
    from kernels.mamba3.step import lane_readout_asm

    g = np.random.default_rng(slots * 10 + ranks)
    shift = 5 - (slots.bit_length() - 1)
    slot = (np.arange(32) >> shift) % slots
    parts = [g.standard_normal(32) for _ in range(slots)]
    cs, skips = g.standard_normal(slots), g.standard_normal(slots)
    got = _run_warp_ptx(lane_readout_asm(slots, ranks), [*parts, cs[slot], skips[slot]])
    totals = np.array([p.sum() for p in parts])
    rows = (cs * totals + skips).reshape(-1, ranks).sum(1)
    np.testing.assert_allclose(got, rows[slot // ranks], rtol=1e-12, atol=1e-12)


def test_l2_prefetch_asks_at_most_a_heads_state(monkeypatch):
    """`StepLaunch.l2_prefetch`: a program asks for at most its head's state, in whole 16-byte units, nothing under
    the interpreter (which runs no PTX), and a negative size is refused. (Its PTX is built by compile_report's row
    "state prefetched into L2", test_compile_report.)"""
    from kernels.mamba3 import step as stepmod

    state = torch.empty(2, 3, 64, 128)  # a head's fp32 state: 32 KiB
    monkeypatch.setattr(stepmod, "INTERPRETED", False)
    assert stepmod._prefetch_bytes(10**6, state) == 64 * 128 * 4
    assert stepmod._prefetch_bytes(1000, state) == 992
    assert stepmod._prefetch_bytes(1000, state.to(torch.bfloat16)) == 992
    assert stepmod._prefetch_bytes(10**6, state.to(torch.bfloat16)) == 64 * 128 * 2
    assert stepmod._prefetch_bytes(0, state) == 0
    with pytest.raises(ValueError, match="l2_prefetch"):
        stepmod._prefetch_bytes(-16, state)
    monkeypatch.setattr(stepmod, "INTERPRETED", True)
    assert stepmod._prefetch_bytes(10**6, state) == 0


def test_lane_readout_takes_only_its_tile(monkeypatch):
    """The lane readout runs only where its layout holds (R = 4, 4-row blocks, one warp, N ≥ 128); elsewhere the
    launch keeps the per-row readout; its PTX generator refuses slot counts it cannot reduce."""
    from kernels.mamba3 import step as stepmod
    from kernels.mamba3.tl_utils import record_launches

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), cfg._replace(lane_readout=True))
    four = dict(block_p=4)
    cases = [(MIMO_R4_N128, {}, True), (MIMO_R4_N128, dict(block_p=8), False),
             (MIMO_R4_N128, dict(num_warps=2), False),
             ((1, 2, 16, 128, 4, 8, 1, True, False), four, False),  # R = 8
             (CPU_CASES["mimo-r4"], four, False),  # N = 32
             ((1, 2, 16, 64, 4, 4, 1, True, False), four, False)]  # N = 64
    for shape, extra, want in cases:
        kw, state = _seq(shape, 1, torch.float32)
        with record_launches() as launches:
            step(**at_time(kw, 0), state=state, regime="many", **extra)
        assert [meta["LANE"] for *_, meta in launches] == [want], (shape, extra)
    asm = stepmod.lane_readout_asm(16, 4)
    assert asm.count("shfl.sync.bfly") == 15 + 1 + 2 and "$18" in asm and "$19" not in asm
    for slots, ranks in [(1, 1), (12, 4), (64, 4), (16, 3), (4, 8)]:
        with pytest.raises(ValueError, match="powers of two"):
            stepmod.lane_readout_asm(slots, ranks)


def test_mimo_gate_without_mimo_z_gates_by_z_itself():
    """A MIMO step given z but no mimo_z gates every rank by SiLU(z), as the reference does (the default kernel
    read its per-rank gate weights from an unrelated buffer before)."""
    kw, state = _seq(CPU_CASES["mimo-r4"], 2, torch.float32)
    kw["mimo_z"] = None
    state_ref = ScanState(*(t.clone() for t in state))
    o = _decode(kw, state, 2, regime="many")
    o_ref = torch.stack([ref.step(**at_time(kw, t), state=state_ref) for t in range(2)], 1)
    assert rel_max(o, o_ref) < 1e-5


def test_a_register_cap_reaches_the_compiler_only_when_set(monkeypatch):
    """`StepLaunch.max_registers` (for timing) becomes the launch's `maxnreg`; unset, no cap is passed (the
    interpreter, which compiles nothing, never gets one)."""
    from kernels.mamba3 import step as stepmod
    from kernels.mamba3.tl_utils import record_launches

    kw, state = _seq(CPU_CASES["mimo-r4"], 1, torch.float32)
    many = stepmod.DEFAULT_CONFIG[(True, "many")]
    monkeypatch.setattr(stepmod, "INTERPRETED", False)
    metas = []
    for cap in (None, 96):
        monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), many._replace(max_registers=cap))
        with record_launches() as rec:
            step(**at_time(kw, 0), state=state, regime="many")
        metas.append(rec[0][3])
    assert "maxnreg" not in metas[0] and metas[1]["maxnreg"] == 96


def test_step_rejects_a_launch_field_naming_no_tile(monkeypatch):
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(False, "many")]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (False, "many"), cfg._replace(replicated_o="fp32 bf8"))
    kw, state = _seq(CPU_CASES["siso"], 1, torch.float32)
    with pytest.raises(ValueError, match="replicated_o names tiles"):
        step(**at_time(kw, 0), state=state, regime="many")
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (False, "many"), cfg._replace(xz_ahead=True))  # a bool, not names
    with pytest.raises(ValueError, match="xz_ahead names tiles"):
        step(**at_time(kw, 0), state=state, regime="many")


def test_step_rejects_an_unknown_regime():
    kw, state = _seq(CPU_CASES["siso"], 1, torch.float32)
    with pytest.raises(ValueError, match="regime"):
        step(**at_time(kw, 0), state=state, regime="huge")


def test_step_rejects_more_than_eight_ranks():
    kw, state = _seq((1, 2, 16, 16, 4, 9, 1, True, False), 1, torch.float32)
    with pytest.raises(ValueError, match="R <= 8"):
        step(**at_time(kw, 0), state=state)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_step_real_shapes_gpu(case):
    kw, state = _seq(GPU_CASES[case], 8, torch.bfloat16)
    ref_state = upcast_state(state)
    o = _decode(kw, state, 8)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=ref_state)
    assert rel_p95(o, o_ref) < 2e-2
    assert rel_p95(state.ssm, st_ref.ssm) < 2e-2


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_knobs_on_every_tile_real_shapes_gpu(monkeypatch, case, ssm_dtype, regime):
    """Each regime's defaults at the 1.5B shapes, several steps, against the reference, and so with the outputs
    stored by every holder (`replicated_o`, inline PTX) and the small loads a block ahead (`xz_ahead`) on every tile,
    and with both off. Those three agree to a rounding: without the store's layout conversion the compiler may
    reduce in another layout (on an H200, SISO's and Mamba-2's tiles and MIMO's fp32 "mid" and "many" ones gave the
    same bits, MIMO's 8-warp "few" tile and its bf16 "mid" one did not); the x cache (a copy) and the angles
    (elementwise) bit for bit."""
    from kernels.mamba3 import step as stepmod

    key = (GPU_CASES[case][5] > 1, regime)
    cfg = stepmod.DEFAULT_CONFIG[key]
    kw, state0 = _seq(GPU_CASES[case], 3, torch.bfloat16, ssm_dtype=ssm_dtype)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=upcast_state(state0))
    runs = []
    for tiles in (None, " ".join(stepmod.TILES), ""):
        if tiles is not None:
            monkeypatch.setitem(stepmod.DEFAULT_CONFIG, key, cfg._replace(replicated_o=tiles, xz_ahead=tiles))
        state = ScanState(*(t.clone() for t in state0))
        runs.append((_decode(kw, state, 3, regime=regime), state))
    o0, st0 = runs[2]
    for o, st in runs:
        assert torch.isfinite(o).all()  # every output written over the NaN it was poisoned with
        assert rel_p95(o, o_ref) < 2e-2 and rel_p95(st.ssm, st_ref.ssm) < 2e-2
        for got, want in ((o, o0), (st.ssm, st0.ssm), (st.k, st0.k)):
            assert rel_max(got.float(), want.float()) < 2e-2
        assert torch.equal(st.x, st0.x) and torch.equal(st.angle, st0.angle)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case", ["siso-1.5b", "mimo-r4-1.5b"])
def test_step_fused_real_shapes_gpu(case):
    proj, params, kw, state = _fused_inputs(GPU_CASES[case], torch.bfloat16)
    b, H, P, N, S, R, *_ = GPU_CASES[case]
    want_state = upcast_state(state)
    pre = ref.preprocess(proj, **params, heads=H, headdim=P, d_state=N, rank=R, n_angles=S)
    want = ref.step(**upcast(pre), **upcast(kw), state=want_state)
    got = step_fused(proj, **params, **kw, state=state)
    assert rel_p95(got, want) < 2e-2
    assert rel_p95(state.ssm, want_state.ssm) < 2e-2


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("case, regime, want", [
    ("siso-1.5b", "few", "interleaved"), ("siso-1.5b", "mid", "interleaved"), ("siso-1.5b", "many", "interleaved"),
    ("mimo-r4-1.5b", "many", "half"), ("mamba2-1.5b", "many", "none")])
def test_key_pairs_in_registers_real_shapes_gpu(monkeypatch, case, regime, want):
    """The fused step at the 1.5B shapes with each rotation partner from registers (the default where a pair lies
    within a warp; none without rotated pairs) and from its own loads: the same angles and x cache bit for bit;
    outputs, state and cached keys to a rounding (compiled, the two builds contract the rotation's products into
    different multiply-adds: on an H200 MIMO's one-warp keys differed in their last bf16 bit; and Triton 3.6 lays a
    TMA-fed MIMO tile out as the swapped keys are, so the lane readout sums in another order); both the reference's
    within spec §7. (MIMO's 4- and 8-warp tiles load either way.)"""
    from kernels.mamba3 import step as stepmod

    key = (GPU_CASES[case][5] > 1, regime)
    cfg = stepmod.DEFAULT_CONFIG[key]
    b, H, P, N, S, R, *_ = GPU_CASES[case]
    seen = _spy_tiles(monkeypatch, ("PAIRS",))
    runs = []
    for on in (True, False):
        monkeypatch.setitem(stepmod.DEFAULT_CONFIG, key, cfg._replace(pairs_in_registers=on))
        proj, params, kw, state = _fused_inputs(GPU_CASES[case], torch.bfloat16)
        want_state = upcast_state(state)
        pre = ref.preprocess(proj, **params, heads=H, headdim=P, d_state=N, rank=R, n_angles=S)
        o_ref = ref.step(**upcast(pre), **upcast(kw), state=want_state)
        got = step_fused(proj, **params, **kw, state=state, regime=regime)
        assert rel_p95(got, o_ref) < 2e-2 and rel_p95(state.ssm, want_state.ssm) < 2e-2
        runs.append((got, state))
    assert seen == [(want,), ("load",)]
    (o1, s1), (o0, s0) = runs
    assert rel_max(o1.float(), o0.float()) < 2e-2  # bf16 outputs: a rounding apart at most
    assert_same_build(s1.ssm, s0.ssm)
    assert_same_build(s1.k, s0.k)
    assert torch.equal(s1.x, s0.x) and torch.equal(s1.angle, s0.angle)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("case", ["siso-1.5b", "mimo-r4-1.5b"])
def test_state_blocks_by_tma_real_shapes_gpu(case, ssm_dtype):
    """TMA-fed state blocks (4 stages) against the pointer loads at the 1.5B shapes, batch 128, several steps."""
    kw, state0 = _seq(GPU_CASES[case], 4, torch.bfloat16, ssm_dtype=ssm_dtype)
    assert all(_state_descriptor(state0.ssm, bp, GPU_CASES[case][3], 4) is not None for bp in (2, 4, 16))
    runs = []
    for stages in (0, 4):
        state = ScanState(*(t.clone() for t in state0))
        runs.append((_decode(kw, state, 4, state_stages=stages), state))
    (o0, s0), (o4, s4) = runs
    assert_same_build(o4, o0)
    assert_same_build(s4.ssm, s0.ssm)
    assert torch.equal(s4.k, s0.k) and torch.equal(s4.x, s0.x) and torch.equal(s4.angle, s0.angle)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("batch", [128, 48])
def test_mimo_lane_readout_real_shapes_gpu(monkeypatch, batch, ssm_dtype):
    """The lane readout's PTX (a warp-wide reduce-scatter) at the 1.5B shapes, several steps: against the
    reference within spec §7, and against the per-row readout to a rounding (outputs, state) or exactly (caches).
    (At batch 48 a bf16 state still comes by TMA on an H100 or H200: 23 programs an SM.)"""
    from kernels.mamba3 import step as stepmod

    b, *rest = GPU_CASES["mimo-r4-1.5b"]
    kw, state0 = _seq((batch, *rest), 4, torch.bfloat16, ssm_dtype=ssm_dtype)
    seen, launch = [], stepmod.launch
    monkeypatch.setattr(stepmod, "launch", lambda kernel, grid, *a, **meta: seen.append(meta["LANE"]) or launch(
        kernel, grid, *a, **meta))
    ref_state = upcast_state(state0)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=ref_state)
    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    runs = []
    for lane in (False, True):
        monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), cfg._replace(lane_readout=lane))
        state = ScanState(*(t.clone() for t in state0))
        runs.append((_decode(kw, state, 4, regime="many"), state))
    (o0, s0), (o1, s1) = runs
    assert seen == [False] * 4 + [True] * 4  # the per-row readout's steps, then the lane readout's
    print("lane readout", batch, ssm_dtype, "o p95", rel_p95(o1, o_ref), "vs per-row max", rel_max(o1, o0))
    assert rel_p95(o1, o_ref) < 2e-2 and rel_p95(s1.ssm, st_ref.ssm) < 2e-2
    assert rel_max(o1.float(), o0.float()) < 2e-2  # bf16 outputs: one rounding apart at most
    assert_same_build(s1.ssm, s0.ssm)  # β and γ ride on the keys: the update's products round differently
    assert torch.equal(s1.k, s0.k) and torch.equal(s1.x, s0.x)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("ssm_dtype", [torch.float32, torch.bfloat16], ids=["fp32-state", "bf16-state"])
@pytest.mark.parametrize("launch", list(MMA_LAUNCHES))
def test_mimo_step_on_tensor_cores_real_shapes_gpu(monkeypatch, launch, ssm_dtype):
    """The tensor-core MIMO step at the 1.5B shapes, batch 128, several steps, against the reference (tf32
    products: within the bf16 tolerance of spec §7)."""
    from kernels.mamba3 import step as stepmod

    cfg = stepmod.DEFAULT_CONFIG[(True, "many")]
    fields, extra = MMA_LAUNCHES[launch]
    monkeypatch.setitem(stepmod.DEFAULT_CONFIG, (True, "many"), cfg._replace(**fields))
    kw, state = _seq(GPU_CASES["mimo-r4-1.5b"], 4, torch.bfloat16, ssm_dtype=ssm_dtype)
    ref_state = upcast_state(state)
    o = _decode(kw, state, 4, regime="many", **extra)
    o_ref, st_ref = ref.scan_sequential(**upcast(kw), state=ref_state)
    print(launch, ssm_dtype, "o p95", rel_p95(o, o_ref), "max", rel_max(o, o_ref), "state p95",
          rel_p95(state.ssm, st_ref.ssm), "max", rel_max(state.ssm, st_ref.ssm))
    assert rel_p95(o, o_ref) < 2e-2
    assert rel_p95(state.ssm, st_ref.ssm) < 2e-2
