"""Damaged weight files (garbage, cut short, empty, not a state dict) are refused with one line that names
the file, both when a folder is checked and when it is loaded; checking a folder reads its config.json and
the weight files' headers only, and without torch for safetensors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model import checkpoints
from model.checkpoints import CheckpointError, inspect_checkpoint, save_checkpoint
from model.factory import build_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def folder(tmp_path):
    save_checkpoint(build_model("transformer-tiny", dtype=torch.float32), tmp_path)
    return tmp_path


def _as_bin(folder: Path) -> Path:
    """The folder's weights as pytorch_model.bin instead of safetensors."""
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder / "pytorch_model.bin"


def _cut(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def _garbage_safetensors(folder):
    (folder / "model.safetensors").write_text("garbage\n")
    return "model.safetensors: not a safetensors file, or cut short"


def _cut_safetensors(folder):
    _cut(folder / "model.safetensors", 0.5)
    return "model.safetensors: cut short"


def _header_not_json(folder):
    (folder / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"\xff" * 20)
    return "model.safetensors: not a safetensors file (its header is not JSON)"


def _header_entry_malformed(folder):
    header = json.dumps({"w": {"dtype": "F32", "shape": "two"}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return "damaged safetensors header (entry 'w' is malformed)"


def _garbage_bin(folder):
    _as_bin(folder).write_text("garbage\n")
    return "pytorch_model.bin: not a PyTorch weights file"


def _empty_bin(folder):
    _as_bin(folder).write_bytes(b"")
    return "pytorch_model.bin: empty or cut short"


def _cut_bin(folder):
    _cut(_as_bin(folder), 0.1)
    return "pytorch_model.bin: cannot be read as PyTorch weights"


def _tensor_bin(folder):
    _as_bin(folder)
    torch.save(torch.zeros(3), folder / "pytorch_model.bin")
    return "pytorch_model.bin: not a state dict"


DAMAGES = [_garbage_safetensors, _cut_safetensors, _header_not_json, _header_entry_malformed, _garbage_bin,
           _empty_bin, _cut_bin, _tensor_bin]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda f: f.__name__.strip("_"))
def test_a_damaged_weight_file_is_refused_with_one_line_naming_it(folder, damage):
    says = damage(folder)
    for attempt in (lambda: build_model(folder), lambda: inspect_checkpoint(folder)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        message = str(err.value)
        assert says in message and str(folder) in message and "\n" not in message


def test_a_damaged_checkpoint_is_refused_by_the_cli_before_a_run_exists(folder, sqlite_url, capsys):
    from profiler.__main__ import main
    from store import repo
    from store.db import session

    _garbage_safetensors(folder)
    assert main(["run", "--db", sqlite_url, "--device", "cpu", "--models", str(folder), "--batch", "1",
                 "--prompt", "16", "--context", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {folder / 'model.safetensors'}: not a safetensors file") and "\n" not in err
    with session(sqlite_url) as s:
        assert repo.counts(s)["runs"] == 0


@pytest.mark.parametrize("as_bin", [False, True], ids=["safetensors", "bin"])
def test_checking_a_folder_reads_names_and_shapes_not_the_weights(folder, monkeypatch, as_bin):
    from profiler.models import resolve

    if as_bin:
        _as_bin(folder)
    monkeypatch.setattr(checkpoints, "_read_tensors", lambda *a: pytest.fail("the weights were read"))
    cfg, shapes = inspect_checkpoint(folder)
    assert shapes["model.embed_tokens.weight"] == (cfg.vocab_size, cfg.d_model)
    assert resolve(str(folder)).config == cfg


def test_the_header_check_needs_no_torch(folder):
    """What the app checks of a folder: config.json and the safetensors headers, in a process without torch
    (a .bin is then not opened)."""
    _as_bin(folder)
    safetensors_folder = folder.parent / "st"
    save_checkpoint(build_model("mamba3-siso-tiny", dtype=torch.float32), safetensors_folder)
    code = ("import sys; from pathlib import Path; from model.checkpoints import inspect_checkpoint; "
            f"cfg, shapes = inspect_checkpoint(Path({str(safetensors_folder)!r}), open_pickles=False); "
            f"_, none = inspect_checkpoint(Path({str(folder)!r}), open_pickles=False); "
            "print(cfg.family, len(shapes) > 0, none, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["mamba3-siso", "True", "None", "False"]
