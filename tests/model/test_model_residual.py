"""Deferred branch products (model.layers.PendingProduct): a block's last product left to the next pre-norm,
which adds it to the residual stream as one product, gives the plain glue's logits; the pending product
slices, materialises and adds like x·Wᵀ, and refuses what it does not support."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from model import layers
from model.factory import build_model
from model.layers import Glue, PendingProduct, add_rms_norm, pending_product, silu_mul

FAMILIES = ["mamba3-siso-tiny", "transformer-tiny", "hybrid-tiny"]


def _rel(got, want) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def _counting_glue(returned: list) -> Glue:
    """The twins with `pending_product` as the branch-final product; what it returns is recorded."""
    def residual(x, w, b=None):
        out = pending_product(x, w, b)
        returned.append(type(out).__name__)
        return out

    return Glue(add_rms_norm, silu_mul, F.linear, residual)


def _run(model, tokens):
    """Prefill of all but the last 3 tokens, then 3 decode steps: the list of logits."""
    cache = model.allocate_cache(batch=tokens.shape[0], max_context=tokens.shape[1])
    out = [model.prefill(tokens[:, :-3], cache)]
    return out + [model.decode_step(tokens[:, t], cache) for t in range(tokens.shape[1] - 3, tokens.shape[1])]


# fp32: only the order of one add changes (addmm vs product then add; ≤ 1.2e-7 by norm); bf16: the Mamba-3 and
# hybrid residual stream is fp32 and CPU has no fp32-output addmm, so they add as before, bit for bit; Llama's
# bf16 stream is added inside the product, no longer after rounding the branch output to bf16 (≤ 4e-3 by norm)
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", FAMILIES)
def test_deferred_branch_products_give_the_plain_logits(name, dtype, monkeypatch):
    """Prefill and decode logits with every branch's last product deferred (mixer/attention out_proj or
    o_proj, fc2 or down_proj) match the plain glue's; and the deferral happens: each of those products
    returned a pending product, and each was added to the stream by the next norm (add_to), per layer and
    pass two of each."""
    model = build_model(name, dtype=dtype, seed=3)
    tokens = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(4))
    want = _run(model, tokens)
    returned, added = [], []
    add_to = PendingProduct.add_to
    monkeypatch.setattr(PendingProduct, "add_to",
                        lambda self, h, **kw: added.append((self.shape, kw)) or add_to(self, h, **kw))
    model.use_glue(_counting_glue(returned))
    got = _run(model, tokens)
    passes = 4  # one prefill, three decode steps
    assert returned == ["PendingProduct"] * (2 * model.config.n_layer * passes)
    assert len(added) == len(returned)
    assert all(kw == {"in_place": True} for _, kw in added)  # into the stream (Glue.norm)
    assert added[2 * model.config.n_layer - 1][0] == (2, model.config.d_model)  # the head's: the last token only
    for t, (g, w) in enumerate(zip(got, want)):
        assert _rel(g, w) < TOL[dtype], (t, _rel(g, w))
        if dtype == torch.bfloat16 and name != "transformer-tiny":
            assert torch.equal(g, w), t
    model.use_glue(Glue(add_rms_norm, silu_mul))  # and back: nothing pending any more
    returned.clear()
    assert all(torch.equal(g, w) for g, w in zip(_run(model, tokens), want)) and not returned


def test_a_branch_product_with_a_bias_runs_at_once():
    """The hybrid's attention out_proj with a bias is computed, not deferred; the others still are."""
    from model.config import get_config

    cfg = dataclasses.replace(get_config("hybrid-tiny"), attn_out_bias=True)
    model = build_model(cfg, dtype=torch.float32, seed=0)
    tokens = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    want = _run(model, tokens)
    returned = []
    model.use_glue(_counting_glue(returned))
    got = _run(model, tokens)
    per_pass = ["PendingProduct"] * (2 * cfg.n_layer)
    per_pass[2 * cfg.attn_layer_idx[0]] = "Tensor"
    assert returned == per_pass * 4
    for g, w in zip(got, want):
        assert _rel(g, w) < 1e-5


def test_only_the_branch_final_linears_take_the_residual_product():
    model = build_model("hybrid-tiny", dtype=torch.float32)
    marked = {name for name, m in model.named_modules() if getattr(m, "ends_branch", False)}
    n = model.config.n_layer
    assert marked == ({f"backbone.layers.{i}.mixer.out_proj" for i in range(n)}
                      | {f"backbone.layers.{i}.mlp.fc2" for i in range(n)})
    glue = _counting_glue([])
    model.use_glue(glue)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            assert m.product is (glue.residual if name in marked else F.linear), name
    llama = build_model("transformer-tiny", dtype=torch.float32)
    assert {name.split(".", 3)[-1] for name, m in llama.named_modules() if getattr(m, "ends_branch", False)} == {
        "self_attn.o_proj", "mlp.down_proj"}


