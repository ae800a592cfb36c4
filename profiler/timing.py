"""Timing one call honestly: warm-up kept out, device events on CUDA, a minimum count and a minimum
duration, and a CUDA graph for prefill and decode so that what we time is the GPU, not Python launches."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from profiler.scenarios import TimingPolicy


class Stopped(Exception):
    """The run was asked to stop (cancel, or the parent went away) between two timed calls."""


@dataclass(frozen=True)
class Timed:
    samples_ms: list[float]
    start_s: float  # time.monotonic() around the timed calls (warm-up excluded), for telemetry windows
    end_s: float


class HostClock:
    """perf_counter around each call; for calls that return when their work is done (CPU)."""

    name = "perf_counter"

    def time_calls(self, fn: Callable[[], object], before: Callable[[], None] | None, n: int) -> list[float]:
        out = []
        for _ in range(n):
            if before is not None:
                before()
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return out

    def sync(self) -> None:
        pass


class CudaEventClock:
    """A pair of CUDA events around each call, `n` calls enqueued back to back and one synchronisation
    at the end: GPU time per call, with the GPU kept busy as in serving (no idle gap per sample)."""

    name = "cuda-events"

    def __init__(self, device: torch.device):
        self.device = device

    def time_calls(self, fn: Callable[[], object], before: Callable[[], None] | None, n: int) -> list[float]:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            if before is not None:
                before()
            start.record()
            fn()
            end.record()
        events[-1][1].synchronize()
        return [start.elapsed_time(end) for start, end in events]

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)


def clock_for(device: torch.device) -> HostClock | CudaEventClock:
    return CudaEventClock(device) if device.type == "cuda" else HostClock()


# One enqueued batch of timed calls spans at most about this long, so a cancel is seen within it.
BATCH_SPAN_S = 1.0


def next_batch_size(policy: TimingPolicy, n: int, total_s: float) -> int:
    """How many calls to enqueue next: one to learn the call's duration, then what the policy still
    needs, in spans of at most `BATCH_SPAN_S`."""
    if n == 0:
        return 1
    per_call_s = max(total_s / n, 1e-9)
    by_duration = math.ceil(max(policy.min_duration_s - total_s, 0.0) / per_call_s)
    needed = max(policy.min_repeats - n, by_duration, 1)
    return max(1, min(needed, policy.max_repeats - n, math.floor(BATCH_SPAN_S / per_call_s + 1e-6)))


def time_calls(fn: Callable[[], object], *, clock, policy: TimingPolicy, before: Callable[[], None] | None = None,
               should_stop: Callable[[], bool] | None = None, on_start: Callable[[], None] | None = None,
               on_end: Callable[[], None] | None = None) -> Timed:
    """Warm up, then time `fn` until the policy is satisfied. `before` runs ahead of every call, outside
    the timed region (rewinding a cache); `on_start` right before the first timed call and `on_end`
    right after the last one finished (reading an energy counter); `should_stop` between batches of
    calls, raising `Stopped`."""
    for _ in range(policy.warmup):
        if before is not None:
            before()
        fn()
    clock.sync()
    if on_start is not None:
        on_start()
    samples: list[float] = []
    start = time.monotonic()
    total_s = 0.0
    while not policy.done(len(samples), total_s):
        if should_stop is not None and should_stop():
            raise Stopped()
        batch = clock.time_calls(fn, before, next_batch_size(policy, len(samples), total_s))
        samples += batch
        total_s += sum(batch) / 1e3
    end = time.monotonic()
    if on_end is not None:
        on_end()
    return Timed(samples_ms=samples, start_s=start, end_s=end)


@functools.cache
def _side_stream(device_index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device=device_index)


def capture_cuda_graph(fn: Callable[[], object], *, before: Callable[[], None] | None = None,
                       warmup: int = 2) -> Callable[[], None]:
    """`fn` captured in a CUDA graph; returns its replay. Warm-up runs on a side stream first, as
    capture requires (lazy initialisation, cuBLAS workspaces, Triton compilation happen there). The side
    stream is one per device for the process: PyTorch keeps a cuBLAS workspace for every stream cuBLAS has
    run on, for the life of the process, so a new stream per capture left one more allocated each time
    until the device's pool of streams came round again (32 MiB each on sm_90; the peak memory of the H200
    bundle ed1cb62's decode points holds up to 0.28 GiB of them). (`torch.cuda.graph` itself empties the
    allocator's cache before capturing, so the warm-up's freed blocks are the graph's to take.)"""
    side = _side_stream(torch.cuda.current_device())
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    if before is not None:
        before()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph.replay
