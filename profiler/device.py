"""The devices measurements are taken on: discovery (NVML, torch, the CPU), a stable identity, and this
device's measured peaks (a large device-to-device copy, a bf16 GEMM) stored beside its datasheet figures.

Discovery through NVML and /proc needs no torch; `describe`, `measure_peaks` and `ensure_device` run in
the measuring process, which owns the CUDA context.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import statistics
from dataclasses import dataclass

from sqlmodel import Session

from store import repo
from store.datasheets import match_datasheet
from store.models import Device

GIB = 2**30
_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    pass


def parse_device(spec: str) -> tuple[str, int | None]:
    """'cpu' → ('cpu', None); 'cuda' → ('cuda', 0); 'cuda:N' → ('cuda', N); 'any' → ('cuda', None): any
    GPU, the one of whichever queue worker takes the run."""
    if spec.strip().lower() == "any":
        return "cuda", None
    m = _DEVICE_RE.match(spec.strip().lower())
    if m is None:
        raise DeviceError(f"device {spec!r} is not 'cpu', 'cuda', 'cuda:N' or 'any'")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        if index is not None:
            raise DeviceError(f"device {spec!r}: the CPU takes no index")
        return "cpu", None
    return "cuda", int(index or 0)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def host_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _read_int(path: str) -> int | None:
    """The whole number in a one-value file (/proc, /sys); None when absent or not a number ("max")."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# (limit, usage) files of the memory cgroup: v2, then v1 (a container's limit, which /proc/meminfo ignores)
_CGROUP_MEMORY = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def available_memory_bytes() -> int | None:
    """Memory a new allocation can take without swapping or the OOM killer: the kernel's MemAvailable
    (else the free pages), less where this process's memory cgroup (a container) allows less; None when
    nothing says."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            pass
    for limit_file, usage_file in _CGROUP_MEMORY:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < (1 << 60):  # v1 says "no limit" with a huge number
            room = max(limit - usage, 0)
            available = room if available is None else min(available, room)
            break
    return available


def cpu_fields() -> dict:
    host = socket.gethostname()
    name = cpu_name()
    return dict(identity=f"cpu:{host}:{name}", kind="cpu", name=f"CPU: {name} ({os.cpu_count()} threads)",
                host=host, index=None, memory_bytes=host_memory_bytes())


@dataclass(frozen=True)
class NvmlGpu:
    index: int
    name: str
    uuid: str
    memory_bytes: int
    driver_version: str | None
    power_limit_w: float | None


def nvml_gpus() -> tuple[list[NvmlGpu], str | None]:
    """GPUs as NVML lists them (no CUDA context made), or [] and why not."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return [], f"NVML unavailable ({type(exc).__name__})"
    out = []
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        try:
            limit = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3
        except pynvml.NVMLError:
            limit = None
        out.append(NvmlGpu(i, _text(pynvml.nvmlDeviceGetName(h)), _text(pynvml.nvmlDeviceGetUUID(h)),
                           int(pynvml.nvmlDeviceGetMemoryInfo(h).total), driver, limit))
    return out, None


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def nvml_index_for_uuid(uuid: str) -> int | None:
    """NVML's index of the GPU with this UUID (torch's index differs under CUDA_VISIBLE_DEVICES)."""
    gpus, _ = nvml_gpus()
    return next((g.index for g in gpus if g.uuid == uuid), None)


def describe(device) -> dict:
    """Fields for `repo.upsert_device` of a torch device (measured peaks not included)."""
    import torch

    if device.type == "cpu":
        return cpu_fields()
    props = torch.cuda.get_device_properties(device)
    raw = getattr(props, "uuid", None)
    uuid = None if raw is None else str(raw) if str(raw).startswith("GPU-") else f"GPU-{raw}"
    nvml = {g.uuid: g for g in nvml_gpus()[0]}
    gpu = nvml.get(uuid) if uuid else None
    sheet = match_datasheet(props.name)
    host = socket.gethostname()
    return dict(
        identity=uuid or f"cuda:{host}:{device.index}:{props.name}",
        kind="gpu", name=props.name, host=host, index=device.index,
        memory_bytes=int(props.total_memory),
        driver_version=gpu.driver_version if gpu else None,
        cuda_version=torch.version.cuda,
        compute_capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
        datasheet_key=sheet.key if sheet else None,
        datasheet_bw_bytes_per_s=sheet.bw_bytes_per_s if sheet else None,
        datasheet_bf16_flops_per_s=sheet.bf16_flops_per_s if sheet else None,
        datasheet_tdp_w=sheet.tdp_w if sheet else None,
    )


@dataclass(frozen=True)
class Peaks:
    copy_bw_bytes_per_s: float
    bf16_flops_per_s: float


def _median_ms(fn, device, warmup: int, reps: int) -> float:
    from profiler.timing import clock_for

    clock = clock_for(device)
    for _ in range(warmup):
        fn()
    clock.sync()
    return statistics.median(clock.time_calls(fn, None, reps))


def measure_peaks(device, *, copy_bytes: int | None = None, gemm_n: int | None = None) -> Peaks:
    """Median over repeats of a device-to-device copy (bytes read + written) and an n³ bf16 GEMM on
    random data. GPU: 2 GiB buffers (fewer when memory is short) and n = 8192; CPU: 64 MiB and 256 (a
    CPU's bf16 rate only matters for bf16 runs there, and a larger product takes seconds)."""
    import torch

    gpu = device.type == "cuda"
    if copy_bytes is None:
        copy_bytes = 64 * 2**20
        if gpu:
            free, _ = torch.cuda.mem_get_info(device)
            copy_bytes = int(min(2 * GIB, free // 8))
    n_elems = copy_bytes // 2
    src = torch.empty(n_elems, dtype=torch.bfloat16, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_ms = _median_ms(lambda dst=dst, src=src: dst.copy_(src), device, warmup=3, reps=10)
    del src, dst
    n = gemm_n or (8192 if gpu else 256)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device, generator=gen)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device, generator=gen)
    gemm_ms = _median_ms(lambda a=a, b=b: a @ b, device, warmup=3, reps=10)
    del a, b
    if gpu:
        torch.cuda.empty_cache()
    return Peaks(copy_bw_bytes_per_s=2 * n_elems * 2 / (copy_ms / 1e3), bf16_flops_per_s=2 * n**3 / (gemm_ms / 1e3))


def ensure_device(s: Session, device, *, remeasure: bool = False) -> Device:
    """The store's row for this device, with its peaks measured the first time it is seen."""
    fields = describe(device)
    row = repo.upsert_device(s, **fields)
    if remeasure or row.measured_copy_bw_bytes_per_s is None or row.measured_bf16_flops_per_s is None:
        peaks = measure_peaks(device)
        row = repo.upsert_device(s, identity=row.identity, measured_copy_bw_bytes_per_s=peaks.copy_bw_bytes_per_s,
                                 measured_bf16_flops_per_s=peaks.bf16_flops_per_s)
    return row
