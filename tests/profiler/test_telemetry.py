"""The NVML sampler against a fake reader, and with no NVML at all."""

import itertools
import sys
import time

import pytest

from profiler.telemetry import (Reading, Sampler, count_others, open_reader, power_series, shared_in,
                                telemetry_rows)
from store import repo
from store.db import session


class FakeReader:
    """A GPU drawing 100 W, then 300 W; from the 4th reading on, another process (pid 999) appears."""

    def __init__(self, own_pid: int):
        self.n = itertools.count()
        self.own_pid = own_pid

    def energy_mj(self):
        return 1000.0

    def read(self) -> Reading:
        i = next(self.n)
        pids = (self.own_pid,) + ((999,) if i >= 3 else ())
        return Reading(power_w=100.0 if i < 3 else 300.0, energy_mj=1000.0 + i, sm_clock_mhz=1980.0,
                       mem_clock_mhz=2619.0, gpu_util=0.5, mem_util=0.25, mem_used_bytes=2**30,
                       temperature_c=50.0, throttle_reasons=0, pids=pids)


class BrokenReader:
    def read(self):
        raise RuntimeError("GPU fell off the bus")

    def energy_mj(self):
        return None


def test_sampler_collects_in_the_background_and_flags_the_other_process():
    sampler = Sampler(FakeReader(own_pid=4242), interval_s=0.01, own_pids=frozenset({4242})).start()
    deadline = time.monotonic() + 5
    while len(sampler.samples()) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    samples = sampler.samples()
    assert len(samples) >= 6
    assert [s.others for s in samples[:4]] == [0, 0, 0, 1]
    assert not shared_in(samples[:3]) and shared_in(samples)
    assert [p for _, p in power_series(samples[:4])] == [100.0, 100.0, 100.0, 300.0]
    assert sampler.window(samples[1].t_s, samples[2].t_s) == samples[1:3]
    between = (samples[1].t_s + samples[2].t_s) / 2
    assert sampler.window(between, between) == samples[1:3], "a window with no sample takes its neighbours"
    first = sampler.take_unflushed()
    assert first == samples and sampler.take_unflushed() == []


def test_sampler_survives_a_failing_reader():
    sampler = Sampler(BrokenReader(), interval_s=0.01).start()
    sampler.stop()
    assert sampler.samples() == [] and "fell off the bus" in sampler.error


@pytest.mark.parametrize("pids, own, contexts, expected", [
    ((10, 11), frozenset({10}), 1, 1),  # our pid is listed: count the rest
    ((10,), frozenset({10}), 1, 0),
    ((77001,), frozenset({10}), 1, 0),  # container: NVML shows host pids; one of them is us
    ((77001, 77002), frozenset({10}), 1, 1),
    ((), frozenset({10}), 1, 0),
    (None, frozenset({10}), 1, None),  # NVML does not list processes on this GPU
])
def test_count_others(pids, own, contexts, expected):
    assert count_others(pids, own, contexts) == expected


def test_telemetry_rows_fit_the_table(sqlite_url):
    sampler = Sampler(FakeReader(own_pid=1), own_pids=frozenset({1}))
    for _ in range(4):
        sampler.sample_once()
    with session(sqlite_url) as s:
        run = repo.create_run(s, request={})
        dev = repo.upsert_device(s, identity="GPU-fake", kind="gpu", name="Fake GPU")
        assert repo.add_telemetry(s, samples=telemetry_rows(sampler.samples(), run_id=run.id, device_id=dev.id)) == 4
        frame = repo.read_telemetry(s, run_id=run.id)
    assert list(frame["power_w"]) == [100.0, 100.0, 100.0, 300.0]
    assert list(frame["energy_j"]) == pytest.approx([1.0, 1.001, 1.002, 1.003])
    assert list(frame["other_processes"]) == [0, 0, 0, 1]
    assert frame["gpu_util"].iloc[0] == 0.5 and frame["mem_used_bytes"].iloc[0] == 2**30


def test_no_nvml_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as if nvidia-ml-py were absent
    reader, why = open_reader(0)
    assert reader is None and "not installed" in why


def test_nvml_without_a_driver():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pytest.skip("this machine has an NVIDIA driver; the no-driver case cannot be shown here")
    except pynvml.NVMLError:
        pass
    reader, why = open_reader(0)
    assert reader is None and why.startswith("NVML unavailable")
