"""model/factory.py and model/scan.py: lookups and errors, implementation selection that fails
loudly, seeded initialisation per spec §1.1 / §4.2 / §6.1."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from model import scan
from model.config import PRESETS, get_config
from model.factory import build_model, instantiate

TINY = ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny"]


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError, match="valid: mamba3-siso-180m, .*hybrid-tiny"):
        build_model("llama-4")


@pytest.mark.parametrize("name, impl, device, error, match", [
    ("mamba3-siso-tiny", "fast", "cpu", ValueError, "unknown impl 'fast'; valid: sequential, chunked, triton"),
    ("mamba3-siso-tiny", "triton", "cpu", RuntimeError, "needs a CUDA device"),
    ("hybrid-tiny", "triton", "cpu", RuntimeError, "needs a CUDA device"),
    ("transformer-tiny", "triton", "cpu", RuntimeError, "needs a CUDA device"),
    ("transformer-tiny", "fast", "meta", ValueError, "no attention path"),
])
def test_impl_errors(name, impl, device, error, match):
    with pytest.raises(error, match=match):
        build_model(name, impl=impl, device=device)


def test_triton_missing_kernel_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels.mamba3.segmented", None)  # importing it raises ImportError
    scan._triton_ops.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"unavailable: kernels\.mamba3\.segmented\.prefill cannot be loaded"):
            scan.scan_ops("triton", 64)
    finally:
        scan._triton_ops.cache_clear()


@pytest.mark.parametrize("name", TINY)
def test_model_records_config_and_impl(name):
    model = build_model(name, impl="sequential")
    assert model.config == get_config(name) and model.impl == "sequential"
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training


def test_meta_build_of_every_preset_allocates_nothing():
    for name in PRESETS:
        model = instantiate(get_config(name), device="meta")
        assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_same_seed_same_weights_across_dtypes(name):
    a = build_model(name, dtype=torch.float32, seed=5).state_dict()
    b = build_model(name, dtype=torch.bfloat16, seed=5).state_dict()
    c = build_model(name, dtype=torch.float32, seed=6).state_dict()
    assert all(torch.equal(a[k].to(b[k].dtype), b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def _bound(w: torch.Tensor) -> float:
    return w.float().abs().max().item()


def test_mamba3_init_follows_spec():
    cfg = get_config("mamba3-mimo-tiny")
    model = build_model(cfg, dtype=torch.bfloat16, seed=0)
    emb = model.backbone.embedding.weight.float()
    assert emb.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.lm_head.weight is model.backbone.embedding.weight
    for blk in model.backbone.layers:
        m = blk.mixer
        assert {p.dtype for p in (m.dt_bias, m.B_bias, m.C_bias, m.D, m.mimo_x, m.mimo_z, m.mimo_o)} == {torch.float32}
        dt = F.softplus(m.dt_bias)
        assert (dt >= cfg.dt_min * 0.999).all() and (dt <= cfg.dt_max * 1.001).all()
        assert len(set(dt.tolist())) == cfg.nheads  # drawn, not constant
        assert torch.all(m.B_bias == 1) and torch.all(m.C_bias == 1) and torch.all(m.D == 1)
        assert torch.all(m.mimo_x == 0.25) and torch.all(m.mimo_z == 1) and torch.all(m.mimo_o == 0.25)
        assert torch.all(m.B_norm.weight == 1) and torch.all(blk.norm.weight == 1)
        assert 0.9 / math.sqrt(cfg.d_model) < _bound(m.in_proj.weight) <= 1 / math.sqrt(cfg.d_model)
        out_bound = 1 / math.sqrt(cfg.d_inner) / math.sqrt(cfg.n_layer)
        assert 0.9 * out_bound < _bound(m.out_proj.weight) <= out_bound * 1.004  # bf16 rounding
        fc2_bound = 1 / math.sqrt(cfg.d_intermediate) / math.sqrt(cfg.n_layer)
        assert 0.9 * fc2_bound < _bound(blk.mlp.fc2.weight) <= fc2_bound * 1.004


def test_mamba2_init_follows_spec():
    cfg = get_config("mamba2-tiny")
    m = build_model(cfg, dtype=torch.float32, seed=0).backbone.layers[0].mixer
    A = torch.exp(m.A_log)
    assert (A >= 1).all() and (A <= 16).all() and len(set(A.tolist())) == cfg.nheads
    assert torch.all(m.D == 1) and torch.all(m.norm.weight == 1)
    assert _bound(m.conv1d.weight) <= 0.5 and _bound(m.conv1d.bias) <= 0.5  # 1/√d_conv
    assert m.conv1d.weight.shape == (cfg.conv_dim, 1, cfg.d_conv)


def test_transformer_init_follows_hf():
    model = build_model("transformer-tiny", dtype=torch.float32, seed=0)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(model.model.norm.weight == 1)
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("name", ["transformer-tiny", "hybrid-tiny", "mamba3-mimo-tiny", "mamba2-tiny"])
def test_every_linear_calls_the_glue_product(name):
    """use_glue reaches every Linear, the head included (the hook of the Triton matrix-vector kernel):
    one prefill and one decode step call the glue's product once per Linear each, or once per row stack
    (Llama's q/k/v and gate/up) with the stacked weight, whose rows are the parameters themselves."""
    from model.layers import Glue, Linear, add_rms_norm, silu_mul

    model = build_model(name, dtype=torch.float32)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, Linear) and m.product is F.linear for m in linears)
    calls = []

    def product(x, w, b=None):
        calls.append((w.data_ptr(), tuple(w.shape)))
        return F.linear(x, w, b)

    stacks = [[getattr(m, n) for n in names] for m in model.modules() for names in getattr(m, "row_stacks", ())]
    stacked = {id(lin) for group in stacks for lin in group}
    expected = [(m.weight.data_ptr(), tuple(m.weight.shape)) for m in linears if id(m) not in stacked]
    for group in stacks:
        assert [g.weight.data_ptr() for g in group[1:]] == [
            g.weight.data_ptr() + g.weight.shape[0] * g.weight.stride(0) * g.weight.element_size()
            for g in group[:-1]]  # the parts are consecutive rows of one buffer
        expected.append((group[0].weight.data_ptr(), (sum(g.weight.shape[0] for g in group), group[0].weight.shape[1])))
    assert bool(stacks) == (name == "transformer-tiny")
    model.use_glue(Glue(add_rms_norm, silu_mul, product))
    cache = model.allocate_cache(batch=1, max_context=4)
    model.prefill(torch.tensor([[1, 2, 3]]), cache)
    model.decode_step(torch.tensor([4]), cache)
    assert sorted(calls) == sorted(2 * expected)


