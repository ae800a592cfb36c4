"""The Plan and Export pages on a store with CPU pipeline-check measurements: left out beside GPU ones (and
said so, with a box to bring them back) in the table and in the CSV, which records the choice; planned
when the store holds nothing else; repeated planner notes shown once with a count."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from app_helpers import frame_with, texts

import app.planning

BOX = "Include CPU pipeline-check measurements"


@pytest.fixture
def csvs(monkeypatch):
    """The finance CSVs the pages hand out, as frames."""
    made = []
    real = app.planning.finance_csv

    def recording(plans):
        text = real(plans)
        made.append(pd.read_csv(io.StringIO(text)))
        return text

    monkeypatch.setattr(app.planning, "finance_csv", recording)
    return made


def _plan(at):
    next(b for b in at.button if b.label == "Plan").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return frame_with(at, "bound_by")


def test_cpu_measurements_beside_gpu_ones_are_left_out_said_and_can_come_back(open_app, csvs):
    at, _ = open_app("seeded", "plan")
    box = next(c for c in at.checkbox if c.label == BOX)
    assert box.value is False
    # seed_stores.seeded: a CPU run of mamba3-siso-tiny, 2 batches × (2 prompts + 2 contexts)
    assert ("8 CPU pipeline-check measurements (tiny models on Test CPU (2 cores)) are left out of the plan and its "
            "CSV: the store holds GPU measurements.") in texts(at)
    rows = _plan(at)
    assert "Test CPU (2 cores)" not in set(rows["gpu"])
    assert set(csvs[-1]["cpu_measurements"]) == {"left out (8 CPU measurements; the store holds GPU measurements)"}
    assert len(csvs[-1]) == len(rows)

    next(c for c in at.checkbox if c.label == BOX).check().run()
    assert "are included in the plan and its CSV." in texts(at)
    assert "the inputs have changed since" in texts(at)  # the plan shown was made without them
    rows = _plan(at)
    assert "Test CPU (2 cores)" in set(rows["gpu"])
    assert set(csvs[-1]["cpu_measurements"]) == {"included (8 CPU measurements)"} and len(csvs[-1]) == len(rows)

    # the Export page plans as the Plan page chose, and its table says how
    at.switch_page("views/export.py").run()
    assert next(c for c in at.checkbox if c.label == BOX).value is True
    next(b for b in at.button if b.label.startswith("Plan every workload")).click().run()
    assert not at.exception
    table = frame_with(at, "exported_at")
    assert set(table["cpu_measurements"]) == {"included (8 CPU measurements)"}
    assert "Test CPU (2 cores)" in set(table["gpu"])


def test_a_store_of_cpu_measurements_alone_plans_them_says_so_and_counts_repeated_notes(open_app, csvs):
    at, _ = open_app("cpu_only", "plan")
    assert not any(c.label == BOX for c in at.checkbox)
    assert ("The store holds only CPU measurements: 16 CPU pipeline-check measurements on Test CPU (2 cores). "
            "The plan uses them") in texts(at)
    rows = _plan(at)
    assert set(rows["gpu"]) >= {"Test CPU (2 cores)"}
    assert set(csvs[-1]["cpu_measurements"]) == {
        "included (16 CPU measurements; the store holds only CPU measurements)"}
    # two models × five GPUs to project to, none possible from a CPU: one note for the ten rows
    notes = texts(at)
    assert notes.count("no GPU it was measured on has a datasheet") == 1
    assert ("cannot project mamba3-siso-tiny, transformer-tiny to A100-80GB, H200, L4, L40S, T4: no GPU it was "
            "measured on has a datasheet (×10)") in notes
