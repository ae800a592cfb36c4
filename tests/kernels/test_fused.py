"""Fused glue kernels (residual add + RMSNorm, SiLU·product) vs their PyTorch twins in model/layers.py:
interpreter on CPU at small shapes, real shapes on the GPU. Outputs are allocated inside the kernels'
wrappers, so the tests make every fresh allocation NaN (conftest `nan_allocations`): an element the
kernel forgets stays NaN."""

import pytest
import torch

from kernels import fused
from model import layers

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=DEV, dtype=dtype)


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# id: (leading shape, C, residual dtype, branch/weight dtype, with a branch)
NORM_CASES = {
    "mamba-fp32-stream-bf16-branch": ((3,), 64, torch.float32, torch.bfloat16, True),
    "llama-bf16-stream": ((2, 5), 96, torch.bfloat16, torch.bfloat16, True),
    "first-block-no-branch": ((4,), 48, torch.float32, torch.bfloat16, False),
    "odd-width-fp32": ((2, 3), 100, torch.float32, torch.float32, True),
}


@pytest.mark.parametrize("case", NORM_CASES.values(), ids=NORM_CASES.keys())
def test_add_rms_norm_matches_the_twin(case, nan_allocations):
    lead, C, h_dt, w_dt, with_delta = case
    h = _randn(*lead, C, dtype=h_dt, seed=1, scale=3.0)
    delta = _randn(*lead, C, dtype=w_dt, seed=2) if with_delta else None
    w = _randn(C, dtype=w_dt, seed=3).abs() + 0.5
    got_h, got_y = fused.add_rms_norm(h, delta, w, 1e-5)
    want_h, want_y = layers.add_rms_norm(h, delta, w, 1e-5)
    assert got_h.dtype == h_dt and got_y.dtype == w_dt and got_y.shape == h.shape
    assert not got_y.isnan().any() and not got_h.isnan().any()
    # the residual is one rounded add, as torch does it: equal to the bit
    assert torch.equal(got_h, want_h)
    if w_dt == torch.float32:
        torch.testing.assert_close(got_y, want_y, rtol=1e-5, atol=1e-6)
    else:  # one bf16 rounding of the same fp32 value; a sum order apart: at most an ulp here and there
        assert _rel(got_y, want_y) < 2e-3
        assert (got_y.float() - want_y.float()).abs().max() <= 2 ** -7 * want_y.float().abs().max()


def test_add_rms_norm_refuses_mismatched_shapes():
    h = torch.zeros(2, 8, device=DEV)
    with pytest.raises(ValueError, match="weight"):
        fused.add_rms_norm(h, None, torch.ones(7, device=DEV), 1e-5)
    with pytest.raises(ValueError, match="delta"):
        fused.add_rms_norm(h, torch.zeros(2, 9, device=DEV), torch.ones(8, device=DEV), 1e-5)


# id: (rows, F, dtype, packed [value | gate] halves of one tensor)
SILU_CASES = {
    "packed-fc1-halves-bf16": (3, 64, torch.bfloat16, True),
    "separate-gate-up-fp32": (2, 77, torch.float32, False),
    "two-column-blocks": (2, 5000, torch.bfloat16, True),
}


@pytest.mark.parametrize("case", SILU_CASES.values(), ids=SILU_CASES.keys())
def test_silu_mul_matches_the_twin(case, nan_allocations):
    rows, F, dt, packed = case
    if packed:
        value, gate = _randn(rows, 2 * F, dtype=dt, seed=4, scale=2.0).chunk(2, dim=-1)
    else:
        value, gate = _randn(rows, F, dtype=dt, seed=4), _randn(rows, F, dtype=dt, seed=5, scale=2.0)
    got = fused.silu_mul(gate, value)
    exact = torch.nn.functional.silu(gate.double()) * value.double()
    assert got.dtype == dt and not got.isnan().any()
    # fused rounds once, the twin twice (after SiLU and after the product): both near the exact value
    bound = 1e-6 if dt == torch.float32 else 4e-3
    assert _rel(got, exact) < bound
    assert _rel(layers.silu_mul(gate, value), exact) < 2 * bound


