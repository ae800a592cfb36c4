"""The Profile page: the new-run form checks each field (and the whole request, with the profiler's own
check) before a run can start; active runs show progress and can be cancelled; failures read as sentences."""

import pytest
from app_helpers import texts

from store import repo
from store.db import session


def _start_button(at):
    return next(b for b in at.button if b.label == "Start profiling")


def _custom_grid(at):
    next(s for s in at.selectbox if s.label == "Scenario").set_value("custom grid").run()
    assert not at.exception
    return at


def _field(at, label):
    return next(t for t in at.text_input if t.label == label)


def test_default_request_on_a_cpu_is_the_cpu_demo_and_can_start(open_app):
    at, _ = open_app("empty", "profile")
    assert next(s for s in at.selectbox if s.label == "Scenario").value == "cpu-demo"
    assert next(s for s in at.selectbox if s.label == "Device").value == "cpu"
    assert not _start_button(at).disabled


FIELD_ERRORS = {
    "not-a-number": ("Batch sizes", "1, x", "'x' is not a whole number"),
    "zero": ("Contexts (decode)", "0", "0 is outside 1–1,048,576"),
    "empty": ("Prompt lengths (prefill)", " ", "enter at least one number"),
    "beyond-the-model": ("Prompt lengths (prefill)", "8192",
                         "prompt length 8192 exceeds mamba3-siso-tiny's maximum context of 4096"),
    "not-a-folder": ("Checkpoint folder (optional)", "no/such/folder",
                     "'no/such/folder' is neither a preset nor a checkpoint folder with a config.json"),
}


@pytest.mark.parametrize("label,value,message", FIELD_ERRORS.values(), ids=FIELD_ERRORS.keys())
def test_a_wrong_field_says_why_and_blocks_the_start(open_app, label, value, message):
    at, _ = open_app("empty", "profile")
    _custom_grid(at)
    _field(at, label).set_value(value).run()
    assert not at.exception
    assert message in texts(at)
    assert _start_button(at).disabled


def test_no_model_is_refused(open_app):
    at, _ = open_app("empty", "profile")
    _custom_grid(at)
    next(m for m in at.multiselect if m.label == "Models").set_value([]).run()
    assert "choose at least one model" in texts(at)
    assert _start_button(at).disabled


def test_failed_and_running_runs(open_app, sqlite_url):
    at, ids = open_app("failed", "profile")
    said = texts(at)
    assert f"Run {ids['failed_run']} (fails) failed: CUDA out of memory" in said
    assert "Running now" in said
    (bar,) = at.get("progress")
    assert bar.proto.text == "3 of 10 points · about 42 s left"
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert not at.exception
    with session(sqlite_url) as s:
        assert repo.get_run(s, run_id=ids["running_run"]).cancel_requested
    assert "Cancel requested" in texts(at)


def test_a_queued_run_without_a_device_says_so_not_nan(open_app, sqlite_url):
    at, _ = open_app("failed", "profile")
    with session(sqlite_url) as s:
        queued = repo.create_run(s, request={"models": ["mamba2-tiny"]}, label="waiting")
    at.run()
    said = texts(at)
    assert f"**Run {queued.id}** waiting · mamba2-tiny · device not yet known" in said
    assert "nan" not in said.split()
