"""Split-K product for 17–128 rows (kernels/skinny.py) against torch.nn.functional.linear in float64: the
interpreter on CPU at small shapes whose N and K are not multiples of the blocks (TMA and pointer loads), real
decode shapes on the GPU; its split partials summed by the add + RMSNorm kernel (kernels.fused) against the
summed product; the model's dispatch. Fresh allocations are NaN (conftest `nan_allocations`), so an output
element or a split's partial the kernels leave unwritten shows up."""

import pytest
import torch

from kernels import fused, gemv, skinny
from tests.kernels.test_gemv import _assert_close, _operands

DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real-shape check)")
CFG = skinny.Config(block_n=32, block_k=64, split_k=3, stages=2, num_warps=4)


# N = 77 over blocks of 32 (a partial third block), K = 296 over blocks of 64 (a partial fifth block; 296 keeps
# rows 16-byte aligned for TMA); 17 and 33 rows pad to 32 and 64, 128 fills the dot
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("split_k", [1, 3], ids=["one-split", "three-splits"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("M", [17, 33, 128])
def test_linear_matches_float64(M, dtype, with_bias, split_k, tma, nan_allocations):
    if tma and DEV == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA needs sm_90")
    x, w, b = _operands((M,), 77, 296, dtype, with_bias, seed=M)
    got = skinny.linear(x, w, b, config=CFG._replace(split_k=split_k), tma=tma)
    _assert_close(got, x, w, b)


def test_splits_sum_like_gemv_and_the_pointer_path(nan_allocations):
    """The split-sum adds the same partials in the same order whatever loads fed them: TMA and pointer loads
    agree bit for bit, and a four-split product matches gemv's dot path with the same tiles and splits."""
    x, w, b = _operands((40,), 96, 512, torch.bfloat16, True, seed=3)
    cfg = skinny.Config(32, 64, 4, 2, 4)
    a = skinny.linear(x, w, b, config=cfg, tma=True)
    assert torch.equal(a, skinny.linear(x, w, b, config=cfg, tma=False))
    _assert_close(a, x, w, b)


def test_more_splits_than_k_blocks_launch_only_the_splits_that_own_k(nan_allocations):
    """split_k 8 over K = 100 in blocks of 64: two splits own K; no partial is left unwritten (NaN)."""
    x, w, b = _operands((20,), 50, 100, torch.bfloat16, False, seed=5)
    _assert_close(skinny.linear(x, w, config=CFG._replace(split_k=8)), x, w, b)


def test_out_and_leading_dims(nan_allocations):
    x, w, _ = _operands((4, 5), 48, 64, torch.bfloat16, False, seed=7)
    got = skinny.linear(x, w, config=CFG)
    assert got.shape == (4, 5, 48)
    _assert_close(got, x, w, None)
    out = torch.zeros(4, 5, 48, dtype=torch.bfloat16, device=DEV)
    assert skinny.linear(x, w, config=CFG, out=out) is out
    assert torch.equal(out, got)


def test_empty_products(nan_allocations):
    x = torch.zeros(20, 0, dtype=torch.bfloat16, device=DEV)
    w = torch.zeros(8, 0, dtype=torch.bfloat16, device=DEV)
    b = torch.arange(8, dtype=torch.bfloat16, device=DEV)
    assert torch.equal(skinny.linear(x, w, b), b.expand(20, 8))  # K = 0: the bias
    x0, w0, _ = _operands((0,), 8, 16, torch.bfloat16, False)
    assert skinny.linear(x0, w0).shape == (0, 8)
    with pytest.raises(ValueError, match="empty product"):
        skinny.partials(x0, w0)


def test_refuses_what_it_cannot_compute():
    x, w, _ = _operands((20,), 32, 64, torch.bfloat16, False)
    with pytest.raises(ValueError, match="skinny.linear: 129 rows of x"):
        skinny.linear(torch.zeros(129, 64, dtype=torch.bfloat16, device=DEV), w)
    for bad in (CFG._replace(block_n=48), CFG._replace(block_k=8), CFG._replace(split_k=0), CFG._replace(stages=0)):
        with pytest.raises(ValueError, match="powers of two"):
            skinny.linear(x, w, config=bad)
    with pytest.raises(ValueError, match="skinny.linear: x .* has 63 features"):
        skinny.linear(x[:, :63], w)
    odd = torch.zeros(20, 20, dtype=torch.bfloat16, device=DEV)  # rows of 40 bytes: no TMA box fits
    with pytest.raises(ValueError, match="16-byte aligned"):
        skinny.linear(odd, torch.zeros(8, 20, dtype=torch.bfloat16, device=DEV), tma=True)
    assert skinny.linear(odd, torch.ones(8, 20, dtype=torch.bfloat16, device=DEV), config=CFG).abs().sum() == 0


@pytest.mark.parametrize("h_dtype", [torch.float32, torch.bfloat16], ids=["fp32-stream", "bf16-stream"])
def test_partials_summed_by_the_norm(h_dtype, nan_allocations):
    """add_rms_norm(h, partials) = h + Σ partials (in split order, unrounded), then the norm: against the same
    sum done in PyTorch; and within bf16 rounding of add_rms_norm(h, linear(x, w))."""
    x, w, _ = _operands((2, 12), 64, 296, torch.bfloat16, False, seed=11)
    h = torch.randn(2, 12, 64, dtype=torch.float64).to(device=DEV, dtype=h_dtype)
    nw = torch.rand(64, dtype=torch.float64).add(0.5).to(device=DEV, dtype=torch.bfloat16)
    p = skinny.partials(x, w, config=CFG)
    assert p.shape == (2, 12, 64) and p.ws.shape == (3, 24, 64) and not p.ws.isnan().any()
    h_out, y = fused.add_rms_norm(h, p, nw, 1e-5)
    summed = torch.zeros(24, 64, dtype=torch.float32, device=DEV)
    for s in range(3):
        summed += p.ws[s]
    want_h = (h.float() + summed.view(2, 12, 64)).to(h_dtype)
    assert torch.equal(h_out, want_h)
    hf = want_h.double()
    want_y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.double()
    assert (y.double() - want_y).abs().max() <= 2 ** -7 * want_y.abs().max()
    _, y_ref = fused.add_rms_norm(h, skinny.linear(x, w, config=CFG), nw, 1e-5)
    assert (y.double() - y_ref.double()).abs().max() <= 2 ** -6 * y_ref.double().abs().max()
    assert torch.equal(p.materialize(), skinny.linear(x, w, config=CFG))


def test_partials_of_the_last_token():
    """A prefill keeps its last token's pending delta (`delta[:, -1]`): the partials of those rows."""
    x, w, _ = _operands((3, 7), 40, 128, torch.bfloat16, False, seed=2)
    p = skinny.partials(x, w, config=CFG._replace(split_k=2))
    last = p[:, -1]
    assert last.shape == (3, 40) and last.ws.shape == (2, 3, 40)
    assert torch.equal(last.materialize(), p.materialize()[:, -1])
    with pytest.raises(IndexError, match="leading axes"):
        p[..., 0]
    with pytest.raises(IndexError, match="leading axes"):
        p[0, 0, 0]


def test_glue_norm_sums_partials_or_materialises_them(nan_allocations):
    """Glue.norm hands split partials to a norm that takes them (the fused kernel) and materialises them for
    one that does not (the PyTorch twin): both give the stream plus the product."""
    from model.layers import Glue, RMSNorm, add_rms_norm, silu_mul

    x, w, _ = _operands((24,), 32, 64, torch.bfloat16, False, seed=4)
    h = torch.randn(24, 32, device=DEV, dtype=torch.float32)
    norm = RMSNorm(32, 1e-5, torch.bfloat16).to(DEV)
    norm.weight.data.fill_(1.0)
    want = h + skinny.linear(x, w, config=CFG).float()
    h1, _ = Glue(fused.add_rms_norm, silu_mul).norm(h.clone(), skinny.partials(x, w, config=CFG), norm)
    h2, _ = Glue(add_rms_norm, silu_mul).norm(h.clone(), skinny.partials(x, w, config=CFG), norm)
    assert (h1 - want).abs().max() <= 2 ** -7 * want.abs().max()
    assert torch.equal(h2, want)


def test_default_rule_keeps_about_one_program_per_sm():
    """On an H100/H200-sized GPU (132 SMs): 64 × 128 tiles, splits doubling while the programs stay within the
    SMs and every split keeps two K blocks; the interpreter gets one split."""
    for (N, K), split in {(2048, 4096): 4, (2048, 8192): 4, (3072, 2048): 2, (2048, 256): 1, (512, 2048): 8,
                          (8192, 2048): 1}.items():
        cfg = skinny.default_config(128, N, K, "cuda", sms=132)
        assert (cfg.block_n, cfg.block_k, cfg.split_k) == (64, 128, split), (N, K, cfg)
        assert -(-N // 64) * cfg.split_k <= 132 and -(-K // 128) >= 2 * cfg.split_k or cfg.split_k == 1
    assert skinny.default_config(128, 2048, 4096, "cpu").split_k == 1


def test_dispatch_routes_only_routed_shapes_on_the_gpu(monkeypatch):
    """skinny.takes: a routed (N, K), 17–128 rows, operands gemv supports (CUDA); small_linear and
    residual_product follow it, outside autograd."""
    x, w, _ = _operands((64,), 48, 64, torch.bfloat16, False)
    monkeypatch.setattr(skinny, "ROUTED", {})
    assert not skinny.takes(x, w)
    monkeypatch.setattr(skinny, "ROUTED", {(48, 64): CFG})
    hopper = DEV == "cuda" and torch.cuda.get_device_capability()[0] == skinny.ROUTED_SM_MAJOR
    assert skinny.takes(x, w) == hopper
    assert not skinny.takes(x[:16], w) and not skinny.takes(torch.zeros(129, 64, dtype=x.dtype, device=DEV), w)


def test_dispatch_keeps_a_shape_to_its_routed_rows(monkeypatch):
    """A shape in ROUTED_MAX_ROWS goes to the kernel only up to that many rows; others up to MAX_ROWS (the GPU
    checks of takes stubbed, so the row rule runs on any machine)."""
    monkeypatch.setattr(gemv, "supports", lambda x, w: True)
    monkeypatch.setattr(skinny, "_sm", lambda t: skinny.ROUTED_SM_MAJOR)
    monkeypatch.setattr(skinny, "ROUTED", {(48, 64): CFG, (32, 64): CFG})
    monkeypatch.setattr(skinny, "ROUTED_MAX_ROWS", {(48, 64): 64})
    w48, w32 = torch.zeros(48, 64), torch.zeros(32, 64)
    taken = {m: (skinny.takes(torch.zeros(m, 64), w48), skinny.takes(torch.zeros(m, 64), w32))
             for m in (16, 17, 64, 65, 128, 129)}
    assert taken == {16: (False, False), 17: (True, True), 64: (True, True), 65: (False, True),
                     128: (False, True), 129: (False, False)}
    assert skinny.takes(torch.zeros(4, 16, 64), w48) and not skinny.takes(torch.zeros(5, 16, 64), w48)


def test_routed_shapes_are_branch_final_products_of_our_models():
    """Every routed (N, K) is a product of a model preset whose output is the model width (a branch's last
    product, which the norm after it sums), and every routed launch is one `linear` accepts."""
    from kernels.bench_gemv import model_linears

    uses = {(n, k): use for name in ("mamba3-siso-1.5b", "mamba3-mimo-1.5b", "llama-3.2-1b", "transformer-1.5b")
            for use, n, k in model_linears(name)}
    assert skinny.ROUTED
    assert set(skinny.ROUTED_MAX_ROWS) <= set(skinny.ROUTED)
    assert all(skinny.MIN_ROWS <= m < skinny.MAX_ROWS for m in skinny.ROUTED_MAX_ROWS.values())
    for (n, k), cfg in skinny.ROUTED.items():
        assert (n, k) in uses and n == 2048, (n, k)
        assert uses[(n, k)].endswith(("out_proj", "o_proj", "fc2", "down_proj")), uses[(n, k)]
        x, w, _ = _operands((20,), 40, 2 * cfg.block_k, torch.bfloat16, False)
        _assert_close(skinny.linear(x, w, config=cfg._replace(split_k=2)), x, w, None)


@gpu
@pytest.mark.parametrize("M", [32, 128])
def test_model_dispatch_gpu(M, monkeypatch, nan_allocations):
    from model.layers import residual_product

    x, w, _ = _operands((M,), 2048, 4096, torch.bfloat16, False)
    monkeypatch.setattr(skinny, "ROUTED", {(2048, 4096): skinny.Config(64, 128, 4, 3, 4)})
    with torch.inference_mode():
        p = residual_product(x, w)
        assert isinstance(p, skinny.SplitPartials) and p.ws.shape[0] == 4
        _assert_close(p.materialize(), x, w, None)
        _assert_close(gemv.small_linear(x, w), x, w, None)
    monkeypatch.setattr(skinny, "ROUTED", {})
    with torch.inference_mode():
        assert isinstance(residual_product(x, w), torch.Tensor)


@gpu
@pytest.mark.parametrize("M", [17, 64, 128])
@pytest.mark.parametrize("shape", [(2048, 4096), (2048, 3824), (2048, 8192), (3072, 2048), (8672, 2048)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_real_shapes_gpu(shape, M, nan_allocations):
    x, w, b = _operands((M,), *shape, torch.bfloat16, True, seed=M)
    _assert_close(skinny.linear(x, w, b), x, w, b)
    _assert_close(skinny.linear(x, w, b, tma=False), x, w, b)


@gpu
def test_replays_from_a_cuda_graph_with_the_norm():
    """Product partials and the norm that sums them, captured once and replayed on new inputs."""
    x, w, _ = _operands((128,), 2048, 4096, torch.bfloat16, False)
    h = torch.randn(128, 2048, device="cuda")
    nw = torch.ones(2048, device="cuda", dtype=torch.bfloat16)
    cfg = skinny.Config(64, 128, 4, 3, 4)
    fused.add_rms_norm(h, skinny.partials(x, w, config=cfg), nw, 1e-5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_h, out_y = fused.add_rms_norm(h, skinny.partials(x, w, config=cfg), nw, 1e-5)
    x.copy_(torch.randn_like(x))
    h.copy_(torch.randn_like(h))
    graph.replay()
    want_h, want_y = fused.add_rms_norm(h, skinny.linear(x, w, config=cfg), nw, 1e-5)
    assert (out_h - want_h).abs().max() <= 2 ** -7 * want_h.abs().max()
    assert (out_y.float() - want_y.float()).abs().max() <= 2 ** -6 * want_y.float().abs().max()
