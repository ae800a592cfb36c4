"""Checkpoint folders: round trips in both public layouts, Hugging Face `LlamaForCausalLM` logits on
the same random tiny checkpoint (both directions), the repo's rounded MLP width, and one-line errors
for folders that do not match their config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoints import CheckpointError, config_from_json, config_to_json, save_checkpoint
from model.config import PRESETS, get_config
from model.factory import build_model

TINY = ["mamba3-siso-tiny", "mamba3-mimo-tiny", "mamba2-tiny", "transformer-tiny", "hybrid-tiny"]
transformers = pytest.importorskip("transformers")


def _tokens(batch: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_json_round_trip(name):
    cfg = get_config(name)
    back = config_from_json(json.loads(json.dumps(config_to_json(cfg))), name=cfg.name)
    # config.json carries no runtime choices: the cap on context and the state dtype keep defaults
    assert dataclasses.replace(back, max_context=cfg.max_context) == cfg


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("name", TINY)
def test_save_load_round_trip(tmp_path, name, dtype):
    model = build_model(name, dtype=dtype, impl="sequential", seed=11)
    save_checkpoint(model, tmp_path)
    loaded = build_model(tmp_path, dtype=dtype, impl="sequential")
    assert loaded.impl == "sequential" and loaded.config.family == model.config.family
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) and want[k].dtype == got[k].dtype for k in want)
    tokens = _tokens(2, 9)
    assert torch.equal(loaded(tokens), model(tokens))


def test_tied_head_stored_once_and_names_match_state_spaces(tmp_path):
    save_checkpoint(build_model("hybrid-tiny"), tmp_path)
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in names
    assert {"backbone.embedding.weight", "backbone.norm_f.weight", "backbone.layers.0.mixer.in_proj.weight",
            "backbone.layers.0.mixer.B_bias", "backbone.layers.0.mixer.C_norm.weight", "backbone.layers.0.mixer.D",
            "backbone.layers.0.norm2.weight", "backbone.layers.0.mlp.fc1.weight",
            "backbone.layers.2.mixer.in_proj.weight", "backbone.layers.2.mixer.out_proj.weight"} <= names
    assert not any(n.startswith("backbone.layers.2.mixer.") and n.endswith("_bias") for n in names)


def _hf_llama(tmp_path: Path, tie: bool) -> "transformers.LlamaForCausalLM":
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, vocab_size=256, rms_norm_eps=1e-5, tie_word_embeddings=tie, max_position_embeddings=16384,
        rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():  # larger than HF's 0.02 init, so attention is far from uniform
            p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_transformer_equals_hf_llama(tmp_path, tie):
    hf = _hf_llama(tmp_path, tie)
    model = build_model(tmp_path, dtype=torch.float32)
    assert model.config.family == "transformer" and model.config.rope_scaling_factor == 32.0
    tokens = _tokens(2, 17, seed=1)
    with torch.no_grad():
        want = hf(tokens).logits
    assert torch.allclose(model(tokens), want, rtol=1e-5, atol=1e-5)
    cache = model.allocate_cache(batch=2, max_context=24)
    steps = [model.prefill(tokens[:, :8], cache)] + [model.decode_step(tokens[:, t], cache) for t in range(8, 17)]
    assert torch.allclose(torch.stack(steps, dim=1), want[:, 7:], rtol=1e-5, atol=1e-5)


def test_hf_llama_loads_our_transformer(tmp_path):
    model = build_model("transformer-tiny", dtype=torch.float32, seed=3)
    save_checkpoint(model, tmp_path)
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = _tokens(2, 12, seed=2)
    with torch.no_grad():
        assert torch.allclose(hf(tokens).logits, model(tokens), rtol=1e-5, atol=1e-5)


def test_repo_rounded_mlp_width_is_taken_from_the_tensors(tmp_path):
    cfg = dataclasses.replace(get_config("mamba3-siso-tiny"), d_intermediate=128)
    model = build_model(cfg, dtype=torch.float32)
    save_checkpoint(model, tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**d, "d_intermediate": 100}))  # GatedMLP: 100 → 128
    loaded = build_model(tmp_path, dtype=torch.float32)
    assert loaded.config.d_intermediate == 128
    assert torch.equal(loaded(_tokens(1, 5)), model(_tokens(1, 5)))


def test_pytorch_model_bin_is_read(tmp_path):
    model = build_model("mamba2-tiny", dtype=torch.float32)
    save_checkpoint(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    assert torch.equal(build_model(tmp_path, dtype=torch.float32)(_tokens(1, 6)), model(_tokens(1, 6)))


def _edit_json(key, value):
    def edit(folder: Path):
        d = json.loads((folder / "config.json").read_text())
        keys = key.split(".")
        (d[keys[0]] if len(keys) > 1 else d)[keys[-1]] = value
        (folder / "config.json").write_text(json.dumps(d))
    return edit


def _edit_tensors(fn):
    def edit(folder: Path):
        tensors = load_file(folder / "model.safetensors")
        fn(tensors)
        save_file(tensors, str(folder / "model.safetensors"))
    return edit


@pytest.mark.parametrize("name, edit, match", [
    ("mamba3-siso-tiny", _edit_tensors(lambda t: t.pop("backbone.layers.1.mixer.D")),
     "lack backbone.layers.1.mixer.D"),
    ("mamba3-siso-tiny", _edit_tensors(lambda t: t.update(extra=torch.zeros(2))), "hold extra"),
    ("mamba3-siso-tiny", _edit_json("n_layer", 3), "lack backbone.layers.2."),
    ("mamba3-siso-tiny", _edit_json("d_model", 48), r"has shape .* implies"),
    ("mamba3-mimo-tiny", _edit_json("ssm_cfg.mimo_rank", 2), r"has shape .* implies"),
    ("mamba3-siso-tiny", _edit_json("ssm_cfg.layer", "Mamba1"), "layer 'Mamba1' is not supported"),
    ("mamba3-siso-tiny", _edit_json("ssm_cfg.is_outproj_norm", True), "is_outproj_norm=True is not supported"),
    ("mamba3-siso-tiny", _edit_json("d_intermediate", 0), "no MLP"),
    ("mamba3-siso-tiny", _edit_json("d_model", None), "config.json"),
    ("hybrid-tiny", _edit_json("attn_cfg.rotary_emb_dim", 4), "rotary_emb_dim=4"),
    ("mamba2-tiny", _edit_json("ssm_cfg.norm_before_gate", True), "norm_before_gate"),
    ("transformer-tiny", _edit_json("attention_bias", True), "attention_bias=True"),
    ("transformer-tiny", _edit_json("num_key_value_heads", 4), r"k_proj.weight has shape"),
    ("transformer-tiny", lambda f: (f / "config.json").unlink(), "no config.json"),
    ("transformer-tiny", lambda f: (f / "config.json").write_text("{"), "not valid JSON"),
    ("transformer-tiny", lambda f: (f / "model.safetensors").unlink(), "no \\*.safetensors"),
    ("transformer-tiny", lambda f: (f / "config.json").write_text('{"model_type": "gpt2"}'), "neither a state-spaces"),
], ids=["missing", "extra", "layers", "width", "rank", "mamba1", "outnorm", "no-mlp", "null-field",
        "partial-rotary", "mamba2-variant", "llama-bias", "kv-heads", "no-config", "bad-json", "no-weights",
        "unknown-layout"])
def test_mismatched_folder_gives_one_line_error(tmp_path, name, edit, match):
    save_checkpoint(build_model(name), tmp_path)
    edit(tmp_path)
    with pytest.raises(CheckpointError, match=match) as e:
        build_model(tmp_path)
    assert "\n" not in str(e.value)
