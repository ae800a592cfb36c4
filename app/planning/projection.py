"""Projection of a measured surface to a GPU that was not measured, by datasheet ratios.

The source surface's fitted roofline splits each time into a fixed part (launches, host work), a memory
part (bytes / effective bandwidth) and a compute part (FLOPs / effective FLOP rate). On the target the
memory part scales by source ÷ target bandwidth, the compute part by source ÷ target bf16 peak, and the
fixed part stays: the efficiencies measured on the source are assumed to carry over. Memory limits use
the target's exact memory size elsewhere (capacity). Every projected value is labelled *projected*.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.planning.errors import PlanningError
from app.planning.surfaces import PROJECTED, Surface
from store.datasheets import DATASHEETS, GpuSheet, match_datasheet


def sheet_for(*, datasheet_key: str | None, device_name: str) -> GpuSheet | None:
    """The datasheet of a measured device: its stored key, else a match on its name; None when unknown."""
    if datasheet_key and datasheet_key in DATASHEETS:
        return DATASHEETS[datasheet_key]
    return match_datasheet(device_name or "")


def target_sheet(key: str) -> GpuSheet:
    if key not in DATASHEETS:
        raise PlanningError(f"no datasheet for GPU {key!r}; known GPUs: {', '.join(DATASHEETS)}")
    return DATASHEETS[key]


@dataclass(frozen=True)
class ScaledSurface:
    """A surface whose latency is `source`'s times `scale(batch, length)`; every value labelled projected."""

    source: Surface

    @property
    def phase(self) -> str:
        return self.source.phase

    def scale(self, batch, length) -> np.ndarray:
        raise NotImplementedError

    def latency_ms(self, batch, length) -> tuple[np.ndarray, np.ndarray]:
        ms, _ = self.source.latency_ms(batch, length)
        b, L = np.broadcast_arrays(np.atleast_1d(np.asarray(batch, dtype=float)),
                                   np.atleast_1d(np.asarray(length, dtype=float)))
        return ms * self.scale(b.ravel(), np.maximum(L.ravel(), 1.0)), np.full(ms.size, PROJECTED, dtype=int)


@dataclass(frozen=True)
class ProjectedSurface(ScaledSurface):
    source_sheet: GpuSheet
    target_sheet: GpuSheet

    @property
    def bw_ratio(self) -> float:
        return self.source_sheet.bw_bytes_per_s / self.target_sheet.bw_bytes_per_s

    @property
    def flops_ratio(self) -> float:
        return self.source_sheet.bf16_flops_per_s / self.target_sheet.bf16_flops_per_s

    def scale(self, batch, length) -> np.ndarray:
        t0, tb, tf = self.source.roofline.terms_ms(batch, length)
        return (t0 + tb * self.bw_ratio + tf * self.flops_ratio) / np.maximum(t0 + tb + tf, 1e-12)
