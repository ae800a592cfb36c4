"""The Roofline tab: a GPU is the default device when there is one, and a device without a datasheet says so."""

from __future__ import annotations

import pytest
import seed_stores
from app_helpers import open_page, texts
from sqlmodel import select

from store.db import session
from store.models import Device


def _roofline(at):
    at.session_state["explore_tab"] = "Roofline"
    at.run()
    assert not at.exception
    return next(s for s in at.selectbox if s.label.startswith("Device"))


def test_roofline_defaults_to_a_gpu_even_when_a_cpu_sorts_first(open_app, sqlite_url):
    open_app("empty")  # points the app at the store; seeded below, before any page reads its points
    seed_stores.seeded(sqlite_url)
    with session(sqlite_url) as s:
        cpu = s.exec(select(Device).where(Device.kind == "cpu")).one()
        cpu.name = "AMD test CPU (2 cores)"  # sorts before "NVIDIA …"
        s.add(cpu)
        s.commit()
    at = open_page("explore")
    device = _roofline(at)
    assert device.options[-1] == "AMD test CPU (2 cores)"
    assert device.value == "NVIDIA H100 80GB HBM3"
    assert "**Datasheet** (H100-SXM)" in texts(at)


@pytest.mark.parametrize("kind", ["cpu_only", "seeded"])  # seeded: beside a GPU, the CPU's missing key reads NaN
def test_roofline_of_a_device_without_a_datasheet_says_so(open_app, kind):
    at, _ = open_app(kind, "explore")
    _roofline(at).set_value("Test CPU (2 cores)").run()
    said = texts(at)
    assert "**Datasheet**: none for this device" in said
    assert "nan" not in said
