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
    ({**TINY, "min_repeats": 0}, "--min-repeats must be at least 1 timed call, got 0"),
    ({**TINY, "warmup": -3}, "--warmup must be 0 or more untimed calls, got -3"),
    ({**TINY, "max_repeats": 1, "min_repeats": 5}, "--min-repeats (5) must not exceed --max-repeats (1)"),
    ({**TINY, "min_repeats": "many"}, "--min-repeats must be a whole number, got 'many'"),
    ({**TINY, "min_duration_s": float("nan")}, "--min-duration must be a finite number of seconds ≥ 0, got nan"),
    ({**TINY, "min_duration_s": float("inf")}, "--min-duration must be a finite number of seconds ≥ 0, got inf"),
    ({"device": "cpu", "scenario": "quick"}, "scenario 'quick' is sized for a GPU (batches up to 128, up to 16,384 "
                                             "tokens): with mamba3-siso-1.5b (1.5B parameters) it would run for hours"),
    ({"device": "cpu", "scenario": "paper"}, "use the cpu-demo scenario, *-tiny models, or a small grid"),
    ({"device": "cpu", "scenario": "capacity", "models": ["mamba3-siso-tiny", "mamba3-siso-180m"]},
     "with mamba3-siso-180m (186M parameters) it would run for hours on the CPU"),
    ({**TINY, "time_limit_s": 0}, "time limit must be a finite number of seconds > 0"),
    ({**TINY, "time_limit_s": -5}, "time limit must be a finite number of seconds > 0"),
    ({**TINY, "time_limit_s": float("nan")}, "time limit must be a finite number of seconds > 0"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None)
def test_invalid_requests(raw, says):
    with pytest.raises(RequestError) as err:
        make_request(raw)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_gpu_sized_scenario_runs_on_the_cpu_with_tiny_models_or_when_asked_to():
    tiny = make_request({"device": "cpu", "scenario": "quick", "models": ["mamba3-siso-tiny", "transformer-tiny"],
                         "prompts": [512, 2048], "contexts": [512, 2048]})
    assert tiny.batches == (1, 16, 128) and not tiny.allow_slow  # the scenario's batches, in minutes
    small = {"device": "cpu", "models": ["mamba3-siso-180m"], "batches": [1], "prefill_batches": [1],
             "prompts": [16], "contexts": [16]}
    with pytest.raises(RequestError, match="with mamba3-siso-180m"):
        make_request({**small, "scenario": "quick"})
    req = make_request({**small, "scenario": "quick", "allow_slow": True})
    assert req.allow_slow and make_request(req.to_json()) == req  # kept for a resumed or repeated run
    on_a_gpu = make_request({**small, "scenario": "quick", "device": "any", "impl": "chunked"})
    assert on_a_gpu.scenario == "quick" and not on_a_gpu.allow_slow


GIB = 2**30


def test_a_cpu_point_beyond_the_memory_available_is_refused(monkeypatch):
    from profiler import request

    monkeypatch.setattr(request, "available_memory_bytes", lambda: 4 * GIB)
    grid = {"device": "cpu", "models": ["mamba3-siso-tiny", "transformer-1.5b"], "batches": [1, 8],
            "prompts": [64], "contexts": [16]}
    with pytest.raises(RequestError) as err:
        make_request(grid)
    assert str(err.value) == ("transformer-1.5b's prefill of batch 8 × 64 tokens needs at least 5.6 GiB (weights "
                              "5.6 GiB, cache and activations 0.1 GiB) but this machine has 4.0 GiB of memory "
                              "available; choose smaller batches or lengths")
    monkeypatch.setattr(request, "available_memory_bytes", lambda: 32 * 2**20)
    with pytest.raises(RequestError, match=r"mamba3-siso-tiny's prefill of batch 64 × 4,000 tokens needs at least"):
        make_request({**TINY, "batches": [64], "prompts": [4000]})
    with pytest.raises(RequestError, match=r"decode of batch 4,096 at 4,000 tokens .* a smaller --max-batch"):
        make_request({**TINY, "models": ["transformer-tiny"], "scenario": "capacity", "allow_slow": True,
                      "contexts": [64, 4000], "capacity_max_batch": 4096})
    assert make_request({**TINY, "batches": [4], "prompts": [64], "contexts": [256]}).models == ("mamba3-siso-tiny",)
    assert make_request({**grid, "device": "any", "impl": "chunked"}).device == "any"  # a GPU's memory: not checked
    monkeypatch.setattr(request, "available_memory_bytes", lambda: None)  # nothing says: the run may try
    assert make_request(grid).models == ("mamba3-siso-tiny", "transformer-1.5b")


