"""One point measured with the GPU-only inputs faked on the CPU: an energy counter, power samples, another
process on the device, and a bf16 roof; every derived column follows from them."""

import itertools
import time

import pytest
import torch

from model import cost
from profiler import models
from profiler.measure import Meter, is_oom, measure_point
from profiler.request import make_request
from profiler.scenarios import Point
from profiler.telemetry import Reading, Sampler
from store import repo
from store.db import session


class CountingReader:
    """Energy counter +500 mJ per read (when it has one); 200 W; pid 999 beside ours from the start."""

    def __init__(self, counter: bool, pids=(1, 999)):
        self.counter, self.pids, self.n = counter, pids, itertools.count()

    def energy_mj(self):
        return 10_000.0 + 500.0 * next(self.n) if self.counter else None

    def read(self):
        return Reading(power_w=200.0, energy_mj=self.energy_mj(), pids=self.pids)


def _meter(s, reader, sampler, dtype="bfloat16"):
    req = make_request({"device": "cpu", "models": ["mamba3-siso-tiny"], "dtype": dtype, "batches": [2],
                        "contexts": [32], "min_repeats": 3, "min_duration_s": 0.05})
    ref = models.resolve("mamba3-siso-tiny")
    dev = repo.upsert_device(s, identity="fake-gpu", kind="gpu", name="Fake", measured_copy_bw_bytes_per_s=1e11,
                             measured_bf16_flops_per_s=1e12)
    spec = repo.upsert_model_spec(s, **models.spec_fields(ref))
    run = repo.create_run(s, request=req.to_json())
    return Meter(s=s, run_id=run.id, req=req, device=torch.device("cpu"), device_row=dev, model_row=spec, ref=ref,
                 sampler=sampler, reader=reader, should_stop=lambda: False, log=lambda line: None)


def _sampled(reader):
    sampler = Sampler(reader, interval_s=0.005, own_pids=frozenset({1})).start()
    time.sleep(0.02)
    return sampler


def _notes(row) -> list[str]:
    """The point's notes, less the unstable-timings one: real CPU timings on a busy machine may earn it."""
    return [n for n in (row["notes"] or "").split("; ") if n and not n.startswith("timings unstable")]


def test_energy_from_the_counter_and_a_shared_gpu(sqlite_url):
    reader = CountingReader(counter=True)
    sampler = _sampled(CountingReader(counter=True))
    with session(sqlite_url) as s:
        m = _meter(s, reader, sampler)
        model = models.build(m.ref, device=m.device, dtype="bfloat16", impl="chunked", seed=0)
        row = measure_point(m, model, Point("decode", 2, context_len=32), "k")
    sampler.stop()
    tokens = 2 * row["n_samples"]
    assert row["energy_j"] == pytest.approx(0.5)  # two counter reads around the timed calls, 500 mJ apart
    assert row["energy_per_token_j"] == pytest.approx(0.5 / tokens)
    assert 0 < row["mean_power_w"] and row["gpu_shared"] is True
    seconds = row["latency_p50_ms"] / 1e3
    assert row["mbu"] == pytest.approx(row["bytes_moved"] / seconds / 1e11)
    assert row["mfu"] == pytest.approx(row["flops"] / seconds / 1e12), "bf16 points use the bf16 roof"
    assert row["bytes_moved"] == cost.decode_cost(m.ref.config, 2, 32, 2).bytes
    assert _notes(row) == []


def test_energy_integrated_from_power_without_a_counter(sqlite_url):
    sampler = _sampled(CountingReader(counter=False, pids=(1,)))
    with session(sqlite_url) as s:
        m = _meter(s, CountingReader(counter=False), sampler, dtype="float32")
        model = models.build(m.ref, device=m.device, dtype="float32", impl="chunked", seed=0)
        row = measure_point(m, model, Point("prefill", 2, prompt_len=16), "k")
    sampler.stop()
    assert row["mean_power_w"] == pytest.approx(200.0), "a flat 200 W integrates to 200 W on average"
    assert _notes(row) == ["energy integrated from power samples (no energy counter)"]
    assert row["gpu_shared"] is False and row["mfu"] is None, "no fp32 roof measured: MFU null"


