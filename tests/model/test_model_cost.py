"""model/cost.py against the spec's worked numbers (docs/mamba3-spec.md §4.3, §4.4, §5, §6.1) and
against the instantiated modules (parameters on the meta device, cache tensors' bytes)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model import cost
from model.config import PRESETS, get_config
from model.factory import instantiate

MiB = 1 << 20


@pytest.mark.parametrize("name, params_m", [
    ("mamba3-siso-180m", 185.9), ("mamba3-siso-440m", 443.0), ("mamba3-siso-880m", 892.8),
    ("mamba3-siso-1.5b", 1494.7), ("mamba3-mimo-180m", 186.8), ("mamba3-mimo-440m", 444.2),
    ("mamba3-mimo-880m", 892.8), ("mamba3-mimo-1.5b", 1494.7), ("llama-3.2-1b", 1235.8),
])
def test_param_counts_match_spec(name, params_m):
    assert round(cost.param_count(get_config(name)) / 1e6, 1) == params_m


def test_siso_and_mimo_1_5b_are_exactly_equal():
    assert cost.param_count(get_config("mamba3-siso-1.5b")) == cost.param_count(get_config("mamba3-mimo-1.5b")) \
        == 1_494_723_584


@pytest.mark.parametrize("size", ["180m", "440m", "880m", "1.5b"])
def test_transformers_sized_to_mamba3(size):
    siso = cost.param_count(get_config(f"mamba3-siso-{size}"))
    assert abs(cost.param_count(get_config(f"transformer-{size}")) / siso - 1) < 5e-4


@pytest.mark.parametrize("name, state_dtype, per_layer, per_seq", [
    ("mamba3-siso-180m", "float32", 798_720, None),
    ("mamba3-siso-440m", "float32", 1_064_960, None),
    ("mamba3-siso-880m", "float32", 1_597_440, None),
    ("mamba3-siso-1.5b", "float32", 2_129_920, 51_118_080),  # 48.75 MiB
    ("mamba3-mimo-1.5b", "float32", 2_179_072, 52_297_728),
    ("mamba3-siso-1.5b", "bfloat16", 1_081_344, 24.75 * MiB),
    ("mamba2-1.5b", None, MiB + 34 * 1024, None),
])
def test_state_bytes_match_spec(name, state_dtype, per_layer, per_seq):
    cfg = get_config(name)
    if state_dtype:
        cfg = dataclasses.replace(cfg, state_dtype=state_dtype)
    fixed = cost.state_bytes_fixed(cfg)
    assert fixed == per_layer * cfg.n_layer
    if per_seq is not None:
        assert fixed == per_seq
    assert cost.kv_bytes_per_token(cfg) == 0
    assert cost.state_bytes_per_seq(cfg, 100_000) == fixed


def test_llama_kv_is_32_kib_per_token_and_matches_1560_mamba_tokens():
    llama = get_config("llama-3.2-1b")
    assert cost.kv_bytes_per_token(llama) == 32 * 1024
    assert cost.state_bytes_fixed(llama) == 0
    assert cost.state_bytes_per_seq(llama, 1000) == 1000 * 32 * 1024
    assert cost.state_bytes_fixed(get_config("mamba3-siso-1.5b")) / cost.kv_bytes_per_token(llama) == 1560


def test_hybrid_state_is_mamba_layers_plus_attention_kv():
    cfg = get_config("hybrid-1.5b")
    assert cost.state_bytes_fixed(cfg) == 21 * 2_129_920
    assert cost.kv_bytes_per_token(cfg) == 3 * 2 * 8 * 64 * 2
    assert cost.cache_bytes(cfg, 4, 1000) == 4 * (21 * 2_129_920 + 1000 * 6144)


@pytest.mark.parametrize("name, gflop", [("mamba3-siso-1.5b", 3.08), ("mamba3-mimo-1.5b", 3.31)])
def test_decode_flops_per_token_match_spec(name, gflop):
    cfg = get_config(name)
    assert cost.decode_flops_per_token(cfg, 0) == pytest.approx(gflop * 1e9, rel=5e-3)
    assert cost.decode_flops_per_token(cfg, 10_000) == cost.decode_flops_per_token(cfg, 0)


def test_llama_decode_flops_grow_0_13_mflop_per_context_token():
    cfg = get_config("llama-3.2-1b")
    assert cost.decode_flops_per_token(cfg, 0) == pytest.approx(2.47e9, rel=2e-3)
    assert cost.decode_flops_per_token(cfg, 1001) - cost.decode_flops_per_token(cfg, 1) == 1000 * 131_072


@pytest.mark.parametrize("name, ai_128", [("mamba3-siso-1.5b", 24.5), ("mamba3-mimo-1.5b", 25.8)])
def test_decode_intensity_matches_spec(name, ai_128):
    cfg = get_config(name)
    assert cost.decode_cost(cfg, 128, 0).intensity == pytest.approx(ai_128, abs=0.15)
    assert cost.decode_cost(cfg, 1, 0).intensity == pytest.approx(1.0, abs=0.1)


def test_decode_bytes_read_weights_once_and_state_twice():
    cfg = get_config("mamba3-siso-1.5b")
    one, many = cost.decode_cost(cfg, 1, 0), cost.decode_cost(cfg, 128, 5000)
    assert cost.weight_bytes(cfg) == pytest.approx(3.0e9, rel=0.01)
    per_seq = (many.bytes - cost.weight_bytes(cfg)) / 128
    assert per_seq == one.bytes - cost.weight_bytes(cfg)
    assert per_seq == pytest.approx(102e6, rel=0.01)  # spec §5.3: ≈ 102 MB of state traffic per step


def test_transformer_decode_bytes_grow_with_context():
    cfg = get_config("llama-3.2-1b")
    grow = cost.decode_cost(cfg, 8, 2048).bytes - cost.decode_cost(cfg, 8, 1024).bytes
    assert grow == 8 * 1024 * 32 * 1024


def test_transformer_prefill_of_one_token_is_a_decode_step():
    cfg = get_config("transformer-440m")
    for context in (0, 7, 300):
        assert cost.prefill_flops(cfg, 1, context) == cost.decode_flops_per_token(cfg, context)


def test_transformer_prefill_splits_exactly():
    cfg, head = get_config("llama-3.2-1b"), 2 * 128_256 * 2048
    whole = cost.prefill_flops(cfg, 1000)
    assert cost.prefill_flops(cfg, 400) + cost.prefill_flops(cfg, 600, context=400) - head == whole


@pytest.mark.parametrize("name, R, T, chunks", [
    ("mamba3-siso-1.5b", 1, 65, [64, 1]), ("mamba3-siso-1.5b", 1, 200, [64, 64, 64, 8]),
    ("mamba3-mimo-1.5b", 4, 37, [16, 16, 5]),
])
def test_mamba3_prefill_counts_dense_chunk_tiles(name, R, T, chunks):
    """Prefill FLOPs = per-token work × T + the masked (nR)² tiles of every chunk + one LM head row."""
    cfg = get_config(name)
    L, H, N, P, Q = 24, 64, 128, 64, cfg.chunk_size
    head = 2 * cfg.padded_vocab * cfg.d_model

    def intra(sizes):
        return L * sum(H * 2 * (n * R) ** 2 * (N + P) for n in sizes)

    per_token = (cost.prefill_flops(cfg, Q) - intra([Q]) - head) // Q
    assert cost.prefill_flops(cfg, T) == T * per_token + intra(chunks) + head


def test_prefill_cost_matches_paper_scale():
    """128 × 512 prefill of the 1.5B SISO model: the anchors' measured 0.50 s is MFU 0.36–0.49."""
    flops = cost.prefill_cost(get_config("mamba3-siso-1.5b"), 128, 512).flops
    assert 0.36 < flops / 0.4998 / 795e12 < 0.49


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_and_weight_bytes_match_instantiated_model(name):
    cfg = get_config(name)
    for dtype, nbytes in ((torch.bfloat16, 2), (torch.float32, 4)):
        model = instantiate(cfg, device="meta", dtype=dtype)
        params = list(model.parameters())  # shared (tied) parameters come once
        assert sum(p.numel() for p in params) == cost.param_count(cfg)
        assert sum(p.numel() * p.element_size() for p in params) == cost.weight_bytes(cfg, nbytes)


@pytest.mark.parametrize("name", list(PRESETS))
def test_cache_bytes_match_allocated_cache(name):
    cfg = get_config(name)
    model = instantiate(cfg, device="meta", dtype=torch.bfloat16)
    assert model.allocate_cache(batch=3, max_context=17).nbytes == cost.cache_bytes(cfg, 3, 17)
