"""model/config.py: the preset table, lookups, JSON round trips, derived sizes, torch-freedom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import PRESETS, HybridConfig, Mamba3Config, from_dict, get_config, to_dict

EXPECTED_PRESETS = [
    "mamba3-siso-180m", "mamba3-siso-440m", "mamba3-siso-880m", "mamba3-siso-1.5b",
    "mamba3-mimo-180m", "mamba3-mimo-440m", "mamba3-mimo-880m", "mamba3-mimo-1.5b",
    "transformer-180m", "transformer-440m", "transformer-880m", "transformer-1.5b",
    "mamba2-1.5b", "llama-3.2-1b", "hybrid-1.5b",
    "mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny",
]


def test_preset_names_and_families():
    assert list(PRESETS) == EXPECTED_PRESETS
    families = {name: cfg.family for name, cfg in PRESETS.items()}
    assert {families[f"{f}-tiny"] for f in ("mamba3-siso", "mamba3-mimo", "mamba2", "transformer", "hybrid")} == \
        {"mamba3-siso", "mamba3-mimo", "mamba2", "transformer", "hybrid"}
    assert all(cfg.max_context > 0 for cfg in PRESETS.values())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError) as e:
        get_config("mamba4-1b")
    msg = str(e.value)
    assert "mamba4-1b" in msg and all(name in msg for name in PRESETS)


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_json_round_trip(name):
    cfg = get_config(name)
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg


@pytest.mark.parametrize("bad, match", [
    ({"family": "rwkv", "name": "x"}, "unknown family"),
    ({**to_dict(get_config("mamba3-siso-tiny")), "colour": 1}, "no field"),
    ({**to_dict(get_config("mamba3-siso-tiny")), "family": "mamba3-mimo"}, "describe family mamba3-siso"),
], ids=["family", "field", "mismatch"])
def test_from_dict_rejects(bad, match):
    with pytest.raises(ValueError, match=match):
        from_dict(bad)


@pytest.mark.parametrize("name, d_proj, nheads, n_angles, extra", [
    ("mamba3-siso-1.5b", 8672, 64, 32, {"pairing": "interleaved", "mimo_rank": 1}),
    ("mamba3-mimo-1.5b", 9440, 64, 32, {"pairing": "half", "mimo_rank": 4, "chunk_size": 16}),
    ("mamba3-siso-180m", 3432, 24, 32, {"n_layer": 12, "d_intermediate": 1500}),
    ("mamba3-mimo-880m", 7344, 48, 32, {"d_intermediate": 2800}),
    ("mamba2-1.5b", 8512, 64, None, {"conv_dim": 4352, "chunk_size": 256}),
    ("hybrid-1.5b", 8672, 64, 32, {"attn_layer_idx": (4, 12, 20),
                                   "mamba_layer_idx": tuple(i for i in range(24) if i not in (4, 12, 20))}),
])
def test_derived_sizes(name, d_proj, nheads, n_angles, extra):
    cfg = get_config(name)
    assert (cfg.d_proj, cfg.nheads) == (d_proj, nheads)
    if n_angles is not None:
        assert cfg.n_angles == n_angles
    for key, value in extra.items():
        assert getattr(cfg, key) == value, key


def test_llama_3_2_1b_is_exact():
    cfg = get_config("llama-3.2-1b")
    assert (cfg.d_model, cfg.n_layer, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_intermediate) == \
        (2048, 16, 32, 8, 64, 8192)
    assert (cfg.vocab_size, cfg.tie_embeddings, cfg.norm_eps, cfg.rope_theta) == (128_256, True, 1e-5, 500_000.0)
    assert (cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
            cfg.rope_original_max_position, cfg.max_context) == (32.0, 1.0, 4.0, 8192, 131_072)


@pytest.mark.parametrize("make, match", [
    (lambda: Mamba3Config("x", 64, 2, 96, state_dtype="float16"), "state_dtype"),
    (lambda: Mamba3Config("x", 64, 2, 96, headdim=48), "multiple of headdim"),
    (lambda: Mamba3Config("x", 64, 2, 96, d_state=2, headdim=16), "no rotary angle"),
    (lambda: HybridConfig("x", 64, 2, 96, headdim=16), "attn_layer_idx"),
    (lambda: HybridConfig("x", 64, 2, 96, headdim=16, attn_layer_idx=(2,)), "attn_layer_idx"),
    (lambda: HybridConfig("x", 64, 3, 96, headdim=16, attn_layer_idx=(2, 1)), "sorted"),
], ids=["state-dtype", "headdim", "angles", "no-attn", "attn-range", "attn-order"])
def test_invalid_configs_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_config_and_cost_import_no_torch():
    code = "import sys, model, model.config, model.cost; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