def test_available_memory_is_the_kernels_and_the_containers_smaller(monkeypatch, tmp_path):
    from profiler import device

    meminfo, limit, usage = tmp_path / "meminfo", tmp_path / "memory.max", tmp_path / "memory.current"
    meminfo.write_text("MemTotal:       65536000 kB\nMemAvailable:   8388608 kB\n")
    real_open = open
    files = {"/proc/meminfo": meminfo, "/sys/fs/cgroup/memory.max": limit, "/sys/fs/cgroup/memory.current": usage}
    monkeypatch.setattr("builtins.open", lambda path, *a, **kw: real_open(files.get(str(path), path), *a, **kw))
    assert device.available_memory_bytes() == 8 * GIB  # no cgroup files
    limit.write_text("max\n")
    usage.write_text(f"{GIB}\n")
    assert device.available_memory_bytes() == 8 * GIB  # a cgroup without a limit
    limit.write_text(f"{3 * GIB}\n")
    assert device.available_memory_bytes() == 2 * GIB  # a container's 3 GiB, 1 GiB of it in use


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


def test_cli_refuses_a_gpu_sized_scenario_on_the_cpu_unless_asked(sqlite_url, capsys, monkeypatch):
    assert main(["run", "--db", sqlite_url, "--device", "cpu", "--scenario", "quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: scenario 'quick' is sized for a GPU") and "--allow-slow" in err
    assert len(err.splitlines()) == 1
    assert main(["enqueue", "--db", sqlite_url, "--device", "cpu", "--scenario", "paper"]) == 2
    assert "error: scenario 'paper' is sized for a GPU" in capsys.readouterr().err
    with session(sqlite_url) as s:
        assert repo.counts(s)["runs"] == 0
    assert main(["enqueue", "--db", sqlite_url, "--device", "cpu", "--scenario", "quick", "--allow-slow",
                 "--models", "mamba3-siso-180m", "--batch", "1", "--prefill-batch", "1", "--prompt", "16",
                 "--context", "16"]) == 0
    with session(sqlite_url) as s:
        assert repo.get_run(s, run_id=1).request["allow_slow"] is True


@pytest.mark.parametrize("argv, says", [
    (["--warmup", "-3"], "error: --warmup must be 0 or more untimed calls, got -3"),
    (["--min-repeats", "0"], "error: --min-repeats must be at least 1 timed call, got 0"),
    (["--max-repeats", "1", "--min-repeats", "5"], "error: --min-repeats (5) must not exceed --max-repeats (1)"),
])
def test_cli_names_the_timing_flag_and_its_rule(argv, says, sqlite_url, capsys):
    assert main(["run", "--db", sqlite_url, "--device", "cpu", "--models", "mamba3-siso-tiny", "--batch", "1",
                 "--context", "16", *argv]) == 2
    assert capsys.readouterr().err.strip() == says


def test_run_and_enqueue_help_each_list_their_own_options(capsys):
    for argv in (["run", "--help"], ["enqueue", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
    run_help, enqueue_help = capsys.readouterr().out.split("usage: python -m profiler enqueue")
    assert "--device DEVICE       cpu, cuda or cuda:N (default: cuda:0" in run_help
    assert "positional arguments" not in run_help and "--per-model" not in run_help
    assert "--device DEVICE       cpu, cuda:N, or any (the default" in enqueue_help
    assert "--per-model" in enqueue_help and "--allow-slow" in enqueue_help
    assert "--resume" not in enqueue_help and "--in-process" not in enqueue_help


@pytest.mark.parametrize("device, worker", [("cpu", "--device cpu"), ("cuda:1", "--device cuda:1"),
                                            ("cuda", "--all-gpus")])
def test_enqueue_names_a_worker_for_the_queued_device(device, worker, sqlite_url, capsys):
    assert main(["enqueue", "--db", sqlite_url, "--device", device, "--models", "mamba3-siso-tiny", "--batch", "1",
                 "--context", "16", "--impl", "chunked"]) == 0
    assert f"`python -m profiler worker {worker} --db URL`" in capsys.readouterr().err


def test_devices_and_scenarios_take_no_db(capsys):
    for cmd in ("devices", "scenarios"):
        with pytest.raises(SystemExit) as exit_:
            main([cmd, "--db", "s.db"])
        assert exit_.value.code == 2
    assert "unrecognized arguments: --db s.db" in capsys.readouterr().err


def test_cli_unknown_run_and_resume_with_options(sqlite_url, capsys):
    assert main(["execute", "99", "--db", sqlite_url]) == 2
    assert capsys.readouterr().err.strip() == "error: no run with id 99"
    assert main(["execute", "99", "--db", sqlite_url, "--time-limit", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "error: time limit must be a finite number of seconds > 0, got -5.0"
    assert main(["run", "--db", sqlite_url, "--resume", "1", "--batch", "2"]) == 2
    assert "--resume continues a run with its own request" in capsys.readouterr().err
