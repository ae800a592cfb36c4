"""The Plan page's saved workloads and SLO fields, headless: one bad saved entry is named and kept, saving
touches only its own entry, the presets are never copied into the store, and an SLO can be cleared."""

from __future__ import annotations

from app_helpers import texts

from app.planning import WORKLOAD_PRESETS, load_workloads
from app.planning.workloads import SETTINGS_KEY
from store import repo
from store.db import session

SAVE = "Save this workload with the store"


def _field(widgets, label):
    return next(w for w in widgets if w.label == label)


def _stored(url):
    with session(url) as s:
        return repo.get_setting(s, key=SETTINGS_KEY)


def _store(url, entries):
    with session(url) as s:
        repo.set_setting(s, key=SETTINGS_KEY, value=entries)


def test_a_bad_saved_workload_is_named_and_kept_and_saving_touches_only_its_own_entry(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    good = {**WORKLOAD_PRESETS["chat"].to_dict(), "name": "my-chat"}
    bad = {**good, "name": "too-calm", "peak_factor": 0.5}
    _store(sqlite_url, [bad, good])
    at.run()
    assert not at.exception
    options = _field(at.selectbox, "Workload").options
    assert "my-chat" in options and "too-calm" not in options
    assert set(WORKLOAD_PRESETS) <= set(options)
    warning = "\n".join(w.value for w in at.warning)
    assert "“too-calm”" in warning and "peak factor" in warning and "0.5" in warning

    _field(at.text_input, "Name").set_value("my-agent").run()
    _field(at.button, SAVE).click().run()
    assert not at.exception
    stored = _stored(sqlite_url)
    assert stored[:2] == [bad, good]  # untouched, the invalid one included
    assert [e["name"] for e in stored] == ["too-calm", "my-chat", "my-agent"]  # no preset copied in


def test_a_copy_saved_under_a_presets_name_is_listed_beside_the_preset_only_when_it_differs(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    changed = {**WORKLOAD_PRESETS["coding-agent-15"].to_dict(), "calls_per_task": 3}
    _store(sqlite_url, [WORKLOAD_PRESETS["chat"].to_dict(), changed])
    at.run()
    options = _field(at.selectbox, "Workload").options
    assert "coding-agent-15 (saved copy)" in options and "chat (saved copy)" not in options
    _field(at.selectbox, "Workload").set_value("coding-agent-15 (saved copy)").run()
    assert _field(at.number_input, "Calls per task").value == 3
    _field(at.selectbox, "Workload").set_value("coding-agent-15").run()
    assert _field(at.number_input, "Calls per task").value == 15  # the preset as the code has it now


def test_a_presets_slo_can_be_cleared_to_none(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    assert _field(at.selectbox, "Workload").value == "coding-agent-15"
    ttft = _field(at.number_input, "TTFT SLO (ms)")
    assert ttft.value == WORKLOAD_PRESETS["coding-agent-15"].slo.ttft_ms
    ttft.set_value(None).run()
    assert _field(at.number_input, "TTFT SLO (ms)").value is None
    at.run()  # a later rerun leaves it cleared
    assert _field(at.number_input, "TTFT SLO (ms)").value is None
    _field(at.text_input, "Name").set_value("no-ttft").run()
    _field(at.button, SAVE).click().run()
    assert not at.exception and "error" not in texts(at).lower()
    with session(sqlite_url) as s:
        (saved,), _ = load_workloads(s)
    assert saved.slo.ttft_ms is None
    assert saved.slo.tpot_ms == WORKLOAD_PRESETS["coding-agent-15"].slo.tpot_ms


def test_saved_workloads_readable_or_not_can_be_removed_and_the_presets_stay(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    good = {**WORKLOAD_PRESETS["chat"].to_dict(), "name": "my-chat"}
    bad = {**good, "name": "too-calm", "peak_factor": 0.5}
    other = {**good, "name": "keep-me"}
    _store(sqlite_url, [bad, good, other])
    at.run()
    remove = _field(at.multiselect, "Remove from the store")
    assert remove.options == ["too-calm", "my-chat", "keep-me"]
    remove.set_value(["too-calm", "my-chat"]).run()
    _field(at.button, "Remove").click().run()
    assert not at.exception
    assert _stored(sqlite_url) == [other]
    options = _field(at.selectbox, "Workload").options
    assert "keep-me" in options and "my-chat" not in options and set(WORKLOAD_PRESETS) <= set(options)
    assert not at.warning  # the unreadable entry went with it
    assert _field(at.multiselect, "Remove from the store").value == []


def test_a_saved_workload_is_listed_and_chosen_at_once(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    _field(at.text_input, "Name").set_value("my-agent").run()
    _field(at.number_input, "Calls per task").set_value(7).run()
    _field(at.button, SAVE).click().run()
    assert not at.exception
    workloads = _field(at.selectbox, "Workload")
    assert "my-agent" in workloads.options and workloads.value == "my-agent"  # no second rerun needed
    assert _field(at.number_input, "Calls per task").value == 7
    assert [t.value for t in at.toast] == ["Saved my-agent."]
    at.run()  # and it stays chosen
    assert _field(at.selectbox, "Workload").value == "my-agent" and not at.toast


def test_removing_the_chosen_workload_goes_back_to_the_first(open_app, sqlite_url):
    at, _ = open_app("seeded", "plan")
    _store(sqlite_url, [{**WORKLOAD_PRESETS["chat"].to_dict(), "name": "my-chat"}])
    at.run()
    _field(at.selectbox, "Workload").set_value("my-chat").run()
    _field(at.multiselect, "Remove from the store").set_value(["my-chat"]).run()
    _field(at.button, "Remove").click().run()
    assert not at.exception
    workloads = _field(at.selectbox, "Workload")
    assert "my-chat" not in workloads.options and workloads.value == workloads.options[0]
