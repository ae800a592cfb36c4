"""Small-batch matrix-vector kernel (kernels/gemv.py) against torch.nn.functional.linear in float64:
interpreter on CPU at small shapes whose N and K are not multiples of the blocks, real decode shapes
on the GPU. Outputs and split-K workspaces are allocated inside the wrapper, so every fresh allocation
is NaN (conftest `nan_allocations`): a column, row or split the kernels leave unwritten shows up."""

import pytest
import torch
import torch.nn.functional as F
import triton

from kernels import gemv

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=DEV, dtype=dtype)


def _operands(lead, N, K, dtype, with_bias, seed=0):
    x = _randn(*lead, K, dtype=dtype, seed=seed)
    w = _randn(N, K, dtype=dtype, seed=seed + 1, scale=K ** -0.5)
    b = _randn(N, dtype=dtype, seed=seed + 2) if with_bias else None
    return x, w, b


def _exact(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double())


def _assert_close(got, x, w, b):
    """fp32: the exact value to ~1e-5 of the largest output. bf16: the exact value rounded once to nearest
    (half an ulp, 2^-8 relative) plus the fp32 sum's slack; truncation or a second rounding fails this."""
    want = _exact(x, w, b)
    assert got.dtype == x.dtype and got.shape == want.shape
    assert not got.isnan().any(), "an output element was left unwritten"
    err, scale = (got.double() - want).abs(), want.abs().max()
    if x.dtype == torch.float32:
        assert err.max() <= 1e-5 * scale, (err.max() / scale).item()
    else:
        assert err.max() <= 2 ** -8 * scale
        bound = 2 ** -8 * want.abs() + 1e-5 * scale
        assert (err <= bound).all(), ((err - bound).max() / scale).item()


