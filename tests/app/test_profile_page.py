"""The Profile page: the new-run form checks each field (and the whole request, with the profiler's own
check) before a run can start; active runs show progress and can be cancelled; failures read as sentences."""

import json

import pandas as pd
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
    assert f"Run {ids['failed_run']} (fails) failed " in said and " UTC after " in said
    assert " s: CUDA out of memory" in said
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


def _history(at):
    return next(d for d in at.dataframe if "points planned" in d.value.columns)


def test_the_runs_table_shows_each_status_whole_and_when_and_how_long_an_ended_run_took(open_app, sqlite_url):
    at, ids = open_app("failed", "profile")
    table = _history(at)
    config = json.loads(table.proto.columns)
    # sized by its first rows, the column cut a later "cancelled" to "cancelle": it has a width of its own
    assert config["status"]["width"] >= 100
    shown = table.value.set_index("run")
    assert list(shown.columns[:3]) == ["label", "status", "finished"]  # not off to the right of the models
    with session(sqlite_url) as s:
        failed = repo.get_run(s, run_id=ids["failed_run"])
    assert shown.loc[ids["failed_run"], "finished"] == pd.to_datetime(failed.finished_at, utc=True)
    assert shown.loc[ids["failed_run"], "duration"].endswith(" s")
    assert shown.loc[ids["cancelled_run"], "status"] == "cancelled"
    assert shown.loc[ids["cancelled_run"], "duration"] == "never started"  # cancelled while queued
    assert pd.notna(shown.loc[ids["cancelled_run"], "finished"])
    assert pd.isna(shown.loc[ids["running_run"], "finished"]) and shown.loc[ids["running_run"], "duration"] == ""


def test_took_and_ended_read_as_words():
    from app.ui import runs

    run = pd.Series(dict(status="done", started_at=pd.Timestamp("2026-05-01 10:00:00", tz="UTC"),
                         finished_at=pd.Timestamp("2026-05-01 10:03:05", tz="UTC")))
    assert runs.took(run) == "3 min 05 s"
    assert runs.ended(run) == "finished 2026-05-01 10:03 UTC after 3 min 05 s"
    assert runs.ended(run.copy().replace("done", "failed")) == "failed 2026-05-01 10:03 UTC after 3 min 05 s"
    queued = pd.Series(dict(status="cancelled", started_at=None, finished_at=pd.Timestamp("2026-05-01", tz="UTC")))
    assert runs.ended(queued) == "cancelled 2026-05-01 00:00 UTC (never started)"
    assert runs.ended(pd.Series(dict(status="running", started_at=None, finished_at=None))) == ""


class _FakeProcess:
    def __init__(self, cmd, **_):
        self.cmd = cmd

    def poll(self):
        return None  # still running: the page's reaper leaves it alone


@pytest.fixture
def started(monkeypatch):
    """The profiler commands the page starts, recorded instead of run."""
    from app.ui import launch

    commands = []
    monkeypatch.setattr(launch.subprocess, "Popen", lambda cmd, **kw: commands.append(cmd) or _FakeProcess(cmd))
    yield commands
    for cmd in commands:
        launch._children().by_run.pop(int(cmd[cmd.index("execute") + 1]), None)


def _run_again(at, run_id):
    next(s for s in at.selectbox if s.label == "A failed or cancelled run").set_value(run_id).run()
    next(b for b in at.button if b.label == "Run again").click().run()
    assert not at.exception
    return at


ANY_GPU = {"models": ["transformer-tiny"], "device": "any", "batches": [1, 4], "prompts": [64], "contexts": [256]}


@pytest.mark.parametrize("which", ["failed_run", "cancelled_run"])
def test_a_failed_or_cancelled_run_runs_again_as_a_new_run_with_its_request(open_app, sqlite_url, started, which):
    at, ids = open_app("failed", "profile")
    if which == "failed_run":  # one queued for any GPU worker, that failed on the worker
        with session(sqlite_url) as s:
            run = repo.create_run(s, request=ANY_GPU, label="on a worker")
            repo.update_run(s, run_id=run.id, status="failed", worker="worker:gpu-host:cuda:0:12",
                            error="CUDA error: an illegal memory access was encountered")
        ids = {**ids, "failed_run": run.id}
        at.run()
    old_id = ids[which]
    with session(sqlite_url) as s:
        before = repo.get_run(s, run_id=old_id).model_dump()
    _run_again(at, old_id)
    with session(sqlite_url) as s:
        runs = repo.read_runs(s)
        after = repo.get_run(s, run_id=old_id).model_dump()
    new = runs.iloc[0]
    assert int(new["id"]) not in ids.values()
    assert new["request"] == before["request"] and new["label"] == before["label"]
    assert after == before  # the old run stays as it was
    said = "\n".join(s.value for s in at.success)
    assert f"Run {int(new['id'])} " in said and f"the same request as run {old_id}" in said
    if which == "failed_run":  # for any GPU: it waits for a queue worker, nothing starts here
        assert new["status"] == "queued" and "queued" in said and "--all-gpus" in said and started == []
    else:  # no device named: the profiler's default here, started here as the Start button does
        from app.ui import launch
        from store.db import shared_url

        assert "started" in said and started == [launch.command(int(new["id"]), shared_url(sqlite_url))]


def test_a_request_that_can_no_longer_run_is_refused_with_its_reason(open_app, sqlite_url, started):
    at, ids = open_app("failed", "profile")
    _run_again(at, ids["failed_run"])  # 'cuda' with no grid: the quick sweep, beyond this model's context
    assert "exceeds transformer-tiny's maximum context" in "\n".join(e.value for e in at.error)
    with session(sqlite_url) as s:
        assert len(repo.read_runs(s)) == 3 and started == []


def test_only_an_ended_run_that_did_not_finish_can_run_again(open_app, sqlite_url, started):
    from app.ui import launch

    at, ids = open_app("failed", "profile")
    names = next(s for s in at.selectbox if s.label == "A failed or cancelled run").options
    assert len(names) == 2 and not any(f"Run {ids['running_run']} " in n for n in names)
    assert launch.run_again(ids["running_run"]) == (None, f"run {ids['running_run']} is running: only a failed or "
                                                          "cancelled run can be run again")
    assert launch.run_again(999) == (None, "there is no run 999 in this store")
    with session(sqlite_url) as s:
        assert len(repo.read_runs(s)) == 3
