"""NVML telemetry, sampled in a background thread off the hot path.

A `Reader` answers one `read()` with whatever the GPU exposes (each field None where NVML refuses it);
`open_reader` gives None, with the reason, where there is no NVML at all (no library, no driver, a CPU
run). The `Sampler` polls a reader every `interval_s` and keeps the readings; the measuring code asks it
for a window's power samples and for whether another process used the GPU in that window.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from store.models import utcnow


@dataclass(frozen=True)
class Reading:
    power_w: float | None = None
    energy_mj: float | None = None  # NVML's total-energy counter since the driver loaded
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    gpu_util: float | None = None  # 0–1
    mem_util: float | None = None  # 0–1
    mem_used_bytes: int | None = None
    temperature_c: float | None = None
    throttle_reasons: int | None = None  # NVML clocks-event reason bit mask
    pids: tuple[int, ...] | None = None  # processes holding a context on the GPU, as NVML numbers them


class Reader(Protocol):
    def read(self) -> Reading: ...

    def energy_mj(self) -> float | None: ...


def _nvml_value(fn, *args, scale: float = 1.0):
    import pynvml

    try:
        value = fn(*args)
    except (pynvml.NVMLError, AttributeError):
        return None
    return value * scale if scale != 1.0 else value


class NvmlReader:
    """pynvml (nvidia-ml-py) on one GPU, by NVML index."""

    def __init__(self, index: int):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)

    def energy_mj(self) -> float | None:
        return _nvml_value(self._nvml.nvmlDeviceGetTotalEnergyConsumption, self.handle)

    def _pids(self) -> tuple[int, ...] | None:
        nv = self._nvml
        pids: set[int] = set()
        answered = False
        for fn in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
            procs = _nvml_value(fn, self.handle)
            if procs is not None:
                answered = True
                pids.update(p.pid for p in procs)
        return tuple(sorted(pids)) if answered else None

    def read(self) -> Reading:
        nv, h = self._nvml, self.handle
        util = _nvml_value(nv.nvmlDeviceGetUtilizationRates, h)
        mem = _nvml_value(nv.nvmlDeviceGetMemoryInfo, h)
        reasons_fn = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                      or nv.nvmlDeviceGetCurrentClocksThrottleReasons)
        return Reading(
            power_w=_nvml_value(nv.nvmlDeviceGetPowerUsage, h, scale=1e-3),
            energy_mj=self.energy_mj(),
            sm_clock_mhz=_nvml_value(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            mem_clock_mhz=_nvml_value(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
            gpu_util=None if util is None else util.gpu / 100,
            mem_util=None if util is None else util.memory / 100,
            mem_used_bytes=None if mem is None else int(mem.used),
            temperature_c=_nvml_value(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            throttle_reasons=_nvml_value(reasons_fn, h),
            pids=self._pids(),
        )


def open_reader(index: int) -> tuple[Reader | None, str]:
    """An NVML reader for GPU `index`, or None and why not."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return None, "nvidia-ml-py is not installed"
    try:
        return NvmlReader(index), "nvml"
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, _InvalidArgument, ...
        return None, f"NVML unavailable ({type(exc).__name__}: {exc})"


@dataclass(frozen=True)
class Sample:
    t_s: float  # time.monotonic()
    at: datetime  # wall clock, UTC
    reading: Reading
    others: int | None  # processes on the GPU other than ours; None when NVML does not list them


def count_others(pids: Iterable[int] | None, own_pids: frozenset[int], own_contexts: int) -> int | None:
    """Processes on the GPU that are not ours.

    NVML numbers processes in the host's PID namespace; inside a container our own PIDs differ. When none
    of the listed PIDs is ours, we assume `own_contexts` of them are (the measuring process)."""
    if pids is None:
        return None
    listed = set(pids)
    if listed & own_pids:
        return len(listed - own_pids)
    return max(0, len(listed) - own_contexts)


@dataclass
class Sampler:
    """Polls `reader` every `interval_s` in a daemon thread until `stop()`."""

    reader: Reader
    interval_s: float = 0.1
    own_pids: frozenset[int] = field(default_factory=lambda: frozenset({os.getpid()}))
    own_contexts: int = 1

    def __post_init__(self):
        self._samples: list[Sample] = []
        self._unflushed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def sample_once(self) -> Sample:
        reading = self.reader.read()
        smp = Sample(t_s=time.monotonic(), at=utcnow(), reading=reading,
                     others=count_others(reading.pids, self.own_pids, self.own_contexts))
        with self._lock:
            self._samples.append(smp)
        return smp

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # a sampler must never take the measurement down with it
                self.error = f"{type(exc).__name__}: {exc}"
                return
            self._stop.wait(self.interval_s)

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def window(self, t0: float, t1: float) -> list[Sample]:
        """Samples in [t0, t1]; for a window too short to hold one, the last sample before it and the
        first after."""
        s = self.samples()
        inside = [x for x in s if t0 <= x.t_s <= t1]
        if inside:
            return inside
        return [x for x in s if x.t_s < t0][-1:] + [x for x in s if x.t_s > t1][:1]

    def take_unflushed(self) -> list[Sample]:
        """Samples not handed out before (to write to the store between points)."""
        with self._lock:
            out = self._samples[self._unflushed:]
            self._unflushed = len(self._samples)
        return out


def shared_in(samples: Iterable[Sample]) -> bool:
    """True when any sample saw another process on the GPU."""
    return any((x.others or 0) > 0 for x in samples)


def power_series(samples: Iterable[Sample]) -> list[tuple[float, float]]:
    return [(x.t_s, x.reading.power_w) for x in samples if x.reading.power_w is not None]


def telemetry_rows(samples: Iterable[Sample], *, run_id: int, device_id: int | None) -> list[dict]:
    """Rows for `store.repo.add_telemetry`."""
    return [
        dict(run_id=run_id, device_id=device_id, t=x.at, power_w=x.reading.power_w,
             energy_j=None if x.reading.energy_mj is None else x.reading.energy_mj / 1e3,
             sm_clock_mhz=x.reading.sm_clock_mhz, mem_clock_mhz=x.reading.mem_clock_mhz,
             gpu_util=x.reading.gpu_util, mem_util=x.reading.mem_util, mem_used_bytes=x.reading.mem_used_bytes,
             temperature_c=x.reading.temperature_c, throttle_reasons=x.reading.throttle_reasons,
             other_processes=x.others)
        for x in samples
    ]
