import math

import pytest

from app.planning import SLO, WORKLOAD_PRESETS, PlanningError, Workload, get_workload, load_workloads, save_workloads
from app.planning.workloads import SETTINGS_KEY, remove_saved_workloads, saved_names
from store import db, repo

from .helpers import workload


def test_calls_no_reuse_reprefill_the_whole_context():
    # system 100, +10 per call, 5 out, 3 calls: contexts 110, 125 (=100+2·10+1·5), 140
    w = workload(calls_per_task=3, system_prompt_tokens=100, tokens_per_call=10, output_tokens_per_call=5)
    calls = w.calls()
    assert [c.context_tokens for c in calls] == [110, 125, 140]
    assert [c.prefill_tokens for c in calls] == [110, 125, 140]
    assert all(c.prior_tokens == 0 for c in calls)
    assert w.final_context_tokens == 100 + 3 * (10 + 5)
    assert w.input_tokens_per_task == 110 + 125 + 140
    assert w.output_tokens_per_task == 15


def test_calls_reuse_prefill_only_new_tokens():
    w = workload(calls_per_task=3, system_prompt_tokens=100, tokens_per_call=10, output_tokens_per_call=5,
                 serving="reuse")
    calls = w.calls()
    assert [(c.prefill_tokens, c.prior_tokens) for c in calls] == [(110, 0), (10, 115), (10, 130)]
    assert w.input_tokens_per_task == 110 + 125 + 140  # billed like an API either way


def test_rates():
    w = workload(tasks_per_day=86_400, peak_factor=3.0)
    assert w.mean_tasks_per_s == pytest.approx(1.0)
    assert w.peak_tasks_per_s == pytest.approx(3.0)
    assert w.tasks_per_month == pytest.approx(86_400 * 365.25 / 12)


@pytest.mark.parametrize("name", sorted(WORKLOAD_PRESETS))
def test_presets_round_trip_through_json(name):
    w = get_workload(name)
    assert Workload.from_json(w.to_json()) == w


def test_presets_cover_the_issue():
    assert WORKLOAD_PRESETS["coding-agent-15"].calls_per_task == 15
    assert WORKLOAD_PRESETS["research-agent-10"].calls_per_task == 10
    assert WORKLOAD_PRESETS["doc-qa-32k"].final_context_tokens >= 32_000
    assert WORKLOAD_PRESETS["doc-qa-32k"].retrieval_heavy
    assert WORKLOAD_PRESETS["chat"].kind == "chat"


def test_save_and_load_with_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    with db.session(url) as s:
        assert load_workloads(s) == ([], [])  # the presets are not stored: they stay the code's
        mine = [workload(name="mine", slo=SLO(ttft_ms=500))]
        save_workloads(s, mine)
        assert load_workloads(s) == (mine, [])
    db.dispose_all()


@pytest.fixture
def store_session(tmp_path):
    with db.session(f"sqlite:///{tmp_path / 's.db'}") as s:
        yield s
    db.dispose_all()


def test_one_bad_saved_workload_leaves_the_others_readable_and_is_named(store_session):
    s = store_session
    good = workload(name="good")
    bad = {**workload(name="bad").to_dict(), "peak_factor": 0.5}
    repo.set_setting(s, key=SETTINGS_KEY, value=[bad, good.to_dict(), "not a workload"])
    saved, problems = load_workloads(s)
    assert saved == [good]
    assert len(problems) == 2
    assert "“bad”" in problems[0] and "peak factor" in problems[0] and "0.5" in problems[0]
    assert "number 3" in problems[1] and "JSON object" in problems[1]


def test_saving_one_workload_keeps_every_other_saved_entry(store_session):
    s = store_session
    bad = {**workload(name="bad").to_dict(), "peak_factor": 0.5}
    first, second = workload(name="first"), workload(name="second")
    repo.set_setting(s, key=SETTINGS_KEY, value=[first.to_dict(), bad, second.to_dict()])
    changed, new = workload(name="first", calls_per_task=9), workload(name="new")
    save_workloads(s, [changed])
    save_workloads(s, [new])
    stored = repo.get_setting(s, key=SETTINGS_KEY)
    assert stored == [changed.to_dict(), bad, second.to_dict(), new.to_dict()]  # replaced in place, added last