def _operands(dtype, lead=(3, 5), k=24, n=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    return x, w


def test_pending_product_slices_and_materialises():
    x, w = _operands(torch.float32)
    p = PendingProduct(x, w)
    assert p.shape == (3, 5, 16) and p.dtype == torch.float32 and p.device == x.device
    torch.testing.assert_close(p.materialize(), F.linear(x, w), rtol=0, atol=0)
    for index in [(slice(None), -1), 1, (0, slice(1, 4)), torch.tensor([2, 0])]:
        q = p[index]
        assert isinstance(q, PendingProduct) and q.shape == F.linear(x, w)[index].shape
        torch.testing.assert_close(q.materialize(), F.linear(x, w)[index], rtol=1e-6, atol=1e-6)
    assert p[:, -1].x.shape == (3, 24)  # the product of the kept rows only


@pytest.mark.parametrize("h_dtype, x_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                              (torch.float32, torch.bfloat16), (torch.float64, torch.float64)])
def test_add_to_is_h_plus_the_product(h_dtype, x_dtype):
    x, w = _operands(x_dtype)
    h = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1)).to(h_dtype)
    got = PendingProduct(x, w).add_to(h)
    assert got.dtype == h_dtype and got.shape == h.shape
    exact = h.double() + x.double() @ w.double().T
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[x_dtype]  # CPU rounds a bf16 product
    assert _rel(got, exact) < tol
    if x_dtype != h_dtype:  # CPU: no fp32-output addmm, so the product is rounded and added, as before
        assert torch.equal(got, h + F.linear(x, w).to(h_dtype))
    # in place: the same sum, written into h (outside autograd); a strided h (the prefill's last-token rows) is
    # left alone and the sum returned new
    held = h.clone()
    with torch.no_grad():
        into = PendingProduct(x, w).add_to(h, in_place=True)
    assert into is h and torch.equal(h, got)
    assert not torch.equal(held, h)
    hs = torch.randn(3, 7, 16).to(h_dtype)[:, -1]
    held = hs.clone()
    with torch.no_grad():
        sliced = PendingProduct(x, w)[:, -1].add_to(hs, in_place=True)
    assert sliced is not hs and torch.equal(hs, held)
    torch.testing.assert_close(sliced, hs + F.linear(x[:, -1], w).to(h_dtype),
                               **({"rtol": 2e-2, "atol": 2e-2} if h_dtype == torch.bfloat16 else {}))
    h = held.clone()
    assert PendingProduct(x, w)[:, -1].add_to(h, in_place=True) is not h and torch.equal(h, held)  # autograd on


def test_pending_product_refuses_misuse():
    x, w = _operands(torch.float32)
    p = PendingProduct(x, w)
    with pytest.raises(IndexError, match="leading"):
        p[..., 0]
    with pytest.raises(IndexError, match="leading"):
        p[0, 0, 0]
    with pytest.raises(IndexError, match="leading"):
        p[None]
    with pytest.raises(ValueError, match="expected \\(3, 5, 16\\)"):
        p.add_to(torch.zeros(3, 5, 24))
    with pytest.raises(ValueError, match="expected"):
        p.add_to(p)
    with pytest.raises(ValueError, match="\\(N, K\\)"):
        PendingProduct(x, w.T)
    with pytest.raises(ValueError, match="share dtype"):
        PendingProduct(x, w.double())
    with pytest.raises(TypeError):
        torch.zeros(3, 5, 16) + p
    with pytest.raises(AttributeError):
        add_rms_norm(torch.zeros(3, 5, 16), p, torch.ones(16), 1e-5)  # only Glue.norm resolves a pending delta


def test_residual_product_defers_prefill_sized_gpu_products_only(monkeypatch):
    """impl "triton"'s branch-final product on CPU tensors is the glue's product (gemv.small_linear), computed
    now; `residual_add_apart` lifts the row threshold out of reach and puts it back. (The GPU side, products
    deferred at a prefill's rows, is tests/model/test_model_cuda.py's.)"""
    from kernels import gemv

    calls = []
    monkeypatch.setattr(gemv, "small_linear", lambda x, w, b=None: calls.append(b is None) or F.linear(x, w, b))
    x, w = _operands(torch.bfloat16, lead=(2, 300))
    with torch.no_grad():
        assert isinstance(layers.residual_product(x, w), torch.Tensor)  # CPU
    assert calls == [True]
    assert layers.residual_product.takes_deferred
    assert layers.RESIDUAL_PRODUCT_MIN_ROWS == 256
    with layers.residual_add_apart():
        assert not layers.RESIDUAL_PRODUCT_MIN_ROWS <= 10 ** 12
    assert layers.RESIDUAL_PRODUCT_MIN_ROWS == 256
