"""The Profile page's request check (app.ui.launch): a checkpoint folder gets the same checks as a preset
(its config.json and weight headers read without torch), GPU-sized scenarios are refused on the CPU with
Start disabled, and a profiler that dies leaves a one-line reason on its run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from app_helpers import texts

from app.ui import launch
from store import repo
from store.db import session

ROOT = Path(__file__).resolve().parents[2]
GRID = {"device": "cpu", "batches": [1], "prompts": [16], "contexts": [32]}


@pytest.fixture
def folder(tmp_path):
    """A transformer-tiny checkpoint, written in a separate process (the app's tests keep torch out)."""
    out = tmp_path / "ckpt"
    code = ("from pathlib import Path; from model.factory import build_model; "
            "from model.checkpoints import save_checkpoint; "
            f"save_checkpoint(build_model('transformer-tiny'), Path({str(out)!r}))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return out


def test_a_checkpoint_folder_gets_the_usual_request_checks(folder):
    request, problem = launch.check_request({**GRID, "models": [str(folder)], "impl": "triton"})
    assert request is None and problem == "implementation 'triton' needs a CUDA device; use --impl chunked on the CPU"
    request, problem = launch.check_request({**GRID, "models": [str(folder)], "contexts": [20000]})
    assert request is None and problem.startswith("context 20000 exceeds ckpt's maximum context")


def test_a_damaged_weight_file_is_refused_before_a_run_exists(folder):
    (folder / "model.safetensors").write_text("garbage\n")
    request, problem = launch.check_request({**GRID, "models": [str(folder)]})
    assert request is None
    assert problem.startswith(f"{folder / 'model.safetensors'}: not a safetensors file, or cut short")


def test_a_good_folder_becomes_a_complete_request_with_its_absolute_path(folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    request, problem = launch.check_request({**GRID, "models": ["mamba3-siso-tiny", "ckpt"]})
    assert problem is None
    assert request["models"] == ["mamba3-siso-tiny", str(folder)] and request["impl"] == "chunked"


def test_checking_a_folder_imports_no_torch(folder):
    code = ("import json, sys; from app.ui.launch import check_request; "
            f"request, problem = check_request({json.dumps({**GRID, 'models': [str(folder)]})}); "
            "print(problem, request['kind'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "grid", "False"]


def _start_button(at):
    return next(b for b in at.button if b.label == "Start profiling")


@pytest.mark.parametrize("scenario", ["quick", "paper", "capacity"])
def test_a_gpu_sized_scenario_on_the_cpu_says_why_and_cannot_start(open_app, scenario):
    at, _ = open_app("empty", "profile")
    next(s for s in at.selectbox if s.label == "Scenario").set_value(scenario).run()
    assert not at.exception
    assert f"scenario '{scenario}' is sized for a GPU" in texts(at) and "cpu-demo" in texts(at)
    assert _start_button(at).disabled


def test_a_folder_with_an_impossible_implementation_cannot_start(open_app, folder):
    at, _ = open_app("empty", "profile")
    next(t for t in at.text_input if t.label == "Checkpoint folder (optional)").set_value(str(folder)).run()
    assert not _start_button(at).disabled
    next(s for s in at.selectbox if s.label == "Implementation").set_value("triton").run()
    assert not at.exception
    assert "implementation 'triton' needs a CUDA device" in texts(at)
    assert _start_button(at).disabled


class _DeadProcess:
    def poll(self):
        return 1


def test_a_profiler_that_died_leaves_one_line_on_its_run(open_app, sqlite_url, tmp_path):
    open_app("empty", "profile")
    log = tmp_path / "run.log"
    log.write_text('Traceback (most recent call last):\n  File "/some/where/profiler/models.py", line 58, in x\n'
                   "    cfg = read()\nRuntimeError: the machine caught fire\n\n")
    with session(sqlite_url) as s:
        run = repo.create_run(s, request={**GRID, "models": ["mamba3-siso-tiny"]}, label="dies")
    launch._children().by_run[run.id] = launch.Child(_DeadProcess(), log)
    try:
        assert launch.reap() == [run.id]
    finally:
        launch._children().by_run.pop(run.id)
    with session(sqlite_url) as s:
        error = repo.get_run(s, run_id=run.id).error
    assert error == ("the profiler process exited with code 1 before finishing the run: RuntimeError: the machine "
                     f"caught fire (its output: {log})")