@gpu
@pytest.mark.parametrize("rows", [1, 128, 128 * 512])
def test_fused_glue_real_shapes_gpu(rows):
    h = _randn(rows, 2048, dtype=torch.float32, seed=6, scale=3.0)
    delta = _randn(rows, 2048, dtype=torch.bfloat16, seed=7)
    w = _randn(2048, dtype=torch.bfloat16, seed=8).abs() + 0.5
    got_h, got_y = fused.add_rms_norm(h, delta, w, 1e-5)
    want_h, want_y = layers.add_rms_norm(h, delta, w, 1e-5)
    assert torch.equal(got_h, want_h) and _rel(got_y, want_y) < 2e-3
    u = _randn(rows, 2 * 4096, dtype=torch.bfloat16, seed=9, scale=2.0)
    value, gate = u.chunk(2, dim=-1)
    exact = torch.nn.functional.silu(gate.double()) * value.double()
    assert _rel(fused.silu_mul(gate, value), exact) < 4e-3


def _on_triton_kernels(model, deferred: bool = False):
    """The same model, its glue, matrix products (`gemv.small_linear`) and Mamba-3 scans switched to
    the Triton kernels (interpreted on CPU; the factory builds impl "triton" on CUDA only). `deferred`:
    the glue of impl "triton" (`glue_ops`), whose batch-1 SiLU·products the down products fold in;
    otherwise every glue kernel runs on its own."""
    from model.layers import Glue, glue_ops
    from model.mamba2 import Mamba2Mixer
    from model.mamba3 import Mamba3Mixer
    from model.scan import scan_ops

    from kernels import gemv

    model.use_glue(glue_ops("triton") if deferred else Glue(fused.add_rms_norm, fused.silu_mul, gemv.small_linear))
    for m in model.modules():
        if isinstance(m, (Mamba3Mixer, Mamba2Mixer)):
            m.ops = scan_ops("triton", m.cfg.chunk_size)
            m.fast = True
    return model


@pytest.fixture
def gemv_rows_on_cpu(monkeypatch):
    """gemv.small_linear's own routing with the device test lifted (the interpreter runs on CPU); the row
    count of every product it sends to the kernel is recorded."""
    from kernels import gemv

    rows, supports, linear = [], gemv.supports, gemv.linear

    def counted(x, w, b=None, **kw):
        rows.append(x.numel() // x.shape[-1] if isinstance(x, torch.Tensor) else type(x).__name__)
        return linear(x, w, b, **kw)

    monkeypatch.setattr(gemv, "supports", lambda x, w: supports(_OnCuda(x), _OnCuda(w)))
    monkeypatch.setattr(gemv, "linear", counted)
    return rows


class _OnCuda:
    """A tensor that says it is on CUDA (for gemv.supports' device test); everything else passed through."""

    is_cuda = True

    def __init__(self, t):
        self._t = t

    def __getattr__(self, name):
        return getattr(self._t, name)


@pytest.mark.parametrize("batch,deferred", [(2, False), (1, False), (2, True), (1, True)],
                         ids=["b2", "b1", "b2-deferred", "b1-deferred"])
def test_a_whole_model_on_the_fused_glue_decodes_like_the_reference(batch, deferred, gemv_rows_on_cpu):
    """mamba3-siso-tiny in bf16: prefill 11 tokens, decode 4, on the Triton glue, products and scans vs the
    PyTorch twins; the residual stream stays fp32, so the logits agree to bf16 rounding. At batch 1 every
    decode product runs on the matrix-vector kernel, at batch 2 none does (cuBLAS keeps 2–16 rows). With
    the deferring glue (impl "triton"'s) the batch-1 step's SiLU·products reach fc2 deferred, and the
    logits are those of the glue kernels run on their own, bit for bit."""
    import copy

    from model.factory import build_model

    ref = build_model("mamba3-siso-tiny", dtype=torch.bfloat16, impl="chunked", seed=0).to(DEV)
    fast = _on_triton_kernels(copy.deepcopy(ref), deferred)
    from kernels import gemv

    blk = fast.blocks()[0]
    assert blk.glue.add_rms_norm is fused.add_rms_norm
    assert blk.mlp.act is (gemv.deferred_silu_mul if deferred else fused.silu_mul)
    assert ref.blocks()[0].mlp.act is not fused.silu_mul
    tokens = torch.randint(0, 256, (batch, 15), generator=torch.Generator().manual_seed(0)).to(DEV)
    models = (ref, fast, _on_triton_kernels(copy.deepcopy(ref))) if deferred else (ref, fast)
    caches = [m.allocate_cache(batch=batch, max_context=15) for m in models]
    want, got, *same = (m.prefill(tokens[:, :11], c) for m, c in zip(models, caches))
    assert _rel(got, want) < 2e-2
    # prefill: only the head's last-token row (the deferring model's, then the other's)
    assert gemv_rows_on_cpu == ([1, 1] if deferred else [1]) * (batch == 1)
    gemv_rows_on_cpu.clear()
    for t in range(11, 15):
        want, got, *same = (m.decode_step(tokens[:, t], c) for m, c in zip(models, caches))
        assert _rel(got, want) < 2e-2
        assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.5
        if same:
            assert torch.equal(got, same[0])
    # at batch 1 every decode product (in_proj, out_proj, fc1, fc2 per block, and the head) ran on it
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in fast.modules())
    step = [1] * n_linear
    if deferred:  # per block in_proj, out_proj, fc1, fc2, then the head; each step then the other model's
        step = [1, 1, 1, "SiluMul"] * len(fast.blocks()) + [1] + step
        assert len(step) == 2 * n_linear
    assert gemv_rows_on_cpu == (step * 4 if batch == 1 else [])


