"""GPU datasheet figures: the profiler stores them beside measured peaks; the planner projects with them.

Dense bf16 tensor-core rates without sparsity, peak memory bandwidth, memory size and board power, from
vendor datasheets as compiled (with their status) in the team's reference-numbers notes, §3. Figures
marked "R" there are unverified; `verified` is False for those rows so the UI can say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GB = 10**9
TB = 10**12
GIB = 2**30


@dataclass(frozen=True)
class GpuSheet:
    key: str
    name: str
    memory_bytes: int
    bw_bytes_per_s: float
    bf16_flops_per_s: float
    tdp_w: float
    verified: bool
    patterns: tuple[str, ...]  # regexes matched against the device name NVML/torch report
    compute_capability: int = 0  # CUDA compute capability ×10 (90: Hopper, whose TMA the decode step can use)


DATASHEETS: dict[str, GpuSheet] = {
    s.key: s
    for s in (
        GpuSheet("H100-SXM", "H100 SXM5 80GB", 80 * GB, 3.35 * TB, 989e12, 700, True,
                 (r"H100.*(SXM|HBM3)", r"H100 80GB HBM3"), 90),
        GpuSheet("H100-PCIe", "H100 PCIe 80GB", 80 * GB, 2.0 * TB, 756e12, 350, True, (r"H100.*PCIe",), 90),
        GpuSheet("H100-NVL", "H100 NVL 94GB", 94 * GB, 3.9 * TB, 835e12, 400, False, (r"H100 NVL",), 90),
        GpuSheet("H200", "H200 SXM 141GB", 141 * GB, 4.8 * TB, 989e12, 700, True, (r"H200(?!.*NVL)",), 90),
        GpuSheet("A100-80GB", "A100 80GB SXM", 80 * GB, 2.039 * TB, 312e12, 400, True, (r"A100.*80GB",), 80),
        GpuSheet("L40S", "L40S 48GB", 48 * GB, 0.864 * TB, 362e12, 350, False, (r"L40S",), 89),
        GpuSheet("L4", "L4 24GB", 24 * GB, 0.300 * TB, 121e12, 72, False, (r"\bL4\b",), 89),
        GpuSheet("RTX-4090", "GeForce RTX 4090 24GB", 24 * GB, 1.008 * TB, 165e12, 450, False, (r"RTX 4090",), 89),
        GpuSheet("T4", "T4 16GB", 16 * GB, 0.320 * TB, 65e12, 70, False, (r"\bT4\b",), 75),
        GpuSheet("RTX-4080", "GeForce RTX 4080 16GB", 16 * GB, 0.717 * TB, 97e12, 320, False, (r"RTX 4080",), 89),
    )
}


def match_datasheet(device_name: str) -> GpuSheet | None:
    """The datasheet for a device name as NVML or torch reports it; None when unknown (never a guess)."""
    for sheet in DATASHEETS.values():
        if any(re.search(p, device_name, flags=re.IGNORECASE) for p in sheet.patterns):
            return sheet
    return None