def _logits(model, tokens):
    cache = model.allocate_cache(batch=tokens.shape[0], max_context=tokens.shape[1] + 2)
    model.prefill(tokens, cache)
    return model.decode_step(tokens[:, -1], cache)


def _rows_adjacent(linears) -> bool:
    w0 = linears[0].weight
    at = w0.storage_offset()
    for lin in linears:
        w = lin.weight
        if w.untyped_storage().data_ptr() != w0.untyped_storage().data_ptr() or w.storage_offset() != at:
            return False
        at += w.numel()
    return True


def test_stacked_weights_follow_loading_and_moves():
    """Llama's q/k/v and gate/up are one buffer each: loading in place reaches the product, a dtype move is
    seen and re-stacked, stacking inside inference mode leaves ordinary parameters (loadable in place later),
    and the state dict keeps the Hugging Face names and shapes."""
    from model.layers import stacked_weight

    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    a = build_model("transformer-tiny", dtype=torch.float32, seed=1)
    b = build_model("transformer-tiny", dtype=torch.float32, seed=2)
    attn, mlp = b.model.layers[0].self_attn, b.model.layers[0].mlp
    assert _rows_adjacent([attn.q_proj, attn.k_proj, attn.v_proj]) and _rows_adjacent([mlp.gate_proj, mlp.up_proj])
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert "model.layers.0.self_attn.k_proj.weight" in b.state_dict()
    assert not torch.allclose(_logits(a, tokens), _logits(b, tokens))
    b.load_state_dict(a.state_dict())  # copies into the stacked buffers
    assert _rows_adjacent([attn.q_proj, attn.k_proj, attn.v_proj])
    torch.testing.assert_close(_logits(b, tokens), _logits(a, tokens), rtol=0, atol=0)

    b = b.to(torch.float64)  # every parameter gets a storage of its own
    attn, mlp = b.model.layers[0].self_attn, b.model.layers[0].mlp
    assert not _rows_adjacent([attn.q_proj, attn.k_proj, attn.v_proj])
    with torch.inference_mode():
        got = _logits(b, tokens)  # re-stacks on the way
    assert _rows_adjacent([attn.q_proj, attn.k_proj, attn.v_proj]) and _rows_adjacent([mlp.gate_proj, mlp.up_proj])
    assert not attn.q_proj.weight.is_inference()
    torch.testing.assert_close(got, _logits(a, tokens).double(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        attn.k_proj.weight.zero_()  # an in-place update outside inference mode is allowed
        assert torch.count_nonzero(stacked_weight(attn.q_proj, attn.k_proj, attn.v_proj)[32:48]) == 0


def test_separate_products_give_the_stacked_logits():
    """The benchmark's A/B switch: inside `separate_products` each Linear runs alone; same logits."""
    from model.layers import Glue, add_rms_norm, separate_products, silu_mul

    model = build_model("transformer-tiny", dtype=torch.float64)
    calls = []
    model.use_glue(Glue(add_rms_norm, silu_mul, lambda x, w, b=None: calls.append(1) or F.linear(x, w, b)))
    tokens = torch.tensor([[2, 7, 1, 8]])
    stacked, n_stacked = _logits(model, tokens), len(calls)
    with separate_products():
        separate = _logits(model, tokens)
    torch.testing.assert_close(separate, stacked, rtol=1e-12, atol=1e-12)
    # per layer and pass (prefill, decode): 3 Linears more unstacked (q/k/v: 3 for 1; gate/up: 2 for 1)
    assert len(calls) - n_stacked == n_stacked + 2 * 3 * model.config.n_layer


def test_stacked_weight_keeps_autograd():
    """With autograd on, the stacked product is a differentiable copy: gradients reach each part."""
    from model.layers import stacked_weight

    model = build_model("transformer-tiny", dtype=torch.float32)
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, model.config.d_model)
    q, k, v = attn._project(x)
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()
    for lin, scale in ((attn.q_proj, 1), (attn.k_proj, 2), (attn.v_proj, 3)):
        torch.testing.assert_close(lin.weight.grad, scale * x.sum(0).expand_as(lin.weight))
    assert stacked_weight(attn.q_proj, attn.k_proj).requires_grad


def test_stacking_works_for_a_model_built_or_loaded_in_inference_mode():
    """Parameters made in inference mode are inference tensors: stacking replaces them by ordinary ones
    (their .data cannot be re-pointed), so such a model prefills inside and outside the mode, also after an
    assign-load of tensors made there; weights of mixed dtypes are refused, not silently promoted."""
    from model.layers import stacked_weight

    tokens = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        model = build_model("transformer-tiny", dtype=torch.float32, seed=4)
        inside = _logits(model, tokens)
    torch.testing.assert_close(_logits(model, tokens), inside, rtol=0, atol=0)
    attn = model.model.layers[0].self_attn
    assert not attn.q_proj.weight.is_inference() and _rows_adjacent([attn.q_proj, attn.k_proj, attn.v_proj])
    other = build_model("transformer-tiny", dtype=torch.float32, seed=5)
    with torch.inference_mode():
        model.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    torch.testing.assert_close(_logits(model, tokens), _logits(other, tokens), rtol=0, atol=0)
    attn.k_proj.weight.data = attn.k_proj.weight.data.double()
    with pytest.raises(ValueError, match="must share K, dtype and device"), torch.no_grad():
        stacked_weight(attn.q_proj, attn.k_proj, attn.v_proj)
    assert attn.q_proj.weight.dtype == torch.float32  # nothing was moved