@pytest.mark.parametrize("exc, oom", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"), True),
    (MemoryError(), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("out of memory"), False),
])
def test_is_oom(exc, oom):
    assert is_oom(exc) is oom


def test_oom_behind_a_failed_graph_capture():
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError:
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as exc:
        assert is_oom(exc)


class _Capture:
    """Stands in for capture_cuda_graph on the CPU: records its warm-up count, then raises `exc` or returns
    the call as its own 'replay'."""

    def __init__(self, exc=None):
        self.exc, self.warmups = exc, []

    def __call__(self, fn, *, before=None, warmup=2):
        self.warmups.append(warmup)
        if self.exc is not None:
            raise self.exc
        return fn


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("failure", [None, "oom", "other"])
def test_graph_timing_and_its_fallbacks(monkeypatch, phase, failure):
    """On CUDA a point is replayed from a graph (one warm-up for a prefill, two for a decode step); a capture
    that fails is timed eagerly and says why, except that running out of memory stays final for a decode
    step (a prefill's capture cannot hand cached memory back, so the prefill is tried eagerly)."""
    from types import SimpleNamespace

    from profiler import measure
    from profiler.timing import Timed

    exc = {None: None, "oom": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
           "other": RuntimeError("operation not permitted when stream is capturing")}[failure]
    capture, calls = _Capture(exc), []
    monkeypatch.setattr(measure, "capture_cuda_graph", capture)
    monkeypatch.setattr(measure, "_release", lambda device: None)
    monkeypatch.setattr(measure, "time_calls", lambda fn, **kw: (fn(), Timed([1.0], 0.0, 1.0))[1])
    m = SimpleNamespace(device=torch.device("cuda"), clock=None, req=SimpleNamespace(timing=None),
                        should_stop=lambda: False)
    model = SimpleNamespace(impl="triton")
    run = lambda: measure._time_call(m, model, lambda: calls.append(1), lambda: None, phase, {})  # noqa: E731
    if failure == "oom" and phase == "decode":
        with pytest.raises(torch.cuda.OutOfMemoryError):
            run()
        return
    impl, timed, note = run()
    assert capture.warmups == [1 if phase == "prefill" else 2]
    assert calls == [1] and timed.samples_ms == [1.0]
    if failure is None:
        assert (impl, note) == ("triton+cuda-graph", None)
    else:
        assert impl == "triton+eager"
        why = ("ran out of memory" if failure == "oom"
               else "failed (RuntimeError: operation not permitted when stream is capturing)")
        assert note == f"CUDA graph capture {why}; {phase} timed eagerly"


def test_out_of_memory_rows_carry_the_path_they_would_have_timed():
    from profiler.measure import timed_label

    assert timed_label("triton", torch.device("cuda")) == "triton+cuda-graph"
    assert timed_label("chunked", torch.device("cpu")) == "chunked+eager"


@pytest.mark.parametrize("p10,p90,unsteady", [(1.0, 1.4, False), (1.0, 1.5, False), (1.0, 1.52, True)])
def test_a_point_whose_calls_spread_says_so(sqlite_url, monkeypatch, p10, p90, unsteady):
    """p90 above 1.5 × p10: the point keeps its figures and says its timings moved, and what to do."""
    from profiler import measure
    from profiler.metrics import LatencyStats

    monkeypatch.setattr(measure, "latency_stats", lambda samples: LatencyStats(p10, 1.2, p90, len(samples)))
    with session(sqlite_url) as s:
        m = _meter(s, None, None, dtype="float32")
        model = models.build(m.ref, device=m.device, dtype="float32", impl="chunked", seed=0)
        row = measure_point(m, model, Point("decode", 2, context_len=32), "k")
    assert row["latency_p50_ms"] == 1.2 and row["latency_p90_ms"] == p90
    notes = (row["notes"] or "").split("; ")
    spread = [n for n in notes if n.startswith("timings unstable")]
    assert spread == ([f"timings unstable: p90 {p90:.2f}× p10, above 1.5× (another load on the machine, a throttled "
                       "clock, or calls too short to settle): measure it again on an idle machine"] if unsteady else [])