# N = 77 over blocks of 32 (a partial third block), K = 300 over blocks of 64 (a partial fifth block)
@pytest.mark.parametrize("split_k", [1, 3], ids=["one-split", "three-splits"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("M", [1, 3, 16, 33])
def test_linear_matches_float64(M, dtype, with_bias, split_k, nan_allocations):
    x, w, b = _operands((M,), 77, 300, dtype, with_bias, seed=M)
    got = gemv.linear(x, w, b, block_n=32, block_k=64, split_k=split_k)
    _assert_close(got, x, w, b)


def test_decode_shaped_input_keeps_its_leading_dims(nan_allocations):
    """x (b, 1, K) as a decode step hands it: 5 rows through the dot path, (5, 1, N) back."""
    x, w, b = _operands((5, 1), 45, 130, torch.bfloat16, True, seed=7)
    got = gemv.linear(x, w, b, block_n=16, block_k=32)
    assert got.shape == (5, 1, 45)
    _assert_close(got, x, w, b)
    x1 = x[:1]  # (1, 1, K): the one-row path
    _assert_close(gemv.linear(x1, w, b, block_n=8, block_k=32), x1, w, b)


def test_default_config_on_this_device(nan_allocations):
    """No block arguments: whatever default_config picks here (the interpreter's large blocks on CPU)."""
    for M in (1, 4):
        x, w, b = _operands((M,), 100, 300, torch.bfloat16, M == 4, seed=20 + M)
        _assert_close(gemv.linear(x, w, b), x, w, b)


def test_more_splits_than_k_blocks_write_zero_partials(nan_allocations):
    """split_k 8 over 5 K blocks: three splits own no K range and must still write (zero) partials."""
    for M in (1, 2):
        x, w, b = _operands((M,), 40, 300, torch.float32, True, seed=30 + M)
        _assert_close(gemv.linear(x, w, b, block_n=16, block_k=64, split_k=8), x, w, b)


def test_strided_rows_and_weight_rows(nan_allocations):
    """x rows and weight rows with padding between them (unit stride along K): strides are honoured."""
    xs = _randn(3, 400, dtype=torch.float32, seed=40)[:, :300]
    ws = _randn(50, 320, dtype=torch.float32, seed=41)[:, :300]
    assert xs.stride(0) == 400 and ws.stride(0) == 320
    for rows in (xs[:1], xs):
        _assert_close(gemv.linear(rows, ws, block_n=16, block_k=128), rows, ws, None)


def test_out_is_written_in_place(nan_allocations):
    x, w, b = _operands((2, 1), 33, 70, torch.bfloat16, True, seed=50)
    out = torch.full((2, 1, 33), 7.0, dtype=torch.bfloat16, device=DEV)
    got = gemv.linear(x, w, b, out=out, block_n=16, block_k=64)
    assert got is out
    _assert_close(out, x, w, b)
    with pytest.raises(ValueError, match="out"):
        gemv.linear(x, w, b, out=torch.empty(2, 33, dtype=torch.bfloat16, device=DEV))
    with pytest.raises(ValueError, match="out"):
        gemv.linear(x, w, b, out=torch.empty(2, 1, 33, dtype=torch.float32, device=DEV))


def test_refuses_what_it_cannot_compute():
    x, w, _ = _operands((2,), 20, 64, torch.float32, False)
    with pytest.raises(ValueError, match="129 rows"):
        gemv.linear(_randn(129, 64, dtype=torch.float32, seed=1), w)
    with pytest.raises(ValueError, match="130 rows"):
        gemv.linear(_randn(2, 65, 64, dtype=torch.float32, seed=1), w)
    with pytest.raises(ValueError, match="K = 64"):
        gemv.linear(_randn(2, 63, dtype=torch.float32, seed=1), w)
    with pytest.raises(ValueError, match="weight"):
        gemv.linear(x, w[0])
    with pytest.raises(ValueError, match="share one of"):
        gemv.linear(x.to(torch.bfloat16), w)
    with pytest.raises(ValueError, match="share one of"):
        gemv.linear(x.double(), w.double())
    with pytest.raises(ValueError, match="unit stride along K"):
        gemv.linear(x, _randn(64, 20, dtype=torch.float32, seed=2).t())
    with pytest.raises(ValueError, match="bias"):
        gemv.linear(x, w, torch.zeros(19, device=DEV))
    with pytest.raises(ValueError, match="block_n ≥ 16"):
        gemv.linear(x, w, block_n=8)
    with pytest.raises(ValueError, match="powers of two"):
        gemv.linear(x[:1], w, block_k=48)


def test_supports_is_false_off_cuda():
    x, w, _ = _operands((1,), 20, 64, torch.bfloat16, False)
    assert gemv.supports(x, w) is (DEV == "cuda")
    assert not gemv.supports(x.cpu(), w.cpu())


# the models' decode weights (N, K): Mamba-3 1.5B SISO in_proj, out_proj, fc1; MIMO in_proj, fc2;
# Llama-3.2-1B q/o, k/v and down projections; the LM head
MODEL_SHAPES = [(8672, 2048), (2048, 4096), (8192, 2048), (9440, 2048), (2048, 3824), (2048, 2048), (512, 2048),
                (2048, 8192), (128256, 2048)]


@pytest.mark.parametrize("M", [1, 8])
def test_default_rule_on_an_h100_sized_gpu(M):
    """The rule's stated choices for a 132-SM GPU, checked without one (the H200 sweep's winners): one
    row, never split: wide weights 16 × 256 tiles, 8 warps, narrow ones 4 × 1024, 8 warps (4 where K is at
    most 2048); 2–16 rows 32 × 256, 4 warps, K split in 4 only where the N blocks are fewer than the SMs."""
    sms = 132
    for N, K in MODEL_SHAPES:
        bn, bk, sk, warps = gemv.default_config(M, N, K, "cuda", sms=sms)
        case = (M, N, K, bn, bk, sk, warps)
        if M == 1:
            wide = N >= 7648
            assert sk == 1 and warps == (4 if not wide and K <= 2048 else 8), case
            assert (bn, bk) == ((16, 256) if wide else (4, 1024)), case
        else:
            assert (bn, bk, warps) == (32, 256, 4), case
            assert sk == (4 if N <= 4096 else 1), case
    assert gemv.default_config(1, 128256, 2048, "cuda", sms=sms) == (16, 256, 1, 8)
    assert gemv.default_config(1, 2048, 8192, "cuda", sms=sms) == (4, 1024, 1, 8)
    assert gemv.default_config(1, 3072, 2048, "cuda", sms=sms) == (4, 1024, 1, 4)  # Llama's stacked q/k/v
    assert gemv.default_config(1, 2048, 300, "cuda", sms=sms)[1] == 512  # block_k never past K's power of two
    # past 16 rows (untuned): 64 × 64 tiles, split in 2 where the N blocks leave SMs idle
    assert gemv.default_config(128, 8672, 2048, "cuda", sms=sms) == (64, 64, 1, 4)
    assert gemv.default_config(128, 2048, 8192, "cuda", sms=sms) == (64, 64, 2, 4)


def test_default_rule_on_cpu_keeps_the_interpreter_short():
    bn, bk, sk, _ = gemv.default_config(1, 100, 300, "cpu")
    assert triton.cdiv(100, bn) * triton.cdiv(300, bk) * sk <= 2
    assert gemv.default_config(3, 10, 300, "cpu")[0] >= 16


@gpu
@pytest.mark.parametrize("M", [1, 8, 128])
@pytest.mark.parametrize("shape", [(8672, 2048), (2048, 8192), (3072, 2048), (128256, 2048)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_real_shapes_gpu(shape, M):
    N, K = shape
    x, w, _ = _operands((M,), N, K, torch.bfloat16, False, seed=60)
    _assert_close(gemv.linear(x, w), x, w, None)
    _assert_close(gemv.linear(x, w, split_k=4), x, w, None)


@gpu
def test_split_k_replays_from_a_cuda_graph():
    """Captured once (workspace from the graph's pool), replayed on new inputs: no host sync, no stale
    shapes; the default config of this shape and an explicit split."""
    x, w, b = _operands((4,), 2048, 4096, torch.bfloat16, True, seed=70)
    outs = {}
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for sk in (None, 4):
            gemv.linear(x, w, b, split_k=sk)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for sk in (None, 4):
            outs[sk] = gemv.linear(x, w, b, split_k=sk)
    x.copy_(_randn(4, 4096, dtype=torch.bfloat16, seed=71))
    graph.replay()
    torch.cuda.synchronize()
    for got in outs.values():
        _assert_close(got, x, w, b)


def test_small_linear_routes_only_one_row_products_outside_autograd(monkeypatch):
    """The model's product: the kernel for one row when `supports` says so and no gradient is recorded;
    F.linear for several rows, under autograd, and off the GPU."""
    calls = []
    monkeypatch.setattr(gemv, "linear", lambda x, w, b=None: calls.append(x.shape) or F.linear(x, w, b))
    w = torch.randn(8, 32)
    one, two = torch.randn(1, 32), torch.randn(2, 32)
    with torch.no_grad():
        gemv.small_linear(one, w)  # CPU: supports() is False
        assert calls == []
        monkeypatch.setattr(gemv, "supports", lambda x, weight: True)
        torch.testing.assert_close(gemv.small_linear(one, w), F.linear(one, w))
        assert calls == [(1, 32)]
        gemv.small_linear(two, w)  # two rows: cuBLAS's
        gemv.small_linear(torch.randn(1, 1, 32), w)  # one row in a (b, T, K) batch: the kernel's
        assert calls == [(1, 32), (1, 1, 32)]
    gemv.small_linear(one, w)  # autograd on: F.linear keeps the graph
    assert len(calls) == 2


# --- a deferred SiLU·product: SwiGLU's activation folded into the down product's loads ---------------------

@pytest.mark.parametrize("split_k", [1, 2], ids=["one-split", "two-splits"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_a_deferred_silu_mul_is_the_glue_kernel_then_the_product(dtype, split_k, nan_allocations):
    """K 300 over blocks of 64 (a partial last block; 3 passes of the pipelined loop per split of two), N 45
    over 16: bit for bit the glue kernel's x."""
    from kernels import fused

    u = _randn(1, 2 * 300, dtype=dtype, seed=90, scale=2.0)
    value, gate = u.chunk(2, dim=-1)  # views of one fc1 row, as the MLPs hand them over
    w = _randn(45, 300, dtype=dtype, seed=91, scale=300 ** -0.5)
    deferred = gemv.deferred_silu_mul(gate, value)
    assert isinstance(deferred, gemv.SiluMul) and deferred.shape == gate.shape and deferred.dtype == dtype
    got = gemv.linear(deferred, w, block_n=16, block_k=64, split_k=split_k)
    x = fused.silu_mul(gate, value)
    assert torch.equal(got, gemv.linear(x, w, block_n=16, block_k=64, split_k=split_k))
    _assert_close(got, x, w, None)


def test_only_a_decode_row_is_deferred(nan_allocations):
    """(1, F): deferred; (2, F), a prefill's (1, T, F) and a strided row: the glue kernel runs at once."""
    u = _randn(1, 128, dtype=torch.bfloat16, seed=100)
    assert isinstance(gemv.deferred_silu_mul(u[:, :64], u[:, 64:]), gemv.SiluMul)
    for t in (_randn(2, 64, dtype=torch.bfloat16, seed=101), _randn(1, 3, 64, dtype=torch.bfloat16, seed=102),
              _randn(1, 64, 2, dtype=torch.bfloat16, seed=103)[..., 0]):
        got = gemv.deferred_silu_mul(t, t)
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, torch.nn.functional.silu(t.float()).mul(t.float()).to(t.dtype))


def test_a_deferred_row_the_kernel_does_not_take_is_materialised(monkeypatch, nan_allocations):
    """small_linear where the kernel is refused, linear with several rows and a model Linear on cuBLAS run
    the glue kernel first; the product is then that of the materialised row."""
    from kernels import fused
    from model.layers import Linear

    u = _randn(2, 128, dtype=torch.float32, seed=110)
    w = _randn(20, 64, dtype=torch.float32, seed=113)
    x = fused.silu_mul(u[:, :64], u[:, 64:])
    monkeypatch.setattr(gemv, "supports", lambda x, weight: False)
    with torch.no_grad():
        torch.testing.assert_close(gemv.small_linear(gemv.SiluMul(u[:1, :64], u[:1, 64:]), w), F.linear(x[:1], w))
    _assert_close(gemv.linear(gemv.SiluMul(u[:, :64], u[:, 64:]), w, block_n=16, block_k=64), x, w, None)
    lin = Linear(64, 20, bias=False, dtype=torch.float32).to(DEV)  # product: F.linear
    with torch.no_grad():
        lin.weight.copy_(w)
        torch.testing.assert_close(lin(gemv.SiluMul(u[:1, :64], u[:1, 64:])), F.linear(x[:1], w))
    with pytest.raises(AttributeError):
        gemv.SiluMul(u[:1, :64], u[:1, 64:]).reshape(64)  # not a tensor: any use but a product's fails loudly
    for up in (u[:1], u[:1, 64:].double()):  # a wider up row, another dtype
        with pytest.raises(ValueError, match="must match"):
            gemv.SiluMul(u[:1, :64], up)


@gpu
@pytest.mark.parametrize("F_", [4096, 8192])
def test_deferred_silu_mul_real_shapes_gpu(F_):
    """fc2 (2048 × 4096) and Llama's down (2048 × 8192) on the default configuration, bit for bit."""
    from kernels import fused

    u = _randn(1, 2 * F_, dtype=torch.bfloat16, seed=124, scale=2.0)
    wd = _randn(2048, F_, dtype=torch.bfloat16, seed=125, scale=F_ ** -0.5)
    got = gemv.linear(gemv.deferred_silu_mul(u[:, F_:], u[:, :F_]), wd)
    assert torch.equal(got, gemv.linear(fused.silu_mul(u[:, F_:], u[:, :F_]), wd))