def test_removing_saved_workloads_keeps_the_others_as_stored(store_session):
    s = store_session
    bad = {**workload(name="bad").to_dict(), "peak_factor": 0.5}
    nameless = {"calls_per_task": 3}
    first, second = workload(name="first"), workload(name="second")
    repo.set_setting(s, key=SETTINGS_KEY, value=[first.to_dict(), bad, nameless, second.to_dict(), bad])
    assert saved_names(s) == ["first", "bad", "second"]
    assert remove_saved_workloads(s, ["bad", "first"]) == 3
    assert repo.get_setting(s, key=SETTINGS_KEY) == [nameless, second.to_dict()]
    assert remove_saved_workloads(s, ["no-such"]) == 0
    assert repo.get_setting(s, key=SETTINGS_KEY) == [nameless, second.to_dict()]


def test_a_preset_name_is_refused_and_nothing_is_stored(store_session):
    s = store_session
    with pytest.raises(PlanningError, match="“chat” is a built-in workload"):
        save_workloads(s, [workload(name="chat")])
    assert repo.get_setting(s, key=SETTINGS_KEY) is None


def test_a_setting_that_is_not_a_list_is_reported_and_never_overwritten(store_session):
    s = store_session
    repo.set_setting(s, key=SETTINGS_KEY, value={"name": "odd"})
    saved, problems = load_workloads(s)
    assert saved == [] and "not a list" in problems[0]
    with pytest.raises(PlanningError, match="not a list"):
        save_workloads(s, [workload(name="mine")])
    assert repo.get_setting(s, key=SETTINGS_KEY) == {"name": "odd"}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tasks_per_day=0), "tasks per day must be greater than zero"),
        (dict(tasks_per_day=-5), "tasks per day must be greater than zero"),
        (dict(tasks_per_day=math.nan), "tasks per day"),
        (dict(tasks_per_day=math.inf), "tasks per day"),
        (dict(calls_per_task=0), "calls per task must be greater than zero"),
        (dict(calls_per_task=2.5), "calls per task must be a whole number"),
        (dict(output_tokens_per_call=0), "output tokens per call"),
        (dict(output_tokens_per_call=1), "at least 2"),
        (dict(tokens_per_call=-1), "tokens added per call must be zero or more"),
        (dict(system_prompt_tokens=0, tokens_per_call=0), "at least one token"),
        (dict(peak_factor=0.5), "peak factor"),
        (dict(kind="batch"), "workload kind must be one of"),
        (dict(serving="cache"), "serving mode must be one of"),
        (dict(name=" "), "needs a name"),
        (dict(slo=SLO(ttft_ms=1, tpot_ms=1)) , None),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_workloads_say_what_is_wrong(overrides, message):
    if message is None:
        workload(**overrides)
        return
    with pytest.raises(PlanningError, match=message):
        workload(**overrides)


@pytest.mark.parametrize("slo", [dict(ttft_ms=0), dict(tpot_ms=-1), dict(task_latency_s=math.nan)])
def test_bad_slos(slo):
    with pytest.raises(PlanningError, match="SLO"):
        SLO(**slo)


@pytest.mark.parametrize(
    "text, message",
    [("{", "not valid JSON"), ("[]", "JSON object"), ('{"name": "x", "colour": 1}', "unknown field"),
     ('{"name": "x"}', "incomplete")],
)
def test_bad_saved_workloads(text, message):
    with pytest.raises(PlanningError, match=message):
        Workload.from_json(text)


def test_with_final_context_keeps_shape():
    w = WORKLOAD_PRESETS["research-agent-10"]
    for target in (20_000, 60_000, 131_072):
        scaled = w.with_final_context(target)
        assert abs(scaled.final_context_tokens - target) <= w.calls_per_task
        assert scaled.calls_per_task == w.calls_per_task
        assert scaled.output_tokens_per_call == w.output_tokens_per_call
    with pytest.raises(PlanningError, match="no room"):
        w.with_final_context(10 * 500)
