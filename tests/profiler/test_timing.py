"""The timing loop: warm-up excluded, minimum count and duration, batching, stop, graph capture."""

import time

import pytest
import torch

from profiler.scenarios import TimingPolicy
from profiler.timing import HostClock, Stopped, capture_cuda_graph, next_batch_size, time_calls


class FakeClock:
    """Every call 'takes' `ms`; records the batch sizes asked for."""

    def __init__(self, ms: float):
        self.ms, self.batches, self.syncs = ms, [], 0

    def time_calls(self, fn, before, n):
        self.batches.append(n)
        for _ in range(n):
            if before is not None:
                before()
            fn()
        return [self.ms] * n

    def sync(self):
        self.syncs += 1


@pytest.mark.parametrize("policy, n, total_s, done", [
    (TimingPolicy(min_repeats=5, min_duration_s=0.2), 5, 0.19, False),
    (TimingPolicy(min_repeats=5, min_duration_s=0.2), 5, 0.2, True),
    (TimingPolicy(min_repeats=5, min_duration_s=0.2), 4, 9.0, False),  # the count is a minimum too
    (TimingPolicy(min_repeats=3, min_duration_s=10.0, max_repeats=50), 50, 0.5, True),  # cap for tiny calls
])
def test_policy_done(policy, n, total_s, done):
    assert policy.done(n, total_s) is done


@pytest.mark.parametrize("kwargs", [dict(min_repeats=0), dict(warmup=-1), dict(min_repeats=5, max_repeats=4),
                                    dict(min_duration_s=-1.0)])
def test_inconsistent_policy_refused(kwargs):
    with pytest.raises(ValueError):
        TimingPolicy(**kwargs)


@pytest.mark.parametrize("policy, n, total_s, expected", [
    (TimingPolicy(min_repeats=5, min_duration_s=0.2), 0, 0.0, 1),  # learn the duration first
    (TimingPolicy(min_repeats=5, min_duration_s=0.2), 1, 0.001, 199),  # 1 ms calls: 0.199 s still needed
    (TimingPolicy(min_repeats=5, min_duration_s=0.0), 1, 0.001, 4),  # only the count is missing
    (TimingPolicy(min_repeats=5, min_duration_s=5.0, max_repeats=9000), 1, 0.001, 1000),  # ≤ ~1 s per batch
    (TimingPolicy(min_repeats=3, min_duration_s=0.5), 1, 4.0, 1),  # 4 s calls: one at a time (cancel stays quick)
    (TimingPolicy(min_repeats=2, min_duration_s=9.0, max_repeats=10), 4, 0.004, 6),  # up to the cap
])
def test_next_batch_size(policy, n, total_s, expected):
    assert next_batch_size(policy, n, total_s) == expected


def test_time_calls_excludes_warmup_and_meets_both_minimums():
    calls, befores, starts, ends = [], [], [], []
    clock = FakeClock(ms=10.0)
    timed = time_calls(lambda: calls.append(1), clock=clock, before=lambda: befores.append(1),
                       on_start=lambda: starts.append(len(calls)), on_end=lambda: ends.append(len(calls)),
                       policy=TimingPolicy(warmup=3, min_repeats=4, min_duration_s=0.25))
    assert len(timed.samples_ms) == 25  # 25 × 10 ms = 0.25 s, and ≥ 4
    assert len(calls) == 3 + 25 and len(befores) == len(calls)
    assert starts == [3] and ends == [28], "on_start once after the warm-up, on_end once after the last call"
    assert clock.batches[0] == 1 and sum(clock.batches) == 25
    assert timed.end_s >= timed.start_s


def test_time_calls_stops_between_batches():
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 2

    with pytest.raises(Stopped):
        time_calls(lambda: None, clock=FakeClock(ms=400.0), should_stop=should_stop,
                   policy=TimingPolicy(warmup=0, min_repeats=100, min_duration_s=0.0))


def test_host_clock_measures_real_time():
    ms = HostClock().time_calls(lambda: time.sleep(0.02), None, 3)
    assert len(ms) == 3 and all(19.0 <= x < 200.0 for x in ms)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_cuda_graph_replay_repeats_the_captured_work():
    x = torch.zeros(4, device="cuda")
    replay = capture_cuda_graph(lambda: x.add_(1.0), warmup=2)
    before = x.clone()
    replay()
    replay()
    torch.cuda.synchronize()
    assert torch.equal(x, before + 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_every_capture_warms_up_on_one_side_stream():
    """Each capture warms up on the same side stream (cuBLAS keeps a workspace per stream it ran on, for good),
    and its replay repeats a cuBLAS product."""
    a = torch.randn(64, 64, device="cuda")
    out = torch.empty_like(a)
    warmed_on = set()

    def product():
        if not torch.cuda.is_current_stream_capturing():
            warmed_on.add(torch.cuda.current_stream().cuda_stream)
        torch.matmul(a, a, out=out)

    for _ in range(3):
        replay = capture_cuda_graph(product)
        out.zero_()
        replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, a @ a)
    assert len(warmed_on) == 1
