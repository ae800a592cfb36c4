"""Requests: defaults, the JSON round trip, and invalid arguments refused with one line and exit 2."""

import json

import pytest
import torch

from model import checkpoints
from model.factory import build_model
from model.scan import IMPLS as MODEL_IMPLS
from profiler.__main__ import main
from profiler.request import IMPLS, RequestError, make_request
from store import repo
from store.db import session

TINY = {"models": ["mamba3-siso-tiny"], "device": "cpu"}


def test_cpu_defaults_to_the_cpu_demo():
    req = make_request({"device": "cpu"})
    assert (req.scenario, req.dtype, req.impl, req.kind) == ("cpu-demo", "float32", "chunked", "grid")
    assert make_request(req.to_json()) == req


def test_gpu_defaults_and_overrides():
    req = make_request({"device": "cuda", "models": ["llama-3.2-1b"], "min_repeats": 9})
    assert (req.scenario, req.device, req.dtype, req.impl) == ("quick", "cuda:0", "bfloat16", "triton")
    assert req.models == ("llama-3.2-1b",) and req.timing.min_repeats == 9
    assert req.prefill_batches == (1, 16) and req.batches == (1, 16, 128)


def test_a_grid_without_scenario():
    req = make_request({**TINY, "batches": "2", "prompts": [64, "16", 64], "contexts": [8]})
    assert (req.scenario, req.batches, req.prefill_batches, req.prompts) == (None, (2,), (2,), (16, 64))
    assert json.loads(json.dumps(req.to_json())) == req.to_json()


def test_impls_match_the_models():
    assert IMPLS == MODEL_IMPLS


@pytest.fixture
def bad_checkpoint(tmp_path):
    folder = tmp_path / "ckpt"
    checkpoints.save_checkpoint(build_model("transformer-tiny", dtype=torch.float32), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] += 8  # config.json no longer describes the weights
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("raw, says", [
    ({**TINY, "models": ["mamba9-huge"]}, "unknown model preset 'mamba9-huge'; valid: mamba3-siso-180m"),
    ({**TINY, "batches": [0], "prompts": [8]}, "batch sizes must be ≥ 1, got 0"),
    ({**TINY, "batches": [1], "contexts": [5000]}, "context 5000 exceeds mamba3-siso-tiny's maximum context of 4096"),
    ({**TINY, "batches": [1], "prompts": [9000]}, "prompt length 9000 exceeds"),
    ({**TINY, "batches": [1.5], "prompts": [8]}, "is not a whole number"),
    ({**TINY, "device": "gpu"}, "device 'gpu' is not 'cpu', 'cuda', 'cuda:N' or 'any'"),
    ({**TINY, "impl": "triton"}, "'triton' needs a CUDA device"),
    ({**TINY, "dtype": "int8"}, "dtype 'int8' is not one of"),
    ({**TINY, "scenario": "fast"}, "unknown scenario 'fast'"),
    ({**TINY, "batch": [1]}, "unknown request field(s) batch"),
    ({**TINY, "batches": [1]}, "nothing to measure"),
    ({**TINY, "models": []}, "no models given"),
    ({**TINY, "models": ["./no/such/dir"]}, "no such checkpoint folder"),
    ({**TINY, "min_repeats": 0}, "inconsistent timing policy"),
    ({**TINY, "min_duration_s": float("nan")}, "min_duration_s must be a finite number"),
    ({**TINY, "min_duration_s": float("inf")}, "min_duration_s must be a finite number"),
    ({**TINY, "time_limit_s": 0}, "time limit must be a finite number of seconds > 0"),
    ({**TINY, "time_limit_s": -5}, "time limit must be a finite number of seconds > 0"),
    ({**TINY, "time_limit_s": float("nan")}, "time limit must be a finite number of seconds > 0"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_invalid_requests(raw, says):
    with pytest.raises(RequestError) as err:
        make_request(raw)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_that_does_not_match_its_config(bad_checkpoint):
    with pytest.raises(RequestError, match=r"gate_proj.weight has shape \(64, 32\), config.json implies \(72, 32\)"):
        make_request({**TINY, "models": [str(bad_checkpoint)]})


@pytest.mark.parametrize("argv, says", [
    (["--models", "nope"], "error: unknown model preset 'nope'"),
    (["--batch", "0", "--prompt", "8"], "error: batch sizes must be ≥ 1, got 0"),
    (["--batch", "1", "--context", "4096"], "error: context 4096 exceeds mamba3-siso-tiny's maximum context"),
    (["--device", "tpu"], "error: device 'tpu' is not"),
])
def test_cli_refuses_with_one_line_and_exit_2(argv, says, sqlite_url, capsys):
    base = ["run", "--db", sqlite_url, "--device", "cpu", "--models", "mamba3-siso-tiny"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(says) and len(err.splitlines()) == 1
    with session(sqlite_url) as s:
        assert repo.counts(s)["runs"] == 0, "a refused request leaves no run behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_cli_refuses_a_gpu_run_where_there_is_no_gpu(sqlite_url, capsys):
    assert main(["run", "--db", sqlite_url, "--device", "cuda", "--models", "mamba3-siso-tiny", "--batch", "1",
                 "--prompt", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda': this machine has no CUDA GPU") and len(err.splitlines()) == 1
    with session(sqlite_url) as s:
        assert repo.counts(s)["runs"] == 0


def test_cli_refuses_a_bad_checkpoint(bad_checkpoint, sqlite_url, capsys):
    assert main(["run", "--db", sqlite_url, "--device", "cpu", "--models", str(bad_checkpoint), "--batch", "1",
                 "--prompt", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "config.json implies" in err and len(err.splitlines()) == 1


def test_cli_unknown_run_and_resume_with_options(sqlite_url, capsys):
    assert main(["execute", "99", "--db", sqlite_url]) == 2
    assert capsys.readouterr().err.strip() == "error: no run with id 99"
    assert main(["execute", "99", "--db", sqlite_url, "--time-limit", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "error: time limit must be a finite number of seconds > 0, got -5.0"
    assert main(["run", "--db", sqlite_url, "--resume", "1", "--batch", "2"]) == 2
    assert "--resume continues a run with its own request" in capsys.readouterr().err