def _mamba2_mixer(d_conv: int, dtype, seed: int):
    import dataclasses

    from model.config import get_config
    from model.factory import build_model

    cfg = dataclasses.replace(get_config("mamba2-tiny"), d_conv=d_conv)
    model = build_model(cfg, dtype=dtype, seed=seed).to(DEV)
    mixer = model.blocks()[0].mixer
    with torch.no_grad():  # a non-trivial conv bias and dt_bias (the init leaves the conv bias small)
        mixer.conv1d.bias.normal_(0.0, 0.5, generator=torch.Generator(DEV).manual_seed(seed))
    return cfg, mixer


# (prologue, T): the decode step's, and the prefill's over fewer tokens than the window, one, and more than one
# block of 64 (the interpreter's)
@pytest.mark.parametrize("prologue, T", [("step", 1), ("prefill", 1), ("prefill", 2), ("prefill", 5), ("prefill", 70)])
@pytest.mark.parametrize("d_conv", [4, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba2_conv_prologues_match_the_mixer_twin(dtype, d_conv, prologue, T, nan_allocations):
    """The decode prologue (conv window shift, depthwise conv + bias + SiLU, Δ and a·Δ) and the prefill's
    against `Mamba2Mixer._inputs` over T tokens, three calls in a row from a random conv state (each starts
    from the state the one before left); the state is moved, not computed, so it must match exactly."""
    cfg, mixer = _mamba2_mixer(d_conv, dtype, seed=d_conv)
    b = 3
    state = _randn(b, cfg.conv_dim, d_conv, dtype=dtype, seed=1)
    ref_state = state.clone()
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # the twin rounds the conv and the SiLU separately
    # Δ: a few ulp of exp and log; softplus as log(1 + eᵛ) (no log1p in Triton) keeps ≈ 1e-4 of Δ ≈ 1e-3
    rtol = 2e-5 if prologue == "step" else 2e-4
    args = (mixer.conv1d.weight, mixer.conv1d.bias, mixer.dt_bias, mixer.A_log)
    offsets = dict(xbc_offset=cfg.d_inner, dt_offset=cfg.d_inner + cfg.conv_dim)
    for call in range(3):
        u = _randn(b, T, cfg.d_model, dtype=dtype, seed=10 + call)
        proj = mixer.in_proj(u)
        with torch.no_grad():
            (x, _, B, C, dt, adt, *_), _ = mixer._inputs(u, ref_state)
            if prologue == "step":
                got = fused.mamba2_conv_step(proj[:, 0], state, *args, **offsets)
                xbc, got_dt, got_adt = (t[:, None] for t in got)
            else:
                xbc, got_dt, got_adt = fused.mamba2_conv_prefill(proj, state, *args, **offsets)
        assert torch.equal(state, ref_state), call
        want = torch.cat([x.flatten(2), B.flatten(2), C.flatten(2)], dim=-1)
        assert xbc.shape == (b, T, cfg.conv_dim) and xbc.dtype == dtype and _rel(xbc, want) < tol
        torch.testing.assert_close(got_dt, dt, rtol=rtol, atol=1e-7)
        torch.testing.assert_close(got_adt, adt, rtol=rtol, atol=1e-7)


def test_mamba2_conv_step_across_several_channel_blocks(nan_allocations):
    """More channels than one program takes (4096 under the interpreter, 512 on a GPU), against the conv
    written out in PyTorch: every block shifts its own channels and no channel is left unwritten."""
    b, conv_dim, d_conv, H = 2, 4096 + 72, 4, 3
    proj = _randn(b, conv_dim + H + 5, dtype=torch.float32, seed=1)
    state = _randn(b, conv_dim, d_conv, dtype=torch.float32, seed=2)
    w, bias = _randn(conv_dim, 1, d_conv, dtype=torch.float32, seed=3), _randn(conv_dim, dtype=torch.float32, seed=4)
    dt_bias, A_log = _randn(H, dtype=torch.float32, seed=5), _randn(H, dtype=torch.float32, seed=6)
    window = torch.cat([state[..., 1:], proj[:, 5:5 + conv_dim, None]], dim=-1)
    want = torch.nn.functional.silu((window * w[:, 0]).sum(-1) + bias)
    xbc, dt, adt = fused.mamba2_conv_step(proj, state, w, bias, dt_bias, A_log, xbc_offset=5,
                                          dt_offset=5 + conv_dim)
    assert torch.equal(state, window)
    assert _rel(xbc, want) < 1e-6
    want_dt = torch.nn.functional.softplus(proj[:, 5 + conv_dim:5 + conv_dim + H] + dt_bias)
    torch.testing.assert_close(dt, want_dt, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(adt, -torch.exp(A_log) * want_dt, rtol=2e-5, atol=1e-7)


def test_mamba2_conv_step_refuses_mismatched_operands():
    cfg, mixer = _mamba2_mixer(4, torch.float32, seed=0)
    proj = torch.zeros(2, cfg.d_proj, device=DEV)
    state = torch.zeros(2, cfg.conv_dim, 4, device=DEV)
    args = (mixer.conv1d.weight, mixer.conv1d.bias, mixer.dt_bias, mixer.A_log)
    with pytest.raises(ValueError, match="mamba2_conv_step: proj"):
        fused.mamba2_conv_step(proj, state, *args, xbc_offset=cfg.d_inner, dt_offset=cfg.d_proj)  # dt past the row
    with pytest.raises(ValueError, match="conv_state"):
        fused.mamba2_conv_step(proj, state.bfloat16(), *args, xbc_offset=cfg.d_inner,
                               dt_offset=cfg.d_inner + cfg.conv_dim)


def test_mamba2_conv_prefill_across_several_channel_blocks(nan_allocations):
    """More channels than one program takes (4096 under the interpreter), against the conv written out in
    PyTorch, proj a view with columns before the conv inputs."""
    b, T, conv_dim, d_conv, H = 2, 3, 4096 + 72, 4, 3
    proj = _randn(b, T, conv_dim + H + 5, dtype=torch.float32, seed=1)
    state = _randn(b, conv_dim, d_conv, dtype=torch.float32, seed=2)
    w, bias = _randn(conv_dim, 1, d_conv, dtype=torch.float32, seed=3), _randn(conv_dim, dtype=torch.float32, seed=4)
    dt_bias, A_log = _randn(H, dtype=torch.float32, seed=5), _randn(H, dtype=torch.float32, seed=6)
    window = torch.cat([state[..., 1:], proj[..., 5:5 + conv_dim].transpose(1, 2)], dim=-1)
    want = torch.nn.functional.silu(torch.stack([(window[..., t:t + d_conv] * w[:, 0]).sum(-1) for t in range(T)], 1)
                                    + bias)
    xbc, dt, adt = fused.mamba2_conv_prefill(proj, state, w, bias, dt_bias, A_log, xbc_offset=5,
                                             dt_offset=5 + conv_dim)
    assert torch.equal(state, window[..., -d_conv:])
    assert _rel(xbc, want) < 1e-6
    want_dt = torch.nn.functional.softplus(proj[..., 5 + conv_dim:5 + conv_dim + H] + dt_bias)
    torch.testing.assert_close(dt, want_dt, rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(adt, -torch.exp(A_log) * want_dt, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba2_mixer_fast_prefill_pieces_match_its_twin(dtype):
    """The mixer's prefill inputs and gated norm on the fused kernels (`fast`, the Triton path's setting)
    against the same mixer's twin: x, z, B, C, Δ, a·Δ as the scan receives them, the conv state after, and
    the output after the norm and out_proj."""
    cfg, mixer = _mamba2_mixer(4, dtype, seed=3)
    u = _randn(2, 9, cfg.d_model, dtype=dtype, seed=7)
    states = [_randn(2, cfg.conv_dim, 4, dtype=dtype, seed=8) for _ in range(2)]
    y = _randn(2, 9, cfg.nheads, cfg.headdim, dtype=dtype, seed=9)
    got, want = [], []
    with torch.no_grad():
        for fast, state, out in ((True, states[0], got), (False, states[1], want)):
            mixer.fast = fast
            args, _ = mixer._inputs(u, state)
            out.extend([*args[:6], state, mixer._out(y)])
    mixer.fast = False
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # the twin rounds the conv and the norm in steps
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, i
        assert _rel(g, w) < tol, (i, _rel(g, w))


def test_mamba2_conv_prefill_refuses_mismatched_operands():
    cfg, mixer = _mamba2_mixer(4, torch.float32, seed=0)
    proj = torch.zeros(2, 3, cfg.d_proj, device=DEV)
    state = torch.zeros(2, cfg.conv_dim, 4, device=DEV)
    args = (mixer.conv1d.weight, mixer.conv1d.bias, mixer.dt_bias, mixer.A_log)
    with pytest.raises(ValueError, match="mamba2_conv_prefill: proj"):
        fused.mamba2_conv_prefill(proj, state, *args, xbc_offset=cfg.d_inner, dt_offset=cfg.d_proj)
    ok = dict(xbc_offset=cfg.d_inner, dt_offset=cfg.d_inner + cfg.conv_dim)
    fused.mamba2_conv_prefill(proj, state, *args, **ok)  # the operands themselves are fine
    bad = [(proj[:, 0], state, ok), (proj, state.bfloat16(), ok), (proj.double(), state.double(), ok),
           (proj, state, dict(ok, xbc_offset=-1))]
    for p, s, offsets in bad:
        with pytest.raises(ValueError, match="mamba2_conv_prefill: proj"):
            fused.mamba2_conv_prefill(p, s, *args, **offsets)


def _reference_and_fast(monkeypatch, kernel_name: str, preset: str, dtype, batch: int, length: int, seed: int):
    """(calls of fused.<kernel_name>, the preset on the PyTorch path, its copy on the Triton kernels, their
    caches, tokens (batch, length))."""
    import copy

    from model.factory import build_model

    calls = []
    kernel = getattr(fused, kernel_name)
    monkeypatch.setattr(fused, kernel_name, lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    ref = build_model(preset, dtype=dtype, impl="chunked", seed=0).to(DEV)
    fast = _on_triton_kernels(copy.deepcopy(ref))
    tokens = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed)).to(DEV)
    caches = [m.allocate_cache(batch=batch, max_context=length + 1) for m in (ref, fast)]
    return calls, ref, fast, caches, tokens


def test_mamba2_decodes_on_the_fast_path_like_the_reference(monkeypatch):
    """mamba2-tiny in bf16: prefill 9 tokens, decode 4, with the decode prologue, scan step and gated norm
    on the Triton kernels vs the PyTorch path; the prologue kernel runs once per layer and step."""
    calls, ref, fast, caches, tokens = _reference_and_fast(monkeypatch, "mamba2_conv_step", "mamba2-tiny",
                                                           torch.bfloat16, 2, 13, seed=0)
    want, got = (m.prefill(tokens[:, :9], c) for m, c in zip((ref, fast), caches))
    assert _rel(got, want) < 2e-2
    for t in range(9, 13):
        want, got = (m.decode_step(tokens[:, t], c) for m, c in zip((ref, fast), caches))
        assert _rel(got, want) < 2e-2
        for a, b in zip(caches[0].tensors(), caches[1].tensors()):
            assert _rel(b, a) < 2e-2
    assert len(calls) == 4 * ref.config.n_layer


def test_mamba2_step_without_the_previous_term_never_touches_the_slots():
    """`step(previous_term=False)` (λ ≡ 1): the previous-key and x slots are neither read nor written, so
    NaN there changes nothing, and the result is the reference step's with the term zero."""
    from kernels.mamba3 import reference, step
    from kernels.mamba3.testing import random_inputs, random_state

    kw = random_inputs(3, None, 4, 8, 16, 0, dtype=torch.float32, mamba2=True, device=DEV)
    ref_state = random_state(3, 4, 8, 16, 0, device=DEV)
    state = reference.ScanState(*(t.clone() for t in ref_state))
    state.k.fill_(float("nan"))
    state.x.fill_(float("nan"))
    got = step.step(**kw, state=state, previous_term=False)
    want = reference.step(**kw, state=ref_state)
    assert state.k.isnan().all() and state.x.isnan().all()
    assert _rel(got, want) < 1e-6 and _rel(state.ssm, ref_state.ssm) < 1e-6


def test_mamba2_caches_share_no_state_through_the_step_scratch(monkeypatch):
    """Two caches of one shape on the fast path: whatever one cache's steps produce (here inf from a broken
    conv window) cannot reach the other's through the shared step constants."""
    _, ref, fast, (_, cache_a), tokens = _reference_and_fast(monkeypatch, "mamba2_conv_step", "mamba2-tiny",
                                                               torch.float32, 2, 4, seed=2)
    cache_b = fast.allocate_cache(batch=2, max_context=5)
    fast.prefill(tokens[:, :3], cache_b)
    held = [t.clone() for t in cache_b.tensors()] + [cache_b.pos.clone()]
    clean = fast.decode_step(tokens[:, 3], cache_b)
    for t, h in zip(cache_b.tensors() + [cache_b.pos], held):
        t.copy_(h)
    fast.prefill(tokens[:, :3], cache_a)
    cache_a.layers[-1].conv[0].fill_(float("inf"))
    assert not fast.decode_step(tokens[:, 3], cache_a)[0].isfinite().all()
    torch.testing.assert_close(fast.decode_step(tokens[:, 3], cache_b), clean, rtol=0, atol=0)


@pytest.mark.parametrize("rank, dtype, lead, N", [(1, torch.bfloat16, (2, 7), 16), (4, torch.float32, (3,), 16),
                                                  (2, torch.bfloat16, (1, 5), 16), (1, torch.float32, (5,), 24)])
def test_mamba3_preprocess_matches_the_reference(rank, dtype, lead, N, nan_allocations):
    """The prefill preprocessing kernel against `reference.preprocess` on in_proj rows of odd count, SISO
    and MIMO, N a power of two or not: B/C RMSNorm to rounding, the activations to a few ulp (θ through
    2·sigmoid(2u) − 1)."""
    from kernels.mamba3 import reference

    H, P, S = 4, 8, 4
    d_proj = 2 * H * P + 2 * rank * N + 3 * H + S
    proj = _randn(*lead, d_proj, dtype=dtype, seed=rank, scale=2.0)
    kw = dict(dt_bias=_randn(H, dtype=torch.float32, seed=5), B_norm_weight=_randn(N, dtype=dtype, seed=6),
              C_norm_weight=_randn(N, dtype=dtype, seed=7), heads=H, headdim=P, d_state=N, rank=rank, n_angles=S,
              a_floor=1e-3, eps=1e-5)
    got, want = fused.mamba3_preprocess(proj, **kw), reference.preprocess(proj, **kw)
    assert got.keys() == want.keys()
    for k in ("x", "z"):
        assert torch.equal(got[k], want[k])
    for k in ("B", "C"):
        assert got[k].shape == want[k].shape and got[k].dtype == want[k].dtype
        assert _rel(got[k], want[k]) < (1e-6 if dtype == torch.float32 else 8e-3)
    for k in ("dt", "adt", "lam"):
        assert got[k].dtype == torch.float32
        torch.testing.assert_close(got[k], want[k], rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(got["theta"], want["theta"], rtol=0, atol=2e-6)


def test_mamba3_preprocess_refuses_a_row_that_does_not_fit():
    proj = torch.zeros(3, 100, device=DEV)
    with pytest.raises(ValueError, match="d_proj = 100 does not fit"):
        fused.mamba3_preprocess(proj, dt_bias=torch.zeros(4), B_norm_weight=torch.ones(16),
                                C_norm_weight=torch.ones(16), heads=4, headdim=8, d_state=16, rank=1, n_angles=4)


def test_mamba3_prefill_runs_the_preprocessing_kernel(monkeypatch):
    """On the fast path each Mamba-3 layer of a prefill calls the kernel once (hybrid included)."""
    calls, ref, fast, caches, tokens = _reference_and_fast(monkeypatch, "mamba3_preprocess", "hybrid-tiny",
                                                           torch.float32, 2, 9, seed=1)
    want, got = (m.prefill(tokens, c) for m, c in zip((ref, fast), caches))
    assert _rel(got, want) < 1e-4
    assert len(calls) == ref.config.n_layer - len(ref.config.attn_layer_idx)


@gpu
@pytest.mark.parametrize("rank, rows", [(1, 128 * 512), (4, 16 * 512), (1, 1)])
def test_mamba3_preprocess_real_shapes_gpu(rank, rows):
    """The 1.5B SISO / MIMO in_proj rows (H 64, P 64, N 128, S 32) against the twin."""
    from kernels.mamba3 import reference

    H, P, N, S = 64, 64, 128, 32
    proj = _randn(rows, 2 * H * P + 2 * rank * N + 3 * H + S, dtype=torch.bfloat16, seed=rank, scale=2.0)
    kw = dict(dt_bias=_randn(H, dtype=torch.float32, seed=1), B_norm_weight=_randn(N, dtype=torch.bfloat16, seed=2),
              C_norm_weight=_randn(N, dtype=torch.bfloat16, seed=3), heads=H, headdim=P, d_state=N, rank=rank,
              n_angles=S)
    got, want = fused.mamba3_preprocess(proj, **kw), reference.preprocess(proj, **kw)
    for k in ("B", "C"):
        assert _rel(got[k], want[k]) < 8e-3
    for k in ("dt", "adt", "lam", "theta"):
        torch.testing.assert_close(got[k], want[k], rtol=2e-5, atol=2e-6)


@gpu
@pytest.mark.parametrize("b", [1, 128])
def test_mamba2_conv_step_real_shapes_gpu(b):
    """The 1.5B conv (4352 channels, width 4; Δ over 64 heads) against the conv written out in PyTorch."""
    conv_dim, H = 4352, 64
    proj = _randn(b, 4096 + conv_dim + H, dtype=torch.bfloat16, seed=b)
    state = _randn(b, conv_dim, 4, dtype=torch.bfloat16, seed=2)
    w, bias = _randn(conv_dim, 1, 4, dtype=torch.bfloat16, seed=3), _randn(conv_dim, dtype=torch.bfloat16, seed=4)
    dt_bias, A_log = _randn(H, dtype=torch.bfloat16, seed=5), _randn(H, dtype=torch.bfloat16, seed=6)
    window = torch.cat([state[..., 1:], proj[:, 4096:4096 + conv_dim, None]], dim=-1)
    want = torch.nn.functional.silu((window.float() * w[:, 0].float()).sum(-1) + bias.float())
    xbc, dt, adt = fused.mamba2_conv_step(proj, state, w, bias, dt_bias, A_log, xbc_offset=4096,
                                          dt_offset=4096 + conv_dim)
    assert torch.equal(state, window) and _rel(xbc, want) < 4e-3
    want_dt = torch.nn.functional.softplus(proj[:, -H:].float() + dt_bias.float())
    torch.testing.assert_close(dt, want_dt, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(adt, -torch.exp(A_log.float()) * want_dt, rtol=2e-5, atol=1e-6)
